"""The tiny Qwen2-Audio behaves like the real one where tests rely on it."""

import filecmp

import numpy as np
import pytest
import torch
from helpers.paths import MMAU_AUDIO_DIR, MMAU_REAL_ITEM_ID
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

from r1aqa.audio import load_audio
from r1aqa.prompts import format_question, user_turn
from r1aqa.tryout.tiny import write_tiny_model

RECIPE_RENDERING = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
)
REAL_WAV = str(MMAU_AUDIO_DIR / f"{MMAU_REAL_ITEM_ID}.wav")


def tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(16_000 * seconds)) / 16_000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_same_seed_same_bytes(tmp_path, tiny_model_dir):
    again = write_tiny_model(str(tmp_path / "again"), seed=0)
    for name in ["model.safetensors", "tokenizer.json", "config.json", "processor_config.json"]:
        assert filecmp.cmp(f"{tiny_model_dir}/{name}", f"{again}/{name}", shallow=False), name
    other = write_tiny_model(str(tmp_path / "other"), seed=1)
    assert not filecmp.cmp(f"{tiny_model_dir}/model.safetensors", f"{other}/model.safetensors", shallow=False)


def test_round_trip_keeps_weights_and_generations(tmp_path, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path)
    reloaded = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    conversation = user_turn("x.wav", format_question("What is it?", ["a", "b"]))
    conversation[0]["content"][0] = {"type": "audio", "audio": tone(2.0)}
    inputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    first = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    second = reloaded.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    "question,choices",
    [
        ("What happened in the audio?", ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"]),
        ("Who's there?", ["a man's voice", 'a "quoted" word', "ünïcödé"]),
    ],
)
def test_chat_template_renders_spec_string(tiny_model_and_processor, question, choices):
    _, processor = tiny_model_and_processor
    prompt = format_question(question, choices)
    conversation = user_turn("clip.wav", prompt)
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert rendered == RECIPE_RENDERING.format(prompt=prompt)
    # `datasets` gives every content item every key, missing ones as None: the rendering must not change.
    padded = [
        {
            "role": "user",
            "content": [
                {**part, "text": part.get("text"), "path": part.get("path")} for part in conversation[0]["content"]
            ],
        }
    ]
    assert processor.apply_chat_template(padded, add_generation_prompt=True, tokenize=False) == rendered


@pytest.mark.parametrize("audio,expected_tokens", [("1s", 25), ("2s", 50), ("real_10s", 250)])
def test_processor_expands_audio_token(tiny_model_and_processor, audio, expected_tokens):
    _, processor = tiny_model_and_processor
    samples = load_audio(REAL_WAV) if audio == "real_10s" else tone(float(audio[:-1]))
    text = processor.apply_chat_template(user_turn("x", "Q"), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], audio=[samples], return_tensors="pt")
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert int((inputs["input_ids"] == audio_id).sum()) == expected_tokens
    assert inputs["input_features"].shape == (1, 128, 3000)  # always padded to the 30 s window
    assert int(inputs["feature_attention_mask"].sum()) == len(samples) // 160


def test_left_padded_batch_matches_single_prompts(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    clips = [tone(1.0, 300), tone(3.5, 900), load_audio(REAL_WAV)]
    texts = [
        processor.apply_chat_template(
            user_turn("x", format_question(q, ["yes", "no"])), add_generation_prompt=True, tokenize=False
        )
        for q in ["Short?", "A somewhat longer question about the sound?", "Is it music?"]
    ]
    batch = processor(text=texts, audio=clips, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch should need padding"
    with torch.no_grad():
        batched = model(**batch).logits[:, -1]
        for i, (text, clip) in enumerate(zip(texts, clips, strict=True)):
            single = model(**processor(text=[text], audio=[clip], return_tensors="pt")).logits[:, -1]
            torch.testing.assert_close(batched[i : i + 1], single, atol=1e-4, rtol=1e-4)
    # and the audio matters: other audio gives other logits
    with torch.no_grad():
        silent = model(**processor(text=[texts[0]], audio=[np.zeros(16_000, np.float32)], return_tensors="pt"))
    assert not torch.allclose(silent.logits[:, -1], batched[0:1], atol=1e-4)


def test_processor_loads_with_auto_classes(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert processor.feature_extractor.feature_size == 128
    assert processor.tokenizer.eos_token == "<|im_end|>"
    assert processor.tokenizer.pad_token == "<|endoftext|>"
