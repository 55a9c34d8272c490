"""Decoding modes (`original`: the checkpoint's own generation config, as the paper; `greedy`: fully specified) resolved
into the one GenerationConfig both backends decode with; vLLM's SamplingParams are built from it (recipe.md §7)."""

from __future__ import annotations

import copy
import hashlib
from contextlib import contextmanager

import numpy as np


class EvalError(ValueError):
    """A problem with the arguments or files of an evaluation; the message says what to do."""


DECODING_MODES = ("original", "greedy")
# Generation fields a user may override on top of either decoding mode (recorded in the settings).
OVERRIDES = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty")
# `--decoding greedy`: every field that changes which token is picked, at its "off" value (None where there is no other
# off value: `checkpoint_defaults_off` keeps transformers from filling those from the checkpoint).
GREEDY = {
    "do_sample": False, "num_beams": 1, "num_return_sequences": 1, "top_k": 50, "use_cache": True,
    **dict.fromkeys(("temperature", "top_p", "typical_p", "repetition_penalty", "encoder_repetition_penalty",
                     "length_penalty"), 1.0),
    **dict.fromkeys(("epsilon_cutoff", "eta_cutoff"), 0.0),
    **dict.fromkeys(("no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "min_new_tokens"), 0),
    **dict.fromkeys(("early_stopping", "renormalize_logits", "remove_invalid_values"), False),
    **dict.fromkeys(("min_p", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
                     "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty", "stop_strings",
                     "max_time", "guidance_scale", "watermarking_config"), None),
}  # fmt: skip
UNSUPPORTED_BY_VLLM = ("num_beams", "no_repeat_ngram_size", "encoder_repetition_penalty", "typical_p", "eta_cutoff",
                       "encoder_no_repeat_ngram_size", "epsilon_cutoff", "bad_words_ids", "suppress_tokens",
                       "begin_suppress_tokens", "sequence_bias", "forced_bos_token_id", "forced_eos_token_id",
                       "exponential_decay_length_penalty")  # fmt: skip


def generation_config(checkpoint, tokenizer, decoding: dict):
    """The GenerationConfig of `decoding` (`mode`, `max_new_tokens`, `overrides`), every field resolved: `original`
    the checkpoint's (as the original's `generate(max_new_tokens=256)`), `greedy` GREEDY with its special token ids."""
    from transformers import GenerationConfig

    pad = checkpoint.pad_token_id if checkpoint.pad_token_id is not None else tokenizer.pad_token_id
    config = (
        copy.deepcopy(checkpoint) if decoding["mode"] == "original" else GenerationConfig(**GREEDY, pad_token_id=pad)
    )
    config.max_new_tokens, config.bos_token_id = decoding["max_new_tokens"], checkpoint.bos_token_id
    # generation ends at every eos id of the checkpoint (Qwen2-Audio: <|endoftext|>, <|im_end|>) and the tokenizer's
    ids = [] if checkpoint.eos_token_id is None else np.atleast_1d(checkpoint.eos_token_id).tolist()
    config.eos_token_id = ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id not in (None, *ids) else [])
    config.update(**decoding["overrides"])
    defaults = GenerationConfig._get_default_generation_params()
    config.update(defaults_only=True, **{k: v for k, v in defaults.items() if k not in ("max_length", "min_length")})
    return config


@contextmanager
def checkpoint_defaults_off(model):
    """While active, `model.generate` uses only the config it is given (not filled from the checkpoint's)."""
    from transformers import GenerationConfig

    saved, model.generation_config = model.generation_config, GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def batch_seed(seed: int, batch_index: int) -> int:
    """The torch seed of one batch (HF backend): a hash of (seed, batch index)."""
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1)[0])


def item_seed(seed: int, item_id: str) -> int:
    """The seed of one vLLM request: a hash of (run seed, item id), independent of the item's batch and position."""
    key = np.frombuffer(hashlib.sha256(str(item_id).encode()).digest()[:16], dtype=np.uint32)
    return int(np.random.SeedSequence([seed, *key.tolist()]).generate_state(1)[0])


def sampling_settings(config, seed: int) -> dict:
    """vLLM `SamplingParams` keyword arguments decoding as the resolved `config` does, with the request's `seed`."""
    unsupported = {name: value for name in UNSUPPORTED_BY_VLLM if (value := getattr(config, name, None)) not in
                   (GREEDY[name], None, [], {})}  # fmt: skip
    if unsupported:
        raise EvalError(f"the vLLM backend cannot decode with {unsupported} (set by the decoding mode or the "
                        "checkpoint's generation_config.json): use --backend hf.")  # fmt: skip
    settings = {"max_tokens": config.max_new_tokens, "min_tokens": config.min_new_tokens or 0, "seed": seed,
                "repetition_penalty": config.repetition_penalty or 1.0, "temperature": 0.0,  # 0: greedy
                "stop_token_ids": list(config.eos_token_id)}  # fmt: skip
    if config.do_sample:  # transformers: top_k None/0 is off; vLLM: 0 is off
        settings.update(temperature=1.0 if config.temperature is None else config.temperature, top_k=config.top_k or 0,
                        top_p=1.0 if config.top_p is None else config.top_p, min_p=config.min_p or 0.0)  # fmt: skip
    return settings


def sampling_params(config, seed: int, item_ids: list[str]) -> list:
    """vLLM `SamplingParams` of `config`, one per request, seeded by `item_seed(seed, item id)`."""
    from vllm import SamplingParams

    return [SamplingParams(**sampling_settings(config, item_seed(seed, item_id))) for item_id in item_ids]
