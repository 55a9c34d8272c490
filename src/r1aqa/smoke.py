"""A first short run (`SMOKE=1 bash run_grpo.sh`, `--smoke true`): the recipe as it is, for `smoke_steps` steps with
a checkpoint halfway and no W&B, ending with one screen that says whether the recipe fits and what the whole run
costs: seconds per step, peak memory per rank (GPU: beside the memory plan's estimate, r1aqa.plan; CPU: peak RSS),
the projected hours for the recipe's max_steps, the disk per checkpoint (measured, and expected from the parameter
counts), and what to change if it did not fit.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import tempfile
import time

from transformers import TrainerCallback

from r1aqa.checkpoints import checkpoint_dirs, state_paths
from r1aqa.runs import human_bytes

logger = logging.getLogger(__name__)

GB = 2**30


def apply_smoke(script_args, training_args) -> None:
    """The smoke schedule over the parsed recipe; the recipe's own max_steps and save_steps are kept for the
    projections."""
    script_args.recipe_max_steps = training_args.max_steps
    script_args.recipe_save_steps = int(training_args.save_steps)
    training_args.max_steps = script_args.smoke_steps
    training_args.save_steps = max(1, script_args.smoke_steps // 2)
    training_args.report_to = []


def folder_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, name)) for name in files)
    return total


def peak_memory() -> dict:
    """This process's peak memory: GPU (allocated, reserved, device total) with CUDA, else the peak RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        return {
            "kind": "gpu",
            "allocated": torch.cuda.max_memory_allocated(device),
            "reserved": torch.cuda.max_memory_reserved(device),
            "total": torch.cuda.get_device_properties(device).total_memory,
        }
    return {"kind": "rss", "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # KiB on Linux


def gather(value) -> list:
    """`value` of every rank (collective: every rank calls it), or [value] without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def uses_offload(deepspeed_config) -> bool:
    if not deepspeed_config:
        return False
    config = deepspeed_config
    if isinstance(config, str):
        with open(config, encoding="utf-8") as f:
            config = json.load(f)
    zero = config.get("zero_optimization", {})
    return any((zero.get(key) or {}).get("device") == "cpu" for key in ("offload_optimizer", "offload_param"))


def plan_estimate(model_config, training_args, gpus: int) -> tuple[float | None, str]:
    """The memory plan's bytes per GPU (r1aqa.plan: ZeRO-3, 30 s clips, the recipe's micro-batch and completion
    length) for `gpus` GPUs per node, and what it assumed; None when the plan does not cover the setup."""
    from r1aqa import plan

    if not training_args.deepspeed:
        return None, "the memory plan covers DeepSpeed ZeRO-3 runs only (DS_CONFIG)"
    if gpus not in plan.GPU_COUNTS:
        return None, f"the memory plan covers {', '.join(map(str, plan.GPU_COUNTS))} GPUs per node"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.json")
        model_config.to_json_file(path)
        size = plan.count_parameters(plan.build_meta_model(path))
    args = plan.parse_args(["--recipe", "-"])  # the plan's defaults
    work = plan.Workload(
        micro_batch=training_args.per_device_train_batch_size,
        num_generations=training_args.num_generations,
        audio_tokens=args.audio_tokens,
        text_tokens=args.text_tokens,
        completion_tokens=training_args.max_completion_length,
        share_audio_encoding=getattr(training_args, "share_audio_encoding", True),
    )
    offload = uses_offload(training_args.deepspeed)
    checkpointing = bool(training_args.gradient_checkpointing)
    row = next(
        r
        for r in plan.plan(size, work, args)
        if r.gpus == gpus and r.offload == offload and r.checkpointing == checkpointing
    )
    assumed = (
        f"r1aqa.plan: {gpus} GPU(s), ZeRO-3{' + CPU offload' if offload else ''}, gradient_checkpointing="
        f"{str(checkpointing).lower()}, {args.audio_tokens} audio tokens (30 s clips)"
    )
    return row.per_gpu, assumed


class SmokeReport(TrainerCallback):
    """Times each optimizer step, gathers every rank's peak memory at the end, and writes the screen."""

    def __init__(self, script_args, training_args, model_args, model, weights: float, with_state: float):
        self.args = training_args
        self.recipe_max_steps = script_args.recipe_max_steps
        self.recipe_save_steps = script_args.recipe_save_steps
        self.keep_all_state = script_args.keep_all_checkpoint_state
        self.batch_line = getattr(script_args, "batch_line", "")
        self.expected = (weights, with_state)
        self.model_config = model.config
        self.step_seconds: list[float] = []
        self.peaks: list[dict] | None = None
        self._started = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._started is not None:
            self.step_seconds.append(time.perf_counter() - self._started)

    def on_train_end(self, args, state, control, **kwargs):
        self.peaks = gather(peak_memory())

    # --- the screen ----------------------------------------------------------------------------------------------

    def screen(self, out_of_memory: BaseException | None = None) -> str:
        peaks = self.peaks or [peak_memory()]
        world = self.args.world_size
        gpu = peaks[0]["kind"] == "gpu"
        lines = [
            "=" * 100,
            f"First run (smoke): {len(self.step_seconds)} of {self.args.max_steps} steps on {world} process(es), "
            f"{'GPU' if gpu else 'CPU'}; output {self.args.output_dir}",
            self.batch_line,
            *self._time_lines(),
            *self._memory_lines(peaks, gpu, out_of_memory),
            *self._disk_lines(),
            *self._advice(gpu, out_of_memory),
            "=" * 100,
        ]
        return "\n".join(line for line in lines if line)

    def _time_lines(self) -> list[str]:
        if not self.step_seconds:
            return ["Time: no step finished."]
        steady = self.step_seconds[1:] or self.step_seconds  # the first step pays for warm-up
        per_step = statistics.median(steady)
        hours = per_step * self.recipe_max_steps / 3600
        return [
            f"Time: {per_step:.2f} s/step (median of steps 2-{len(self.step_seconds)}; the first took "
            f"{self.step_seconds[0]:.2f} s) -> the recipe's {self.recipe_max_steps} steps: ~{hours:.2f} h "
            f"({hours * 60:.1f} min) "
            "(training steps only; saves and evaluation not included)"
        ]

    def _memory_lines(self, peaks: list[dict], gpu: bool, out_of_memory) -> list[str]:
        if not gpu:
            per_rank = ", ".join(f"rank {i}: {p['rss'] / GB:.2f} GB" for i, p in enumerate(peaks))
            return [
                f"Memory: peak RSS per rank: {per_rank}. (The memory plan, python -m r1aqa.plan, estimates GPU "
                "memory; it has no CPU estimate.)"
            ]
        per_rank = ", ".join(
            f"rank {i}: {p['allocated'] / GB:.1f} allocated / {p['reserved'] / GB:.1f} reserved of "
            f"{p['total'] / GB:.0f} GB"
            for i, p in enumerate(peaks)
        )
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.args.world_size))
        try:
            estimate, assumed = plan_estimate(self.model_config, self.args, local)
        except Exception as error:  # the plan is advice: the report still prints without it
            estimate, assumed = None, f"no plan estimate ({type(error).__name__}: {error})"
        plan_text = f"plan estimate {estimate / GB:.1f} GB per GPU ({assumed})" if estimate else assumed
        lines = [f"Memory: peak GPU memory per rank: {per_rank}", f"        {plan_text}"]
        if out_of_memory is not None:
            lines.append(f"        DID NOT FIT: {str(out_of_memory).splitlines()[0]}")
        elif max(p["reserved"] / p["total"] for p in peaks) > 0.95:
            lines.append("        TIGHT: a rank reserved over 95% of its GPU; longer clips or answers may not fit.")
        else:
            lines.append("        Fits.")
        return lines

    def _disk_lines(self) -> list[str]:
        found = checkpoint_dirs(self.args.output_dir)
        measured = ", ".join(
            f"{os.path.basename(path)} {human_bytes(folder_bytes(path))}"
            f" ({'with optimizer state' if state_paths(path) else 'weights only'})"
            for _step, path in found
        )
        weights, with_state = self.expected
        n = self.recipe_max_steps // self.recipe_save_steps if self.recipe_save_steps else 0
        total = (n * with_state if self.keep_all_state else max(n - 1, 0) * weights + with_state) + weights
        return [
            f"Disk: measured {measured or 'no checkpoint'}; expected ~{human_bytes(weights)} weights only, "
            f"~{human_bytes(with_state)} with state",
            f"      the recipe's {n} checkpoints (save_steps {self.recipe_save_steps}) + final model: "
            f"~{human_bytes(total)}",
        ]

    def _advice(self, gpu: bool, out_of_memory) -> list[str]:
        if not gpu:
            return [
                "If it did not fit: fewer processes (CPU_PROCS), a smaller --per_device_train_batch_size (the "
                "recipe's questions_per_step keeps the batch by raising the accumulation), a smaller model."
            ]
        head = "It did not fit; change" if out_of_memory is not None else "If it did not fit, change"
        return [
            f"{head}, cheapest first: --gradient_checkpointing true; "
            "DS_CONFIG=configs/ds_zero3_offload.json (optimizer and parameters in CPU memory, slower); a smaller "
            "--per_device_train_batch_size (questions_per_step keeps the paper's batch by raising the accumulation); "
            "see python -m r1aqa.plan --recipe RECIPE for every option's estimate."
        ]
