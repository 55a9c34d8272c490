"""The checkpoints of a training run, and which of them are complete: one definition for training and evaluation.

    python -m r1aqa.checkpoints RUN_DIR            # steps of the checkpoints that can be evaluated, one per line
    python -m r1aqa.checkpoints RUN_DIR --resume   # the checkpoint `--resume true` would continue from

A trainer writes `checkpoint-N/` file by file; a job killed (or a disk filled) while saving leaves a folder that
looks like a checkpoint but is not one. Such a folder must be neither resumed from nor scored, so "complete" means:

- **evaluable**: the weights are all there and whole (`model.safetensors`, every shard a
  `model.safetensors.index.json` lists, or a PEFT `adapter_model.safetensors`: each safetensors file's header parses
  and the file is as long as the header says), and a training checkpoint (one with `training_args.bin`) has a
  `trainer_state.json` that parses. Folders written by `r1aqa.merge_lora` (no `training_args.bin`) only need weights.
- **resumable**: evaluable, plus the optimizer state (`optimizer.pt`, or DeepSpeed's `latest` tag naming an existing
  `global_stepN/` folder) and the scheduler state (`scheduler.pt`). A weights-only checkpoint
  (`save_only_model: true`) is evaluable, never resumable.

Training keeps the resume state (optimizer, scheduler, RNG, DeepSpeed's `global_step*/`) in the newest complete
checkpoint only (`r1aqa.runs.make_state_callback`, `remove_state` here): the older ones become weights-only, still
evaluable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import struct
import sys

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
SAFETENSORS_WEIGHTS = ("model.safetensors", "adapter_model.safetensors")
SAFETENSORS_INDEX = "model.safetensors.index.json"
OTHER_WEIGHTS = ("pytorch_model.bin", "adapter_model.bin")


def checkpoint_dirs(run_dir: str) -> list[tuple[int, str]]:
    """`(step, path)` of every `checkpoint-N` folder in `run_dir`, in step order, complete or not."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        match = CHECKPOINT_DIR.match(name)
        if match and os.path.isdir(os.path.join(run_dir, name)):
            found.append((int(match.group(1)), os.path.join(run_dir, name)))
    return sorted(found)


def safetensors_problem(path: str) -> str | None:
    """Why the safetensors file at `path` is not whole (missing, header unreadable, shorter than its header says)."""
    if not os.path.isfile(path):
        return f"{os.path.basename(path)} is missing"
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            (header_length,) = struct.unpack("<Q", f.read(8))
            if header_length > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(header_length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as error:
        return f"{os.path.basename(path)} has no readable header ({error})"
    if size < 8 + header_length + end:
        return f"{os.path.basename(path)} is truncated ({size} bytes, its header needs {8 + header_length + end})"
    return None


def weights_problem(folder: str) -> str | None:
    """Why the model weights in `folder` are missing or incomplete, or None when they are whole."""
    index = os.path.join(folder, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as error:
            return f"{SAFETENSORS_INDEX} is unreadable ({error})"
        for shard in shards:
            problem = safetensors_problem(os.path.join(folder, shard))
            if problem:
                return problem
        return None
    for name in SAFETENSORS_WEIGHTS:
        if os.path.isfile(os.path.join(folder, name)):
            return safetensors_problem(os.path.join(folder, name))
    if any(os.path.isfile(os.path.join(folder, name)) for name in OTHER_WEIGHTS):
        return None
    return "no model weights (model.safetensors, its shards, or adapter_model.safetensors)"


def trainer_state_problem(folder: str) -> str | None:
    """Why `trainer_state.json` in `folder` is missing or unreadable (HF writes it after the weights)."""
    path = os.path.join(folder, "trainer_state.json")
    if not os.path.isfile(path):
        return "no trainer_state.json (the run died while saving it)"
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        int(state["global_step"])
    except (ValueError, KeyError, TypeError) as error:
        return f"trainer_state.json is unreadable or truncated ({error})"
    return None


def optimizer_problem(folder: str) -> str | None:
    """Why the optimizer and scheduler state needed to resume are missing (weights-only checkpoints have none)."""
    latest = os.path.join(folder, "latest")
    if os.path.isfile(latest):  # DeepSpeed: `latest` names the folder holding the (sharded) optimizer state
        with open(latest, encoding="utf-8") as f:
            tag = f.read().strip()
        tag_dir = os.path.join(folder, tag)
        if not tag or not os.path.isdir(tag_dir) or not os.listdir(tag_dir):
            return f"DeepSpeed's `latest` names {tag!r}, which is missing or empty"
    elif not os.path.isfile(os.path.join(folder, "optimizer.pt")):
        return (
            "no optimizer state (optimizer.pt): a weights-only checkpoint (save_only_model, or an older checkpoint "
            "whose state was removed once a newer one had it) cannot be resumed"
        )
    if not os.path.isfile(os.path.join(folder, "scheduler.pt")):
        return "no scheduler.pt"
    return None


# The resume state of a checkpoint, in the order it is removed: first what makes it resumable (so a removal cut short
# never leaves a checkpoint that looks resumable but is not), then the rest. Weights, configs, trainer_state.json and
# training_args.bin stay: they are what evaluation reads.
STATE_FILES = ("latest", "optimizer.pt", "scheduler.pt", "scaler.pt")
STATE_PATTERN = re.compile(r"^(rng_state(_\d+)?\.pth|global_step\d+)$")


def state_paths(folder: str) -> list[str]:
    """The resume-state files and folders of checkpoint `folder` (optimizer, scheduler, RNG, DeepSpeed shards)."""
    names = [name for name in STATE_FILES if os.path.exists(os.path.join(folder, name))]
    names += sorted(name for name in os.listdir(folder) if STATE_PATTERN.match(name))
    return [os.path.join(folder, name) for name in names]


def remove_state(folder: str) -> None:
    """Make `folder` a weights-only checkpoint: delete its resume state (`state_paths`)."""
    import shutil

    for path in state_paths(folder):
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def checkpoint_problem(folder: str, resumable: bool = False) -> str | None:
    """Why `folder` is not a complete checkpoint (evaluable, or with `resumable` also resumable), or None."""
    problem = weights_problem(folder)
    if problem is None and (resumable or os.path.isfile(os.path.join(folder, "training_args.bin"))):
        problem = trainer_state_problem(folder)
    if problem is None and resumable:
        problem = optimizer_problem(folder)
    return problem


def complete_checkpoints(run_dir: str, resumable: bool = False, warn=None) -> list[tuple[int, str]]:
    """`(step, path)` of the complete checkpoints of `run_dir` in step order; each skipped one is reported with its
    reason through `warn` (default: the logger)."""
    warn = warn or logger.warning
    complete = []
    for step, path in checkpoint_dirs(run_dir):
        problem = checkpoint_problem(path, resumable)
        if problem:
            warn(f"Skipping {path}: {problem}.")
        else:
            complete.append((step, path))
    return complete


def last_resumable_checkpoint(run_dir: str, warn=None) -> str | None:
    """The newest checkpoint `--resume true` can continue from (optimizer state included), or None.

    Raises ValueError when the run has checkpoints but none holds optimizer state: resuming would silently restart.
    """
    warn = warn or logger.warning
    found = checkpoint_dirs(run_dir)
    for _step, path in reversed(found):
        problem = checkpoint_problem(path, resumable=True)
        if problem is None:
            return path
        missing_state = optimizer_problem(path)
        if missing_state and checkpoint_problem(path) is None:
            raise ValueError(
                f"{path} holds weights only ({missing_state}). To continue that run, start a new run from "
                f"those weights (--model_name_or_path {path}) or delete the weights-only checkpoints; resumable "
                "checkpoints need save_only_model: false."
            )
        warn(f"Skipping {path} for resuming: {problem}.")
    return None


def resume_checkpoint(output_dir: str, save_only_model: bool) -> str | None:
    """For `--resume true`: the checkpoint to continue from (None: start from scratch, logged). Called before any
    model loads, so that a run which cannot resume stops at once."""
    if save_only_model:
        raise ValueError("`resume: true` needs resumable checkpoints: set `save_only_model: false`.")
    checkpoint = last_resumable_checkpoint(output_dir)
    logger.info("Resuming from %s", checkpoint or "scratch (no complete checkpoint yet)")
    return checkpoint


def restore_weights_on_resume(trainer) -> None:
    """Make `trainer.train(resume_from_checkpoint=...)` restore the model's weights (`trainer`: a transformers Trainer).

    transformers 5.23's Trainer resumes (without DeepSpeed or FSDP) with `model.load_state_dict(<model.safetensors>,
    strict=False)`. `save_pretrained` writes Qwen2-Audio's weights under their legacy names (`audio_tower.*`,
    `language_model.model.*`), which `from_pretrained` converts and `load_state_dict` does not: no tensor matched, so a
    resumed run went on from its *initial* weights (with the checkpoint's optimizer state, scheduler and data
    position), logging only a warning (tests/test_reliability.py). Here a checkpoint holding full weights
    (`model.safetensors` or its shards) is read as `from_pretrained` reads it and copied into the model, every tensor
    required to match; adapters (PEFT) and DeepSpeed's own checkpoints load as the Trainer loads them.
    """
    original = trainer._load_from_checkpoint

    def load(resume_from_checkpoint, model=None):
        model = model if model is not None else trainer.model
        full = any(
            os.path.isfile(os.path.join(resume_from_checkpoint, name))
            for name in (SAFETENSORS_WEIGHTS[0], SAFETENSORS_INDEX)
        )
        if not full or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            return original(resume_from_checkpoint, model)
        from r1aqa.models import load_model

        saved = load_model(resume_from_checkpoint, dtype=next(model.parameters()).dtype)
        model.load_state_dict(saved.state_dict(), strict=True)
        logger.info("Restored the weights of %s", resume_from_checkpoint)
        return None

    trainer._load_from_checkpoint = load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r1aqa.checkpoints", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="A training run's output_dir.")
    parser.add_argument("--resume", action="store_true", help="Print the checkpoint a resumed run would start from.")
    args = parser.parse_args(argv)

    def warn(message: str) -> None:
        print(message, file=sys.stderr)

    if args.resume:
        try:
            path = last_resumable_checkpoint(args.run_dir, warn)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if path:
            print(path)
        return 0
    for step, _path in complete_checkpoints(args.run_dir, warn=warn):
        print(step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
