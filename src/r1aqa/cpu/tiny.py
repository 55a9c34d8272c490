"""A tiny random Qwen2-Audio with a real processor, for tests and the CPU demo (no download needed).

The model is the real `Qwen2AudioForConditionalGeneration` class with a 2-layer audio encoder and a 2-layer Qwen2
language model (~0.5 M parameters); the processor is the real `Qwen2AudioProcessor` with a 128-mel Whisper feature
extractor and a small byte-level BPE tokenizer trained here, carrying Qwen2-Audio's special tokens. Its chat template
renders docs/recipe.md §4's string byte for byte. The same seed gives the same bytes.

    python -m r1aqa.cpu.tiny --out outputs/tiny-qwen2-audio
    python -m r1aqa.cpu.tiny --out outputs/tiny-2s --chunk_length 2      # short audio window for the demo
    python -m r1aqa.cpu.tiny --out outputs/tiny-vllm --head_dim 32       # loadable by vLLM's CPU attention

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

from r1aqa.prompts import ANSWER_INSTRUCTION, OPTIONS_SENTENCE, THINK_INSTRUCTION

PAD_TOKEN = "<|endoftext|>"  # Qwen2's bos and pad
EOS_TOKEN = "<|im_end|>"
RESERVED_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN, "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]

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


def build_tokenizer(extra_tokens: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen2-Audio's special tokens, trained on `_CORPUS` (deterministic)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=RESERVED_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        padding_side="left",
        model_max_length=4096,
        chat_template=CHAT_TEMPLATE,
    )
    # Added as whole tokens (not special: they are decoded with the text) for demo tasks whose answers must be
    # one token each.
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
    return tokenizer


def build_processor(chunk_length: int = 30, extra_tokens: tuple[str, ...] = ()) -> Qwen2AudioProcessor:
    """The real processor class: 128 mel bins (Whisper's default is 80), 16 kHz, `chunk_length` s window."""
    feature_extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16_000, chunk_length=chunk_length)
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
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config)
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
    head_dim: int = DEFAULT_HEAD_DIM,
) -> str:
    """Build and save model + processor to `out_dir`; return it. Loadable with `from_pretrained`."""
    processor = build_processor(chunk_length, extra_tokens)
    model = build_model(processor, seed, chunk_length, head_dim)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "tiny_model.json"), "w") as f:
        settings = {"seed": seed, "chunk_length": chunk_length, "extra_tokens": list(extra_tokens)}
        if head_dim != DEFAULT_HEAD_DIM:  # recorded only when set, so default models keep their bytes
            settings["head_dim"] = head_dim
        json.dump(settings, f, indent=2)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="Folder to write the model and processor to.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    parser.add_argument("--chunk_length", type=int, default=30, help="Audio window in seconds (Qwen2-Audio: 30).")
    parser.add_argument("--extra_tokens", nargs="*", default=[], help="Words to add to the vocabulary as whole tokens.")
    parser.add_argument(
        "--head_dim",
        type=int,
        default=DEFAULT_HEAD_DIM,
        help="Attention head size of the language model (16 by default; vLLM's CPU attention needs at least 32).",
    )
    args = parser.parse_args(argv)
    out = write_tiny_model(args.out, args.seed, args.chunk_length, tuple(args.extra_tokens), args.head_dim)
    n_params = sum(p.numel() for p in Qwen2AudioForConditionalGeneration.from_pretrained(out).parameters())
    print(f"Wrote a tiny Qwen2-Audio ({n_params:,} parameters) to {out}")


if __name__ == "__main__":
    main()
