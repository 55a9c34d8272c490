"""Scaffolding for running the pipeline without a GPU; not part of the paper's pipeline.

- `tiny`: a tiny random Qwen2-Audio with the real model and processor classes (no download).
- `toy_task`: a synthetic audio question (a low or a high tone) in AVQA's and MMAU's formats.
- `warmup`: the format-only supervised warm-up that gives a random model the `<answer>` format.
- `demo`: the whole pipeline on CPU (`make demo`) and the proof-of-learning benchmark (`make bench-learning`).
- `deepspeed_patch`: what DeepSpeed ZeRO-3 needs on a machine without a GPU (a no-op with one).
"""
