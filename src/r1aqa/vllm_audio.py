"""vLLM with the audio: GRPO rollouts (`use_vllm: true`, colocate mode) and evaluation's `--backend vllm`. vLLM expands
`<|AUDIO|>` itself, loads the hub's parameter names and keeps stale audio encodings after new weights."""

from __future__ import annotations

import glob
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from trl.generation.vllm_generation import VLLMGeneration, empty_cache
from trl.trainer.utils import ensure_master_addr_port

from r1aqa.audio import SAMPLING_RATE
from r1aqa.models import placeholder_token_ids

AUDIO_TOKEN = "<|AUDIO|>"
SUPPRESS_BIAS = -100.0  # vLLM clamps logit biases to [-100, 100]; e^-100 rounds a placeholder's probability to 0
# transformers 5 parameter names (and the 5.16-5.20 save format) -> the hub checkpoint names vLLM loads. First match.
_NAME_PREFIXES = (
    ("language_model.model.model.", "language_model.model."),  # saved by transformers 5.16-5.20
    ("model.language_model.", "language_model.model."),
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


def hub_name(name: str) -> str:
    """The hub checkpoint name (vLLM's) of a transformers-5 parameter or saved tensor name; hub names pass."""
    old, new = next(((old, new) for old, new in _NAME_PREFIXES if name.startswith(old)), ("", ""))
    return new + name[len(old) :]


def collapse_audio_tokens(ids: list[int], audio_token_id: int) -> list[int]:
    """`ids` with every run of `<|AUDIO|>` tokens (the processor's expansion) reduced to one token."""
    return [int(t) for i, t in enumerate(ids) if not (t == audio_token_id and i and ids[i - 1] == audio_token_id)]


def audio_prompt(ids: list[int], clips: list[np.ndarray], audio_token_id: int) -> dict:
    """A vLLM prompt: one `<|AUDIO|>` per clip (given the processor's expansion vLLM silently generates wrong output)."""
    ids = collapse_audio_tokens(ids, audio_token_id)
    if (placeholders := ids.count(audio_token_id)) != len(clips):
        raise ValueError(f"The prompt has {placeholders} audio placeholders for {len(clips)} audio clips.")
    prompt: dict[str, Any] = {"prompt_token_ids": ids}
    if clips:
        audio = [(np.asarray(clip, dtype=np.float32), SAMPLING_RATE) for clip in clips]
        prompt["multi_modal_data"] = {"audio": audio[0] if len(audio) == 1 else audio}
    return prompt


def check_audio_expansion(llm, processor, seconds: Iterable[float] = (1, 10, 30)) -> dict:
    """Refuse to start unless vLLM expands `<|AUDIO|>` of a `seconds` clip into as many positions as `processor`, which
    scores the completions (vLLM's input processor only: works while the engine sleeps). {seconds: (HF, vLLM)}."""
    from vllm import SamplingParams

    engine, audio_token_id = llm.llm_engine, processor.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    text, noise, counts = f"<|audio_bos|>{AUDIO_TOKEN}<|audio_eos|>?", np.random.default_rng(0), {}
    for length in seconds:
        clip = (0.01 * noise.standard_normal(int(length * SAMPLING_RATE))).astype(np.float32)
        ids = list(processor(text=[text], audio=[clip], sampling_rate=SAMPLING_RATE)["input_ids"][0])
        prompt, params = audio_prompt(ids, [clip], audio_token_id), SamplingParams(max_tokens=1)
        tasks = engine.get_supported_tasks()
        request = engine.input_processor.process_inputs(str(length), prompt, params, supported_tasks=tasks)
        counts[length] = (ids.count(audio_token_id), list(request.prompt_token_ids).count(audio_token_id))
    if differ := {length: pair for length, pair in counts.items() if pair[0] != pair[1]}:
        clips = ", ".join(f"({length} s clip: HF {hf}, vLLM {ours} positions)" for length, (hf, ours) in differ.items())
        advice = "give vLLM's model folder the scoring processor's files (preprocessor_config.json, tokenizer)"
        raise RuntimeError(f"vLLM and the HF processor expand the audio placeholder differently {clips}: {advice}.")
    return counts


def _scannable(value) -> bool:
    try:
        return not hasattr(value, "__dict__") or hasattr(vars(value), "get")
    except Exception:
        return False


def start_engine(model_path: str, dtype, device: str, **settings):
    """`vllm.LLM` for Qwen2-Audio: one clip per prompt, the policy's dtype (vLLM would pick bf16 on CPU), dummy weights
    (the real ones come through `load_weights`). vLLM 0.32's CPU start-up calls `vars(value).get` on every module
    attribute and dies on llvmlite's (loaded once librosa resampled): such modules are hidden while it starts."""
    from vllm import LLM

    with warnings.catch_warnings():  # reading some attributes warns (deprecated aliases)
        warnings.simplefilter("ignore")
        modules = {name: vars(module) for name, module in list(sys.modules.items()) if hasattr(module, "__dict__")}
        hidden = {
            name: sys.modules.pop(name)
            for name, namespace in modules.items()
            if isinstance(namespace, dict) and not all(map(_scannable, list(namespace.values())))
        }
    try:
        mm_limit = {"audio": 1, "image": 0, "video": 0}
        return LLM(
            model=model_path,
            **settings,
            limit_mm_per_prompt=mm_limit,
            load_format="dummy",
            dtype=str(dtype).removeprefix("torch."),
            enforce_eager=device == "cpu",
        )
    finally:
        sys.modules.update(hidden)


def load_weights(llm, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load `(name, tensor)` pairs (any `hub_name` spelling) into the engine; drop its encoder and prefix caches."""
    runner = llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=((hub_name(n), t) for n, t in weights), is_checkpoint_format=True)
    llm.llm_engine.reset_encoder_cache()
    llm.reset_prefix_cache()


def checkpoint_weights(files: list[str]):
    """Every tensor of these safetensors files, one at a time."""
    from safetensors import safe_open

    for file in files:
        with safe_open(file, framework="pt") as f:
            yield from ((name, f.get_tensor(name)) for name in f.keys())  # noqa: SIM118 - safe_open is not a dict


def load_llm(model_path: str, device: str, seed: int = 0, max_model_len: int | None = None):
    """A vLLM engine for a saved Qwen2-Audio folder, bf16 on GPU and float32 on CPU as the HF backend."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: weights load from this process
    if not (files := sorted(glob.glob(os.path.join(model_path, "model*.safetensors")))):
        raise FileNotFoundError(f"{model_path}: no model*.safetensors weights (vLLM loads safetensors only here).")
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    llm = start_engine(model_path, dtype, device, seed=seed, max_model_len=max_model_len)
    load_weights(llm, checkpoint_weights(files))
    return llm


class AudioLLM:
    """A `vllm.LLM` whose `generate` sends TRL's rows (clips in TRL's image slot) as audio prompts; the rest is `_llm`'s."""

    def __init__(self, llm, audio_token_id: int):
        self._llm, self.audio_token_id = llm, audio_token_id

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def generate(self, prompts, *args, **kwargs):
        rows = []
        for row in prompts:
            clips = row.get("multi_modal_data", {}).get("image", [])  # TRL unwraps a single image
            clips = list(clips) if isinstance(clips, (list, tuple)) else [clips]
            rows.append(audio_prompt(list(row["prompt_token_ids"]), clips, self.audio_token_id))
        return self._llm.generate(rows, *args, **kwargs)


class AudioVLLMGeneration(VLLMGeneration):
    """TRL's vLLM backend for Qwen2-Audio, colocate mode only (TRL's server carries images only). `_init_vllm` is TRL's
    start-up with our engine (TRL 1.16 has no hook for engine arguments); `sync_weights` goes through `load_weights`."""

    @classmethod
    def for_trainer(cls, trainer) -> AudioVLLMGeneration:
        """As `GRPOTrainer.__init__` builds TRL's, stopping at the trainer's end ids and never sampling a placeholder."""
        args, kwargs = trainer.args, dict(trainer.args.generation_kwargs or {})
        kwargs["stop_token_ids"] = sorted({*(kwargs.get("stop_token_ids") or []), *map(int, trainer.eos_token_ids)})
        suppressed = dict.fromkeys(placeholder_token_ids(trainer.model.config), SUPPRESS_BIAS)
        kwargs["logit_bias"] = {**(kwargs.get("logit_bias") or {}), **suppressed}
        vllm = ("mode", "structured_outputs_regex", "tensor_parallel_size", "model_impl", "gpu_memory_utilization")
        sampling = ("repetition_penalty", "temperature", "top_p", "top_k", "min_p", "max_completion_length")
        settings = {name: getattr(args, f"vllm_{name}") for name in (*vllm, "max_model_length", "enable_sleep_mode")}
        settings |= {name: getattr(trainer, name) for name in sampling}
        batch = args.per_device_train_batch_size * args.vllm_tensor_parallel_size * args.steps_per_generation
        settings |= {"max_num_seqs": batch, "trust_remote_code": args.trust_remote_code, "generation_kwargs": kwargs}
        return cls(trainer.model, trainer.accelerator, trainer.processing_class, **settings)

    def _init_vllm(self):
        if self.mode != "colocate":
            raise ValueError("use_vllm with an audio model needs vllm_mode: colocate (TRL's server mode sends images).")
        accelerator, tp = self.accelerator, self.tensor_parallel_size
        if tp > 1:  # as TRL: one group per `tp` consecutive ranks
            groups = [list(range(i, i + tp)) for i in range(0, accelerator.num_processes, tp)]
            self.tp_group, _ = torch.distributed.new_subgroups_by_enumeration(groups)
        ranks = (accelerator.process_index, accelerator.local_process_index, accelerator.num_processes)
        os.environ.update(zip(("RANK", "LOCAL_RANK", "WORLD_SIZE"), map(str, ranks), strict=True))
        ensure_master_addr_port()
        same = ("gpu_memory_utilization", "max_num_seqs", "enable_sleep_mode", "model_impl", "trust_remote_code")
        settings = {name: getattr(self, name) for name in same} | {"distributed_executor_backend": "external_launcher"}
        settings |= {"tensor_parallel_size": tp, "max_model_len": self.max_model_length, "max_num_batched_tokens": 4096}
        settings["seed"] = accelerator.process_index // tp  # the same within a tensor-parallel group
        settings["logprobs_mode"] = "processed_logprobs"  # TRL's importance sampling needs the processed log-probs
        llm = start_engine(self.model.name_or_path, self.model.dtype, accelerator.device.type, **settings)
        check_audio_expansion(llm, self.processing_class)
        self.llm = AudioLLM(llm, self.processing_class.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN))
        if self.enable_sleep_mode:
            self.llm.sleep(level=2)
        self._llm_weights_sleeping = self.enable_sleep_mode
        accelerator.wait_for_everyone()

    def sync_weights(self):
        if self.enable_sleep_mode:  # as TRL: map the weights' memory before writing to it
            empty_cache()
            self.llm.wake_up(tags=["weights"])
            self._llm_weights_sleeping = False
        # vLLM holds a layer's tensors until the layer is complete; a ZeRO-3 gather is released at the next tensor.
        copy = self._dist.is_zero3
        load_weights(self.llm, ((n, p.detach().clone() if copy else p) for n, p in self._iter_named_params()))
