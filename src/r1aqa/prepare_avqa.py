"""Convert AVQA's question list and source media into the training JSONL (docs/recipe.md §2), extracting 16 kHz WAVs.

    python -m r1aqa.prepare_avqa --qa_json train_qa.json --media_dir avqa_videos --out_file data/avqa/train.jsonl \\
        --wav_dir data/avqa/wav [--workers 8]
    # AVQA's validation questions (same format), held out to choose a checkpoint (test_mmau.sh SELECT_FILE=...)
    python -m r1aqa.prepare_avqa --qa_json val_qa.json --media_dir avqa_videos --out_file data/avqa/val.jsonl \\
        --wav_dir data/avqa/wav

Sources are found anywhere under `--media_dir` as `<video_name>.wav` (preferred: already extracted audio) or
`<video_name>.mp4`. ffmpeg writes each soundtrack to `<wav_dir>/<video_name>.wav`: 16 kHz, 16-bit PCM, the source's
first channel only (as training reads it: docs/recipe.md §3; ffmpeg's `-ac 1` would down-mix instead). A WAV is written under a
temporary name and renamed when complete, so a re-run keeps every existing 16 kHz mono WAV and extracts the rest.

Each usable question becomes one line: AVQA's keys unchanged and in order, then `dataset_name` ("AVQA") and
`audio_path` (absolute). Unusable questions are skipped, counted by reason in the printed summary and listed with
their reasons in `<out_file stem>.skipped.jsonl`. Reasons: not_an_object, missing_keys, bad_question_text,
bad_choices, empty_choices, duplicate_choices, bad_answer, answer_out_of_range, bad_video_name, duplicate_id,
missing_source, no_audio_stream, ffmpeg_failed, empty_audio.

The validation file is made by the same checks, with the same skip report (`val.skipped.jsonl`); `r1aqa.evaluate`
reads it as the `avqa` benchmark, each question prompted exactly as in training and scored with MMAU's rule.

Exit code 0 when at least one question was written; 1 when none was usable; 2 when the input itself is malformed
(not a JSON list, bad JSON: the message names the file, line and column) or ffmpeg / a folder is missing.
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
from r1aqa.data import AVQA_KEYS, record_problem

SOURCE_EXTENSIONS = (".wav", ".mp4")  # preference order when both exist
DATASET_NAME = "AVQA"
EXIT_NOTHING_USABLE, EXIT_BAD_INPUT = 1, 2
FFMPEG_TIMEOUT_S = 600


class InputError(Exception):
    """The input as a whole is unusable (exit code 2); the message names the file and what is wrong."""


@dataclass
class Report:
    """What one conversion did; `skipped` holds one dict per skipped question (index, id, reason, detail)."""

    questions: int = 0
    written: int = 0
    extracted: int = 0
    reused: int = 0
    skipped: list[dict] = field(default_factory=list)

    def reasons(self) -> Counter:
        return Counter(skip["reason"] for skip in self.skipped)


# --- input -------------------------------------------------------------------------------------------------------


def read_questions(path: Path) -> list:
    """AVQA's `train_qa.json` (or `val_qa.json`): a JSON list. Anything else raises `InputError` naming the file and position."""
    try:
        with open(path, encoding="utf-8") as f:
            questions = json.load(f)
    except FileNotFoundError as error:
        raise InputError(f"{path}: no such file (expected AVQA's train_qa.json or val_qa.json).") from error
    except json.JSONDecodeError as error:
        raise InputError(
            f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}."
        ) from error
    except UnicodeDecodeError as error:
        raise InputError(
            f"{path}: not UTF-8 text (byte {error.start}); expected AVQA's train_qa.json or val_qa.json."
        ) from error
    if not isinstance(questions, list):
        raise InputError(f"{path}: expected a JSON list of questions, got a JSON {type(questions).__name__}.")
    return questions


def question_problem(question: object, seen_ids: set) -> tuple[str, str] | None:
    """Why an AVQA question is unusable before looking at its media, or None. Records ids in `seen_ids`."""
    problem = record_problem(question, extra_keys=AVQA_KEYS)
    if problem:
        return problem
    if not is_plain_file_name(question["video_name"]):
        return "bad_video_name", f"video_name must be a plain file name, got {question['video_name']!r}"
    question_id = json.dumps(question["id"])  # hashable for any JSON value, and 1 != "1"
    if question_id in seen_ids:
        return "duplicate_id", f"id {question['id']!r} appeared earlier in the file; the first one is kept"
    seen_ids.add(question_id)
    return None


def is_plain_file_name(name: object) -> bool:
    """A video name must not reach outside `--wav_dir` (no separators, not `.`/`..`)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and name == os.path.basename(name)
        and not any(c in name for c in "/\\\0")
    )


def skip_record(index: int, question: object, reason: str, detail: str) -> dict:
    keys = question if isinstance(question, dict) else {}
    return {
        "index": index,
        "id": keys.get("id"),
        "video_name": keys.get("video_name"),
        "reason": reason,
        "detail": detail,
    }


# --- media -------------------------------------------------------------------------------------------------------


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


def ffmpeg_command(source: Path, target: Path) -> list[str]:
    """First audio stream -> first channel only (`pan`, not `-ac 1`, which would average) -> 16 kHz 16-bit WAV."""
    return [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-i", str(source),
        "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-af", "pan=mono|c0=c0", "-ar", str(SAMPLING_RATE),
        "-c:a", "pcm_s16le", "-f", "wav", str(target),
    ]  # fmt: skip


def extract_wav(source: Path, target: Path) -> tuple[str, str] | None:
    """Extract `source`'s soundtrack to `target` atomically. Returns `(reason, detail)` on failure, else None."""
    partial = target.with_name(target.name + ".partial")
    try:
        result = subprocess.run(
            ffmpeg_command(source, partial), capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        partial.unlink(missing_ok=True)
        return "ffmpeg_failed", f"{source}: ffmpeg took longer than {FFMPEG_TIMEOUT_S} s"
    problem = ffmpeg_problem(source, result) or (None if wav_is_complete(partial) else ("empty_audio", str(source)))
    if problem:
        partial.unlink(missing_ok=True)
        return problem
    os.replace(partial, target)
    return None


def ffmpeg_problem(source: Path, result: subprocess.CompletedProcess) -> tuple[str, str] | None:
    if result.returncode == 0:
        return None
    message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit code {result.returncode}"
    if "matches no streams" in result.stderr:
        return "no_audio_stream", f"{source}: no audio stream"
    return "ffmpeg_failed", f"{source}: {message}"


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


# --- conversion --------------------------------------------------------------------------------------------------


def convert(qa_json: Path, media_dir: Path, out_file: Path, wav_dir: Path, workers: int) -> Report:
    """The whole conversion; raises `InputError` for malformed input. Writes the skip list, and `out_file` unless
    no question was usable."""
    check_setup(media_dir, wav_dir)
    questions = read_questions(qa_json)
    report = Report(questions=len(questions))
    valid = select_valid(questions, report)
    wav_dir.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(question["video_name"] for _, question in valid))
    failures = extract_all(names, index_media(media_dir, exclude=wav_dir.resolve()), wav_dir, workers, report)
    rows = []
    for index, question in valid:
        failure = failures.get(question["video_name"])
        if failure:
            report.skipped.append(skip_record(index, question, *failure))
        else:
            rows.append(output_row(question, wav_dir))
    report.skipped.sort(key=lambda skip: skip["index"])
    report.written = len(rows)
    write_jsonl(skipped_path(out_file), report.skipped)
    if rows:  # never replace an earlier, good file with an empty one (e.g. after a wrong --media_dir)
        write_jsonl(out_file, rows)
    return report


def check_setup(media_dir: Path, wav_dir: Path) -> None:
    if shutil.which("ffmpeg") is None:
        raise InputError("ffmpeg not found on PATH: install it (Debian/Ubuntu: apt-get install ffmpeg).")
    if not media_dir.is_dir():
        raise InputError(f"{media_dir}: no such folder (--media_dir holds the AVQA videos and/or WAVs).")
    if wav_dir.resolve() == media_dir.resolve():
        raise InputError(f"--wav_dir must differ from --media_dir ({wav_dir}): extraction would overwrite sources.")


def select_valid(questions: list, report: Report) -> list[tuple[int, dict]]:
    """`(index, question)` for the questions that pass `question_problem`; the others go to `report.skipped`."""
    valid, seen_ids = [], set()
    for index, question in enumerate(questions):
        problem = question_problem(question, seen_ids)
        if problem:
            report.skipped.append(skip_record(index, question, *problem))
        else:
            valid.append((index, question))
    return valid


def output_row(question: dict, wav_dir: Path) -> dict:
    """docs/recipe.md §2: AVQA's keys as they came, then the two added by the conversion."""
    audio_path = str((wav_dir / f"{question['video_name']}.wav").resolve())
    return {**question, "dataset_name": DATASET_NAME, "audio_path": audio_path}


def skipped_path(out_file: Path) -> Path:
    """`train.jsonl` -> `train.skipped.jsonl`, next to it."""
    return out_file.with_name(f"{out_file.stem if out_file.suffix else out_file.name}.skipped.jsonl")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, written to a temporary name first so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, path)


def print_summary(report: Report, qa_json: Path, out_file: Path) -> None:
    print(f"Read {report.questions:,} questions from {qa_json}.")
    print(f"Audio: {report.extracted:,} WAVs extracted, {report.reused:,} already complete (kept).")
    print(f"Wrote {report.written:,} questions to {out_file}.")
    if report.skipped:
        print(f"Skipped {len(report.skipped):,} questions (ids and reasons in {skipped_path(out_file)}):")
        for reason, count in report.reasons().most_common():
            print(f"  {reason:<20} {count:>8,}")


# --- command line ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--qa_json", type=Path, required=True, help="AVQA's question list (train_qa.json or val_qa.json)."
    )
    parser.add_argument("--media_dir", type=Path, required=True, help="Folder (searched recursively) of sources.")
    parser.add_argument("--out_file", type=Path, required=True, help="The JSONL to write (one question a line).")
    parser.add_argument("--wav_dir", type=Path, required=True, help="Folder for the extracted 16 kHz WAVs.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Parallel ffmpeg processes.")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = convert(args.qa_json, args.media_dir, args.out_file, args.wav_dir, args.workers)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print_summary(report, args.qa_json, args.out_file)
    if report.written == 0:
        print(f"error: no usable question in {args.qa_json}; see the reasons above.", file=sys.stderr)
        return EXIT_NOTHING_USABLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
