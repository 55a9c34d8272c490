"""MMAU test-mini scoring with the official rule (docs/recipe.md §7), printed in the layout of MMAU's `evaluation.py`.

    python -m r1aqa.scoring --input outputs/mmau_predictions.json --json outputs/mmau_summary.json

The input is a JSON list of MMAU items carrying the prediction under `model_output` (preferred) or
`model_prediction`. Unlike the official script this never skips an item or crashes on one: a missing, None or
non-string prediction counts as wrong and is counted, and items whose answer is not among their choices are listed.
Predictions are scored as they are, exactly as the official script does: `r1aqa.evaluate` has already reduced each
output to its answer with `extract_answer`, the accuracy reward's extraction (the raw output is kept under
`model_raw_output`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

PREDICTION_KEYS = ("model_output", "model_prediction")  # official evaluation.py reads the first
# The official script prints these groups in this order, empty or not; other values follow in order of appearance.
TASKS = ("sound", "music", "speech")
DIFFICULTIES = ("easy", "hard", "medium")
REQUIRED_KEYS = ("answer", "choices", "task", "difficulty")
_WORD = re.compile(r"\b\w+\b")
RULE = "*" * 30


def tokens(text: str) -> set[str]:
    """The official tokenisation: the set of `\\b\\w+\\b` matches in the lower-cased text."""
    return set(_WORD.findall(text.lower()))


def is_match(prediction: str, answer: str, choices: list[str]) -> bool:
    """The official MMAU rule: the prediction holds every answer word and no word only a wrong option has.

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


def read_prediction(item: dict) -> tuple[str | None, str | None]:
    """`(prediction, None)`, or `(None, problem)` with problem "missing", "none" or "non_string".

    The prediction is `model_output` when that key is present (the official script reads it), else `model_prediction`.
    """
    key = next((key for key in PREDICTION_KEYS if key in item), None)
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


def score(items: list[dict]) -> dict:
    """Accuracy (%, 2 decimals) per task, difficulty and sub-category, and in total (micro average over items).

    Also reports `no_prediction` (how many predictions were missing, None or not a string; all counted wrong) and
    `answer_not_in_choices` (ids of items whose answer is not one of their choices; scored by the rule anyway).
    """
    by_task: dict[str, list[int]] = {name: [0, 0] for name in TASKS}
    by_difficulty: dict[str, list[int]] = {name: [0, 0] for name in DIFFICULTIES}
    by_subcategory: dict[str, list[int]] = {}
    no_prediction = {"missing": 0, "none": 0, "non_string": 0}
    answer_not_in_choices = []
    correct = 0
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"item {index}: expected a JSON object, got {type(item).__name__}")
        absent = [key for key in REQUIRED_KEYS if key not in item]
        if absent:
            raise ValueError(f"item {index} (id {item.get('id')!r}): missing key(s) {absent}")
        if not (isinstance(item["answer"], str) and all(isinstance(choice, str) for choice in item["choices"])):
            raise ValueError(f"item {index} (id {item.get('id')!r}): answer and choices must be strings")
        prediction, problem = read_prediction(item)
        if problem:
            no_prediction[problem] += 1
        if item["answer"] not in item["choices"]:
            answer_not_in_choices.append(item.get("id"))
        hit = prediction is not None and is_match(prediction, item["answer"], item["choices"])
        correct += hit
        groups = [by_task.setdefault(item["task"], [0, 0]), by_difficulty.setdefault(item["difficulty"], [0, 0])]
        if item.get("sub-category") is not None:  # as the official script: items without one join no sub-category
            groups.append(by_subcategory.setdefault(item["sub-category"], [0, 0]))
        for counts in groups:
            counts[0] += hit
            counts[1] += 1
    return {
        "total": _accuracy(correct, len(items)),
        "task": _group(by_task),
        "difficulty": _group(by_difficulty),
        "sub-category": _group(by_subcategory),
        "no_prediction": no_prediction,
        "answer_not_in_choices": answer_not_in_choices,
    }


def format_report(summary: dict) -> str:
    """The official script's printout (task, difficulty, sub-category rows, total), then our extra counts."""
    lines = []
    for title, key in (("Task", "task"), ("Difficulty", "difficulty"), ("Sub-category", "sub-category")):
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


def load_items(path: str | Path) -> list[dict]:
    """The JSON list of MMAU items in `path`; a ValueError naming the file if it is not JSON or not a list."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of MMAU items, got a JSON {type(items).__name__}")
    return items


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="JSON list of MMAU items with model_output/model_prediction")
    parser.add_argument("--json", help="also write the summary (accuracies, counts) to this JSON file")
    args = parser.parse_args(argv)
    try:
        items = load_items(args.input)
    except (OSError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    try:
        summary = score(items)
    except ValueError as error:
        parser.exit(2, f"error: {args.input}: {error}\n")
    print(format_report(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
