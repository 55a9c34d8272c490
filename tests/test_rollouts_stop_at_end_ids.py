"""Training rollouts stop at every end id of the model's generation config (issue 14; docs/recipe.md §6).

The original's rollouts stopped at every id of Qwen2-Audio-7B-Instruct's `generation_config.eos_token_id`
(`<|endoftext|>` and `<|im_end|>`); if only the tokenizer's eos (`<|endoftext|>`) ended them, completions would run
past the end of the turn and fail the format reward. TRL 1.16's GRPOTrainer already stops at the model's eos ids
(plus the tokenizer's): this pins that for AudioGRPOTrainer, with a tiny model steered to say `yes<|im_end|>no...`.
"""

from helpers.stop_model import END_OF_TEXT, IM_END, steer, stop_test_model
from helpers.tiny_grpo import make_trainer


def test_rollout_ends_at_im_end_when_the_tokenizer_eos_is_endoftext(tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    ids = stop_test_model(tmp_path / "model")
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "model")
    steps = steer(model, ids)
    seen = []

    def record(completions, completion_ids, **kwargs):
        seen.extend(completion_ids)
        return [0.0] * len(completions)

    trainer = make_trainer(str(tmp_path / "model"), str(tmp_path / "out"), model=model, max_steps=1, beta=0.0)
    trainer.reward_funcs = [record]
    assert trainer.processing_class.tokenizer.eos_token_id == ids[END_OF_TEXT]
    assert set(trainer.generation_config.eos_token_id) == {ids[END_OF_TEXT], ids[IM_END]}
    trainer.train()
    assert seen and all(completion == [ids["yes"], ids[IM_END]] for completion in seen), seen
    # generation itself stopped: one step after the prompt's (<|im_end|>), not max_completion_length (8)
    assert 1 in steps and max(steps) == 1
