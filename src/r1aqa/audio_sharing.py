"""Encode each distinct audio clip once per forward pass and copy the encoding to the clip's G completions: for an
encoder without dropout, per-completion log-probs and gradients (backward sums the copies') at 1/G of the cost."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from r1aqa.audio import audio_parts


def audio_groups(prompts: list[list[dict]]) -> torch.Tensor:
    """Per prompt, the index of its audio files among the batch's distinct ones (a prompt without paths: its own)."""
    keys, groups = {}, []
    for index, conversation in enumerate(prompts):
        paths = tuple(
            path if isinstance(path := part.get("path"), str) else ("<no path>", index)
            for part in audio_parts(conversation)
        )
        groups.append(keys.setdefault(paths, len(keys)))
    return torch.tensor(groups, dtype=torch.long)


def find_audio_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The audio encoder inside `model` whatever wraps it (DDP, DeepSpeed, PEFT: LoRA layers included)."""
    for name, module in model.named_modules():
        if name == "audio_tower" or name.endswith(".audio_tower"):
            return module
    raise ValueError(f"No `audio_tower` submodule in {type(model).__name__}: not a Qwen2-Audio model?")


def encoder_has_dropout(audio_config) -> bool:
    """Whether the encoder is random in training (its dropouts are functional: TRL's `disable_dropout` misses them)."""
    names = ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop")
    return any((getattr(audio_config, name, 0.0) or 0.0) > 0 for name in names)


@contextmanager
def hooked(module: torch.nn.Module, pre_hook, hook):
    """`pre_hook` and `hook` (both with kwargs) on `module` while active."""
    pre = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    post = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        pre.remove()
        post.remove()


@contextmanager
def share_audio_encoding(audio_tower: torch.nn.Module, groups: torch.Tensor | None):
    """While active, `audio_tower` encodes the first clip of each of `groups` and copies it to the group's other clips.
    Clips are rows (Qwen2-Audio) or packed along time (Qwen2.5-Omni, with `feature_lens` / `aftercnn_lens`)."""
    if groups is None or torch.unique(groups).numel() == groups.numel():  # nothing to share
        yield
        return
    (unique, inverse), rows = torch.unique(groups, return_inverse=True), groups.numel()
    first = torch.full_like(unique, rows).scatter_reduce(0, inverse, torch.arange(rows, device=groups.device), "amin")
    packed = getattr(getattr(audio_tower, "config", None), "model_type", None) == "qwen2_5_omni_audio_encoder"
    kept_tokens: list[int] = []  # packed: the encoded clips' token counts

    def keep_first_clip_per_group(module, args, kwargs):
        features = args[0] if args else kwargs["input_features"]
        clips = kwargs["feature_lens"].numel() if packed else features.size(0)
        if clips != rows:
            raise RuntimeError(f"Audio encoder called on {clips} clips, but {rows} audio groups were set.")
        if packed:
            pieces = torch.split(features, kwargs["feature_lens"].tolist(), dim=-1)
            kept, per_clip = torch.cat([pieces[i] for i in first.tolist()], dim=-1), ("feature_lens", "aftercnn_lens")
        else:
            kept, per_clip = features.index_select(0, first.to(features.device)), tuple(kwargs)
        for key in per_clip:
            value = kwargs.get(key)
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == rows:
                kwargs[key] = value.index_select(0, first.to(value.device))
        if packed:
            kept_tokens[:] = module._get_feat_extract_output_lengths(kwargs["feature_lens"])[1].tolist()
        return ((kept, *args[1:]), kwargs) if args else (args, {**kwargs, "input_features": kept})

    def expand_to_all_rows(module, args, kwargs, output):
        hidden = output.last_hidden_state
        if packed:  # `torch.cat` of a repeated piece sums its gradients, as `index_select` does
            pieces = torch.split(hidden, kept_tokens, dim=0)
            output.last_hidden_state = torch.cat([pieces[group] for group in inverse.tolist()], dim=0)
            if getattr(output, "pooler_output", None) is not None:
                output.pooler_output = output.last_hidden_state
        else:
            output.last_hidden_state = hidden.index_select(0, inverse.to(hidden.device))
        return output

    with hooked(audio_tower, keep_first_clip_per_group, expand_to_all_rows):
        yield
