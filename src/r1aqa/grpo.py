"""GRPO post-training of Qwen2-Audio on AVQA questions: the paper's main experiment.

    # the paper's recipe on one 8-GPU node (run_grpo.sh wraps this)
    torchrun --nproc_per_node 8 -m r1aqa.grpo --config configs/grpo_qwen2_audio_7b.yaml \
        --deepspeed configs/ds_zero3.json --data_file data/avqa/train.jsonl
    # the smallest CPU run: a tiny model and a toy task
    python -m r1aqa.grpo --config configs/grpo_tiny_cpu.yaml

Every hyperparameter lives in the recipe YAML; any field can be overridden on the command line (`--max_steps 10`).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from r1aqa.preflight import run_entry_point

logger = logging.getLogger("r1aqa.grpo")


@dataclass
class RunArguments:
    """What every training entry point (GRPO, SFT) takes besides the trainer's own config: data and what is trained."""

    data_file: str = field(default=None, metadata={"help": "AVQA training JSONL written by r1aqa.prepare_avqa."})
    check_audio_files: bool = field(
        default=True, metadata={"help": "Check every audio file before training and drop unusable rows (counted)."}
    )
    max_train_samples: int = field(default=None, metadata={"help": "Use only the first N questions (debugging)."})
    freeze_audio_encoder: bool = field(
        default=False, metadata={"help": "Do not train the audio encoder (not in the paper: it trained everything)."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue from the last complete checkpoint in output_dir, if any."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start again in an output_dir that holds checkpoints, deleting them first. Without it (and "
            "without --resume true) such a run stops before loading anything."
        },
    )
    keep_all_checkpoint_state: bool = field(
        default=False,
        metadata={
            "help": "Keep optimizer, scheduler and RNG state in every checkpoint. False: only the newest complete "
            "checkpoint keeps it (enough to resume); the others keep their weights (enough to evaluate)."
        },
    )

    def __post_init__(self):
        if not self.data_file:
            raise ValueError("Set `data_file` (the AVQA JSONL from `python -m r1aqa.prepare_avqa`).")
        if not os.path.isfile(self.data_file):
            raise ValueError(
                f"data_file {self.data_file!r} does not exist. Make it with `python -m r1aqa.prepare_avqa` "
                "(see data/README.md) or pass --data_file PATH."
            )


@dataclass
class ScriptArguments(RunArguments):
    """What the paper's script hard-coded: the data, the prompt mode and the rewards."""

    think: bool = field(
        default=False,
        metadata={
            "help": "Think mode: Prompt <3> (<think> then <answer>) and the think format reward. False is the "
            "paper's main result (Prompt <2>, answer only)."
        },
    )
    reward_funcs: list[str] = field(
        default=None,
        metadata={"help": "Reward names from r1aqa.rewards. Default: accuracy + the format reward of the mode."},
    )
    questions_per_step: int = field(
        default=None,
        metadata={
            "help": "The global batch in questions per optimizer step (each with num_generations completions): "
            "gradient_accumulation_steps is derived from it, the world size and per_device_train_batch_size. An "
            "explicit --gradient_accumulation_steps wins. None: use gradient_accumulation_steps as given."
        },
    )
    smoke: bool = field(
        default=False,
        metadata={
            "help": "A first short run: smoke_steps steps, a checkpoint halfway, no W&B; ends with a report (time "
            "per step, peak memory, projected hours for max_steps, disk per checkpoint)."
        },
    )
    smoke_steps: int = field(default=20, metadata={"help": "Steps of a smoke run (a checkpoint at half of them)."})
    system_prompt: str = field(
        default="default",
        metadata={
            "help": "The system turn of every prompt: default (the chat template's own, `You are a helpful "
            "assistant.`: the paper's, and Ke-Omni-R's on Qwen2.5-Omni), qwen (the Qwen2.5-Omni model card's `You are "
            "Qwen, a virtual human...`), none (no system turn). Recorded in r1aqa_run.json for evaluation.",
            "choices": ["default", "qwen", "none"],
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.system_prompt not in ("default", "qwen", "none"):  # a recipe value skips argparse's choices
            raise ValueError(f"system_prompt must be default, qwen or none; got {self.system_prompt!r}.")
        if self.reward_funcs is not None:
            from r1aqa.rewards import get_reward_funcs

            get_reward_funcs(self.reward_funcs)  # rejects unknown names now, before any model loads


def parse_args(argv: list[str] | None = None):
    """Recipe + command line. With `questions_per_step`, gradient_accumulation_steps is derived from the world size
    (refused when no integer reaches the batch); a smoke run then gets its short schedule."""
    from trl import ModelConfig, TrlParser

    from r1aqa.runs import batch_line, derive_accumulation, gave_option
    from r1aqa.trainer import AudioGRPOConfig  # GRPOConfig + share_audio_encoding

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = TrlParser((ScriptArguments, AudioGRPOConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    explicit = gave_option(argv, "gradient_accumulation_steps")
    if script_args.questions_per_step is not None and not explicit:
        accumulation = derive_accumulation(
            script_args.questions_per_step,
            training_args.num_generations,
            training_args.per_device_train_batch_size,
            training_args.world_size,
        )
        if accumulation != training_args.gradient_accumulation_steps:  # parsed again: TRL derives batch sizes from it
            argv += ["--gradient_accumulation_steps", str(accumulation)]
            script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    script_args.batch_line = batch_line(
        script_args.questions_per_step,
        training_args.num_generations,
        training_args.per_device_train_batch_size,
        training_args.world_size,
        training_args.gradient_accumulation_steps,
        explicit,
    )
    if script_args.smoke:
        from r1aqa.smoke import apply_smoke

        apply_smoke(script_args, training_args)
    return script_args, training_args, model_args


def load_model(model_args, training_args, freeze_audio_encoder: bool, system_prompt: str = "default"):
    """The model of the checkpoint's family (Qwen2-Audio, or a Qwen2.5-Omni thinker with its vision tower frozen:
    r1aqa.models) and its processor (left padding, `system_prompt` set)."""
    import torch

    from r1aqa.models import detect_family, load_processor
    from r1aqa.models import load_model as load_family_model

    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    family = detect_family(model_args.model_name_or_path, model_args.model_revision)
    logger.info("Model family: %s", family.name)
    model = load_family_model(
        model_args.model_name_or_path,
        family,
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=training_args.trust_remote_code,
    )
    processor = load_processor(model_args.model_name_or_path, family, model_args.model_revision, system_prompt)
    if freeze_audio_encoder:
        model.model.audio_tower.requires_grad_(False)
    return model, processor


def main(script_args, training_args, model_args) -> None:
    import datasets
    import transformers
    from transformers import set_seed
    from trl import get_peft_config

    from r1aqa.data import load_avqa_dataset
    from r1aqa.rewards import default_reward_names, get_reward_funcs
    from r1aqa.runs import AUDIO_CHECK_CACHE, prepare_run, start_of_run, train, write_run_info
    from r1aqa.trainer import AudioGRPOTrainer

    # --- seed, logging ---------------------------------------------------------------------------------------------
    set_seed(training_args.seed)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("r1aqa").setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    datasets.utils.logging.set_verbosity(training_args.get_process_log_level())
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())

    # Which checkpoint to continue from, decided before anything loads (a weights-only run, or one that would
    # overwrite an earlier run's checkpoints, stops here).
    checkpoint = start_of_run(script_args, training_args)
    logger.info(script_args.batch_line)

    # --- data ------------------------------------------------------------------------------------------------------
    dataset = load_avqa_dataset(
        script_args.data_file,
        think=script_args.think,
        check_audio_files=script_args.check_audio_files,
        audio_cache=os.path.join(training_args.output_dir, AUDIO_CHECK_CACHE),
    )
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    logger.info("Training on %d questions from %s (think=%s)", len(dataset), script_args.data_file, script_args.think)

    # --- model -----------------------------------------------------------------------------------------------------
    model, processor = load_model(
        model_args, training_args, script_args.freeze_audio_encoder, script_args.system_prompt
    )

    # --- rewards ---------------------------------------------------------------------------------------------------
    reward_names = script_args.reward_funcs or default_reward_names(script_args.think)
    reward_funcs = get_reward_funcs(reward_names)
    logger.info("Rewards: %s", ", ".join(reward_names))

    # --- trainer ---------------------------------------------------------------------------------------------------
    trainer = AudioGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
    )

    report = prepare_run(trainer, script_args, training_args, model_args)

    # The run's mode, read by test_mmau.sh so evaluation uses the prompt (and system turn) the model was trained with.
    if trainer.accelerator.is_main_process:
        write_run_info(
            training_args.output_dir,
            prompt_style="think" if script_args.think else "answer",
            think=script_args.think,
            seed=training_args.seed,
            system_prompt=script_args.system_prompt,
            reward_funcs=reward_names,
        )

    # --- train -----------------------------------------------------------------------------------------------------
    train(trainer, checkpoint, report)

    # --- save ------------------------------------------------------------------------------------------------------
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
    logger.info("Saved the final model to %s", training_args.output_dir)
    if report is not None and trainer.accelerator.is_main_process:
        print(report.screen(), flush=True)


def cli(argv: list[str] | None = None) -> None:
    run_entry_point(parse_args, main, argv)


if __name__ == "__main__":
    cli()
