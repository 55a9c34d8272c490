"""DeepSpeed ZeRO-3 on a machine without a GPU (gloo, `DS_ACCELERATOR=cpu`); nothing changes on GPU machines.

accelerate picks a distributed backend for a launched process only when it finds an accelerator; on CPU it falls back
to "not distributed" and the first ZeRO-3 all-gather fails ("expected length 2, got 1"). Called by every training
entry point (r1aqa.preflight.run_entry_point) before accelerate initialises.
"""

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
        chosen, distributed_type = original(self, cpu, sagemaker_dp, backend)
        return (
            ("gloo", DistributedType.MULTI_CPU)
            if distributed_type == DistributedType.NO and not cpu
            else (chosen, distributed_type)
        )

    prepare_backend._r1aqa_cpu = True
    PartialState._prepare_backend = prepare_backend
    return True
