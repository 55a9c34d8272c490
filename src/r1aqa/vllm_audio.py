"""vLLM with the audio: GRPO rollouts (`use_vllm: true`, colocate mode) and the `--backend vllm` of evaluation.

TRL 1.16 sends vLLM images only: given Qwen2-Audio, its vLLM path generates from the text alone. vLLM itself runs
Qwen2-Audio with the audio passed as `multi_modal_data={"audio": (samples, 16000)}`; getting there takes four steps,
each of which fails silently or obscurely when skipped:

1. The prompt holds one `<|AUDIO|>` per clip. vLLM expands the placeholder itself, from the clip's length, exactly as
   the HF processor does; given the processor's already-expanded ids it produces wrong output without an error. The
   trainer and evaluation tokenize with the processor as before and `collapse_audio_tokens` undoes the expansion.
2. Weight names. transformers 5 names the parameters `model.language_model.*`, `model.audio_tower.*`,
   `model.multi_modal_projector.*`, `lm_head.*`; vLLM's Qwen2-Audio loads the hub checkpoint's names
   (`language_model.model.*`, `audio_tower.*`, `multi_modal_projector.*`, `language_model.lm_head.*`). transformers
   5.16-5.20 (the versions vLLM 0.32/0.33 accept) even save this model under `language_model.model.model.*`, which
   vLLM rejects. `hub_name` maps all three spellings, so the engine starts from dummy weights and the real ones are
   loaded through it: from the policy in training, from the checkpoint files in evaluation.
3. Loading. vLLM's `load_weights` takes checkpoint-format tensors only before the model is processed for its kernels
   (on CPU the packed linear layers reject them afterwards); the model runner's `reload_weights` takes a stream of
   checkpoint tensors and reprocesses each layer (the GPU runner's method, which the CPU runner inherits; run here on
   CPU only).
4. Caches. vLLM caches audio encodings; after new weights they are stale (and the engine reports `Encoder cache miss`
   on the next generate), so every load resets the encoder and prefix caches.

Rollouts are pinned to the trainer's tokens (`AudioVLLMGeneration.pin_rollout_tokens`): vLLM would otherwise stop
only at the ids of the `generation_config.json` in the model folder (and the tokenizer's eos), and would sample the
multimodal placeholders that HF rollouts suppress. Evaluation gives each request its own seed, derived from its item
(`item_seed`), so predictions do not depend on the batch an item lands in.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import torch
from trl.generation import vllm_generation as trl_vllm  # imports vLLM only when it is installed

from r1aqa.audio import SAMPLING_RATE

AUDIO_TOKEN = "<|AUDIO|>"
SUPPRESS_BIAS = -100.0  # vLLM clamps logit biases to [-100, 100]
# transformers 5 parameter names (and the 5.16-5.20 save format) -> the hub checkpoint names vLLM loads. First match.
_NAME_PREFIXES = (
    ("language_model.model.model.", "language_model.model."),  # saved by transformers 5.16-5.20
    ("model.language_model.", "language_model.model."),
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


def hub_name(name: str) -> str:
    """The hub checkpoint name (the one vLLM's Qwen2-Audio loads) of a transformers-5 parameter or saved tensor name.

    Hub names pass unchanged."""
    for old, new in _NAME_PREFIXES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def audio_clips(conversation: list[dict]) -> list[np.ndarray]:
    """The samples of a conversation's audio parts (loaded by `r1aqa.audio.prompts_with_audio`), in order."""
    return [
        part["audio"]
        for message in conversation
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") == "audio"
    ]


def collapse_audio_tokens(ids: list[int], audio_token_id: int) -> list[int]:
    """`ids` with every run of `<|AUDIO|>` tokens (the processor's expansion) reduced to one token."""
    out: list[int] = []
    for token in ids:
        if token == audio_token_id and out and out[-1] == audio_token_id:
            continue
        out.append(int(token))
    return out


def audio_prompt(ids: list[int], clips: list[np.ndarray], audio_token_id: int) -> dict:
    """A vLLM prompt: the token ids with one `<|AUDIO|>` per clip and the clips (16 kHz samples) as audio data."""
    ids = collapse_audio_tokens(ids, audio_token_id)
    placeholders = sum(token == audio_token_id for token in ids)
    if placeholders != len(clips):
        raise ValueError(f"The prompt has {placeholders} audio placeholders for {len(clips)} audio clips.")
    prompt: dict[str, Any] = {"prompt_token_ids": ids}
    if clips:
        audio = [(np.asarray(clip, dtype=np.float32), SAMPLING_RATE) for clip in clips]
        prompt["multi_modal_data"] = {"audio": audio[0] if len(audio) == 1 else audio}
    return prompt


# Clip lengths (seconds) whose prompt expansion is compared between vLLM and the HF processor at every engine start:
# short, AVQA's typical length, and the feature extractor's whole window.
EXPANSION_CHECK_SECONDS = (1, 10, 30)


def check_audio_expansion(llm, processor, seconds: Iterable[float] = EXPANSION_CHECK_SECONDS) -> dict:
    """Refuse to start unless vLLM expands `<|AUDIO|>` into as many audio positions as the HF `processor` does.

    vLLM expands the placeholder itself, with the processor files of the model folder it was started from; training and
    HF evaluation score the completions with `processor`. For each clip length, the same one-clip prompt goes through
    both (vLLM's input processor only: nothing is generated, so it also works while the engine sleeps). Returns
    {seconds: (HF positions, vLLM positions)}; raises RuntimeError on any difference.
    """
    from vllm import SamplingParams

    engine = llm.llm_engine
    audio_token_id = processor.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": None}, {"type": "text", "text": "?"}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    noise = np.random.default_rng(0)
    counts = {}
    for length in seconds:
        clip = (0.01 * noise.standard_normal(int(length * SAMPLING_RATE))).astype(np.float32)
        ids = list(processor(text=[text], audio=[clip], sampling_rate=SAMPLING_RATE)["input_ids"][0])
        request = engine.input_processor.process_inputs(
            f"r1aqa-audio-expansion-{length}s",
            audio_prompt(ids, [clip], audio_token_id),
            SamplingParams(max_tokens=1),
            supported_tasks=engine.get_supported_tasks(),
        )
        counts[length] = (ids.count(audio_token_id), list(request.prompt_token_ids).count(audio_token_id))
    differ = {length: pair for length, pair in counts.items() if pair[0] != pair[1]}
    if differ:
        raise RuntimeError(
            "vLLM and the HF processor expand the audio placeholder differently "
            + ", ".join(f"({length} s clip: HF {hf}, vLLM {ours} positions)" for length, (hf, ours) in differ.items())
            + ": completions would be generated and scored on different prompts. Give the model folder vLLM starts "
            "from the same processor files (preprocessor_config.json, tokenizer) as the processor used for scoring."
        )
    return counts


def engine_kwargs(dtype: torch.dtype | str, device: str) -> dict:
    """What `vllm.LLM` needs for Qwen2-Audio beyond the model path.

    - `limit_mm_per_prompt`: one clip per prompt (R1-AQA's prompts have one) and no image or video inputs.
    - `dtype`: the policy's (TRL leaves it to vLLM, which picks bf16 on CPU even for a float32 model).
    - `load_format="dummy"`: random weights at start-up; the real ones come through `load_weights` (name mapping).
    - `enforce_eager` on CPU: no graph capture or compilation warm-up (the CPU setting that was measured to work).
    """
    kwargs: dict[str, Any] = {
        "limit_mm_per_prompt": {"audio": 1, "image": 0, "video": 0},
        "dtype": str(dtype).removeprefix("torch."),
        "load_format": "dummy",
    }
    if device == "cpu":
        kwargs["enforce_eager"] = True
    return kwargs


@contextmanager
def vllm_startup_guard():
    """Hide from `sys.modules`, while an engine starts, the modules that vLLM 0.32's CPU start-up cannot scan.

    At start-up the CPU worker walks every attribute of every loaded module to rebind Triton kernels
    (`vllm.triton_utils.dispatcher._rebind_kernels`) and calls `vars(value).get`; llvmlite's lazily wrapping `ffi.lib`
    answers `vars()` with a function wrapper, and start-up dies with `'_lib_fn_wrapper' object has no attribute
    'get'`. llvmlite is loaded once librosa has resampled a clip (numba), i.e. as soon as any non-16 kHz audio was
    read. Those modules hold no vLLM kernel; they are put back afterwards.
    """
    hidden = {}
    with warnings.catch_warnings():  # reading some attributes warns (deprecated aliases)
        warnings.simplefilter("ignore")
        for name, module in list(sys.modules.items()):
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for value in list(namespace.values()):
                try:
                    scannable = not hasattr(value, "__dict__") or hasattr(vars(value), "get")
                except Exception:
                    scannable = False
                if not scannable:
                    hidden[name] = sys.modules.pop(name)
                    break
    try:
        yield
    finally:
        sys.modules.update(hidden)


def load_weights(llm, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load `(name, tensor)` pairs (transformers-5, hub or 5.16-5.20 saved names) into the running engine, then drop
    what was computed with the old weights (audio encodings, prefix KV cache)."""
    runner = llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=((hub_name(n), t) for n, t in weights), is_checkpoint_format=True)
    llm.llm_engine.reset_encoder_cache()
    llm.reset_prefix_cache()


def checkpoint_weights(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the safetensors files of a saved model folder, one at a time."""
    from safetensors import safe_open

    index = os.path.join(model_path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted({os.path.join(model_path, name) for name in json.load(f)["weight_map"].values()})
    else:
        files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{model_path}: no *.safetensors weights (vLLM loads safetensors only here).")
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                yield name, f.get_tensor(name)


class AudioLLM:
    """A `vllm.LLM` whose `generate` takes TRL's rows, `{"prompt_token_ids": ids, "multi_modal_data": {"image":
    clips}}`, with each prompt's audio clips in TRL's image slot, and sends them as audio prompts (`audio_prompt`).
    Everything else is the wrapped engine's."""

    def __init__(self, llm, audio_token_id: int):
        self._llm = llm
        self.audio_token_id = audio_token_id

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def generate(self, prompts, *args, **kwargs):
        rows = []
        for row in prompts:
            clips = (row.get("multi_modal_data") or {}).get("image")
            if clips is None:
                raise ValueError("A prompt reached vLLM without its audio: every prompt needs an audio part.")
            clips = list(clips) if isinstance(clips, (list, tuple)) else [clips]
            rows.append(audio_prompt(list(row["prompt_token_ids"]), clips, self.audio_token_id))
        return self._llm.generate(rows, *args, **kwargs)


# ---- training: TRL's VLLMGeneration with the audio ----------------------------------------------------------------


class AudioVLLMGeneration(trl_vllm.VLLMGeneration):
    """TRL's vLLM backend (colocate mode) for Qwen2-Audio. Generation, sampling settings, tensor-parallel groups, sleep
    mode and the log-probs for TRL's importance-sampling correction stay TRL's; the overrides:

    - `_init_vllm`: TRL builds the engine, with Qwen2-Audio's settings added (`engine_kwargs`), and it is wrapped in
      `AudioLLM`, which turns the clips the trainer puts in TRL's image slot into audio prompts; the engine must
      expand the audio placeholder as the trainer's processor does (`check_audio_expansion`). Server mode is
      refused: TRL's server protocol carries image features only.
    - `pin_rollout_tokens` (called by the trainer): its end ids and the placeholders into every rollout.
    - `sync_weights`: the policy's tensors (gathered under ZeRO-3, LoRA merged in: TRL's `_iter_named_params`) go
      through `load_weights` (hub names, `reload_weights`, cache resets) instead of TRL's per-tensor `load_weights`
      under transformers names.
    """

    def _init_vllm(self):
        if self.mode != "colocate":
            raise ValueError(
                "use_vllm with an audio model needs vllm_mode: colocate (TRL's server mode sends images only)."
            )
        if not hasattr(trl_vllm, "LLM"):  # vLLM is not installed: TRL says so
            return super()._init_vllm()
        kwargs = engine_kwargs(self.model.dtype, self.accelerator.device.type)
        with mock.patch.object(trl_vllm, "LLM", functools.partial(trl_vllm.LLM, **kwargs)), vllm_startup_guard():
            super()._init_vllm()
        self.llm = AudioLLM(self.llm, self.processing_class.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN))
        check_audio_expansion(self.llm._llm, self.processing_class)

    def pin_rollout_tokens(self, stop_token_ids: Iterable[int], suppressed_ids: Iterable[int]) -> None:
        """Stop every rollout at `stop_token_ids` (the trainer's end ids: TRL masks completions after them) and never
        sample `suppressed_ids` (the multimodal placeholders HF rollouts suppress), whatever the model folder's
        generation_config.json says. Both go into the keyword arguments TRL builds its `SamplingParams` from.

        Suppression is vLLM's strongest logit bias, -100 (it clamps larger ones): a placeholder's probability is
        multiplied by e^-100 (about 4e-44), which float32 sampling rounds to zero unless it led every other token by
        about 100 logits. (`allowed_token_ids`, the exact mask, costs a vocabulary-sized list per request.)
        """
        kwargs = dict(self.generation_kwargs)
        kwargs["stop_token_ids"] = sorted({*(kwargs.get("stop_token_ids") or []), *map(int, stop_token_ids)})
        bias = dict(kwargs.get("logit_bias") or {})
        bias.update({int(token): SUPPRESS_BIAS for token in suppressed_ids})
        kwargs["logit_bias"] = bias
        self.generation_kwargs = kwargs

    def sync_weights(self):
        if self.enable_sleep_mode:  # as TRL: map the weights' memory before writing to it
            trl_vllm.empty_cache()
            self.llm.wake_up(tags=["weights"])
            self._llm_weights_sleeping = False
        # vLLM's reload holds a layer's tensors until the layer is complete, but a ZeRO-3 gather is released when the
        # next tensor is read: those are copied.
        copy = self._dist.is_zero3
        load_weights(self.llm, ((n, p.detach().clone() if copy else p) for n, p in self._iter_named_params()))


def load_llm(model_path: str, device: str, seed: int = 0, max_model_len: int | None = None):
    """A vLLM engine for a saved Qwen2-Audio folder (weights and processor): bf16 on GPU, float32 on CPU, as the HF
    backend. The weights are read through `load_weights`, so checkpoints saved by transformers 5.16-5.20 load too."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: weights load from this process
    from vllm import LLM

    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    with vllm_startup_guard():
        llm = LLM(model=model_path, max_model_len=max_model_len, seed=seed, **engine_kwargs(dtype, device))
    load_weights(llm, checkpoint_weights(model_path))
    return llm
