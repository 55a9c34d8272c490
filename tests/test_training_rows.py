"""Training/evaluation rows: prompts byte-exact against docs/recipe.md §4, JSONL errors by file:line, the dataset round trip,
unusable audio dropped and counted, and the first-channel 16 kHz loader on the real AVQA WAVs.

Expected prompt strings are written out literally here (not rebuilt from the templates), so a changed byte fails.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers.paths import AVQA_AUDIO_DIR, MMAU_2025_03, MMAU_AUDIO_DIR, MMAU_REAL_ITEM_ID

from r1aqa.audio import check_audio, load_audio
from r1aqa.benchmarks import example
from r1aqa.data import DataError, avqa_example, load_avqa_dataset, read_jsonl, record_problem

STEREO = AVQA_AUDIO_DIR / "004NnY1farU_000030.wav"  # channels anti-correlated (-0.29)
MONO = AVQA_AUDIO_DIR / "009GwYB4Z7k_000030.wav"


def avqa_record(audio_path: str | Path = STEREO, **changes) -> dict:
    """A converted AVQA line (docs/recipe.md §2's example)."""
    record = {
        "id": 183,
        "video_name": "-HG3Omg_89c_000030",
        "video_id": 341,
        "question_text": "What happened in the video?",
        "multi_choice": ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"],
        "answer": 1,
        "question_relation": "View",
        "question_type": "Happening",
        "dataset_name": "AVQA",
        "audio_path": str(audio_path),
    }
    record.update(changes)
    return record


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def text_of(example: dict) -> str:
    return example["prompt"][0]["content"][1]["text"]


# --- prompts, byte for byte ----------------------------------------------------------------------------------------

AVQA_PROMPTS = {
    "spec example, answer mode": (
        {},
        False,
        "What happened in the audio? Please choose the answer from the following options: ['motorboat', "
        "'Yacht consignment', 'Sailboat set sail', 'Consignment car']. Output the final answer in <answer> </answer>.",
    ),
    "spec example, think mode": (
        {},
        True,
        "What happened in the audio? Please choose the answer from the following options: ['motorboat', "
        "'Yacht consignment', 'Sailboat set sail', 'Consignment car']. Output the thinking process in <think> "
        "</think> and final answer in <answer> </answer>.",
    ),
    "only lowercase video is replaced": (
        {"question_text": "Video: what makes the sound in the video, and in the VIDEO's end?"},
        False,
        "Video: what makes the sound in the audio, and in the VIDEO's end? Please choose the answer from the "
        "following options: ['motorboat', 'Yacht consignment', 'Sailboat set sail', 'Consignment car']. Output the "
        "final answer in <answer> </answer>.",
    ),
    "videos inside words too, as the original": (
        {"question_text": "How many videogames are in the videos?"},
        False,
        "How many audiogames are in the audios? Please choose the answer from the following options: ['motorboat', "
        "'Yacht consignment', 'Sailboat set sail', 'Consignment car']. Output the final answer in <answer> </answer>.",
    ),
    "apostrophe: str(list) switches to double quotes": (
        {"question_text": "Which song?", "multi_choice": ["children's song", "rock", 'say "hi"', 'it\'s "x"']},
        False,
        "Which song? Please choose the answer from the following options: [\"children's song\", 'rock', "
        "'say \"hi\"', 'it\\'s \"x\"']. Output the final answer in <answer> </answer>.",
    ),
}


@pytest.mark.parametrize("changes, think, expected", list(AVQA_PROMPTS.values()), ids=list(AVQA_PROMPTS))
def test_avqa_prompt_text_is_verbatim(changes, think, expected):
    assert text_of(avqa_example(avqa_record(**changes), think=think)) == expected


def test_avqa_example_layout_solution_and_passthrough():
    record = avqa_record()
    example = avqa_example(record)
    assert list(example) == ["prompt", "solution", *record]
    assert example["prompt"] == [
        {
            "role": "user",
            "content": [{"type": "audio", "path": str(STEREO)}, {"type": "text", "text": text_of(example)}],
        }
    ]
    assert example["solution"] == "<answer>Yacht consignment</answer>"
    assert {key: example[key] for key in record} == record


def test_avqa_example_rejects_a_bad_record_by_name():
    with pytest.raises(DataError, match=r"183.*answer_out_of_range"):
        avqa_example(avqa_record(answer=9))
    with pytest.raises(DataError, match="already has key"):
        avqa_example(avqa_record(solution="x"))


def mmau_example(item: dict, audio_dir: str, prompt_style: str = "answer") -> dict:
    return example("mmau", item, audio_dir, prompt_style)


def mmau_item(item_id: str) -> dict:
    return next(item for item in json.loads(MMAU_2025_03.read_text()) if item["id"] == item_id)


def test_mmau_example_real_item_all_three_prompts():
    item = mmau_item(MMAU_REAL_ITEM_ID)
    options = "['Man', 'Woman', 'Child', 'Robot']"
    question = "Based on the given audio, identify the source of the speaking voice."
    sentence = f"{question} Please choose the answer from the following options: {options}."
    example = mmau_example(item, str(MMAU_AUDIO_DIR))
    assert text_of(example) == sentence + " Output the final answer in <answer> </answer>."
    think = mmau_example(item, str(MMAU_AUDIO_DIR), "think")
    assert (
        text_of(think)
        == sentence + " Output the thinking process in <think> </think> and final answer in <answer> </answer>."
    )
    assert text_of(mmau_example(item, str(MMAU_AUDIO_DIR), "plain")) == sentence  # Prompt <1>
    audio_path = str(MMAU_AUDIO_DIR / f"{MMAU_REAL_ITEM_ID}.wav")
    assert example["prompt"][0]["content"][0] == {"type": "audio", "path": audio_path}
    assert check_audio(example["audio_path"]) is None and example["audio_path"] == audio_path
    assert example["solution"] == "<answer>Man</answer>"
    assert set(example) == {"prompt", "solution", *item, "audio_path"}


def test_mmau_example_without_answer_has_no_solution():
    item = {k: v for k, v in mmau_item(MMAU_REAL_ITEM_ID).items() if k != "answer"}
    example = mmau_example(item, str(MMAU_AUDIO_DIR))
    assert "solution" not in example and "answer" not in example
    assert example["prompt"] == mmau_example(mmau_item(MMAU_REAL_ITEM_ID), str(MMAU_AUDIO_DIR))["prompt"]


def test_mmau_example_real_item_with_quotes_and_no_video_replacement():
    item = mmau_item("b857dd9a-7f5e-4f26-acfd-de2bc8cf4f06")
    assert text_of(mmau_example(item, "audio")) == (
        "How does the last statement reflect sarcasm in the conversation? Please choose the answer from the following "
        "options: ['It praises the conversation highly.', \"Calling conversation 'fairly pointless'.\", 'First speaker "
        "agrees with Second speaker.', 'Second speaker is very impressed.']. Output the final answer in <answer> </answer>."
    )
    synthetic = {**item, "question": "What is heard in the video?"}
    assert text_of(mmau_example(synthetic, "audio")).startswith("What is heard in the video? Please")


# --- JSONL -------------------------------------------------------------------------------------------------------


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": 1}\n\n  \n{"id": 2}\n')
    assert read_jsonl(str(path)) == [{"id": 1}, {"id": 2}]


@pytest.mark.parametrize(
    "content, line, fragment",
    [
        ('{"id": 1}\n{"id": 2,}\n{"id": 3}\n', 2, "not valid JSON"),
        ('{"id": 1}\n\n{"id": 3}\n{"id": \n', 4, "not valid JSON"),
        ('{"id": 1}\n[1, 2]\n', 2, "expected a JSON object"),
    ],
)
def test_read_jsonl_bad_line_names_file_and_line(tmp_path, content, line, fragment):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as error:
        read_jsonl(str(path))
    assert str(error.value).startswith(f"{path}:{line}: ") and fragment in str(error.value)


def test_read_jsonl_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="prepare_avqa"):
        read_jsonl(str(tmp_path / "nope.jsonl"))


# --- loader ------------------------------------------------------------------------------------------------------


@pytest.fixture
def mixed_jsonl(tmp_path) -> tuple[Path, list[dict]]:
    """Two usable rows on the real WAVs (the second with an extra key) and one row per unusable case."""
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1)), 16_000)
    not_audio = tmp_path / "not_audio.wav"
    not_audio.write_text("not audio")
    good = [avqa_record(STEREO, id=1), {**avqa_record(MONO, id=2, question_text="Is the video loud?"), "note": "x"}]
    bad = [
        avqa_record(tmp_path / "gone.wav", id=3),
        avqa_record(not_audio, id=4),
        avqa_record(empty, id=5),
        avqa_record(STEREO, id=6, answer=4),
        avqa_record(STEREO, id=7, multi_choice=["a", "a"]),
        {k: v for k, v in avqa_record(STEREO, id=8).items() if k != "audio_path"},
    ]
    return write_jsonl(tmp_path / "train.jsonl", good[:1] + bad + good[1:]), good


def test_load_avqa_dataset_round_trips_prompts_and_drops_unusable(mixed_jsonl, caplog):
    path, good = mixed_jsonl
    with caplog.at_level(logging.WARNING, logger="r1aqa.data"):
        dataset = load_avqa_dataset(str(path))
    assert len(dataset) == 2
    message = caplog.text
    assert "dropped 6 of 8 rows" in message
    for reason in ["audio_missing: 1", "audio_unreadable: 1", "audio_empty: 1", "answer_out_of_range: 1"]:
        assert reason in message
    assert "duplicate_choices: 1" in message and "missing_keys: 1" in message
    for row, record in zip(dataset, good, strict=True):
        content = row["prompt"][0]["content"]
        assert content[0]["type"] == "audio" and content[0]["path"] == record["audio_path"]
        assert content[1]["type"] == "text"
        # `datasets` gives each content item every key, missing ones as None (the trainer strips them).
        stripped = [
            {
                "role": turn["role"],
                "content": [{k: v for k, v in part.items() if v is not None} for part in turn["content"]],
            }
            for turn in row["prompt"]
        ]
        expected = avqa_example(record)
        assert stripped == expected["prompt"]
        assert row["solution"] == expected["solution"]
        assert {key: row[key] for key in record} == record
    assert dataset[0]["note"] is None and dataset[1]["note"] == "x"  # a key only a later row has is kept
    assert "Is the audio loud?" in dataset[1]["prompt"][0]["content"][1]["text"]


def test_load_avqa_dataset_think_mode_and_unchecked_audio(mixed_jsonl):
    path, _ = mixed_jsonl
    dataset = load_avqa_dataset(str(path), think=True, check_audio_files=False)
    assert len(dataset) == 5  # the three bad-audio rows are kept when audio is not checked
    assert all("<think> </think>" in row["prompt"][0]["content"][1]["text"] for row in dataset)


def test_load_avqa_dataset_raises_when_nothing_is_usable(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [avqa_record(tmp_path / "gone.wav")])
    with pytest.raises(DataError, match=r"none of its 1 rows is usable \(audio_missing: 1\)"):
        load_avqa_dataset(str(path))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="the file is empty"):
        load_avqa_dataset(str(tmp_path / "empty.jsonl"))


def test_record_problem_names_the_reason():
    assert record_problem(avqa_record()) is None
    assert record_problem([]) == ("not_an_object", "expected a JSON object, got list")
    assert record_problem(avqa_record(answer=False))[0] == "bad_answer"
    assert record_problem({"question_text": "q"})[0] == "missing_keys"
    assert record_problem(avqa_record(prompt="x"))[0] == "reserved_keys"  # the row's own `prompt` would be lost


# --- audio -------------------------------------------------------------------------------------------------------


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_load_audio_real_stereo_is_the_first_channel_at_16k():
    import librosa

    audio = load_audio(str(STEREO))
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.shape == (160_125,)  # 10.0078 s at 16 kHz
    stereo, sr = sf.read(STEREO, dtype="float32")
    assert sr == 32_000 and stereo.shape[1] == 2
    first, second = (librosa.resample(stereo[:, c], orig_sr=sr, target_sr=16_000) for c in (0, 1))
    assert correlation(audio, first) > 0.9999
    assert correlation(audio, second) < 0.5


def test_load_audio_real_mono_32k():
    audio = load_audio(str(MONO))
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.shape == (160_125,)
    original, _ = sf.read(MONO, dtype="float32")
    assert correlation(audio, original[::2]) > 0.99  # same signal, every other sample
    assert 0.5 < np.abs(audio).max() <= 1.0


def test_load_audio_16k_stereo_is_channel_zero_exactly(tmp_path):
    stereo = np.stack([np.linspace(-0.5, 0.5, 1600), np.full(1600, 0.25)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 16_000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(str(tmp_path / "s.wav")), stereo[:, 0].astype(np.float32))


def test_check_audio_reasons(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1)), 16_000)
    (tmp_path / "text.wav").write_text("not audio")
    assert check_audio(str(MONO)) is None
    assert check_audio(str(tmp_path / "gone.wav")) == "missing"
    assert check_audio(str(tmp_path / "text.wav")) == "unreadable"
    assert check_audio(str(tmp_path / "empty.wav")) == "empty"
