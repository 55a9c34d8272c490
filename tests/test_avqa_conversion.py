"""The AVQA converter: real soundtracks, first channel kept, re-runs skip finished WAVs, every bad input reported.

Real data: the two AVQA MP4s and four WAVs in tests/data/avqa (copied into tmp_path, never modified). Synthetic
data: short tones written here, where a test needs channels that differ or a broken source.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers.paths import AVQA_AUDIO_DIR, AVQA_VIDEO_DIR

from r1aqa import prepare_avqa
from r1aqa.audio import load_audio
from r1aqa.data import AVQA_KEYS
from r1aqa.prepare_avqa import convert, index_media, main, skipped_path

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")

MP4_NAMES = sorted(path.stem for path in AVQA_VIDEO_DIR.glob("*.mp4"))
WAV_NAMES = sorted(path.stem for path in AVQA_AUDIO_DIR.glob("*.wav"))


def question(video_name: str, qid: int = 1, **changes) -> dict:
    """An AVQA question in docs/recipe.md §2's format (keys in AVQA's order)."""
    base = {
        "id": qid,
        "video_name": video_name,
        "video_id": 1000 + qid,
        "question_text": "What happened in the video?",
        "multi_choice": ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"],
        "answer": 1,
        "question_relation": "View",
        "question_type": "Happening",
    }
    base.update(changes)
    return base


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tone(freq: float, sr: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return 0.5 * np.sin(2 * np.pi * freq * t)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the common length (the two decoders may differ by a few trailing samples)."""
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def run(tmp_path: Path, questions: list, media_dir: Path, *extra: str) -> tuple[int, Path]:
    qa_json = write_json(tmp_path / "train_qa.json", questions)
    out_file = tmp_path / "out" / "train.jsonl"
    argv = ["--qa_json", str(qa_json), "--media_dir", str(media_dir), "--out_file", str(out_file)]
    return main([*argv, "--wav_dir", str(tmp_path / "wav"), *extra]), out_file


# --- real data -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_conversion(tmp_path_factory):
    """Both real MP4s converted once (two workers); the real WAVs kept aside as the reference."""
    root = tmp_path_factory.mktemp("real")
    media = root / "media"
    shutil.copytree(AVQA_VIDEO_DIR, media)
    questions = [question(name, qid) for qid, name in enumerate(MP4_NAMES)]
    code, out_file = run(root, questions, media, "--workers", "2")
    assert code == 0
    return root, out_file


def test_real_mp4_soundtrack_matches_the_wav_of_the_same_name(real_conversion):
    root, out_file = real_conversion
    rows = read_jsonl(out_file)
    assert [row["video_name"] for row in rows] == MP4_NAMES
    for row in rows:
        extracted, sr = sf.read(row["audio_path"], dtype="float32")
        assert sr == 16_000 and extracted.ndim == 1
        reference = load_audio(str(AVQA_AUDIO_DIR / f"{row['video_name']}.wav"))  # first channel, 16 kHz
        # Measured: 004NnY1farU_000030 0.99992, 009GwYB4Z7k_000030 0.99997 (both 160125 samples).
        assert correlation(extracted, reference) > 0.99, row["video_name"]


def test_real_stereo_mp4_keeps_the_first_channel_not_the_second(real_conversion):
    """004NnY1farU's two channels are anti-correlated (-0.29), so a swapped or mixed channel would show."""
    root, _ = real_conversion
    name = "004NnY1farU_000030"
    extracted, _ = sf.read(root / "wav" / f"{name}.wav", dtype="float32")
    stereo, sr = sf.read(AVQA_AUDIO_DIR / f"{name}.wav", dtype="float32")
    import librosa

    second = librosa.resample(stereo[:, 1], orig_sr=sr, target_sr=16_000)
    assert correlation(extracted, second) < 0.5


def test_real_wav_sources_are_resampled_to_16k_first_channel(tmp_path):
    media = tmp_path / "media"
    shutil.copytree(AVQA_AUDIO_DIR, media)
    code, out_file = run(tmp_path, [question(name, qid) for qid, name in enumerate(WAV_NAMES)], media)
    assert code == 0
    for row in read_jsonl(out_file):
        info = sf.info(row["audio_path"])
        assert (info.samplerate, info.channels) == (16_000, 1)
        extracted, _ = sf.read(row["audio_path"], dtype="float32")
        assert correlation(extracted, load_audio(str(AVQA_AUDIO_DIR / f"{row['video_name']}.wav"))) > 0.99


# --- first channel, not a down-mix ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source_rate", [16_000, 48_000])
def test_stereo_source_keeps_first_channel_not_the_mean(tmp_path, source_rate):
    media = tmp_path / "media"
    media.mkdir()
    left, right = tone(440, source_rate), tone(1250, source_rate)
    sf.write(media / "clip.wav", np.stack([left, right], axis=1), source_rate, subtype="PCM_16")
    code, out_file = run(tmp_path, [question("clip")], media)
    assert code == 0
    extracted, sr = sf.read(tmp_path / "wav" / "clip.wav", dtype="float32")
    assert sr == 16_000 and extracted.ndim == 1
    expected_left, expected_mean = tone(440, 16_000), (tone(440, 16_000) + tone(1250, 16_000)) / 2
    if source_rate == 16_000:  # no resampling: the samples themselves, up to 16-bit rounding
        assert np.abs(extracted - expected_left[: len(extracted)]).max() < 2 / 32768
    assert correlation(extracted, expected_left) > 0.99
    assert correlation(extracted, expected_mean) < 0.8  # a down-mix would correlate ~1 with the mean


# --- re-runs -----------------------------------------------------------------------------------------------------


@pytest.fixture
def tone_media(tmp_path) -> Path:
    media = tmp_path / "media"
    media.mkdir()
    for i, name in enumerate(["a", "b", "c"]):
        sf.write(media / f"{name}.wav", tone(300 + 100 * i, 32_000), 32_000, subtype="PCM_16")
    return media


def test_rerun_skips_complete_wavs_and_redoes_broken_ones(tmp_path, tone_media):
    qa_json = write_json(tmp_path / "qa.json", [question(name, i) for i, name in enumerate("abc")])
    wav_dir, out_file = tmp_path / "wav", tmp_path / "train.jsonl"
    first = convert(qa_json, tone_media, out_file, wav_dir, workers=2)
    assert (first.extracted, first.reused, first.written) == (3, 0, 3)
    mtimes = {path.name: path.stat().st_mtime_ns for path in wav_dir.iterdir()}
    assert sorted(mtimes) == ["a.wav", "b.wav", "c.wav"]  # no temporary file left behind

    second = convert(qa_json, tone_media, out_file, wav_dir, workers=2)
    assert (second.extracted, second.reused, second.written) == (0, 3, 3)
    assert {path.name: path.stat().st_mtime_ns for path in wav_dir.iterdir()} == mtimes

    (wav_dir / "a.wav").write_bytes((wav_dir / "a.wav").read_bytes()[:30])  # truncated: header only
    sf.write(wav_dir / "b.wav", np.zeros((100, 2)), 32_000)  # complete-looking but not 16 kHz mono
    (wav_dir / "c.wav.partial").write_bytes(b"left by a killed run")
    third = convert(qa_json, tone_media, out_file, wav_dir, workers=2)
    assert (third.extracted, third.reused, third.written) == (2, 1, 3)
    assert all(
        (sf.info(wav_dir / f"{name}.wav").samplerate, sf.info(wav_dir / f"{name}.wav").channels) == (16_000, 1)
        for name in "ab"
    )


def test_hung_ffmpeg_times_out_and_its_question_is_skipped(tmp_path, tone_media, monkeypatch):
    monkeypatch.setattr(prepare_avqa, "FFMPEG_TIMEOUT", 1e-6)  # any ffmpeg run outlasts it: it is killed
    qa_json = write_json(tmp_path / "qa.json", [question("a")])
    report = convert(qa_json, tone_media, tmp_path / "train.jsonl", tmp_path / "wav", workers=1)
    assert report.written == 0 and [skip["reason"] for skip in report.skipped] == ["ffmpeg_failed"]
    assert "timed out after" in report.skipped[0]["detail"] and not list((tmp_path / "wav").iterdir())


def test_complete_wav_is_used_even_when_the_source_is_gone(tmp_path, tone_media):
    qa_json = write_json(tmp_path / "qa.json", [question("a")])
    convert(qa_json, tone_media, tmp_path / "train.jsonl", tmp_path / "wav", workers=1)
    (tone_media / "a.wav").unlink()
    report = convert(qa_json, tone_media, tmp_path / "train.jsonl", tmp_path / "wav", workers=1)
    assert (report.written, report.reused, report.skipped) == (1, 1, [])


# --- output format -----------------------------------------------------------------------------------------------


def test_output_keeps_avqa_keys_in_order_and_adds_two(tmp_path, tone_media):
    extra = question("a", 7)
    extra["extra_key"] = [1, 2]  # unknown keys pass through too, in place
    code, out_file = run(tmp_path, [extra, question("b", 8)], tone_media)
    assert code == 0
    rows = read_jsonl(out_file)
    assert list(rows[0]) == [*AVQA_KEYS, "extra_key", "dataset_name", "audio_path"]
    assert list(rows[1]) == [*AVQA_KEYS, "dataset_name", "audio_path"]
    assert rows[1] == {
        **question("b", 8),
        "dataset_name": "AVQA",
        "audio_path": str((tmp_path / "wav" / "b.wav").resolve()),
    }
    assert Path(rows[1]["audio_path"]).is_absolute()
    assert skipped_path(out_file).read_text() == ""


def test_media_index_searches_subfolders_prefers_wav_and_ignores_the_output(tmp_path):
    (tmp_path / "video").mkdir()
    (tmp_path / "audio").mkdir()
    (tmp_path / "out").mkdir()
    for relative in ["video/x.mp4", "audio/x.wav", "video/y.MP4", "out/z.wav", "video/w.txt"]:
        (tmp_path / relative).write_bytes(b"")
    sources = index_media(tmp_path, exclude=(tmp_path / "out").resolve())
    assert {name: path.relative_to(tmp_path.resolve()).as_posix() for name, path in sources.items()} == {
        "x": "audio/x.wav",
        "y": "video/y.MP4",
    }


def test_skipped_path_sits_next_to_the_output():
    assert skipped_path(Path("d/train.jsonl")) == Path("d/train.skipped.jsonl")
    assert skipped_path(Path("d/train")) == Path("d/train.skipped.jsonl")


# --- malformed input -----------------------------------------------------------------------------------------------


@pytest.fixture
def bad_media(tone_media) -> Path:
    """Sources that exist but are unusable: video without audio, garbage bytes, audio with no samples."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=black:s=16x16:d=0.5"]
        + ["-c:v", "mpeg4", str(tone_media / "silent_film.mp4")],
        check=True,
    )
    (tone_media / "garbage.mp4").write_bytes(bytes(range(256)) * 8)
    sf.write(tone_media / "no_samples.wav", np.zeros((0, 2)), 32_000, subtype="PCM_16")
    return tone_media


SKIP_CASES = {
    "not an object": ("just a string", "not_an_object"),
    "missing answer": ({k: v for k, v in question("a").items() if k != "answer"}, "missing_keys"),
    "missing question_type": ({k: v for k, v in question("a").items() if k != "question_type"}, "missing_keys"),
    "empty question": (question("a", question_text="  "), "bad_question_text"),
    "choices not a list": (question("a", multi_choice="a, b"), "bad_choices"),
    "choices not strings": (question("a", multi_choice=[1, 2]), "bad_choices"),
    "no choices": (question("a", multi_choice=[]), "empty_choices"),
    "one choice": (question("a", multi_choice=["only"], answer=0), "empty_choices"),
    "blank choice": (question("a", multi_choice=["dog", " "]), "empty_choices"),
    "duplicate choices": (question("a", multi_choice=["dog", "cat", "dog"]), "duplicate_choices"),
    "duplicate after strip": (question("a", multi_choice=["dog", "dog "]), "duplicate_choices"),
    "answer as text": (question("a", answer="1"), "bad_answer"),
    "answer as bool": (question("a", answer=True), "bad_answer"),
    "answer as float": (question("a", answer=1.0), "bad_answer"),
    "answer too large": (question("a", answer=4), "answer_out_of_range"),
    "answer negative": (question("a", answer=-1), "answer_out_of_range"),
    "video name with path": (question("../a"), "bad_video_name"),
    "video name not text": (question(5), "bad_video_name"),
    "duplicate id": (question("b", qid=0), "duplicate_id"),
    "missing source": (question("gone"), "missing_source"),
    "video without audio": (question("silent_film"), "no_audio_stream"),
    "unreadable source": (question("garbage"), "ffmpeg_failed"),
    "audio without samples": (question("no_samples"), "empty_audio"),
}


@pytest.mark.parametrize("bad, reason", list(SKIP_CASES.values()), ids=list(SKIP_CASES))
def test_bad_question_is_skipped_with_its_reason(tmp_path, bad_media, capsys, bad, reason):
    code, out_file = run(tmp_path, [question("a", 0), bad], bad_media)
    assert code == 0
    assert [row["id"] for row in read_jsonl(out_file)] == [0]
    (skip,) = read_jsonl(skipped_path(out_file))
    assert (skip["index"], skip["reason"]) == (1, reason)
    assert skip["detail"]
    assert f"{reason} " in capsys.readouterr().out  # the printed summary counts it


FILE_CASES = {
    "bad JSON": ('[{"id": 1},\n {"id": 2,,}\n]', 2, ["train_qa.json", "line 2 column 11"]),
    "not a list": ('{"id": 1}', 2, ["train_qa.json", "expected a JSON list"]),
    "not UTF-8": (b"[\xff\xfe]", 2, ["train_qa.json", "'utf-8' codec can't decode byte 0xff in position 1"]),
    "empty list": ("[]", 1, ["no usable question"]),
    "nothing usable": (json.dumps([question("gone")]), 1, ["no usable question"]),
}


@pytest.mark.parametrize("content, code, fragments", list(FILE_CASES.values()), ids=list(FILE_CASES))
def test_malformed_input_file_exits_nonzero_naming_file_and_position(
    tmp_path, tone_media, capsys, content, code, fragments
):
    qa_json = tmp_path / "train_qa.json"
    qa_json.write_bytes(content if isinstance(content, bytes) else content.encode())
    out_file = tmp_path / "train.jsonl"
    out_file.write_text("an earlier good file\n")
    argv = ["--qa_json", str(qa_json), "--media_dir", str(tone_media), "--out_file", str(out_file)]
    assert main([*argv, "--wav_dir", str(tmp_path / "wav")]) == code
    error = capsys.readouterr().err
    assert all(fragment in error for fragment in fragments), error
    assert out_file.read_text() == "an earlier good file\n"  # never replaced by an empty or partial file


def test_missing_qa_file_media_dir_or_same_wav_dir_are_input_errors(tmp_path, tone_media, capsys):
    qa_json = write_json(tmp_path / "qa.json", [question("a")])
    base = ["--out_file", str(tmp_path / "t.jsonl")]
    assert (
        main(["--qa_json", str(tmp_path / "nope.json"), "--media_dir", str(tone_media), "--wav_dir", "w", *base]) == 2
    )
    assert "nope.json: [Errno 2] No such file" in capsys.readouterr().err
    assert main(["--qa_json", str(qa_json), "--media_dir", str(tmp_path / "nope"), "--wav_dir", "w", *base]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["--qa_json", str(qa_json), "--media_dir", str(tone_media), "--wav_dir", str(tone_media), *base]) == 2
    assert "must differ" in capsys.readouterr().err
