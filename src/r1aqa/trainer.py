"""TRL's GRPOTrainer, taught to pass Qwen2-Audio's audio features to every forward pass.

TRL 1.16 handles images only. Given an audio model it feeds the audio to generation but not to the policy, old-policy
or reference log-prob passes: training runs without error and learns from placeholder embeddings (measured: its
reference log-probs equal a forward pass *without* audio). This subclass fixes that; it also encodes each distinct
audio clip once per forward pass instead of once per completion (`share_audio_encoding`, same gradients;
r1aqa.audio_sharing), sends the audio to vLLM when vLLM generates (`use_vllm`; r1aqa.vllm_audio) and logs the one
phase of a step TRL does not time, the loss forward + backward (`profile/*`). The GRPO algorithm itself is TRL's,
unchanged.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
import torch
from trl import GRPOConfig, GRPOTrainer
from trl.extras.profiling import profiling_decorator
from trl.trainer import grpo_trainer as trl_grpo

from r1aqa.audio import prompts_with_audio

# Re-exported: tests and benchmarks import them from here.
from r1aqa.audio_sharing import (
    audio_groups,
    encoder_has_dropout,
    find_audio_tower,
    share_audio_encoding,
    shared_audio_encoding,
)
from r1aqa.models import family_of_config, placeholder_token_ids
from r1aqa.vllm_audio import AudioVLLMGeneration, audio_clips

__all__ = [
    "AUDIO_KEYS",
    "AudioGRPOConfig",
    "AudioGRPOTrainer",
    "audio_groups",
    "encoder_has_dropout",
    "find_audio_tower",
    "shared_audio_encoding",
]

AUDIO_KEYS = ("input_features", "feature_attention_mask")
AUDIO_GROUP_KEY = "audio_group"  # per completion: which distinct audio of the generation batch it was prompted with


@dataclass
class AudioGRPOConfig(GRPOConfig):
    """`trl.GRPOConfig` plus the settings of `AudioGRPOTrainer`. A plain `GRPOConfig` also works (defaults apply)."""

    share_audio_encoding: bool = field(
        default=True,
        metadata={
            "help": "Run the audio encoder once per distinct audio clip in each forward pass (generation prefill, "
            "reference/old-policy log-probs, policy loss) and share the result across the clip's completions. Same "
            "log-probs and gradients as encoding per completion (needs an encoder without dropout); G times fewer "
            "encoder passes. False encodes every completion's audio separately, as the original did."
        },
    )


class AudioGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` for Qwen2-Audio: the audio reaches generation (HF `generate` or vLLM) *and* every log-prob
    pass, each distinct audio is encoded once per forward pass, and the loss forward + backward time is logged.

    Everything else (sampling, rewards, advantages, loss types, clipping, KL, logging, checkpoints, DeepSpeed) is
    inherited. The overrides:

    - `__init__`: TRL reads `model.config.image_token_id` for any processor; we point it at the audio token, and
      generation never samples a multimodal placeholder (audio, image, video: a sampled placeholder would have no
      features behind it). With `use_vllm`, TRL builds `r1aqa.vllm_audio.AudioVLLMGeneration` instead of its
      image-only vLLM backend. Also checks that the audio encoder has no dropout when its encodings are shared (one
      dropout mask for G completions would not be the same computation).
    - `_tokenize_prompts`: loads each prompt's audio (16 kHz; first channel for Qwen2-Audio as the original, the
      channels' mean for Qwen2.5-Omni as Qwen's loader: `ModelFamily.audio_channels`) before TRL tokenizes it, keeps the
      `input_features` / `feature_attention_mask` the processor returns, plus each prompt's audio group (which
      distinct clip it has). TRL already passes the features to `generate`; we also expose them to the reference and
      old-policy passes that follow in the same batch.
    - `_generate_single_turn`: generation with the audio encoder shared within each group (the prefill is the only
      step that encodes audio). With `use_vllm`, each prompt's clips go where TRL's vLLM call takes a prompt's media
      (`images`).
    - `_generate_and_score_completions`: returns the features and the audio groups in the batch dict, one row per
      completion (dim 0), so TRL's shuffle and split keep them aligned with their completions.
    - `_compute_loss`: exposes the mini-batch's features and groups to the policy pass.
    - `_get_per_token_logps_and_entropies`: TRL's computation for an audio model, with the features and groups sliced
      per chunk like the token ids, and the audio encoder shared within each group of the chunk.
    - `_prepare_inputs`, `training_step`: time the loss forward + backward (profiler).
    - `_calculate_rewards` (kept) and `_generate_and_score_completions`: log `frac_tokens_reward_zero_std`, the share
      of completion tokens in groups whose rewards are all equal (zero advantage), beside TRL's per-group
      `frac_reward_zero_std`.

    Sharing the audio encoding (`share_audio_encoding`, default on): within one forward pass the encoder runs once per
    distinct clip and its output is copied to the clip's completions with `index_select`, so the backward pass sums
    their gradients into the one encoding. For an encoder without dropout this is exactly the per-completion
    computation (tests/test_perf.py compares log-probs and gradients); it saves (G - 1) / G of the encoder's work in
    generation, in the reference / old-policy passes and in the policy's forward and backward. A group split across
    micro-batches is encoded once per micro-batch.

    Profiler: TRL logs each step's wall time (`step_time`) and sends the time of generation (`transformers.generate`
    or `vLLM.generate`, `sync_weights`), reward functions, log-prob passes and the loss forward to wandb / MLflow /
    trackio (`profiling/Time taken: ...`), but never times the backward pass. The trainer adds, per optimizer step,
    the loss forward + backward on rank 0 (`profile/loss_fwd_bwd_s`) and on the slowest rank (`..._s_max`); on GPU
    its boundaries synchronise the device so that it is charged its own kernels.

    Stop tokens need no override: TRL 1.16's `GRPOTrainer.__init__` already ends rollouts at every id of
    `model.generation_config.eos_token_id` plus the tokenizer's eos (`self.eos_token_ids`, passed to the
    GenerationConfig it builds and used to mask completions), as the original did (docs/recipe.md §6): for
    Qwen2-Audio-7B-Instruct both `<|endoftext|>` and `<|im_end|>`. tests/test_stop_tokens.py pins this. TRL's vLLM
    rollouts do not get these ids (vLLM reads the model folder's generation_config.json): `_suppress_placeholders`
    passes them.
    """

    def __init__(self, model, reward_funcs, args=None, **kwargs):
        if not isinstance(model, str) and getattr(model.config, "image_token_id", None) is None:
            model.config.image_token_id = model.config.audio_token_index
        self._forward_audio: dict[str, torch.Tensor] | None = None
        self._prompt_clips: list[list[np.ndarray]] = []  # each prompt's audio samples, for vLLM
        self._prepare_s = self._loss_s = 0.0  # profiler
        # With use_vllm, TRL builds its vLLM backend in here: the one that sends the audio.
        vllm_backend = mock.patch.object(trl_grpo, "VLLMGeneration", AudioVLLMGeneration)
        with vllm_backend if getattr(args, "use_vllm", False) else nullcontext():
            super().__init__(model, reward_funcs, args, **kwargs)
        self._suppress_placeholders()
        self.audio_channels = family_of_config(self.model.config).audio_channels  # how a stereo file is heard
        self.share_audio_encoding = getattr(self.args, "share_audio_encoding", True)
        if self.share_audio_encoding and encoder_has_dropout(self.model.config.audio_config):
            raise ValueError(
                "share_audio_encoding=True needs an audio encoder without dropout (its dropout / attention_dropout / "
                "activation_dropout / encoder_layerdrop are > 0): set them to 0 in the model config or set "
                "share_audio_encoding=False."
            )

    @contextmanager
    def _audio_for_forward(self, audio: dict[str, torch.Tensor] | None):
        """Make `audio` (rows aligned with the token ids about to be scored) visible to the log-prob passes."""
        previous, self._forward_audio = self._forward_audio, audio
        try:
            yield
        finally:
            self._forward_audio = previous

    def _shared_audio(self, model, groups: torch.Tensor | None):
        """`shared_audio_encoding` on `model`'s audio encoder (its packed variant for Qwen2.5-Omni's encoder, which
        takes the whole batch concatenated along time), or nothing when sharing is off."""
        if not self.share_audio_encoding or groups is None:
            return nullcontext()
        return share_audio_encoding(find_audio_tower(model), groups)

    def _suppress_placeholders(self):
        """Never sample a multimodal placeholder. TRL suppresses `config.image_token_id` only: Qwen2.5-Omni sets it
        (to `<|IMAGE|>`), so its `<|AUDIO|>` and `<|VIDEO|>` are added here (a sampled `<|AUDIO|>` would shift the
        audio features in every log-prob pass). With vLLM, which TRL gives neither, the placeholders and the
        trainer's end ids (`eos_token_ids`) are passed to every rollout (`AudioVLLMGeneration.pin_rollout_tokens`)."""
        if self.use_vllm:  # vLLM: the trainer's end ids and the placeholders, into every rollout's SamplingParams
            self.vllm_generation.pin_rollout_tokens(self.eos_token_ids, placeholder_token_ids(self.model.config))
            return
        config = getattr(self, "generation_config", None)
        if config is None:
            return
        suppress = sorted(set(config.suppress_tokens or []) | set(placeholder_token_ids(self.model.config)))
        config.suppress_tokens = suppress
        if isinstance(getattr(self, "generation_kwargs", None), dict):
            self.generation_kwargs["suppress_tokens"] = suppress

    # --- profiler: the loss forward + backward, the one phase of a step TRL does not time ------------------------------

    def _sync_device(self):
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)

    def _prepare_inputs(self, generation_batch):
        """Timed (generation and scoring when a new batch is due), to be subtracted from the step in `training_step`."""
        self._sync_device()
        start = time.perf_counter()
        try:
            return super()._prepare_inputs(generation_batch)
        finally:
            self._sync_device()
            self._prepare_s += time.perf_counter() - start

    def training_step(self, model, inputs, num_items_in_batch):
        """Logs, per optimizer step, the loss forward + backward: the step's wall time less generation and scoring, on
        rank 0 (`profile/loss_fwd_bwd_s`) and the slowest rank (`profile/loss_fwd_bwd_s_max`)."""
        self._sync_device()
        start, prepare_before = time.perf_counter(), self._prepare_s
        output = super().training_step(model, inputs, num_items_in_batch)  # ends with TRL's `self._step += 1`
        self._sync_device()
        self._loss_s += time.perf_counter() - start - (self._prepare_s - prepare_before)
        if self._step % self.current_gradient_accumulation_steps == 0:
            everyone = self.accelerator.gather(torch.tensor([self._loss_s], device=self.accelerator.device))
            self._metrics["train"]["profile/loss_fwd_bwd_s"].append(everyone[0].item())
            self._metrics["train"]["profile/loss_fwd_bwd_s_max"].append(everyone.max().item())
            self._loss_s = 0.0
        return output

    # --- audio -------------------------------------------------------------------------------------------------------

    def _tokenize_prompts(self, prompts: list):
        loaded = prompts_with_audio(prompts, channels=self.audio_channels)
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(loaded)
        for key in AUDIO_KEYS:
            if key not in multimodal_fields:
                raise ValueError(f"The processor returned no `{key}`: every prompt needs an audio part.")
            multimodal_fields[key] = torch.as_tensor(np.asarray(multimodal_fields[key]))
        multimodal_fields.pop("num_audio_tokens", None)
        # Read by generation and by the reference / old-policy passes of this same batch (see
        # _generate_and_score_completions). The groups stay out of `multimodal_fields`: those go to `generate`.
        self._forward_audio = {key: multimodal_fields[key].to(self.accelerator.device) for key in AUDIO_KEYS}
        self._forward_audio[AUDIO_GROUP_KEY] = audio_groups(prompts).to(self.accelerator.device)
        self._prompt_clips = [audio_clips(conversation) for conversation in loaded]  # for vLLM
        return prompt_ids, images, multimodal_fields

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        groups = self._forward_audio.get(AUDIO_GROUP_KEY) if self._forward_audio else None
        if groups is not None and groups.numel() != len(prompt_ids):
            groups = None  # not the batch _tokenize_prompts saw (e.g. a tool turn): encode every row
        if self.use_vllm:
            if len(self._prompt_clips) != len(prompt_ids):
                raise RuntimeError("vLLM generation for prompts whose audio _tokenize_prompts did not load.")
            # TRL hands `images` to its vLLM backend only (through its tensor-parallel gather, aligned with the
            # prompts); AudioVLLMGeneration sends them to vLLM as each prompt's audio.
            images = self._prompt_clips
        with self._shared_audio(self.model, groups):
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )

    def _generate_and_score_completions(self, inputs):
        with self._audio_for_forward(None):  # set by _tokenize_prompts inside, cleared on the way out
            output = super()._generate_and_score_completions(inputs)
            output.update(self._forward_audio)
        self._log_zero_std_tokens(output["completion_mask"])
        return output

    # --- zero-advantage share ----------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's, kept (all processes' completions, as TRL gathers them) for `_log_zero_std_tokens`."""
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _log_zero_std_tokens(self, completion_mask: torch.Tensor) -> None:
        """Logs `frac_tokens_reward_zero_std`: the share of the batch's completion tokens (loss mask) that lie in
        groups whose G rewards are all equal. Those get zero advantage and teach only the KL term; TRL's own
        `frac_reward_zero_std` counts the groups, this counts the compute spent on them."""
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        weights = self.reward_weights.to(self._rewards_per_func.device).unsqueeze(0)
        rewards = (self._rewards_per_func * weights).nansum(dim=1).view(-1, group)
        equal = torch.isclose(trl_grpo.nanstd(rewards, dim=1), torch.zeros(1, device=rewards.device))
        tokens = self.accelerator.gather(completion_mask.sum(dim=1)).view(-1, group).sum(dim=1).float()
        share = tokens[equal.to(tokens.device)].sum() / tokens.sum().clamp(min=1.0)
        self._metrics[mode]["frac_tokens_reward_zero_std"].append(share.item())

    def _compute_loss(self, model, inputs):
        audio = {key: inputs[key] for key in AUDIO_KEYS}
        if AUDIO_GROUP_KEY in inputs:
            audio[AUDIO_GROUP_KEY] = inputs[AUDIO_GROUP_KEY]
        with self._audio_for_forward(audio):
            return super()._compute_loss(model, inputs)

    @profiling_decorator  # as TRL's
    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **image_kwargs,
    ):
        audio = self._forward_audio
        if audio is None:
            raise RuntimeError(
                "Audio features were not set for this forward pass: a log-prob pass would be audio-blind."
            )
        if audio["input_features"].size(0) != input_ids.size(0):
            raise RuntimeError(
                f"{audio['input_features'].size(0)} audio rows for {input_ids.size(0)} sequences: rows are misaligned."
            )
        groups = audio.get(AUDIO_GROUP_KEY)
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies, all_aux_losses = [], [], []
        for start in range(0, input_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            model_inputs = {
                "input_ids": input_ids[rows],
                "attention_mask": attention_mask[rows],
                **{key: audio[key][rows] for key in AUDIO_KEYS},
            }
            if compute_aux_loss:
                model_inputs["output_router_logits"] = True
            # Only the completion tokens are scored (as in TRL).
            labels = model_inputs["input_ids"].masked_fill(model_inputs["attention_mask"] == 0, -100)
            labels[:, :-logits_to_keep] = -100
            with self.accelerator.autocast(), self._shared_audio(model, None if groups is None else groups[rows]):
                outputs = model(**model_inputs, labels=labels, fused_lm_head=True)
            all_logps.append(outputs.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                all_entropies.append(outputs.entropy[:, -logits_to_keep:])
            if compute_aux_loss:
                all_aux_losses.append(outputs.aux_loss)
        logps = torch.cat(all_logps, dim=0)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        aux_loss = torch.stack(all_aux_losses).mean() if compute_aux_loss else None
        return logps, entropies, aux_loss
