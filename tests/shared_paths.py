"""Where the real test files live: ../shared/data beside the repo, or $R1AQA_SHARED_DATA."""

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("R1AQA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MMAU_DIR = SHARED_DATA / "mmau"
MMAU_2025_03 = MMAU_DIR / "mmau-test-mini.2025-03-25.json"
MMAU_2025_05 = MMAU_DIR / "mmau-test-mini.v05.15.25.json"
MMAU_AUDIO_DIR = MMAU_DIR / "test-mini-audios"
MMAU_REAL_ITEM_ID = "3fe64f3d-282c-4bc8-a753-68f8f6c35652"
AVQA_AUDIO_DIR = SHARED_DATA / "avqa" / "audio"
AVQA_VIDEO_DIR = SHARED_DATA / "avqa" / "video"
