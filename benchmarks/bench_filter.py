"""Benchmark: the audio-contribution filter on the CPU toy task, and the zero-advantage share of GRPO on its split.

    python benchmarks/bench_filter.py                       # the defaults, about 8 min on 2 shared cores
    python benchmarks/bench_filter.py --seed 1 --grpo_start filter

Stages, everything under `--out` (default outputs/bench-filter):
1. `model/`, `data/`: the demo's tiny Qwen2-Audio and the toy tone task (`r1aqa.tryout.toy_task`) with `--n_tone` tone
   questions (the answer is the pitch: audio needed) and `--n_text` questions whose text gives the answer away (silent
   clip: `--n_text` of the toy task);
2. `warmup/`: supervised warm-up on the right answers (`r1aqa.tryout.warmup.warmup`, targets `correct`): a checkpoint that has
   learned both kinds; its file also holds `--n_guess` tone questions with a silent clip and a random answer, so the
   checkpoint guesses evenly when it hears nothing and the text gives nothing away (`write_warmup_file`);
3. `filter/`: `python -m r1aqa.filter_data` with that checkpoint; prints where each kind went;
4. `weak/`: the same warm-up on the weak split only (AudioMCQ's first stage: it learns the text-answerable questions,
   not the tones); `whole/`, `strong/`: GRPO from it (`--grpo_start filter`: from the filter's checkpoint) with
   configs/grpo_demo_cpu.yaml, `--grpo_steps` steps, the two runs in parallel, one thread each, on the whole file and
   on the strong split; prints each run's mean over its steps of TRL's `frac_reward_zero_std` (groups whose rewards
   are all equal) and AudioGRPOTrainer's `frac_tokens_reward_zero_std` (their share of the completion tokens). The
   last line:

    text_to_weak=<n>/<n_text> tone_to_strong=<n>/<n_tone> zero_std_whole=<frac> zero_std_strong=<frac> ... seed=<s>
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from r1aqa import filter_data  # noqa: E402
from r1aqa.tryout.demo import CHUNK_LENGTH, EXTRA_TOKENS, RECIPE, run_all, subprocess_env  # noqa: E402

METRICS = ("frac_reward_zero_std", "frac_tokens_reward_zero_std", "reward")


def grpo_metrics(output_dir: str, steps: int) -> dict[str, float]:
    """The mean over the run's steps of each of `METRICS` (from the last checkpoint's trainer_state.json)."""
    state = json.loads(Path(output_dir, f"checkpoint-{steps}", "trainer_state.json").read_text())
    logs = [entry for entry in state["log_history"] if "frac_reward_zero_std" in entry]
    return {name: statistics.mean(entry[name] for entry in logs) for name in METRICS}


def write_warmup_file(rows_file: str, out_file: str, n_guess: int, seed: int, data_file: str | None = None) -> None:
    """The rows of `rows_file`, plus `n_guess` tone questions (of `data_file`, default `rows_file`) with a silent clip
    and a random answer: with nothing to hear and nothing given away, the checkpoint learns to guess evenly. Without
    them it answered such questions with one fixed option, so half of the tone questions passed with silence
    (measured: 16 of 32 tone questions in `weak`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = [json.loads(line) for line in Path(rows_file).read_text().splitlines()]
    everything = [json.loads(line) for line in Path(data_file or rows_file).read_text().splitlines()]
    silent = next(row["audio_path"] for row in everything if row["question_type"] == "Text")
    tone = [row for row in everything if row["question_type"] == "Pitch"]
    guesses = [{**tone[i % len(tone)], "audio_path": silent, "answer": int(rng.integers(2))} for i in range(n_guess)]
    Path(out_file).write_text("".join(json.dumps(row) + "\n" for row in rows + guesses))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/bench-filter")
    parser.add_argument("--seed", type=int, default=0, help="Tiny model, clips, option order and warm-up.")
    parser.add_argument("--n_tone", type=int, default=32, help="Tone questions (the audio answers them).")
    parser.add_argument("--n_text", type=int, default=32, help="Questions the text answers (silent clips).")
    parser.add_argument("--n_guess", type=int, default=16, help="Warm-up only: silent tone questions, random answer.")
    parser.add_argument("--warmup_steps", type=int, default=300, help="Supervised steps on the right answers.")
    parser.add_argument("--num_samples", type=int, default=16, help="Filter: K answers per question and condition.")
    parser.add_argument("--silence_threshold", type=float, default=0.75,
                        help="Filter: strong when the silence pass rate is at most this (2 options: chance 0.5).")  # fmt: skip
    parser.add_argument("--filter_seed", type=int, default=42, help="Filter: sampling seed.")
    parser.add_argument("--grpo_steps", type=int, default=20, help="Steps of each GRPO run (8 questions x 8).")
    parser.add_argument("--grpo_start", choices=("weak", "filter"), default="weak",
                        help="GRPO starts from: weak, a warm-up on the weak split only (AudioMCQ's Weak-to-Strong); "
                        "filter, the filter's checkpoint (it has learned both kinds).")  # fmt: skip
    args = parser.parse_args(argv)

    import torch

    from r1aqa.tryout.tiny import write_tiny_model
    from r1aqa.tryout.toy_task import write_toy_task
    from r1aqa.tryout.warmup import warmup

    torch.set_num_threads(1)
    out = os.path.abspath(args.out)
    paths = {name: os.path.join(out, name) for name in ("model", "data", "warmup", "filter", "weak", "whole", "strong")}
    for name in ("warmup", "filter", "weak", "whole", "strong"):
        shutil.rmtree(paths[name], ignore_errors=True)

    # --- model, data, warm-up on the right answers -----------------------------------------------------------------
    write_tiny_model(paths["model"], seed=args.seed, chunk_length=CHUNK_LENGTH, extra_tokens=EXTRA_TOKENS)
    data = write_toy_task(paths["data"], args.n_tone, 0, seed=args.seed, n_text=args.n_text)["train_file"]
    warmup_file = os.path.join(paths["data"], "warmup.jsonl")
    write_warmup_file(data, warmup_file, args.n_guess, args.seed)
    warmup(paths["model"], warmup_file, paths["warmup"], steps=args.warmup_steps, seed=args.seed, targets="correct")

    # --- the filter ------------------------------------------------------------------------------------------------
    summary = filter_data.run(filter_data.parse_args([
        "--model_path", paths["warmup"], "--data_file", data, "--out_dir", paths["filter"], "--max_new_tokens", "8",
        "--num_samples", str(args.num_samples), "--silence_threshold", str(args.silence_threshold),
        "--seed", str(args.filter_seed), "--batch_size", "64"]))  # fmt: skip
    kinds = summary["by_question_type"]
    text_to_weak, tone_to_strong = kinds.get("Text", {}).get("weak", 0), kinds.get("Pitch", {}).get("strong", 0)
    records = [json.loads(line) for line in Path(paths["filter"], "pass_rates.jsonl").read_text().splitlines()]
    for kind in ("Pitch", "Text"):
        rates = [next(iter(r["pass_rates"].values())) for r in records if r["question_type"] == kind]
        audio, silence = (statistics.mean(rate[c] for rate in rates) for c in filter_data.CONDITIONS)
        print(f"{kind}: mean pass rate with audio {audio:.3f}, with silence {silence:.3f} ({len(rates)} questions)")

    # --- GRPO on the whole file and on the strong split ------------------------------------------------------------
    start = paths["warmup"]
    if args.grpo_start == "weak":  # AudioMCQ's stage 1: supervised on the weak split only
        weak_file = os.path.join(paths["data"], "warmup-weak.jsonl")
        write_warmup_file(os.path.join(paths["filter"], "weak.jsonl"), weak_file, args.n_guess, args.seed, data)
        start = warmup(paths["model"], weak_file, paths["weak"], args.warmup_steps, seed=args.seed, targets="correct")
    runs = {"whole": data, "strong": os.path.join(paths["filter"], "strong.jsonl")}
    run_all({
        f"the GRPO run on {name}": (
            [sys.executable, "-m", "r1aqa.grpo", "--config", str(REPO / RECIPE), "--model_name_or_path", start,
             "--data_file", data_file, "--output_dir", paths[name], "--max_steps", str(args.grpo_steps),
             "--save_steps", str(args.grpo_steps)],
            {**subprocess_env(), "PYTHONPATH": str(REPO / "src")}, os.path.join(out, f"grpo-{name}.log"))
        for name, data_file in runs.items()
    })  # fmt: skip
    results = {name: grpo_metrics(paths[name], args.grpo_steps) for name in runs}
    for name, metrics in results.items():
        print(f"GRPO on {name} ({args.grpo_steps} steps): " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    print(
        f"text_to_weak={text_to_weak}/{args.n_text} tone_to_strong={tone_to_strong}/{args.n_tone} "
        f"zero_std_whole={results['whole']['frac_reward_zero_std']:.3f} "
        f"zero_std_strong={results['strong']['frac_reward_zero_std']:.3f} "
        f"zero_std_tokens_whole={results['whole']['frac_tokens_reward_zero_std']:.3f} "
        f"zero_std_tokens_strong={results['strong']['frac_tokens_reward_zero_std']:.3f} "
        f"grpo_start={args.grpo_start} seed={args.seed} filter_seed={args.filter_seed} grpo_seed={yaml.safe_load((REPO / RECIPE).read_text())['seed']}"
    )


if __name__ == "__main__":
    main()
