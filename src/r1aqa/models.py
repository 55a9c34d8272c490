"""Model families (Qwen2-Audio, the paper's; the Qwen2.5-Omni thinker, audio only): loading, processors, system
prompts, placeholders, and what a folder holds (a model, a LoRA adapter, a processor). Facts: docs/recipe.md §11."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass

from transformers import Qwen2AudioProcessor

QWEN2_AUDIO, QWEN2_5_OMNI = "qwen2_audio", "qwen2_5_omni"
FAMILIES = (QWEN2_AUDIO, QWEN2_5_OMNI)

# The Qwen2.5-Omni model card's system prompt, verbatim.
OMNI_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
    "visual inputs, as well as generating text and speech."
)
# `system_prompt`: `default` the turn both templates add to a conversation without one, `qwen` Omni's, `none` none.
DEFAULT_SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
QWEN_SYSTEM_TURN = f"<|im_start|>system\n{OMNI_SYSTEM_PROMPT}<|im_end|>\n"
SYSTEM_PROMPTS = {"default": DEFAULT_SYSTEM_TURN, "qwen": QWEN_SYSTEM_TURN, "none": ""}
SYSTEM_BLOCK = "{{% if loop.first and message['role'] != 'system' %}}{turn}{{% endif %}}"
# Qwen2.5-Omni's chat template as the hub checkpoint has it: set on every Omni processor.
OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}{% set video_count = "
    "namespace(value=0) %}{% for message in messages %}" + SYSTEM_BLOCK.format(turn=DEFAULT_SYSTEM_TURN) +
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or "
    "'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>{% elif content['type'] == 'audio' or "
    "'audio' in content or 'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)  # fmt: skip
# Named special tokens the Omni processor reads from its tokenizer (`tokenizer.audio_token`, ...).
OMNI_NAMED_TOKENS = {
    "audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
}  # fmt: skip


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]  # config.json `model_type` values of this family
    model_class: str  # the transformers class trained and evaluated (Omni: the thinker, text output)
    frozen_modules: tuple[str, ...] = ()  # never trained: audio-only use leaves them idle
    audio_channels: str = "first"  # to mono: "first" as the original for Qwen2-Audio, "mean" as Qwen's Omni loader


FAMILY_TABLE = {
    QWEN2_AUDIO: ModelFamily(QWEN2_AUDIO, ("qwen2_audio",), "Qwen2AudioForConditionalGeneration"),
    QWEN2_5_OMNI: ModelFamily(QWEN2_5_OMNI, ("qwen2_5_omni", "qwen2_5_omni_thinker"),
                              "Qwen2_5OmniThinkerForConditionalGeneration", ("model.visual",), "mean"),
}  # fmt: skip


class ModelFolderError(ValueError):
    """A model folder without what it needs (a processor, an adapter's base model); the message says what to do."""


class Qwen2_5OmniAudioProcessor(Qwen2AudioProcessor):
    """Qwen2.5-Omni's processor for audio only, where `Qwen2_5OmniProcessor` cannot load (it needs torchvision)."""

    audio_kwargs = {"sampling_rate": 16_000, "return_attention_mask": True}

    def __init__(self, feature_extractor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template or OMNI_CHAT_TEMPLATE, **kwargs)


def family_of_config(config) -> ModelFamily:
    """The family of a config (a transformers config or a config.json dict), by its `model_type`."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    for family in FAMILY_TABLE.values():
        if model_type in family.model_types:
            return family
    known = ", ".join(t for family in FAMILY_TABLE.values() for t in family.model_types)
    raise ValueError(f"Unsupported model_type {model_type!r}: this repository trains {known}.")


def detect_family(model_path: str, revision: str | None = None) -> ModelFamily:
    """The family of the checkpoint at `model_path` (a folder or hub id), from its config.json."""
    from transformers import PretrainedConfig

    return family_of_config(PretrainedConfig.get_config_dict(model_path, revision=revision)[0])


def load_model(model_path: str, family: ModelFamily | None = None, **kwargs):
    """The family's model (Omni: the thinker) from `from_pretrained(**kwargs)`, its unused modules frozen."""
    import transformers

    family = family or detect_family(model_path, kwargs.get("revision"))
    model = getattr(transformers, family.model_class).from_pretrained(model_path, **kwargs)
    for path in family.frozen_modules:
        model.get_submodule(path).requires_grad_(False)
    return model


def load_merged_adapter(adapter_dir: str, base: str, family: ModelFamily | None = None, **kwargs):
    """A LoRA adapter's base model (`load_model(base, family, **kwargs)`) with the adapter's weights folded in."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(base, family, **kwargs), adapter_dir).merge_and_unload()


def load_processor(path: str, family: ModelFamily | None = None, revision: str | None = None, system_prompt="default"):
    """The family's processor, left-padded, with the `system_prompt` setting (Omni: the audio-only one if need be)."""
    from transformers import AutoProcessor, Qwen2_5OmniProcessor

    if (family or detect_family(path, revision)).name == QWEN2_AUDIO:
        processor = AutoProcessor.from_pretrained(path, revision=revision)
    else:
        try:
            processor = Qwen2_5OmniProcessor.from_pretrained(path, revision=revision)
        except Exception as error:  # no torchvision (for its video processor), or saved without vision processors
            logging.getLogger(__name__).info("Processor: audio-only (Qwen2_5OmniProcessor: %s)", str(error)[:200])
            processor = Qwen2_5OmniAudioProcessor.from_pretrained(path, revision=revision)
        processor.chat_template = OMNI_CHAT_TEMPLATE
    processor.tokenizer.padding_side = "left"  # batched generation; not always saved with the tokenizer
    set_system_prompt(processor, system_prompt)
    return processor


def set_system_prompt(processor, system_prompt: str) -> None:
    """Make the chat template's system block render `SYSTEM_PROMPTS[system_prompt]` (without one: only `default`)."""
    if system_prompt not in SYSTEM_PROMPTS:
        raise ValueError(f"system_prompt must be one of {', '.join(SYSTEM_PROMPTS)}; got {system_prompt!r}.")
    template = processor.chat_template if isinstance(processor.chat_template, str) else ""
    blocks = [b for b in (SYSTEM_BLOCK.format(turn=t) for t in SYSTEM_PROMPTS.values()) if template.count(b) == 1]
    if len(blocks) == 1:
        processor.chat_template = template.replace(blocks[0], SYSTEM_BLOCK.format(turn=SYSTEM_PROMPTS[system_prompt]))
    elif system_prompt != "default":
        raise ValueError(f"system_prompt {system_prompt!r}: this chat template has no standard default system turn "
                         "block: use system_prompt default, or a processor with the family's standard template.")  # fmt: skip


def placeholder_token_ids(config) -> list[int]:
    """Ids of the audio/image/video placeholders: generation must never sample them (no features behind them)."""
    names = ("audio_token_index", "audio_token_id", "image_token_id", "video_token_id")
    return sorted({value for name in names if isinstance(value := getattr(config, name, None), int)})


CHECKPOINT_DIR = re.compile(r"^checkpoint-\d+$")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
ADAPTER_CONFIG = "adapter_config.json"  # a PEFT (LoRA) checkpoint: adapters only, used on their base model


def local_or_hub(path: str) -> str:
    """Absolute path for a local folder/file, unchanged for a hub id, so settings compare across working folders."""
    return os.path.abspath(path) if os.path.exists(path) else path


def adapter_base_model(model_path: str) -> str | None:
    """The base model of a LoRA checkpoint (`base_model_name_or_path` of its adapter_config.json), None otherwise."""
    config = os.path.join(model_path, ADAPTER_CONFIG)
    if not os.path.isfile(config):
        return None
    with open(config, encoding="utf-8") as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise ModelFolderError(f"{config} names no base model (base_model_name_or_path): merge the adapter with "
                               "`python -m r1aqa.merge_lora --adapter ... --base MODEL` and use the merged folder.")  # fmt: skip
    return local_or_hub(base)


def has_processor(folder: str) -> bool:
    """A saved processor: a feature-extractor/processor config and a tokenizer."""
    files = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    return bool(files & set(PROCESSOR_FILES)) and bool(files & set(TOKENIZER_FILES))


def resolve_processor_path(model_path: str, processor_path: str | None = None, base_model: str | None = None) -> str:
    """`processor_path`; a hub id itself; the model folder or, for a `checkpoint-N`, its run folder; else the base's."""
    if processor_path or not os.path.isdir(model_path):
        return local_or_hub(processor_path) if processor_path else model_path
    folder = os.path.abspath(model_path)
    candidates = [folder, os.path.dirname(folder)] if CHECKPOINT_DIR.match(os.path.basename(folder)) else [folder]
    base = next((path for path in candidates if has_processor(path)), None) or base_model or adapter_base_model(folder)
    if base is None:
        raise ModelFolderError(f"no processor (a {' or '.join(PROCESSOR_FILES)} and a tokenizer) in "
                               f"{' or '.join(candidates)}. Pass --processor_path with the folder or hub id of the "
                               "model this checkpoint was trained from.")  # fmt: skip
    return local_or_hub(base)
