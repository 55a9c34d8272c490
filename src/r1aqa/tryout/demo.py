"""The whole pipeline on CPU (`make demo`) and the proof that GRPO learns from the audio (`make bench-learning`); run
it from the repository's root. Other arguments go to the GRPO runs. The steps: docs/demo.md.

    python -m r1aqa.tryout.demo                          # tiny model, tone task, warm-up, run_grpo.sh, test_mmau.sh
    python -m r1aqa.tryout.demo --bench [--seeds 0 1 2]  # + silent clips and stock TRL; mean ± std over seeds
    python -m r1aqa.tryout.demo --steps 2 --warmup_steps 2 --n_train 4 --per_device_train_batch_size 16  # smoke
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import torch

from r1aqa.benchmarks import mean_std
from r1aqa.tryout.tiny import write_tiny_model
from r1aqa.tryout.toy_task import write_toy_task
from r1aqa.tryout.warmup import warmup

RECIPE = "configs/grpo_demo_cpu.yaml"
EXTRA_TOKENS = ("<answer>", "</answer>", "low", "top")  # one token per option: a sample is a whole option or none
CHUNK_LENGTH = 2  # seconds of audio window (Qwen2-Audio: 30); the 1.5 s clips fit
# Read by run_grpo.sh and test_mmau.sh: a user's own (`make bench-learning SEEDS=...` exports SEEDS) must not leak in.
LAUNCHER_SETTINGS = ("SEEDS", "SMOKE", "MODEL", "DATA_FILE", "OUTPUT_DIR", "RECIPE", "DS_CONFIG", "CPU_PROCS", "SEED",
    "NPROC_PER_NODE", "NNODES", "NODE_RANK", "RUN_DIR", "RUN_DIRS", "OUT_DIR", "AGG_DIR", "STEPS", "PROTOCOL", "AUDIO",
    "DECODING", "NUM_SAMPLES", "AUDIO_DIR", "BATCH_SIZE", "MAX_NEW_TOKENS", "THINK", "PROMPT_STYLE", "SYSTEM_PROMPT",
    "BENCHMARK", "MMAU_FILE", "SELECT_FILE", "SELECT_AUDIO_DIR", "BACKEND", "EVAL_DEVICES", "EVAL_PROCS")  # fmt: skip


def stock_trl(argv: list[str]) -> None:
    """`python -m r1aqa.grpo` with TRL's own trainer, taught only to load the audio for generation: as stock TRL."""
    import numpy as np
    from trl import GRPOTrainer

    from r1aqa import grpo
    from r1aqa.audio import prompts_with_audio
    from r1aqa.trainer import AUDIO_KEYS

    class StockTRLGRPOTrainer(GRPOTrainer):
        def __init__(self, model, *args, **kwargs):
            model.config.image_token_id = model.config.audio_token_index  # TRL reads it for any processor
            super().__init__(model, *args, **kwargs)

        def _tokenize_prompts(self, prompts: list):
            prompt_ids, images, fields = super()._tokenize_prompts(prompts_with_audio(prompts))
            return prompt_ids, images, {key: torch.as_tensor(np.asarray(fields[key])) for key in AUDIO_KEYS}

    grpo.main(*grpo.parse_args(argv), trainer_class=StockTRLGRPOTrainer)


def run_all(jobs: dict) -> None:
    """Run {what: (command, env, log file or None)} in parallel; stop when one fails."""
    processes = {}
    for what, (command, env, log) in jobs.items():
        print(f"$ {' '.join(command)}" + (f"  > {log}" if log else ""), flush=True)
        out = open(log, "w") if log else None  # noqa: SIM115 - the child holds it until it exits
        processes[what] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    for what, process in processes.items():
        if process.wait():
            raise SystemExit(f"error: {what} failed (exit {process.returncode}); see its output above or its log.")


def subprocess_env() -> dict:
    """The user's environment without LAUNCHER_SETTINGS; the CPU path also on a GPU node; one thread per process."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_SETTINGS}
    return {**env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "DEVICE": "cpu", "DS_ACCELERATOR": "cpu",
            "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}  # fmt: skip


def evaluate(run_dir: str, warmup: str, data: dict, env: dict, audio: str = "real", steps: str = "") -> list:
    """Greedy accuracy % per step: the warm-up as step 0 (python -m r1aqa.evaluate), the checkpoints (test_mmau.sh)."""
    out_dir = os.path.join(run_dir, "mmau", "demo")
    if audio == "real":
        command = [sys.executable, "-m", "r1aqa.evaluate", "--model_path", warmup, "--data_file", data["test_file"],
                   "--audio_dir", data["test_audio_dir"], "--out_file", os.path.join(out_dir, "checkpoint-0.json"),
                   "--max_new_tokens", "8", "--decoding", "greedy"]  # fmt: skip
        run_all({"evaluating the warm-up": (command, env, None)})
    settings = {"RUN_DIR": run_dir, "MMAU_FILE": data["test_file"], "AUDIO_DIR": data["test_audio_dir"], "STEPS": steps,
                "OUT_DIR": out_dir, "MAX_NEW_TOKENS": "8", "DECODING": "greedy", "AUDIO": audio}  # fmt: skip
    run_all({"test_mmau.sh": (["bash", "test_mmau.sh"], {**env, **settings}, None)})
    scores = glob.glob(os.path.join(out_dir + (".silent" if audio == "silent" else ""), "checkpoint-*.score.json"))
    scores.sort(key=lambda path: int(path.rsplit("-", 1)[1].split(".")[0]))
    return [json.load(open(path))["total"]["accuracy"] for path in scores]  # noqa: SIM115


def run(args: argparse.Namespace) -> dict:
    """One demo (or bench) into `args.out`; returns its rows {name: accuracy %} (the bench's four, or two)."""
    start, out, env = time.time(), os.path.abspath(args.out), subprocess_env()
    torch.set_num_threads(1)  # as the subprocesses: two threads each on a shared 2-core machine ran ~30x slower
    model, warm, grpo, stock = (os.path.join(out, name) for name in ("model", "warmup", "grpo", "stock-trl"))
    for folder in (warm, grpo, stock):  # never mix checkpoints of an earlier run into this one
        shutil.rmtree(folder, ignore_errors=True)
    write_tiny_model(model, seed=args.seed, chunk_length=CHUNK_LENGTH, extra_tokens=EXTRA_TOKENS)
    data = write_toy_task(os.path.join(out, "data"), args.n_train, args.n_test, seed=args.seed, seconds=1.5)
    warmup(model, data["train_file"], warm, steps=args.warmup_steps, seed=args.seed)

    # GRPO with run_grpo.sh and, for the bench, the same run with stock TRL, in parallel (logs in files then).
    grpo_args = ["--max_steps", str(args.steps), *args.grpo_args]
    ours = {"RECIPE": RECIPE, "MODEL": warm, "DATA_FILE": data["train_file"], "OUTPUT_DIR": grpo}
    jobs = {"the GRPO run": (["bash", "run_grpo.sh", *grpo_args], {**env, **ours}, args.bench and f"{out}/grpo.log")}
    if args.bench:
        command = [sys.executable, "-c", "import sys; from r1aqa.tryout.demo import stock_trl; stock_trl(sys.argv[1:])",
                   "--config", RECIPE, "--model_name_or_path", warm, "--data_file", data["train_file"],
                   "--output_dir", stock, *grpo_args]  # fmt: skip
        jobs["the stock-TRL run"] = (command, env, f"{out}/stock-trl.log")
    run_all(jobs)

    accuracy = evaluate(grpo, warm, data, env)
    result = {"before": accuracy[0], "after": accuracy[-1]}  # the last step, not the best: no choice on the test clips
    if args.bench:
        result["audio_blind"] = evaluate(grpo, warm, data, env, "silent", str(args.steps))[-1]
        result["stock_trl"] = evaluate(stock, warm, data, env)[-1]
    print(f"Wrote everything under {out} in {(time.time() - start) / 60:.1f} min; accuracy per step: grpo/mmau/demo/.")
    if args.bench:
        print(" ".join(f"{name}={value:.2f}%" for name, value in result.items()))
    return result


def main(argv: list[str] | None = None) -> dict | None:
    """One demo or bench; with `--seeds`, the bench once per seed (into <out>/seed-N), then mean ± sample std."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="Default: outputs/demo (outputs/bench-learning with --bench).")
    parser.add_argument("--bench", action="store_true", help="Add the silent-clips and stock-TRL controls.")
    parser.add_argument("--seeds", type=int, nargs="+", help="With --bench: once per seed, then mean ± std.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the model, the clips and the warm-up.")
    parser.add_argument("--steps", type=int, default=200, help="GRPO steps (8 questions x 8 completions each).")
    parser.add_argument("--warmup_steps", type=int, default=150, help="Format warm-up steps (16 questions each).")
    parser.add_argument("--n_train", type=int, default=256, help="Training clips.")
    parser.add_argument("--n_test", type=int, default=100, help="Held-out test clips.")
    args, args.grpo_args = parser.parse_known_args(argv)
    args.out = args.out or ("outputs/bench-learning" if args.bench else "outputs/demo")
    if args.seeds and not args.bench:
        parser.error("--seeds repeats the learning benchmark: add --bench.")
    if not args.seeds:
        return run(args)
    results = [run(argparse.Namespace(**{**vars(args), "seed": s, "out": f"{args.out}/seed-{s}"})) for s in args.seeds]
    print(f"\nHeld-out greedy accuracy over seeds {' '.join(map(str, args.seeds))} (mean ± sample std; each seed):")
    stats = {name: mean_std([result[name] for result in results]) for name in results[0]}
    for name, (mean, std) in stats.items():
        print(f"  {name:<12} {mean:>6.2f} ± {std:5.2f}%   ({', '.join(f'{r[name]:.2f}' for r in results)})")
    print(" ".join(f"{name}={mean:.2f}±{std:.2f}%" for name, (mean, std) in stats.items()), f"seeds={len(results)}")


if __name__ == "__main__":
    main()
