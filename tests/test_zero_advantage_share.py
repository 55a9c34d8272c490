"""The zero-advantage share a GRPO run logs: TRL's `frac_reward_zero_std` (groups whose rewards are all equal) and
AudioGRPOTrainer's `frac_tokens_reward_zero_std` (the share of the batch's completion tokens in those groups)."""

import pytest
import torch
from helpers.tiny_grpo import CLIPS, G, make_trainer, rows


def two_of_three_groups_equal(completions, **kwargs):
    """Groups 0 and 1 (of three prompts) all 1.0; group 2 alternates 0/1: it alone carries an advantage."""
    return [1.0 if index // G < 2 else float(index % 2) for index in range(len(completions))]


@pytest.fixture(scope="module")
def trainer_and_batch(tiny_model_dir, tmp_path_factory):
    trainer = make_trainer(tiny_model_dir, str(tmp_path_factory.mktemp("zero-std")), per_device_train_batch_size=3 * G)
    trainer.reward_funcs = [two_of_three_groups_equal]
    trainer.model.train()
    batch = trainer._generate_and_score_completions([row for row in rows(CLIPS[:3]) for _ in range(G)])
    return trainer, batch


def test_both_shares_are_logged_from_the_batch(trainer_and_batch):
    trainer, batch = trainer_and_batch
    metrics = trainer._metrics["train"]
    assert metrics["frac_reward_zero_std"][-1] == pytest.approx(2 / 3)
    tokens = batch["completion_mask"].sum(dim=1).float()
    assert metrics["frac_tokens_reward_zero_std"][-1] == pytest.approx((tokens[: 2 * G].sum() / tokens.sum()).item())


def test_token_share_weighs_groups_by_their_completion_tokens(trainer_and_batch):
    """Completions of 1 token in the equal groups, 6 in the other: 8 of 32 tokens, not 2 of 3 groups."""
    trainer, _ = trainer_and_batch
    mask = torch.zeros(3 * G, 6, dtype=torch.long)
    mask[: 2 * G, 0] = 1
    mask[2 * G :] = 1
    trainer._log_zero_std_tokens(mask)
    assert trainer._metrics["train"]["frac_tokens_reward_zero_std"][-1] == pytest.approx(8 / 32)
