"""TRL's GRPOTrainer, taught to pass Qwen2-Audio's audio features to every forward pass.

TRL 1.16 handles images only. Given an audio model it feeds the audio to generation but not to the policy, old-policy
or reference log-prob passes: training runs without error and learns from placeholder embeddings (measured: its
reference log-probs equal a forward pass *without* audio). This subclass fixes that and changes nothing else.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from trl import GRPOTrainer

from r1aqa.audio import SAMPLING_RATE, load_audio

AUDIO_KEYS = ("input_features", "feature_attention_mask")


def prompts_with_audio(prompts: list[list[dict]], sampling_rate: int = SAMPLING_RATE) -> list[list[dict]]:
    """Replace each audio part's file path by its samples (first channel, 16 kHz) and drop None-valued keys.

    `datasets` stores every content part with every key (missing ones as None); the processor would try to load
    `audio=None`, and Qwen2-Audio's hub template, which tests `'audio' in content`, would render text parts as audio.
    Loading here also keeps the original's first-channel rule (the processor's own loader down-mixes). A path that
    repeats in the batch (the G completions of one prompt) is decoded once.
    """
    cache: dict[str, np.ndarray] = {}
    loaded = []
    for conversation in prompts:
        messages = []
        for message in conversation:
            content = message["content"]
            if isinstance(content, list):
                parts = []
                for part in content:
                    part = {key: value for key, value in part.items() if value is not None}
                    if part.get("type") == "audio" and isinstance(part.get("path"), str):
                        path = part.pop("path")
                        if path not in cache:
                            cache[path] = load_audio(path, sampling_rate)
                        part["audio"] = cache[path]
                    parts.append(part)
                content = parts
            messages.append({**message, "content": content})
        loaded.append(messages)
    return loaded


class AudioGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` for Qwen2-Audio: the audio reaches generation *and* every log-prob pass.

    Everything else (sampling, rewards, advantages, loss types, clipping, KL, logging, checkpoints, DeepSpeed) is
    inherited. The overrides:

    - `__init__`: TRL reads `model.config.image_token_id` for any processor; we point it at the audio token, which also
      stops generation from sampling `<|AUDIO|>` (a sampled placeholder would have no features behind it).
    - `_tokenize_prompts`: loads each prompt's audio (first channel, 16 kHz) before TRL tokenizes it, and keeps the
      `input_features` / `feature_attention_mask` the processor returns. TRL already passes them to `generate`; we
      also expose them to the reference and old-policy passes that follow in the same batch.
    - `_generate_and_score_completions`: returns those features in the batch dict, one row per completion (dim 0), so
      TRL's shuffle and split keep them aligned with their completions.
    - `_compute_loss`: exposes the mini-batch's features to the policy pass.
    - `_get_per_token_logps_and_entropies`: TRL's computation for an audio model, with the features sliced per chunk
      like the token ids.
    """

    def __init__(self, model, *args, **kwargs):
        if not isinstance(model, str) and getattr(model.config, "image_token_id", None) is None:
            model.config.image_token_id = model.config.audio_token_index
        self._forward_audio: dict[str, torch.Tensor] | None = None
        super().__init__(model, *args, **kwargs)

    @contextmanager
    def _audio_for_forward(self, audio: dict[str, torch.Tensor] | None):
        """Make `audio` (rows aligned with the token ids about to be scored) visible to the log-prob passes."""
        previous, self._forward_audio = self._forward_audio, audio
        try:
            yield
        finally:
            self._forward_audio = previous

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts_with_audio(prompts))
        for key in AUDIO_KEYS:
            if key not in multimodal_fields:
                raise ValueError(f"The processor returned no `{key}`: every prompt needs an audio part.")
            multimodal_fields[key] = torch.as_tensor(np.asarray(multimodal_fields[key]))
        multimodal_fields.pop("num_audio_tokens", None)
        # Read by the reference / old-policy passes of this same batch (see _generate_and_score_completions).
        self._forward_audio = {key: multimodal_fields[key].to(self.accelerator.device) for key in AUDIO_KEYS}
        return prompt_ids, images, multimodal_fields

    def _generate_and_score_completions(self, inputs):
        with self._audio_for_forward(None):  # set by _tokenize_prompts inside, cleared on the way out
            output = super()._generate_and_score_completions(inputs)
            output.update(self._forward_audio)
        return output

    def _compute_loss(self, model, inputs):
        with self._audio_for_forward({key: inputs[key] for key in AUDIO_KEYS}):
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
            with self.accelerator.autocast():
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
