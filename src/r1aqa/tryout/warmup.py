"""Format-only warm-up: teach a random model to answer `<answer>{option}</answer>` without teaching it which option.

A random tiny model never samples the answer format, so GRPO's rewards would all be 0 and its advantages with them.
This supervised warm-up trains on the training questions with a target drawn at random among each question's
listed options, so the model learns the format and the option words while its accuracy stays at chance: whatever
GRPO later gains comes from the audio. The loss covers the answer tokens and the end-of-turn token only (never the
prompt or the audio placeholders). The checkpoint (model + processor) is usable as `--model_name_or_path`.

    python -m r1aqa.tryout.warmup --model outputs/demo/model --data_file outputs/demo/data/train.jsonl \\
        --out outputs/demo/warmup --steps 150
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from r1aqa.audio import SAMPLING_RATE, load_audio
from r1aqa.data import load_avqa_dataset
from r1aqa.prompts import solution_text

IGNORE_INDEX = -100


def random_targets(rows: list[dict], rng: np.random.Generator) -> list[str]:
    """`<answer>{option}</answer>` with the option drawn uniformly from each row's `multi_choice`."""
    return [solution_text(str(rng.choice(row["multi_choice"]))) for row in rows]


def correct_targets(rows: list[dict], rng: np.random.Generator) -> list[str]:
    """`<answer>{the right option}</answer>`: a supervised warm-up that teaches the answers too (the data filter's
    benchmark, benchmarks/bench_filter.py, needs a checkpoint that has learned them)."""
    return [row["solution"] for row in rows]


TARGETS = {"random": random_targets, "correct": correct_targets}


def build_batch(processor, rows: list[dict], targets: list[str]) -> dict:
    """Processor inputs for prompt + target + end of turn, with `labels` on the target tokens only.

    The prompt is the chat template with the generation prompt, exactly what GRPO samples from; the target is
    followed by `<|im_end|>` so the model also learns to stop. Left padding keeps every target at the end of its row.
    """
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token
    texts, audios, n_target = [], [], []
    for row, target in zip(rows, targets, strict=True):
        prompt = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        texts.append(prompt + target + eos)
        audios.append(load_audio(row["audio_path"], SAMPLING_RATE))
        n_target.append(len(tokenizer(target + eos, add_special_tokens=False)["input_ids"]))
    batch = processor(text=texts, audio=audios, sampling_rate=SAMPLING_RATE, padding=True, return_tensors="pt")
    labels = batch["input_ids"].clone()
    length = labels.size(1)
    for i, n in enumerate(n_target):
        labels[i, : length - n] = IGNORE_INDEX
        expected = tokenizer(targets[i] + eos, add_special_tokens=False)["input_ids"]
        if labels[i, length - n :].tolist() != expected:  # the target must tokenize the same inside the sequence
            raise ValueError(f"target {targets[i]!r} does not tokenize the same after the prompt")
    batch["labels"] = labels
    return dict(batch)


def warmup(
    model_dir: str,
    data_file: str,
    out_dir: str,
    steps: int = 150,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    seed: int = 0,
    log_every: int = 25,
    targets: str = "random",
) -> str:
    """Train `steps` AdamW steps on `targets` (`TARGETS`: random options, or the right ones); save model + processor to
    `out_dir`; return it."""
    import torch

    from r1aqa.models import load_model, load_processor

    # --- seed, data, model -----------------------------------------------------------------------------------------
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = load_avqa_dataset(data_file).to_list()
    processor = load_processor(model_dir)  # Qwen2-Audio or a Qwen2.5-Omni thinker (r1aqa.models)
    model = load_model(model_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)

    # --- train -----------------------------------------------------------------------------------------------------
    model.train()
    start = time.time()
    for step in range(1, steps + 1):
        picked = [rows[i] for i in rng.choice(len(rows), size=min(batch_size, len(rows)), replace=False)]
        batch = build_batch(processor, picked, TARGETS[targets](picked, rng))
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % log_every == 0 or step == steps:
            print(f"warm-up step {step}/{steps}: loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)

    # --- save ------------------------------------------------------------------------------------------------------
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Model folder to start from (python -m r1aqa.tryout.tiny).")
    parser.add_argument(
        "--data_file", required=True, help="AVQA-format training JSONL (python -m r1aqa.tryout.toy_task)."
    )
    parser.add_argument("--out", required=True, help="Folder for the warmed-up model and processor.")
    parser.add_argument("--steps", type=int, default=150, help="Optimizer steps.")
    parser.add_argument("--batch_size", type=int, default=16, help="Questions per step.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW learning rate (constant).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the batches, targets and dropout.")
    parser.add_argument("--targets", choices=sorted(TARGETS), default="random", help="random: format only (default).")
    args = parser.parse_args(argv)
    out = warmup(args.model, args.data_file, args.out, args.steps, args.batch_size, args.learning_rate, args.seed,
                 targets=args.targets)  # fmt: skip
    print(f"Wrote the format warm-up checkpoint to {out}")


if __name__ == "__main__":
    main()
