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
  group needs the packed variant of `r1aqa.audio_sharing`.

The Omni processor (`Qwen2_5OmniProcessor`) needs a video processor, and that needs torchvision. Where it loads (a
CUDA node with torchvision) it is used; where it does not (CPU-only torch: PyPI's torchvision wheel is a CUDA build),
`Qwen2_5OmniAudioProcessor` is used instead: the same Whisper feature extractor, tokenizer and chat template,
producing the same `input_ids` / `input_features` / `feature_attention_mask` for audio-only conversations.
`load_processor` chooses automatically and logs which one it took.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import Qwen2AudioProcessor

from r1aqa.decoding import EvalError

logger = logging.getLogger("r1aqa.models")

QWEN2_AUDIO = "qwen2_audio"
QWEN2_5_OMNI = "qwen2_5_omni"
FAMILIES = (QWEN2_AUDIO, QWEN2_5_OMNI)

# The Qwen2.5-Omni model card's system prompt (docs/recipe.md §11), verbatim.
OMNI_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
    "visual inputs, as well as generating text and speech."
)
# The system turn both families' chat templates add to a conversation that has none (docs/recipe.md §4, §11).
DEFAULT_SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
# `system_prompt` settings (training and evaluation): `default` keeps the template's own system turn (what the paper
# ran on Qwen2-Audio and Ke-Omni-R on Qwen2.5-Omni); `qwen` puts the Qwen2.5-Omni model card's prompt there; `none`
# renders no system turn.
SYSTEM_PROMPTS = {
    "default": DEFAULT_SYSTEM_TURN,
    "qwen": f"<|im_start|>system\n{OMNI_SYSTEM_PROMPT}<|im_end|>\n",
    "none": "",
}
SYSTEM_BLOCK = "{{% if loop.first and message['role'] != 'system' %}}{turn}{{% endif %}}"
# Qwen2.5-Omni's chat template (docs/recipe.md §11), as the hub checkpoint has it: set on every Omni processor, since
# the audio-only processor and the tiny model have no template of their own.
OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    + SYSTEM_BLOCK.format(turn=DEFAULT_SYSTEM_TURN)
    + "<|im_start|>{{ message['role'] }}\n"
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
OMNI_NAMED_TOKENS = {
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
    # How a multi-channel file becomes the one channel the model hears (r1aqa.audio.load_audio): "first" as the original
    # R1-AQA read it for Qwen2-Audio (`waveform[0]`); "mean" as Qwen's own loader for Qwen2.5-Omni does
    # (qwen_omni_utils: `librosa.load(path, sr=16000)`, whose default mono=True averages the channels).
    audio_channels: str = "first"


FAMILY_TABLE = {
    QWEN2_AUDIO: ModelFamily(
        QWEN2_AUDIO, ("qwen2_audio",), "Qwen2AudioForConditionalGeneration", packed_audio_encoder=False,
        frozen_modules=(),
    ),
    QWEN2_5_OMNI: ModelFamily(
        QWEN2_5_OMNI, ("qwen2_5_omni", "qwen2_5_omni_thinker"), "Qwen2_5OmniThinkerForConditionalGeneration",
        packed_audio_encoder=True, frozen_modules=("model.visual",), audio_channels="mean",
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
    for spec in FAMILY_TABLE.values():
        if model_type in spec.model_types:
            return spec
    known = ", ".join(t for spec in FAMILY_TABLE.values() for t in spec.model_types)
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


def load_processor(
    path: str, family: ModelFamily | None = None, revision: str | None = None, system_prompt: str = "default"
):
    """The family's processor from `path`, with left padding and the `system_prompt` setting (`set_system_prompt`).
    Qwen2.5-Omni: `Qwen2_5OmniProcessor` where it loads, else `Qwen2_5OmniAudioProcessor`; either way with the chat
    template of docs/recipe.md §11."""
    from transformers import AutoProcessor

    family = family or detect_family(path, revision)
    if family.name == QWEN2_AUDIO:
        processor = AutoProcessor.from_pretrained(path, revision=revision)
    else:
        processor = _load_omni_processor(path, revision)
        processor.chat_template = OMNI_CHAT_TEMPLATE
    processor.tokenizer.padding_side = "left"  # batched generation; not always saved with the tokenizer
    set_system_prompt(processor, system_prompt)
    return processor


def set_system_prompt(processor, system_prompt: str) -> None:
    """Make `processor`'s chat template render the system turn of `system_prompt` (a key of `SYSTEM_PROMPTS`) for a
    conversation without one (ours never have one).

    Both families' templates open with `{% if loop.first and message['role'] != 'system' %}TURN{% endif %}`, TURN
    being the default system turn; whichever of the three TURNs the template holds (a checkpoint saved by a run with
    another setting holds that run's) is replaced. A template without that block is left as it is for `default` and
    refused for `qwen` and `none`."""
    if system_prompt not in SYSTEM_PROMPTS:
        raise ValueError(f"system_prompt must be one of {', '.join(SYSTEM_PROMPTS)}; got {system_prompt!r}.")
    template = processor.chat_template
    blocks = [
        SYSTEM_BLOCK.format(turn=turn)
        for turn in SYSTEM_PROMPTS.values()
        if isinstance(template, str) and template.count(SYSTEM_BLOCK.format(turn=turn)) == 1
    ]
    target = SYSTEM_BLOCK.format(turn=SYSTEM_PROMPTS[system_prompt])
    if len(blocks) != 1:
        if system_prompt == "default":
            return
        raise ValueError(
            f"system_prompt {system_prompt!r}: this processor's chat template does not open with the standard default "
            f"system turn block ({target!r} with another turn): use system_prompt default, or a processor with the "
            "family's standard template."
        )
    processor.chat_template = template.replace(blocks[0], target)


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


# ---- placeholders -------------------------------------------------------------------------------------------------


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


# ---- what a folder holds: a model, an adapter, a processor ---------------------------------------------------------

CHECKPOINT_DIR = re.compile(r"^checkpoint-\d+$")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
ADAPTER_CONFIG = "adapter_config.json"  # a PEFT (LoRA) checkpoint: adapters only, evaluated on their base model


def _local_or_hub(path: str) -> str:
    """Absolute path for a local folder/file, unchanged for a hub id, so settings compare across working dirs."""
    return os.path.abspath(path) if os.path.exists(path) else path


def adapter_base_model(model_path: str) -> str | None:
    """The base model of a LoRA checkpoint (`base_model_name_or_path` of its adapter_config.json), None for a full
    model. A path that does not exist here is taken for a hub id."""
    config = os.path.join(model_path, ADAPTER_CONFIG)
    if not os.path.isfile(config):
        return None
    base = json.loads(Path(config).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise EvalError(f"{config} names no base model (base_model_name_or_path): merge the adapter with "
                        "`python -m r1aqa.merge_lora --adapter ... --base MODEL` and evaluate the merged folder.")  # fmt: skip
    return _local_or_hub(base)


def has_processor(folder: str) -> bool:
    """A saved processor: a feature-extractor/processor config and a tokenizer."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in PROCESSOR_FILES) and any(
        os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES
    )


def resolve_processor_path(model_path: str, processor_path: str | None = None) -> str:
    """`processor_path` if given; else the model folder; else its run directory if it is a `checkpoint-N` folder.

    A hub id (not a local folder) is its own processor path. The run directory is only tried for `checkpoint-N`
    folders: the parent of any other folder may hold an unrelated processor. A LoRA checkpoint's base model comes last.
    """
    if processor_path:
        return _local_or_hub(processor_path)
    if not os.path.isdir(model_path):
        return model_path
    model_dir = os.path.abspath(model_path)
    candidates = [model_dir]
    if CHECKPOINT_DIR.match(os.path.basename(model_dir)):
        candidates.append(os.path.dirname(model_dir))
    for folder in candidates:
        if has_processor(folder):
            return folder
    base = adapter_base_model(model_dir)
    if base is not None:
        return _local_or_hub(base)
    raise EvalError(
        f"no processor (a {' or '.join(PROCESSOR_FILES)} and a tokenizer) in {' or '.join(candidates)}. Pass "
        "--processor_path with the folder or hub id of the model this checkpoint was trained from."
    )
