"""Audio loading as the original trained on it (docs/recipe.md §3): first channel only, 16 kHz, float32, 1-D; and the same for
the audio parts of chat conversations, before a processor sees them."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf

SAMPLING_RATE = 16_000


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and what to do."""


def load_audio(path: str, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Decode `path`, keep the first channel (no down-mix, as the original), resample to `sampling_rate`."""
    try:
        samples, source_rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several types; all mean "this file is unusable"
        raise AudioError(
            f"{path}: cannot decode audio ({error}). Re-extract it as WAV (see data/README.md)."
        ) from error
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples. Re-extract it or drop the question.")
    first_channel = np.ascontiguousarray(samples[:, 0])
    if source_rate != sampling_rate:
        import librosa  # deferred: its first import compiles numba code for ~25 s

        first_channel = librosa.resample(first_channel, orig_sr=source_rate, target_sr=sampling_rate)
    return first_channel.astype(np.float32, copy=False)


def check_audio(path: str) -> str | None:
    """Why `path` is unusable (missing, unreadable header, empty), or None when it is fine. Reads no samples."""
    if not os.path.isfile(path):
        return "missing"
    try:
        info = sf.info(path)
    except Exception:
        return "unreadable"
    if info.frames == 0:
        return "empty"
    return None


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
