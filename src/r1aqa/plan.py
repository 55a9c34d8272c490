"""Memory and step-time plan of GRPO on 1-8 GPUs of 80 GB: which DeepSpeed config fits (estimates; how: docs/).

python -m r1aqa.plan --recipe configs/grpo_qwen2_audio_7b.yaml [--audio_tokens 250 for 10 s clips]   # make plan
"""

from __future__ import annotations

import argparse
import json
import os
from collections import namedtuple

import yaml

GB = 2**30
GPU_COUNTS = (1, 2, 4, 8)
PAPER_COMPLETIONS_PER_STEP = 128  # 16 prompts x 8 completions (docs/recipe.md §6)
ENCODER_BYTES_PER_POSITION_HIDDEN = 34  # Whisper-style layers: 4h GELU MLP, memory-efficient attention


class ModelSize(namedtuple("ModelSize", "audio_encoder projector language_model lm_head largest_layer hidden layers "
                           "kv_hidden encoder_hidden encoder_layers encoder_positions vision packed_encoder name",
                           defaults=(0, False, "Qwen2-Audio"))):  # fmt: skip
    """Parameter counts (language_model incl. the input embeddings; largest_layer: DeepSpeed's largest module; vision:
    Qwen2.5-Omni's frozen tower) and widths (kv_hidden: key/value per layer). packed_encoder: the audio encoder runs on
    the clips' own frames (2 per audio token), not 30 s."""

    @property
    def total(self) -> int:
        return self.audio_encoder + self.projector + self.language_model + self.lm_head + self.vision


# The hub models a recipe may name: their published config.json counted on the meta device (tests/test_plan.py).
KNOWN_MODELS = {
    "Qwen/Qwen2-Audio-7B-Instruct": ModelSize(
        audio_encoder=636_968_960, projector=5_246_976, language_model=7_115_771_904, lm_head=639_107_072,
        largest_layer=639_107_072, hidden=4096, layers=32, kv_hidden=4096, encoder_hidden=1280, encoder_layers=32,
        encoder_positions=1500),
    "Qwen/Qwen2.5-Omni-7B": ModelSize(
        audio_encoder=639_647_232, projector=0, language_model=7_070_619_136, lm_head=544_997_376,
        largest_layer=544_997_376, hidden=3584, layers=28, kv_hidden=512, encoder_hidden=1280, encoder_layers=32,
        encoder_positions=1500, vision=676_550_144, packed_encoder=True, name="Qwen2.5-Omni thinker"),
}  # fmt: skip


def build_meta_model(config_path: str | os.PathLike):
    """The model of a config.json (Qwen2-Audio; a Qwen2.5-Omni thinker) on the meta device: real modules, no memory."""
    import torch
    import transformers

    from r1aqa.models import family_of_config

    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    config = getattr(config, "thinker_config", config)
    with torch.device("meta"):
        return getattr(transformers, family_of_config(config).model_class)(config)


def count_parameters(model) -> ModelSize:
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    # DeepSpeed's `model_to_params` de-duplicates by `data_ptr()`, which is 0 for every meta tensor: count here.
    largest_layer = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    text, audio, parts = model.config.get_text_config(), model.config.audio_config, model.model
    packed = audio.model_type == "qwen2_5_omni_audio_encoder"  # its projector is inside the audio encoder
    kv_hidden = text.hidden_size * text.num_key_value_heads // text.num_attention_heads
    size = ModelSize(
        count(parts.audio_tower), count(getattr(parts, "multi_modal_projector", None)), count(parts.language_model),
        count(model.lm_head), largest_layer, text.hidden_size, text.num_hidden_layers, kv_hidden, audio.d_model,
        audio.encoder_layers, audio.max_source_positions, count(getattr(parts, "visual", None)), packed,
        "Qwen2.5-Omni thinker" if packed else "Qwen2-Audio")  # fmt: skip
    assert size.total == count(model), "every parameter belongs to one of the modules"
    return size


class Workload(namedtuple("Workload", "micro_batch num_generations audio_tokens text_tokens completion_tokens "
                          "share_audio_encoding grad_accum", defaults=(1,))):  # fmt: skip
    """One GPU's share of a step: `micro_batch` completions per forward pass, `grad_accum` micro-batches per generation
    batch (TRL: steps_per_generation)."""

    @property
    def sequence(self) -> int:
        return self.audio_tokens + self.text_tokens + self.completion_tokens

    @property
    def clips_per_micro_batch(self) -> int:
        # Shared: one per distinct prompt; TRL shuffles the generation batch before splitting it into micro-batches.
        prompts = max(1, self.micro_batch * self.grad_accum // self.num_generations)
        return min(self.micro_batch, prompts) if self.share_audio_encoding else self.micro_batch

    def encoder_positions(self, size: ModelSize) -> int:
        return min(size.encoder_positions, 2 * self.audio_tokens) if size.packed_encoder else size.encoder_positions


def activation_bytes(size: ModelSize, work: Workload, checkpointing: bool, bytes_per_token_hidden: float) -> float:
    """A micro-batch's activations; checkpointing keeps each layer's bf16 input, plus one layer's during recompute."""
    tokens, clip_positions = work.micro_batch * work.sequence, work.encoder_positions(size) * work.clips_per_micro_batch
    full_layer = bytes_per_token_hidden * size.hidden * tokens
    encoder_layer = ENCODER_BYTES_PER_POSITION_HIDDEN * size.encoder_hidden * clip_positions
    if checkpointing:
        kept = 2 * (size.hidden * tokens * size.layers + size.encoder_hidden * clip_positions * size.encoder_layers)
        return kept + max(full_layer, encoder_layer)
    return full_layer * size.layers + encoder_layer * size.encoder_layers


def step_flops(size: ModelSize, work: Workload, completions: int, checkpointing: bool) -> float:
    """Policy forward + backward (6 x params x tokens, 8 with recompute), reference and generation (2 x), encoder."""
    text = ((8 if checkpointing else 6) + 4) * (size.language_model + size.lm_head + size.projector) * work.sequence
    clips = completions // work.num_generations if work.share_audio_encoding else completions  # prefill, reference
    policy_clips = completions // work.micro_batch * work.clips_per_micro_batch  # a split group: once in each
    encoder_pass = 2 * size.audio_encoder * work.encoder_positions(size)
    return text * completions + encoder_pass * ((4 if checkpointing else 3) * policy_clips + 2 * clips)


# One setup's bytes per GPU (generation: the whole bf16 model gathered by ZeRO-3 plus the KV cache), host, step time.
Row = namedtuple(
    "Row", "gpus offload checkpointing model_states reference activations generation host step_seconds per_gpu"
)


def plan(size: ModelSize, work: Workload, args) -> list[Row]:
    """Every GPU count, offload and checkpointing, for the paper's global batch (gradient accumulation on fewer GPUs)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    rows = []
    for gpus in GPU_COUNTS:
        gpu_work = work._replace(grad_accum=max(1, PAPER_COMPLETIONS_PER_STEP // (gpus * work.micro_batch)))
        generation = 2 * size.total + work.micro_batch * work.sequence * size.layers * 2 * size.kv_hidden * 2
        for offload in (False, True):
            # Trained parameters: DeepSpeed's estimate; the frozen vision tower and reference model: bf16, sharded.
            host, states, _ = estimate_zero3_model_states_mem_needs(
                size.total - size.vision, size.largest_layer, gpus, 1, offload, offload, zero_init=True
            )
            frozen, reference = 2 * size.vision, 2 * size.total
            host += frozen + reference if offload else 0.0
            states, reference = (states, 0.0) if offload else (states + frozen / gpus, reference / gpus)
            for ckpt in (False, True):
                activations = activation_bytes(size, gpu_work, ckpt, args.bytes_per_token_hidden)
                seconds = step_flops(size, gpu_work, PAPER_COMPLETIONS_PER_STEP, ckpt) / (gpus * args.tflops * 1e12)
                per_gpu = states + reference + max(activations, generation) + args.overhead_gb * GB
                rows.append(
                    Row(gpus, offload, ckpt, states, reference, activations, generation, host, seconds, per_gpu)
                )
    return rows


def format_report(size: ModelSize, work: Workload, rows: list[Row], args, recipe: dict) -> str:
    def gb(x: float) -> str:
        return f"{x / GB:6.1f}"

    memory, ckpt = args.gpu_memory_gb * GB, bool(recipe.get("gradient_checkpointing", False))
    parts = {"audio encoder": (size.audio_encoder, ""), "projector": (size.projector, ""),
             "vision encoder": (size.vision, "  (frozen: audio only)"),
             "language model": (size.language_model, "  (incl. input embeddings)"), "lm head": (size.lm_head, ""),
             "total": (size.total, f"  (largest single module {size.largest_layer / 1e6:.0f} M)")}  # fmt: skip
    lines = [f"{size.name} parameters ({args.arch_source})"]
    lines += [f"  {name:<15} {count / 1e9:7.3f} B{note}" for name, (count, note) in parts.items() if count]
    lines += [
        "",
        f"Workload per GPU: micro-batch {work.micro_batch} completions x {work.sequence} tokens ({work.audio_tokens} "
        f"audio + {work.text_tokens} text + {work.completion_tokens} completion), G = {work.num_generations}, "
        f"share_audio_encoding={work.share_audio_encoding}, step = {PAPER_COMPLETIONS_PER_STEP} completions, "
        f"{args.tflops:g} TFLOP/s per GPU",
        "",
        f"GPUs offload ckpt | states    ref   activ  generate  total/GPU fits{args.gpu_memory_gb:>3.0f}GB | host RAM | "
        "s/step>=",
    ]
    for r in rows:
        lines.append(
            f"{r.gpus:4d} {'cpu' if r.offload else 'no':>7} {'yes' if r.checkpointing else 'no':>4} | "
            f"{gb(r.model_states)} {gb(r.reference)} {gb(r.activations)} {gb(r.generation)}    {gb(r.per_gpu)}      "
            f"{'yes' if r.per_gpu <= memory else 'NO':>3}  | {gb(r.host)}   | {r.step_seconds:8.2f}"
        )
    choices = []  # per GPU count, the first config that fits: ZeRO-3 without offload (faster), else with offload
    for gpus in GPU_COUNTS:
        fit = sorted(r.offload for r in rows if (r.gpus, r.checkpointing) == (gpus, ckpt) and r.per_gpu <= memory)
        choices.append(f"{gpus} GPU: " + (f"configs/ds_zero3{'_offload' * fit[0]}.json" if fit else "none fits"))
    lines += [
        f"(GB = GiB. total/GPU = states + ref + max(activ, generate) + overhead {args.overhead_gb:g} GB; host RAM for "
        "the whole host; s/step is a FLOP lower bound.)",
        "",
        f"Recommendation (gradient_checkpointing={str(ckpt).lower()} as in the recipe, {args.gpu_memory_gb:g} GB "
        "GPUs): " + "; ".join(choices),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True, help="GRPO recipe YAML (micro-batch, G, completion length).")
    parser.add_argument("--arch_config", help="config.json to plan for (default: the recipe's model_name_or_path).")
    parser.add_argument("--audio_tokens", type=int, default=750, help="Audio tokens per prompt (750 = 30 s).")
    parser.add_argument("--text_tokens", type=int, default=100, help="Text tokens per prompt.")
    parser.add_argument("--completion_tokens", type=int, help="Completion tokens (default: max_completion_length).")
    parser.add_argument("--tflops", type=float, default=400.0, help="Achievable bf16 TFLOP/s per GPU.")
    parser.add_argument("--gpu_memory_gb", type=float, default=80.0)
    parser.add_argument("--overhead_gb", type=float, default=3.0, help="CUDA context and allocator slack per GPU.")
    parser.add_argument("--bytes_per_token_hidden", type=float, default=40.0, help="Activation bytes/token/unit/layer.")
    parser.add_argument("--no_share_audio_encoding", action="store_true", help="One audio encoding per completion.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the estimator needs no GPU; silence deepspeed's CUDA warning
    args = parse_args(argv)
    with open(args.recipe, encoding="utf-8") as f:
        recipe = yaml.safe_load(f)
    model = recipe.get("model_name_or_path", "Qwen/Qwen2-Audio-7B-Instruct")
    path = args.arch_config or os.path.join(model, "config.json")  # else a known hub id, else a local model folder
    if not args.arch_config and model in KNOWN_MODELS:
        size, args.arch_source = KNOWN_MODELS[model], f"{model}'s config.json"
    elif os.path.isfile(path):
        size, args.arch_source = count_parameters(build_meta_model(path)), f"meta device, from {path}"
    else:
        raise SystemExit(f"No config.json for model_name_or_path {model!r} (known: {', '.join(KNOWN_MODELS)}): pass "
                         "--arch_config with its config.json.")  # fmt: skip
    completion_tokens = args.completion_tokens or int(recipe.get("max_completion_length", 256))
    share = not args.no_share_audio_encoding and recipe.get("share_audio_encoding", True)
    batch, generations = int(recipe.get("per_device_train_batch_size", 8)), int(recipe.get("num_generations", 8))
    work = Workload(batch, generations, args.audio_tokens, args.text_tokens, completion_tokens, share)
    report = format_report(size, work, plan(size, work, args), args, recipe)
    print(report)
    return report


if __name__ == "__main__":
    main()
