"""Memory and time plan for GRPO on Qwen2-Audio-7B-Instruct or the Qwen2.5-Omni-7B thinker: which DeepSpeed config
fits on 1-8 GPUs of 80 GB.

    python -m r1aqa.plan --recipe configs/grpo_qwen2_audio_7b.yaml
    python -m r1aqa.plan --recipe configs/grpo_qwen2_audio_7b.yaml --audio_tokens 250 --completion_tokens 64 \
        --tflops 300      # a typical AVQA clip (10 s) and answer, a slower GPU
    python -m r1aqa.plan --recipe configs/grpo_qwen2_5_omni_7b.yaml   # the Qwen2.5-Omni-7B thinker

Builds the real architecture on the meta device (no weights, no download) from the architecture config the recipe's
`model_name_or_path` implies (`ARCH_CONFIGS`: configs/qwen2_audio_7b_instruct_config.json, the published config of
docs/recipe.md §9; configs/qwen2_5_omni_7b_thinker_config.json, §11), or a local model folder's config.json, or
`--arch_config`, and counts its parameters per module. A Qwen2.5-Omni thinker's vision tower is frozen in audio-only
training: it counts in the bf16 weights (policy, reference, generation) but has no gradients or optimizer state.
Per GPU it then adds up, for 1, 2, 4 and 8 GPUs on one host, with and without CPU offload and gradient checkpointing:

- model states (bf16 parameters, fp32 master weights, Adam moments, gradients): DeepSpeed's own ZeRO-3 estimator
  (`estimate_zero3_model_states_mem_needs`, zero_init, its default 1.5x buffer factor for host memory);
- the frozen reference model: bf16 parameters, sharded across GPUs by ZeRO-3 (on the host with offload);
- the larger of two phase peaks: generation (ZeRO-3 gathers the whole bf16 model on every GPU for `generate`, plus the
  KV cache of one micro-batch) and the loss forward/backward (activations, below);
- a fixed allowance for the CUDA context and allocator slack (`--overhead_gb`).

Activations (rough, stated so they can be argued with): per completion, sequence length = prompt (audio tokens +
text tokens) + completion tokens; a micro-batch of `per_device_train_batch_size` completions. Without checkpointing a
decoder layer keeps ~`--bytes_per_token_hidden` (40) bytes per token per hidden unit in bf16 (Korthikanti et al.'s 34
for a 4h-MLP transformer with memory-efficient attention, plus Qwen2's wider SwiGLU MLP); with checkpointing it keeps
its 2-byte input per hidden unit, plus one layer's full activations during recompute. The audio encoder always sees 1500
positions (30 s) at ~34 bytes per position per unit (Qwen2.5-Omni's encoder packs the batch and sees only the clip's
own frames: 2 positions per audio token); `share_audio_encoding` (the default) keeps one clip's encoder
activations per distinct prompt in the micro-batch instead of one per completion (TRL shuffles the generation batch
before splitting it, so a micro-batch holds about min(micro-batch, prompts per GPU per step) prompts). The fused LM
head never materialises logits.

Step time lower bound: FLOPs / (GPUs x `--tflops`). Language model: 6 x params x tokens for the policy forward and
backward (8 x with checkpointing: one more forward), 2 x params x tokens for the reference pass and for generation
(prefill + decode). Audio encoder: 2 x its params x 1500 positions per encoded clip and pass (x3 for forward +
backward, x4 with checkpointing). Computed for the paper's global batch (16 prompts x G = 128 completions per step),
reached on fewer GPUs by gradient accumulation (the `grad_acc` column).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

GB = 2**30
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ARCH_CONFIG = CONFIGS / "qwen2_audio_7b_instruct_config.json"
# The architecture config of each hub model a recipe may name (their published config.json, docs/recipe.md §9, §11).
ARCH_CONFIGS = {
    "Qwen/Qwen2-Audio-7B-Instruct": ARCH_CONFIG,
    "Qwen/Qwen2.5-Omni-7B": CONFIGS / "qwen2_5_omni_7b_thinker_config.json",
}
GPU_COUNTS = (1, 2, 4, 8)
PAPER_COMPLETIONS_PER_STEP = 128  # 16 prompts x 8 completions (docs/recipe.md §6)
ENCODER_BYTES_PER_POSITION_HIDDEN = 34  # Whisper-style layers: 4h GELU MLP, memory-efficient attention


@dataclass
class ModelSize:
    audio_encoder: int
    projector: int
    language_model: int  # backbone incl. the input embeddings
    lm_head: int
    largest_layer: int  # the largest module's own parameters (DeepSpeed's "largest layer")
    hidden: int
    layers: int
    encoder_hidden: int
    encoder_layers: int
    encoder_positions: int
    vision: int = 0  # Qwen2.5-Omni's vision tower: frozen, never run in audio-only training
    kv_hidden: int = 0  # key/value width per layer (grouped-query attention); 0: same as `hidden`
    packed_encoder: bool = False  # the audio encoder sees only the clips' frames, not a fixed 30 s window
    name: str = "Qwen2-Audio-7B-Instruct"

    @property
    def total(self) -> int:
        return self.audio_encoder + self.projector + self.language_model + self.lm_head + self.vision

    @property
    def trainable(self) -> int:
        return self.total - self.vision

    @property
    def text_params(self) -> int:
        """Parameters every text token goes through (language model + head + projector)."""
        return self.language_model + self.lm_head + self.projector


def build_meta_model(config_path: str | os.PathLike = ARCH_CONFIG):
    """The model of `config_path` (Qwen2-Audio, or a Qwen2.5-Omni thinker; a full Omni config gives its thinker) on
    the meta device: the real module tree, no memory."""
    import json

    import torch
    import transformers

    from r1aqa.models import QWEN2_5_OMNI, family_of_config

    config = json.loads(Path(config_path).read_text())
    family = family_of_config(config)
    if family.name == QWEN2_5_OMNI:
        config = config.get("thinker_config", config)  # a full Omni checkpoint's config holds the thinker's
        config_class = transformers.Qwen2_5OmniThinkerConfig
    else:
        config_class = transformers.Qwen2AudioConfig
    config = config_class(**{key: value for key, value in config.items() if key != "model_type"})
    with torch.device("meta"):
        return getattr(transformers, family.model_class)(config)


def count_parameters(model) -> ModelSize:
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    # DeepSpeed's `model_to_params` does this too, but de-duplicates by `data_ptr()`, which is 0 for every meta tensor.
    largest_layer = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    text, audio = model.config.get_text_config(), model.config.audio_config
    projector = getattr(model.model, "multi_modal_projector", None)  # Qwen2.5-Omni: inside the audio encoder
    vision = getattr(model.model, "visual", None)
    packed = audio.model_type == "qwen2_5_omni_audio_encoder"
    size = ModelSize(
        audio_encoder=count(model.model.audio_tower),
        projector=count(projector) if projector is not None else 0,
        language_model=count(model.model.language_model),
        lm_head=count(model.lm_head),
        largest_layer=largest_layer,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        encoder_hidden=audio.d_model,
        encoder_layers=audio.encoder_layers,
        encoder_positions=audio.max_source_positions,
        vision=count(vision) if vision is not None else 0,
        kv_hidden=text.hidden_size * text.num_key_value_heads // text.num_attention_heads,
        packed_encoder=packed,
        name="Qwen2.5-Omni thinker" if packed else "Qwen2-Audio",
    )
    assert size.total == count(model), "every parameter belongs to one of the modules"
    return size


def encoder_positions(size: ModelSize, work: Workload) -> int:
    """Positions the audio encoder runs per clip: the whole window (Qwen2-Audio), or the clip's own frames after the
    stride-2 convolution, 2 per audio token (Qwen2.5-Omni, whose encoder packs the clips)."""
    if size.packed_encoder:
        return min(size.encoder_positions, 2 * work.audio_tokens)
    return size.encoder_positions


@dataclass
class Workload:
    """One GPU's share of a step, from the recipe."""

    micro_batch: int  # completions per forward pass
    num_generations: int
    audio_tokens: int
    text_tokens: int
    completion_tokens: int
    share_audio_encoding: bool
    grad_accum: int = 1  # micro-batches per generation batch (TRL: steps_per_generation = gradient_accumulation_steps)

    @property
    def prompt_tokens(self) -> int:
        return self.audio_tokens + self.text_tokens

    @property
    def sequence(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def prompts_per_generation_batch(self) -> int:
        return max(1, self.micro_batch * self.grad_accum // self.num_generations)

    @property
    def clips_per_micro_batch(self) -> int:
        """Clips the encoder sees per policy micro-batch. Shared: one per distinct prompt in the micro-batch. TRL
        shuffles the generation batch before splitting it into micro-batches, so a micro-batch holds completions of
        (nearly) every prompt of the generation batch: min(micro-batch, prompts per generation batch)."""
        if not self.share_audio_encoding:
            return self.micro_batch
        return min(self.micro_batch, self.prompts_per_generation_batch)


def activation_bytes(size: ModelSize, work: Workload, checkpointing: bool, bytes_per_token_hidden: float) -> float:
    tokens = work.micro_batch * work.sequence
    full_layer = bytes_per_token_hidden * size.hidden * tokens
    positions = encoder_positions(size, work)
    encoder_layer = ENCODER_BYTES_PER_POSITION_HIDDEN * size.encoder_hidden * positions
    encoder_layer *= work.clips_per_micro_batch
    if checkpointing:
        kept = 2 * size.hidden * tokens * size.layers + 2 * size.encoder_hidden * positions * (
            work.clips_per_micro_batch * size.encoder_layers
        )
        return kept + max(full_layer, encoder_layer)
    return full_layer * size.layers + encoder_layer * size.encoder_layers


def generation_bytes(size: ModelSize, work: Workload) -> float:
    """ZeRO-3 gathers the full bf16 model for `generate`; the KV cache holds K and V of every layer in bf16."""
    kv_cache = work.micro_batch * work.sequence * size.layers * 2 * (size.kv_hidden or size.hidden) * 2
    return 2 * size.total + kv_cache


def step_flops(size: ModelSize, work: Workload, completions: int, checkpointing: bool) -> float:
    tokens = completions * work.sequence
    policy = (8 if checkpointing else 6) * size.text_params * tokens
    reference = 2 * size.text_params * tokens
    generation = 2 * size.text_params * tokens
    prompts = completions // work.num_generations
    clips = prompts if work.share_audio_encoding else completions  # generation prefill, reference pass
    micro_batches = completions // work.micro_batch
    policy_clips = micro_batches * work.clips_per_micro_batch  # a group split across micro-batches: once in each
    encoder_pass = 2 * size.audio_encoder * encoder_positions(size, work)
    encoder = encoder_pass * ((4 if checkpointing else 3) * policy_clips + 2 * clips)
    return policy + reference + generation + encoder


@dataclass
class Row:
    gpus: int
    offload: bool
    checkpointing: bool
    model_states: float
    reference: float
    activations: float
    generation: float
    overhead: float
    host: float
    step_seconds: float
    grad_accum: int
    clips: int  # audio clips the encoder holds activations for in one policy micro-batch

    @property
    def per_gpu(self) -> float:
        return self.model_states + self.reference + max(self.activations, self.generation) + self.overhead


def plan(size: ModelSize, work: Workload, args) -> list[Row]:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    rows = []
    for gpus in GPU_COUNTS:
        grad_accum = max(1, PAPER_COMPLETIONS_PER_STEP // (gpus * work.micro_batch))
        gpu_work = replace(work, grad_accum=grad_accum)  # the paper's global batch on `gpus` GPUs
        for offload in (False, True):
            # Trainable parameters: bf16 weights, fp32 master weights, Adam moments, gradients. Frozen ones (the
            # vision tower): bf16 weights only, sharded like the rest (on the host with parameter offload).
            host_states, gpu_states, _ = estimate_zero3_model_states_mem_needs(
                total_params=size.trainable,
                largest_layer_params=size.largest_layer,
                num_gpus_per_node=gpus,
                num_nodes=1,
                cpu_offload=offload,
                cpu_offload_params=offload,
                zero_init=True,
            )
            frozen = 2 * size.vision
            gpu_states += 0.0 if offload else frozen / gpus
            host_states += frozen if offload else 0.0
            reference_gpu = 0.0 if offload else 2 * size.total / gpus
            reference_host = 2 * size.total if offload else 0.0
            for checkpointing in (False, True):
                flops = step_flops(size, gpu_work, PAPER_COMPLETIONS_PER_STEP, checkpointing)
                rows.append(
                    Row(
                        gpus=gpus,
                        offload=offload,
                        checkpointing=checkpointing,
                        model_states=gpu_states,
                        reference=reference_gpu,
                        activations=activation_bytes(size, gpu_work, checkpointing, args.bytes_per_token_hidden),
                        generation=generation_bytes(size, gpu_work),
                        overhead=args.overhead_gb * GB,
                        host=host_states + reference_host,
                        step_seconds=flops / (gpus * args.tflops * 1e12),
                        grad_accum=grad_accum,
                        clips=gpu_work.clips_per_micro_batch,
                    )
                )
    return rows


def config_name(offload: bool) -> str:
    return "configs/ds_zero3_offload.json" if offload else "configs/ds_zero3.json"


def _shown(path) -> str:
    """A config path as the report shows it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(CONFIGS.parent)) if path.is_relative_to(CONFIGS.parent) else str(path)


def recommendation(rows: list[Row], gpu_memory: float, checkpointing: bool) -> str:
    """Per GPU count, the first config that fits: ZeRO-3 without offload (faster), else with offload."""
    choices = []
    for gpus in GPU_COUNTS:
        fitting = [r for r in rows if r.gpus == gpus and r.checkpointing == checkpointing and r.per_gpu <= gpu_memory]
        fitting.sort(key=lambda r: r.offload)
        choices.append(f"{gpus} GPU: {config_name(fitting[0].offload) if fitting else 'none fits'}")
    return "; ".join(choices)


def format_report(size: ModelSize, work: Workload, rows: list[Row], args, recipe: dict) -> str:
    def gb(x: float) -> str:
        return f"{x / GB:6.1f}"

    parts = [f"  audio encoder   {size.audio_encoder / 1e9:7.3f} B"]
    if size.projector:
        parts.append(f"  projector       {size.projector / 1e9:7.3f} B")
    if size.vision:
        parts.append(f"  vision encoder  {size.vision / 1e9:7.3f} B  (frozen: audio only)")
    lines = [
        f"{size.name} parameters (meta device, from {_shown(args.arch_config)})",
        *parts,
        f"  language model  {size.language_model / 1e9:7.3f} B  (incl. input embeddings)",
        f"  lm head         {size.lm_head / 1e9:7.3f} B",
        f"  total           {size.total / 1e9:7.3f} B  (largest single module {size.largest_layer / 1e6:.0f} M)",
        "",
        f"Workload per GPU: micro-batch {work.micro_batch} completions x {work.sequence} tokens "
        f"({work.audio_tokens} audio + {work.text_tokens} text + {work.completion_tokens} completion), "
        f"G = {work.num_generations}, share_audio_encoding={work.share_audio_encoding}, "
        f"step = {PAPER_COMPLETIONS_PER_STEP} completions, {args.tflops:g} TFLOP/s per GPU",
        "",
        f"GPUs offload ckpt | states    ref   activ  generate  total/GPU fits{args.gpu_memory_gb:>3.0f}GB | host RAM | grad_acc clips  s/step>=",
    ]
    for r in rows:
        fits = "yes" if r.per_gpu <= args.gpu_memory_gb * GB else "NO"
        lines.append(
            f"{r.gpus:4d} {'cpu' if r.offload else 'no':>7} {'yes' if r.checkpointing else 'no':>4} |"
            f" {gb(r.model_states)} {gb(r.reference)} {gb(r.activations)} {gb(r.generation)}    {gb(r.per_gpu)}"
            f"      {fits:>3}  | {gb(r.host)}   | {r.grad_accum:8d} {r.clips:5d} {r.step_seconds:8.2f}"
        )
    lines += [
        "(GB = GiB. total/GPU = states + ref + max(activ, generate) + overhead "
        f"{args.overhead_gb:g} GB; host RAM for the whole host; grad_acc reaches {PAPER_COMPLETIONS_PER_STEP} "
        "completions per step; clips = audio encodings per policy micro-batch; s/step is a FLOP lower bound.)",
        "",
    ]
    checkpointing = bool(recipe.get("gradient_checkpointing", False))
    lines.append(
        f"Recommendation (gradient_checkpointing={str(checkpointing).lower()} as in the recipe, "
        f"{args.gpu_memory_gb:g} GB GPUs): " + recommendation(rows, args.gpu_memory_gb * GB, checkpointing)
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True, help="GRPO recipe YAML (micro-batch, G, completion length).")
    parser.add_argument(
        "--arch_config",
        help="config.json to build (Qwen2-Audio or Qwen2.5-Omni). Default: the one the recipe's model_name_or_path "
        "implies (a known hub id, or a local model folder's config.json).",
    )
    parser.add_argument("--audio_tokens", type=int, default=750, help="Audio tokens per prompt (750 = 30 s).")
    parser.add_argument("--text_tokens", type=int, default=100, help="Text tokens per prompt.")
    parser.add_argument(
        "--completion_tokens", type=int, default=None, help="Completion tokens (default: max_completion_length)."
    )
    parser.add_argument("--tflops", type=float, default=400.0, help="Achievable bf16 TFLOP/s per GPU.")
    parser.add_argument("--gpu_memory_gb", type=float, default=80.0)
    parser.add_argument("--overhead_gb", type=float, default=3.0, help="CUDA context and allocator slack per GPU.")
    parser.add_argument(
        "--bytes_per_token_hidden", type=float, default=40.0, help="Activation bytes per token per hidden unit/layer."
    )
    parser.add_argument(
        "--no_share_audio_encoding", action="store_true", help="Plan for one audio encoding per completion."
    )
    return parser.parse_args(argv)


def implied_arch_config(recipe: dict) -> str:
    """The architecture config of the recipe's `model_name_or_path`: `ARCH_CONFIGS` for known hub ids, a local
    folder's config.json, else an error saying to pass --arch_config."""
    model = recipe.get("model_name_or_path", "Qwen/Qwen2-Audio-7B-Instruct")
    if model in ARCH_CONFIGS:
        return str(ARCH_CONFIGS[model])
    local = os.path.join(model, "config.json")
    if os.path.isfile(local):
        return local
    raise SystemExit(
        f"No architecture config for model_name_or_path {model!r} (known: {', '.join(ARCH_CONFIGS)}). Pass "
        "--arch_config with its config.json."
    )


def main(argv: list[str] | None = None) -> str:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the estimator needs no GPU; silence deepspeed's CUDA warning
    args = parse_args(argv)
    with open(args.recipe) as f:
        recipe = yaml.safe_load(f)
    args.arch_config = args.arch_config or implied_arch_config(recipe)
    size = count_parameters(build_meta_model(args.arch_config))
    work = Workload(
        micro_batch=int(recipe.get("per_device_train_batch_size", 8)),
        num_generations=int(recipe.get("num_generations", 8)),
        audio_tokens=args.audio_tokens,
        text_tokens=args.text_tokens,
        completion_tokens=args.completion_tokens or int(recipe.get("max_completion_length", 256)),
        share_audio_encoding=not args.no_share_audio_encoding and recipe.get("share_audio_encoding", True),
    )
    report = format_report(size, work, plan(size, work, args), args, recipe)
    print(report)
    return report


if __name__ == "__main__":
    main()
