"""Checks that run before any model loads, so a bad argument costs seconds, not a queued 8-GPU job."""

from __future__ import annotations

import logging
import netrc
import os
import re
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_path(path: str) -> None:
    """A local folder with a config.json, or something shaped like a hub id (`org/name`)."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise SystemExit(f"Model folder {path!r} has no config.json: point --model_name_or_path at a saved model.")
        return
    if not _HUB_ID.match(path) or path.startswith((".", "/")):
        raise SystemExit(
            f"Model {path!r} is neither a local folder nor a hub id like 'Qwen/Qwen2-Audio-7B-Instruct'. "
            "Fix --model_name_or_path (for a CPU try-out: python -m r1aqa.tryout.tiny --out DIR)."
        )


# Every linear layer of the language model (as configs/sft_qwen2_audio_7b_lora.yaml), offered when LoRA is asked for
# without saying where: PEFT would otherwise stop deep in the trainer's start-up.
LORA_TARGETS_EXAMPLE = "'.*language_model.*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)'"


def check_peft(model_args) -> None:
    """LoRA (`use_peft`) needs to know which layers get adapters."""
    if model_args.use_peft and not (
        model_args.lora_target_modules or getattr(model_args, "lora_target_parameters", None)
    ):
        raise SystemExit(
            "use_peft is true but no lora_target_modules are set: say which layers get LoRA adapters, e.g. "
            f"--lora_target_modules {LORA_TARGETS_EXAMPLE} (every linear layer of the language model, as "
            "configs/sft_qwen2_audio_7b_lora.yaml; also lora_r, lora_alpha, lora_dropout)."
        )


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def check_wandb(training_args) -> None:
    """Weights & Biases logs online when a key is configured and offline otherwise; it never stops a run."""
    if "wandb" not in (training_args.report_to or []) or os.environ.get("WANDB_MODE"):
        return
    if not _has_wandb_credentials():
        os.environ["WANDB_MODE"] = "offline"
        logger.warning(
            "No W&B key found (WANDB_API_KEY or `wandb login`): logging offline to ./wandb; "
            "upload later with `wandb sync`. Set report_to=none to turn W&B off."
        )


def run_entry_point(parse_args: Callable, main: Callable, argv: list[str] | None = None) -> None:
    """How every training entry point starts: DeepSpeed-on-CPU handling (before accelerate initialises; a no-op with
    a GPU or without a launcher), parse recipe + command line, check the model path and W&B, then `main`."""
    from r1aqa.deepspeed_cpu import enable_cpu_deepspeed

    enable_cpu_deepspeed()
    script_args, training_args, model_args = parse_args(sys.argv[1:] if argv is None else argv)
    check_model_path(model_args.model_name_or_path)
    check_peft(model_args)
    check_wandb(training_args)
    main(script_args, training_args, model_args)
    close_process_group()


def close_process_group() -> None:
    """Let every process finish writing, then close the process group. Left to interpreter shutdown, the teardown of
    gloo / DeepSpeed communication threads could abort a finished two-process run on CPU ("terminate called without an
    active exception", exit -6 after the final save)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
