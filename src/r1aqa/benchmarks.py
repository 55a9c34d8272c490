"""The benchmark registry: MMAU, MMAR and AVQA validation (item keys, clip, prompt, gold answer, groups, matching rule,
release), scoring and the official scripts' printout.

    python -m r1aqa.benchmarks --input outputs/mmau_predictions.json --json outputs/mmau_summary.json

One rule for all (`is_match`: MMAU's token-set match, which MMAR's script copies); a missing, None or non-string
prediction counts as wrong and is counted, never skipped (docs/recipe.md §7, §8).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import sys
from pathlib import Path

from r1aqa.data import avqa_example, read_jsonl, record_problem
from r1aqa.prompts import format_question, solution_text, user_turn

# The official scripts print these groups in this order, empty or not; other values follow in order of appearance.
TASKS = ("sound", "music", "speech")
DIFFICULTIES = ("easy", "hard", "medium")
MODALITIES = ("sound", "music", "speech", "mix-sound-music", "mix-sound-speech", "mix-music-speech",
              "mix-sound-music-speech")  # fmt: skip
CATEGORIES = ("Signal Layer", "Perception Layer", "Semantic Layer", "Cultural Layer")
SUB_CATEGORY = ("sub-category", "Sub-category", ())  # optional per item: items without one join none
# Prompt <2> (the paper's main result), Prompt <3> (think) and Prompt <1> (question and options only: SFT baselines).
PROMPT_STYLES = {
    "answer": {"think": False, "format_instruction": True},
    "think": {"think": True, "format_instruction": True},
    "plain": {"think": False, "format_instruction": False},
}
BENCHMARKS = {
    # keys: what a prompt needs; clip_key: the item key whose file name is the clip; groups: (item key, printed
    # title, values printed first); prediction_keys: read in this order (MMAU's and MMAR's evaluation.py read the first)
    "mmau": {
        "keys": ("id", "audio_id", "question", "choices"),
        "clip_key": "audio_id",
        "groups": (("task", "Task", TASKS), ("difficulty", "Difficulty", DIFFICULTIES), SUB_CATEGORY),
        "prediction_keys": ("model_output", "model_prediction"),
    },
    "mmar": {
        "keys": ("id", "audio_path", "question", "choices"),
        "clip_key": "audio_path",
        "groups": (("modality", "Modality", MODALITIES), ("category", "Category", CATEGORIES), SUB_CATEGORY),
        "prediction_keys": ("answer_prediction", "model_output", "model_prediction"),
    },
    # the validation split r1aqa.prepare_avqa writes (training's format): `answer` indexes `multi_choice`
    "avqa": {
        "keys": ("id", "audio_path", "question_text", "multi_choice", "answer"),
        "clip_key": "audio_path",
        "groups": (("question_type", "Question type", ()), ("question_relation", "Question relation", ())),
        "prediction_keys": ("model_output", "model_prediction"),
    },
}
# Known releases of the benchmark files, by the sha256 of the file's bytes. MMAU test-mini: `mmau-test-mini.json` of
# github.com/Sakshi113/MMAU at each commit; MMAR: github.com/ddlBoJack/MMAR.
RELEASES = {
    "ed2fd6b6c24ebec1a5a496de5d767e7ebfe79556044d8f0d8bd00ad0cf02d623": "MMAU test-mini a5cd89a (2025-01-28)",
    "e8cc09223b497191781756212cb616315690aaa6ea7ac359db1b65d97d1e2433": "MMAU test-mini 1f675a9 (2025-03-25)",
    "9f18fda99f8dbc2bc5ecd6323fb5063309f54969810b5c6f1caeb3b8d904cf1c": "MMAU test-mini v05.15.25 (f0a4a97, 2025-08-09)",
    "1c9a343e7bebf1037482b935c54eacd43cc63df7b2c668724b5560caf1f84fad": "MMAR MMAR-meta.jsonl a355584 (2026-02-16)",
    "7240ecca11b252c782ef44d4d19f711dd9b8424656a2bc3f92c548e318d25cee": "MMAR MMAR-meta.json 6249700 (2025-05-11)",
}
# The release the paper's numbers were measured on: 64.50 was published on 2025-03-14, before 1f675a9.
PAPER_RELEASE = RELEASES["ed2fd6b6c24ebec1a5a496de5d767e7ebfe79556044d8f0d8bd00ad0cf02d623"]
_WORD = re.compile(r"\b\w+\b")
RULE = "*" * 30


# ---- items, clips, prompts -----------------------------------------------------------------------------------------


def detect_benchmark(items: list) -> str:
    """`avqa` when the first item has AVQA's `multi_choice`, `mmar` when it has MMAR's `modality` key, else `mmau`."""
    first = items[0] if items and isinstance(items[0], dict) else {}
    if "multi_choice" in first:
        return "avqa"
    return "mmar" if "modality" in first and "task" not in first else "mmau"


def groups(benchmark: str) -> tuple[tuple[str, str, tuple], ...]:
    """The benchmark's groups in printing order: (item key, printed title, values printed first)."""
    return BENCHMARKS[benchmark]["groups"]


def load_items(path: str | Path) -> list[dict]:
    """The items in `path`: a JSON list, or JSON lines when the name ends in `.jsonl` (MMAR's metadata). A ValueError
    names the file (and line) when it cannot be read as such."""
    if str(path).endswith(".jsonl"):
        return read_jsonl(str(path))
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of items, got a JSON {type(items).__name__}")
    return items


def read_items(path: str, benchmark: str = "auto", limit: int | None = None) -> tuple[str, list[dict]]:
    """`(benchmark, items)`: the first `limit` items of `path`, each checked for what its prompt needs (`auto`: told
    from the items). A ValueError names the file and item."""
    items = load_items(path)[:limit]
    if not items:
        raise ValueError(f"{path}: no items to evaluate.")
    benchmark = detect_benchmark(items) if benchmark == "auto" else benchmark
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: item {index} is a JSON {type(item).__name__}, not an object.")
        where = f"{path}: item {index} (id {item.get('id')!r})"
        missing = [key for key in BENCHMARKS[benchmark]["keys"] if key not in item]
        if missing:
            raise ValueError(f"{where} lacks {missing}, which a {benchmark.upper()} item has (--benchmark says which "
                             "benchmark the file holds; default: told from the items).")  # fmt: skip
        if benchmark == "avqa":  # the training loader's checks (docs/recipe.md §2), with the same reasons
            problem = record_problem(item)
            if problem:
                raise ValueError(f"{where}: {problem[0]} ({problem[1]}).")
        elif (
            not item["choices"]
            or not all(isinstance(c, str) for c in item["choices"])
            or isinstance(item["choices"], str)
        ):
            raise ValueError(f"{where}: `choices` must be a list of strings.")
    return benchmark, items


def clip_path(benchmark: str, item: dict, audio_dir: str | None) -> str:
    """The item's clip: the file name of its `audio_id` (MMAU: `./test-mini-audios/<id>.wav`) or `audio_path` (MMAR:
    `./audio/<name>.wav`) in `audio_dir`; an AVQA row's own `audio_path` when `audio_dir` is None."""
    name = item[BENCHMARKS[benchmark]["clip_key"]]
    return name if audio_dir is None or not isinstance(name, str) else os.path.join(audio_dir, os.path.basename(name))


def example(benchmark: str, item: dict, audio_dir: str | None = None, prompt_style: str = "answer") -> dict:
    """The item as training builds a row: the item's keys, `prompt` (the user turn with its clip), `solution` (none when
    the answer is withheld, as in MMAU's full test split) and `audio_path` (the clip). AVQA rows go through training's
    own builder (`video` -> `audio`); MMAU and MMAR questions are used as they are."""
    path = clip_path(benchmark, item, audio_dir)
    if benchmark == "avqa":
        return avqa_example({**item, "audio_path": path}, **PROMPT_STYLES[prompt_style])
    text = format_question(item["question"], item["choices"], **PROMPT_STYLES[prompt_style])
    solution = {} if item.get("answer") is None else {"solution": solution_text(item["answer"])}
    return {**item, "prompt": user_turn(path, text), **solution, "audio_path": path}


# ---- the official rule and the score -------------------------------------------------------------------------------


def tokens(text: str) -> set[str]:
    """The official tokenisation: the set of `\\b\\w+\\b` matches in the lower-cased text."""
    return set(_WORD.findall(text.lower()))


def is_match(prediction: str, answer: str, choices: list[str]) -> bool:
    """The official MMAU rule (MMAR's too): the prediction holds every answer word and no word only a wrong option has.

    >>> is_match("a man speaking", "Man", ["Man", "Woman"]), is_match("man or woman", "Man", ["Man", "Woman"])
    (True, False)
    """
    predicted, expected = tokens(prediction), tokens(answer)
    if not predicted:
        return False
    wrong: set[str] = set()
    for choice in choices:
        if tokens(choice) != expected:
            wrong |= tokens(choice) - expected
    return expected <= predicted and predicted.isdisjoint(wrong)


def gold(benchmark: str, item: dict, index: int = 0) -> tuple[str, list[str]]:
    """The gold option text and the options; AVQA's `answer` is an index into `multi_choice` (docs/recipe.md §2)."""
    where = f"item {index} (id {item.get('id')!r})"
    if benchmark == "avqa":
        choices, answer = item["multi_choice"], item["answer"]
        if not (isinstance(choices, list) and all(isinstance(choice, str) for choice in choices)):
            raise ValueError(f"{where}: multi_choice must be a list of strings")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValueError(f"{where}: answer must index multi_choice (0..{len(choices) - 1}), got {answer!r}")
        return choices[answer], choices
    choices, answer = item["choices"], item["answer"]
    if not (isinstance(answer, str) and isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
        raise ValueError(f"{where}: answer and choices must be strings")
    return answer, choices


def _accuracy(correct: int, total: int) -> dict:
    return {"accuracy": round(100 * correct / total, 2) if total else 0.0, "correct": correct, "total": total}


def score(items: list[dict], benchmark: str | None = None) -> dict:
    """Accuracy (%, 2 decimals) per group and in total (micro average over items), `no_prediction` (predictions
    missing, None or not a string: all counted wrong) and `answer_not_in_choices` (ids; scored by the rule anyway).
    `benchmark`: None tells it from the items."""
    benchmark = benchmark or detect_benchmark(items)
    spec = BENCHMARKS[benchmark]
    required = (
        "answer",
        "multi_choice" if benchmark == "avqa" else "choices",
        *(key for key, _, _ in groups(benchmark) if key != "sub-category"),
    )
    counts = {key: {name: [0, 0] for name in first} for key, _, first in groups(benchmark)}
    no_prediction = {"missing": 0, "none": 0, "non_string": 0}
    answer_not_in_choices, correct = [], 0
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"item {index}: expected a JSON object, got {type(item).__name__}")
        absent = [key for key in required if key not in item]
        if absent:
            raise ValueError(f"item {index} (id {item.get('id')!r}): missing key(s) {absent}")
        answer, choices = gold(benchmark, item, index)
        key = next((key for key in spec["prediction_keys"] if key in item), None)
        prediction = item[key] if key else None
        if not isinstance(prediction, str):
            no_prediction["missing" if key is None else "none" if prediction is None else "non_string"] += 1
        if answer not in choices:
            answer_not_in_choices.append(item.get("id"))
        hit = isinstance(prediction, str) and is_match(prediction, answer, choices)
        correct += hit
        for group, members in counts.items():
            if item.get(group) is not None or group != "sub-category":
                row = members.setdefault(item[group], [0, 0])
                row[0], row[1] = row[0] + hit, row[1] + 1
    return {
        "benchmark": benchmark,
        "total": _accuracy(correct, len(items)),
        **{key: {name: _accuracy(*row) for name, row in members.items()} for key, members in counts.items()},
        "no_prediction": no_prediction,
        "answer_not_in_choices": answer_not_in_choices,
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value): the one mean/std of the package."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(summaries: list[dict]) -> dict:
    """Mean ± std (n - 1) over K summaries of the same items (K sampled passes): each row `{"accuracy": mean, "std",
    "total": n items, "per_sample": [accuracy of each pass]}`; `no_prediction` summed over the passes."""
    first = summaries[0]

    def row(rows: list[dict]) -> dict:
        per_sample = [r["accuracy"] for r in rows]
        mean, std = (round(x, 2) for x in mean_std(per_sample))
        return {"accuracy": mean, "std": std, "total": rows[0]["total"], "per_sample": per_sample}

    out = {
        "benchmark": first["benchmark"],
        "num_samples": len(summaries),
        "total": row([s["total"] for s in summaries]),
    }
    for key, _, _ in groups(first["benchmark"]):
        out[key] = {name: row([s[key][name] for s in summaries]) for name in first[key]}
    out["no_prediction"] = {kind: sum(s["no_prediction"][kind] for s in summaries) for kind in first["no_prediction"]}
    return {**out, "answer_not_in_choices": first["answer_not_in_choices"]}


def format_report(summary: dict) -> str:
    """The official script's printout (group rows, total), then our extra counts; `mean ± std` for an aggregate."""
    k = summary.get("num_samples")

    def accuracy(row: dict) -> str:
        return f"{row['accuracy']:.2f}%" + (f" ± {row['std']:.2f}" if k else "") + f" over {row['total']} samples"

    lines = []
    for key, title, _ in groups(summary.get("benchmark", "mmau")):
        lines += [RULE, f"{title}-wise Accuracy" + (f" (mean ± std over {k} passes):" if k else ":")]
        lines += [f"{name} : {accuracy(row)}" for name, row in summary[key].items()]
    total, missing = summary["total"], summary["no_prediction"]
    passes = f" ({k} passes: {', '.join(f'{a:.2f}' for a in total['per_sample'])})" if k else ""
    return "\n".join([*lines, RULE, f"Total Accuracy: {accuracy(total)}{passes}", RULE,
        f"No prediction count: {sum(missing.values())}",
        f"  (counted wrong) missing: {missing['missing']}, None: {missing['none']}, non-string: {missing['non_string']}",
        f"Answer not among choices: {len(summary['answer_not_in_choices'])} {summary['answer_not_in_choices']}"])  # fmt: skip


# ---- releases ------------------------------------------------------------------------------------------------------


def release_name(sha256: str | None) -> str:
    """The known release whose file has this sha256, else `unknown release (sha256 <first 12 hex digits>)`."""
    return RELEASES.get(sha256) or f"unknown release (sha256 {(sha256 or '?')[:12]})"


def data_release(path: str | Path) -> dict:
    """`{"release", "sha256"}` of a benchmark file, identified by its content (`RELEASES`), not by its name."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"release": release_name(digest), "sha256": digest}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="JSON list (or .jsonl) of items with predictions")
    parser.add_argument("--benchmark", choices=("auto", *BENCHMARKS), default="auto", help="default: from the items")
    parser.add_argument("--json", help="also write the summary (accuracies, counts) to this JSON file")
    args = parser.parse_args(argv)
    try:
        items = load_items(args.input)
        summary = score(items, None if args.benchmark == "auto" else args.benchmark)
    except (OSError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(format_report(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
