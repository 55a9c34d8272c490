"""AVQA validation questions over the real AVQA clips in tests/data/avqa, converted by r1aqa.prepare_avqa."""

import json
from pathlib import Path

AVQA_OPTIONS = ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"]


def avqa_question(qid: int, video_name: str, **changes) -> dict:
    """A question of AVQA's val_qa.json (the same format as train_qa.json: docs/recipe.md §2)."""
    return {"id": qid, "video_name": video_name, "video_id": 1000 + qid, "question_text": "What happened in the video?",
            "multi_choice": AVQA_OPTIONS, "answer": qid % 4, "question_relation": "View" if qid % 2 else "Both",
            "question_type": "Happening" if qid < 3 else "Which", **changes}  # fmt: skip


def write_avqa_val(root: Path) -> tuple[Path, Path, list[dict]]:
    """val.jsonl made by r1aqa.prepare_avqa from a val_qa.json over the real AVQA clips in tests/data/avqa, with one
    question whose video is gone and one with an out-of-range answer (both skipped and reported). Returns the JSONL,
    the WAV folder and the usable questions."""
    from helpers.paths import AVQA_AUDIO_DIR
    from r1aqa.prepare_avqa import convert

    names = sorted(path.stem for path in AVQA_AUDIO_DIR.glob("*.wav"))
    questions = [avqa_question(qid, name) for qid, name in enumerate(names)]
    bad = [avqa_question(10, "gone_000000"), avqa_question(11, names[0], answer=7)]
    qa_json = root / "val_qa.json"
    qa_json.write_text(json.dumps(questions + bad))
    out_file, wav_dir = root / "avqa" / "val.jsonl", root / "avqa" / "wav"
    report = convert(qa_json, AVQA_AUDIO_DIR, out_file, wav_dir, workers=2)
    assert report.written == len(questions)
    assert sorted(skip["reason"] for skip in report.skipped) == ["answer_out_of_range", "missing_source"]
    assert [row["id"] for row in map(json.loads, (root / "avqa" / "val.skipped.jsonl").open())] == [10, 11]
    return out_file, wav_dir, questions
