"""A tiny Qwen2-Audio whose tokenizer's eos (`<|endoftext|>`) is not its chat's end of turn (`<|im_end|>`), and an
LM-head bias that makes any generation say `yes`, then `<|im_end|>`, then `no` forever: a generation that stops at
every id of `generation_config.eos_token_id` ends after `yes`; one that stops only at the tokenizer's eos goes on."""

import json
from pathlib import Path

from r1aqa.tryout.tiny import write_tiny_model

END_OF_TEXT, IM_END = "<|endoftext|>", "<|im_end|>"


def stop_test_model(folder, extra_tokens: tuple[str, ...] = ()) -> dict[str, int]:
    """Write the model to `folder`; return the ids of `<|endoftext|>`, `<|im_end|>`, `yes` and `no`.

    Its generation_config.eos_token_id is [`<|endoftext|>`, `<|im_end|>`], as Qwen2-Audio-7B-Instruct's.
    """
    from transformers import AutoProcessor

    folder = Path(folder)
    write_tiny_model(str(folder), extra_tokens=extra_tokens)
    processor = AutoProcessor.from_pretrained(folder)
    processor.tokenizer.eos_token = END_OF_TEXT
    processor.save_pretrained(folder)
    ids = {name: processor.tokenizer.convert_tokens_to_ids(name) for name in (END_OF_TEXT, IM_END, "yes", "no")}
    config = json.loads((folder / "generation_config.json").read_text())
    config["eos_token_id"] = [ids[END_OF_TEXT], ids[IM_END]]
    (folder / "generation_config.json").write_text(json.dumps(config))
    assert processor.tokenizer.eos_token_id == ids[END_OF_TEXT] != ids[IM_END]
    return ids


def steer(model, ids: dict[str, int]) -> list[int]:
    """Bias `model`'s LM head: `yes` after a prompt (a forward over several positions), `<|im_end|>` at the next
    one-token step, `no` after that. Returns a list whose last value is the number of one-token steps since the
    last prompt pass."""
    steps = [0]

    def biased(module, args, output):
        if output.shape[-2] > 1:  # a prefill (or a scoring pass): a new generation starts
            steps.append(0)
            token = ids["yes"]
        else:
            steps[-1] += 1
            token = ids[IM_END] if steps[-1] == 1 else ids["no"]
        output[..., -1, token] += 1000.0
        return output

    model.lm_head.register_forward_hook(biased)
    return steps
