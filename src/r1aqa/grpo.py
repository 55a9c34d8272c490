"""GRPO post-training of Qwen2-Audio on AVQA questions, the paper's main experiment (`bash run_grpo.sh`). Every
hyperparameter is in the recipe; any field can be overridden on the command line (`--max_steps 10`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from r1aqa import runs


@dataclass
class ScriptArguments(runs.RunArguments):
    think: bool = field(default=False, metadata={"help": "Prompt <3> and the think format reward (paper: false)."})
    reward_funcs: list[str] = field(default=None, metadata={"help": "r1aqa.rewards names (default: the mode's)."})
    questions_per_step: int = field(default=None, metadata={"help": "Global batch in questions (r1aqa.runs)."})
    smoke: bool = field(default=False, metadata={"help": "A first short run, then a report (r1aqa.smoke)."})
    smoke_steps: int = field(default=20, metadata={"help": "Steps of a smoke run (a checkpoint at half)."})
    system_prompt: str = field(default="default", metadata={"help": "System turn: default, qwen, none."})

    def __post_init__(self):
        super().__post_init__()
        if self.system_prompt not in ("default", "qwen", "none"):  # a recipe value skips argparse's choices
            raise ValueError(f"system_prompt must be default, qwen or none; got {self.system_prompt!r}.")
        if self.reward_funcs is not None:
            from r1aqa.rewards import get_reward_funcs

            get_reward_funcs(self.reward_funcs)  # rejects unknown names now, before any model loads


def parse_args(argv: list[str] | None = None):
    from trl import ModelConfig, TrlParser

    from r1aqa.smoke import apply_smoke
    from r1aqa.trainer import AudioGRPOConfig

    args = runs.parse_recipe(TrlParser((ScriptArguments, AudioGRPOConfig, ModelConfig)), argv)
    if args[0].smoke:
        apply_smoke(*args[:2])
    return args


def main(script_args, training_args, model_args, trainer_class=None) -> None:
    """One GRPO run; `trainer_class` defaults to r1aqa.trainer.AudioGRPOTrainer (the try-out's control: TRL's)."""
    from trl import get_peft_config

    from r1aqa.rewards import default_reward_names, get_reward_funcs
    from r1aqa.trainer import AudioGRPOTrainer

    checkpoint = runs.start_run(script_args, training_args)  # a run that would overwrite checkpoints stops here
    dataset = runs.load_dataset(script_args, training_args, think=script_args.think)
    args = (script_args.freeze_audio_encoder, script_args.system_prompt)
    model, processor = runs.load_model(model_args, training_args, *args)
    reward_names = script_args.reward_funcs or default_reward_names(script_args.think)
    options = {"train_dataset": dataset, "processing_class": processor, "peft_config": get_peft_config(model_args)}
    trainer = (trainer_class or AudioGRPOTrainer)(model, get_reward_funcs(reward_names), training_args, **options)
    run_info = {"prompt_style": "think" if script_args.think else "answer", "think": script_args.think}
    run_info |= {"system_prompt": script_args.system_prompt, "reward_funcs": reward_names}
    runs.train_and_save(trainer, processor, checkpoint, script_args, training_args, run_info)


def cli(argv: list[str] | None = None) -> None:
    runs.cli(parse_args, main, argv)


if __name__ == "__main__":
    cli()
