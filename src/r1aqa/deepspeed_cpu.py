"""DeepSpeed ZeRO-3 without a GPU (gloo): accelerate gives a launched process a distributed backend only with an
accelerator, else ZeRO-3's first all-gather fails ("expected length 2, got 1"). Nothing changes with a GPU."""

from __future__ import annotations

import os


def enable_cpu_deepspeed() -> None:
    """Make accelerate use gloo for launched processes (LOCAL_RANK set) on a CPU-only machine."""
    import torch

    if torch.cuda.is_available() or os.environ.get("LOCAL_RANK") is None:
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    original = PartialState._prepare_backend

    def prepare_backend(self, cpu: bool = False, sagemaker_dp: bool = False, backend: str | None = None):
        chosen, kind = original(self, cpu, sagemaker_dp, backend)
        return ("gloo", DistributedType.MULTI_CPU) if kind == DistributedType.NO and not cpu else (chosen, kind)

    PartialState._prepare_backend = prepare_backend
