"""AVQA's questions and media (`<video_name>.wav` or `.mp4` anywhere under --media_dir) -> the training JSONL
(docs/recipe.md §2, skips in `<stem>.skipped.jsonl`) and 16 kHz first-channel WAVs; a re-run keeps finished WAVs.

    python -m r1aqa.prepare_avqa --qa_json train_qa.json --media_dir avqa_videos --out_file data/avqa/train.jsonl \\
        --wav_dir data/avqa/wav [--workers 8]    # exit code 1: nothing usable; 2: unusable input
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import soundfile as sf
from tqdm import tqdm

from r1aqa.audio import SAMPLING_RATE
from r1aqa.data import AVQA_KEYS, DataError, record_problem, write_jsonl

FFMPEG_TIMEOUT = 600  # seconds: a hung ffmpeg must not hang a 40k-video conversion


def question_problem(question: object, seen_ids: set) -> tuple[str, str] | None:
    """Why a question is unusable before its media is looked at, or None; records its id in `seen_ids`."""
    if problem := record_problem(question, extra_keys=AVQA_KEYS):
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
    """`video_name -> source` under `media_dir` but not `exclude` (the output): a .wav over an .mp4, then sorted."""
    paths = [p for p in media_dir.resolve().rglob("*") if p.suffix.lower() in (".wav", ".mp4") and p.is_file()]
    ranked = sorted(paths, key=lambda p: (p.suffix.lower() != ".wav", p), reverse=True)  # the best comes last
    return {path.stem: path for path in ranked if exclude not in path.parents}


def wav_is_complete(path: Path) -> bool:
    """A finished output: a readable 16 kHz mono WAV with samples."""
    try:
        info = sf.info(str(path))
    except Exception:  # missing or unreadable: either way it must be (re-)extracted
        return False
    return info.samplerate == SAMPLING_RATE and info.channels == 1 and info.frames > 0


def extract_wav(source: Path, target: Path) -> tuple[str, str] | None:
    """`source`'s first audio stream, first channel (`-ac 1` would mix), 16 kHz PCM at `target`; or (reason, detail)."""
    partial = target.with_name(target.name + ".partial")
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source), "-map", "0:a:0", "-vn",
        "-sn", "-dn", "-af", "pan=mono|c0=c0", "-ar", str(SAMPLING_RATE), "-c:a", "pcm_s16le", "-f", "wav",
        str(partial),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT)
    except subprocess.TimeoutExpired:  # run() has killed it
        result = subprocess.CompletedProcess(command, 1, "", f"ffmpeg timed out after {FFMPEG_TIMEOUT} s")
    if result.returncode:
        partial.unlink(missing_ok=True)
        if "matches no streams" in result.stderr:
            return "no_audio_stream", f"{source}: no audio stream"
        last_line = (result.stderr.strip() or f"exit code {result.returncode}").splitlines()[-1]
        return "ffmpeg_failed", f"{source}: {last_line}"
    if not wav_is_complete(partial):
        partial.unlink(missing_ok=True)
        return "empty_audio", str(source)
    os.replace(partial, target)
    return None


def convert(qa_json: Path, media_dir: Path, out_file: Path, wav_dir: Path, workers: int) -> SimpleNamespace:
    """Counts and `skipped` (index, id, video_name, reason, detail); writes the skip list and a non-empty `out_file`."""
    if shutil.which("ffmpeg") is None:
        raise DataError("ffmpeg not found on PATH: install it (Debian/Ubuntu: apt-get install ffmpeg).")
    if not media_dir.is_dir():
        raise DataError(f"{media_dir}: no such folder (--media_dir holds the AVQA videos and/or WAVs).")
    if wav_dir.resolve() == media_dir.resolve():
        raise DataError(f"--wav_dir must differ from --media_dir ({wav_dir}): extraction would overwrite sources.")
    try:
        questions = json.loads(qa_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # missing, not UTF-8 or not JSON
        raise DataError(f"{qa_json}: {error}") from error
    if not isinstance(questions, list):
        raise DataError(f"{qa_json}: expected a JSON list of questions, got a JSON {type(questions).__name__}.")
    seen_ids = set()
    problems = [question_problem(question, seen_ids) for question in questions]
    names = dict.fromkeys(q["video_name"] for q, problem in zip(questions, problems, strict=True) if not problem)
    wav_dir.mkdir(parents=True, exist_ok=True)
    sources = index_media(media_dir, exclude=wav_dir.resolve())
    todo = [name for name in names if not wav_is_complete(wav_dir / f"{name}.wav")]  # a re-run keeps finished WAVs
    missing = {name: ("missing_source", f"no .wav or .mp4 file named {name!r}") for name in todo if name not in sources}
    jobs = [name for name in todo if name not in missing]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # threads suffice: the work happens in ffmpeg processes
        results = pool.map(extract_wav, [sources[name] for name in jobs], [wav_dir / f"{name}.wav" for name in jobs])
        progress = tqdm(results, total=len(jobs), desc="Extracting audio", unit="clip")
        failures = {name: problem for name, problem in zip(jobs, progress, strict=True) if problem}
    counts = {"questions": len(questions), "reused": len(names) - len(todo), "extracted": len(jobs) - len(failures)}
    failures, skipped, rows = {**missing, **failures}, [], []
    for index, (question, problem) in enumerate(zip(questions, problems, strict=True)):
        if problem := problem or failures.get(question["video_name"]):
            keys = question if isinstance(question, dict) else {}
            skip = {"index": index, "id": keys.get("id"), "video_name": keys.get("video_name")}
            skipped.append({**skip, "reason": problem[0], "detail": problem[1]})
        else:
            audio_path = str((wav_dir / f"{question['video_name']}.wav").resolve())
            rows.append({**question, "dataset_name": "AVQA", "audio_path": audio_path})
    write_jsonl(skipped_path(out_file), skipped)
    if rows:
        write_jsonl(out_file, rows)
    return SimpleNamespace(**counts, skipped=skipped, written=len(rows))


def skipped_path(out_file: Path) -> Path:
    """`train.jsonl` -> `train.skipped.jsonl`, next to it."""
    return out_file.with_suffix(".skipped.jsonl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qa_json", type=Path, required=True, help="AVQA's train_qa.json or val_qa.json.")
    parser.add_argument("--media_dir", type=Path, required=True, help="Folder (searched recursively) of sources.")
    parser.add_argument("--out_file", type=Path, required=True, help="The JSONL to write (one question a line).")
    parser.add_argument("--wav_dir", type=Path, required=True, help="Folder for the extracted 16 kHz WAVs.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Parallel ffmpeg processes.")
    args = parser.parse_args(argv)
    try:
        report = convert(args.qa_json, args.media_dir, args.out_file, args.wav_dir, args.workers)
    except DataError as error:
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
