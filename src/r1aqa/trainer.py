"""`AudioGRPOTrainer`: TRL's GRPOTrainer with Qwen2-Audio's audio in generation and in every log-prob pass."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import nanstd

from r1aqa.audio import audio_parts, prompts_with_audio
from r1aqa.audio_sharing import audio_groups, encoder_has_dropout, find_audio_tower, hooked, share_audio_encoding
from r1aqa.models import family_of_config, placeholder_token_ids

AUDIO_KEYS = ("input_features", "feature_attention_mask")
AUDIO_GROUP_KEY = "audio_group"  # per completion: which distinct audio of the generation batch it was prompted with


@dataclass
class AudioGRPOConfig(GRPOConfig):
    """`trl.GRPOConfig` plus the settings of `AudioGRPOTrainer`. A plain `GRPOConfig` also works (defaults apply)."""

    share_audio_encoding: bool = field(default=True, metadata={"help": "Encode each distinct clip once per pass."})


@contextmanager
def image_token_for_trl(config):
    """TRL 1.16's `__init__` reads `config.image_token_id`, which Qwen2-Audio lacks: the audio token's while TRL starts."""
    added = getattr(config, "image_token_id", None) is None
    if added:
        config.image_token_id = config.audio_token_index
    try:
        yield
    finally:
        if added:  # checkpoints save the config unchanged
            del config.image_token_id


class AudioGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` for Qwen2-Audio and the Qwen2.5-Omni thinker. TRL feeds the audio to generation only; here
    every log-prob pass gets its rows' audio features too (a pre-hook per chunk), each distinct clip is encoded once
    per pass (`r1aqa.audio_sharing`), generation never samples a placeholder, `use_vllm` uses
    `r1aqa.vllm_audio.AudioVLLMGeneration`, and `frac_tokens_reward_zero_std` is logged. The rest is TRL's."""

    def __init__(self, model, reward_funcs, args=None, **kwargs):
        self._forward_audio: dict[str, torch.Tensor] | None = None
        self._prompt_clips: list[list[np.ndarray]] = []  # each prompt's audio samples, for vLLM
        use_vllm = bool(getattr(args, "use_vllm", False))
        if use_vllm:  # else TRL's __init__ starts its image-only vLLM backend (it has no hook to swap it)
            args.use_vllm = False
        with image_token_for_trl(model.config):
            super().__init__(model, reward_funcs, args, **kwargs)
        self.use_vllm = self.args.use_vllm = use_vllm
        if use_vllm:
            from r1aqa.vllm_audio import AudioVLLMGeneration

            self.vllm_generation = AudioVLLMGeneration.for_trainer(self)
            self._last_loaded_step = -1  # as TRL: the weights are synced before the first generation
        else:  # TRL suppresses `image_token_id` only (Qwen2.5-Omni's `<|IMAGE|>`)
            placeholders = placeholder_token_ids(self.model.config)
            suppress = sorted({*(self.generation_config.suppress_tokens or []), *placeholders})
            self.generation_config.suppress_tokens = self.generation_kwargs["suppress_tokens"] = suppress
        self.audio_channels = family_of_config(self.model.config).audio_channels  # how a stereo file is heard
        self.share_audio_encoding = getattr(self.args, "share_audio_encoding", True)
        if self.share_audio_encoding and encoder_has_dropout(self.model.config.audio_config):  # G masks, not one
            raise ValueError(
                "share_audio_encoding=True needs an audio encoder without dropout (dropout, attention_dropout, "
                "activation_dropout, encoder_layerdrop): set them to 0 in the config or share_audio_encoding=False."
            )

    @contextmanager
    def _audio_for_forward(self, audio: dict[str, torch.Tensor] | None):
        """`audio` (rows aligned with the token ids about to be scored) for the log-prob passes."""
        previous, self._forward_audio = self._forward_audio, audio
        try:
            yield
        finally:
            self._forward_audio = previous

    def _shared_audio(self, model, groups: torch.Tensor | None):
        return share_audio_encoding(find_audio_tower(model), groups if self.share_audio_encoding else None)

    def _tokenize_prompts(self, prompts: list):
        loaded = prompts_with_audio(prompts, channels=self.audio_channels)
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(loaded)
        for key in AUDIO_KEYS:
            if key not in multimodal_fields:
                raise ValueError(f"The processor returned no `{key}`: every prompt needs an audio part.")
            multimodal_fields[key] = torch.as_tensor(np.asarray(multimodal_fields[key]))
        multimodal_fields.pop("num_audio_tokens", None)
        # For the reference / old-policy passes of this batch; the groups stay out of what goes to `generate`.
        self._forward_audio = {key: multimodal_fields[key].to(self.accelerator.device) for key in AUDIO_KEYS}
        self._forward_audio[AUDIO_GROUP_KEY] = audio_groups(prompts).to(self.accelerator.device)
        self._prompt_clips = [[part["audio"] for part in audio_parts(conversation)] for conversation in loaded]
        return prompt_ids, images, multimodal_fields

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *args, **kwargs):
        groups = self._forward_audio.get(AUDIO_GROUP_KEY) if self._forward_audio else None
        if groups is not None and groups.numel() != len(prompt_ids):
            groups = None  # not the batch _tokenize_prompts saw (e.g. a tool turn): encode every row
        if self.use_vllm:  # TRL hands `images` to its vLLM backend only (zipped strictly with the prompts)
            images = self._prompt_clips  # AudioLLM sends them as audio
        with self._shared_audio(self.model, groups):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)

    def _generate_and_score_completions(self, inputs):
        with self._audio_for_forward(None):  # set by _tokenize_prompts inside, cleared on the way out
            output = super()._generate_and_score_completions(inputs)
            output.update(self._forward_audio)
        self._log_zero_std_tokens(output["completion_mask"])
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's, kept (all processes' completions) for `_log_zero_std_tokens`."""
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _log_zero_std_tokens(self, completion_mask: torch.Tensor) -> None:
        """The share of completion tokens in groups of equal rewards (zero advantage): TRL's metric counts groups."""
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        weights = self.reward_weights.to(self._rewards_per_func.device).unsqueeze(0)
        rewards = (self._rewards_per_func * weights).nansum(dim=1).view(-1, group)
        equal = torch.isclose(nanstd(rewards, dim=1), torch.zeros(1, device=rewards.device))
        tokens = self.accelerator.gather(completion_mask.sum(dim=1)).view(-1, group).sum(dim=1).float()
        share = tokens[equal.to(tokens.device)].sum() / tokens.sum().clamp(min=1.0)
        self._metrics[mode]["frac_tokens_reward_zero_std"].append(share.item())

    def _compute_loss(self, model, inputs):
        with self._audio_for_forward({key: inputs[key] for key in (*AUDIO_KEYS, AUDIO_GROUP_KEY)}):
            return super()._compute_loss(model, inputs)

    def _get_per_token_logps_and_entropies(self, model, input_ids, *args, **kwargs):
        audio = self._forward_audio
        if audio is None or audio["input_features"].size(0) != input_ids.size(0):
            raise RuntimeError("No audio features for these rows: the log-probs would be audio-blind or misaligned.")
        groups, start, sharing = audio[AUDIO_GROUP_KEY], 0, ExitStack()

        def add_chunk_audio(module, call_args, call_kwargs):  # TRL calls `model` once per chunk, in row order
            nonlocal start
            rows = slice(start, start + call_kwargs["input_ids"].size(0))
            start = rows.stop
            sharing.enter_context(self._shared_audio(module, groups[rows]))
            return call_args, {**call_kwargs, **{key: audio[key][rows] for key in AUDIO_KEYS}}

        with sharing, hooked(model, add_chunk_audio, lambda *_: sharing.close()):
            return super()._get_per_token_logps_and_entropies(model, input_ids, *args, **kwargs)
