"""The start and end of a training run, shared by r1aqa.grpo and r1aqa.sft: arguments, checks before any model loads,
the global batch, where the run continues from (never silently over an earlier run), checkpoint state, run info."""

from __future__ import annotations

import json
import logging
import netrc
import os
import re
import shutil
import sys
from dataclasses import dataclass, field

from transformers import TrainerCallback

from r1aqa import checkpoints
from r1aqa.smoke import smoke_screen

logger = logging.getLogger(__name__)

AUDIO_CHECK_CACHE = "audio_check.json"  # in output_dir: the start-up audio check, reused on resume
RUN_INFO = "r1aqa_run.json"  # how evaluation prompts this run's checkpoints


@dataclass
class RunArguments:
    data_file: str = field(default=None, metadata={"help": "AVQA training JSONL written by r1aqa.prepare_avqa."})
    check_audio_files: bool = field(default=True, metadata={"help": "Check every audio file; drop unusable rows."})
    max_train_samples: int = field(default=None, metadata={"help": "Use only the first N questions (debugging)."})
    freeze_audio_encoder: bool = field(default=False, metadata={"help": "Do not train the audio encoder."})
    resume: bool = field(default=False, metadata={"help": "Continue from the newest resumable checkpoint, if any."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Delete output_dir's checkpoints first."})
    keep_all_checkpoint_state: bool = field(default=False, metadata={"help": "Resume state in every checkpoint."})

    def __post_init__(self):
        if not self.data_file or not os.path.isfile(self.data_file):
            raise ValueError(f"data_file {self.data_file!r} does not exist: make it as data/README.md says.")


def refuse(message: str):
    """Stop with exit code 2; rank 0 says why (every rank reaches the same decision)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def cli(parse_args, main, argv: list[str] | None = None) -> None:
    """DeepSpeed on CPU, parse, check, `main`, close the process group (else gloo may abort a finished run: exit -6)."""
    import torch.distributed as dist

    from r1aqa.deepspeed_cpu import enable_cpu_deepspeed

    enable_cpu_deepspeed()
    script_args, training_args, model_args = parse_args(sys.argv[1:] if argv is None else argv)
    check_model_args(model_args)
    check_wandb(training_args)
    main(script_args, training_args, model_args)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_model_args(model_args) -> None:
    """A model folder with a config.json or a hub id; LoRA with its target layers (else PEFT fails deep in start-up)."""
    path = model_args.model_name_or_path
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(f"Model folder {path!r} has no config.json: point --model_name_or_path at a saved model.")
    if not os.path.isdir(path) and not re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", path):
        raise SystemExit(f"Model {path!r} is neither a local folder nor a hub id like 'Qwen/Qwen2-Audio-7B-Instruct'.")
    if model_args.use_peft and not (model_args.lora_target_modules or model_args.lora_target_parameters):
        raise SystemExit("use_peft: true needs lora_target_modules (as in configs/sft_qwen2_audio_7b_lora.yaml).")


def check_wandb(training_args) -> None:
    """W&B logs online with a key (WANDB_API_KEY or `wandb login`), offline without; it never stops a run."""
    if "wandb" not in (training_args.report_to or []) or os.environ.get("WANDB_MODE"):
        return
    try:
        has_key = bool(os.environ.get("WANDB_API_KEY")) or netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        has_key = False
    if not has_key:
        os.environ["WANDB_MODE"] = "offline"
        logger.warning("No W&B key found: logging offline to ./wandb (`wandb sync` uploads it; report_to=none: off).")


def derive_accumulation(questions_per_step: int, num_generations: int, per_device: int, world_size: int) -> int:
    """gradient_accumulation_steps reaching `questions_per_step` x `num_generations` completions; else refused."""
    completions = questions_per_step * num_generations
    if completions % (world_size * per_device):
        sizes = [str(w) for w in range(1, completions // per_device + 1) if completions % (w * per_device) == 0]
        refuse(
            f"{completions} completions per step (questions_per_step x num_generations) cannot be split over world "
            f"size {world_size} x per_device_train_batch_size {per_device}. World sizes that can: "
            f"{', '.join(sizes) or 'none'} (or --gradient_accumulation_steps N trains another batch)."
        )
    return completions // (world_size * per_device)


def batch_line(questions, generations: int, per_device: int, world: int, accumulation: int, explicit: bool) -> str:
    note = f"the recipe's questions_per_step: {questions}" if questions else "the recipe sets no questions_per_step"
    if questions and explicit:
        note = f"--gradient_accumulation_steps {accumulation} given: NOT the recipe's {questions} questions"
    return (
        f"Batch: {world * per_device * accumulation // generations} questions x {generations} completions per step "
        f"= world size {world} x per-device batch {per_device} completions x accumulation {accumulation} ({note})"
    )


def parse_recipe(parser, argv: list[str] | None = None):
    """Recipe + command line; with `questions_per_step` gradient_accumulation_steps is derived unless given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    if not hasattr(training_args, "num_generations"):  # SFT: the batch is the recipe's
        return script_args, training_args, model_args
    questions, explicit = script_args.questions_per_step, any("--gradient_accumulation_steps" in a for a in argv)
    batch = [training_args.num_generations, training_args.per_device_train_batch_size, training_args.world_size]
    if questions is not None and not explicit:
        accumulation = derive_accumulation(questions, *batch)
        if accumulation != training_args.gradient_accumulation_steps:  # parsed again: TRL derives batch sizes from it
            argv += ["--gradient_accumulation_steps", str(accumulation)]
            script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    script_args.batch_line = batch_line(questions, *batch, training_args.gradient_accumulation_steps, explicit)
    return script_args, training_args, model_args


def start_checkpoint(output_dir: str, resume: bool, resume_from: str | None, overwrite: bool, save_only_model: bool):
    """The checkpoint to continue from (None: step 0): `resume_from` if resumable, with `resume` the newest resumable
    one; else an `output_dir` holding checkpoints is refused unless `overwrite`, which deletes them first."""
    if resume_from and resume_from.lower() in ("true", "1", "yes", "false", "0", "no"):
        resume, resume_from = resume or resume_from.lower() in ("true", "1", "yes"), None
    if (resume or resume_from) and save_only_model:
        raise ValueError("`resume: true` needs resumable checkpoints: set `save_only_model: false`.")
    if resume_from:
        path = resume_from.rstrip("/")
        problem = checkpoints.checkpoint_problem(path, resumable=True) if os.path.isdir(path) else "no such folder"
        if problem:
            refuse(f"--resume_from_checkpoint {path}: cannot resume ({problem}); --resume true takes the newest.")
    elif resume:
        path = checkpoints.last_resumable_checkpoint(output_dir)
    else:
        existing = checkpoints.checkpoint_dirs(output_dir)
        if existing and not overwrite:
            refuse(
                f"{output_dir} already holds {len(existing)} checkpoint(s) (newest {existing[-1][1]}). To continue "
                "that run: --resume true; a new run: a new OUTPUT_DIR (--output_dir) or --overwrite_output_dir true."
            )
        if existing and int(os.environ.get("RANK", "0")) == 0:
            for _step, old in existing:
                shutil.rmtree(old)
            logger.warning("overwrite_output_dir: deleted %d checkpoint(s) of %s", len(existing), output_dir)
        return None
    logger.info("Resuming from %s", path or "scratch (no complete checkpoint yet)")
    return path


def start_run(script_args, training_args) -> str | None:
    import datasets
    import transformers

    transformers.set_seed(training_args.seed)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("r1aqa").setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    datasets.utils.logging.set_verbosity(training_args.get_process_log_level())
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    if hasattr(script_args, "batch_line"):
        logger.info(script_args.batch_line)
    args = (script_args.resume, training_args.resume_from_checkpoint, script_args.overwrite_output_dir)
    return start_checkpoint(training_args.output_dir, *args, training_args.save_only_model)


def load_dataset(script_args, training_args, loader=None, **options):
    """The training rows (`loader`, default r1aqa.data.load_avqa_dataset: unusable rows dropped)."""
    from r1aqa.data import load_avqa_dataset

    options |= {"check_audio_files": script_args.check_audio_files}
    cache = os.path.join(training_args.output_dir, AUDIO_CHECK_CACHE)
    dataset = (loader or load_avqa_dataset)(script_args.data_file, audio_cache=cache, **options)
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    logger.info("Training on %d questions from %s (%s)", len(dataset), script_args.data_file, options)
    return dataset


def load_model(model_args, training_args, freeze_audio_encoder: bool, system_prompt: str = "default"):
    """The model of the checkpoint's family (r1aqa.models) and its processor."""
    import torch

    from r1aqa import models

    path, revision, dtype = model_args.model_name_or_path, model_args.model_revision, model_args.dtype
    dtype = dtype if dtype in (None, "auto") else getattr(torch, dtype)
    remote = training_args.trust_remote_code
    options = {"revision": revision, "attn_implementation": model_args.attn_implementation, "trust_remote_code": remote}
    model = models.load_model(path, dtype=dtype, **options)
    if freeze_audio_encoder:
        model.model.audio_tower.requires_grad_(False)
    return model, models.load_processor(path, revision=revision, system_prompt=system_prompt)


class KeepNewestState(TrainerCallback):
    """After each save, once the new checkpoint is resumable, remove the other ones' resume state (weights stay)."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its share (RNG state, DeepSpeed shards)
        if not state.is_world_process_zero:
            return
        newest = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if problem := checkpoints.checkpoint_problem(newest, resumable=True):
            logger.warning("Kept the older checkpoints' state: %s is not resumable (%s).", newest, problem)
            return
        for _step, path in checkpoints.checkpoint_dirs(args.output_dir):
            if path != newest and checkpoints.state_paths(path):
                checkpoints.remove_state(path)
                logger.info("Removed the resume state of %s (weights kept; %s has it)", path, newest)


def train_and_save(trainer, processor, checkpoint, script_args, training_args, run_info: dict) -> None:
    """`r1aqa_run.json`, the checkpoint's weights restored, `trainer.train`, the final save; with `smoke` the report."""
    import torch

    from r1aqa.models import load_model

    main = trainer.accelerator.is_main_process
    if not script_args.keep_all_checkpoint_state:
        trainer.add_callback(KeepNewestState())
    if main:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, RUN_INFO), "w", encoding="utf-8") as f:
            json.dump({**run_info, "seed": training_args.seed}, f, indent=1)
    smoke = getattr(script_args, "smoke", False)
    full = checkpoint and {"model.safetensors", checkpoints.SAFETENSORS_INDEX} & set(os.listdir(checkpoint))
    if full and not trainer.is_deepspeed_enabled and not trainer.is_fsdp_enabled:  # adapters: as the Trainer loads
        # Strictly: the Trainer's own resume (`strict=False`) missed Qwen2-Audio's legacy names (`audio_tower.*`).
        dtype = next(trainer.model.parameters()).dtype
        trainer.model.load_state_dict(load_model(checkpoint, dtype=dtype).state_dict(), strict=True)
        logger.info("Restored the weights of %s", checkpoint)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except (torch.OutOfMemoryError, MemoryError) as error:
        if smoke and main:
            print(smoke_screen(trainer, script_args, error), file=sys.stderr, flush=True)
        raise
    trainer.save_model(training_args.output_dir)  # with LoRA: the adapter only (r1aqa.merge_lora merges it)
    if main:
        processor.save_pretrained(training_args.output_dir)
        logger.info("Saved the final model to %s", training_args.output_dir)
        if smoke:
            print(smoke_screen(trainer, script_args), flush=True)
