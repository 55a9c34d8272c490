"""R1-AQA: GRPO post-training of Qwen2-Audio for audio question answering (arXiv 2503.11197), reproduced."""

__version__ = "0.1.0"
