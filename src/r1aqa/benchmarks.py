"""MMAU and MMAR scoring with their official rule (docs/recipe.md §7, §8), printed in the layout of each benchmark's
`evaluation.py`.

    python -m r1aqa.benchmarks --input outputs/mmau_predictions.json --json outputs/mmau_summary.json
    python -m r1aqa.benchmarks --input outputs/mmar_predictions.json          # MMAR: told apart by its `modality` key

Both benchmarks use the same rule (`is_match`: MMAU's token-set match, which MMAR's script copies) and differ in
their groups and prediction key:

| benchmark | groups (in the official printout's order) | prediction key read |
| --- | --- | --- |
| MMAU | task (sound, music, speech), difficulty (easy, hard, medium), sub-category | `model_output`, else `model_prediction` |
| MMAR | modality (7 fixed), category (4 fixed layers), sub-category | `answer_prediction`, else `model_output` |
| AVQA | question type, question relation (in order of appearance) | `model_output`, else `model_prediction` |

AVQA is the held-out validation split `r1aqa.prepare_avqa` writes in the training format (docs/recipe.md §2): its
options are `multi_choice` and its `answer` is an index into them, so the gold text is `multi_choice[answer]`; it is
scored with the same rule, to choose a checkpoint without looking at the test set.

The input is a JSON list of items (or JSON lines, when its name ends in `.jsonl`, as MMAR's script decides) carrying
the prediction. The benchmark is AVQA when the items have `multi_choice`, MMAR when they have `modality`, else MMAU
(`--benchmark` to say it). Unlike the
official scripts this never skips an item or crashes on one: a missing, None or non-string prediction counts as wrong
and is counted (MMAR's script skips items lacking `answer_prediction`; `r1aqa.evaluate` writes it for every item, so
the totals agree), and items whose answer is not among their choices are listed. Predictions are scored as they
are, exactly as the official scripts do: `r1aqa.evaluate` has already reduced each output to its answer with
`extract_answer`, the accuracy reward's extraction (the raw output is kept under `model_raw_output`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
from pathlib import Path

# The official scripts print these groups in this order, empty or not; other values follow in order of appearance.
TASKS = ("sound", "music", "speech")
DIFFICULTIES = ("easy", "hard", "medium")
MODALITIES = (
    "sound",
    "music",
    "speech",
    "mix-sound-music",
    "mix-sound-speech",
    "mix-music-speech",
    "mix-sound-music-speech",
)
CATEGORIES = ("Signal Layer", "Perception Layer", "Semantic Layer", "Cultural Layer")
BENCHMARKS = {
    # groups: (item key, printed title, values printed first); sub-category follows, optional per item
    "mmau": {
        "groups": (("task", "Task", TASKS), ("difficulty", "Difficulty", DIFFICULTIES)),
        "prediction_keys": ("model_output", "model_prediction"),
    },
    "mmar": {
        "groups": (("modality", "Modality", MODALITIES), ("category", "Category", CATEGORIES)),
        "prediction_keys": ("answer_prediction", "model_output", "model_prediction"),
    },
    # AVQA's validation questions in the training format: options `multi_choice`, `answer` their index; no
    # sub-category. Group values are AVQA's own, printed in order of appearance.
    "avqa": {
        "groups": (("question_type", "Question type", ()), ("question_relation", "Question relation", ())),
        "prediction_keys": ("model_output", "model_prediction"),
        "choices_key": "multi_choice",
        "answer_is_index": True,
        "sub_category": False,
    },
}
# Known releases of the benchmark files, by the sha256 of the file's bytes (what `data_release` reports). MMAU
# test-mini: `mmau-test-mini.json` of github.com/Sakshi113/MMAU at each commit; MMAR: github.com/ddlBoJack/MMAR.
RELEASES = {
    "ed2fd6b6c24ebec1a5a496de5d767e7ebfe79556044d8f0d8bd00ad0cf02d623": "MMAU test-mini a5cd89a (2025-01-28)",
    "e8cc09223b497191781756212cb616315690aaa6ea7ac359db1b65d97d1e2433": "MMAU test-mini 1f675a9 (2025-03-25)",
    "9f18fda99f8dbc2bc5ecd6323fb5063309f54969810b5c6f1caeb3b8d904cf1c": "MMAU test-mini v05.15.25 (f0a4a97, 2025-08-09)",
    "1c9a343e7bebf1037482b935c54eacd43cc63df7b2c668724b5560caf1f84fad": "MMAR MMAR-meta.jsonl a355584 (2026-02-16)",
    "7240ecca11b252c782ef44d4d19f711dd9b8424656a2bc3f92c548e318d25cee": "MMAR MMAR-meta.json 6249700 (2025-05-11)",
}
# The release the paper's numbers were measured on: 64.50 was published on 2025-03-14, before 1f675a9.
PAPER_RELEASE = RELEASES["ed2fd6b6c24ebec1a5a496de5d767e7ebfe79556044d8f0d8bd00ad0cf02d623"]
PREDICTION_KEYS = BENCHMARKS["mmau"]["prediction_keys"]  # MMAU's official evaluation.py reads the first
_WORD = re.compile(r"\b\w+\b")
RULE = "*" * 30


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
        choice_tokens = tokens(choice)
        if choice_tokens != expected:
            wrong |= choice_tokens - expected
    return expected <= predicted and predicted.isdisjoint(wrong)


def detect_benchmark(items: list) -> str:
    """`avqa` when the first item has AVQA's `multi_choice`, `mmar` when it has MMAR's `modality` key, else `mmau`."""
    first = items[0] if items else None
    if isinstance(first, dict) and "multi_choice" in first:
        return "avqa"
    return "mmar" if isinstance(first, dict) and "modality" in first and "task" not in first else "mmau"


def read_prediction(item: dict, keys: tuple[str, ...] = PREDICTION_KEYS) -> tuple[str | None, str | None]:
    """`(prediction, None)`, or `(None, problem)` with problem "missing", "none" or "non_string".

    The prediction is under the first of `keys` the item has (MMAU: `model_output`, which the official script reads,
    else `model_prediction`).
    """
    key = next((key for key in keys if key in item), None)
    if key is None:
        return None, "missing"
    value = item[key]
    if value is None:
        return None, "none"
    if not isinstance(value, str):
        return None, "non_string"
    return value, None


def _group(counts: dict[str, list[int]]) -> dict[str, dict]:
    return {name: _accuracy(correct, total) for name, (correct, total) in counts.items()}


def _accuracy(correct: int, total: int) -> dict:
    return {"accuracy": round(100 * correct / total, 2) if total else 0.0, "correct": correct, "total": total}


def group_keys(benchmark: str) -> list[str]:
    """The summary's group keys, in printing order: MMAU task, difficulty, sub-category; MMAR modality, category,
    sub-category."""
    spec = BENCHMARKS[benchmark]
    return [key for key, _, _ in spec["groups"]] + (["sub-category"] if spec.get("sub_category", True) else [])


def score(items: list[dict], benchmark: str | None = None) -> dict:
    """Accuracy (%, 2 decimals) per group (MMAU: task, difficulty, sub-category; MMAR: modality, category,
    sub-category) and in total (micro average over items). `benchmark`: `mmau`, `mmar`, or None to tell from the items.

    Also reports `no_prediction` (how many predictions were missing, None or not a string; all counted wrong) and
    `answer_not_in_choices` (ids of items whose answer is not one of their choices; scored by the rule anyway).
    """
    benchmark = benchmark or detect_benchmark(items)
    spec = BENCHMARKS[benchmark]
    choices_key = spec.get("choices_key", "choices")
    required = ("answer", choices_key, *(key for key, _, _ in spec["groups"]))
    groups: dict[str, dict[str, list[int]]] = {
        key: {name: [0, 0] for name in first} for key, _, first in spec["groups"]
    }
    by_subcategory: dict[str, list[int]] = {}
    no_prediction = {"missing": 0, "none": 0, "non_string": 0}
    answer_not_in_choices = []
    correct = 0
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"item {index}: expected a JSON object, got {type(item).__name__}")
        absent = [key for key in required if key not in item]
        if absent:
            raise ValueError(f"item {index} (id {item.get('id')!r}): missing key(s) {absent}")
        answer, choices = _answer_and_choices(item, index, choices_key, spec.get("answer_is_index", False))
        prediction, problem = read_prediction(item, spec["prediction_keys"])
        if problem:
            no_prediction[problem] += 1
        if answer not in choices:
            answer_not_in_choices.append(item.get("id"))
        hit = prediction is not None and is_match(prediction, answer, choices)
        correct += hit
        members = [groups[key].setdefault(item[key], [0, 0]) for key in groups]
        if item.get("sub-category") is not None:  # as the official scripts: items without one join no sub-category
            members.append(by_subcategory.setdefault(item["sub-category"], [0, 0]))
        for counts in members:
            counts[0] += hit
            counts[1] += 1
    return {
        "benchmark": benchmark,
        "total": _accuracy(correct, len(items)),
        **{key: _group(counts) for key, counts in groups.items()},
        **({"sub-category": _group(by_subcategory)} if spec.get("sub_category", True) else {}),
        "no_prediction": no_prediction,
        "answer_not_in_choices": answer_not_in_choices,
    }


def _answer_and_choices(item: dict, index: int, choices_key: str, answer_is_index: bool) -> tuple[str, list[str]]:
    """The gold option text and the options; AVQA's `answer` is an index into `multi_choice` (docs/recipe.md §2)."""
    choices, answer = item[choices_key], item["answer"]
    if not (isinstance(choices, list) and all(isinstance(choice, str) for choice in choices)):
        what = f"{choices_key} must be a list of strings" if answer_is_index else "answer and choices must be strings"
        raise ValueError(f"item {index} (id {item.get('id')!r}): {what}")
    if answer_is_index:
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValueError(
                f"item {index} (id {item.get('id')!r}): answer must index {choices_key} (0..{len(choices) - 1}), "
                f"got {answer!r}"
            )
        return choices[answer], choices
    if not isinstance(answer, str):
        raise ValueError(f"item {index} (id {item.get('id')!r}): answer and choices must be strings")
    return answer, choices


def _titles(benchmark: str) -> list[tuple[str, str]]:
    sub_category = [("Sub-category", "sub-category")] if BENCHMARKS[benchmark].get("sub_category", True) else []
    return [(title, key) for key, title, _ in BENCHMARKS[benchmark]["groups"]] + sub_category


def format_report(summary: dict) -> str:
    """The official script's printout (group rows, total), then our extra counts."""
    lines = []
    for title, key in _titles(summary.get("benchmark", "mmau")):
        lines += [RULE, f"{title}-wise Accuracy:"]
        lines += [f"{name} : {row['accuracy']:.2f}% over {row['total']} samples" for name, row in summary[key].items()]
    total = summary["total"]
    missing = summary["no_prediction"]
    lines += [RULE, f"Total Accuracy: {total['accuracy']:.2f}% over {total['total']} samples", RULE]
    lines += [
        f"No prediction count: {sum(missing.values())}",
        f"  (counted wrong) missing: {missing['missing']}, None: {missing['none']}, non-string: {missing['non_string']}",
        f"Answer not among choices: {len(summary['answer_not_in_choices'])} {summary['answer_not_in_choices']}",
    ]
    return "\n".join(lines)


# ---- several sampled passes ----------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value): the one mean/std of the package."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(summaries: list[dict]) -> dict:
    """Mean and standard deviation (n - 1) over K summaries of the same items (K seeded sampling passes).

    Each row is `{"accuracy": mean, "std": std, "total": n_items, "per_sample": [accuracy of each pass]}`, for the
    total and every group of the benchmark; `no_prediction` is summed over the passes.
    """
    if not summaries:
        raise ValueError("no summaries to aggregate")
    benchmark = summaries[0].get("benchmark", "mmau")

    def row(rows: list[dict]) -> dict:
        per_sample = [r["accuracy"] for r in rows]
        mean, std = (round(x, 2) for x in mean_std(per_sample))
        return {"accuracy": mean, "std": std, "total": rows[0]["total"], "per_sample": per_sample}

    out = {"benchmark": benchmark, "num_samples": len(summaries), "total": row([s["total"] for s in summaries])}
    for key in group_keys(benchmark):
        names = summaries[0][key]
        out[key] = {name: row([s[key][name] for s in summaries]) for name in names}
    out["no_prediction"] = {
        kind: sum(s["no_prediction"][kind] for s in summaries) for kind in summaries[0]["no_prediction"]
    }
    out["answer_not_in_choices"] = summaries[0]["answer_not_in_choices"]
    return out


def format_aggregate(summary: dict) -> str:
    """The official layout with `mean ± std` accuracies over the passes."""
    lines = []
    for title, key in _titles(summary["benchmark"]):
        lines += [RULE, f"{title}-wise Accuracy (mean ± std over {summary['num_samples']} passes):"]
        lines += [
            f"{name} : {row['accuracy']:.2f}% ± {row['std']:.2f} over {row['total']} samples"
            for name, row in summary[key].items()
        ]
    total = summary["total"]
    lines += [
        RULE,
        f"Total Accuracy: {total['accuracy']:.2f}% ± {total['std']:.2f} over {total['total']} samples "
        f"({summary['num_samples']} passes: {', '.join(f'{a:.2f}' for a in total['per_sample'])})",
        RULE,
    ]
    return "\n".join(lines)


# ---- files ---------------------------------------------------------------------------------------------------------


def release_name(sha256: str | None) -> str:
    """The known release whose file has this sha256, else `unknown release (sha256 <first 12 hex digits>)`."""
    if sha256 in RELEASES:
        return RELEASES[sha256]
    return f"unknown release (sha256 {(sha256 or '?')[:12]})"


def data_release(path: str | Path) -> dict:
    """`{"release", "sha256"}` of a benchmark file, identified by its content (`RELEASES`), not by its name."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"release": release_name(digest), "sha256": digest}


def load_items(path: str | Path) -> list[dict]:
    """The items in `path`: a JSON list, or JSON lines when the name ends in `.jsonl` (MMAR's metadata).

    A ValueError names the file (and line, for JSON lines) when it cannot be read as such.
    """
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".jsonl"):
        return _json_lines(text, path)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of items, got a JSON {type(items).__name__}")
    return items


def _json_lines(text: str, path: str | Path) -> list[dict]:
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}, column {error.colno})") from error
        if not isinstance(item, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object per line, got a JSON {type(item).__name__}")
        items.append(item)
    return items


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="JSON list (or .jsonl) of MMAU or MMAR items with predictions")
    parser.add_argument("--benchmark", choices=("auto", *BENCHMARKS), default="auto", help="default: from the items")
    parser.add_argument("--json", help="also write the summary (accuracies, counts) to this JSON file")
    args = parser.parse_args(argv)
    try:
        items = load_items(args.input)
    except (OSError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    try:
        summary = score(items, None if args.benchmark == "auto" else args.benchmark)
    except ValueError as error:
        parser.exit(2, f"error: {args.input}: {error}\n")
    print(format_report(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
