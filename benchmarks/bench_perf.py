"""Benchmark: GRPO steps with the audio encoded once per prompt (shared) vs once per completion (separate).

    make bench-perf
    python benchmarks/bench_perf.py --num_generations 4 8 --repetitions 3 --steps 4 --threads 1   # the defaults
    python benchmarks/bench_perf.py --num_generations 4 --repetitions 1 --steps 2     # a quick look (~1 min)

CPU, the tiny random Qwen2-Audio (30 s audio window, the real processor and trainer path), synthetic tone clips.
Both variants run in one process, alternating, `--repetitions` times each; every repetition trains `--steps` steps
and the first step of each is dropped (warm-up). Per group size G it prints each variant's median step time (TRL's
`step_time`: generation, scoring and the loss forward + backward; and the process's CPU time per step, steadier when
other processes share the cores) and the audio clips encoded per step (counted with forward hooks on the policy's and
the reference's audio encoders), then one line

    encoder_calls_ratio=<separate / shared encodings per step> step_time_ratio=<separate / shared step time>

Each step has 2 prompts x G completions, so the encoding ratio is G; the time ratio grows with G as the encoder's share
of the step grows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    AutoProcessor,
    PrinterCallback,
    Qwen2AudioForConditionalGeneration,
    TrainerCallback,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from r1aqa.audio_sharing import find_audio_tower  # noqa: E402
from r1aqa.prompts import format_question, solution_text, user_turn  # noqa: E402
from r1aqa.trainer import AudioGRPOConfig, AudioGRPOTrainer  # noqa: E402
from r1aqa.tryout.tiny import write_tiny_model  # noqa: E402

PROMPTS_PER_STEP = 2


def write_clips(out_dir: str, count: int = 8) -> list[str]:
    """Short tone clips (1-3 s, 16 kHz): the processor pads every clip to the 30 s window anyway."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        seconds = 1 + i % 3
        t = np.arange(16_000 * seconds) / 16_000
        audio = 0.5 * np.sin(2 * np.pi * (250 * 2 ** (i % 4)) * t) + 0.01 * rng.standard_normal(t.size)
        path = os.path.join(out_dir, f"tone{i}.wav")
        sf.write(path, audio.astype(np.float32), 16_000)
        paths.append(path)
    return paths


def reward(completions, **kwargs):
    return [float(len(c[0]["content"]) % 2) for c in completions]


class EncodedClips:
    """Clips that go through an audio encoder (rows of its input), summed over the models given."""

    def __init__(self, *models):
        self.clips = 0
        for model in models:
            find_audio_tower(model).register_forward_hook(self.count)

    def count(self, module, args, output):
        self.clips += args[0].size(0)


class StepCPUTime(TrainerCallback):
    """CPU seconds this process spends per optimizer step (all threads): less sensitive than wall time to other
    processes competing for the cores."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.process_time() - self.start)


def run(model_dir: str, dataset: Dataset, output_dir: str, g: int, share: bool, steps: int):
    """Train `steps` steps; return the wall and CPU step times after the first, and the clips encoded per step."""
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    config = AudioGRPOConfig(
        output_dir=output_dir,
        share_audio_encoding=share,
        per_device_train_batch_size=PROMPTS_PER_STEP * g,
        num_generations=g,
        max_completion_length=16,
        max_steps=steps,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        beta=0.04,
        loss_type="grpo",
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    trainer = AudioGRPOTrainer(
        model=Qwen2AudioForConditionalGeneration.from_pretrained(model_dir),
        reward_funcs=[reward],
        args=config,
        train_dataset=dataset,
        processing_class=processor,
    )
    trainer.remove_callback(PrinterCallback)  # the per-step log dicts; we print a summary
    cpu = StepCPUTime()
    trainer.add_callback(cpu)
    counter = EncodedClips(trainer.model, trainer.ref_model)
    trainer.train()
    times = [entry["step_time"] for entry in trainer.state.log_history if "step_time" in entry]
    return times[1:], cpu.seconds[1:], counter.clips / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_generations", type=int, nargs="+", default=[4, 8], help="Group sizes G to compare.")
    parser.add_argument("--repetitions", type=int, default=3, help="Training runs per variant (alternating).")
    parser.add_argument("--steps", type=int, default=4, help="Steps per run; the first is dropped as warm-up.")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads. 1 (default) keeps timings steady when other processes share the cores: with one "
        "thread per core, a descheduled thread stalls every parallel region. 0: torch's choice.",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_tiny_model(os.path.join(tmp, "tiny"), seed=0)
        question = format_question("Which tone is this?", ["a low tone", "a high tone"])
        clips = write_clips(tmp)
        dataset = Dataset.from_list(
            [{"prompt": user_turn(path, question), "solution": solution_text("a low tone")} for path in clips * 8]
        )
        print(
            f"CPU threads: {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; tiny Qwen2-Audio, "
            f"30 s audio window; {PROMPTS_PER_STEP} prompts x G completions per step, 16 new tokens"
        )
        for g in args.num_generations:
            times: dict[bool, list[float]] = {True: [], False: []}
            cpu: dict[bool, list[float]] = {True: [], False: []}
            encoded: dict[bool, float] = {}
            started = time.perf_counter()
            for _ in range(args.repetitions):
                for share in (True, False):
                    wall, cpu_seconds, encoded[share] = run(
                        model_dir, dataset, os.path.join(tmp, "out"), g, share, args.steps
                    )
                    times[share] += wall
                    cpu[share] += cpu_seconds
            print(f"\nG = {g} ({PROMPTS_PER_STEP * g} completions per step, {time.perf_counter() - started:.0f} s)")
            for share, name in ((True, "shared  "), (False, "separate")):
                t = times[share]
                spread = statistics.stdev(t) if len(t) > 1 else 0.0
                print(
                    f"  {name}: step {statistics.median(t):6.2f} s wall (median of {len(t)}, sd {spread:.2f}), "
                    f"{statistics.median(cpu[share]):6.2f} s CPU; audio encodings per step {encoded[share]:.0f}"
                )
            calls_ratio = encoded[False] / encoded[True]
            time_ratio = statistics.median(times[False]) / statistics.median(times[True])
            print(f"cpu_time_ratio={statistics.median(cpu[False]) / statistics.median(cpu[True]):.2f}")
            print(f"encoder_calls_ratio={calls_ratio:.2f} step_time_ratio={time_ratio:.2f}")


if __name__ == "__main__":
    main()
