"""DeepSpeed ZeRO-3 on a machine without a GPU (gloo, `DS_ACCELERATOR=cpu`): accelerate gives a launched process a
distributed backend only when it finds an accelerator; on CPU it counts one process and ZeRO-3's first all-gather fails
("expected length 2, got 1"). r1aqa.runs.cli calls `enable_cpu_deepspeed()` first; nothing changes with a GPU."""

from __future__ import annotations

import os


def enable_cpu_deepspeed() -> bool:
    """Make accelerate use gloo for launched processes (LOCAL_RANK set) on a CPU-only machine; whether it did."""
    import torch

    if torch.cuda.is_available() or os.environ.get("LOCAL_RANK") is None:
        return False
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    original = PartialState._prepare_backend
    if getattr(original, "_r1aqa_cpu", False):
        return True

    def prepare_backend(self, cpu: bool = False, sagemaker_dp: bool = False, backend: str | None = None):
        chosen, kind = original(self, cpu, sagemaker_dp, backend)
        return ("gloo", DistributedType.MULTI_CPU) if kind == DistributedType.NO and not cpu else (chosen, kind)

    prepare_backend._r1aqa_cpu = True
    PartialState._prepare_backend = prepare_backend
    return True
