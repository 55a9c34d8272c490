"""Sharing the audio encoding within a group: same log-probs and gradients as per-completion encoding, G times fewer
encoder rows."""

import pytest
import torch
from helpers.audio_checks import EncoderRows, assert_same, loss_logps_and_grads
from helpers.tiny_grpo import CLIPS, G, make_trainer, rows
from transformers import Qwen2AudioForConditionalGeneration
from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict

from r1aqa.audio_sharing import audio_groups, find_audio_tower


@pytest.fixture(scope="module")
def batch_and_trainer(tiny_model_dir, tmp_path_factory):
    """Two prompts with different real audio, G completions each, scored with sharing on and off."""
    trainer = make_trainer(tiny_model_dir, str(tmp_path_factory.mktemp("perf")))
    inputs = [row for row in rows(CLIPS[:2]) for _ in range(G)]
    policy, reference = EncoderRows(trainer.model), EncoderRows(trainer.ref_model)
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions(inputs)
    encoded = {"generation": policy.rows, "reference": reference.rows}
    policy.handle.remove(), reference.handle.remove()
    # Fixed non-zero advantages: random rewards can tie within a group, and a zero advantage means a zero gradient.
    batch["advantages"] = torch.linspace(-1.0, 1.0, batch["advantages"].numel()).reshape(batch["advantages"].shape)
    return trainer, inputs, batch, encoded


def test_audio_groups_follow_the_audio_path():
    prompts = [r["prompt"] for r in rows([CLIPS[0], CLIPS[0], CLIPS[1], CLIPS[0], CLIPS[1]])]
    assert audio_groups(prompts).tolist() == [0, 0, 1, 0, 1]


def test_batch_carries_one_audio_group_per_completion(batch_and_trainer):
    _, _, batch, _ = batch_and_trainer
    assert batch["audio_group"].tolist() == [0] * G + [1] * G


def test_whole_groups_same_logps_and_gradients_and_one_encoding_per_prompt(batch_and_trainer):
    trainer, _, batch, _ = batch_and_trainer
    shared = loss_logps_and_grads(trainer, [batch], share=True)
    separate = loss_logps_and_grads(trainer, [batch], share=False)
    assert_same(shared, separate)
    assert shared[2] == 2, "one encoder row per distinct prompt"
    assert separate[2] == 2 * G


def test_groups_split_across_shuffled_micro_batches(batch_and_trainer):
    """TRL shuffles the generation batch and splits it for gradient accumulation: a group lands in several
    micro-batches. Each micro-batch encodes each of its distinct clips once; the result is still exact."""
    trainer, _, batch, _ = batch_and_trainer
    torch.manual_seed(3)
    micro_batches = split_tensor_dict(shuffle_sequence_dict(batch), 2)
    assert all(len(set(mb["audio_group"].tolist())) == 2 for mb in micro_batches), "want split groups"
    shared = loss_logps_and_grads(trainer, micro_batches, share=True)
    separate = loss_logps_and_grads(trainer, micro_batches, share=False)
    assert_same(shared, separate)
    assert shared[2] == sum(len(set(mb["audio_group"].tolist())) for mb in micro_batches) == 4
    assert separate[2] == 2 * G


def test_reference_logps_are_the_same_and_generation_encodes_each_prompt_once(batch_and_trainer):
    trainer, _, batch, encoded = batch_and_trainer
    assert encoded == {"generation": 2, "reference": 2}, "one encoder row per distinct prompt in each pass"
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    audio = {key: batch[key] for key in ("input_features", "feature_attention_mask", "audio_group")}
    results = {}
    for share in (True, False):
        trainer.share_audio_encoding = share
        with torch.no_grad(), trainer._audio_for_forward(audio):
            results[share] = trainer._get_per_token_logps_and_entropies(
                trainer.ref_model, ids, mask, batch["completion_ids"].size(1), batch_size=3
            )[0]
    trainer.share_audio_encoding = True
    torch.testing.assert_close(results[True], results[False], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[True], batch["ref_per_token_logps"], atol=1e-5, rtol=1e-5)


def test_generation_encodes_every_completion_when_sharing_is_off(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, str(tmp_path), share_audio_encoding=False)
    policy, reference = EncoderRows(trainer.model), EncoderRows(trainer.ref_model)
    trainer._generate_and_score_completions([row for row in rows(CLIPS[:2]) for _ in range(G)])
    assert (policy.rows, reference.rows) == (2 * G, 2 * G)  # generation prefill, reference: every completion


def test_sharing_refuses_an_encoder_with_dropout(tiny_model_dir, tmp_path):
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir)
    model.config.audio_config.dropout = 0.1
    with pytest.raises(ValueError, match="share_audio_encoding"):
        make_trainer(tiny_model_dir, str(tmp_path), model=model)
    make_trainer(tiny_model_dir, str(tmp_path), model=model, share_audio_encoding=False)  # allowed


def test_lora_model_shares_the_encoding_with_the_adapters_in_it(tiny_model_dir, tmp_path):
    """PEFT wraps the model: the encoder is found through the wrapper, LoRA layers inside it included."""
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer = make_trainer(tiny_model_dir, str(tmp_path), peft_config=lora, max_steps=1)
    trainer.current_gradient_accumulation_steps = 1  # set by train(); the loss reads it
    tower = find_audio_tower(trainer.model)
    lora = [name for name, _ in trainer.model.named_parameters() if "lora_A" in name]
    parameters = [next(n for n in lora if "audio_tower" in n), next(n for n in lora if "language_model" in n)]
    batch = trainer._generate_and_score_completions([row for row in rows(CLIPS[:2]) for _ in range(G)])
    batch["advantages"] = torch.linspace(-1.0, 1.0, batch["advantages"].numel()).reshape(batch["advantages"].shape)
    shared = loss_logps_and_grads(trainer, [batch], share=True, parameters=parameters)
    separate = loss_logps_and_grads(trainer, [batch], share=False, parameters=parameters)
    assert_same(shared, separate, parameters)
    assert any("lora_" in name for name, _ in tower.named_parameters()), "LoRA reaches the encoder's q_proj"
    assert (shared[2], separate[2]) == (2, 2 * G)
