"""The AVQA training JSONL (`r1aqa.prepare_avqa`) -> checked rows (`prompt`, `solution`, the original keys); JSONL I/O."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

from r1aqa.audio import check_audio
from r1aqa.prompts import avqa_question, format_question, solution_text, user_turn

logger = logging.getLogger(__name__)
# AVQA's keys, in its order (docs/recipe.md §2); the converter adds `dataset_name` and `audio_path`.
AVQA_KEYS = ("id", "video_name", "video_id", "question_text", "multi_choice", "answer", "question_relation",
             "question_type")  # fmt: skip


class DataError(ValueError):
    """A data file or record that cannot be used; the message names it and says what to do."""


def record_problem(record: object, extra_keys: tuple[str, ...] = ("audio_path",)) -> tuple[str, str] | None:
    """Why a question cannot be used, `(reason, detail)`, or None: for the converter, the loader and evaluation."""
    if not isinstance(record, dict):
        return "not_an_object", f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in dict.fromkeys(("question_text", "multi_choice", "answer", *extra_keys)) if k not in record]
    if missing:
        return "missing_keys", ", ".join(missing)
    question, choices, answer = record["question_text"], record["multi_choice"], record["answer"]
    if not (isinstance(question, str) and question.strip()):
        return "bad_question_text", f"question_text must be a non-empty string, got {question!r}"
    if not isinstance(choices, list) or not all(isinstance(choice, str) for choice in choices):
        return "bad_choices", "multi_choice must be a list of strings"
    stripped = [choice.strip() for choice in choices]  # compared stripped, as the reward compares answers
    if len(choices) < 2 or not all(stripped):
        return "empty_choices", f"need at least two non-empty options, got {choices!r}"
    if duplicated := sorted({choice for choice in stripped if stripped.count(choice) > 1}):
        return "duplicate_choices", f"repeated option(s) {duplicated!r}: the answer would be ambiguous"
    if isinstance(answer, bool) or not isinstance(answer, int):  # Python calls a bool an int; it is no index
        return "bad_answer", f"answer must be an integer index, got {answer!r}"
    if not 0 <= answer < len(choices):
        return "answer_out_of_range", f"answer {answer} but {len(choices)} options"
    if "audio_path" in extra_keys and not (isinstance(path := record["audio_path"], str) and path.strip()):
        return "bad_audio_path", f"audio_path must be a non-empty string, got {path!r}"
    if clashes := [key for key in ("prompt", "solution") if key in record]:
        return "reserved_keys", f"already has key(s) {clashes}, which the training row adds: rename them"
    return None


def avqa_example(record: dict, think: bool = False, format_instruction: bool = True) -> dict:
    """One JSONL record -> its training row; Prompt <3> when `think`, <1> without `format_instruction` (SFT)."""
    if problem := record_problem(record):
        raise DataError(f"record {record.get('id')!r} cannot be used: {problem[0]} ({problem[1]}).")
    text = format_question(avqa_question(record["question_text"]), record["multi_choice"], think, format_instruction)
    solution = solution_text(record["multi_choice"][record["answer"]])
    return {"prompt": user_turn(record["audio_path"], text), "solution": solution, **record}


def read_jsonl(path: str) -> list[dict]:
    """One JSON object per line; blank lines are ignored."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file; create it with r1aqa.prepare_avqa (AVQA) or see data/README.md.")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno}): fix the line.") from e
            if not isinstance(records[-1], dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(records[-1]).__name__}.")
    return records


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """One JSON object a line, through a temporary name: neither a reader nor a crash sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.partial", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(f"{path}.partial", path)


def usable_records(records: list[dict], check_audio_files=True, cache_file: str | None = None) -> tuple[list, Counter]:
    """The records that can be trained on, and the count of the others by reason (`audio_missing`, ...)."""
    reasons = [(record_problem(record) or [None])[0] for record in records]
    paths = [record["audio_path"] for record, reason in zip(records, reasons, strict=True) if not reason]
    audio = audio_problems(paths, cache_file) if check_audio_files else {}
    for index, record in enumerate(records):
        if not reasons[index] and audio.get(record["audio_path"]):
            reasons[index] = f"audio_{audio[record['audio_path']]}"
    usable = [record for record, reason in zip(records, reasons, strict=True) if not reason]
    return usable, Counter(reason for reason in reasons if reason)


def audio_problems(paths: list[str], cache_file: str | None = None) -> dict[str, str | None]:
    """`check_audio` of each distinct path but those whose size and mtime match `cache_file`; ranks share the work."""
    started, unique, cache = time.perf_counter(), list(dict.fromkeys(paths)), {}
    if cache_file and os.path.isfile(cache_file):
        try:
            cache = json.loads(Path(cache_file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("%s is unreadable: every audio file is checked again.", cache_file)
    keys = {p: [(stat := os.stat(p)).st_size, stat.st_mtime_ns] for p in unique if os.path.isfile(p)}
    entries = {p: e for p, e in cache.items() if isinstance(e, list) and len(e) == 3} if isinstance(cache, dict) else {}
    results = {p: entries[p][2] for p, key in keys.items() if p in entries and entries[p][:2] == key}
    todo = [path for path in unique if path not in results]
    dist = sys.modules.get("torch.distributed")  # set up by a launched job (torch is not imported for it)
    world = dist.get_world_size() if dist and dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    mine = {path: check_audio(path) for path in todo[rank::world]}
    shares = [mine] * world  # all_gather_object replaces each with that rank's results
    if world > 1:
        dist.all_gather_object(shares, mine)
    for share in shares:
        results.update(share)
    if cache_file and rank == 0:  # a torn cache is only unreadable: every file is then checked again
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        Path(cache_file).write_text(json.dumps({p: [*key, results[p]] for p, key in keys.items()}), encoding="utf-8")
    logger.info(
        f"Audio check: {len(unique)} files, {len(todo)} decoded now (over {world} process(es)), "
        f"{len(unique) - len(todo)} unchanged since {cache_file or '(no cache)'}; {time.perf_counter() - started:.1f} s"
    )
    return results


def load_avqa_dataset(path: str, think=False, check_audio_files=True, format_instruction=True, audio_cache=None):
    """The JSONL at `path` as a `datasets.Dataset` of training rows (`avqa_example`), unusable rows dropped."""
    import datasets  # deferred: the converter imports this module and needs no Arrow

    records = read_jsonl(path)
    usable, dropped = usable_records(records, check_audio_files, audio_cache)
    reasons, n = ", ".join(f"{reason}: {count}" for reason, count in dropped.most_common()), len(records)
    if not usable:
        advice = "Check that the WAVs exist where `audio_path` says, or re-create the file (r1aqa.prepare_avqa)."
        raise DataError(f"{path}: none of its {n} rows is usable ({reasons or 'the file is empty'}). {advice}")
    if dropped:
        logger.warning(f"{path}: dropped {n - len(usable)} of {n} rows ({reasons}); training on {len(usable)}.")
    rows = [avqa_example(record, think, format_instruction) for record in usable]
    # `Dataset.from_list` takes its columns from the first row and silently drops keys only later rows have.
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return datasets.Dataset.from_list([{key: row.get(key) for key in columns} for row in rows])
