"""Audio loading as the original trained on it (docs/recipe.md §3): first channel only, 16 kHz, float32, 1-D (for
Qwen2.5-Omni: the channels' mean, as Qwen's own loader); and the same for the audio parts of chat conversations,
before a processor sees them."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf

SAMPLING_RATE = 16_000


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and what to do."""


CHANNEL_RULES = ("first", "mean")


def load_audio(path: str, sampling_rate: int = SAMPLING_RATE, channels: str = "first") -> np.ndarray:
    """Decode `path`, make it one channel, resample to `sampling_rate` (librosa's default soxr_hq resampler).

    `channels`: "first" keeps the first channel (no down-mix), as the original R1-AQA read audio for Qwen2-Audio;
    "mean" averages the channels, as Qwen's loader for Qwen2.5-Omni does (qwen_omni_utils calls
    `librosa.load(path, sr=16000)`, which down-mixes with the mean, then resamples). Which one a model family uses is
    `r1aqa.models.ModelFamily.audio_channels`."""
    if channels not in CHANNEL_RULES:
        raise ValueError(f"channels must be one of {CHANNEL_RULES}; got {channels!r}.")
    try:
        samples, source_rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several types; all mean "this file is unusable"
        raise AudioError(
            f"{path}: cannot decode audio ({error}). Re-extract it as WAV (see data/README.md)."
        ) from error
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples. Re-extract it or drop the question.")
    mono = np.ascontiguousarray(samples[:, 0]) if channels == "first" else samples.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():  # a float WAV can hold NaN/inf: the features and the loss would be NaN
        raise AudioError(f"{path}: the audio holds NaN or infinite samples. Re-extract it or drop the question.")
    if source_rate != sampling_rate:
        import librosa  # deferred: its first import compiles numba code for ~25 s

        mono = librosa.resample(mono, orig_sr=source_rate, target_sr=sampling_rate)
    return mono.astype(np.float32, copy=False)


def check_audio(path: str) -> str | None:
    """Why `path` is unusable, or None when `load_audio` will read it: `missing`; `unreadable` (no audio header);
    `empty` (no samples); `truncated` (a WAV whose data chunk is shorter than its header says, e.g. a conversion
    killed mid-write); `corrupt` (the body does not decode, or its first channel holds NaN or infinite samples).

    The whole body is decoded, block by block: a header check alone passes files that fail (or turn the loss into
    NaN) mid-training. Decoding is cheap next to training (an AVQA clip of 10 s decodes in about a millisecond).
    """
    if not os.path.isfile(path):
        return "missing"
    try:
        info = sf.info(path)
    except Exception:
        return "unreadable"
    if info.frames == 0:
        return "empty"
    if info.format == "WAV" and _wav_data_truncated(path):
        return "truncated"
    try:
        with sf.SoundFile(path) as f:
            frames = 0
            while len(block := f.read(1 << 16, dtype="float32", always_2d=True)):
                if not np.isfinite(block[:, 0]).all():
                    return "corrupt"
                frames += len(block)
    except Exception:  # soundfile raises several types for a body that does not decode
        return "corrupt"
    return None if frames else "empty"


def _wav_data_truncated(path: str) -> bool:
    """Whether a RIFF/WAVE file's `data` chunk declares more bytes than the file holds. libsndfile silently reads
    what is there, so a half-written WAV would train on a shortened clip. Sizes a streaming writer leaves unset
    (0 or 0xFFFFFFFF) are not judged."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(12)[8:12] != b"WAVE":
            return False
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk, length = f.read(4), int.from_bytes(f.read(4), "little")
            if chunk == b"data":
                return length not in (0, 0xFFFFFFFF) and offset + 8 + length > size
            offset += 8 + length + (length & 1)  # chunks are padded to an even size
    return False


def audio_parts(conversation: list[dict]) -> list[dict]:
    """The audio parts of a conversation's messages, in order (the one walker over a conversation's audio)."""
    return [
        part
        for message in conversation
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "audio"
    ]


def prompts_with_audio(
    prompts: list[list[dict]], sampling_rate: int = SAMPLING_RATE, channels: str = "first"
) -> list[list[dict]]:
    """Replace each audio part's file path by its samples (`load_audio`: 16 kHz, `channels` rule) and drop
    None-valued keys.

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
                            cache[path] = load_audio(path, sampling_rate, channels)
                        part["audio"] = cache[path]
                    parts.append(part)
                content = parts
            messages.append({**message, "content": content})
        loaded.append(messages)
    return loaded
