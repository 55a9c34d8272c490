"""The start of a training run, shared by the GRPO and SFT entry points: where it continues from (never silently over
an earlier run), the global batch, the run's record for evaluation (`r1aqa_run.json`), and its disk use (only the
newest checkpoint keeps optimizer state).

Everything here runs before any model loads, except the callback, which the trainer calls after each save.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys

from r1aqa.checkpoints import checkpoint_dirs, checkpoint_problem, remove_state, resume_checkpoint, state_paths

logger = logging.getLogger(__name__)

GB = 2**30
AUDIO_CHECK_CACHE = "audio_check.json"  # in output_dir: the start-up audio check, reused on resume
RUN_INFO = "r1aqa_run.json"  # what evaluation reads to prompt a checkpoint as it was trained
TRUE_WORDS = ("true", "1", "yes")


class RunRefused(SystemExit):
    """A run that must not start as asked (it would overwrite or ignore an earlier run): exit code 2, the message on
    stderr, before any model loads."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def refuse(message: str):
    """Stop with exit code 2; the message is printed once (by rank 0: every rank reaches the same decision)."""
    if is_main_process():
        print(f"error: {message}", file=sys.stderr, flush=True)
    raise RunRefused(message)


def is_main_process() -> bool:
    """Rank 0 of the launch (torchrun sets RANK; a single process is rank 0)."""
    return int(os.environ.get("RANK", "0")) == 0


# --- where the run starts ---------------------------------------------------------------------------------------------


def newest_resumable(run_dir: str) -> str | None:
    """The newest checkpoint of `run_dir` that holds optimizer, scheduler and trainer state, or None (no errors)."""
    for _step, path in reversed(checkpoint_dirs(run_dir)):
        if checkpoint_problem(path, resumable=True) is None:
            return path
    return None


def start_checkpoint(
    output_dir: str,
    resume: bool,
    resume_from_checkpoint: str | None,
    overwrite_output_dir: bool,
    save_only_model: bool,
) -> str | None:
    """The checkpoint the run continues from (None: from step 0), decided before anything loads.

    - `resume_from_checkpoint PATH`: that checkpoint, if it holds the state to resume (else refused, naming the newest
      checkpoint beside it that does); `true` means the same as `resume`.
    - `resume`: the newest resumable checkpoint of `output_dir` (r1aqa.checkpoints), or step 0 when there is none.
    - neither, and `output_dir` holds checkpoints: refused (exit code 2), unless `overwrite_output_dir`, which removes
      the old checkpoints first so the folder holds one run only.
    """
    if resume_from_checkpoint and resume_from_checkpoint.lower() in TRUE_WORDS + ("false", "0", "no"):
        resume = resume or resume_from_checkpoint.lower() in TRUE_WORDS
        resume_from_checkpoint = None
    if resume_from_checkpoint:
        if save_only_model:
            raise ValueError("`resume_from_checkpoint` needs resumable checkpoints: set `save_only_model: false`.")
        path = resume_from_checkpoint.rstrip("/")
        if not os.path.isdir(path):
            refuse(f"--resume_from_checkpoint {path}: no such folder.")
        problem = checkpoint_problem(path, resumable=True)
        if problem:
            run_dir = os.path.dirname(path) or "."
            newest = newest_resumable(run_dir)
            hint = (
                f"The newest checkpoint of {run_dir} that holds it is {newest}: --resume_from_checkpoint {newest}"
                if newest
                else f"No checkpoint of {run_dir} holds it: start a new run from its weights with "
                f"--model_name_or_path {path} and a new output_dir"
            )
            refuse(f"--resume_from_checkpoint {path} cannot be resumed from ({problem}). {hint}.")
        logger.info("Resuming from %s", path)
        return path
    if resume:
        return resume_checkpoint(output_dir, save_only_model)
    existing = checkpoint_dirs(output_dir)
    if existing:
        if not overwrite_output_dir:
            refuse(
                f"{output_dir} already holds {len(existing)} checkpoint(s) (newest {existing[-1][1]}); starting again "
                "would overwrite them. To continue that run: --resume true. To start a new one: a new OUTPUT_DIR "
                "(--output_dir), or --overwrite_output_dir true to delete those checkpoints first."
            )
        if is_main_process():
            for _step, path in existing:
                shutil.rmtree(path)
            logger.warning("overwrite_output_dir: deleted %d checkpoint(s) of %s", len(existing), output_dir)
    return None


def start_of_run(script_args, training_args) -> str | None:
    """`start_checkpoint` with an entry point's arguments (both take `RunArguments`: resume, overwrite_output_dir)."""
    return start_checkpoint(
        training_args.output_dir,
        script_args.resume,
        training_args.resume_from_checkpoint,
        script_args.overwrite_output_dir,
        training_args.save_only_model,
    )


# --- the global batch -------------------------------------------------------------------------------------------------


def reachable_world_sizes(completions_per_step: int, per_device: int) -> list[int]:
    """World sizes w for which w x per_device x accumulation = completions_per_step with an integer accumulation."""
    return [w for w in range(1, completions_per_step // per_device + 1) if completions_per_step % (w * per_device) == 0]


def derive_accumulation(
    questions_per_step: int, num_generations: int, per_device: int, world_size: int, paper_questions: int = 16
) -> int:
    """gradient_accumulation_steps that makes each optimizer step see `questions_per_step` questions x
    `num_generations` completions on `world_size` processes of `per_device` completions; refused when none does."""
    completions = questions_per_step * num_generations
    if completions % (world_size * per_device):
        sizes = reachable_world_sizes(completions, per_device)
        refuse(
            f"questions_per_step {questions_per_step} x num_generations {num_generations} = {completions} completions "
            f"per step cannot be reached on world size {world_size} with per_device_train_batch_size {per_device} "
            f"({world_size * per_device} completions per micro-step). World sizes that can: "
            f"{', '.join(map(str, sizes)) or 'none'} (NPROC_PER_NODE x NNODES; or change "
            "per_device_train_batch_size, or give --gradient_accumulation_steps to train another batch)."
        )
    return completions // (world_size * per_device)


def batch_line(
    questions_per_step: int | None,
    num_generations: int,
    per_device: int,
    world_size: int,
    accumulation: int,
    explicit: bool,
) -> str:
    """The one line a run prints about its batch."""
    completions = world_size * per_device * accumulation
    line = (
        f"Batch: {completions // num_generations} questions x {num_generations} completions per step = world size "
        f"{world_size} x per-device batch {per_device} completions x accumulation {accumulation}"
    )
    if questions_per_step is None:
        return line + " (the recipe sets no questions_per_step)"
    if explicit:
        return line + (
            f" (--gradient_accumulation_steps {accumulation} given: NOT the recipe's {questions_per_step} questions"
            " per step, not the paper's batch)"
        )
    return line + f" (the recipe's questions_per_step: {questions_per_step})"


def gave_option(argv: list[str], name: str) -> bool:
    """Whether `--name` was given on the command line (as `--name V` or `--name=V`)."""
    return any(arg == f"--{name}" or arg.startswith(f"--{name}=") for arg in argv)


# --- what evaluation reads ----------------------------------------------------------------------------------------------


def write_run_info(output_dir: str, prompt_style: str, think: bool, seed: int, system_prompt=None, **extra) -> str:
    """`r1aqa_run.json`: how the run prompts (prompt_style answer | think | plain, system prompt, think), read by
    test_mmau.sh so each checkpoint is evaluated with the prompt it was trained with. Both entry points write it."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RUN_INFO)
    info = {"prompt_style": prompt_style, "think": think, "system_prompt": system_prompt, "seed": seed, **extra}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return path


# --- disk ---------------------------------------------------------------------------------------------------------------


def checkpoint_sizes(model, deepspeed: bool, peft: bool) -> tuple[float, float]:
    """Expected bytes of one checkpoint without and with its resume state, from the parameter counts.

    Weights: every parameter at its dtype's size (a LoRA checkpoint: the trainable adapter only). State: Adam's two
    moments per trainable parameter, at the parameter's dtype with torch's optimizer, in fp32 plus an fp32 master
    copy (12 bytes) under DeepSpeed; scheduler and RNG state are a few KB."""
    weights = trainable = trainable_bytes = 0
    for parameter in model.parameters():
        count = getattr(parameter, "ds_numel", None) or parameter.numel()  # ZeRO-3 keeps only a shard locally
        if parameter.requires_grad:
            trainable += count
            trainable_bytes += count * parameter.element_size()
        if not peft or parameter.requires_grad:
            weights += count * parameter.element_size()
    state = 12 * trainable if deepspeed else 2 * trainable_bytes
    return float(weights), float(weights + state)


def human_bytes(n: float) -> str:
    """`n` bytes as GB, MB or KB (binary units), to two significant decimals."""
    for unit, size in (("GB", GB), ("MB", 2**20)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 1024:.1f} KB"


def disk_plan(weights: float, with_state: float, max_steps: int, save_steps: int, keep_all_state: bool) -> str:
    """The start-of-run lines on disk: one checkpoint with and without state, and the whole run."""
    n = max_steps // save_steps if save_steps and max_steps > 0 else 0
    total = (n * with_state if keep_all_state else (n - 1) * weights + with_state if n else 0) + weights  # + final
    kept = "every checkpoint keeps its state" if keep_all_state else "only the newest keeps its state"
    return (
        f"Disk: a checkpoint is ~{human_bytes(weights)} of weights, ~{human_bytes(with_state)} with optimizer "
        f"state; {n} checkpoint(s) ({max_steps} steps / save_steps {save_steps}, {kept}) + the final model: "
        f"~{human_bytes(total)} for the whole run."
    )


def make_state_callback(keep_all_state: bool):
    """A TrainerCallback that, after each save, removes the resume state (optimizer, scheduler, RNG, DeepSpeed's
    `global_step*`) of every other checkpoint, once the new one is complete and resumable. Weights stay, so every
    checkpoint can still be evaluated; a save killed midway leaves the previous state untouched."""
    from transformers import TrainerCallback

    class KeepNewestState(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            import torch.distributed as dist

            if keep_all_state:
                return
            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # every rank has written its share (RNG state, DeepSpeed shards) of the new one
            if not state.is_world_process_zero:
                return
            newest = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            problem = checkpoint_problem(newest, resumable=True)
            if problem:
                logger.warning("Kept the older checkpoints' state: %s is not resumable (%s).", newest, problem)
                return
            for _step, path in checkpoint_dirs(args.output_dir):
                if path != newest and state_paths(path):
                    remove_state(path)
                    logger.info("Removed the resume state of %s (weights kept; %s has it)", path, newest)

    return KeepNewestState()


# --- the run itself ------------------------------------------------------------------------------------------------------


def prepare_run(trainer, script_args, training_args, model_args):
    """What both entry points add to their trainer: the disk plan (logged), the callback that keeps the resume state
    in the newest checkpoint only, and with `smoke` the report's callback (returned; None otherwise)."""
    trainer.add_callback(make_state_callback(script_args.keep_all_checkpoint_state))
    weights, with_state = checkpoint_sizes(trainer.model, bool(training_args.deepspeed), bool(model_args.use_peft))
    if trainer.accelerator.is_main_process:
        max_steps = getattr(script_args, "recipe_max_steps", None) or training_args.max_steps
        save_steps = getattr(script_args, "recipe_save_steps", None) or training_args.save_steps
        logger.info(disk_plan(weights, with_state, max_steps, int(save_steps), script_args.keep_all_checkpoint_state))
    if not getattr(script_args, "smoke", False):
        return None
    from r1aqa.smoke import SmokeReport

    report = SmokeReport(script_args, training_args, model_args, trainer.model, weights, with_state)
    trainer.add_callback(report)
    return report


def train(trainer, checkpoint, report) -> None:
    """`trainer.train` from `checkpoint`, its weights restored (r1aqa.checkpoints.restore_weights_on_resume: the
    Trainer's own resume loads no Qwen2-Audio weight); a smoke run that runs out of memory prints what to change
    before it fails."""
    from r1aqa.checkpoints import restore_weights_on_resume

    restore_weights_on_resume(trainer)
    if report is None:
        trainer.train(resume_from_checkpoint=checkpoint)
        return
    import torch

    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except (torch.OutOfMemoryError, MemoryError) as error:
        print(report.screen(out_of_memory=error), file=sys.stderr, flush=True)
        raise
