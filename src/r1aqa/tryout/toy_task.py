"""A synthetic audio question answering task, made locally from a seed, for CPU runs of the whole pipeline.

The answer can only be known by listening: each clip is a tone whose pitch class is the answer. Options are shown in
shuffled order. Training questions are written in AVQA's JSONL format (what `r1aqa.prepare_avqa` writes) and test
questions in MMAU's JSON format, on held-out clips, so `run_grpo.sh` and `test_mmau.sh` run on it unchanged.

    python -m r1aqa.tryout.toy_task --out outputs/toy --n_train 64 --n_test 32
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import soundfile as sf

from r1aqa.audio import SAMPLING_RATE

# Option words: one BPE token each in the tiny tokenizer, so a sampled answer is always a whole option.
PITCHES = {"low": 250.0, "top": 2000.0}
QUESTION = "Is the tone in the video low or top?"  # "video" -> "audio" at training time, as in AVQA
MMAU_QUESTION = "Is the tone in the audio low or top?"
# `--n_text`: training questions whose text gives the answer away and whose clip is silent, for the data filter.
TEXT_QUESTION = "The tone in the video is {answer}. Is the tone in the video low or top?"


def tone_clip(frequency: float, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A sine at `frequency` with random phase, amplitude and light noise, 16 kHz float32."""
    t = np.arange(int(SAMPLING_RATE * seconds)) / SAMPLING_RATE
    amplitude = rng.uniform(0.2, 0.6)
    clip = amplitude * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi))
    clip += rng.normal(0, 0.01, size=t.shape)
    return clip.astype(np.float32)


def make_items(
    n: int, rng: np.random.Generator, audio_dir: str, prefix: str, seconds: float, tone: bool = True
) -> list[dict]:
    """`n` clips written to `audio_dir`, balanced across classes; each item has its answer and shuffled options.
    `tone=False`: silent clips (nothing to hear: the text has to answer)."""
    os.makedirs(audio_dir, exist_ok=True)
    names = list(PITCHES)
    items = []
    for i in range(n):
        answer = names[i % len(names)]
        path = os.path.join(audio_dir, f"{prefix}-{i:05d}.wav")
        if tone:
            clip = tone_clip(PITCHES[answer], rng, seconds)
        else:
            clip = np.zeros(int(SAMPLING_RATE * seconds), dtype=np.float32)
        sf.write(path, clip, SAMPLING_RATE, subtype="PCM_16")
        choices = list(rng.permutation(names))
        items.append({"id": f"{prefix}-{i:05d}", "path": os.path.abspath(path), "answer": answer, "choices": choices})
    return items


def avqa_record(item: dict, index: int, text_answerable: bool = False) -> dict:
    return {
        "id": index,
        "video_name": item["id"],
        "video_id": index,
        "question_text": TEXT_QUESTION.format(answer=item["answer"]) if text_answerable else QUESTION,
        "multi_choice": [str(c) for c in item["choices"]],
        "answer": item["choices"].index(item["answer"]),
        "question_relation": "Sound",
        "question_type": "Text" if text_answerable else "Pitch",
        "dataset_name": "toy-tones",
        "audio_path": item["path"],
    }


def mmau_record(item: dict) -> dict:
    return {
        "id": item["id"],
        "audio_id": f"./test-mini-audios/{os.path.basename(item['path'])}",
        "question": MMAU_QUESTION,
        "choices": [str(c) for c in item["choices"]],
        "answer": item["answer"],
        "dataset": "toy-tones",
        "task": "sound",
        "split": "test-mini",
        "category": "Pitch",
        "sub-category": "tone pitch",
        "difficulty": "easy",
    }


def write_toy_task(
    out_dir: str, n_train: int = 64, n_test: int = 32, seed: int = 0, seconds: float = 1.5, n_text: int = 0
) -> dict:
    """Write `train.jsonl` (AVQA format), `test.json` (MMAU format) and their clips; return the paths.

    `n_text` > 0 appends that many training questions answerable from the text alone (`TEXT_QUESTION`, question_type
    `Text`, a silent clip; the tone questions are `Pitch`), drawn after everything else so the other files stay
    byte for byte."""
    rng = np.random.default_rng(seed)
    train = make_items(n_train, rng, os.path.join(out_dir, "train-audios"), "train", seconds)
    test = make_items(n_test, rng, os.path.join(out_dir, "test-mini-audios"), "test", seconds)
    text = make_items(n_text, rng, os.path.join(out_dir, "train-audios"), "text", seconds, tone=False)
    paths = {
        "train_file": os.path.join(out_dir, "train.jsonl"),
        "test_file": os.path.join(out_dir, "test.json"),
        "test_audio_dir": os.path.join(out_dir, "test-mini-audios"),
    }
    with open(paths["train_file"], "w") as f:
        for index, item in enumerate(train):
            f.write(json.dumps(avqa_record(item, index)) + "\n")
        for index, item in enumerate(text, start=len(train)):
            f.write(json.dumps(avqa_record(item, index, text_answerable=True)) + "\n")
    with open(paths["test_file"], "w") as f:
        json.dump([mmau_record(item) for item in test], f, indent=1)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="Folder for the clips, train.jsonl and test.json.")
    parser.add_argument("--n_train", type=int, default=64, help="Training questions.")
    parser.add_argument("--n_test", type=int, default=32, help="Held-out test questions.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for the clips and option order.")
    parser.add_argument("--seconds", type=float, default=1.5, help="Clip length.")
    parser.add_argument("--n_text", type=int, default=0, help="Extra training questions the text answers (filter).")
    args = parser.parse_args(argv)
    paths = write_toy_task(args.out, args.n_train, args.n_test, args.seed, args.seconds, args.n_text)
    print(json.dumps(paths, indent=1))


if __name__ == "__main__":
    main()
