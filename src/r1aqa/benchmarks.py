"""The benchmark registry (MMAU, MMAR, AVQA validation: item keys, clip, prompt, gold, groups, release), the official
rule's score (MMAU's `is_match`, which MMAR copies; docs/recipe.md §7, §8) and the official scripts' printout.

    python -m r1aqa.benchmarks --input outputs/mmau_predictions.json --json outputs/mmau_summary.json
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
TASKS, DIFFICULTIES = ("sound", "music", "speech"), ("easy", "hard", "medium")
MODALITIES = ("sound", "music", "speech", "mix-sound-music", "mix-sound-speech", "mix-music-speech",
              "mix-sound-music-speech")  # fmt: skip
CATEGORIES = ("Signal Layer", "Perception Layer", "Semantic Layer", "Cultural Layer")
SUB_CATEGORY = ("sub-category", "Sub-category", ())  # optional per item: items without one join none
# (think, format_instruction) of r1aqa.prompts.format_question: Prompt <2> (the paper's), <3>, <1> (SFT baselines)
PROMPT_STYLES = {"answer": (False, True), "think": (True, True), "plain": (False, False)}
# keys: what a prompt needs; clip: the key naming the clip; groups: (key, printed title, values printed first);
# predictions: the keys read, in order (as the official scripts). AVQA: r1aqa.prepare_avqa's split, `answer` an index.
BENCHMARKS = {
    "mmau": {"keys": ("id", "audio_id", "question", "choices"), "clip": "audio_id", "choices": "choices",
             "groups": (("task", "Task", TASKS), ("difficulty", "Difficulty", DIFFICULTIES), SUB_CATEGORY),
             "predictions": ("model_output", "model_prediction")},
    "mmar": {"keys": ("id", "audio_path", "question", "choices"), "clip": "audio_path", "choices": "choices",
             "groups": (("modality", "Modality", MODALITIES), ("category", "Category", CATEGORIES), SUB_CATEGORY),
             "predictions": ("answer_prediction", "model_output", "model_prediction")},
    "avqa": {"keys": ("id", "audio_path", "question_text", "multi_choice", "answer"), "clip": "audio_path",
             "choices": "multi_choice",
             "groups": (("question_type", "Question type", ()), ("question_relation", "Question relation", ())),
             "predictions": ("model_output", "model_prediction")},
}  # fmt: skip
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


def detect_benchmark(items: list) -> str:
    """`avqa` when the first item has AVQA's `multi_choice`, `mmar` when it has MMAR's `modality` key, else `mmau`."""
    first = items[0] if items and isinstance(items[0], dict) else {}
    return "avqa" if "multi_choice" in first else "mmar" if "modality" in first and "task" not in first else "mmau"


def load_items(path: str | Path) -> list[dict]:
    """The items of a JSON list, or of JSON lines when the name ends in `.jsonl`; a ValueError names the file."""
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
    """`(benchmark, items)`: the first `limit` items of `path`, each checked for what its prompt needs."""
    items = load_items(path)[:limit]
    if not items:
        raise ValueError(f"{path}: no items to evaluate.")
    benchmark = detect_benchmark(items) if benchmark == "auto" else benchmark
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: item {index} is a JSON {type(item).__name__}, not an object.")
        if missing := [key for key in BENCHMARKS[benchmark]["keys"] if key not in item]:
            problem = ("missing_keys", f"lacks {missing}, which a {benchmark.upper()} item has: see --benchmark")
        elif benchmark == "avqa":  # the training loader's checks (docs/recipe.md §2), with the same reasons
            problem = record_problem(item)
        else:
            texts = isinstance(item["choices"], list) and all(isinstance(c, str) for c in item["choices"])
            problem = None if texts and item["choices"] else ("bad_choices", "`choices` must be a list of strings")
        if problem:
            raise ValueError(f"{path}: item {index} (id {item.get('id')!r}): {problem[0]} ({problem[1]}).")
    return benchmark, items


def example(benchmark: str, item: dict, audio_dir: str | None = None, prompt_style: str = "answer") -> dict:
    """The item as training builds a row: `prompt`, `solution` (none without an answer), its keys and `audio_path`, the
    clip key's file name in `audio_dir` (MMAU `audio_id`, MMAR `audio_path`; AVQA rows: their own path)."""
    path = item[BENCHMARKS[benchmark]["clip"]]
    path = os.path.join(audio_dir, os.path.basename(path)) if audio_dir and isinstance(path, str) else path
    think, format_instruction = PROMPT_STYLES[prompt_style]
    if benchmark == "avqa":
        return avqa_example({**item, "audio_path": path}, think, format_instruction)
    text = format_question(item["question"], item["choices"], think, format_instruction)
    solution = {} if item.get("answer") is None else {"solution": solution_text(item["answer"])}
    return {"prompt": user_turn(path, text), **solution, **item, "audio_path": path}


def is_match(prediction: str, answer: str, choices: list[str]) -> bool:
    """The official MMAU rule (MMAR's too): on the sets of `\\b\\w+\\b` words of the lower-cased texts, the prediction
    holds every answer word and no word only a wrong option has ("a man speaking" matches "Man", "man or woman" not)."""
    predicted, expected = set(_WORD.findall(prediction.lower())), set(_WORD.findall(answer.lower()))
    wrong = {word for choice in choices for word in _WORD.findall(choice.lower())} - expected
    return bool(predicted) and expected <= predicted and predicted.isdisjoint(wrong)


def _accuracy(correct: int, total: int) -> dict:
    return {"accuracy": round(100 * correct / total, 2) if total else 0.0, "correct": correct, "total": total}


def score(items: list[dict], benchmark: str | None = None) -> dict:
    """Accuracy (%, 2 decimals) per group and in total (micro average), `no_prediction` (predictions missing, None or
    not a string: counted wrong) and `answer_not_in_choices` (ids; scored by the rule anyway)."""
    benchmark = benchmark or detect_benchmark(items)
    spec, indexed = BENCHMARKS[benchmark], benchmark == "avqa"  # AVQA's answer indexes its options (recipe.md §2)
    required = ("answer", spec["choices"], *(key for key, _, _ in spec["groups"] if key != "sub-category"))
    counts = {key: {name: [0, 0] for name in first} for key, _, first in spec["groups"]}
    no_prediction, answer_not_in_choices, correct = {"missing": 0, "none": 0, "non_string": 0}, [], 0
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"item {index}: expected a JSON object, got {type(item).__name__}")
        where = f"item {index} (id {item.get('id')!r})"
        if absent := [key for key in required if key not in item]:
            raise ValueError(f"{where}: missing key(s) {absent}")
        choices, answer = item[spec["choices"]], item["answer"]
        valid = type(answer) is int and 0 <= answer < len(choices) if indexed else isinstance(answer, str)
        if not (isinstance(choices, list) and all(isinstance(c, str) for c in choices) and valid):
            raise ValueError(f"{where}: answer must index multi_choice, a list of strings, got {answer!r}" if indexed
                             else f"{where}: answer and choices must be strings")  # fmt: skip
        answer = choices[answer] if indexed else answer
        key = next((key for key in spec["predictions"] if key in item), None)
        prediction = item.get(key)
        if not isinstance(prediction, str):
            no_prediction["missing" if key is None else "none" if prediction is None else "non_string"] += 1
        if answer not in choices:
            answer_not_in_choices.append(item.get("id"))
        hit = isinstance(prediction, str) and is_match(prediction, answer, choices)
        correct += hit
        for group, rows in counts.items():
            if item.get(group) is not None or group != "sub-category":
                row = rows.setdefault(item[group], [0, 0])
                row[0], row[1] = row[0] + hit, row[1] + 1
    return {"benchmark": benchmark, "total": _accuracy(correct, len(items)),
            **{key: {name: _accuracy(*row) for name, row in rows.items()} for key, rows in counts.items()},
            "no_prediction": no_prediction, "answer_not_in_choices": answer_not_in_choices}  # fmt: skip


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value): the one mean/std of the package."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(passes: list[dict]) -> dict:
    """Mean ± std (n - 1) over K passes of the same items: rows `{"accuracy", "std", "total", "per_sample"}`."""
    first = passes[0]

    def row(rows: list[dict]) -> dict:
        mean, std = mean_std([r["accuracy"] for r in rows])
        return {"accuracy": round(mean, 2), "std": round(std, 2), "total": rows[0]["total"],
                "per_sample": [r["accuracy"] for r in rows]}  # fmt: skip

    keys = [key for key, _, _ in BENCHMARKS[first["benchmark"]]["groups"]]
    return {"benchmark": first["benchmark"], "num_samples": len(passes), "total": row([s["total"] for s in passes]),
            **{key: {name: row([s[key][name] for s in passes]) for name in first[key]} for key in keys},
            "no_prediction": {kind: sum(s["no_prediction"][kind] for s in passes) for kind in first["no_prediction"]},
            "answer_not_in_choices": first["answer_not_in_choices"]}  # fmt: skip


def format_report(summary: dict) -> str:
    """The official script's printout (group rows, total), then our extra counts; `mean ± std` for an aggregate."""
    k = summary.get("num_samples")

    def accuracy(row: dict) -> str:
        return f"{row['accuracy']:.2f}%" + (f" ± {row['std']:.2f}" if k else "") + f" over {row['total']} samples"

    lines = []
    for key, title, _ in BENCHMARKS[summary.get("benchmark", "mmau")]["groups"]:
        lines += [RULE, f"{title}-wise Accuracy" + (f" (mean ± std over {k} passes):" if k else ":")]
        lines += [f"{name} : {accuracy(row)}" for name, row in summary[key].items()]
    total, missing, odd = summary["total"], summary["no_prediction"], summary["answer_not_in_choices"]
    passes = f" ({k} passes: {', '.join(f'{a:.2f}' for a in total['per_sample'])})" if k else ""
    return "\n".join([*lines, RULE, f"Total Accuracy: {accuracy(total)}{passes}", RULE,
        f"No prediction count: {sum(missing.values())}",
        f"  (counted wrong) missing: {missing['missing']}, None: {missing['none']}, non-string: {missing['non_string']}",
        f"Answer not among choices: {len(odd)} {odd}"])  # fmt: skip


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
        summary = score(load_items(args.input), None if args.benchmark == "auto" else args.benchmark)
    except (OSError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(format_report(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
