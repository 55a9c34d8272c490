"""Supervised fine-tuning on AVQA, the paper's SFT baselines: the model hears the clip, reads Prompt <1> and learns
the option text; TRL's `SFTTrainer` with an audio collator. `bash run_sft.sh` (SFT_TYPE=lora: then r1aqa.merge_lora)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from r1aqa import runs
from r1aqa.audio import audio_parts, prompts_with_audio

END_OF_TURN = "<|im_end|>"  # ChatML's end of turn, also Qwen2-Audio's eos: training on it teaches the model to stop
IGNORE_INDEX = -100  # label of a position the loss skips (PyTorch's cross-entropy convention, used by TRL)


@dataclass
class ScriptArguments(runs.RunArguments):
    format_instruction: bool = field(default=False, metadata={"help": "Prompt <2>, target <answer>option</answer>."})


def parse_args(argv: list[str] | None = None):
    from trl import ModelConfig, SFTConfig, TrlParser

    return runs.parse_recipe(TrlParser((ScriptArguments, SFTConfig, ModelConfig)), argv)


def assistant_turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def load_sft_dataset(path: str, format_instruction: bool = False, **options):
    """AVQA training rows plus a `completion`: the option text (`format_instruction`: `<answer>option</answer>`)."""
    from r1aqa.data import load_avqa_dataset

    dataset = load_avqa_dataset(path, format_instruction=format_instruction, **options)
    targets = [choices[answer] for choices, answer in zip(dataset["multi_choice"], dataset["answer"], strict=True)]
    targets = dataset["solution"] if format_instruction else targets
    return dataset.add_column("completion", [assistant_turn(target) for target in targets])


class AudioSFTCollator:
    """Rows (`prompt` with audio, `completion`) -> a batch: the prompt tokenized as at inference, then the target and
    `<|im_end|>`, right-padded, the loss on those only. A template rendering the turn otherwise is refused."""

    def __init__(self, processor):
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.end_of_turn_id = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        conversations = prompts_with_audio([row["prompt"] for row in rows])
        targets = [row["completion"][0]["content"] for row in rows]
        texts = [self.render(conversation, target) for conversation, target in zip(conversations, targets, strict=True)]
        audio = [part["audio"] for conversation in conversations for part in audio_parts(conversation)]
        rate = self.processor.feature_extractor.sampling_rate
        encoded = self.processor(text=texts, audio=audio, sampling_rate=rate, padding=True, return_tensors="pt")
        sequences, labels = [], []
        for ids, mask, target in zip(encoded["input_ids"], encoded["attention_mask"], targets, strict=True):
            prompt_ids = ids[mask.bool()].tolist()  # without the processor's padding, whichever side it is on
            target_ids = self.tokenizer(target, add_special_tokens=False)["input_ids"] + [self.end_of_turn_id]
            sequences.append(prompt_ids + target_ids)
            labels.append([IGNORE_INDEX] * len(prompt_ids) + target_ids)
        width = max(map(len, sequences))

        def pad(lists: list[list[int]], value: int) -> torch.Tensor:
            return torch.tensor([values + [value] * (width - len(values)) for values in lists])

        return {
            "input_ids": pad(sequences, self.tokenizer.pad_token_id),
            "attention_mask": pad([[1] * len(sequence) for sequence in sequences], 0),
            "labels": pad(labels, IGNORE_INDEX),
            "input_features": encoded["input_features"],
            "feature_attention_mask": encoded["feature_attention_mask"],
        }

    def render(self, conversation: list[dict], target: str) -> str:
        prompt_text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        full_text = self.processor.apply_chat_template(conversation + assistant_turn(target), tokenize=False)
        if not full_text.startswith(expected := prompt_text + target + END_OF_TURN):
            raise ValueError(f"The chat template renders the assistant turn as\n{full_text!r}\nnot\n{expected!r}")
        return prompt_text


def check_sft_config(args) -> None:
    """Reject SFTConfig settings under which TRL would drop or tokenize our rows (a conversation and a file path)."""
    prepared = (args.dataset_kwargs or {}).get("skip_prepare_dataset")
    fixes = {
        "remove_unused_columns: false  (TRL would drop the `prompt`/`completion` columns)": args.remove_unused_columns,
        "dataset_kwargs: {skip_prepare_dataset: true}  (TRL would tokenize the rows without audio)": not prepared,
        "packing: false  (audio sequences cannot be packed)": args.packing,
        "padding_free: false  (the audio collator pads)": args.padding_free,
        "assistant_only_loss: false  (the audio collator masks all but the answer)": args.assistant_only_loss,
    }
    if any(fixes.values()):
        raise ValueError("The SFT config needs:\n  " + "\n  ".join(fix for fix, bad in fixes.items() if bad))


def build_trainer(model, processor, train_dataset, args, peft_config=None):
    from trl import SFTTrainer

    collator = AudioSFTCollator(processor)  # TRL's collators know images, not audio
    return SFTTrainer(model, args, collator, train_dataset, processing_class=processor, peft_config=peft_config)


def main(script_args, training_args, model_args) -> None:
    from trl import get_peft_config

    check_sft_config(training_args)  # before any data or model loads
    checkpoint = runs.start_run(script_args, training_args)  # a run that would overwrite checkpoints stops here
    options = {"format_instruction": script_args.format_instruction}
    dataset = runs.load_dataset(script_args, training_args, load_sft_dataset, **options)
    model, processor = runs.load_model(model_args, training_args, script_args.freeze_audio_encoder)
    trainer = build_trainer(model, processor, dataset, training_args, get_peft_config(model_args))
    style = "answer" if script_args.format_instruction else "plain"
    run_info = {"prompt_style": style, "think": False, "system_prompt": None, **options}
    runs.train_and_save(trainer, processor, checkpoint, script_args, training_args, run_info)


def cli(argv: list[str] | None = None) -> None:
    runs.cli(parse_args, main, argv)


if __name__ == "__main__":
    cli()
