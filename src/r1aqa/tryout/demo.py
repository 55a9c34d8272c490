"""The whole R1-AQA pipeline on CPU in minutes, and the proof that our GRPO trainer learns from the audio.

    python -m r1aqa.tryout.demo                      # make demo: model, data, warm-up, run_grpo.sh, test_mmau.sh, table
    python -m r1aqa.tryout.demo --bench              # make bench-learning: the same, plus two controls; ends with
                                              # before=<acc%> after=<acc%> audio_blind=<acc%> stock_trl=<acc%>
    python -m r1aqa.tryout.demo --bench --seeds 0 1 2  # the bench once per seed, then each row as mean ± std over seeds
    python -m r1aqa.tryout.demo --steps 2 --warmup_steps 2 --n_train 4 --per_device_train_batch_size 16   # smoke run

Stages (everything under `--out`, default outputs/demo):
1. `model/`: a tiny random Qwen2-Audio with a 2 s audio window (`r1aqa.tryout.tiny`, chunk_length 2) whose vocabulary holds
   `<answer>`, `</answer>`, `low` and `top` as whole tokens;
2. `data/`: the 2-class tone task (`r1aqa.tryout.toy_task`: 250 Hz -> "low", 2000 Hz -> "top", options shuffled), AVQA
   JSONL for training and an MMAU-format test.json on held-out clips;
3. `warmup/`: the format-only warm-up (`r1aqa.tryout.warmup`): random-option targets, so accuracy starts at chance;
4. `grpo/`: `run_grpo.sh` with configs/grpo_demo_cpu.yaml from the warm-up checkpoint (checkpoints every 50 steps);
5. `grpo/mmau/demo/`: greedy evaluation of the warm-up (as step 0, `python -m r1aqa.evaluate`) and of every
   checkpoint (`test_mmau.sh`) on the held-out clips: accuracy table, CSV, JSON and plot.

`--bench` adds two controls from the same warm-up checkpoint and recipe, and evaluates everything here (greedy,
official MMAU rule): the trained model on silent clips (zeros of the same length: what it gets from the text
alone), and the same GRPO run made with the stock `trl.GRPOTrainer` (`stock-trl/`), whose loss never sees the audio.
"after" is the last step's model, not the best checkpoint: no choice is made on the test clips. Both GRPO runs go
in parallel, one thread each (torch's default two threads on a shared 2-core machine run ~30x slower).

`--seeds 0 1 2` repeats the bench with each seed (the tiny model's initialisation, the clips and the warm-up; GRPO's
own sampling seed is the recipe's) into `--out`/seed-N, then prints each row as mean ± std over the seeds and a last
line `before=<mean>±<std>% after=... audio_blind=... stock_trl=... seeds=N`.

Other arguments (`--per_device_train_batch_size 16`, ...) go to both GRPO runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from r1aqa.audio import SAMPLING_RATE, load_audio
from r1aqa.benchmarks import load_items, score
from r1aqa.checkpoints import complete_checkpoints
from r1aqa.data import mmau_example
from r1aqa.prompts import extract_answer

REPO = Path(__file__).resolve().parents[3]
RECIPE = REPO / "configs" / "grpo_demo_cpu.yaml"
# The bench's rows: summary-line names and table labels.
BENCH_ROWS = ("before", "after", "audio_blind", "stock_trl")
BENCH_LABELS = ("before GRPO (warm-up)", "after GRPO (final)", "after GRPO, silent clips", "stock TRL GRPO (final)")
EXTRA_TOKENS = ("<answer>", "</answer>", "low", "top")  # each option one token: a sample is a whole option or none
CHUNK_LENGTH = 2  # seconds of audio window (Qwen2-Audio: 30); 1.5 s clips fit


# ---- the stock-TRL control -----------------------------------------------------------------------------------------


def stock_trl_trainer_class():
    """`trl.GRPOTrainer` with the least needed to run on Qwen2-Audio: audio reaches generation only, as in stock TRL.

    Two changes, both also in `AudioGRPOTrainer`: `__init__` points `model.config.image_token_id` at the audio token
    (TRL reads it for any processor), and `_tokenize_prompts` loads each prompt's audio (TRL's processor call needs
    samples, not paths) and hands the features to TRL as tensors, which TRL passes to `generate`. Nothing carries
    the features to the policy, old-policy or reference log-prob passes: the loss is computed on the audio
    placeholders' embeddings, exactly what stock TRL does with an audio model.
    """
    import torch
    from trl import GRPOTrainer

    from r1aqa.audio import prompts_with_audio
    from r1aqa.trainer import AUDIO_KEYS

    class StockTRLGRPOTrainer(GRPOTrainer):
        def __init__(self, model, *args, **kwargs):
            if getattr(model.config, "image_token_id", None) is None:
                model.config.image_token_id = model.config.audio_token_index
            super().__init__(model, *args, **kwargs)

        def _tokenize_prompts(self, prompts: list):
            prompt_ids, images, fields = super()._tokenize_prompts(prompts_with_audio(prompts))
            return prompt_ids, images, {key: torch.as_tensor(np.asarray(fields[key])) for key in AUDIO_KEYS}

    return StockTRLGRPOTrainer


def stock_trl_cli(argv: list[str] | None = None) -> None:
    """`python -m r1aqa.grpo` with only the trainer class swapped for the stock-TRL control (same recipe, data, seed)."""
    from unittest import mock

    from r1aqa import grpo, trainer

    script_args, training_args, model_args = grpo.parse_args(sys.argv[1:] if argv is None else argv)
    with mock.patch.object(trainer, "AudioGRPOTrainer", stock_trl_trainer_class()):  # grpo.main imports it late
        grpo.main(script_args, training_args, model_args)


# ---- evaluation ----------------------------------------------------------------------------------------------------


def evaluate(
    model_dir: str, test_file: str, audio_dir: str, silent: bool = False, batch_size: int = 50, max_new_tokens: int = 8
) -> dict:
    """Greedy answers on the MMAU-format `test_file`, scored with the official rule (`r1aqa.benchmarks.score`).

    Prompts come from `mmau_example` (the builder training uses). `silent` replaces every clip by zeros of the same
    length, so prompts are unchanged but the audio says nothing. Returns `accuracy` (%), `valid` (% of answers that
    are a listed option, in the answer format) and the predictions.
    """
    import torch

    from r1aqa.models import load_model, load_processor
    from r1aqa.rewards import option_format_reward

    processor = load_processor(model_dir)  # left padding; Qwen2-Audio or a Qwen2.5-Omni thinker (r1aqa.models)
    model = load_model(model_dir, dtype=torch.float32).eval()
    items = load_items(test_file)
    raw = []
    for start in range(0, len(items), batch_size):
        examples = [mmau_example(item, audio_dir) for item in items[start : start + batch_size]]
        audios = [load_audio(example["audio_path"]) for example in examples]
        if silent:
            audios = [np.zeros_like(audio) for audio in audios]
        texts = [
            processor.apply_chat_template(e["prompt"], add_generation_prompt=True, tokenize=False) for e in examples
        ]
        inputs = processor(text=texts, audio=audios, sampling_rate=SAMPLING_RATE, padding=True, return_tensors="pt")
        with torch.inference_mode():
            sequences = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        raw += processor.batch_decode(sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    predictions = [
        {**item, "model_output": extract_answer(text), "model_raw_output": text}
        for item, text in zip(items, raw, strict=True)
    ]
    valid = option_format_reward(raw, choices=[item["choices"] for item in items])
    return {
        "accuracy": score(predictions)["total"]["accuracy"],
        "valid": round(100 * sum(valid) / len(valid), 2),
        "predictions": predictions,
    }


def accuracy_table(rows: list[tuple[str, dict]]) -> str:
    lines = [f"  {'model':<34} {'accuracy':>9} {'valid':>7}"]
    lines += [f"  {name:<34} {r['accuracy']:>8.2f}% {r['valid']:>6.2f}%" for name, r in rows]
    return "\n".join(lines)


# ---- stages --------------------------------------------------------------------------------------------------------


def run_logged(command: list[str], env: dict, log_file: str | None) -> subprocess.Popen:
    """Start `command` in the repository; its output goes to `log_file` (or to ours when None)."""
    print(f"$ {' '.join(command)}" + (f"  > {log_file}" if log_file else ""), flush=True)
    stdout = open(log_file, "w") if log_file else None  # noqa: SIM115 - closed by wait()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.STDOUT)
    process.log_file = log_file
    process.log_handle = stdout
    return process


def wait(process: subprocess.Popen, what: str) -> None:
    code = process.wait()
    if process.log_handle:
        process.log_handle.close()
    if code != 0:
        tail = Path(process.log_file).read_text()[-4000:] if process.log_file else ""
        raise SystemExit(f"{tail}\nerror: {what} failed (exit {code}); see {process.log_file or 'the output above'}.")


# Settings that run_grpo.sh and test_mmau.sh read from the environment. The demo passes what it wants as arguments;
# a user's own (e.g. `make bench-learning SEEDS="0 1 2"`, which make exports) must not turn one run into several.
LAUNCHER_SETTINGS = (
    "SEEDS", "SMOKE", "MODEL", "DATA_FILE", "OUTPUT_DIR", "RECIPE", "DS_CONFIG", "CPU_PROCS", "NPROC_PER_NODE",
    "NNODES", "NODE_RANK", "RUN_DIR", "RUN_DIRS", "OUT_DIR", "AGG_DIR", "STEPS", "PROTOCOL", "DECODING", "SEED",
    "NUM_SAMPLES", "AUDIO", "AUDIO_DIR", "BATCH_SIZE", "MAX_NEW_TOKENS", "THINK", "PROMPT_STYLE", "SYSTEM_PROMPT",
    "BENCHMARK", "MMAU_FILE", "SELECT_FILE", "SELECT_AUDIO_DIR", "BACKEND", "EVAL_DEVICES", "EVAL_PROCS",
)  # fmt: skip


def subprocess_env() -> dict:
    return {
        **{key: value for key, value in os.environ.items() if key not in LAUNCHER_SETTINGS},
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",  # the demo is the CPU path everywhere, also on a GPU node
        "DEVICE": "cpu",  # run_grpo.sh's CPU try-out (without it the script stops: no GPU)
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def run_arguments(args: argparse.Namespace) -> list[str]:
    """The arguments after the recipe, model, data and output folder: the same for both GRPO runs."""
    return ["--max_steps", str(args.steps), "--save_steps", str(args.save_steps), *args.grpo_args]


def evaluate_with_test_mmau_sh(paths: dict, env: dict, max_new_tokens: int) -> str:
    """The warm-up as step 0, then `test_mmau.sh` over the run's checkpoints: one table, CSV and plot."""
    out_dir = os.path.join(paths["grpo"], "mmau", "demo")
    common = ["--data_file", paths["test_file"], "--audio_dir", paths["test_audio_dir"]]
    step0 = [sys.executable, "-m", "r1aqa.evaluate", "--model_path", paths["warmup"], *common]
    step0 += ["--out_file", os.path.join(out_dir, "checkpoint-0.json"), "--max_new_tokens", str(max_new_tokens)]
    step0 += ["--decoding", "greedy"]  # the demo reports greedy accuracy (its checkpoints set no sampling anyway)
    wait(run_logged(step0, env, None), "evaluating the warm-up checkpoint")
    sh_env = {
        **env,
        "RUN_DIR": paths["grpo"],
        "MMAU_FILE": paths["test_file"],
        "AUDIO_DIR": paths["test_audio_dir"],
        "OUT_DIR": out_dir,
        "MAX_NEW_TOKENS": str(max_new_tokens),
        "DECODING": "greedy",
    }
    wait(run_logged(["bash", str(REPO / "test_mmau.sh")], sh_env, None), "test_mmau.sh")
    print(f"Accuracy per step (step 0 = the warm-up, before GRPO): {out_dir}/checkpoints.{{csv,json,png}}")
    return out_dir


def run(args: argparse.Namespace) -> dict:
    import torch

    from r1aqa.tryout.tiny import write_tiny_model
    from r1aqa.tryout.toy_task import write_toy_task
    from r1aqa.tryout.warmup import warmup

    torch.set_num_threads(1)  # see the module docstring
    out = os.path.abspath(args.out)
    paths = {name: os.path.join(out, name) for name in ("model", "data", "warmup", "grpo", "stock-trl")}
    for name in ("warmup", "grpo", "stock-trl"):  # never mix checkpoints of an earlier run into this one
        shutil.rmtree(paths[name], ignore_errors=True)
    env = subprocess_env()
    timings = {}
    start = time.time()

    # --- model and data --------------------------------------------------------------------------------------------
    write_tiny_model(paths["model"], seed=args.seed, chunk_length=CHUNK_LENGTH, extra_tokens=EXTRA_TOKENS)
    paths.update(write_toy_task(paths["data"], args.n_train, args.n_test, seed=args.seed, seconds=1.5))
    print(f"Model: {paths['model']}; data: {args.n_train} training and {args.n_test} held-out clips in {paths['data']}")

    # --- format-only warm-up ---------------------------------------------------------------------------------------
    t = time.time()
    warmup(paths["model"], paths["train_file"], paths["warmup"], steps=args.warmup_steps, seed=args.seed)
    timings["warmup"] = time.time() - t

    # --- GRPO (and, for the bench, the stock-TRL control in parallel) ----------------------------------------------
    t = time.time()
    runs = {"grpo": ("bash", str(REPO / "run_grpo.sh"))}
    if args.bench:
        runs["stock-trl"] = (sys.executable, "-c", "from r1aqa.tryout.demo import stock_trl_cli; stock_trl_cli()")
    processes = {}
    for name, launcher in runs.items():
        if name == "grpo":  # run_grpo.sh takes the recipe, model, data and output folder from the environment
            run_env = {**env, "RECIPE": str(RECIPE), "MODEL": paths["warmup"], "DATA_FILE": paths["train_file"]}
            run_env["OUTPUT_DIR"] = paths["grpo"]
            command = [*launcher, *run_arguments(args)]
        else:
            run_env = env
            command = [*launcher, "--config", str(RECIPE), "--model_name_or_path", paths["warmup"]]
            command += ["--data_file", paths["train_file"], "--output_dir", paths[name], *run_arguments(args)]
        log = os.path.join(out, f"{name}.log") if args.bench else None
        processes[name] = run_logged(command, run_env, log)
    for name, process in processes.items():
        wait(process, f"the {name} run")
    timings["grpo"] = time.time() - t

    # --- evaluation ------------------------------------------------------------------------------------------------
    t = time.time()
    rows = []
    if not args.bench:
        table_dir = evaluate_with_test_mmau_sh(paths, env, args.max_new_tokens)
    else:
        rows.append((BENCH_LABELS[0], evaluate(paths["warmup"], paths["test_file"], paths["test_audio_dir"])))
        for name in runs:
            for step, folder in complete_checkpoints(paths[name]):
                rows.append((f"{name} step {step}", evaluate(folder, paths["test_file"], paths["test_audio_dir"])))
    result = {}
    if args.bench:
        result["before"] = rows[0][1]
        result["after"] = evaluate(paths["grpo"], paths["test_file"], paths["test_audio_dir"])
        result["audio_blind"] = evaluate(paths["grpo"], paths["test_file"], paths["test_audio_dir"], silent=True)
        result["stock_trl"] = evaluate(paths["stock-trl"], paths["test_file"], paths["test_audio_dir"])
        rows += [
            *zip(BENCH_LABELS[1:], (result[name] for name in BENCH_ROWS[1:]), strict=True),
        ]
    timings["evaluation"] = time.time() - t
    timings["total"] = time.time() - start

    # --- report ----------------------------------------------------------------------------------------------------
    if args.bench:
        print("\nHeld-out greedy accuracy (official MMAU rule; valid = answers that are a listed option):")
        print(accuracy_table(rows))
    summary = {
        "settings": {key: value for key, value in vars(args).items()},
        "paths": paths,
        "timings_seconds": {key: round(value, 1) for key, value in timings.items()},
        "accuracy": {name: {"accuracy": r["accuracy"], "valid": r["valid"]} for name, r in rows},
    }
    if not args.bench:
        summary["accuracy_table"] = os.path.join(table_dir, "checkpoints.json")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nWrote everything under {out}: model/, data/, warmup/, grpo/ (checkpoints)", end="")
    print(", stock-trl/, grpo.log, stock-trl.log" if args.bench else ", grpo/mmau/demo/ (accuracy per step)", end="")
    print(f", summary.json. Took {timings['total'] / 60:.1f} min ", end="")
    print(
        f"(warm-up {timings['warmup']:.0f} s, GRPO {timings['grpo']:.0f} s, evaluation {timings['evaluation']:.0f} s)."
    )
    if args.bench:
        print(
            " ".join(
                f"{name}={result[name]['accuracy']:.2f}%" for name in ("before", "after", "audio_blind", "stock_trl")
            )
        )
    return summary


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def bench_over_seeds(args: argparse.Namespace) -> dict:
    """The bench once per seed of `args.seeds` (into `args.out`/seed-N), then every row as mean ± std over seeds."""
    base = args.out
    per_seed = {}
    for seed in args.seeds:
        print(f"\n===== bench with seed {seed} =====", flush=True)
        per_seed[seed] = run(
            argparse.Namespace(**{**vars(args), "seed": seed, "out": os.path.join(base, f"seed-{seed}")})
        )
    rows = {
        name: [per_seed[seed]["accuracy"][label]["accuracy"] for seed in args.seeds]
        for name, label in zip(BENCH_ROWS, BENCH_LABELS, strict=True)
    }
    print(f"\nHeld-out greedy accuracy over seeds {' '.join(map(str, args.seeds))} (mean ± sample std):")
    for name, label in zip(BENCH_ROWS, BENCH_LABELS, strict=True):
        mean, std = mean_std(rows[name])
        each = ", ".join(f"{value:.2f}" for value in rows[name])
        print(f"  {label:<34} {mean:>6.2f} ± {std:5.2f}%   ({each})")
    summary = {"seeds": args.seeds, "accuracy_per_seed": rows}
    with open(os.path.join(base, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    line = " ".join(f"{name}={mean_std(rows[name])[0]:.2f}±{mean_std(rows[name])[1]:.2f}%" for name in BENCH_ROWS)
    print(f"{line} seeds={len(args.seeds)}")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m r1aqa.tryout.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        help="Folder for everything the demo writes. Default: outputs/demo (outputs/bench-learning with --bench).",
    )
    parser.add_argument("--steps", type=int, default=200, help="GRPO steps (each 8 questions x 8 completions).")
    parser.add_argument("--save_steps", type=int, default=50, help="Checkpoint every N GRPO steps.")
    parser.add_argument("--bench", action="store_true", help="Add the silent-audio and stock-TRL controls.")
    parser.add_argument("--warmup_steps", type=int, default=150, help="Format warm-up steps (16 questions each).")
    parser.add_argument("--n_train", type=int, default=256, help="Training clips.")
    parser.add_argument("--n_test", type=int, default=100, help="Held-out test clips.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the model, the clips and the warm-up.")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="With --bench: run it once per seed and report mean ± std over seeds."
    )
    parser.add_argument("--max_new_tokens", type=int, default=8, help="Evaluation answer length (as training).")
    args, args.grpo_args = parser.parse_known_args(argv)
    args.out = args.out or ("outputs/bench-learning" if args.bench else "outputs/demo")
    if args.steps < 1 or args.save_steps < 1:
        parser.error("--steps and --save_steps must be at least 1.")
    if args.seeds and not args.bench:
        parser.error("--seeds repeats the learning benchmark: add --bench.")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.seeds:
        bench_over_seeds(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
