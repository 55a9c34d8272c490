"""Checks the trainer tests run for both model families (Qwen2-Audio and the Qwen2.5-Omni thinker): log-probs
against a plain forward with each row's own clip, and shared vs per-completion audio encoding."""

import torch

from helpers.tiny_grpo import G
from r1aqa.audio import load_audio
from r1aqa.audio_sharing import find_audio_tower
from r1aqa.models import family_of_config


class EncoderRows:
    """Counts the audio rows the encoder actually encodes (a forward hook sees the inputs after any pre-hook)."""

    def __init__(self, model):
        self.rows = 0
        self.handle = find_audio_tower(model).register_forward_hook(self.count)

    def count(self, module, args, output):
        self.rows += args[0].size(0)


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


PARAMETERS = [
    "model.audio_tower.conv1.weight",
    "model.audio_tower.layers.0.self_attn.q_proj.weight",
    "model.multi_modal_projector.linear.weight",
    "model.language_model.layers.0.mlp.up_proj.weight",
    "lm_head.weight",
]


def loss_logps_and_grads(trainer, micro_batches, share: bool, parameters=PARAMETERS):
    """The policy loss over `micro_batches` (gradients accumulated like gradient accumulation), its per-token
    log-probs per micro-batch, a few parameters' gradients and the number of encoded audio rows."""
    trainer.share_audio_encoding = share
    trainer.model.zero_grad(set_to_none=True)
    captured = []
    original = trainer._get_per_token_logps_and_entropies

    def capture(*args, **kwargs):
        result = original(*args, **kwargs)
        captured.append(result[0].detach())
        return result

    trainer._get_per_token_logps_and_entropies = capture
    counter = EncoderRows(trainer.model)
    try:
        for micro_batch in micro_batches:
            trainer._compute_loss(trainer.model, micro_batch).backward()
    finally:
        del trainer._get_per_token_logps_and_entropies
        counter.handle.remove()
        trainer.share_audio_encoding = True
    params = dict(trainer.model.named_parameters())
    grads = {name: params[name].grad.detach().clone() for name in parameters}
    trainer.model.zero_grad(set_to_none=True)
    return captured, grads, counter.rows


def assert_same(shared, separate, parameters=PARAMETERS):
    (logps_a, grads_a, _), (logps_b, grads_b, _) = shared, separate
    for a, b in zip(logps_a, logps_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for name in parameters:
        assert grads_b[name].abs().max() > 0, f"{name} gets no gradient: the comparison would be vacuous"
        torch.testing.assert_close(
            grads_a[name], grads_b[name], atol=1e-6, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )


def loss_pass_policy_logps(trainer, batch) -> torch.Tensor:
    """The policy log-probs the trainer's own loss pass computes from `batch` (captured, then the method restored)."""
    captured = {}
    original = trainer._get_per_token_logps_and_entropies

    def capture(*args, **kwargs):
        result = original(*args, **kwargs)
        captured["policy"] = result[0].detach()
        return result

    trainer._get_per_token_logps_and_entropies = capture
    try:
        trainer._compute_loss(trainer.model, batch)
    finally:
        del trainer._get_per_token_logps_and_entropies
    return captured["policy"]
