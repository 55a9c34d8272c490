"""Where the real test files live: tests/data/ in this repository (see tests/data/README.md for their sources)."""

from pathlib import Path

TEST_DATA = Path(__file__).resolve().parents[1] / "data"
MMAU_DIR = TEST_DATA / "mmau"
MMAU_2025_01 = MMAU_DIR / "mmau-test-mini.2025-01-28.json"  # MMAU a5cd89a: the paper's numbers
MMAU_2025_03 = MMAU_DIR / "mmau-test-mini.2025-03-25.json"
MMAU_2025_05 = MMAU_DIR / "mmau-test-mini.v05.15.25.json"
MMAU_AUDIO_DIR = MMAU_DIR / "test-mini-audios"
MMAU_REAL_ITEM_ID = "3fe64f3d-282c-4bc8-a753-68f8f6c35652"
MMAR_SAMPLE = TEST_DATA / "mmar" / "MMAR-meta.sample.jsonl"
AVQA_AUDIO_DIR = TEST_DATA / "avqa" / "audio"
AVQA_VIDEO_DIR = TEST_DATA / "avqa" / "video"
