"""A first short run (`SMOKE=1 bash run_grpo.sh`, i.e. `--smoke true`): the recipe for `smoke_steps` steps, no W&B,
then one screen: time per step and the recipe's hours, rank 0's peak memory, the disk, what to change if it failed."""

from __future__ import annotations

import os
import resource
import statistics

from r1aqa.checkpoints import checkpoint_dirs, state_paths

GB = 2**30


def apply_smoke(script_args, training_args) -> None:
    """The smoke schedule over the parsed recipe, whose (max_steps, save_steps) stay in `script_args.recipe`."""
    script_args.recipe = (training_args.max_steps, int(training_args.save_steps))
    training_args.max_steps = script_args.smoke_steps
    training_args.save_steps = max(1, script_args.smoke_steps // 2)
    training_args.report_to = []


def peak_memory() -> str:
    """This process's peak memory: GPU (allocated, reserved, device total) with CUDA, else the peak RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        total = torch.cuda.get_device_properties(device).total_memory
        used = (torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device), total)
        return "{:.1f} allocated / {:.1f} reserved of {:.0f} GB GPU".format(*(x / GB for x in used))
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB RSS"  # ru_maxrss: KiB on Linux


def folder_gb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(path) for name in files) / GB


def smoke_screen(trainer, script_args, out_of_memory: BaseException | None = None) -> str:
    """The report, from the trainer's logs (TRL's `step_time`) and checkpoints, on rank 0."""
    args, (max_steps, save_steps), peak = trainer.args, script_args.recipe, peak_memory()
    times = [log["step_time"] for log in trainer.state.log_history if "step_time" in log]
    lines = [
        f"First run (smoke): {len(times)} of {args.max_steps} steps on {args.world_size} process(es), "
        f"{'GPU' if peak.endswith('GPU') else 'CPU'}; output {args.output_dir}",
        getattr(script_args, "batch_line", ""),
    ]
    if times:
        per_step = statistics.median(times[1:] or times)  # the first step pays for warm-up
        lines.append(
            f"Time: {per_step:.2f} s/step (median of TRL's step_time, steps 2-{len(times)}; the first took "
            f"{times[0]:.2f} s) -> the recipe's {max_steps} steps: ~{per_step * max_steps / 3600:.2f} h"
        )
    lines.append(f"Memory: peak of rank 0: {peak}")
    if out_of_memory is not None:
        lines.append(f"DID NOT FIT: {str(out_of_memory).splitlines()[0]}")
    sizes = {path: folder_gb(path) for _, path in checkpoint_dirs(args.output_dir)}
    kind = {p: "with optimizer state" if state_paths(p) else "weights only" for p in sizes}
    measured = [f"{os.path.basename(p)} {gb:.3f} GB ({kind[p]})" for p, gb in sizes.items()]
    weights, with_state, n = min(sizes.values(), default=0), max(sizes.values(), default=0), max_steps // save_steps
    total = (n * with_state if script_args.keep_all_checkpoint_state else (n - 1) * weights + with_state) + weights
    lines += [
        f"Disk: {', '.join(measured) or 'no checkpoint'}; the recipe's {n} checkpoints (save_steps {save_steps}) "
        f"+ final model: ~{total:.2f} GB",
        "If it did not fit, change, cheapest first: --gradient_checkpointing true; DS_CONFIG=configs/"
        "ds_zero3_offload.json; a smaller --per_device_train_batch_size (questions_per_step keeps the batch); on "
        "CPU fewer processes (CPU_PROCS). python -m r1aqa.plan --recipe RECIPE estimates the GPU memory of each.",
    ]
    return "\n".join(["=" * 100, *filter(None, lines), "=" * 100])
