"""The `checkpoint-N` folders of a run and which are complete: evaluable (whole weights, and a training checkpoint's
`trainer_state.json` readable) or resumable (also optimizer and scheduler state). A save cut short is neither."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

logger = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
# Resume state, removed in this order (what makes it resumable first: a cut-short removal never looks resumable).
STATE_FILES = ("latest", "optimizer.pt", "scheduler.pt", "scaler.pt")
STATE_PATTERN = re.compile(r"^(rng_state(_\d+)?\.pth|global_step\d+)$")


def checkpoint_dirs(run_dir: str) -> list[tuple[int, str]]:
    """`(step, path)` of every `checkpoint-N` folder in `run_dir`, in step order, complete or not."""
    names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    found = [(re.match(r"^checkpoint-(\d+)$", name), os.path.join(run_dir, name)) for name in names]
    return sorted((int(match.group(1)), path) for match, path in found if match and os.path.isdir(path))


def safetensors_problem(path: str) -> str | None:
    """Why the safetensors file at `path` is not whole: missing, or its header unreadable or not matching its size."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        return f"{os.path.basename(path)} is missing"
    try:
        with safe_open(path, "np"):  # reads the header and checks that the data is as long as it says
            return None
    except SafetensorError as error:
        return f"{os.path.basename(path)} is truncated or unreadable ({error})"


def weights_problem(folder: str) -> str | None:
    """Why the weights in `folder` (a model, its shards, or a PEFT adapter) are missing or incomplete, or None."""
    if os.path.isfile(index := os.path.join(folder, SAFETENSORS_INDEX)):
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as error:
            return f"{SAFETENSORS_INDEX} is unreadable ({error})"
        return next(filter(None, (safetensors_problem(os.path.join(folder, s)) for s in shards)), None)
    for name in ("model.safetensors", "adapter_model.safetensors"):
        if os.path.isfile(os.path.join(folder, name)):
            return safetensors_problem(os.path.join(folder, name))
    return "no model weights (model.safetensors, its shards, or adapter_model.safetensors)"


def optimizer_problem(folder: str) -> str | None:
    """Why the optimizer and scheduler state needed to resume are missing (weights-only checkpoints have none)."""
    if os.path.isfile(latest := os.path.join(folder, "latest")):  # DeepSpeed: names the folder of its state
        with open(latest, encoding="utf-8") as f:
            tag_dir = os.path.join(folder, tag := f.read().strip())
        if not tag or not os.path.isdir(tag_dir) or not os.listdir(tag_dir):
            return f"DeepSpeed's `latest` names {tag!r}, which is missing or empty"
    elif not os.path.isfile(os.path.join(folder, "optimizer.pt")):
        return "no optimizer state (optimizer.pt): a weights-only checkpoint (save_only_model, or an older one)"
    return None if os.path.isfile(os.path.join(folder, "scheduler.pt")) else "no scheduler.pt"


def checkpoint_problem(folder: str, resumable: bool = False) -> str | None:
    """Why `folder` is not a complete checkpoint (evaluable, or with `resumable` also resumable), or None.
    Folders without `training_args.bin` (r1aqa.merge_lora's) only need weights to be evaluable."""
    trained = resumable or os.path.isfile(os.path.join(folder, "training_args.bin"))
    if (problem := weights_problem(folder)) or not trained:
        return problem
    try:  # HF writes trainer_state.json after the weights
        with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
            int(json.load(f)["global_step"])
    except FileNotFoundError:
        return "no trainer_state.json (the run died while saving it)"
    except (ValueError, KeyError, TypeError) as error:
        return f"trainer_state.json is unreadable or truncated ({error})"
    return optimizer_problem(folder) if resumable else None


def complete_checkpoints(run_dir: str, resumable: bool = False, warn=None) -> list[tuple[int, str]]:
    """`(step, path)` of the complete checkpoints of `run_dir` in step order; skipped ones reported through `warn`."""
    problems = [(step, path, checkpoint_problem(path, resumable)) for step, path in checkpoint_dirs(run_dir)]
    for _step, path, problem in problems:
        if problem:
            (warn or logger.warning)(f"Skipping {path}: {problem}.")
    return [(step, path) for step, path, problem in problems if not problem]


def last_resumable_checkpoint(run_dir: str, warn=None) -> str | None:
    """The newest resumable checkpoint, or None; ValueError if the newest complete one holds weights only."""
    for _step, path in reversed(checkpoint_dirs(run_dir)):
        if (problem := checkpoint_problem(path, resumable=True)) is None:
            return path
        if (missing := optimizer_problem(path)) and checkpoint_problem(path) is None:
            raise ValueError(f"{path} holds weights only ({missing}): start a new run from it (--model_name_or_path "
                             f"{path}) or delete it; resumable checkpoints need save_only_model: false.")  # fmt: skip
        (warn or logger.warning)(f"Skipping {path} for resuming: {problem}.")
    return None


def state_paths(folder: str) -> list[str]:
    """The resume-state files and folders of checkpoint `folder` (optimizer, scheduler, RNG, DeepSpeed shards)."""
    names = [name for name in STATE_FILES if os.path.exists(os.path.join(folder, name))]
    return [os.path.join(folder, n) for n in names + sorted(n for n in os.listdir(folder) if STATE_PATTERN.match(n))]


def remove_state(folder: str) -> None:
    """Make `folder` a weights-only checkpoint."""
    for path in state_paths(folder):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
