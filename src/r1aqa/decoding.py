"""Decoding: the two modes (`original`: the checkpoint's own generation config, as the paper; `greedy`: fully
specified), resolved into one transformers GenerationConfig that both backends decode with (vLLM's SamplingParams are
built from it)."""

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
# `--decoding greedy`: every field that changes which token is picked, set here. None means "off" for the fields that
# have no other off value; `checkpoint_defaults_off` keeps transformers from filling them from the checkpoint.
GREEDY = {
    "do_sample": False,
    "num_beams": 1,
    "num_return_sequences": 1,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "length_penalty": 1.0,
    "early_stopping": False,
    "min_new_tokens": 0,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "use_cache": True,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "stop_strings": None,
    "max_time": None,
    "guidance_scale": None,
    "watermarking_config": None,
}


def stop_token_ids(checkpoint, tokenizer) -> list[int]:
    """Every id of the checkpoint's `generation_config.eos_token_id` (Qwen2-Audio-7B-Instruct: `<|endoftext|>` and
    `<|im_end|>`), then the tokenizer's eos if it is not among them: generation ends at any of them."""
    ids = checkpoint.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generation_config(checkpoint, tokenizer, decoding: dict):
    """The GenerationConfig of `decoding["mode"]`, with every field resolved (what `generate` will use), from the
    checkpoint's own GenerationConfig (`model.generation_config`) and tokenizer. Both backends decode with it.

    `original`: a copy of the checkpoint's own `model.generation_config` with `max_new_tokens` set, exactly what the
    original's `model.generate(**inputs, max_new_tokens=256)` resolved to. `greedy`: `GREEDY`, with only the
    special token ids from the checkpoint (pad: the checkpoint's, else the tokenizer's). Then, in both, the stop ids
    of `stop_token_ids`, the user's overrides, and transformers' global defaults for any field still unset (what
    `generate` would fill in; `max_length`/`min_length` stay unset: `max_new_tokens`/`min_new_tokens` decide).
    """
    from transformers import GenerationConfig

    if decoding["mode"] == "original":
        config = copy.deepcopy(checkpoint)
        config.max_new_tokens = decoding["max_new_tokens"]
    elif decoding["mode"] == "greedy":
        pad = checkpoint.pad_token_id if checkpoint.pad_token_id is not None else tokenizer.pad_token_id
        config = GenerationConfig(
            **GREEDY, max_new_tokens=decoding["max_new_tokens"], pad_token_id=pad, bos_token_id=checkpoint.bos_token_id
        )
    else:
        raise EvalError(f"unknown decoding mode {decoding['mode']!r}: one of {DECODING_MODES}.")
    config.eos_token_id = stop_token_ids(checkpoint, tokenizer)
    if decoding["overrides"]:
        config.update(**decoding["overrides"])
    defaults = GenerationConfig._get_default_generation_params()
    config.update(defaults_only=True, **{k: v for k, v in defaults.items() if k not in ("max_length", "min_length")})
    return config


@contextmanager
def checkpoint_defaults_off(model):
    """While active, `model.generate` uses only the config it is given.

    transformers 5.23's `generate` fills every field of the passed config that is None from `model.generation_config`
    (the checkpoint's generation_config.json: `_prepare_generation_config`), so a planted `no_repeat_ngram_size`,
    `min_new_tokens`, `suppress_tokens` or `do_sample` would leak into a config that leaves the field unset. An empty
    GenerationConfig stands in for the checkpoint's during the call; `generation_config` has already copied from the
    checkpoint what the mode takes from it.
    """
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def batch_seed(seed: int, batch_index: int) -> int:
    """The torch seed of one batch: a hash of (seed, batch index), so batch b draws the same numbers whether the run
    started at batch 0 or resumed at batch b."""
    import numpy as np

    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1)[0])


UNSUPPORTED_BY_VLLM = (
    "num_beams",
    "no_repeat_ngram_size",
    "encoder_repetition_penalty",
    "encoder_no_repeat_ngram_size",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "sequence_bias",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "exponential_decay_length_penalty",
)


def sampling_settings(config, seed: int) -> dict:
    """The keyword arguments of vLLM's `SamplingParams` that decode as the resolved transformers `GenerationConfig`
    `config` does (`r1aqa.evaluate.generation_config`: the same for both backends): greedy or sampling with its
    temperature / top-k / top-p / min-p, repetition penalty, minimum and maximum new tokens, the same stop ids, and the
    request's `seed`. A field vLLM cannot express (beam search, n-gram blocking, suppressed tokens, ...) stops with a
    message rather than decoding differently."""
    unsupported = {
        name: getattr(config, name, None)
        for name in UNSUPPORTED_BY_VLLM
        if getattr(config, name, None) not in (GREEDY[name], None, [], {})
    }
    if unsupported:
        raise EvalError(
            f"the vLLM backend cannot decode with {unsupported} (set by the decoding mode or the checkpoint's "
            "generation_config.json): use --backend hf."
        )
    eos = config.eos_token_id
    settings = {
        "max_tokens": config.max_new_tokens,
        "min_tokens": config.min_new_tokens or 0,
        "repetition_penalty": config.repetition_penalty or 1.0,
        "stop_token_ids": [] if eos is None else [eos] if isinstance(eos, int) else list(eos),
        "seed": seed,
    }
    if config.do_sample:
        settings.update(
            temperature=config.temperature if config.temperature is not None else 1.0,
            top_k=config.top_k or 0,  # transformers: None/0 is off; vLLM: 0 is off
            top_p=config.top_p if config.top_p is not None else 1.0,
            min_p=config.min_p or 0.0,
        )
    else:
        settings["temperature"] = 0.0  # greedy
    return settings


def sampling_params(config, seed: int):
    """`SamplingParams(**sampling_settings(config, seed))`."""
    from vllm import SamplingParams

    return SamplingParams(**sampling_settings(config, seed))


def item_seed(seed: int, item_id: str) -> int:
    """The vLLM seed of one evaluation request: a hash of (run seed, item id). vLLM draws each request's random
    numbers from its own seed, so an item's prediction depends neither on the batch it is in nor on its position."""
    key = np.frombuffer(hashlib.sha256(str(item_id).encode()).digest()[:16], dtype=np.uint32)
    return int(np.random.SeedSequence([seed, *key.tolist()]).generate_state(1)[0])


def item_sampling_params(config, seed: int, item_ids: list[str]) -> list:
    """One `SamplingParams` per request, each seeded with `item_seed(seed, item id)`."""
    return [sampling_params(config, item_seed(seed, item_id)) for item_id in item_ids]
