"""A tiny random Qwen2-Audio or Qwen2.5-Omni thinker with a real processor, for tests and CPU runs (no download).

`--family qwen2_audio` (the default): the real `Qwen2AudioForConditionalGeneration` class with a 2-layer audio
encoder and a 2-layer Qwen2 language model (~0.5 M parameters); the processor is the real `Qwen2AudioProcessor` with
a 128-mel Whisper feature extractor and a small byte-level BPE tokenizer trained here, carrying Qwen2-Audio's special
tokens. Its chat template renders docs/recipe.md §4's string byte for byte.

`--family qwen2_5_omni`: the real `Qwen2_5OmniThinkerForConditionalGeneration` class (2-layer audio encoder, 1-block
vision encoder, 2-layer language model) and Omni's special tokens and chat template (docs/recipe.md §11); the
processor is `r1aqa.models.Qwen2_5OmniAudioProcessor` (the full Omni processor needs torchvision, see r1aqa.models).

The same family, seed and options give the same bytes.

    python -m r1aqa.tryout.tiny --out outputs/tiny-qwen2-audio
    python -m r1aqa.tryout.tiny --out outputs/tiny-2s --chunk_length 2      # short audio window for the demo
    python -m r1aqa.tryout.tiny --family qwen2_5_omni --out outputs/tiny-qwen2.5-omni \\
        --extra_tokens "<answer>" "</answer>" low top                     # the CPU try-out's toy task, on Omni
    python -m r1aqa.tryout.tiny --out outputs/tiny-vllm --head_dim 32       # loadable by vLLM's CPU attention

`--head_dim` sets the language model's attention head size (default 16: 4 heads of the 64-wide hidden state); vLLM's
CPU attention supports head sizes 32 to 512 only, so models meant for vLLM use 32 (2 heads, same parameter count).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)
from transformers.models.qwen2 import Qwen2Config
from transformers.models.qwen2_audio.configuration_qwen2_audio import Qwen2AudioEncoderConfig

from r1aqa.models import (
    FAMILIES,
    OMNI_CHAT_TEMPLATE,
    OMNI_NAMED_TOKENS,
    OMNI_SYSTEM_PROMPT,
    QWEN2_5_OMNI,
    QWEN2_AUDIO,
    Qwen2_5OmniAudioProcessor,
)
from r1aqa.prompts import ANSWER_INSTRUCTION, OPTIONS_SENTENCE, THINK_INSTRUCTION

PAD_TOKEN = "<|endoftext|>"  # Qwen2's bos and pad
EOS_TOKEN = "<|im_end|>"
RESERVED_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN, "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
# Qwen2.5-Omni adds the vision placeholders; the thinker has a vision tower, which audio-only training never uses.
OMNI_RESERVED_TOKENS = RESERVED_TOKENS + ["<|vision_bos|>", "<|vision_eos|>", "<|IMAGE|>", "<|VIDEO|>"]

# Qwen2-Audio-Instruct's template, except that audio parts are recognised by `type` alone: `datasets` gives every
# content item every key (missing ones as None), and the hub template's `'audio' in content` test then renders an
# audio placeholder for text parts too.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

# Text the tokenizer's merges are learned from: the prompt templates and the words of typical questions, so prompts
# take few tokens. Byte-level BPE still encodes any text.
_CORPUS = [
    OPTIONS_SENTENCE + ANSWER_INSTRUCTION,
    OPTIONS_SENTENCE + THINK_INSTRUCTION,
    "You are a helpful assistant. Audio 1: system user assistant",
    "<answer> </answer> <think> </think> <answer>yes</answer> <answer>no</answer>",
    "What happened in the audio? What is the main source of sound? Which instrument is playing? How many people "
    "are speaking? What is the emotion of the speaker? What genre is this music? Is the sound loud or quiet?",
    "motorboat sailboat car dog cat bird water wind rain engine guitar piano drum violin singing speech male female "
    "happy sad angry neutral high low top one two three four five six seven eight nine ten Hz tone beep silence",
]


def build_tokenizer(extra_tokens: tuple[str, ...] = (), family: str = QWEN2_AUDIO) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the family's special tokens, trained on `_CORPUS` (deterministic)."""
    omni = family == QWEN2_5_OMNI
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=OMNI_RESERVED_TOKENS if omni else RESERVED_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((_CORPUS + [OMNI_SYSTEM_PROMPT] if omni else _CORPUS) * 4, trainer=trainer)
    # Omni's processor reads its placeholders from named tokenizer attributes (`tokenizer.audio_token`, ...).
    named = {"extra_special_tokens": OMNI_NAMED_TOKENS} if omni else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        padding_side="left",
        model_max_length=4096,
        chat_template=OMNI_CHAT_TEMPLATE if omni else CHAT_TEMPLATE,
        **named,
    )
    # Added as whole tokens (not special: they are decoded with the text) for demo tasks whose answers must be
    # one token each.
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
    return tokenizer


def build_processor(
    chunk_length: int = 30, extra_tokens: tuple[str, ...] = (), family: str = QWEN2_AUDIO
) -> Qwen2AudioProcessor:
    """The family's processor: 128 mel bins (Whisper's default is 80), 16 kHz, `chunk_length` s window."""
    feature_extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16_000, chunk_length=chunk_length)
    if family == QWEN2_5_OMNI:
        return Qwen2_5OmniAudioProcessor(
            feature_extractor=feature_extractor, tokenizer=build_tokenizer(extra_tokens, family)
        )
    return Qwen2AudioProcessor(
        feature_extractor=feature_extractor, tokenizer=build_tokenizer(extra_tokens), chat_template=CHAT_TEMPLATE
    )


HIDDEN_SIZE = 64
DEFAULT_HEAD_DIM = 16  # 4 heads


def build_model(
    processor: Qwen2AudioProcessor, seed: int = 0, chunk_length: int = 30, head_dim: int = DEFAULT_HEAD_DIM
):
    """Random weights from `seed`. `max_source_positions` must equal the mel frames of the window / 2. `head_dim` is
    the language model's attention head size (it must divide the hidden size, 64)."""
    if head_dim < 1 or HIDDEN_SIZE % head_dim:
        raise ValueError(f"head_dim must divide the hidden size {HIDDEN_SIZE}, got {head_dim}.")
    heads = HIDDEN_SIZE // head_dim
    tokenizer = processor.tokenizer
    audio_config = Qwen2AudioEncoderConfig(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        d_model=64,
        max_source_positions=chunk_length * 50,
    )
    text_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Qwen2AudioConfig(
        audio_config=audio_config,
        text_config=text_config,
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    return random_model(Qwen2AudioForConditionalGeneration, config, tokenizer, seed)


def build_omni_model(processor: Qwen2_5OmniAudioProcessor, seed: int = 0, chunk_length: int = 30):
    """A random Qwen2.5-Omni thinker from `seed`: the real class at toy sizes, Omni's placeholder ids from the
    tokenizer. `max_source_positions` must cover the mel frames of the window / 2."""
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    tokenizer = processor.tokenizer
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in OMNI_NAMED_TOKENS.items()}
    hidden, heads = 64, 4
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(
            num_mel_bins=128,
            encoder_layers=2,
            encoder_attention_heads=4,
            encoder_ffn_dim=128,
            d_model=64,
            max_source_positions=chunk_length * 50,
            output_dim=hidden,
        ),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=hidden,
            fullatt_block_indexes=[0],
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            # mrope_section splits the rotary half-dimension (hidden / heads / 2 = 8) into time, height, width.
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
            tie_word_embeddings=False,
            bos_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        audio_token_index=ids["audio_token"],
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"],
        # Read by the thinker's rope-index code (get_rope_index), not declared by the config class.
        vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"],
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return random_model(Qwen2_5OmniThinkerForConditionalGeneration, config, tokenizer, seed)


def random_model(model_class, config, tokenizer, seed: int):
    """`model_class(config)` with weights drawn from `seed`, in eval mode, and a generation config that stops at the
    chat's end-of-turn token and at `<|endoftext|>` (as Qwen2-Audio-7B-Instruct's does)."""
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )
    return model.eval()


def write_tiny_model(
    out_dir: str,
    seed: int = 0,
    chunk_length: int = 30,
    extra_tokens: tuple[str, ...] = (),
    family: str = QWEN2_AUDIO,
    head_dim: int = DEFAULT_HEAD_DIM,
) -> str:
    """Build and save model + processor to `out_dir`; return it. Loadable with `r1aqa.models.load_model` /
    `load_processor` (Qwen2-Audio: with `from_pretrained` / `AutoProcessor` too). `head_dim` applies to Qwen2-Audio."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    processor = build_processor(chunk_length, extra_tokens, family)
    if family == QWEN2_5_OMNI:
        model = build_omni_model(processor, seed, chunk_length)
    else:
        model = build_model(processor, seed, chunk_length, head_dim)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    info = {"seed": seed, "chunk_length": chunk_length, "extra_tokens": list(extra_tokens)}
    if family != QWEN2_AUDIO:  # the Qwen2-Audio file stays byte for byte what it was
        info["family"] = family
    if head_dim != DEFAULT_HEAD_DIM:  # recorded only when set, so default models keep their bytes
        info["head_dim"] = head_dim
    with open(os.path.join(out_dir, "tiny_model.json"), "w") as f:
        json.dump(info, f, indent=2)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="Folder to write the model and processor to.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    parser.add_argument("--chunk_length", type=int, default=30, help="Audio window in seconds (Qwen2-Audio: 30).")
    parser.add_argument("--extra_tokens", nargs="*", default=[], help="Words to add to the vocabulary as whole tokens.")
    parser.add_argument(
        "--family", choices=FAMILIES, default=QWEN2_AUDIO, help="Model family (default: qwen2_audio, the paper's)."
    )
    parser.add_argument(
        "--head_dim",
        type=int,
        default=DEFAULT_HEAD_DIM,
        help="Attention head size of the language model (16 by default; vLLM's CPU attention needs at least 32).",
    )
    args = parser.parse_args(argv)
    out = write_tiny_model(
        args.out, args.seed, args.chunk_length, tuple(args.extra_tokens), args.family, head_dim=args.head_dim
    )
    if args.family == QWEN2_AUDIO:
        n_params = sum(p.numel() for p in Qwen2AudioForConditionalGeneration.from_pretrained(out).parameters())
        print(f"Wrote a tiny Qwen2-Audio ({n_params:,} parameters) to {out}")
    else:
        from r1aqa.models import load_model

        n_params = sum(p.numel() for p in load_model(out).parameters())
        print(f"Wrote a tiny Qwen2.5-Omni thinker ({n_params:,} parameters) to {out}")


if __name__ == "__main__":
    main()
