"""Checks of the log-prob passes *inside* a real `trainer.train()`, recomputed independently of the trainer.

`LogpChecker` wraps the trainer's `_get_per_token_logps_and_entropies` (the one function behind the old-policy,
reference and policy-loss passes). At every call it finds each row's question from the row's own prompt token ids
(every training row has its own question text, so the tokens say which clip the row was asked about), runs a plain
`model(input_ids, attention_mask, input_features, feature_attention_mask)` with the features of *that row's* clip,
computed here by the processor from the WAV, and compares the completion tokens' log-probs with the trainer's. It also
runs the same forward with another clip per row and without audio (both must differ: otherwise the comparison could
not fail), and, on request, the trainer's own pass with `share_audio_encoding` flipped (shared vs per-completion
encoding). Rows misaligned with their audio anywhere (tokenisation, the batch dict, TRL's shuffle and split, the
per-chunk slicing, the shared-encoding hooks) give a large `own` difference.

Used in-process by tests/test_training_step_row_alignment.py and under torchrun by tests/helpers/two_process_logps.py.
"""

from __future__ import annotations

import torch
from datasets import Dataset

from r1aqa.audio import load_audio
from r1aqa.prompts import format_question, solution_text, user_turn

QUESTIONS = ("What is making the sound?", "Which thing is heard here?")


def question_rows(clips: list[str]) -> list[dict]:
    """Two questions per clip, each row's text unique (so its prompt tokens identify its clip)."""
    return [
        {
            "prompt": user_turn(clip, format_question(f"{question} ({i})", ["a boat", "a dog"])),
            "solution": solution_text("a dog"),
        }
        for question in QUESTIONS
        for i, clip in enumerate(clips)
    ]


def question_dataset(clips: list[str]) -> Dataset:
    return Dataset.from_list(question_rows(clips))


def _plain_module(model):
    """The model a plain forward runs on: DDP's and DeepSpeed's engine wrap it as `.module` (ZeRO-3's parameter
    hooks live on the module itself, so its forward still gathers the sharded weights)."""
    return getattr(model, "module", model)


class LogpChecker:
    """Records, for every log-prob pass of a training run, how far the trainer's log-probs are from plain forwards."""

    def __init__(self, trainer, clips: list[str], compare_sharing: bool = False):
        self.trainer = trainer
        self.compare_sharing = compare_sharing
        self.calls: list[dict] = []
        processor = trainer.processing_class
        self.prompt_of: dict[tuple[int, ...], int] = {}  # prompt token ids -> row index
        self.clip_of_row: list[int] = []
        features, masks = {}, {}
        for index, row in enumerate(question_rows(clips)):
            path = row["prompt"][0]["content"][0]["path"]
            clip = clips.index(path)
            text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
            inputs = processor(text=[text], audio=[load_audio(path)], return_tensors="pt")
            self.prompt_of[tuple(inputs["input_ids"][0].tolist())] = index
            self.clip_of_row.append(clip)
            features[clip], masks[clip] = inputs["input_features"], inputs["feature_attention_mask"]
        self.features = [features[c] for c in range(len(clips))]
        self.feature_masks = [masks[c] for c in range(len(clips))]
        self.original = trainer._get_per_token_logps_and_entropies
        trainer._get_per_token_logps_and_entropies = self

    def __call__(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        kind = "loss" if torch.is_grad_enabled() else ("reference" if model is self.trainer.ref_model else "old")
        prompt_ids = input_ids[:, :-logits_to_keep]
        prompt_mask = attention_mask[:, :-logits_to_keep].bool()
        questions = [
            self.prompt_of[tuple(ids[mask].tolist())] for ids, mask in zip(prompt_ids, prompt_mask, strict=True)
        ]
        clips = [self.clip_of_row[q] for q in questions]
        others = [(c + 1) % len(self.features) for c in clips]
        completion = input_ids[:, -logits_to_keep:]
        mask = attention_mask[:, -logits_to_keep:].bool()

        # Plain forwards first (no gradients), so the trainer's own forward and backward stay adjacent.
        with torch.no_grad():
            plain = {
                "own": self._plain_logps(model, input_ids, attention_mask, completion, clips),
                "other": self._plain_logps(model, input_ids, attention_mask, completion, others),
                "none": self._plain_logps(model, input_ids, attention_mask, completion, None),
            }
            if self.compare_sharing:  # the trainer's own pass with the other encoding (shared <-> per completion)
                sharing = self.trainer.share_audio_encoding
                self.trainer.share_audio_encoding = not sharing
                try:
                    plain["other_encoding"] = self.original(
                        model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
                    )[0]
                finally:
                    self.trainer.share_audio_encoding = sharing
        result = self.original(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        logps = result[0].detach()
        record = {"kind": kind, "questions": questions, "clips": clips, "tokens": int(mask.sum())}
        for name, value in plain.items():  # per row: the largest difference over its completion tokens
            difference = (logps - value.float()).abs().masked_fill(~mask, 0)
            record[name] = difference.max(dim=1).values.tolist()
        self.calls.append(record)
        return result

    def _plain_logps(self, model, input_ids, attention_mask, completion, clips):
        audio = {}
        if clips is not None:
            audio = {
                "input_features": torch.cat([self.features[c] for c in clips]).to(input_ids.device),
                "feature_attention_mask": torch.cat([self.feature_masks[c] for c in clips]).to(input_ids.device),
            }
        logits = _plain_module(model)(input_ids=input_ids, attention_mask=attention_mask, **audio).logits
        logps = torch.log_softmax(logits[:, -completion.size(1) - 1 : -1].float(), dim=-1)
        return logps.gather(-1, completion[..., None])[..., 0]


def summary(calls: list[dict]) -> dict:
    """Per kind of pass: how many calls, rows and tokens were checked, and the largest / smallest differences."""
    out = {}
    for kind in sorted({c["kind"] for c in calls}):
        mine = [c for c in calls if c["kind"] == kind]
        out[kind] = {
            "calls": len(mine),
            "rows": sum(len(c["clips"]) for c in mine),
            # the trainer vs a plain forward with each row's own clip: largest over all rows
            "own_max": max(max(c["own"]) for c in mine),
            # ... with another clip / without audio: smallest over rows (each row would show a swap)
            "other_min": min(min(c["other"]) for c in mine),
            "none_min": min(min(c["none"]) for c in mine),
        }
        if "other_encoding" in mine[0]:
            out[kind]["other_encoding_max"] = max(max(c["other_encoding"]) for c in mine)
    return out
