"""DeepSpeed on a machine without a GPU: everything it takes, in one place, and nothing on GPU machines.

DeepSpeed ZeRO-3 runs on CPU (gloo) with `DS_ACCELERATOR=cpu` and `use_cpu=False`, but accelerate 1.15 only picks a
distributed backend for a launched process (LOCAL_RANK set, `use_cpu=False`) when it finds an accelerator; on CPU it
falls back to "not distributed", counts one process, and the first ZeRO-3 all-gather fails with "invalid output tensor
list ... expected length 2, got 1". `enable_cpu_deepspeed()` makes it choose gloo instead. It changes nothing when
CUDA is available or when the process was not started by a distributed launcher.
"""

from __future__ import annotations

import os


def enable_cpu_deepspeed() -> bool:
    """Patch accelerate to use gloo for launched processes on a CPU-only machine. Returns whether it patched."""
    import torch

    if torch.cuda.is_available() or os.environ.get("LOCAL_RANK") is None:
        return False
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    original = PartialState._prepare_backend
    if getattr(original, "_r1aqa_cpu_patch", False):
        return True

    def prepare_backend(self, cpu: bool = False, sagemaker_dp: bool = False, backend: str | None = None):
        chosen, distributed_type = original(self, cpu, sagemaker_dp, backend)
        if distributed_type == DistributedType.NO and not cpu:
            return "gloo", DistributedType.MULTI_CPU
        return chosen, distributed_type

    prepare_backend._r1aqa_cpu_patch = True
    PartialState._prepare_backend = prepare_backend
    return True
