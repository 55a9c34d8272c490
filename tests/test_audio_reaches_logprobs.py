"""AudioGRPOTrainer: the audio reaches every log-prob pass, row by row, and training changes the weights."""

import numpy as np
import pytest
import torch
from helpers.tiny_grpo import CLIPS, G, make_trainer, rows

from r1aqa.audio import load_audio
from r1aqa.models import family_of_config


def plain_logps(model, processor, prompt, completion_ids: list[int], with_audio: bool) -> torch.Tensor:
    """Log-probs of the completion tokens from one ordinary forward pass, computed independently of the trainer."""
    path = prompt[0]["content"][0]["path"]
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    channels = family_of_config(model.config).audio_channels  # Qwen2-Audio: first channel; Qwen2.5-Omni: the mean
    inputs = processor(text=[text], audio=[load_audio(path, channels=channels)], return_tensors="pt")
    ids = torch.cat([inputs["input_ids"], torch.tensor([completion_ids])], dim=1)
    kwargs = {"input_features": inputs["input_features"], "feature_attention_mask": inputs["feature_attention_mask"]}
    with torch.no_grad():
        logits = model(input_ids=ids, **(kwargs if with_audio else {})).logits
    logps = torch.log_softmax(logits[0, -len(completion_ids) - 1 : -1].float(), dim=-1)
    return logps.gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]


@pytest.fixture(scope="module")
def scored_batch(tiny_model_dir, tmp_path_factory):
    """One generation batch: two prompts with different real audio, G completions each, and the policy log-probs
    the loss computes from it (captured from the trainer's own pass)."""
    trainer = make_trainer(tiny_model_dir, str(tmp_path_factory.mktemp("grpo")))
    inputs = [row for row in rows(CLIPS[:2]) for _ in range(G)]
    batch = trainer._generate_and_score_completions(inputs)
    captured = {}
    original = trainer._get_per_token_logps_and_entropies

    def capture(*args, **kwargs):
        result = original(*args, **kwargs)
        captured["policy"] = result[0].detach()
        return result

    trainer._get_per_token_logps_and_entropies = capture
    trainer._compute_loss(trainer.model, batch)
    return trainer, inputs, batch, captured["policy"]


def completion_rows(batch):
    for i in range(batch["completion_ids"].size(0)):
        mask = batch["completion_mask"][i].bool()
        yield i, batch["completion_ids"][i][mask].tolist(), mask


def check_logps_match_a_plain_forward_with_audio(trainer, inputs, batch, policy_logps, which: str) -> None:
    """The reference or policy log-probs of every completion equal a plain forward pass with its prompt's audio, and
    (somewhere) differ from one without audio. Shared with test_qwen2_5_omni.py (the other model family)."""
    model = trainer.ref_model if which == "reference" else trainer.model
    logps = batch["ref_per_token_logps"] if which == "reference" else policy_logps
    largest_audio_effect = 0.0
    for i, completion, mask in completion_rows(batch):
        with_audio = plain_logps(model, trainer.processing_class, inputs[i]["prompt"], completion, with_audio=True)
        without = plain_logps(model, trainer.processing_class, inputs[i]["prompt"], completion, with_audio=False)
        torch.testing.assert_close(logps[i][mask], with_audio, atol=1e-4, rtol=0)
        largest_audio_effect = max(largest_audio_effect, (logps[i][mask] - without).abs().max().item())
    assert largest_audio_effect > 1e-2, "log-probs should depend on the audio"


def check_each_completion_is_scored_with_its_own_clip(trainer, inputs, batch, other_clip_effect: float) -> None:
    """Rows 0..G-1 belong to clip 0, G..2G-1 to clip 1: their features are their own clip's, not a repeat, and scoring
    row 0's completion with the other clip's audio moves its log-probs by more than `other_clip_effect`. Shared with
    test_qwen2_5_omni.py."""
    features = batch["input_features"]
    assert features.size(0) == 2 * G
    assert all(torch.equal(features[i], features[0]) for i in range(G))
    assert all(torch.equal(features[i], features[G]) for i in range(G, 2 * G))
    assert not torch.equal(features[0], features[G])
    _, completion, mask = next(completion_rows(batch))
    swapped = [
        {
            **inputs[G]["prompt"][0],
            "content": [inputs[G]["prompt"][0]["content"][0], inputs[0]["prompt"][0]["content"][1]],
        }
    ]
    other = plain_logps(trainer.ref_model, trainer.processing_class, swapped, completion, with_audio=True)
    assert (batch["ref_per_token_logps"][0][mask] - other).abs().max() > other_clip_effect


@pytest.mark.parametrize("which", ["reference", "policy"])
def test_logps_match_a_plain_forward_with_audio(scored_batch, which):
    check_logps_match_a_plain_forward_with_audio(*scored_batch, which)


def test_each_completion_is_scored_with_its_own_prompts_audio(scored_batch):
    trainer, inputs, batch, _ = scored_batch
    check_each_completion_is_scored_with_its_own_clip(trainer, inputs, batch, other_clip_effect=1e-2)


def test_missing_audio_features_fail_loudly(scored_batch):
    trainer, _, batch, _ = scored_batch
    no_audio = {k: v for k, v in batch.items() if k not in ("input_features", "feature_attention_mask")}
    with pytest.raises(KeyError):
        trainer._compute_loss(trainer.model, no_audio)


def test_training_changes_weights_and_logs_paper_metrics(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, str(tmp_path))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("model.audio_tower") or "audio_tower" in name for name in changed), "audio encoder"
    assert any("multi_modal_projector" in name for name in changed), "projector"
    assert any("language_model" in name for name in changed), "language model"
    logged = {key for entry in trainer.state.log_history for key in entry}
    for key in [
        "loss",
        "grad_norm",
        "learning_rate",
        "reward",
        "reward_std",
        "kl",
        "completions/mean_length",
        "rewards/varied_reward/mean",
    ]:
        assert key in logged, key


def test_reward_std_zero_means_no_update_but_audio_still_flows(tiny_model_dir, tmp_path):
    """Sanity of the objective: with constant rewards every advantage is 0, so the policy gradient vanishes and only
    the KL term (zero at the start, as policy == reference) remains: the weights must not move on step 1."""

    def constant(completions, **kwargs):
        return [1.0] * len(completions)

    trainer = make_trainer(tiny_model_dir, str(tmp_path), max_steps=1)
    trainer.reward_funcs = [constant]
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())


def test_stereo_audio_is_read_from_its_first_channel(tmp_path):
    import soundfile as sf

    from r1aqa.audio import prompts_with_audio

    left = np.sin(np.linspace(0, 200, 16_000)).astype(np.float32)
    right = (0.5 * np.sin(np.linspace(0, 3000, 16_000))).astype(np.float32)  # another tone: first != mean != second
    path = str(tmp_path / "stereo.wav")
    sf.write(path, np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    prompt = [
        {
            "role": "user",
            "content": [{"type": "audio", "path": path, "text": None}, {"type": "text", "text": "Q", "path": None}],
        }
    ]
    loaded = prompts_with_audio([prompt, prompt])
    audio_part = loaded[0][0]["content"][0]
    assert set(audio_part) == {"type", "audio"}
    np.testing.assert_array_equal(audio_part["audio"], left)
    assert np.abs(audio_part["audio"] - (left + right) / 2).max() > 0.1, "not the down-mix"
    assert loaded[1][0]["content"][0]["audio"] is audio_part["audio"], "decoded once per batch"
    assert loaded[0][0]["content"][1] == {"type": "text", "text": "Q"}


def test_frozen_audio_encoder_stays_fixed_while_the_rest_trains(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, str(tmp_path))
    trainer.model.model.audio_tower.requires_grad_(False)  # what `freeze_audio_encoder: true` does in r1aqa.grpo
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    for name, p in trainer.model.named_parameters():
        if "audio_tower" in name:
            assert torch.equal(p, before[name]), name
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if "language_model" in n)


def test_lora_trains_adapters_only_and_scores_the_reference_with_audio(tiny_model_dir, tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = make_trainer(tiny_model_dir, str(tmp_path), peft_config=lora, learning_rate=1e-2)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in name for name in changed)
    assert any(entry.get("kl", 0) > 0 for entry in trainer.state.log_history), "reference = adapters disabled"


def test_saved_checkpoint_config_is_the_models_unchanged(tiny_model_dir, tmp_path):
    """TRL's image-token trap is worked around without touching the config: the checkpoint's config.json is what
    the model saves without a trainer (but for TRL's own `use_cache: false`)."""
    import json

    from r1aqa.models import load_model

    load_model(tiny_model_dir).save_pretrained(str(tmp_path / "plain"))
    trainer = make_trainer(tiny_model_dir, str(tmp_path / "out"), max_steps=1)
    assert not hasattr(trainer.model.config, "image_token_id")
    trainer.save_model(str(tmp_path / "trained"))
    saved, plain = (
        {**json.loads((tmp_path / d / "config.json").read_text()), "use_cache": None} for d in ("trained", "plain")
    )
    assert "image_token_id" not in saved
    assert saved == plain
