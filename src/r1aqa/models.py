"""Model families: which class, processor, audio encoder and placeholders a checkpoint has (docs/recipe.md §11).

Two families are supported, told apart by the checkpoint's `config.json` (`model_type`):

- `qwen2_audio` (Qwen2-Audio-7B-Instruct, the paper's model): `Qwen2AudioForConditionalGeneration` and
  `Qwen2AudioProcessor`. Its audio encoder takes a batch of feature rows (B x 128 x 3000) and returns one row of
  embeddings per clip.
- `qwen2_5_omni` (Qwen2.5-Omni-3B/7B): only the *thinker* is loaded (`Qwen2_5OmniThinkerForConditionalGeneration`,
  text output), from a thinker folder (`qwen2_5_omni_thinker`) or a full Omni checkpoint (`qwen2_5_omni`: the talker
  and speech decoder are skipped). Audio only: its vision tower is frozen and never sees an input, and generation may
  not sample the audio, image or video placeholders. Its audio encoder *packs* the batch along time (features
  128 x sum of clip frames, plus `feature_lens`; output sum of clip tokens x dim), so sharing its encoding within a
  group needs `shared_audio_encoding_packed`.

The Omni processor (`Qwen2_5OmniProcessor`) needs a video processor, and that needs torchvision. Where it loads (a
CUDA node with torchvision) it is used; where it does not (CPU-only torch: PyPI's torchvision wheel is a CUDA build),
`Qwen2_5OmniAudioProcessor` is used instead: the same Whisper feature extractor, tokenizer and chat template,
producing the same `input_ids` / `input_features` / `feature_attention_mask` for audio-only conversations.
`load_processor` chooses automatically and logs which one it took.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from transformers import Qwen2AudioProcessor

logger = logging.getLogger("r1aqa.models")

QWEN2_AUDIO = "qwen2_audio"
QWEN2_5_OMNI = "qwen2_5_omni"
FAMILIES = (QWEN2_AUDIO, QWEN2_5_OMNI)

# The Qwen2.5-Omni model card's system prompt (docs/recipe.md §11), verbatim.
OMNI_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
    "visual inputs, as well as generating text and speech."
)
# Qwen2.5-Omni's chat template (docs/recipe.md §11) with one change: a conversation without a system message gets the
# model card's system prompt instead of `You are a helpful assistant.`. Rendered, that is byte for byte the hub
# template given an explicit system message with the model card's prompt (tests/test_omni.py checks it).
OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + OMNI_SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Named special tokens the Omni processor reads from its tokenizer (`tokenizer.audio_token`, ...).
OMNI_SPECIAL_TOKENS = {
    "audio_token": "<|AUDIO|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]  # config.json `model_type` values of this family
    model_class: str  # transformers class that is trained and evaluated
    packed_audio_encoder: bool  # the audio encoder packs the batch along time (one call for all clips)
    frozen_modules: tuple[str, ...]  # submodules (attribute paths) never trained: audio-only use leaves them idle


FAMILY_SPECS = {
    QWEN2_AUDIO: ModelFamily(
        QWEN2_AUDIO, ("qwen2_audio",), "Qwen2AudioForConditionalGeneration", packed_audio_encoder=False,
        frozen_modules=(),
    ),
    QWEN2_5_OMNI: ModelFamily(
        QWEN2_5_OMNI, ("qwen2_5_omni", "qwen2_5_omni_thinker"), "Qwen2_5OmniThinkerForConditionalGeneration",
        packed_audio_encoder=True, frozen_modules=("model.visual",),
    ),
}  # fmt: skip


class Qwen2_5OmniAudioProcessor(Qwen2AudioProcessor):
    """Qwen2.5-Omni's processor for audio-only conversations, without the image and video processors.

    `Qwen2_5OmniProcessor` expands each `<|AUDIO|>` into `(((L - 1) // 2 + 1) - 2) // 2 + 1` placeholders for L
    feature frames and returns `input_features` (padded to the feature extractor's window) and
    `feature_attention_mask`: so does `Qwen2AudioProcessor`, from the same feature extractor and tokenizer. This
    class only gives it Omni's defaults (16 kHz, Omni's chat template). It is what `load_processor` falls back to
    where the full processor cannot load (no torchvision).
    """

    audio_kwargs = {"sampling_rate": 16_000, "return_attention_mask": True}

    def __init__(self, feature_extractor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template or OMNI_CHAT_TEMPLATE, **kwargs)


# ---- which family ----------------------------------------------------------------------------------------------------


def family_of_config(config) -> ModelFamily:
    """The family of a config (a transformers config object or a config.json dict), by its `model_type`."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    for spec in FAMILY_SPECS.values():
        if model_type in spec.model_types:
            return spec
    known = ", ".join(t for spec in FAMILY_SPECS.values() for t in spec.model_types)
    raise ValueError(f"Unsupported model_type {model_type!r}: this repository trains {known}.")


def detect_family(model_path: str, revision: str | None = None) -> ModelFamily:
    """The family of the checkpoint at `model_path` (a folder or hub id), from its config.json."""
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(model_path, revision=revision)
    return family_of_config(config)


# ---- loading -------------------------------------------------------------------------------------------------------


def load_model(model_path: str, family: ModelFamily | None = None, **kwargs):
    """The family's model class from `model_path` (`from_pretrained` kwargs pass through); for Qwen2.5-Omni the
    thinker, from a thinker folder or a full Omni checkpoint, with its unused modules frozen."""
    import transformers

    family = family or detect_family(model_path, kwargs.get("revision"))
    model = getattr(transformers, family.model_class).from_pretrained(model_path, **kwargs)
    freeze_unused_modules(model, family)
    return model


def freeze_unused_modules(model, family: ModelFamily | None = None) -> None:
    """`requires_grad_(False)` on the modules audio-only training never runs (Qwen2.5-Omni's vision tower): no
    optimizer state for them, and no DDP error for parameters without gradients."""
    family = family or family_of_config(model.config)
    for path in family.frozen_modules:
        module = model
        for name in path.split("."):
            module = getattr(module, name)
        module.requires_grad_(False)


def load_processor(path: str, family: ModelFamily | None = None, revision: str | None = None):
    """The family's processor from `path`, with left padding. Qwen2.5-Omni: `Qwen2_5OmniProcessor` where it loads,
    else `Qwen2_5OmniAudioProcessor`; either way with the chat template of docs/recipe.md §11."""
    from transformers import AutoProcessor

    family = family or detect_family(path, revision)
    if family.name == QWEN2_AUDIO:
        processor = AutoProcessor.from_pretrained(path, revision=revision)
    else:
        processor = _load_omni_processor(path, revision)
        processor.chat_template = OMNI_CHAT_TEMPLATE
    processor.tokenizer.padding_side = "left"  # batched generation; not always saved with the tokenizer
    return processor


def _load_omni_processor(path: str, revision: str | None):
    from transformers import Qwen2_5OmniProcessor

    try:
        processor = Qwen2_5OmniProcessor.from_pretrained(path, revision=revision)
        logger.info("Processor: Qwen2_5OmniProcessor from %s", path)
        return processor
    except Exception as error:  # no torchvision (video processor), or a folder saved without vision processors
        reason = f"{type(error).__name__}: {str(error).split('. ')[0].splitlines()[0] if str(error) else ''}"
    try:
        processor = Qwen2_5OmniAudioProcessor.from_pretrained(path, revision=revision)
    except Exception as error:
        raise ValueError(
            f"{path}: cannot load a Qwen2.5-Omni processor (Qwen2_5OmniProcessor: {reason}; audio-only: {error})."
        ) from error
    logger.info("Processor: Qwen2_5OmniAudioProcessor from %s (Qwen2_5OmniProcessor unavailable: %s)", path, reason)
    return processor


# ---- audio encoder -------------------------------------------------------------------------------------------------


def encoder_packs_batch(audio_tower) -> bool:
    """Whether this audio encoder takes the whole batch packed along time (Qwen2.5-Omni) rather than one row per
    clip (Qwen2-Audio)."""
    config = getattr(audio_tower, "config", None)
    return getattr(config, "model_type", None) == "qwen2_5_omni_audio_encoder"


def placeholder_token_ids(config) -> list[int]:
    """Ids of the multimodal placeholders (audio, image, video) the config names: generation must never sample
    them (a sampled placeholder would have no features behind it, and would shift the audio features in the
    log-prob passes)."""
    ids = set()
    for name in ("audio_token_index", "audio_token_id", "image_token_id", "video_token_id"):
        with contextlib.suppress(AttributeError):
            value = getattr(config, name, None)
            if isinstance(value, int):
                ids.add(value)
    return sorted(ids)


@contextlib.contextmanager
def shared_audio_encoding_packed(audio_tower, groups):
    """`r1aqa.trainer.shared_audio_encoding` for an encoder that packs the batch along time (Qwen2.5-Omni).

    The encoder is called once per forward pass with the features of all B clips concatenated along time
    (128 x sum of frames), `feature_lens` (frames per clip) and `aftercnn_lens`, and returns the clips' tokens
    concatenated (sum of tokens x dim). While active, a forward pre-hook keeps the first clip of each group
    (slicing the packed features by `feature_lens`) and a forward hook splits the output by the kept clips' token
    counts and concatenates, for each of the B rows in order, the tokens of its group's clip. `torch.cat` of the
    same piece for several rows sums their gradients into it in the backward pass: for an encoder without dropout
    this is the per-clip computation.
    """
    import torch

    if groups is None:
        yield
        return
    groups = groups.reshape(-1)
    unique, inverse = torch.unique(groups, return_inverse=True)
    if unique.numel() == groups.numel():  # nothing to share
        yield
        return
    rows = groups.numel()
    positions = torch.arange(rows, device=groups.device)
    first = torch.full((unique.numel(),), rows, dtype=torch.long, device=groups.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin").tolist()
    inverse = inverse.tolist()
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

    handles = [
        audio_tower.register_forward_pre_hook(keep_first_clip_per_group, with_kwargs=True),
        audio_tower.register_forward_hook(expand_to_all_rows, with_kwargs=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
