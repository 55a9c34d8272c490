"""`bash test_mmau.sh` (= `python -m r1aqa.sweep --repo_dir <repository>`): `python -m r1aqa.evaluate` on every
checkpoint of a run (or of several), then r1aqa.report: RUN_DIR/<benchmark>/<data file>.<settings>/checkpoints.*
(several runs: also AGG_DIR/<benchmark>/<folder>/aggregate.*). Each variable below is also a flag (a flag wins).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import queue
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from r1aqa import report
from r1aqa.benchmarks import detect_benchmark, load_items
from r1aqa.checkpoints import complete_checkpoints

# test_mmau.sh's environment variables: (name, help, argparse options); RUN_DIR is also --run_dir.
VARIABLES = (
    ("RUN_DIR", "the run's output_dir, or a folder of seed-* runs (default outputs/grpo-qwen2-audio-7b)", {}),
    ("RUN_DIRS", "several runs, e.g. 'out/seed-42 out/seed-43': each as alone, then their aggregate", {"type": str.split}),
    ("AGG_DIR", "where the aggregate of several runs goes (default: <their common parent>/aggregate)", {}),
    ("STEPS", "checkpoint steps, e.g. '100 200' (default: every complete checkpoint)", {"type": str.split}),
    ("PROTOCOL", "paper: the paper-time release (steps 100-500, batch 16)", {"choices": ("default", "paper")}),
    ("MMAU_FILE", "default data/mmau/mmau-test-mini.json (MMAU a5cd89a, the paper's; data/README.md)", {}),
    ("DATA_FILE", "MMAU JSON, MMAR-meta.jsonl or AVQA JSONL (default MMAU_FILE)", {}),
    ("BENCHMARK", "told from DATA_FILE by default", {"default": "auto", "choices": ("auto", "mmau", "mmar", "avqa")}),
    ("AUDIO_DIR", "the clips (default data/mmau/test-mini-audios; AVQA: each row's audio_path)", {}),
    ("DECODING", "original (the paper's; default) or greedy", {"choices": ("original", "greedy")}),
    ("SEED", "seed of the first pass (default 42)", {"type": int}),
    ("NUM_SAMPLES", "K seeded passes: mean ± std", {"type": int, "default": 1}),
    ("AUDIO", "silent: every clip replaced by silence (a control)", {"default": "real", "choices": ("real", "silent")}),
    ("BATCH_SIZE", "default 32 (PROTOCOL=paper: 16)", {"type": int}),
    ("MAX_NEW_TOKENS", "default 256, as the paper", {"type": int}),
    ("THINK", "true: Prompt <3>; false: Prompt <2>", {"choices": ("true", "false")}),
    ("PROMPT_STYLE", "default: as the run was trained (r1aqa_run.json)", {"choices": ("answer", "think", "plain")}),
    ("SYSTEM_PROMPT", "default: as the run was trained", {"choices": ("default", "qwen", "none")}),
    ("OUT_DIR", "one run's result folder (default RUN_DIR/<benchmark>/<data file>.<settings>)", {}),
    ("SELECT_FILE", "AVQA validation JSONL (prepare_avqa): selects a step without the test set", {}),
    ("SELECT_AUDIO_DIR", "its WAVs, if moved since conversion", {}),
    ("EVAL_DEVICES", "GPUs, e.g. '0 1' (default: all), or cpu", {"type": lambda t: t.replace(",", " ").split()}),
    ("EVAL_PROCS", "workers on CPU", {"type": int, "default": 1}),
    ("BACKEND", "hf (transformers) or vllm", {"choices": ("hf", "vllm")}),
)  # fmt: skip
EVALUATE_FLAGS = ("data_file", "benchmark", "audio_dir", "batch_size", "max_new_tokens", "prompt_style",
                  "system_prompt", "decoding", "protocol", "seed", "num_samples", "audio", "backend")  # fmt: skip


def die(message: str):
    print(f"test_mmau.sh: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The settings (variables, then flags) and the other arguments, for r1aqa.evaluate."""
    parser = argparse.ArgumentParser(prog="test_mmau.sh", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Other arguments (e.g. --limit 50, --force) go to r1aqa.evaluate.")  # fmt: skip
    parser.add_argument("--repo_dir", default=".", help="Where the default paths are (test_mmau.sh: its folder).")
    for name, text, options in VARIABLES:
        parser.add_argument("--" + name.lower(), help=f"{name}: {text}", **options)
    variables = [f"--{name.lower()}={os.environ[name]}" for name, _, _ in VARIABLES if os.environ.get(name)]
    args, extra = parser.parse_known_args(variables + argv)
    args.steps = args.steps or (["100", "200", "300", "400", "500"] if args.protocol == "paper" else None)
    args.run_dir = args.run_dir or os.path.join(args.repo_dir, "outputs", "grpo-qwen2-audio-7b")
    args.data_file = args.data_file or args.mmau_file or os.path.join(args.repo_dir, "data/mmau/mmau-test-mini.json")
    return args, extra


def settings(args: argparse.Namespace, run_dir: str) -> argparse.Namespace:
    """One run's settings: as trained unless set, its folders (`eval_dir`: `out_dir`, `.silent` for silent audio)."""
    run = argparse.Namespace(**{**vars(args), "run_dir": run_dir})
    recorded_file = os.path.join(run_dir, "r1aqa_run.json")
    recorded = json.loads(Path(recorded_file).read_text(encoding="utf-8")) if os.path.isfile(recorded_file) else {}
    if run.think == "true" and run.prompt_style not in (None, "think"):
        die(f"THINK=true contradicts PROMPT_STYLE={run.prompt_style}")
    trained = recorded.get("prompt_style") or ("think" if recorded.get("think") else "answer")
    run.prompt_style = "think" if run.think == "true" else run.prompt_style or ("answer" if run.think else trained)
    run.system_prompt = run.system_prompt or recorded.get("system_prompt") or "default"
    if not os.path.isdir(run_dir):
        die(f"RUN_DIR={run_dir} is not a folder (set RUN_DIR to the training run's output_dir)")
    if run.select_file and not os.path.isfile(run.select_file):
        die(f"SELECT_FILE={run.select_file} does not exist (python -m r1aqa.prepare_avqa writes it)")
    try:
        run.benchmark = detect_benchmark(load_items(run.data_file)) if run.benchmark == "auto" else run.benchmark
    except (OSError, ValueError) as error:
        die(f"cannot read DATA_FILE={run.data_file} ({error}; see data/README.md)")
    if run.audio_dir is None and run.benchmark != "avqa":  # AVQA rows name their own clips
        run.audio_dir = os.path.join(args.repo_dir, "data", "mmau", "test-mini-audios")
    # One folder per data file and settings, so that results of different settings never mix.
    name = re.sub(r"\.jsonl?$", "", os.path.basename(run.data_file)) + f".{run.prompt_style}"
    name += ".greedy" if run.decoding == "greedy" else ""
    name += f".samples-{run.num_samples}" if run.num_samples > 1 else ""
    name += ".paper" if run.protocol == "paper" else ""
    name += f".system-{run.system_prompt}" if run.system_prompt != "default" else ""
    run.out_dir = run.out_dir or os.path.join(run_dir, run.benchmark, name)
    run.eval_dir = run.out_dir + (".silent" if run.audio == "silent" else "")
    run.select = None
    if run.select_file:  # the run's prompt, decoding, seed and passes, always with the audio
        changes = {"data_file": run.select_file, "audio_dir": run.select_audio_dir, "select_file": None,
                   "out_dir": None, "benchmark": "auto", "audio": "real"}  # fmt: skip
        run.select = settings(argparse.Namespace(**{**vars(run), **changes}), run_dir)
    return run


def evaluate_checkpoints(run: argparse.Namespace, steps: list[str], extra: list[str]) -> int:
    """One `python -m r1aqa.evaluate` per checkpoint over a worker per GPU, else EVAL_PROCS on CPU; 0, else the first
    failure's exit code. A worker whose checkpoint failed stops (its GPU would fail again); the others go on."""
    devices = run.eval_devices
    if devices is None and "CUDA_VISIBLE_DEVICES" in os.environ:
        devices = os.environ["CUDA_VISIBLE_DEVICES"].replace(",", " ").split()
    elif devices is None:
        import torch

        devices = [str(index) for index in range(torch.cuda.device_count())]
    threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // run.eval_procs))} if run.eval_procs > 1 else {}
    team = [(f"gpu {gpu}", {"CUDA_VISIBLE_DEVICES": gpu}) for gpu in devices if gpu != "cpu"]
    team = team or [(f"cpu {index}", {"CUDA_VISIBLE_DEVICES": "", **threads}) for index in range(run.eval_procs)]
    todo, failures, several = queue.SimpleQueue(), [], len(team) > 1
    for step in [*steps, *[None] * len(team)]:  # a None ends each worker
        todo.put(step)
    if several:
        print(f"{len(team)} workers ({', '.join(name for name, _ in team)}) for {len(steps)} checkpoints.", flush=True)
    flags = [f"--{key}={getattr(run, key)}" for key in EVALUATE_FLAGS if getattr(run, key) is not None]

    def work(name: str, changes: dict[str, str]) -> None:
        env = {**os.environ, **changes, **({"TQDM_DISABLE": "1"} if several else {})}  # no interleaved bars
        for step in iter(todo.get, None):
            print(f"=== checkpoint-{step}" + (f" ({name})" if several else "") + " ===\n", end="", flush=True)
            model, out = (os.path.join(folder, f"checkpoint-{step}") for folder in (run.run_dir, run.eval_dir))
            command = [sys.executable, "-m", "r1aqa.evaluate", "--model_path", model, "--out_file", out + ".json"]
            pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT} if several else {}
            process = subprocess.Popen([*command, *flags, *extra], env=env, text=True, **pipe)
            for line in process.stdout or ():  # several workers: each line prefixed with its checkpoint
                print(f"[checkpoint-{step}] {line}", end="", flush=True)  # one write: lines never interleave
            if code := process.wait():
                failures.append(code)
                print(f"error: checkpoint-{step} ({name}) failed (exit code {code}), this worker stops; the same command "
                      "again redoes the unfinished ones.", file=sys.stderr, flush=True)  # fmt: skip
                return

    with ThreadPoolExecutor(len(team)) as pool:
        list(pool.map(lambda worker: work(*worker), team))
    return failures[0] if failures else 0


def scored(folder: str) -> bool:
    return bool(glob.glob(os.path.join(glob.escape(folder), "checkpoint-*.score.json")))


def tabulate(runs: list[argparse.Namespace], prefix: str) -> int:
    """r1aqa.report on the runs' scores (silent audio: beside those with audio if scored), written to PREFIX.*."""
    table, silent = ["--out_prefix", prefix, "--score_dirs"], runs[0].audio == "silent"
    if silent and all(scored(run.out_dir) for run in runs):
        table += [run.out_dir for run in runs] + ["--silent_score_dirs"]
    elif silent:
        print(f"No scores with audio in {runs[0].out_dir} yet: the table shows silent accuracy only.")
    table += [run.eval_dir for run in runs]
    if runs[0].select:
        table += ["--select_score_dirs", *(run.select.eval_dir for run in runs)]
    return report.main(table)


def sweep_run(run: argparse.Namespace, extra: list[str]) -> int:
    """Evaluate one run's checkpoints (then the selection file's) and report them; returns the exit code."""
    for step in run.steps or ():
        if not os.path.isdir(os.path.join(run.run_dir, f"checkpoint-{step}")):
            die(f"{os.path.join(run.run_dir, f'checkpoint-{step}')} does not exist")
    steps = run.steps or [str(step) for step, _ in complete_checkpoints(run.run_dir)]  # the others named on stderr
    if not steps:
        die(f"no complete checkpoint-N folder in RUN_DIR={run.run_dir} (training saves one every save_steps)")
    print(f"{run.benchmark.upper()}: {len(steps)} checkpoint(s) of {run.run_dir} (steps {' '.join(steps)}), "
          f"{run.data_file}, prompt {run.prompt_style}, decoding {run.decoding or 'original'} -> {run.eval_dir}",
          flush=True)  # fmt: skip
    os.makedirs(run.eval_dir, exist_ok=True)
    if code := evaluate_checkpoints(run, steps, extra):
        return code
    if run.select:
        print(f"=== validation: {run.select_file} (selects a step without the test set) ===", flush=True)
        if code := sweep_run(run.select, extra):
            return code
    if not scored(run.eval_dir):
        print(f"No scores (the data file has no answers): predictions are in {run.eval_dir}.")
        return 0
    return tabulate([run], os.path.join(run.eval_dir, "checkpoints"))


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    run_dirs, root = args.run_dirs, glob.escape(args.run_dir)
    if not run_dirs and os.path.isdir(args.run_dir) and not glob.glob(os.path.join(root, "checkpoint-*")):
        # a folder of seed-* runs (SEEDS="42 43" bash run_grpo.sh), in seed order
        found = [path for path in glob.glob(os.path.join(root, "seed-*")) if os.path.isdir(path)]
        run_dirs = sorted(found, key=lambda path: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)])
    if not run_dirs:
        return sweep_run(settings(args, args.run_dir), extra)
    # Several runs: each evaluated as alone, then their aggregate.
    if args.out_dir:
        die("OUT_DIR is one run's folder: with several runs unset it (AGG_DIR places the aggregate)")
    for run_dir in run_dirs:
        if not os.path.isdir(run_dir):
            die(f"RUN_DIRS: {run_dir} is not a folder")
    runs = [settings(args, run_dir) for run_dir in run_dirs]
    names = sorted({f"{run.benchmark}/{os.path.basename(run.eval_dir)}" for run in runs})
    if len(names) > 1:
        die(f"the runs' results have different settings ({', '.join(names)}): were they trained in different modes? "
            "Set THINK or PROMPT_STYLE to evaluate them alike.")  # fmt: skip
    for run in runs:
        print(f"##### run {run.run_dir} #####", flush=True)
        if sweep_run(run, extra):
            die(f"evaluating {run.run_dir} failed (see above)")
    parent = os.path.commonpath([os.path.dirname(os.path.abspath(run_dir)) for run_dir in run_dirs])
    agg_dir = os.path.join(args.agg_dir or os.path.join(parent, "aggregate"), names[0])
    print(f"##### aggregate of {len(runs)} runs -> {agg_dir} #####", flush=True)
    return tabulate(runs, os.path.join(agg_dir, "aggregate"))


if __name__ == "__main__":
    sys.exit(main())
