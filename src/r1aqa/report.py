"""Accuracy of every checkpoint of a run: a table (best row marked), CSV, JSON and a plot against step.

    python -m r1aqa.report --score_dir outputs/grpo-qwen2-audio-7b/mmau/mmau-test-mini.answer
    # the audio-dependence control beside it (test_mmau.sh with AUDIO=silent does this)
    python -m r1aqa.report --score_dir outputs/run/mmau/mmau-test-mini.answer \\
        --silent_score_dir outputs/run/mmau/mmau-test-mini.answer.silent

Reads the `checkpoint-N.score.json` files that `python -m r1aqa.evaluate` writes (test_mmau.sh puts them in one
folder per run, data file and settings) and writes `checkpoints.csv`, `checkpoints.json` and `checkpoints.png`
beside them (`--out_prefix` to change). Columns are MMAU's tasks or MMAR's modalities (from the score files), then
the total. A score of several sampled passes (`--num_samples`) shows as `mean±std`. The paper-time release evaluated
steps 100, 200, ..., 500 and reported the best; the best row here is the highest total accuracy (the earliest step on
a tie). A group with no items shows as `-`. The first line names the data file's release (from the score files, or
the sha256 in the meta files beside them), the plot's title too; missing or unreadable clips are counted under the
table and in the title.

With `--silent_score_dir` (the same checkpoints evaluated with `--audio silent`), a second table shows per step and
column the accuracy with the audio, with silence and their difference (how much of the accuracy needs the audio);
the CSV/JSON gain `<column>_silent` / `<column>_diff` and the plot draws the silent curves dashed.

Choosing a checkpoint without the test set: `--select_score_dir` names the same checkpoints scored on held-out data
(AVQA's validation split, `python -m r1aqa.prepare_avqa --qa_json val_qa.json ...`; test_mmau.sh with
`SELECT_FILE=`). The table gains a `validation` column, marks the step with the highest validation accuracy (the
earliest on a tie) `<- selected on validation`, and reports the test accuracy at that step beside the best on test,
which is the paper's practice and an optimistic number: it picks the step by the very numbers it reports.

Several runs (seeds): `--aggregate --score_dirs D1 D2 ... --out_prefix P` (one folder per run, the same data file
and settings) writes per step the mean, standard deviation (n - 1), min and max over runs of every column, and the
number of runs that have the step. A step that some runs lack is reported with its count and the runs it is missing
from; its numbers cover those runs only, and it is no candidate for best or selected as long as some step is in
every run. A run scored with several sampled passes counts with its mean over them. `--select_score_dirs` and
`--silent_score_dirs` work as above, on the means over runs. Beside the one step chosen for all runs, the table
gives the test total when each run picks its own step (on validation, and on test): what training 2-3 times and
keeping a checkpoint of each yields. The plot draws each column's mean, the total with a band of ± one standard
deviation, and every run's total as a thin line.

    python -m r1aqa.report --aggregate --out_prefix outputs/grpo/aggregate/mmau/mmau-test-mini.answer/aggregate \
        --score_dirs outputs/grpo/seed-42/mmau/mmau-test-mini.answer outputs/grpo/seed-43/mmau/mmau-test-mini.answer \
        --select_score_dirs outputs/grpo/seed-42/avqa/val.answer outputs/grpo/seed-43/avqa/val.answer
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from pathlib import Path

from r1aqa.benchmarks import MODALITIES, TASKS, release_name

SCORE_FILE = re.compile(r"^checkpoint-(\d+)\.score\.json$")
# The table's columns per benchmark: a group key of the score file and its fixed names (None: as the file lists
# them, AVQA's question types in order of appearance), then the total.
GROUPS = {"mmau": ("task", TASKS), "mmar": ("modality", MODALITIES), "avqa": ("question_type", None)}
SELECTED = "<- selected on validation"


def collect(score_dir: str) -> list[dict]:
    """One row per `checkpoint-N.score.json` in `score_dir`, in numeric step order.

    A row holds `step`, `benchmark`, `columns` (the benchmark's groups, then `total`), the accuracy (%) of each
    column (None for a group without items; the mean for several passes, with `std` holding each column's standard
    deviation), `n_items`, `audio_errors` and `score_file`.
    """
    rows = []
    for name in os.listdir(score_dir):
        match = SCORE_FILE.match(name)
        if not match:
            continue
        path = os.path.join(score_dir, name)
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
        benchmark = summary.get("benchmark", "mmau")
        key, names = GROUPS[benchmark]
        names = tuple(summary[key]) if names is None else names
        row = {"step": int(match.group(1)), "benchmark": benchmark, "columns": [*names, "total"]}
        groups = {name: summary[key].get(name, {"total": 0}) for name in names}
        groups["total"] = summary["total"]
        std = {}
        for column, group in groups.items():
            row[column] = group["accuracy"] if group["total"] else None
            if "std" in group and group["total"]:
                std[column] = group["std"]
        if std:
            row["std"] = std
            row["num_samples"] = summary.get("num_samples")
        row["n_items"] = summary["total"]["total"]
        row["audio_errors"] = summary.get("audio_errors")
        row["release"] = _release(summary, path)
        row["score_file"] = path
        rows.append(row)
    for what, key in (("benchmarks", "benchmark"), ("data releases", "release")):
        found = {row[key] for row in rows if row[key] is not None}
        if len(found) > 1:
            raise ValueError(f"{score_dir} mixes the score files of {len(found)} {what} ({sorted(found)}): one per "
                             "folder.")  # fmt: skip
    _same_columns(rows)
    return sorted(rows, key=lambda row: row["step"])


def _release(summary: dict, score_file: str) -> str | None:
    """The data file's release: recorded in the score file, else told from the sha256 in the meta file beside it
    (scores made before releases were recorded); None when neither says."""
    if "data_release" in summary:
        return summary["data_release"]
    stem = score_file[: -len(".score.json")]
    for meta in (stem + ".meta.json", stem + ".sample-0.meta.json"):
        if os.path.isfile(meta):
            sha256 = json.loads(Path(meta).read_text(encoding="utf-8")).get("settings", {}).get("data_sha256")
            return release_name(sha256) if sha256 else None
    return None


def heading(rows: list[dict]) -> str | None:
    """`<release>, <n> items`: which benchmark file the table scores; None when the scores do not say."""
    release = rows[0].get("release")
    return None if release is None else f"{release}, {rows[0]['n_items']} items"


def missing_clips(rows: list[dict]) -> str | None:
    """How many clips were missing or unreadable (empty predictions, counted wrong); None when none was."""
    counts = {row["step"]: row.get("audio_errors") or 0 for row in rows}
    if not any(counts.values()):
        return None
    n_items = rows[0]["n_items"]
    if len(set(counts.values())) == 1:
        return f"{next(iter(counts.values()))} of {n_items} clips missing or unreadable (counted wrong)"
    each = ", ".join(f"step {step}: {count}" for step, count in counts.items())
    return f"clips missing or unreadable of {n_items} (counted wrong): {each}"


def _same_columns(rows: list[dict]) -> None:
    """Give every row the union of the rows' columns, in order (a group a row lacks is None there)."""
    columns = [*dict.fromkeys(column for row in rows for column in row["columns"] if column != "total"), "total"]
    for row in rows:
        row["columns"] = columns
        for column in columns:
            row.setdefault(column, None)


def add_silent(rows: list[dict], silent_rows: list[dict]) -> None:
    """Give each row `silent` and `diff` (with audio minus silent) per column, from the silent row of its step."""
    by_step = {row["step"]: row for row in silent_rows}
    for row in rows:
        other = by_step.get(row["step"])
        row["silent"] = {column: other.get(column) if other else None for column in row["columns"]}
        row["diff"] = {
            column: None
            if row[column] is None or row["silent"][column] is None
            else round(row[column] - row["silent"][column], 2)
            for column in row["columns"]
        }


def _complete(row: dict) -> bool:
    """A step every run has (always true for one run's rows)."""
    return row.get("count", 1) == row.get("n_runs", 1)


def _candidates(rows: list[dict]) -> list[dict]:
    """The rows a best or selected step may come from: the steps every run has (all rows when none is)."""
    rows = [row for row in rows if row["total"] is not None]
    return [row for row in rows if _complete(row)] or rows


def best_step(rows: list[dict]) -> int:
    """The step with the highest total accuracy (mean over runs, among the steps every run has); the earliest one on a
    tie."""
    return max(_candidates(rows), key=lambda row: (row["total"], -row["step"]))["step"]


def add_selection(rows: list[dict], select_rows: list[dict]) -> int | None:
    """Give each row `select`, its step's total accuracy on the held-out data (`{"total", "std", "count", "n_runs"}`;
    None when not scored there), and return the selected step: the highest held-out total (the earliest on a tie)
    among the steps scored on both, by every run (None when there is no such step)."""
    by_step = {row["step"]: row for row in select_rows}
    for row in rows:
        other = by_step.get(row["step"])
        row["select"] = None
        if other is not None and other["total"] is not None:
            row["select"] = {
                "total": other["total"],
                "std": other.get("std", {}).get("total"),
                "count": other.get("count", 1),
                "n_runs": other.get("n_runs", 1),
            }
    tested = {row["step"] for row in _candidates(rows)}
    candidates = [row for row in _candidates(select_rows) if row["step"] in tested]
    if not candidates:
        return None
    return max(candidates, key=lambda row: (row["total"], -row["step"]))["step"]


# ---- several runs ----------------------------------------------------------------------------------------------------


def per_run_choices(rows: list[dict], select_rows: list[dict] | None = None) -> dict:
    """Each run choosing its own step, from aggregated rows: `best_on_test` (its highest test total) and, with
    held-out rows, `selected_on_validation` (its highest validation total among the steps it has on both); the
    earliest step on a tie. Each maps run -> `{"step", "test_total"[, "validation_total"]}` and has the `test_total`
    mean, std, min and max over runs under `summary`."""

    def totals(some_rows: list[dict], label: str) -> dict[int, float]:
        values = ((row["step"], row["values"]["total"].get(label)) for row in some_rows)
        return {step: value for step, value in values if value is not None}

    labels = list(dict.fromkeys(label for row in rows for label in row["runs"] + row["missing_runs"]))
    kinds = ["best_on_test"] + (["selected_on_validation"] if select_rows is not None else [])
    out = {kind: {"runs": {}} for kind in kinds}
    for label in labels:
        test = totals(rows, label)
        if test:
            best = max(test, key=lambda step: (test[step], -step))
            out["best_on_test"]["runs"][label] = {"step": best, "test_total": test[best]}
        if select_rows is not None:
            validation = totals(select_rows, label)
            both = [step for step in validation if step in test]
            if both:
                chosen = max(both, key=lambda step: (validation[step], -step))
                out["selected_on_validation"]["runs"][label] = {
                    "step": chosen, "test_total": test[chosen], "validation_total": validation[chosen]
                }  # fmt: skip
    for kind in kinds:
        out[kind]["summary"] = _stats([choice["test_total"] for choice in out[kind]["runs"].values()])
    return out


def format_per_run_choices(choices: dict) -> list[str]:
    """One line per way of choosing: the test total over runs when each run picks its own step."""
    names = {
        "selected_on_validation": "selected on validation (recommended)",
        "best_on_test": "best on test (the paper's practice, optimistic)",
    }
    lines = []
    for kind in ("selected_on_validation", "best_on_test"):
        if kind not in choices:
            continue
        runs, summary = choices[kind]["runs"], choices[kind]["summary"]
        each = ", ".join(f"{label} step {c['step']}: {c['test_total']:.2f}" for label, c in runs.items())
        spread = f" (min {_cell(summary['min'])}, max {_cell(summary['max'])})" if len(runs) > 1 else ""
        lines.append(
            f"Each run at its own step {names[kind]}: test {_cell(summary['mean'], summary['std'])}% total"
            f"{spread}; {each or 'no step'}"
        )
    return lines


def run_label(score_dir: str) -> str:
    """The run a score folder belongs to: test_mmau.sh writes to RUN_DIR/<benchmark>/<data>.<settings>."""
    return os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(score_dir)))) or score_dir


def _labels(score_dirs: list[str]) -> list[str]:
    labels = [run_label(folder) for folder in score_dirs]
    if len(set(labels)) < len(labels):  # two runs of the same name in different places: their full paths
        labels = [os.path.dirname(os.path.dirname(os.path.abspath(folder))) for folder in score_dirs]
    if len(set(labels)) < len(labels):
        labels = list(score_dirs)
    return labels


def _stats(values: list[float]) -> dict:
    """Mean, standard deviation (n - 1; None for one value), min and max, rounded as the scores are (2 decimals)."""
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": round(statistics.fmean(values), 2),
        "std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def aggregate_runs(runs: list[list[dict]], labels: list[str]) -> list[dict]:
    """One row per step scored in any run (`collect` of each run's folder), over the runs that have it.

    A row holds `step`, `benchmark`, `columns`, `n_runs`, `count` (runs with this step), `runs` and `missing_runs`
    (labels), the mean of each column under the column's name (so the single-run table, silent and selection helpers
    read it), and `std` (n - 1; None for one run), `min`, `max` and `values` (label -> that run's value) per column.
    The runs must score the same benchmark on the same number of items (the same file and --limit).
    """
    if len(runs) != len(labels):
        raise ValueError(f"{len(runs)} runs but {len(labels)} labels")
    empty = [label for label, rows in zip(labels, runs, strict=True) if not rows]
    if empty:
        raise ValueError(f"no checkpoint-N.score.json for run(s) {empty}: score their checkpoints first.")
    all_rows = [row for rows in runs for row in rows]
    for what, key in (
        ("benchmarks", "benchmark"),
        ("numbers of items", "n_items"),
        ("numbers of passes", "num_samples"),
        ("data releases", "release"),
    ):
        values = {
            label: sorted({row.get(key) for row in rows}, key=str) for label, rows in zip(labels, runs, strict=True)
        }
        if len({value for found in values.values() for value in found}) > 1:
            raise ValueError(
                f"the runs' scores differ in {what} ({values}): aggregate runs scored on the same file with the "
                "same settings."
            )
    _same_columns(all_rows)
    columns = all_rows[0]["columns"]
    by_run = [{row["step"]: row for row in rows} for rows in runs]
    out = []
    for step in sorted({row["step"] for row in all_rows}):
        present = [(label, steps[step]) for label, steps in zip(labels, by_run, strict=True) if step in steps]
        row = {
            "step": step,
            "benchmark": all_rows[0]["benchmark"],
            "columns": columns,
            "n_runs": len(runs),
            "count": len(present),
            "runs": [label for label, _ in present],
            "missing_runs": [label for label in labels if label not in dict(present)],
            "n_items": all_rows[0]["n_items"],
            "num_samples": all_rows[0].get("num_samples"),
            "release": all_rows[0].get("release"),
            "audio_errors": max((run.get("audio_errors") or 0 for _, run in present), default=0),
            "std": {},
            "min": {},
            "max": {},
            "values": {},
        }
        for column in columns:
            values = {label: run[column] for label, run in present if run[column] is not None}
            stats = _stats(list(values.values()))
            row[column] = stats["mean"]
            for kind in ("std", "min", "max"):
                row[kind][column] = stats[kind]
            row["values"][column] = values
        out.append(row)
    return out


def _cell(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if std is None else f"{value:.2f}±{std:.2f}"


def _width(column: str, rows: list[dict]) -> int:
    return max(7, len(column), *(len(_cell(row[column], row.get("std", {}).get(column))) for row in rows))


def _select_cell(row: dict) -> str:
    select = row.get("select")
    return "-" if select is None else _cell(select["total"], select.get("std"))


def _row(rows: list[dict], step: int | None) -> dict | None:
    return next((row for row in rows if row["step"] == step), None)


def _table_lines(rows: list[dict], best: int, selected: int | None) -> list[str]:
    """Header, rule and one line per step: the best row marked with `*`; over several runs a `runs` column
    (`count/n_runs`); with a selection (`add_selection`) a `validation` column and the selected row marked at its
    end."""
    columns = rows[0]["columns"]
    selecting, runs = "select" in rows[0], "n_runs" in rows[0]
    widths = {column: _width(column, rows) for column in columns}
    validation_width = max(10, *(len(_select_cell(row)) for row in rows)) if selecting else 0
    header = f"  {'step':>6}  " + (f"{'runs':>5}  " if runs else "")
    header += "  ".join(f"{column:>{widths[column]}}" for column in columns)
    if selecting:
        header += f"  {'validation':>{validation_width}}"
    lines = [header, "  " + "-" * (len(header) - 2)]
    for row in rows:
        mark = "*" if row["step"] == best else " "
        line = f"{mark} {row['step']:>6}  " + (f"{row['count']}/{row['n_runs']}".rjust(5) + "  " if runs else "")
        line += "  ".join(f"{_cell(row[c], row.get('std', {}).get(c)):>{widths[c]}}" for c in columns)
        if selecting:
            line += f"  {_select_cell(row):>{validation_width}}" + (f"  {SELECTED}" if row["step"] == selected else "")
        lines.append(line)
    return lines


def format_table(rows: list[dict], best: int, selected: int | None = None, select_name: str | None = None) -> str:
    """A fixed-width table, step x groups / total, the best row marked with `*`; with a selection (`add_selection`)
    a `validation` column, the selected row marked at its end, and selected on validation beside best on test."""
    lines = [text for text in (heading(rows),) if text] + _table_lines(rows, best, selected)
    passes = rows[0].get("num_samples")
    note = f"; mean±std over {passes} sampled passes" if passes else ""
    if "select" in rows[0]:
        lines += _selection_lines(rows, best, selected, select_name) + (
            [f"(mean±std over {passes} sampled passes)"] if passes else []
        )
    else:
        lines.append(f"* best: step {best} ({_cell(_row(rows, best)['total'])}% total{note})")
    missing = missing_clips(rows)
    return "\n".join(lines + ([f"Audio: {missing}."] if missing else []))


def _selection_lines(rows: list[dict], best: int, selected: int | None, select_name: str | None) -> list[str]:
    """Selected on validation beside best on test, each with the test accuracy at its step."""
    where = f" ({select_name})" if select_name else ""
    if selected is None:
        return [f"Selected on validation{where}: none: no step is scored on both the validation and the test data."]
    chosen, top = _row(rows, selected), _row(rows, best)
    return [
        f"{SELECTED[3:].capitalize()}{where}: step {selected} (highest validation total {_select_cell(chosen)}%, the "
        f"earliest on a tie): test {_test_cell(chosen)}. Recommended: the test set played no part in choosing it.",
        f"* best on test: step {best}: test {_test_cell(top)}. The paper's practice; optimistic, since it picks the "
        "step by the test numbers it then reports"
        + (
            f" ({top['total'] - chosen['total']:.2f} points above the selected step)."
            if best != selected
            else " (here the same step)."
        ),
    ]


def _test_cell(row: dict) -> str:
    """A step's total test accuracy: mean±std over runs with their min and max, or one run's accuracy."""
    spread = ""
    if "min" in row and row["count"] > 1:
        spread = f" (min {_cell(row['min']['total'])}, max {_cell(row['max']['total'])})"
    return f"{_cell(row['total'], row.get('std', {}).get('total'))}% total{spread}"


def format_aggregate_table(
    rows: list[dict],
    best: int,
    selected: int | None = None,
    select_name: str | None = None,
    choices: dict | None = None,
) -> str:
    """Per step: the runs that have it (`count/n_runs`), every column's mean±std over those runs, the validation
    mean when selecting; then min-max per column, the steps some runs lack, best on test and selected on
    validation."""
    columns, n_runs = rows[0]["columns"], rows[0]["n_runs"]
    labels = list(dict.fromkeys(label for row in rows for label in row["runs"] + row["missing_runs"]))
    passes = rows[0].get("num_samples")
    lines = [text for text in (heading(rows),) if text] + [
        f"{rows[0]['benchmark'].upper()} over {n_runs} run(s) ({', '.join(labels)}): per step, mean±std (n-1) over the "
        "runs that have the step" + (f"; each run counts with its mean over {passes} sampled passes" if passes else "")
    ]
    lines += _table_lines(rows, best, selected)
    spans = [
        {c: "-" if row["min"][c] is None else f"{row['min'][c]:.2f}-{row['max'][c]:.2f}" for c in columns}
        for row in rows
    ]
    widths = {c: max(len(c), *(len(span[c]) for span in spans)) for c in columns}
    lines += ["Range over runs (min-max):", f"  {'step':>6}  " + "  ".join(f"{c:>{widths[c]}}" for c in columns)]
    for row, span in zip(rows, spans, strict=True):
        lines.append(f"  {row['step']:>6}  " + "  ".join(f"{span[c]:>{widths[c]}}" for c in columns))
    candidates = {row["step"] for row in _candidates(rows)}
    for row in rows:
        if not _complete(row):
            note = "" if row["step"] in candidates else "; not a candidate for best or selected"
            lines.append(
                f"Step {row['step']}: in {row['count']} of {n_runs} runs (missing: {', '.join(row['missing_runs'])}): "
                f"its numbers cover those runs only{note}."
            )
    if "select" in rows[0]:
        lines += _selection_lines(rows, best, selected, select_name)
    else:
        lines.append(f"* best on test: step {best}: test {_test_cell(_row(rows, best))}")
    if choices is not None:
        lines += format_per_run_choices(choices)
    missing = missing_clips(rows)
    return "\n".join(lines + ([f"Audio: {missing} (the most of any run)."] if missing else []))


def format_silent_table(rows: list[dict]) -> str:
    """Per step and column: accuracy with the audio, with silence, and the difference (of the means, over runs)."""
    columns = rows[0]["columns"]
    name_width = max(len(column) for column in columns)
    over = f", means over {rows[0]['n_runs']} run(s)" if "n_runs" in rows[0] else ""
    lines = [
        f"Audio vs silence (accuracy %{over}; diff = with audio - silent: what needs the audio):",
        f"  {'step':>6}  {'':<{name_width}}  {'audio':>7}  {'silent':>7}  {'diff':>7}",
    ]
    for row in rows:
        for index, column in enumerate(columns):
            step = f"{row['step']:>6}" if index == 0 else " " * 6
            diff = row["diff"][column]
            lines.append(
                f"  {step}  {column:<{name_width}}  {_cell(row[column]):>7}  {_cell(row['silent'][column]):>7}  "
                f"{'-' if diff is None else f'{diff:+.2f}':>7}"
            )
    return "\n".join(lines)


def write_csv(rows: list[dict], best: int, path: str, selected: int | None = None) -> None:
    columns = rows[0]["columns"]
    fields = ["step", *columns, "best", "n_items", "audio_errors"]
    if any("std" in row for row in rows):
        fields += [f"{column}_std" for column in columns]
    if "silent" in rows[0]:
        fields += [f"{column}_{kind}" for kind in ("silent", "diff") for column in columns]
    if "select" in rows[0]:
        fields += ["validation_total", "selected"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            flat = {**row, "best": row["step"] == best}
            for kind in ("std", "silent", "diff"):
                flat.update({f"{column}_{kind}": value for column, value in row.get(kind, {}).items()})
            if "select" in row:
                flat["validation_total"] = row["select"]["total"] if row["select"] else None
                flat["selected"] = row["step"] == selected
            writer.writerow(flat)


def write_aggregate_csv(rows: list[dict], best: int, path: str, selected: int | None = None) -> None:
    """One line per step: runs with it, then `<column>_mean/_std/_min/_max` per column (std empty for one run)."""
    columns = rows[0]["columns"]
    fields = ["step", "count", "n_runs", "missing_runs", "best_on_test"]
    fields += [f"{column}_{kind}" for column in columns for kind in ("mean", "std", "min", "max")]
    if "select" in rows[0]:
        fields += ["validation_total_mean", "validation_total_std", "validation_count", "selected_on_validation"]
    if "silent" in rows[0]:
        fields += [f"{column}_{kind}" for kind in ("silent", "diff") for column in columns]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            flat = {key: row[key] for key in ("step", "count", "n_runs")}
            flat["missing_runs"] = " ".join(row["missing_runs"])
            flat["best_on_test"] = row["step"] == best
            for column in columns:
                flat[f"{column}_mean"] = row[column]
                flat.update({f"{column}_{kind}": row[kind][column] for kind in ("std", "min", "max")})
            if "select" in row:
                select = row["select"] or {}
                flat["validation_total_mean"] = select.get("total")
                flat["validation_total_std"] = select.get("std")
                flat["validation_count"] = select.get("count")
                flat["selected_on_validation"] = row["step"] == selected
            for kind in ("silent", "diff"):
                flat.update({f"{column}_{kind}": value for column, value in row.get(kind, {}).items()})
            writer.writerow(flat)


def _choice(rows: list[dict], step: int | None, select_name: str | None = None) -> dict | None:
    """What the JSON says about a chosen step: its test numbers (and validation total)."""
    row = _row(rows, step)
    if row is None:
        return None
    out = {"step": step, "test_total": row["total"]}
    if "n_runs" in row:
        out.update({f"test_total_{kind}": row[kind]["total"] for kind in ("std", "min", "max")}, count=row["count"])
    if row.get("select"):
        out.update(validation_total=row["select"]["total"], validation_data=select_name)
        if "n_runs" in row:
            out["validation_total_std"] = row["select"]["std"]
    return out


def write_json(
    rows: list[dict], best: int, path: str, selected: int | None = None, select_name: str | None = None, **extra
) -> None:
    data = {"best_step": best, "data_release": rows[0].get("release"), "missing_clips": missing_clips(rows), **extra}
    if "select" in rows[0]:
        data.update(
            selected_step=selected,
            selected_on_validation=_choice(rows, selected, select_name),
            best_on_test=_choice(rows, best),
        )
    data["rows"] = [{**row, "best": row["step"] == best} for row in rows]
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def plot(
    rows: list[dict], best: int, path: str, title: str, selected: int | None = None, select_name: str | None = None
) -> None:
    """Accuracy against step, one line per column and a thicker one for the total (error bars for several passes;
    over several runs the mean with a ±1 std band and each run's total as a thin grey line; dashed: the same with
    silent audio, and the validation total); the best step starred, the step selected on validation a diamond."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    columns = rows[0]["columns"]
    runs = "n_runs" in rows[0]
    steps = [row["step"] for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    values = []

    def series(get) -> list[float]:
        ys = [math.nan if get(row) is None else get(row) for row in rows]
        values.extend(y for y in ys if not math.isnan(y))
        return ys

    if runs:
        labels = list(dict.fromkeys(label for row in rows for label in row["values"]["total"]))
        for index, label in enumerate(labels):
            ax.plot(steps, series(lambda row, label=label: row["values"]["total"].get(label)), color="grey",
                    linewidth=0.7, alpha=0.6, label="each run (total)" if index == 0 else None)  # fmt: skip
    for index, name in enumerate(columns):
        color = f"C{index}"
        ys = series(lambda row, name=name: row[name])
        width = 2.5 if name == "total" else 1.2
        if all(math.isnan(y) for y in ys):
            continue  # a group without items
        if runs:
            ax.plot(steps, ys, marker="o", label=name, linewidth=width, color=color)
            if name == "total":  # the spread over runs as a band (per group: in the CSV/JSON)
                spread = [row["std"][name] or 0.0 for row in rows]
                low = series(
                    lambda row, name=name: None if row[name] is None else row[name] - (row["std"][name] or 0.0)
                )
                high = series(
                    lambda row, name=name: None if row[name] is None else row[name] + (row["std"][name] or 0.0)
                )
                ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0,
                                label="total ± 1 std over runs" if any(spread) else None)  # fmt: skip
        else:
            errors = [row.get("std", {}).get(name, 0.0) for row in rows]
            ax.errorbar(steps, ys, yerr=errors if any(errors) else None, marker="o", label=name, linewidth=width,
                        color=color, capsize=3)  # fmt: skip
        if "silent" in rows[0]:
            ax.plot(steps, series(lambda row, name=name: row["silent"][name]), marker=".", linestyle="--",
                    linewidth=width, color=color, label=f"{name} (silent)" if name == "total" else None)  # fmt: skip
    if "select" in rows[0]:
        ax.plot(steps, series(lambda row: row["select"] and row["select"]["total"]), marker="s", linestyle="--",
                color="black", linewidth=1.2, label=f"validation total{f' ({select_name})' if select_name else ''}")  # fmt: skip
    best_row = next(row for row in rows if row["step"] == best)
    ax.plot([best], [best_row["total"]], marker="*", markersize=16, color="black", linestyle="none",
            label=f"best on test: step {best} ({best_row['total']:.2f}%)")  # fmt: skip
    chosen = _row(rows, selected)
    if chosen is not None:
        ax.plot([selected], [chosen["total"]], marker="D", markersize=9, markerfacecolor="none", color="red",
                linestyle="none", label=f"selected on validation: step {selected} ({chosen['total']:.2f}%)")  # fmt: skip
    ylabel = f"{rows[0]['benchmark'].upper()} accuracy (%)"
    if runs:
        ylabel += f", mean of {rows[0]['n_runs']} runs"
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel + (" (dashed: silent audio)" if "silent" in rows[0] else ""), fontsize=9)
    ax.set_title("\n".join(text for text in (title, heading(rows), missing_clips(rows)) if text), fontsize=9)
    ax.set_xticks(steps)
    ax.set_ylim(max(0.0, min(values) - 5), min(100.0, max(values) + 5))  # flat curves still get a readable axis
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _select_name(select_dirs: list[str]) -> str:
    """`<benchmark>/<data>.<settings>` of the validation scores, e.g. `avqa/val.answer`."""
    folder = os.path.abspath(select_dirs[0])
    return f"{os.path.basename(os.path.dirname(folder))}/{os.path.basename(folder)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m r1aqa.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--score_dir", help="Folder with checkpoint-N.score.json files (one run).")
    parser.add_argument(
        "--silent_score_dir", help="The same checkpoints evaluated with --audio silent: shown side by side."
    )
    parser.add_argument(
        "--select_score_dir", help="The same checkpoints scored on held-out data (AVQA validation): selects a step."
    )
    parser.add_argument("--aggregate", action="store_true", help="Several runs: mean, std, min, max, count per step.")
    parser.add_argument("--score_dirs", nargs="+", help="With --aggregate: one score folder per run.")
    parser.add_argument("--silent_score_dirs", nargs="+", help="With --aggregate: the runs' silent-audio folders.")
    parser.add_argument("--select_score_dirs", nargs="+", help="With --aggregate: the runs' held-out score folders.")
    parser.add_argument(
        "--out_prefix", help="Write PREFIX.csv/.json/.png (default: SCORE_DIR/checkpoints; required with --aggregate)."
    )
    parser.add_argument("--title", help="Plot title (default: the score folder's path).")
    args = parser.parse_args(argv)
    one_run = (args.score_dir, args.silent_score_dir, args.select_score_dir)
    several = (args.score_dirs, args.silent_score_dirs, args.select_score_dirs)
    if args.aggregate:
        if not args.score_dirs or any(one_run) or not args.out_prefix:
            parser.error(
                "--aggregate takes --score_dirs (and --silent_score_dirs, --select_score_dirs) and --out_prefix."
            )
        score_dirs, silent_dirs, select_dirs = args.score_dirs, args.silent_score_dirs, args.select_score_dirs
    else:
        if not args.score_dir or any(several):
            parser.error("give --score_dir (one run), or --aggregate --score_dirs D1 D2 ... (several runs).")
        score_dirs, silent_dirs, select_dirs = ([d] if d else None for d in one_run)
    for folder in [*score_dirs, *(silent_dirs or []), *(select_dirs or [])]:
        if not os.path.isdir(folder):
            parser.exit(2, f"error: {folder}: no such folder.\n")
    try:
        rows, silent_rows, select_rows = (
            None if folders is None else [collect(folder) for folder in folders]
            for folders in (score_dirs, silent_dirs, select_dirs)
        )
        if not args.aggregate and not rows[0]:
            parser.exit(
                2, f"error: no checkpoint-N.score.json in {args.score_dir}: score checkpoints with test_mmau.sh.\n"
            )
        if args.aggregate:
            rows = aggregate_runs(rows, _labels(score_dirs))
            silent_rows = silent_rows and aggregate_runs(silent_rows, _labels(silent_dirs))
            select_rows = select_rows and aggregate_runs(select_rows, _labels(select_dirs))
        else:
            rows, silent_rows, select_rows = (None if x is None else x[0] for x in (rows, silent_rows, select_rows))
    except (ValueError, KeyError) as error:
        parser.exit(2, f"error: {error}\n")
    if silent_rows is not None:
        if silent_rows and silent_rows[0]["benchmark"] != rows[0]["benchmark"]:
            parser.exit(2, f"error: {' '.join(silent_dirs)} score(s) another benchmark than {' '.join(score_dirs)}.\n")
        add_silent(rows, silent_rows)
    selected = select_name = None
    if select_rows is not None:
        select_name = _select_name(select_dirs)
        selected = add_selection(rows, select_rows)
    best = best_step(rows)
    prefix = args.out_prefix or os.path.join(args.score_dir, "checkpoints")
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    if args.aggregate:
        choices = per_run_choices(rows, select_rows)
        print(format_aggregate_table(rows, best, selected, select_name, choices))
        write_aggregate_csv(rows, best, prefix + ".csv", selected)
        extra = {"n_runs": len(score_dirs), "runs": _labels(score_dirs), "per_run_choices": choices}
        for name, folders in (
            ("score_dirs", score_dirs),
            ("silent_score_dirs", silent_dirs),
            ("select_score_dirs", select_dirs),
        ):
            if folders:
                extra[name] = [os.path.abspath(folder) for folder in folders]
    else:
        print(format_table(rows, best, selected, select_name))
        write_csv(rows, best, prefix + ".csv", selected)
        extra = {}
    if silent_rows is not None:
        print(format_silent_table(rows))
    write_json(rows, best, prefix + ".json", selected, select_name, **extra)
    default_title = f"{len(score_dirs)} runs: {os.path.dirname(prefix)}" if args.aggregate else args.score_dir
    plot(rows, best, prefix + ".png", args.title or default_title, selected, select_name)
    print(f"Wrote {prefix}.csv, {prefix}.json, {prefix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
