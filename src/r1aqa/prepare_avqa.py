"""AVQA's question list and media -> the training JSONL (docs/recipe.md §2) and 16 kHz first-channel WAVs.

    python -m r1aqa.prepare_avqa --qa_json train_qa.json --media_dir avqa_videos --out_file data/avqa/train.jsonl \\
        --wav_dir data/avqa/wav [--workers 8]
    python -m r1aqa.prepare_avqa --qa_json val_qa.json --media_dir avqa_videos --out_file data/avqa/val.jsonl \\
        --wav_dir data/avqa/wav    # held out to choose a checkpoint (test_mmau.sh SELECT_FILE=...)

Sources: `<video_name>.wav` (preferred) or `.mp4` anywhere under --media_dir. A re-run keeps finished WAVs. Each
usable question is one line: AVQA's keys in order, then `dataset_name` and `audio_path`. Unusable ones are counted
in the summary and listed with their reasons in `<out_file stem>.skipped.jsonl`. Exit code 0 when a question was
written, 1 when none was usable, 2 for a malformed input file or a missing ffmpeg or folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from r1aqa.audio import SAMPLING_RATE
from r1aqa.data import AVQA_KEYS, record_problem, write_atomically

SOURCE_EXTENSIONS = (".wav", ".mp4")  # preference order when both exist
FFMPEG_TIMEOUT_S = 600


class InputError(Exception):
    """The input as a whole is unusable (exit code 2); the message names the file and what is wrong."""


@dataclass
class Report:
    """What one conversion did; `skipped`: one dict per skipped question (index, id, video_name, reason, detail)."""

    questions: int = 0
    written: int = 0
    extracted: int = 0
    reused: int = 0
    skipped: list[dict] = field(default_factory=list)

    def skip(self, index: int, question: object, reason: str, detail: str) -> None:
        keys = question if isinstance(question, dict) else {}
        entry = {"index": index, "id": keys.get("id"), "video_name": keys.get("video_name")}
        self.skipped.append({**entry, "reason": reason, "detail": detail})


def read_questions(path: Path) -> list:
    """AVQA's train_qa.json or val_qa.json, a JSON list; anything else is an `InputError` naming file and position."""
    try:
        questions = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise InputError(f"{path}: no such file (expected AVQA's train_qa.json or val_qa.json).") from error
    except json.JSONDecodeError as error:
        raise InputError(
            f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}."
        ) from error
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (byte {error.start}).") from error
    if not isinstance(questions, list):
        raise InputError(f"{path}: expected a JSON list of questions, got a JSON {type(questions).__name__}.")
    return questions


def question_problem(question: object, seen_ids: set) -> tuple[str, str] | None:
    """Why a question is unusable before its media is looked at, or None; records its id in `seen_ids`."""
    problem = record_problem(question, extra_keys=AVQA_KEYS)
    if problem:
        return problem
    name = question["video_name"]  # it names a file in --wav_dir: no path may reach outside
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        return "bad_video_name", f"video_name must be a plain file name, got {name!r}"
    question_id = json.dumps(question["id"])  # hashable for any JSON value, and 1 != "1"
    if question_id in seen_ids:
        return "duplicate_id", f"id {question['id']!r} appeared earlier in the file; the first one is kept"
    seen_ids.add(question_id)
    return None


def index_media(media_dir: Path, exclude: Path) -> dict[str, Path]:
    """`video_name -> source file` for every usable file under `media_dir` (not under `exclude`, the output)."""
    sources: dict[str, Path] = {}
    for path in sorted(media_dir.resolve().rglob("*")):
        suffix = path.suffix.lower()
        if suffix not in SOURCE_EXTENSIONS or exclude in path.parents or not path.is_file():
            continue
        current = sources.get(path.stem)
        if current is None or SOURCE_EXTENSIONS.index(suffix) < SOURCE_EXTENSIONS.index(current.suffix.lower()):
            sources[path.stem] = path
    return sources


def wav_is_complete(path: Path) -> bool:
    """A finished output: a readable 16 kHz mono WAV with samples (partial files never carry the final name)."""
    try:
        info = sf.info(str(path))
    except Exception:  # missing or unreadable: either way it must be (re-)extracted
        return False
    return info.samplerate == SAMPLING_RATE and info.channels == 1 and info.frames > 0


def extract_wav(source: Path, target: Path) -> tuple[str, str] | None:
    """`source`'s first audio stream, its first channel (`pan`: `-ac 1` would down-mix), as 16 kHz 16-bit PCM at
    `target`, renamed there when complete. Returns `(reason, detail)` on failure."""
    partial = target.with_name(target.name + ".partial")
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source), "-map", "0:a:0", "-vn",
        "-sn", "-dn", "-af", "pan=mono|c0=c0", "-ar", str(SAMPLING_RATE), "-c:a", "pcm_s16le", "-f", "wav", str(partial),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        result = None
    if result is None:
        problem = "ffmpeg_failed", f"{source}: ffmpeg took longer than {FFMPEG_TIMEOUT_S} s"
    elif result.returncode and "matches no streams" in result.stderr:
        problem = "no_audio_stream", f"{source}: no audio stream"
    elif result.returncode:
        message = result.stderr.strip() or f"exit code {result.returncode}"
        problem = "ffmpeg_failed", f"{source}: {message.splitlines()[-1]}"
    else:
        problem = None if wav_is_complete(partial) else ("empty_audio", str(source))
    if problem:
        partial.unlink(missing_ok=True)
    else:
        os.replace(partial, target)
    return problem


def extract_all(names: list[str], sources: dict[str, Path], wav_dir: Path, workers: int, report: Report) -> dict:
    """Make `<wav_dir>/<name>.wav` for every name. Returns `name -> (reason, detail)` for those that failed."""
    failures, jobs = {}, {}
    for name in names:
        if wav_is_complete(wav_dir / f"{name}.wav"):
            report.reused += 1
        elif name not in sources:
            failures[name] = ("missing_source", f"no {' or '.join(SOURCE_EXTENSIONS)} file named {name!r}")
        else:
            jobs[name] = sources[name]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # threads suffice: the work happens in ffmpeg processes
        futures = {pool.submit(extract_wav, source, wav_dir / f"{name}.wav"): name for name, source in jobs.items()}
        for future in tqdm(as_completed(futures), total=len(futures), desc="Extracting audio", unit="clip"):
            problem = future.result()
            if problem:
                failures[futures[future]] = problem
            else:
                report.extracted += 1
    return failures


def convert(qa_json: Path, media_dir: Path, out_file: Path, wav_dir: Path, workers: int) -> Report:
    """The whole conversion (`InputError` for malformed input). Writes the skip list, and `out_file` unless no
    question was usable: an earlier good file is never replaced by an empty one (e.g. after a wrong --media_dir)."""
    if shutil.which("ffmpeg") is None:
        raise InputError("ffmpeg not found on PATH: install it (Debian/Ubuntu: apt-get install ffmpeg).")
    if not media_dir.is_dir():
        raise InputError(f"{media_dir}: no such folder (--media_dir holds the AVQA videos and/or WAVs).")
    if wav_dir.resolve() == media_dir.resolve():
        raise InputError(f"--wav_dir must differ from --media_dir ({wav_dir}): extraction would overwrite sources.")
    questions = read_questions(qa_json)
    report, valid, seen_ids = Report(questions=len(questions)), [], set()
    for index, question in enumerate(questions):
        problem = question_problem(question, seen_ids)
        if problem:
            report.skip(index, question, *problem)
        else:
            valid.append((index, question))
    wav_dir.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(question["video_name"] for _, question in valid))
    failures = extract_all(names, index_media(media_dir, exclude=wav_dir.resolve()), wav_dir, workers, report)
    rows = []
    for index, question in valid:
        if question["video_name"] in failures:
            report.skip(index, question, *failures[question["video_name"]])
        else:
            audio_path = str((wav_dir / f"{question['video_name']}.wav").resolve())
            rows.append({**question, "dataset_name": "AVQA", "audio_path": audio_path})
    report.skipped.sort(key=lambda skip: skip["index"])
    report.written = len(rows)
    write_atomically(skipped_path(out_file), _jsonl(report.skipped))
    if rows:
        write_atomically(out_file, _jsonl(rows))
    return report


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def skipped_path(out_file: Path) -> Path:
    """`train.jsonl` -> `train.skipped.jsonl`, next to it."""
    return out_file.with_name(f"{out_file.stem if out_file.suffix else out_file.name}.skipped.jsonl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qa_json", type=Path, required=True, help="AVQA's train_qa.json or val_qa.json.")
    parser.add_argument("--media_dir", type=Path, required=True, help="Folder (searched recursively) of sources.")
    parser.add_argument("--out_file", type=Path, required=True, help="The JSONL to write (one question a line).")
    parser.add_argument("--wav_dir", type=Path, required=True, help="Folder for the extracted 16 kHz WAVs.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Parallel ffmpeg processes.")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        report = convert(args.qa_json, args.media_dir, args.out_file, args.wav_dir, args.workers)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Read {report.questions:,} questions from {args.qa_json}.")
    print(f"Audio: {report.extracted:,} WAVs extracted, {report.reused:,} already complete (kept).")
    print(f"Wrote {report.written:,} questions to {args.out_file}.")
    if report.skipped:
        print(f"Skipped {len(report.skipped):,} questions (ids and reasons in {skipped_path(args.out_file)}):")
        for reason, count in Counter(skip["reason"] for skip in report.skipped).most_common():
            print(f"  {reason:<20} {count:>8,}")
    if report.written == 0:
        print(f"error: no usable question in {args.qa_json}; see the reasons above.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
