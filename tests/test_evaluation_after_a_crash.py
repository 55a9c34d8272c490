"""Evaluation through crashes: `test_mmau.sh` skips checkpoints that are not complete (r1aqa.checkpoints)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers.paths import MMAU_2025_03

from r1aqa.tryout.tiny import write_tiny_model

REPO = Path(__file__).resolve().parents[1]
N_ITEMS = 8


@pytest.fixture(scope="module")
def mmau_items(tmp_path_factory):
    """(data_file, audio_dir, items): the first MMAU test-mini items, each with a locally made tone of its own."""
    root = tmp_path_factory.mktemp("mmau-crash")
    audio_dir = root / "audio"
    audio_dir.mkdir()
    items = json.loads(MMAU_2025_03.read_text())[:N_ITEMS]
    for index, item in enumerate(items):
        t = np.arange(16_000 * 2) / 16_000
        tone = (0.3 * np.sin(2 * np.pi * (150 + 120 * index) * t)).astype(np.float32)
        sf.write(audio_dir / os.path.basename(item["audio_id"]), tone, 16_000)
    data_file = root / "mmau.json"
    data_file.write_text(json.dumps(items))
    return data_file, audio_dir, items


def truncate(path: Path, by: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-by])


@pytest.mark.slow
def test_test_mmau_sh_skips_incomplete_checkpoints(mmau_items, tmp_path):
    """Only complete checkpoints are scored: one with a truncated weights file and one with a truncated
    trainer_state.json are named, with the reason, and skipped."""
    data_file, audio_dir, _ = mmau_items
    run = tmp_path / "run"
    write_tiny_model(str(run / "checkpoint-5"), seed=2)
    write_tiny_model(str(run / "checkpoint-6"), seed=3)
    truncate(run / "checkpoint-6" / "model.safetensors", 100)  # the save was cut short
    write_tiny_model(str(run / "checkpoint-7"), seed=4)
    (run / "checkpoint-7" / "training_args.bin").write_bytes(b"")  # a training checkpoint...
    (run / "checkpoint-7" / "trainer_state.json").write_text('{"global_step": 7, "log_hi')  # ...cut mid-state
    env = {**os.environ, "RUN_DIR": str(run), "MMAU_FILE": str(data_file), "AUDIO_DIR": str(audio_dir),
           "BATCH_SIZE": "2", "MAX_NEW_TOKENS": "4", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}  # fmt: skip
    result = subprocess.run(
        ["bash", str(REPO / "test_mmau.sh"), "--limit", "2"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(steps 5)" in result.stdout
    assert f"Skipping {run / 'checkpoint-6'}: model.safetensors is truncated" in result.stderr
    assert f"Skipping {run / 'checkpoint-7'}: trainer_state.json is unreadable or truncated" in result.stderr
    written = sorted(p.name for p in (run / "mmau").rglob("checkpoint-*.json") if p.name.count(".") == 1)
    assert written == ["checkpoint-5.json"]
