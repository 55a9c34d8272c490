"""What the trainer tests share: real AVQA clips, training rows, a reward that varies within a group, and a factory
for an AudioGRPOTrainer on the tiny model with the paper's objective (beta 0.04, loss "grpo") at test sizes."""

from datasets import Dataset

from helpers.grpo_with_varied_reward import varied_reward
from helpers.paths import AVQA_AUDIO_DIR
from r1aqa.models import load_model, load_processor
from r1aqa.prompts import format_question, solution_text, user_turn
from r1aqa.trainer import AudioGRPOConfig, AudioGRPOTrainer

CLIPS = sorted(str(p) for p in AVQA_AUDIO_DIR.glob("*.wav"))
G = 4  # completions per prompt

__all__ = ["CLIPS", "G", "make_trainer", "rows", "varied_reward"]


def rows(paths: list[str]) -> list[dict]:
    question = format_question("What is making the sound?", ["a boat", "a dog"])
    return [{"prompt": user_turn(path, question), "solution": solution_text("a dog")} for path in paths]


def make_trainer(model_dir: str, output_dir: str, model=None, dataset=None, peft_config=None, **config):
    """Two prompts x G completions per device batch, 8 new tokens, CPU fp32; `config` overrides any field."""
    settings = dict(
        output_dir=output_dir,
        per_device_train_batch_size=2 * G,
        num_generations=G,
        max_completion_length=8,
        max_steps=2,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        beta=0.04,
        loss_type="grpo",
        save_strategy="no",
        learning_rate=1e-3,
        logging_steps=1,
        seed=0,
    )
    settings.update(config)
    return AudioGRPOTrainer(
        model=model or load_model(model_dir),  # the checkpoint's family: Qwen2-Audio or a Qwen2.5-Omni thinker
        reward_funcs=[varied_reward],
        args=AudioGRPOConfig(**settings),
        train_dataset=dataset or Dataset.from_list(rows(CLIPS)),
        processing_class=load_processor(model_dir),  # left padding
        peft_config=peft_config,
    )
