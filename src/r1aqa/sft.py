"""Supervised fine-tuning of Qwen2-Audio on AVQA questions: the paper's SFT baselines (full and LoRA).

The paper compares GRPO with SFT on the same ~38k AVQA questions (docs/recipe.md §1: full 51.80, LoRA 56.40 on MMAU test-mini).
Its SFT code and hyperparameters were never published (docs/recipe.md §10); the recipes in configs/sft_*.yaml are ours. The model
hears the audio and reads Prompt <1> (question and options, no output-format instruction) and learns to answer with
the gold option text; the loss covers the answer tokens and the `<|im_end|>` that ends the turn, nothing else.

    # one 8-GPU node (run_sft.sh wraps this)
    torchrun --nproc_per_node 8 -m r1aqa.sft --config configs/sft_qwen2_audio_7b_full.yaml \
        --deepspeed configs/ds_zero3.json --data_file data/avqa/train.jsonl
    torchrun --nproc_per_node 8 -m r1aqa.sft --config configs/sft_qwen2_audio_7b_lora.yaml \
        --data_file data/avqa/train.jsonl
    python -m r1aqa.merge_lora --adapter outputs/sft-qwen2-audio-7b-lora --out outputs/sft-qwen2-audio-7b-lora-merged
    # the smallest CPU run: a tiny random model, a few steps (bash run_sft.sh on a machine without a GPU)
    python -m r1aqa.sft --config configs/sft_qwen2_audio_7b_full.yaml --model_name_or_path outputs/tiny-qwen2-audio \
        --data_file outputs/sft-smoke/train.jsonl --dtype float32 --bf16 false --use_cpu true --max_steps 4

Every hyperparameter lives in the recipe YAML; any field can be overridden on the command line (`--num_train_epochs 1`).
TRL's `SFTTrainer` is used as is; only the batches are ours (`AudioSFTCollator`): TRL's own collators know images,
not audio.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from r1aqa.grpo import RunArguments
from r1aqa.preflight import run_entry_point

logger = logging.getLogger("r1aqa.sft")

# Qwen2-Audio's chat template (ChatML) closes every turn with this token; it is also the model's eos (docs/recipe.md §9), so
# training on it is what teaches the model to stop after the answer.
END_OF_TURN = "<|im_end|>"
IGNORE_INDEX = -100  # label of a position the loss skips (PyTorch's cross-entropy convention, used by TRL)
# Columns the collator reads: the conversational prompt-completion format of TRL.
PROMPT_COLUMN, COMPLETION_COLUMN = "prompt", "completion"


@dataclass
class ScriptArguments(RunArguments):
    """The data and what is trained (shared with GRPO), and the SFT prompt. Optimisation settings live in SFTConfig,
    LoRA settings in ModelConfig. `freeze_audio_encoder` applies to full fine-tuning; LoRA leaves it frozen anyway."""

    format_instruction: bool = field(
        default=False,
        metadata={
            "help": "False (the paper's SFT baselines): Prompt <1>, question and options only, and the bare option "
            "text as the target. True: Prompt <2> (with the <answer> instruction) and `<answer>option</answer>` as the "
            "target."
        },
    )


def parse_args(argv: list[str] | None = None):
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
    return parser.parse_args_and_config(args=argv)


# --- data ------------------------------------------------------------------------------------------------------------


def assistant_turn(text: str) -> list[dict]:
    """The completion of one row: one assistant message whose content is the target text."""
    return [{"role": "assistant", "content": text}]


def load_sft_dataset(
    path: str, format_instruction: bool = False, check_audio_files: bool = True, audio_cache: str | None = None
):
    """AVQA training rows (`r1aqa.data.load_avqa_dataset`, same checks and drops) plus a `completion` column.

    With `format_instruction=False` the prompt is Prompt <1> and the target is the gold option text
    `multi_choice[answer]`; with True, Prompt <2> and the gold `solution` (`<answer>option</answer>`).
    """
    from r1aqa.data import load_avqa_dataset

    dataset = load_avqa_dataset(
        path,
        think=False,
        check_audio_files=check_audio_files,
        format_instruction=format_instruction,
        audio_cache=audio_cache,
    )
    if format_instruction:
        targets = dataset["solution"]
    else:
        targets = [choices[answer] for choices, answer in zip(dataset["multi_choice"], dataset["answer"], strict=True)]
    return dataset.add_column(COMPLETION_COLUMN, [assistant_turn(target) for target in targets])


class AudioSFTCollator:
    """Rows with a conversational `prompt` (audio part + text) and `completion` -> a Qwen2-Audio training batch.

    Each sequence is the prompt exactly as generation sees it (chat template with the generation prompt, `<|AUDIO|>`
    expanded by the processor to one token per ~40 ms of audio), then the target's tokens, then `<|im_end|>`.
    Prompt and target are tokenized separately, as at inference, where the prompt is tokenized alone and the model
    continues it. `labels` is -100 on the prompt (system turn, audio placeholders, question) and on padding, and the
    token id on the target and `<|im_end|>`. Sequences are right-padded. `input_features` / `feature_attention_mask`
    come from the processor (first channel, 16 kHz, padded to the feature extractor's window).

    Every row is checked against the chat template: its text must equal the template's own rendering of the prompt
    and the assistant turn, up to `<|im_end|>`, so a template that renders the assistant turn differently fails
    loudly instead of training on a format inference never shows.
    """

    def __init__(self, processor, end_of_turn: str = END_OF_TURN):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.end_of_turn = end_of_turn
        self.end_of_turn_id = self.tokenizer.convert_tokens_to_ids(end_of_turn)
        if self.end_of_turn_id is None or self.end_of_turn_id == self.tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {end_of_turn!r} token: is this a Qwen2-Audio processor?")
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set one (Qwen2-Audio uses <|endoftext|>).")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        from r1aqa.audio import prompts_with_audio

        conversations = prompts_with_audio([row[PROMPT_COLUMN] for row in rows])
        targets = [self._target(row) for row in rows]
        prompt_texts = [
            self._render(conversation, target) for conversation, target in zip(conversations, targets, strict=True)
        ]
        audio = [part["audio"] for conversation in conversations for part in _audio_parts(conversation)]
        if len(audio) != len(rows):
            raise ValueError(f"{len(audio)} audio parts in {len(rows)} prompts: every prompt needs exactly one.")
        encoded = self.processor(
            text=prompt_texts,
            audio=audio,
            sampling_rate=self.processor.feature_extractor.sampling_rate,
            padding=True,
            return_tensors="pt",
        )
        sequences, label_rows = [], []
        for row_ids, row_mask, target in zip(encoded["input_ids"], encoded["attention_mask"], targets, strict=True):
            prompt_ids = row_ids[row_mask.bool()].tolist()  # drop the processor's padding, whichever side it is on
            target_ids = self.tokenizer(target, add_special_tokens=False)["input_ids"] + [self.end_of_turn_id]
            sequences.append(prompt_ids + target_ids)
            label_rows.append([IGNORE_INDEX] * len(prompt_ids) + target_ids)
        width = max(map(len, sequences))
        pad = self.tokenizer.pad_token_id
        return {
            "input_ids": torch.tensor([seq + [pad] * (width - len(seq)) for seq in sequences]),
            "attention_mask": torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in sequences]),
            "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for lab in label_rows]),
            "input_features": encoded["input_features"],
            "feature_attention_mask": encoded["feature_attention_mask"],
        }

    @staticmethod
    def _target(row: dict) -> str:
        completion = row[COMPLETION_COLUMN]
        if not (isinstance(completion, list) and len(completion) == 1 and completion[0].get("role") == "assistant"):
            raise ValueError(f"`completion` must be one assistant message, got {completion!r}.")
        content = completion[0]["content"]
        if not isinstance(content, str):
            raise ValueError(f"The assistant message's content must be a string, got {content!r}.")
        return content

    def _render(self, conversation: list[dict], target: str) -> str:
        """The prompt text with the generation prompt, after checking the template's assistant turn."""
        template = self.processor.apply_chat_template
        prompt_text = template(conversation, add_generation_prompt=True, tokenize=False)
        full_text = template(conversation + assistant_turn(target), tokenize=False)
        expected = prompt_text + target + self.end_of_turn
        if not full_text.startswith(expected):
            raise ValueError(
                "The chat template renders the assistant turn differently from `prompt + target + "
                f"{self.end_of_turn}`:\n{full_text!r}\nexpected it to start with\n{expected!r}"
            )
        return prompt_text


def _audio_parts(conversation: list[dict]) -> list[dict]:
    return [
        part
        for message in conversation
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") == "audio"
    ]


# --- trainer ---------------------------------------------------------------------------------------------------------


def check_sft_config(args) -> None:
    """Reject SFTConfig settings that would make TRL drop or re-tokenize our columns, with the fix in the message.

    Our rows hold a conversation and a file path, not tokens. TRL's SFTTrainer would (1) remove every column but
    `input_ids`/`labels`/`seq_lengths` before the collator sees them unless `remove_unused_columns=False`, and
    (2) tokenize the conversations itself, without the audio, unless `dataset_kwargs.skip_prepare_dataset=True`.
    Packing and padding-free batching need TRL's collator and pre-tokenized data.
    """
    problems = []
    if args.remove_unused_columns:
        problems.append("remove_unused_columns: false  (TRL would drop the `prompt`/`completion` columns)")
    if not (args.dataset_kwargs or {}).get("skip_prepare_dataset", False):
        problems.append("dataset_kwargs: {skip_prepare_dataset: true}  (TRL would tokenize the rows without audio)")
    if args.packing:
        problems.append("packing: false  (audio sequences cannot be packed)")
    if args.padding_free:
        problems.append("padding_free: false  (the audio collator pads)")
    if args.assistant_only_loss:
        problems.append("assistant_only_loss: false  (the audio collator already masks everything but the answer)")
    if problems:
        raise ValueError("The SFT config needs:\n  " + "\n  ".join(problems))


def build_trainer(model, processor, train_dataset, args, peft_config=None):
    """TRL's `SFTTrainer` with the audio collator; the loss, optimiser, logging and checkpoints are TRL's."""
    from trl import SFTTrainer

    check_sft_config(args)
    return SFTTrainer(
        model=model,
        args=args,
        data_collator=AudioSFTCollator(processor),
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
    )


def main(script_args, training_args, model_args) -> None:
    import datasets
    import transformers
    from transformers import set_seed
    from trl import get_peft_config

    from r1aqa.grpo import load_model
    from r1aqa.runs import AUDIO_CHECK_CACHE, prepare_run, start_of_run, train, write_run_info

    # --- seed, logging ---------------------------------------------------------------------------------------------
    set_seed(training_args.seed)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    log_level = training_args.get_process_log_level()  # libraries: warnings unless `log_level` says otherwise
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.setLevel(logging.INFO if training_args.should_log else log_level)  # our progress notes: main process
    check_sft_config(training_args)  # before any data or model loads

    # Which checkpoint to continue from, decided before anything loads (a weights-only run, or one that would
    # overwrite an earlier run's checkpoints, stops here).
    checkpoint = start_of_run(script_args, training_args)

    # --- data ------------------------------------------------------------------------------------------------------
    dataset = load_sft_dataset(
        script_args.data_file,
        format_instruction=script_args.format_instruction,
        check_audio_files=script_args.check_audio_files,
        audio_cache=os.path.join(training_args.output_dir, AUDIO_CHECK_CACHE),
    )
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    logger.info(
        "Training on %d questions from %s (Prompt <%d>)",
        len(dataset),
        script_args.data_file,
        2 if script_args.format_instruction else 1,
    )

    # --- model -----------------------------------------------------------------------------------------------------
    model, processor = load_model(model_args, training_args, script_args.freeze_audio_encoder)
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        logger.info("LoRA r=%d alpha=%d on %s", peft_config.r, peft_config.lora_alpha, peft_config.target_modules)

    # --- trainer ---------------------------------------------------------------------------------------------------
    trainer = build_trainer(model, processor, dataset, training_args, peft_config)
    if trainer.accelerator.is_main_process:
        n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        logger.info("Trainable parameters: %s", f"{n_trainable:,}")
    prepare_run(trainer, script_args, training_args, model_args)  # disk plan; only the newest checkpoint keeps state
    if trainer.accelerator.is_main_process:  # how evaluation must prompt this run's checkpoints (test_mmau.sh)
        write_run_info(
            training_args.output_dir,
            prompt_style="answer" if script_args.format_instruction else "plain",
            think=False,
            seed=training_args.seed,
            format_instruction=script_args.format_instruction,
        )

    # --- train -----------------------------------------------------------------------------------------------------
    train(trainer, checkpoint, report=None)

    # --- save ------------------------------------------------------------------------------------------------------
    trainer.save_model(training_args.output_dir)  # with LoRA: the adapter only (merge it with r1aqa.merge_lora)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
    logger.info("Saved the final %s to %s", "adapter" if peft_config else "model", training_args.output_dir)


def cli(argv: list[str] | None = None) -> None:
    run_entry_point(parse_args, main, argv)


if __name__ == "__main__":
    cli()
