"""Audio loading as the original trained on it (SPEC §3): first channel only, 16 kHz, float32, 1-D."""

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
