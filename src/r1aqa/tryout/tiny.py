"""A tiny random Qwen2-Audio or Qwen2.5-Omni thinker (the real classes and processor) for tests and CPU runs; the same
options give the same bytes. `--head_dim 32`: vLLM's CPU attention needs head sizes >= 32.

    python -m r1aqa.tryout.tiny --out outputs/tiny [--chunk_length 2] [--head_dim 32] [--family qwen2_5_omni]
"""

from __future__ import annotations

import argparse

import tokenizers
import torch
import transformers
from tokenizers import decoders, pre_tokenizers, trainers

from r1aqa import models
from r1aqa.prompts import ANSWER_INSTRUCTION, OPTIONS_SENTENCE, THINK_INSTRUCTION

PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"  # Qwen2's bos/pad, and the end of a turn
RESERVED_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN, "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
OMNI_RESERVED_TOKENS = RESERVED_TOKENS + ["<|vision_bos|>", "<|vision_eos|>", "<|IMAGE|>", "<|VIDEO|>"]
# Qwen2-Audio-Instruct's, but parts are told by `type` alone (`datasets` gives every part every key, None if missing).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    + models.SYSTEM_BLOCK.format(turn=models.DEFAULT_SYSTEM_TURN)
    + "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The tokenizer's merges are learned from the prompts and typical question words, so prompts take few tokens.
_CORPUS = [
    OPTIONS_SENTENCE + ANSWER_INSTRUCTION, OPTIONS_SENTENCE + THINK_INSTRUCTION,
    "You are a helpful assistant. Audio 1: system user assistant",
    "<answer> </answer> <think> </think> <answer>yes</answer> <answer>no</answer>",
    "What happened in the audio? What is the main source of sound? Which instrument is playing? How many people "
    "are speaking? What is the emotion of the speaker? What genre is this music? Is the sound loud or quiet?",
    "motorboat sailboat car dog cat bird water wind rain engine guitar piano drum violin singing speech male female "
    "happy sad angry neutral high low top one two three four five six seven eight nine ten Hz tone beep silence",
]  # fmt: skip
HIDDEN_SIZE, DEFAULT_HEAD_DIM = 64, 16
AUDIO_ENCODER = dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, d_model=64)


def build_processor(chunk_length: int = 30, extra_tokens: tuple[str, ...] = (), family: str = models.QWEN2_AUDIO):
    """The family's processor: 128 mel bins, 16 kHz, a `chunk_length` s window, and a byte-level BPE tokenizer with
    the family's special tokens trained on `_CORPUS`; `extra_tokens` become whole (non-special) tokens."""
    omni = family == models.QWEN2_5_OMNI
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=OMNI_RESERVED_TOKENS if omni else RESERVED_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    bpe.train_from_iterator((_CORPUS + [models.OMNI_SYSTEM_PROMPT] if omni else _CORPUS) * 4, trainer=trainer)
    named = {"extra_special_tokens": models.OMNI_NAMED_TOKENS} if omni else {}  # Omni reads tokenizer.audio_token...
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=None, eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN, unk_token=None, padding_side="left", model_max_length=4096,
        chat_template=models.OMNI_CHAT_TEMPLATE if omni else CHAT_TEMPLATE, **named)  # fmt: skip
    tokenizer.add_tokens(list(extra_tokens))
    features = transformers.WhisperFeatureExtractor(feature_size=128, sampling_rate=16_000, chunk_length=chunk_length)
    if omni:
        return models.Qwen2_5OmniAudioProcessor(feature_extractor=features, tokenizer=tokenizer)
    return transformers.Qwen2AudioProcessor(features, tokenizer, chat_template=CHAT_TEMPLATE)


def build_model(processor, seed: int = 0, chunk_length: int = 30, head_dim: int = DEFAULT_HEAD_DIM):
    """Random weights from `seed`, of the processor's family (`head_dim`: Qwen2-Audio's, a divisor of 64); generation
    stops at `<|im_end|>` and `<|endoftext|>` (as the 7B's)."""
    tokenizer, heads = processor.tokenizer, HIDDEN_SIZE // head_dim
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    text = dict(vocab_size=len(tokenizer), hidden_size=HIDDEN_SIZE, intermediate_size=128, num_hidden_layers=2,
                max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=pad, eos_token_id=eos,
                pad_token_id=pad)  # fmt: skip
    audio = {**AUDIO_ENCODER, "max_source_positions": chunk_length * 50}  # mel frames of the window / 2
    if isinstance(processor, models.Qwen2_5OmniAudioProcessor):
        ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in models.OMNI_NAMED_TOKENS.items()}
        model_class = transformers.Qwen2_5OmniThinkerForConditionalGeneration
        config = transformers.Qwen2_5OmniThinkerConfig(
            audio_config={**audio, "output_dim": HIDDEN_SIZE},
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=HIDDEN_SIZE,
                               fullatt_block_indexes=[0]),
            # mrope_section splits the rotary half-dimension (64 / 4 heads / 2 = 8) into time, height, width.
            text_config={**text, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}},
            audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
            video_token_index=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
            audio_end_token_id=ids["audio_eos_token"], vision_start_token_id=ids["vision_bos_token"],
            vision_end_token_id=ids["vision_eos_token"],  # vision ids: read by get_rope_index, not in the config class
            tie_word_embeddings=False, pad_token_id=pad, eos_token_id=eos,
        )  # fmt: skip
    else:
        model_class = transformers.Qwen2AudioForConditionalGeneration
        text |= {"num_attention_heads": heads, "num_key_value_heads": heads, "rms_norm_eps": 1e-5, "rope_theta": 1e4}
        audio_token = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
        config = transformers.Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=audio_token)
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config = transformers.GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad, bos_token_id=pad)
    return model.eval()


def write_tiny_model(out_dir: str, seed: int = 0, chunk_length: int = 30, extra_tokens: tuple[str, ...] = (),
                     family: str = models.QWEN2_AUDIO, head_dim: int = DEFAULT_HEAD_DIM) -> str:  # fmt: skip
    """Build and save model + processor to `out_dir`; return it. `head_dim` applies to Qwen2-Audio."""
    processor = build_processor(chunk_length, extra_tokens, family)
    build_model(processor, seed, chunk_length, head_dim).save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="Folder to write the model and processor to.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    parser.add_argument("--chunk_length", type=int, default=30, help="Audio window in seconds (Qwen2-Audio: 30).")
    parser.add_argument("--extra_tokens", nargs="*", default=[], help="Words to add to the vocabulary as whole tokens.")
    parser.add_argument("--family", choices=models.FAMILIES, default=models.QWEN2_AUDIO, help="Model family.")
    parser.add_argument("--head_dim", type=int, default=DEFAULT_HEAD_DIM, choices=(8, 16, 32, 64), help="LM head size.")
    args = parser.parse_args(argv)
    out = write_tiny_model(args.out, args.seed, args.chunk_length, tuple(args.extra_tokens), args.family, args.head_dim)
    print(f"Wrote a tiny {args.family} to {out}")


if __name__ == "__main__":
    main()
