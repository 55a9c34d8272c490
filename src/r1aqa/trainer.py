"""TRL's GRPOTrainer, taught to pass Qwen2-Audio's audio features to every forward pass.

TRL 1.16 handles images only. Given an audio model it feeds the audio to generation but not to the policy, old-policy
or reference log-prob passes: training runs without error and learns from placeholder embeddings (measured: its
reference log-probs equal a forward pass *without* audio). This subclass fixes that; it also encodes each distinct
audio clip once per forward pass instead of once per completion (`share_audio_encoding`, same gradients) and logs
where each step's wall time goes (`profile/*`). The GRPO algorithm itself is TRL's, unchanged.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from trl import GRPOConfig, GRPOTrainer

from r1aqa.audio import prompts_with_audio
from r1aqa.models import encoder_packs_batch, placeholder_token_ids, shared_audio_encoding_packed

AUDIO_KEYS = ("input_features", "feature_attention_mask")
AUDIO_GROUP_KEY = "audio_group"  # per completion: which distinct audio of the generation batch it was prompted with
# Wall-time profile of a training step, logged as `profile/<name>_s` (rank 0) and `profile/<name>_s_max` (all ranks).
PROFILE_PHASES = ("generation", "rewards", "ref_logps", "loss_fwd_bwd")


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


def audio_groups(prompts: list[list[dict]]) -> torch.Tensor:
    """Per prompt, the index of its audio among the distinct audios of the batch (in order of first appearance).

    Audio is identified by its file path(s): the G completions of one question repeat the same path, and two questions
    about the same clip may share its encoding too (the encoder sees only the audio). A prompt whose audio is not a
    path gets a group of its own (never shared).
    """
    keys: dict[object, int] = {}
    groups = []
    for index, conversation in enumerate(prompts):
        paths = []
        for message in conversation:
            if isinstance(message["content"], list):
                for part in message["content"]:
                    if part.get("type") == "audio":
                        path = part.get("path")
                        paths.append(path if isinstance(path, str) else ("<no path>", index))
        groups.append(keys.setdefault(tuple(paths), len(keys)))
    return torch.tensor(groups, dtype=torch.long)


def find_audio_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The audio encoder inside `model`, whatever wraps it (DDP, a DeepSpeed engine, PEFT): the first submodule whose
    name ends in `audio_tower`. PEFT injects LoRA layers in place, so this module carries the adapters (if any)."""
    for name, module in model.named_modules():
        if name == "audio_tower" or name.endswith(".audio_tower"):
            return module
    raise ValueError(f"No `audio_tower` submodule in {type(model).__name__}: not a Qwen2-Audio model?")


def encoder_has_dropout(audio_config) -> bool:
    """Whether the encoder is random in training (Qwen2-Audio's encoder applies its dropouts functionally, so TRL's
    `disable_dropout` does not switch them off)."""
    return any(
        (getattr(audio_config, name, 0.0) or 0.0) > 0
        for name in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop")
    )


@contextmanager
def shared_audio_encoding(audio_tower: torch.nn.Module, groups: torch.Tensor | None):
    """While active, a call of `audio_tower` on B rows encodes only one row per distinct group and copies each
    encoding to the rows of its group (`index_select`, whose backward sums the copies' gradients into the one
    encoding: the same gradient as encoding every row, for a deterministic encoder).

    Implemented as a forward pre-hook (keep the first row of each group) and a forward hook (expand the output), so
    the model's own forward runs unchanged around it: its checks, its merge of audio embeddings into the text
    embeddings, DeepSpeed ZeRO-3's parameter hooks, DDP and PEFT all see an ordinary forward pass.
    """
    if groups is None:
        yield
        return
    groups = groups.reshape(-1)
    unique, inverse = torch.unique(groups, return_inverse=True)
    if unique.numel() == groups.numel():  # nothing to share
        yield
        return
    rows = groups.numel()
    positions = torch.arange(rows, device=groups.device)
    first = torch.full((unique.numel(),), rows, dtype=torch.long, device=groups.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")

    def select(value):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == rows:
            return value.index_select(0, first.to(value.device))
        return value

    def keep_one_row_per_group(module, args, kwargs):
        features = args[0] if args else kwargs["input_features"]
        if features.size(0) != rows:
            raise RuntimeError(f"Audio encoder called on {features.size(0)} rows, but {rows} audio groups were set.")
        return tuple(select(a) for a in args), {key: select(value) for key, value in kwargs.items()}

    def expand_to_all_rows(module, args, kwargs, output):
        hidden = output.last_hidden_state
        output.last_hidden_state = hidden.index_select(0, inverse.to(hidden.device))
        return output

    handles = [
        audio_tower.register_forward_pre_hook(keep_one_row_per_group, with_kwargs=True),
        audio_tower.register_forward_hook(expand_to_all_rows, with_kwargs=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class AudioGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` for Qwen2-Audio: the audio reaches generation *and* every log-prob pass, each distinct audio
    is encoded once per forward pass, and each step's wall time is broken down in the logs.

    Everything else (sampling, rewards, advantages, loss types, clipping, KL, logging, checkpoints, DeepSpeed) is
    inherited. The overrides:

    - `__init__`: TRL reads `model.config.image_token_id` for any processor; we point it at the audio token, and
      generation never samples a multimodal placeholder (audio, image, video: a sampled placeholder would have no
      features behind it). Also checks that the audio encoder has no dropout when its encodings are shared (one
      dropout mask for G completions would not be the same computation).
    - `_tokenize_prompts`: loads each prompt's audio (first channel, 16 kHz) before TRL tokenizes it, and keeps the
      `input_features` / `feature_attention_mask` the processor returns, plus each prompt's audio group (which
      distinct clip it has). TRL already passes the features to `generate`; we also expose them to the reference and
      old-policy passes that follow in the same batch.
    - `_generate_single_turn`: generation with the audio encoder shared within each group (the prefill is the only
      step that encodes audio).
    - `_generate_and_score_completions`: returns the features and the audio groups in the batch dict, one row per
      completion (dim 0), so TRL's shuffle and split keep them aligned with their completions.
    - `_compute_loss`: exposes the mini-batch's features and groups to the policy pass.
    - `_get_per_token_logps_and_entropies`: TRL's computation for an audio model, with the features and groups sliced
      per chunk like the token ids, and the audio encoder shared within each group of the chunk.
    - `_generate`, `_calculate_rewards`, `_prepare_inputs`, `training_step`: time the phases of a step (profiler).

    Sharing the audio encoding (`share_audio_encoding`, default on): within one forward pass the encoder runs once per
    distinct clip and its output is copied to the clip's completions with `index_select`, so the backward pass sums
    their gradients into the one encoding. For an encoder without dropout this is exactly the per-completion
    computation (tests/test_perf.py compares log-probs and gradients); it saves (G - 1) / G of the encoder's work in
    generation, in the reference / old-policy passes and in the policy's forward and backward. A group split across
    micro-batches is encoded once per micro-batch.

    Profiler: per optimizer step, the wall time in generation (`profile/generation_s`), reward functions
    (`profile/rewards_s`), reference / old-policy log-probs (`profile/ref_logps_s`) and the loss forward + backward
    (`profile/loss_fwd_bwd_s`), on rank 0 and as the maximum over ranks (`..._s_max`). On GPU the phase boundaries
    synchronise the device so that each phase is charged its own kernels.

    Stop tokens need no override: TRL 1.16's `GRPOTrainer.__init__` already ends rollouts at every id of
    `model.generation_config.eos_token_id` plus the tokenizer's eos (`self.eos_token_ids`, passed to the
    GenerationConfig it builds and used to mask completions), as the original did (docs/recipe.md §6): for
    Qwen2-Audio-7B-Instruct both `<|endoftext|>` and `<|im_end|>`. tests/test_stop_tokens.py pins this.
    """

    def __init__(self, model, *args, **kwargs):
        if not isinstance(model, str) and getattr(model.config, "image_token_id", None) is None:
            model.config.image_token_id = model.config.audio_token_index
        self._forward_audio: dict[str, torch.Tensor] | None = None
        self._profile: dict[str, float] = defaultdict(float)
        super().__init__(model, *args, **kwargs)
        self._suppress_placeholders()
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
        tower = find_audio_tower(model)
        share = shared_audio_encoding_packed if encoder_packs_batch(tower) else shared_audio_encoding
        return share(tower, groups)

    def _suppress_placeholders(self):
        """Never sample a multimodal placeholder. TRL suppresses `config.image_token_id` only: Qwen2.5-Omni sets it
        (to `<|IMAGE|>`), so its `<|AUDIO|>` and `<|VIDEO|>` are added here (a sampled `<|AUDIO|>` would shift the
        audio features in every log-prob pass)."""
        config = getattr(self, "generation_config", None)
        if config is None:  # generation outside transformers (e.g. vLLM) has its own settings
            return
        suppress = sorted(set(config.suppress_tokens or []) | set(placeholder_token_ids(self.model.config)))
        config.suppress_tokens = suppress
        if isinstance(getattr(self, "generation_kwargs", None), dict):
            self.generation_kwargs["suppress_tokens"] = suppress

    # --- profiler ----------------------------------------------------------------------------------------------------

    def _sync_device(self):
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)

    @contextmanager
    def _timed(self, phase: str):
        """Add the wall time of the block to `phase` of the current optimizer step (training only: `training_step`
        puts the model in train mode before it prepares its inputs)."""
        if not self.model.training:
            yield
            return
        self._sync_device()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync_device()
            self._profile[phase] += time.perf_counter() - start

    def _log_profile(self):
        """Append this step's phase times to TRL's metrics: rank 0's value and the maximum over ranks."""
        local = torch.tensor([self._profile[phase] for phase in PROFILE_PHASES], device=self.accelerator.device)
        everyone = self.accelerator.gather(local[None]).reshape(-1, len(PROFILE_PHASES))
        for i, phase in enumerate(PROFILE_PHASES):
            self._metrics["train"][f"profile/{phase}_s"].append(everyone[0, i].item())
            self._metrics["train"][f"profile/{phase}_s_max"].append(everyone[:, i].max().item())
        self._profile.clear()

    def _generate(self, prompts: list):
        with self._timed("generation"):
            return super()._generate(prompts)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        with self._timed("rewards"):
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _prepare_inputs(self, generation_batch):
        with self._timed("prepare"):  # generation + scoring; subtracted from training_step to get the loss time
            return super()._prepare_inputs(generation_batch)

    def training_step(self, model, inputs, num_items_in_batch):
        self._sync_device()
        start = time.perf_counter()
        prepare_before = self._profile["prepare"]
        output = super().training_step(model, inputs, num_items_in_batch)  # ends with TRL's `self._step += 1`
        self._sync_device()
        elapsed = time.perf_counter() - start
        self._profile["loss_fwd_bwd"] += elapsed - (self._profile["prepare"] - prepare_before)
        if self._step % self.current_gradient_accumulation_steps == 0:
            self._log_profile()
        return output

    # --- audio -------------------------------------------------------------------------------------------------------

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts_with_audio(prompts))
        for key in AUDIO_KEYS:
            if key not in multimodal_fields:
                raise ValueError(f"The processor returned no `{key}`: every prompt needs an audio part.")
            multimodal_fields[key] = torch.as_tensor(np.asarray(multimodal_fields[key]))
        multimodal_fields.pop("num_audio_tokens", None)
        # Read by generation and by the reference / old-policy passes of this same batch (see
        # _generate_and_score_completions). The groups stay out of `multimodal_fields`: those go to `generate`.
        self._forward_audio = {key: multimodal_fields[key].to(self.accelerator.device) for key in AUDIO_KEYS}
        self._forward_audio[AUDIO_GROUP_KEY] = audio_groups(prompts).to(self.accelerator.device)
        return prompt_ids, images, multimodal_fields

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        groups = self._forward_audio.get(AUDIO_GROUP_KEY) if self._forward_audio else None
        if groups is not None and groups.numel() != len(prompt_ids):
            groups = None  # not the batch _tokenize_prompts saw (e.g. a tool turn): encode every row
        with self._shared_audio(self.model, groups):
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )

    def _generate_and_score_completions(self, inputs):
        with self._audio_for_forward(None):  # set by _tokenize_prompts inside, cleared on the way out
            output = super()._generate_and_score_completions(inputs)
            output.update(self._forward_audio)
        return output

    def _compute_loss(self, model, inputs):
        audio = {key: inputs[key] for key in AUDIO_KEYS}
        if AUDIO_GROUP_KEY in inputs:
            audio[AUDIO_GROUP_KEY] = inputs[AUDIO_GROUP_KEY]
        with self._audio_for_forward(audio):
            return super()._compute_loss(model, inputs)

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
        # Without gradients this is the reference / old-policy scoring of a new batch; with them, the loss.
        timer = self._timed("ref_logps") if not torch.is_grad_enabled() else nullcontext()
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies, all_aux_losses = [], [], []
        with timer:
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
