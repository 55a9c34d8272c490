"""Training and evaluation rows: AVQA JSONL (written by `r1aqa.prepare_avqa`), MMAU and MMAR items -> conversations.

Every row holds a conversational `prompt` (one user turn: the audio part with the WAV path, then docs/recipe.md §4's text),
the gold `solution` (`<answer>{option}</answer>`) and every original key, which the reward functions receive as
keyword arguments. Training and evaluation build prompts here and nowhere else.

    from r1aqa.data import load_avqa_dataset
    train = load_avqa_dataset("data/avqa/train.jsonl", think=False)

Unusable rows (missing keys, an `answer` outside the options, empty or duplicated options, audio that is missing,
unreadable, empty, truncated or with a corrupt body) are dropped before training, counted by reason and reported with
one warning; if none is left `DataError` says what to do. A line that is not JSON is an error naming the file and
line: the file is broken, and skipping lines of a broken file would hide that.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter

from r1aqa.audio import check_audio
from r1aqa.prompts import avqa_question, format_question, solution_text, user_turn

logger = logging.getLogger(__name__)

# The keys of one AVQA question, in AVQA's order (docs/recipe.md §2); the converter adds the last two.
AVQA_KEYS = (
    "id",
    "video_name",
    "video_id",
    "question_text",
    "multi_choice",
    "answer",
    "question_relation",
    "question_type",
)
ADDED_KEYS = ("dataset_name", "audio_path")
# What building a prompt reads; the other keys are only passed through.
QUESTION_KEYS = ("question_text", "multi_choice", "answer")
BUILT_KEYS = ("prompt", "solution")


class DataError(ValueError):
    """A data file or record that cannot be used; the message names it and says what to do."""


def record_problem(record: object, extra_keys: tuple[str, ...] = ("audio_path",)) -> tuple[str, str] | None:
    """Why a question cannot be trained on, as `(reason, detail)`, or None when it can.

    Checks that `question_text`, `multi_choice`, `answer` and `extra_keys` are present and that the question, options
    and answer are sound. Shared by the converter (on AVQA's raw questions) and the loader (on JSONL rows), so both
    skip the same things under the same names.

    >>> record_problem({"question_text": "Q?", "multi_choice": ["a", "b"], "answer": 2, "audio_path": "x.wav"})
    ('answer_out_of_range', 'answer 2 but 2 options')
    """
    if not isinstance(record, dict):
        return "not_an_object", f"expected a JSON object, got {type(record).__name__}"
    missing = [key for key in dict.fromkeys(QUESTION_KEYS + extra_keys) if key not in record]
    if missing:
        return "missing_keys", ", ".join(missing)
    if not _is_text(record["question_text"]):
        return "bad_question_text", f"question_text must be a non-empty string, got {record['question_text']!r}"
    return choices_problem(record["multi_choice"]) or answer_problem(record["answer"], len(record["multi_choice"]))


def choices_problem(choices: object) -> tuple[str, str] | None:
    """Options must be a list of at least two distinct, non-empty strings (compared stripped, as the reward does)."""
    if not isinstance(choices, list) or not all(isinstance(choice, str) for choice in choices):
        return "bad_choices", "multi_choice must be a list of strings"
    if len(choices) < 2 or not all(choice.strip() for choice in choices):
        return "empty_choices", f"need at least two non-empty options, got {choices!r}"
    stripped = [choice.strip() for choice in choices]
    duplicated = sorted({choice for choice in stripped if stripped.count(choice) > 1})
    if duplicated:
        return "duplicate_choices", f"repeated option(s) {duplicated!r}: the answer would be ambiguous"
    return None


def answer_problem(answer: object, n_choices: int) -> tuple[str, str] | None:
    """`answer` is a 0-based index into the options (a bool is not an index, although Python says it is an int)."""
    if isinstance(answer, bool) or not isinstance(answer, int):
        return "bad_answer", f"answer must be an integer index, got {answer!r}"
    if not 0 <= answer < n_choices:
        return "answer_out_of_range", f"answer {answer} but {n_choices} options"
    return None


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _record_id(record: object) -> object:
    return record.get("id") if isinstance(record, dict) else None


def _example(original: dict, audio_path: str, text: str, answer: str | None) -> dict:
    """The row: `prompt`, `solution` (none when the answer is withheld), then the original keys."""
    clashes = [key for key in BUILT_KEYS if key in original]
    if clashes:
        raise DataError(f"record {original.get('id')!r} already has key(s) {clashes}: rename them in the input file.")
    solution = {} if answer is None else {"solution": solution_text(answer)}
    return {"prompt": user_turn(audio_path, text), **solution, **original}


def avqa_example(record: dict, think: bool = False, format_instruction: bool = True) -> dict:
    """One JSONL record -> the training row: `prompt`, `solution`, then every original key unchanged.

    The question has `video` replaced by `audio` (lowercase only, as the original); Prompt <3> when `think`;
    `format_instruction=False` gives Prompt <1> (the SFT baselines).
    """
    problem = record_problem(record)
    if problem:
        raise DataError(f"record {_record_id(record)!r} cannot be used: {problem[0]} ({problem[1]}).")
    choices = record["multi_choice"]
    text = format_question(avqa_question(record["question_text"]), choices, think, format_instruction)
    return _example(record, record["audio_path"], text, choices[record["answer"]])


def avqa_eval_example(
    record: dict, audio_dir: str | None = None, think: bool = False, format_instruction: bool = True
) -> dict:
    """One row of an AVQA JSONL (e.g. the validation split `r1aqa.prepare_avqa` writes) as evaluation reads it: the
    very row training builds (`avqa_example`), its clip the row's `audio_path`, or with `audio_dir` the file of that
    name in `audio_dir` (the WAVs moved since the conversion)."""
    if audio_dir is not None and _is_text(record.get("audio_path")):
        record = {**record, "audio_path": os.path.join(audio_dir, os.path.basename(record["audio_path"]))}
    return avqa_example(record, think, format_instruction)


def mmau_audio_path(item: dict, audio_dir: str) -> str:
    """MMAU's `audio_id` is `./test-mini-audios/<id>.wav`; users unpack the audio anywhere, so keep the file name."""
    return os.path.join(audio_dir, os.path.basename(item["audio_id"]))


def mmau_example(item: dict, audio_dir: str, think: bool = False, format_instruction: bool = True) -> dict:
    """One MMAU item -> the same conversation as training: `prompt`, `solution`, the item's keys, `audio_path`.

    MMAU's `question` is used as is (no video->audio replacement) with its `choices`; `answer` is the option text.
    The full test split withholds `answer`: the row then has no `solution`. `format_instruction=False` gives
    Prompt <1> (the SFT baselines).
    """
    audio_path = mmau_audio_path(item, audio_dir)
    text = format_question(item["question"], item["choices"], think, format_instruction)
    return {**_example(item, audio_path, text, item.get("answer")), "audio_path": audio_path}


def mmar_audio_path(item: dict, audio_dir: str) -> str:
    """MMAR's `audio_path` is `./audio/<name>.wav` (the name is not always the id): the file name under `audio_dir`."""
    return os.path.join(audio_dir, os.path.basename(item["audio_path"]))


def mmar_example(item: dict, audio_dir: str, think: bool = False, format_instruction: bool = True) -> dict:
    """One MMAR metadata item -> the same conversation as MMAU's (`mmau_example`): its `question` and `choices` in
    the training prompt, the audio found under `audio_dir` by the file name of `audio_path` (which the row's
    `audio_path` then holds)."""
    audio_path = mmar_audio_path(item, audio_dir)
    text = format_question(item["question"], item["choices"], think, format_instruction)
    return {**_example(item, audio_path, text, item.get("answer")), "audio_path": audio_path}


def read_jsonl(path: str) -> list[dict]:
    """One JSON object per line; blank lines are ignored. A bad line raises `DataError` naming `path:line`."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file. Create it with `python -m r1aqa.prepare_avqa` (see data/README.md).")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                records.append(_parse_line(line, path, line_number))
    return records


def _parse_line(line: str, path: str, line_number: int) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}:{line_number}: not valid JSON ({error.msg}, column {error.colno}). Fix or delete that line, "
            "or re-create the file with `python -m r1aqa.prepare_avqa`."
        ) from error
    if not isinstance(record, dict):
        raise DataError(f"{path}:{line_number}: expected a JSON object per line, got {type(record).__name__}.")
    return record


def usable_records(
    records: list[dict], check_audio_files: bool = True, cache_file: str | None = None
) -> tuple[list[dict], Counter]:
    """The records that can be trained on, and the count of the others by reason (`audio_missing`, ...). Each distinct
    audio file is checked once (`audio_problems`, with `cache_file` to reuse an earlier check)."""
    reasons = [_record_reason(record) for record in records]
    audio = {}
    if check_audio_files:
        audio = audio_problems(
            [r["audio_path"] for r, why in zip(records, reasons, strict=True) if not why], cache_file
        )
    usable, dropped = [], Counter()
    for record, reason in zip(records, reasons, strict=True):
        if not reason and audio.get(record["audio_path"]):
            reason = f"audio_{audio[record['audio_path']]}"
        if reason:
            dropped[reason] += 1
        else:
            usable.append(record)
    return usable, dropped


def _record_reason(record: dict) -> str | None:
    problem = record_problem(record)
    if problem:
        return problem[0]
    if not _is_text(record["audio_path"]):
        return "bad_audio_path"
    return None


def _file_key(path: str) -> list[int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def audio_problems(paths: list[str], cache_file: str | None = None) -> dict[str, str | None]:
    """`r1aqa.audio.check_audio` of each distinct path in `paths`.

    A file whose size and modification time match `cache_file` (written by an earlier check, e.g. before a resume)
    is not decoded again. In a launched job (torch.distributed initialised) each process checks its share of the
    remaining files and the processes exchange their results, so no file is decoded twice; rank 0 writes the cache.
    The log says how many files were checked, how many were reused and how long it took.
    """
    started = time.perf_counter()
    unique = list(dict.fromkeys(paths))
    cache = _read_audio_cache(cache_file)
    keys = {path: _file_key(path) for path in unique}
    results, todo = {}, []
    for path in unique:
        entry = cache.get(path)
        if keys[path] is not None and isinstance(entry, list) and len(entry) == 3 and entry[:2] == keys[path]:
            results[path] = entry[2]
        else:
            todo.append(path)
    rank, world = _process_group()
    for share in _all_gather({path: check_audio(path) for path in todo[rank::world]}):
        results.update(share)
    if cache_file and rank == 0:
        _write_audio_cache(cache_file, {p: [*keys[p], results[p]] for p in unique if keys[p] is not None})
    logger.info(
        "Audio check: %d files, %d decoded now (over %d process(es)), %d unchanged since %s; %.1f s",
        len(unique),
        len(todo),
        world,
        len(unique) - len(todo),
        cache_file or "(no cache)",
        time.perf_counter() - started,
    )
    return results


def _read_audio_cache(cache_file: str | None) -> dict:
    if not cache_file or not os.path.isfile(cache_file):
        return {}
    try:
        with open(cache_file, encoding="utf-8") as f:
            cache = json.load(f)
    except (OSError, ValueError):
        logger.warning("%s is unreadable: every audio file is checked again.", cache_file)
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_audio_cache(cache_file: str, entries: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(cache_file)), exist_ok=True)
    partial = f"{cache_file}.partial"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    os.replace(partial, cache_file)  # a reader never sees half a file


def _process_group() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1); torch is not imported for it."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(value: dict) -> list[dict]:
    rank, world = _process_group()
    if world == 1:
        return [value]
    dist = sys.modules["torch.distributed"]
    values = [None] * world
    dist.all_gather_object(values, value)
    return values


def load_avqa_dataset(
    path: str,
    think: bool = False,
    check_audio_files: bool = True,
    format_instruction: bool = True,
    audio_cache: str | None = None,
):
    """The JSONL at `path` as a `datasets.Dataset` of training rows (see `avqa_example`).

    Every audio file is checked first (exists, readable header, not empty, the whole body decodes to finite samples:
    `r1aqa.audio.check_audio`) unless `check_audio_files=False`; unusable rows are dropped and counted in one warning.
    Raises `DataError` when no row is usable. `audio_cache`: a file that keeps the check's results, so that an
    unchanged file is not decoded again (training keeps it in its output folder, reused on resume).
    """
    records = read_jsonl(path)
    usable, dropped = usable_records(records, check_audio_files, audio_cache)
    _report(path, len(records), len(usable), dropped)
    rows = [avqa_example(record, think, format_instruction) for record in usable]
    return _to_dataset(rows)


def _report(path: str, total: int, n_usable: int, dropped: Counter) -> None:
    reasons = ", ".join(f"{reason}: {count}" for reason, count in dropped.most_common())
    if n_usable == 0:
        raise DataError(
            f"{path}: none of its {total} rows is usable ({reasons or 'the file is empty'}). Check that the WAVs "
            "exist where `audio_path` says, or re-create the file with `python -m r1aqa.prepare_avqa`."
        )
    if dropped:
        logger.warning(
            "%s: dropped %d of %d rows (%s); training on %d.", path, total - n_usable, total, reasons, n_usable
        )
    else:
        logger.info("%s: all %d rows usable.", path, total)


def _to_dataset(rows: list[dict]):
    import datasets  # deferred: the converter imports this module and needs no Arrow

    # `Dataset.from_list` takes its columns from the first row and silently drops keys only later rows have.
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return datasets.Dataset.from_list([{key: row.get(key) for key in columns} for row in rows])
