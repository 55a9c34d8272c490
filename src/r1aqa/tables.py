"""MMAU accuracy of every checkpoint of a run: a table (best row marked), CSV, JSON and a plot against step.

    python -m r1aqa.tables --score_dir outputs/grpo-qwen2-audio-7b/mmau/mmau-test-mini.answer

Reads the `checkpoint-N.score.json` files that `python -m r1aqa.evaluate` writes (test_mmau.sh puts them in one
folder per run, data file and prompt style) and writes `checkpoints.csv`, `checkpoints.json` and `checkpoints.png`
beside them (`--out_prefix` to change). The paper evaluated steps 100, 200, ..., 1000 and reported the best; the
best row here is the highest total accuracy (the earliest step on a tie). A task with no items shows as `-`.
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

SCORE_FILE = re.compile(r"^checkpoint-(\d+)\.score\.json$")
TASKS = ("sound", "music", "speech")
COLUMNS = (*TASKS, "total")


def collect(score_dir: str) -> list[dict]:
    """One row per `checkpoint-N.score.json` in `score_dir`, in numeric step order.

    A row holds `step`, the accuracy (%) of each task and in total (None for a task without items), `n_items`,
    `audio_errors` and `score_file`.
    """
    rows = []
    for name in os.listdir(score_dir):
        match = SCORE_FILE.match(name)
        if not match:
            continue
        path = os.path.join(score_dir, name)
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
        row = {"step": int(match.group(1))}
        for task in TASKS:
            group = summary["task"].get(task, {"total": 0})
            row[task] = group["accuracy"] if group["total"] else None
        row["total"] = summary["total"]["accuracy"]
        row["n_items"] = summary["total"]["total"]
        row["audio_errors"] = summary.get("audio_errors")
        row["score_file"] = path
        rows.append(row)
    return sorted(rows, key=lambda row: row["step"])


def best_step(rows: list[dict]) -> int:
    """The step with the highest total accuracy; the earliest one on a tie."""
    return max(rows, key=lambda row: (row["total"], -row["step"]))["step"]


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(rows: list[dict], best: int) -> str:
    """A fixed-width table, step x sound / music / speech / total, the best row marked with `*`."""
    header = f"  {'step':>6}  " + "  ".join(f"{name:>7}" for name in COLUMNS)
    lines = [header, "  " + "-" * (len(header) - 2)]
    for row in rows:
        mark = "*" if row["step"] == best else " "
        lines.append(f"{mark} {row['step']:>6}  " + "  ".join(f"{_cell(row[name]):>7}" for name in COLUMNS))
    lines.append(f"* best: step {best} ({_cell(next(r for r in rows if r['step'] == best)['total'])}% total)")
    return "\n".join(lines)


def write_csv(rows: list[dict], best: int, path: str) -> None:
    fields = ["step", *COLUMNS, "best", "n_items", "audio_errors"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "best": row["step"] == best})


def write_json(rows: list[dict], best: int, path: str) -> None:
    data = {"best_step": best, "rows": [{**row, "best": row["step"] == best} for row in rows]}
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def plot(rows: list[dict], best: int, path: str, title: str) -> None:
    """Accuracy against step, one line per task and a thicker one for the total; the best step starred."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in COLUMNS:
        values = [math.nan if row[name] is None else row[name] for row in rows]
        ax.plot(steps, values, marker="o", label=name, linewidth=2.5 if name == "total" else 1.2)
    best_row = next(row for row in rows if row["step"] == best)
    ax.plot([best], [best_row["total"]], marker="*", markersize=16, color="black", linestyle="none",
            label=f"best: step {best} ({best_row['total']:.2f}%)")  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("MMAU accuracy (%)")
    ax.set_title(title)
    ax.set_xticks(steps)
    values = [row[name] for row in rows for name in COLUMNS if row[name] is not None]
    ax.set_ylim(max(0.0, min(values) - 5), min(100.0, max(values) + 5))  # flat curves still get a readable axis
    ax.grid(alpha=0.3)
    ax.legend()
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
    parser.add_argument("--out_prefix", help="Write PREFIX.csv/.json/.png (default: SCORE_DIR/checkpoints).")
    parser.add_argument("--title", help="Plot title (default: the score folder's path).")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.score_dir):
        parser.exit(2, f"error: {args.score_dir}: no such folder.\n")
    rows = collect(args.score_dir)
    if not rows:
        parser.exit(2, f"error: no checkpoint-N.score.json in {args.score_dir}: score checkpoints with test_mmau.sh.\n")
    best = best_step(rows)
    prefix = args.out_prefix or os.path.join(args.score_dir, "checkpoints")
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    print(format_table(rows, best))
    write_csv(rows, best, prefix + ".csv")
    write_json(rows, best, prefix + ".json")
    plot(rows, best, prefix + ".png", args.title or args.score_dir)
    print(f"Wrote {prefix}.csv, {prefix}.json, {prefix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
