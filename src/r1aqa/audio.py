"""Audio as the original trained on it (docs/recipe.md §3): first channel only (Qwen2.5-Omni: the channels' mean, as
Qwen's loader), 16 kHz, float32, 1-D; the start-up check of a file; the audio parts of chat conversations."""

from __future__ import annotations

import functools
import os
import re

import numpy as np
import soundfile as sf

SAMPLING_RATE = 16_000
CHANNEL_RULES = ("first", "mean")  # which one a model family uses: r1aqa.models.ModelFamily.audio_channels
# libsndfile logs "data : <declared> (should be <present>)" for a WAV cut short; 0xFFFFFFFF (streamed) is no cut.
_TRUNCATED_WAV = re.compile(r"^data : (?!4294967295 )\d+ \(should be", re.MULTILINE)


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and what to do."""


def load_audio(path: str, sampling_rate: int = SAMPLING_RATE, channels: str = "first") -> np.ndarray:
    """Decode `path`, keep one channel (`channels`: "first" or "mean"), resample with librosa (soxr_hq)."""
    if channels not in CHANNEL_RULES:
        raise ValueError(f"channels must be one of {CHANNEL_RULES}; got {channels!r}.")
    try:
        samples, source_rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several types; all mean "this file is unusable"
        raise AudioError(f"{path}: cannot decode audio ({error}). Re-extract it (see data/README.md).") from error
    mono = np.ascontiguousarray(samples[:, 0]) if channels == "first" else samples.mean(axis=1, dtype=np.float32)
    if not mono.size or not np.isfinite(mono).all():  # NaN/inf (a float WAV can hold them) would make the loss NaN
        raise AudioError(f"{path}: no samples, or NaN or infinite ones. Re-extract it or drop the question.")
    if source_rate != sampling_rate:
        import librosa  # deferred: its first import compiles numba code for ~25 s

        mono = librosa.resample(mono, orig_sr=source_rate, target_sr=sampling_rate)
    return mono.astype(np.float32, copy=False)


def check_audio(path: str) -> str | None:
    """Why `path` is unusable, or None: `missing`, `unreadable` (no audio header), `empty`, `truncated` (a WAV cut
    short) or `corrupt` (the whole body is decoded: a part that fails, or NaN/inf in channel 0)."""
    if not os.path.isfile(path):
        return "missing"
    try:
        info = sf.info(path)
    except Exception:
        return "unreadable"
    if info.frames == 0:
        return "empty"
    if info.format == "WAV" and _TRUNCATED_WAV.search(info.extra_info):
        return "truncated"
    try:
        with sf.SoundFile(path) as f:
            while len(block := f.read(1 << 16, dtype="float32", always_2d=True)):
                if not np.isfinite(block[:, 0]).all():
                    return "corrupt"
    except Exception:  # soundfile raises several types for a body that does not decode
        return "corrupt"
    return None


def audio_parts(conversation: list[dict]) -> list[dict]:
    """The audio parts of a conversation's messages, in order (the one walker over a conversation's audio)."""
    contents = [message["content"] for message in conversation if isinstance(message.get("content"), list)]
    return [part for content in contents for part in content if isinstance(part, dict) and part.get("type") == "audio"]


def prompts_with_audio(prompts: list[list[dict]], sampling_rate: int = SAMPLING_RATE, channels: str = "first") -> list:
    """Copies of `prompts`, audio paths replaced by their samples (each decoded once), None values dropped (`datasets`
    gives every part every key: Qwen2-Audio's template would render `audio: None` text parts as audio)."""
    loaded = [[dict(message) for message in conversation] for conversation in prompts]
    for message in (message for conversation in loaded for message in conversation):
        if isinstance(message["content"], list):
            message["content"] = [{k: v for k, v in part.items() if v is not None} for part in message["content"]]
    load = functools.cache(lambda path: load_audio(path, sampling_rate, channels))
    for part in [part for conversation in loaded for part in audio_parts(conversation)]:
        if isinstance(part.get("path"), str):
            part["audio"] = load(part.pop("path"))
    return loaded
