"""AudioGRPOTrainer: the audio reaches every log-prob pass, row by row, and training changes the weights."""

import numpy as np
import pytest
import torch
from helpers.audio_checks import (
    check_each_completion_is_scored_with_its_own_clip,
    check_logps_match_a_plain_forward_with_audio,
    loss_pass_policy_logps,
)
from helpers.tiny_grpo import CLIPS, G, make_trainer, rows


@pytest.fixture(scope="module")
def scored_batch(tiny_model_dir, tmp_path_factory):
    """One generation batch: two prompts with different real audio, G completions each, and the policy log-probs
    the loss computes from it (captured from the trainer's own pass)."""
    trainer = make_trainer(tiny_model_dir, str(tmp_path_factory.mktemp("grpo")))
    inputs = [row for row in rows(CLIPS[:2]) for _ in range(G)]
    batch = trainer._generate_and_score_completions(inputs)
    return trainer, inputs, batch, loss_pass_policy_logps(trainer, batch)


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
