"""Format-only warm-up: targets drawn at random among each question's options teach a random model `<answer>..</answer>`
(without it every GRPO reward is 0) while accuracy stays at chance. The loss covers the answer and end of turn only."""

from __future__ import annotations

import time

import numpy as np
import torch

from r1aqa.audio import SAMPLING_RATE, load_audio
from r1aqa.data import load_avqa_dataset
from r1aqa.models import load_model, load_processor
from r1aqa.prompts import solution_text

IGNORE_INDEX = -100


# random: `<answer>{option}</answer>`, the option drawn uniformly from each row's `multi_choice`; correct: the right
# answers (benchmarks/bench_filter.py needs a checkpoint that has learned them).
TARGETS = {"random": lambda rows, rng: [solution_text(str(rng.choice(row["multi_choice"]))) for row in rows],
           "correct": lambda rows, rng: [row["solution"] for row in rows]}  # fmt: skip


def build_batch(processor, rows: list[dict], targets: list[str]) -> dict:
    """Processor inputs of prompt (as GRPO samples it) + target + `<|im_end|>`, `labels` on the target tokens only
    (left padding keeps every target at the end of its row)."""
    tokenizer, end = processor.tokenizer, processor.tokenizer.eos_token
    tokenizer.padding_side = "left"
    chats = [processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False) for row in rows]
    texts = [chat + target + end for chat, target in zip(chats, targets, strict=True)]
    audios = [load_audio(row["audio_path"], SAMPLING_RATE) for row in rows]
    batch = processor(text=texts, audio=audios, sampling_rate=SAMPLING_RATE, padding=True, return_tensors="pt")
    expected = [tokenizer(target + end, add_special_tokens=False)["input_ids"] for target in targets]
    labels = batch["input_ids"].clone()
    for i, ids in enumerate(expected):
        labels[i, : labels.size(1) - len(ids)] = IGNORE_INDEX
        if labels[i, labels.size(1) - len(ids) :].tolist() != ids:  # the target must tokenize alike after the prompt
            raise ValueError(f"target {targets[i]!r} does not tokenize the same after the prompt")
    return {**batch, "labels": labels}


def warmup(model_dir: str, data_file: str, out_dir: str, steps: int = 150, batch_size: int = 16,
           learning_rate: float = 1e-3, seed: int = 0, targets: str = "random") -> str:  # fmt: skip
    """`steps` AdamW steps on `TARGETS[targets]`; save model + processor to `out_dir`; return it."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = load_avqa_dataset(data_file).to_list()
    processor = load_processor(model_dir)
    model = load_model(model_dir, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    start = time.time()
    for step in range(1, steps + 1):
        picked = [rows[i] for i in rng.choice(len(rows), size=min(batch_size, len(rows)), replace=False)]
        loss = model(**build_batch(processor, picked, TARGETS[targets](picked, rng))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 25 == 0 or step == steps:
            print(f"warm-up step {step}/{steps}: loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
    model.eval().save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
