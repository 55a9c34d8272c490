"""Accuracy of every checkpoint of a run: a table (best row marked), CSV, JSON and a plot against step.

    python -m r1aqa.tables --score_dir outputs/grpo-qwen2-audio-7b/mmau/mmau-test-mini.answer
    # the audio-dependence control beside it (test_mmau.sh with AUDIO=silent does this)
    python -m r1aqa.tables --score_dir outputs/run/mmau/mmau-test-mini.answer \\
        --silent_score_dir outputs/run/mmau/mmau-test-mini.answer.silent

Reads the `checkpoint-N.score.json` files that `python -m r1aqa.evaluate` writes (test_mmau.sh puts them in one
folder per run, data file and settings) and writes `checkpoints.csv`, `checkpoints.json` and `checkpoints.png`
beside them (`--out_prefix` to change). Columns are MMAU's tasks or MMAR's modalities (from the score files), then
the total. A score of several sampled passes (`--num_samples`) shows as `mean±std`. The paper evaluated steps 100,
200, ..., 1000 and reported the best; the best row here is the highest total accuracy (the earliest step on a tie).
A group with no items shows as `-`.

With `--silent_score_dir` (the same checkpoints evaluated with `--audio silent`), a second table shows per step and
column the accuracy with the audio, with silence and their difference (how much of the accuracy needs the audio);
the CSV/JSON gain `<column>_silent` / `<column>_diff` and the plot draws the silent curves dashed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from pathlib import Path

from r1aqa.scoring import MODALITIES, TASKS

SCORE_FILE = re.compile(r"^checkpoint-(\d+)\.score\.json$")
GROUPS = {"mmau": ("task", TASKS), "mmar": ("modality", MODALITIES)}


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
        row["score_file"] = path
        rows.append(row)
    benchmarks = {row["benchmark"] for row in rows}
    if len(benchmarks) > 1:
        raise ValueError(f"{score_dir} mixes the score files of {sorted(benchmarks)}: one benchmark per folder.")
    return sorted(rows, key=lambda row: row["step"])


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


def best_step(rows: list[dict]) -> int:
    """The step with the highest total accuracy; the earliest one on a tie."""
    return max(rows, key=lambda row: (row["total"], -row["step"]))["step"]


def _cell(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if std is None else f"{value:.2f}±{std:.2f}"


def _width(column: str, rows: list[dict]) -> int:
    return max(7, len(column), *(len(_cell(row[column], row.get("std", {}).get(column))) for row in rows))


def format_table(rows: list[dict], best: int) -> str:
    """A fixed-width table, step x groups / total, the best row marked with `*`."""
    columns = rows[0]["columns"]
    widths = {column: _width(column, rows) for column in columns}
    header = f"  {'step':>6}  " + "  ".join(f"{column:>{widths[column]}}" for column in columns)
    lines = [header, "  " + "-" * (len(header) - 2)]
    for row in rows:
        mark = "*" if row["step"] == best else " "
        cells = [f"{_cell(row[c], row.get('std', {}).get(c)):>{widths[c]}}" for c in columns]
        lines.append(f"{mark} {row['step']:>6}  " + "  ".join(cells))
    passes = rows[0].get("num_samples")
    note = f"; mean±std over {passes} sampled passes" if passes else ""
    lines.append(f"* best: step {best} ({_cell(next(r for r in rows if r['step'] == best)['total'])}% total{note})")
    return "\n".join(lines)


def format_silent_table(rows: list[dict]) -> str:
    """Per step and column: accuracy with the audio, with silence, and the difference."""
    columns = rows[0]["columns"]
    name_width = max(len(column) for column in columns)
    lines = [
        "Audio vs silence (accuracy %; diff = with audio - silent: what needs the audio):",
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


def write_csv(rows: list[dict], best: int, path: str) -> None:
    columns = rows[0]["columns"]
    fields = ["step", *columns, "best", "n_items", "audio_errors"]
    if any("std" in row for row in rows):
        fields += [f"{column}_std" for column in columns]
    if "silent" in rows[0]:
        fields += [f"{column}_{kind}" for kind in ("silent", "diff") for column in columns]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            flat = {**row, "best": row["step"] == best}
            for kind in ("std", "silent", "diff"):
                flat.update({f"{column}_{kind}": value for column, value in row.get(kind, {}).items()})
            writer.writerow(flat)


def write_json(rows: list[dict], best: int, path: str) -> None:
    data = {"best_step": best, "rows": [{**row, "best": row["step"] == best} for row in rows]}
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def plot(rows: list[dict], best: int, path: str, title: str) -> None:
    """Accuracy against step, one line per column and a thicker one for the total (error bars for several passes;
    dashed: the same with silent audio); the best step starred."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    columns = rows[0]["columns"]
    steps = [row["step"] for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    values = []
    for index, name in enumerate(columns):
        color = f"C{index}"
        ys = [math.nan if row[name] is None else row[name] for row in rows]
        errors = [row.get("std", {}).get(name, 0.0) for row in rows]
        width = 2.5 if name == "total" else 1.2
        ax.errorbar(steps, ys, yerr=errors if any(errors) else None, marker="o", label=name, linewidth=width,
                    color=color, capsize=3)  # fmt: skip
        values += [y for y in ys if not math.isnan(y)]
        if "silent" in rows[0]:
            silent = [math.nan if row["silent"][name] is None else row["silent"][name] for row in rows]
            ax.plot(steps, silent, marker=".", linestyle="--", linewidth=width, color=color,
                    label=f"{name} (silent)" if name == "total" else None)  # fmt: skip
            values += [y for y in silent if not math.isnan(y)]
    best_row = next(row for row in rows if row["step"] == best)
    ax.plot([best], [best_row["total"]], marker="*", markersize=16, color="black", linestyle="none",
            label=f"best: step {best} ({best_row['total']:.2f}%)")  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel(
        f"{rows[0]['benchmark'].upper()} accuracy (%)" + (" (dashed: silent audio)" if "silent" in rows[0] else "")
    )
    ax.set_title(title)
    ax.set_xticks(steps)
    ax.set_ylim(max(0.0, min(values) - 5), min(100.0, max(values) + 5))  # flat curves still get a readable axis
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m r1aqa.tables",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--score_dir", required=True, help="Folder with checkpoint-N.score.json files.")
    parser.add_argument(
        "--silent_score_dir", help="The same checkpoints evaluated with --audio silent: shown side by side."
    )
    parser.add_argument("--out_prefix", help="Write PREFIX.csv/.json/.png (default: SCORE_DIR/checkpoints).")
    parser.add_argument("--title", help="Plot title (default: the score folder's path).")
    args = parser.parse_args(argv)
    for folder in filter(None, (args.score_dir, args.silent_score_dir)):
        if not os.path.isdir(folder):
            parser.exit(2, f"error: {folder}: no such folder.\n")
    try:
        rows = collect(args.score_dir)
        silent_rows = collect(args.silent_score_dir) if args.silent_score_dir else None
    except (ValueError, KeyError) as error:
        parser.exit(2, f"error: {error}\n")
    if not rows:
        parser.exit(2, f"error: no checkpoint-N.score.json in {args.score_dir}: score checkpoints with test_mmau.sh.\n")
    if silent_rows is not None:
        if silent_rows and silent_rows[0]["benchmark"] != rows[0]["benchmark"]:
            parser.exit(2, f"error: {args.silent_score_dir} scores another benchmark than {args.score_dir}.\n")
        add_silent(rows, silent_rows)
    best = best_step(rows)
    prefix = args.out_prefix or os.path.join(args.score_dir, "checkpoints")
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    print(format_table(rows, best))
    if silent_rows is not None:
        print(format_silent_table(rows))
    write_csv(rows, best, prefix + ".csv")
    write_json(rows, best, prefix + ".json")
    plot(rows, best, prefix + ".png", args.title or args.score_dir)
    print(f"Wrote {prefix}.csv, {prefix}.json, {prefix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
