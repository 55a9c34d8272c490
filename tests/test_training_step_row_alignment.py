"""The paper's training path inside a real `trainer.train()`: several questions per device, gradient accumulation 2
(TRL generates for the whole optimizer step, shuffles the rows and splits them into micro-batches), and the old-policy
pass (active when generation and optimisation steps differ: `num_iterations: 2`). Every log-prob pass of the run is
recomputed with a plain forward using each row's own clip (tests/helpers/logp_checks.py)."""

import pytest
import torch
from helpers.logp_checks import LogpChecker, question_dataset, summary
from helpers.tiny_grpo import CLIPS, G, make_trainer

TOLERANCE = 1e-4  # trainer vs plain forward with the row's own clip (measured: < 1e-6)
DISCRIMINATES = 1e-3  # another clip, or no audio, must move every row's log-probs by more (measured: > 9e-3)

SHAPES = {
    # docs/recipe.md §6: per device 2 questions x G completions, accumulation 2 -> one generation of 4 questions per
    # optimizer step, shuffled and split into 2 micro-batches; old-policy log-probs are not computed (TRL: aligned).
    "paper": dict(gradient_accumulation_steps=2, max_steps=1),
    # The same, each generation used for two optimizer steps: TRL computes old-policy log-probs at generation.
    "two_iterations": dict(gradient_accumulation_steps=2, num_iterations=2, max_steps=2),
}


@pytest.fixture(scope="module", params=list(SHAPES))
def trained(request, tiny_model_dir, tmp_path_factory):
    trainer = make_trainer(
        tiny_model_dir,
        str(tmp_path_factory.mktemp(request.param)),
        dataset=question_dataset(CLIPS),  # 4 real AVQA clips x 2 questions, each row's text its own
        **SHAPES[request.param],
    )
    assert trainer.args.per_device_train_batch_size == 2 * G and trainer.args.steps_per_generation == 2
    checker = LogpChecker(trainer, CLIPS, compare_sharing=True)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    return request.param, trainer, checker.calls, before


def test_every_logp_pass_equals_a_plain_forward_with_each_rows_own_clip(trained):
    shape, trainer, calls, _ = trained
    checked = summary(calls)
    expected = {"loss", "reference"} | ({"old"} if shape == "two_iterations" else set())
    assert set(checked) == expected, checked
    # One generation of 4 questions x G (16 rows), 2 micro-batches of 8 per optimizer step (two steps with two
    # iterations, both on the same generation).
    steps = trainer.state.global_step
    assert steps == (2 if shape == "two_iterations" else 1)
    assert checked["loss"]["calls"] == 2 * steps and all(len(c["clips"]) == 2 * G for c in calls if c["kind"] == "loss")
    assert checked["reference"] == {**checked["reference"], "calls": 1, "rows": 4 * G}
    for kind, numbers in checked.items():
        assert numbers["own_max"] < TOLERANCE, (kind, numbers)
        assert numbers["other_min"] > DISCRIMINATES, (kind, numbers)  # a swapped clip would be caught, row by row
        assert numbers["none_min"] > DISCRIMINATES, (kind, numbers)
        assert numbers["other_encoding_max"] < TOLERANCE, (kind, numbers)  # shared = per-completion encoding


def test_micro_batches_are_shuffled_rows_of_their_generation(trained):
    _, _, calls, _ = trained
    generations = [c for c in calls if c["kind"] == "reference"]
    losses = [c for c in calls if c["kind"] == "loss"]
    per_generation = len(losses) // len(generations)  # 2 (accumulation), or 4 (two iterations of 2)
    for g, generation in enumerate(generations):
        assert len(set(generation["questions"])) == 4 and len(set(generation["clips"])) > 1
        for start in range(0, per_generation, 2):
            pair = losses[g * per_generation + start : g * per_generation + start + 2]
            # The two micro-batches of an optimizer step hold exactly the generation's rows...
            assert sorted(pair[0]["questions"] + pair[1]["questions"]) == sorted(generation["questions"])
    # ...shuffled: a contiguous split would put exactly two whole questions in each micro-batch.
    assert any(len(set(loss["questions"])) > 2 for loss in losses)


def test_the_loss_moves_the_audio_encoder(trained):
    _, trainer, _, before = trained
    moved = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert any("audio_tower" in name for name in moved), "audio encoder"
    assert any("language_model" in name for name in moved), "language model"


def test_old_policy_pass_feeds_a_real_importance_ratio(trained):
    """With two iterations the second optimizer step reuses the first step's generation: its policy has moved, so
    the loss compares against the stored old-policy log-probs (TRL logs clipped ratios only when they differ). In the
    paper's shape (one update per generation) the ratio is 1 and nothing is clipped."""
    shape, trainer, _, _ = trained
    last = [entry for entry in trainer.state.log_history if "clip_ratio/region_mean" in entry][-1]
    if shape == "two_iterations":
        assert last["kl"] > 0 and last["clip_ratio/region_mean"] > 0
    else:
        assert last["clip_ratio/region_mean"] == 0
