"""Evaluate a run's checkpoints with one worker per GPU (or several CPU workers): what test_mmau.sh calls.

    python -m r1aqa.eval_workers --run_dir outputs/grpo --steps 100 200 300 --out_dir outputs/grpo/mmau/x \\
        [--devices 0 1 | --procs 2] -- --data_file ... --audio_dir ... --batch_size 32   # r1aqa.evaluate's arguments

Each checkpoint is one `python -m r1aqa.evaluate` process (`--model_path RUN_DIR/checkpoint-N --out_file
OUT_DIR/checkpoint-N.json` plus the arguments after `--`). Workers take the next checkpoint in step order from one
queue: a worker per GPU (`--devices`, `cpu` for none; default every visible GPU: `CUDA_VISIBLE_DEVICES`' entries, else 0..n-1; each
process sees only its GPU), or `--procs` workers on CPU (each with its share of the cores). A checkpoint's
predictions do not depend on the worker or on the other checkpoints (each evaluation is seeded on its own), so any
number of workers gives the same files as one.

A checkpoint whose evaluation fails is named at the end and its worker stops (a GPU that failed once, e.g. out of
memory, would fail again); the other workers take the rest of the queue. The same command again skips the finished
checkpoints (r1aqa.evaluate checks their settings) and redoes, or resumes, the failed one. Exit code: 0 when every
checkpoint was evaluated, else the first failure's exit code.
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import threading


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as values for a worker's CUDA_VISIBLE_DEVICES."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def worker_envs(devices: list[str] | None, procs: int) -> list[tuple[str, dict[str, str]]]:
    """`(name, environment changes)` of each worker: one per GPU of `devices` (default: every visible GPU), else
    `procs` CPU workers, each with an equal share of the cores."""
    gpus = [] if devices == ["cpu"] else devices or visible_gpus()
    if gpus:
        return [(f"gpu {gpu}", {"CUDA_VISIBLE_DEVICES": gpu}) for gpu in gpus]
    threads = str(max(1, (os.cpu_count() or 1) // procs))
    cpu = {"CUDA_VISIBLE_DEVICES": ""} | ({} if procs == 1 else {"OMP_NUM_THREADS": threads})
    return [(f"cpu {index}", cpu) for index in range(procs)]


def run(run_dir: str, steps: list[int], out_dir: str, evaluate_args: list[str], workers) -> int:
    """Evaluate `steps` of `run_dir` over `workers` (`worker_envs`); returns the exit code (see the module doc)."""
    todo: queue.Queue[int] = queue.Queue()
    for step in steps:
        todo.put(step)
    several = len(workers) > 1
    lock = threading.Lock()
    failures: list[tuple[int, str, int]] = []

    def say(text: str) -> None:
        with lock:
            print(text, flush=True)

    def work(name: str, changes: dict[str, str]) -> None:
        env = {**os.environ, **changes}
        if several:
            env["TQDM_DISABLE"] = "1"  # progress bars of several processes would interleave
        while True:
            try:
                step = todo.get_nowait()
            except queue.Empty:
                return
            command = [sys.executable, "-m", "r1aqa.evaluate", "--model_path", os.path.join(run_dir, f"checkpoint-{step}"),
                       "--out_file", os.path.join(out_dir, f"checkpoint-{step}.json"), *evaluate_args]  # fmt: skip
            say(f"=== checkpoint-{step}" + (f" ({name}) ===" if several else " ==="))
            if several:  # each line prefixed with its checkpoint
                process = subprocess.Popen(
                    command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
                for line in process.stdout:
                    say(f"[checkpoint-{step}] {line.rstrip()}")
                code = process.wait()
            else:
                code = subprocess.run(command, env=env).returncode
            if code != 0:
                with lock:
                    failures.append((step, name, code))
                say(f"checkpoint-{step} failed ({name}, exit code {code}): this worker stops.")
                return

    threads = [threading.Thread(target=work, args=worker, daemon=True) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    left = []
    while not todo.empty():
        left.append(todo.get_nowait())
    if not failures:
        return 0
    failed = ", ".join(f"checkpoint-{step} ({name}, exit code {code})" for step, name, code in sorted(failures))
    print(f"error: evaluation failed for {failed}" + (f"; not started: {', '.join(f'checkpoint-{s}' for s in left)}"
          if left else "") + ". Run the same command again: finished checkpoints are skipped, the others redone.",
          file=sys.stderr, flush=True)  # fmt: skip
    return failures[0][2]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    evaluate_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m r1aqa.eval_workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--run_dir", required=True, help="The training run's output_dir.")
    parser.add_argument("--steps", type=int, nargs="+", required=True, help="Checkpoint steps, in order.")
    parser.add_argument("--out_dir", required=True, help="Where checkpoint-N.json (and meta, score) go.")
    parser.add_argument("--devices", nargs="*", help="GPUs, one worker each (default: every visible GPU).")
    parser.add_argument("--procs", type=int, default=1, help="CPU workers when there is no GPU (default 1).")
    args = parser.parse_args(own)
    if args.procs < 1:
        parser.error(f"--procs must be at least 1, got {args.procs}")
    devices = [d for entry in args.devices or [] for d in entry.replace(",", " ").split()]
    workers = worker_envs(devices, args.procs)
    if len(workers) > 1:
        print(f"{len(workers)} workers ({', '.join(name for name, _ in workers)}) for {len(args.steps)} checkpoint(s).",
              flush=True)  # fmt: skip
    return run(args.run_dir, args.steps, args.out_dir, evaluate_args, workers)


if __name__ == "__main__":
    sys.exit(main())
