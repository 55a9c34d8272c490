"""The training objective is the original R1-AQA's, checked against the original's formula written out here.

The original (xiaomi-research/r1-aqa, src/trainer/grpo_trainer.py at the release commit 45def50 and at 5d24f31):

    k3       = exp(ref - logp) - (ref - logp) - 1
    A        = (r - mean_group(r)) / (std_group(r) + 1e-4)
    loss_tok = -(exp(logp - logp.detach()) * A - beta * k3)          beta = 0.04
    loss     = mean over completions of (mean over the completion's tokens of loss_tok)

TRL 1.16 computes the same loss when `use_bias_correction_kl` is false. With TRL's default (true) it multiplies k3 by
the importance ratio exp(logp - old): equal to 1 on-policy, but differentiable, so every token's gradient gains
beta * k3 * grad(logp). The original had one update per generation batch; with `num_iterations: 2` the ratio's
denominator is the policy that generated (`old`), which the formula below takes in place of logp.detach().

The log-probs here come from plain forward passes of the model with each completion's own audio, independent of the
trainer's passes; the rewards are the ones the trainer's reward function returned for the batch (varied within every group).
"""

from pathlib import Path

import pytest
import torch
from helpers.launch import parse_recipe_on_cpu
from helpers.tiny_grpo import CLIPS, G, make_trainer, rows

from r1aqa.audio import load_audio

REPO = Path(__file__).resolve().parents[1]
BETA = 0.04
GRPO_RECIPES = sorted(REPO.glob("configs/grpo_*.yaml"))


def completion_logps(model, processor, inputs, batch) -> torch.Tensor:
    """(rows, completion length) log-probs of every completion token under `model`, each row scored with its own
    prompt and audio in a plain forward pass (padding positions are 0). Differentiable when grad is enabled."""
    completion_ids, completion_mask = batch["completion_ids"], batch["completion_mask"]
    out = []
    for i, row in enumerate(inputs):
        ids = completion_ids[i][completion_mask[i].bool()]
        text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        audio = load_audio(row["prompt"][0]["content"][0]["path"])
        encoded = processor(text=[text], audio=[audio], return_tensors="pt")
        input_ids = torch.cat([encoded["input_ids"], ids[None]], dim=1)
        logits = model(
            input_ids=input_ids,
            input_features=encoded["input_features"],
            feature_attention_mask=encoded["feature_attention_mask"],
        ).logits
        logps = torch.log_softmax(logits[0, -len(ids) - 1 : -1].float(), dim=-1).gather(-1, ids[:, None])[:, 0]
        out.append(torch.nn.functional.pad(logps, (0, completion_ids.size(1) - len(ids))))
    return torch.stack(out)


def original_loss(logp, ref, old, rewards, mask) -> torch.Tensor:
    """The original's loss, term by term (see the module docstring); `old` None is the original (on-policy)."""
    grouped = rewards.view(-1, G)
    advantages = (rewards - grouped.mean(dim=1).repeat_interleave(G)) / (grouped.std(dim=1).repeat_interleave(G) + 1e-4)
    k3 = torch.exp(ref - logp) - (ref - logp) - 1
    old = logp.detach() if old is None else old
    per_token = -(torch.exp(logp - old) * advantages[:, None] - BETA * k3)
    return ((per_token * mask).sum(dim=1) / mask.sum(dim=1)).mean()


def gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def perturb(model, scale: float, seed: int) -> None:
    """Move the policy away from the reference (the KL term and its gradient are 0 where they are equal)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale * (p.std() if p.numel() > 1 else 1.0))


def one_step(tiny_model_dir, tmp_path, use_bias_correction_kl: bool, num_iterations: int, rewards: str):
    """Loss and gradients of one step, by the trainer and by the original's formula, on one generation batch of two
    prompts x G completions with different real audio. With num_iterations 2, the policy moves between generation
    (where the old log-probs are taken) and the loss, as on the second pass over a batch.

    `rewards`: "varied" (0, 1, 2, 0, ... within each group, whatever the random model writes) or "constant" (every
    advantage 0: the KL term is the whole update, as in the original's groups once the format was learned)."""
    trainer = make_trainer(
        tiny_model_dir,
        str(tmp_path),
        use_bias_correction_kl=use_bias_correction_kl,
        num_iterations=num_iterations,
        gradient_accumulation_steps=1,
        max_completion_length=6,
    )
    model, processor = trainer.model, trainer.processing_class
    model.eval()  # no dropout in the tiny model either way; one mode for both computations
    perturb(model, 0.3, seed=1)  # policy != reference: KL ~ 0.1 per token
    returned = []

    def positional_reward(completions, **kwargs):
        returned.extend(float(i % 3) if rewards == "varied" else 1.0 for i in range(len(completions)))
        return returned[-len(completions) :]

    trainer.reward_funcs = [positional_reward]
    inputs = [row for row in rows(CLIPS[:2]) for _ in range(G)]
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions(inputs)
    mask = batch["completion_mask"].float()
    reward_values = torch.tensor(returned)
    old = None
    if num_iterations > 1:
        assert batch.get("old_per_token_logps") is not None
        with torch.no_grad():
            old = completion_logps(model, processor, inputs, batch)
        perturb(model, 0.02, seed=2)  # an update between the two passes: ratio != 1
    with torch.no_grad():
        ref = completion_logps(trainer.ref_model, processor, inputs, batch)

    model.zero_grad()
    logp = completion_logps(model, processor, inputs, batch)
    expected = original_loss(logp, ref, old, reward_values, mask)
    expected.backward()
    expected_grads = gradients(model)
    ratio = torch.exp(logp.detach() - (logp.detach() if old is None else old))[mask.bool()]
    kl = ((torch.exp(ref - logp) - (ref - logp) - 1).detach() * mask).sum() / mask.sum()

    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return expected.detach(), expected_grads, loss.detach(), gradients(model), ratio, kl


def largest_gradient_difference(expected: dict, actual: dict) -> float:
    assert expected.keys() == actual.keys()
    return max((expected[n] - actual[n]).abs().max().item() for n in expected)


def largest_gradient(grads: dict) -> float:
    return max(g.abs().max().item() for g in grads.values())


@pytest.mark.parametrize("num_iterations,rewards", [(1, "varied"), (1, "constant"), (2, "varied")])
def test_trainer_loss_and_gradient_are_the_originals_with_bias_correction_off(
    tiny_model_dir, tmp_path, num_iterations, rewards
):
    expected, expected_grads, loss, grads, ratio, kl = one_step(
        tiny_model_dir, tmp_path, False, num_iterations, rewards
    )
    assert kl > 1e-2, "the KL term must be active for the comparison to mean anything"
    if num_iterations == 2:
        assert (ratio - 1).abs().max() > 1e-3, "the policy moved between generation and loss"
        assert ((ratio > 0.8) & (ratio < 1.2)).all(), "TRL's clipping (epsilon 0.2) must stay inactive here"
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
    scale = largest_gradient(expected_grads)
    assert scale > 0
    assert largest_gradient_difference(expected_grads, grads) < 1e-4 * scale


@pytest.mark.parametrize("num_iterations", [1, 2])
def test_trl_default_bias_correction_changes_the_gradient(tiny_model_dir, tmp_path, num_iterations):
    """What the flag does, where the KL term is the whole update (constant rewards): on-policy the loss value is the
    original's (the ratio is 1) but the gradient is not. This is why every recipe sets it to false."""
    expected, expected_grads, loss, grads, _, _ = one_step(tiny_model_dir, tmp_path, True, num_iterations, "constant")
    if num_iterations == 1:
        torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
    assert largest_gradient_difference(expected_grads, grads) > 1e-2 * largest_gradient(expected_grads)


@pytest.mark.parametrize("recipe", GRPO_RECIPES, ids=lambda p: p.name)
def test_every_grpo_recipe_resolves_the_originals_kl(recipe, toy, tmp_path):
    """Through the entry point's parser (TrlParser: YAML, then defaults): TRL's default would be True."""
    _, training_args, _ = parse_recipe_on_cpu(recipe, toy["data"], tmp_path)
    assert training_args.use_bias_correction_kl is False
    assert training_args.beta == 0.04 and training_args.loss_type == "grpo"
