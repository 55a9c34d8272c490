"""Encode each distinct audio clip once per forward pass and share the encoding across the clip's completions.

GRPO scores G completions of one question, all with the same clip; Qwen2-Audio's encoder always sees a full 30 s
window, so encoding it once per completion repeats the same work G times. `shared_audio_encoding` hooks the encoder
so it runs once per distinct clip and copies the result to every row of the clip (`index_select`, whose backward sums
the copies' gradients into the one encoding: the same gradients as per-completion encoding, for an encoder without
dropout). `AudioGRPOTrainer` uses it in generation and in every log-prob pass (`share_audio_encoding`).
Qwen2.5-Omni's encoder takes the batch packed along time instead of one row per clip:
`shared_audio_encoding_packed` does the same for it, and `share_audio_encoding` picks the variant.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def audio_groups(prompts: list[list[dict]]) -> torch.Tensor:
    """Per prompt, the index of its audio among the distinct audios of the batch (in order of first appearance).

    Audio is identified by its file path(s): the G completions of one question repeat the same path, and two questions
    about the same clip may share its encoding too (the encoder sees only the audio). A prompt whose audio is not a
    path gets a group of its own (never shared).
    """
    keys: dict[object, int] = {}
    groups = []
    for index, conversation in enumerate(prompts):
        paths = []
        for message in conversation:
            if isinstance(message["content"], list):
                for part in message["content"]:
                    if part.get("type") == "audio":
                        path = part.get("path")
                        paths.append(path if isinstance(path, str) else ("<no path>", index))
        groups.append(keys.setdefault(tuple(paths), len(keys)))
    return torch.tensor(groups, dtype=torch.long)


def find_audio_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The audio encoder inside `model`, whatever wraps it (DDP, a DeepSpeed engine, PEFT): the first submodule whose
    name ends in `audio_tower`. PEFT injects LoRA layers in place, so this module carries the adapters (if any)."""
    for name, module in model.named_modules():
        if name == "audio_tower" or name.endswith(".audio_tower"):
            return module
    raise ValueError(f"No `audio_tower` submodule in {type(model).__name__}: not a Qwen2-Audio model?")


def encoder_has_dropout(audio_config) -> bool:
    """Whether the encoder is random in training (Qwen2-Audio's encoder applies its dropouts functionally, so TRL's
    `disable_dropout` does not switch them off)."""
    return any(
        (getattr(audio_config, name, 0.0) or 0.0) > 0
        for name in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop")
    )


@contextmanager
def hooked(module: torch.nn.Module, pre_hook, hook):
    """`pre_hook` and `hook` (both with kwargs) on `module` while active."""
    handles = [
        module.register_forward_pre_hook(pre_hook, with_kwargs=True),
        module.register_forward_hook(hook, with_kwargs=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def group_plan(groups: torch.Tensor | None) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """`(rows, inverse, first)` for sharing: the number of rows, each row's group (0..G-1, in order of the groups'
    ids) and each group's first row; None when there is nothing to share (no groups, or every row its own group)."""
    if groups is None:
        return None
    groups = groups.reshape(-1)
    unique, inverse = torch.unique(groups, return_inverse=True)
    if unique.numel() == groups.numel():
        return None
    rows = groups.numel()
    positions = torch.arange(rows, device=groups.device)
    first = torch.full((unique.numel(),), rows, dtype=torch.long, device=groups.device)
    return rows, inverse, first.scatter_reduce(0, inverse, positions, reduce="amin")


@contextmanager
def shared_audio_encoding(audio_tower: torch.nn.Module, groups: torch.Tensor | None):
    """While active, a call of `audio_tower` on B rows encodes only one row per distinct group and copies each
    encoding to the rows of its group (`index_select`, whose backward sums the copies' gradients into the one
    encoding: the same gradient as encoding every row, for a deterministic encoder).

    Implemented as a forward pre-hook (keep the first row of each group) and a forward hook (expand the output), so
    the model's own forward runs unchanged around it: its checks, its merge of audio embeddings into the text
    embeddings, DeepSpeed ZeRO-3's parameter hooks, DDP and PEFT all see an ordinary forward pass.
    """
    plan = group_plan(groups)
    if plan is None:
        yield
        return
    rows, inverse, first = plan

    def select(value):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == rows:
            return value.index_select(0, first.to(value.device))
        return value

    def keep_one_row_per_group(module, args, kwargs):
        features = args[0] if args else kwargs["input_features"]
        if features.size(0) != rows:
            raise RuntimeError(f"Audio encoder called on {features.size(0)} rows, but {rows} audio groups were set.")
        return tuple(select(a) for a in args), {key: select(value) for key, value in kwargs.items()}

    def expand_to_all_rows(module, args, kwargs, output):
        hidden = output.last_hidden_state
        output.last_hidden_state = hidden.index_select(0, inverse.to(hidden.device))
        return output

    with hooked(audio_tower, keep_one_row_per_group, expand_to_all_rows):
        yield


def encoder_packs_batch(audio_tower) -> bool:
    """Whether this audio encoder takes the whole batch packed along time (Qwen2.5-Omni) rather than one row per
    clip (Qwen2-Audio)."""
    config = getattr(audio_tower, "config", None)
    return getattr(config, "model_type", None) == "qwen2_5_omni_audio_encoder"


@contextmanager
def shared_audio_encoding_packed(audio_tower, groups):
    """`shared_audio_encoding` for an encoder that packs the batch along time (Qwen2.5-Omni).

    The encoder is called once per forward pass with the features of all B clips concatenated along time
    (128 x sum of frames), `feature_lens` (frames per clip) and `aftercnn_lens`, and returns the clips' tokens
    concatenated (sum of tokens x dim). While active, a forward pre-hook keeps the first clip of each group
    (slicing the packed features by `feature_lens`) and a forward hook splits the output by the kept clips' token
    counts and concatenates, for each of the B rows in order, the tokens of its group's clip. `torch.cat` of the
    same piece for several rows sums their gradients into it in the backward pass: for an encoder without dropout
    this is the per-clip computation.
    """
    plan = group_plan(groups)
    if plan is None:
        yield
        return
    rows, inverse, first = plan
    first, inverse = first.tolist(), inverse.tolist()
    kept_lens = {}

    def keep_first_clip_per_group(module, args, kwargs):
        features = args[0] if args else kwargs["input_features"]
        feature_lens = kwargs["feature_lens"]
        if feature_lens.numel() != rows:
            raise RuntimeError(
                f"Audio encoder called on {feature_lens.numel()} clips, but {rows} audio groups were set."
            )
        clips = torch.split(features, feature_lens.tolist(), dim=-1)
        kept = torch.cat([clips[i] for i in first], dim=-1)
        index = torch.tensor(first, device=feature_lens.device)
        kwargs = dict(kwargs, feature_lens=feature_lens.index_select(0, index))
        if kwargs.get("aftercnn_lens") is not None:
            kwargs["aftercnn_lens"] = kwargs["aftercnn_lens"].index_select(0, index.to(kwargs["aftercnn_lens"].device))
        kept_lens["tokens"] = module._get_feat_extract_output_lengths(kwargs["feature_lens"])[1].tolist()
        if args:
            return (kept, *args[1:]), kwargs
        return args, dict(kwargs, input_features=kept)

    def expand_to_all_rows(module, args, kwargs, output):
        pieces = torch.split(output.last_hidden_state, kept_lens["tokens"], dim=0)
        expanded = torch.cat([pieces[group] for group in inverse], dim=0)
        output.last_hidden_state = expanded
        if getattr(output, "pooler_output", None) is not None:
            output.pooler_output = expanded
        return output

    with hooked(audio_tower, keep_first_clip_per_group, expand_to_all_rows):
        yield


def share_audio_encoding(audio_tower: torch.nn.Module, groups: torch.Tensor | None):
    """The sharing context for this encoder: row-wise (Qwen2-Audio) or packed along time (Qwen2.5-Omni)."""
    share = shared_audio_encoding_packed if encoder_packs_batch(audio_tower) else shared_audio_encoding
    return share(audio_tower, groups)
