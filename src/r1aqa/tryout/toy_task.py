"""A tone question only the audio answers (250 Hz "low" or 2000 Hz "top", options shuffled), made from a seed:
training questions in AVQA's JSONL format, held-out ones in MMAU's JSON format, so the launchers run on it unchanged.

    python -m r1aqa.tryout.toy_task --out outputs/toy --n_train 64 --n_test 32 [--n_text 8]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import soundfile as sf

from r1aqa.audio import SAMPLING_RATE

PITCHES = {"low": 250.0, "top": 2000.0}  # one token each in the tiny tokenizer: a sampled answer is a whole option
QUESTION = "Is the tone in the video low or top?"  # "video" -> "audio" at training time, as in AVQA
TEXT_QUESTION = "The tone in the video is {answer}. Is the tone in the video low or top?"  # `n_text`, silent clips


def make_clips(n: int, rng, audio_dir: str, prefix: str, seconds: float, tone: bool = True) -> list[tuple]:
    """`n` clips (name, path, answer, shuffled options) in `audio_dir`, classes alternating; `tone=False`: silent."""
    os.makedirs(audio_dir, exist_ok=True)
    names, clips = list(PITCHES), []
    for i in range(n):
        answer, path = names[i % len(names)], os.path.join(audio_dir, f"{prefix}-{i:05d}.wav")
        clip = np.zeros(int(SAMPLING_RATE * seconds), dtype=np.float32)
        if tone:  # a sine with random amplitude and phase, light noise
            t = np.arange(len(clip)) / SAMPLING_RATE
            clip = rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * PITCHES[answer] * t + rng.uniform(0, 2 * np.pi))
            clip = (clip + rng.normal(0, 0.01, size=t.shape)).astype(np.float32)
        sf.write(path, clip, SAMPLING_RATE, subtype="PCM_16")
        clips.append((f"{prefix}-{i:05d}", os.path.abspath(path), answer, [str(c) for c in rng.permutation(names)]))
    return clips


def write_toy_task(out_dir: str, n_train=64, n_test=32, seed=0, seconds=1.5, n_text=0) -> dict:
    """Write `train.jsonl` (AVQA), `test.json` (MMAU) and their clips; return their paths. The `n_text` questions
    (question_type `Text`; the tone ones are `Pitch`) are drawn last, so the other files keep their bytes."""
    rng = np.random.default_rng(seed)
    train = make_clips(n_train, rng, os.path.join(out_dir, "train-audios"), "train", seconds)
    test = make_clips(n_test, rng, os.path.join(out_dir, "test-mini-audios"), "test", seconds)
    train += make_clips(n_text, rng, os.path.join(out_dir, "train-audios"), "text", seconds, tone=False)
    paths = {"train_file": os.path.join(out_dir, "train.jsonl"), "test_file": os.path.join(out_dir, "test.json"),
             "test_audio_dir": os.path.join(out_dir, "test-mini-audios")}  # fmt: skip
    with open(paths["train_file"], "w") as f:
        for i, (name, path, answer, choices) in enumerate(train):
            kind, question = ("Text", TEXT_QUESTION.format(answer=answer)) if i >= n_train else ("Pitch", QUESTION)
            row = {"id": i, "video_name": name, "video_id": i, "question_text": question, "multi_choice": choices,
                   "answer": choices.index(answer), "question_relation": "Sound", "question_type": kind,
                   "dataset_name": "toy-tones", "audio_path": path}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    with open(paths["test_file"], "w") as f:
        json.dump([{"id": name, "audio_id": f"./test-mini-audios/{os.path.basename(path)}",
                    "question": QUESTION.replace("video", "audio"), "choices": choices, "answer": answer,
                    "dataset": "toy-tones", "task": "sound", "split": "test-mini", "category": "Pitch",
                    "sub-category": "tone pitch", "difficulty": "easy"} for name, path, answer, choices in test],
                  f, indent=1)  # fmt: skip
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="Folder for the clips, train.jsonl and test.json.")
    parser.add_argument("--n_train", type=int, default=64, help="Training questions.")
    parser.add_argument("--n_test", type=int, default=32, help="Held-out test questions.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for the clips and option order.")
    parser.add_argument("--n_text", type=int, default=0, help="Extra training questions the text answers.")
    args = parser.parse_args(argv)
    print(json.dumps(write_toy_task(args.out, args.n_train, args.n_test, args.seed, n_text=args.n_text)))


if __name__ == "__main__":
    main()
