"""Accuracy of every checkpoint of one run or several (seeds): a table (best row marked), CSV, JSON and a plot.

One run is an aggregate of one: per step and column the mean over the runs that have the step, std (n-1; one run: over
its passes), min, max. Best: the highest total of a step every run has; selected: the same on held-out data.
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

from r1aqa.benchmarks import BENCHMARKS, PAPER_RELEASE, mean_std, release_name

SCORE_FILE = re.compile(r"^checkpoint-(\d+)\.score\.json$")
NAMES = {"mmau": "MMAU", "mmar": "MMAR", "avqa": "AVQA validation"}
PAPER_ACCURACY = 64.5  # the paper's MMAU test-mini total, on PAPER_RELEASE
SELECTED = "<- selected on validation"
KINDS = ("std", "min", "max")


def collect(score_dir: str) -> list[dict]:
    """One row per score file, in step order: each column's accuracy (None: no items) and `std` over passes, and more."""
    rows = []
    for name in os.listdir(score_dir):
        if not (match := SCORE_FILE.match(name)):
            continue
        stem = os.path.join(score_dir, name)[: -len(".score.json")]
        summary = json.loads(Path(stem + ".score.json").read_text(encoding="utf-8"))
        key, _, names = BENCHMARKS[benchmark := summary.get("benchmark", "mmau")]["groups"][0]
        groups = {group: summary[key].get(group, {"total": 0}) for group in names or summary[key]}
        groups["total"] = summary["total"]
        metas = [meta for meta in (stem + ".meta.json", stem + ".sample-0.meta.json") if os.path.isfile(meta)]
        settings = json.loads(Path(metas[0]).read_text(encoding="utf-8"))["settings"] if metas else {}  # first pass
        sha256 = settings.get("data_sha256")
        rows.append({c: g["accuracy"] if g["total"] else None for c, g in groups.items()} | dict(
            step=int(match.group(1)), benchmark=benchmark, columns=list(groups), n_items=summary["total"]["total"],
            std={c: g.get("std") if g["total"] else None for c, g in groups.items()},
            num_samples=summary.get("num_samples"), audio_errors=summary.get("audio_errors") or 0,
            decoding=settings.get("decoding", {}).get("mode"),
            release=summary.get("data_release") or (release_name(sha256) if sha256 else None)))  # fmt: skip
    return sorted(rows, key=lambda row: row["step"])


def aggregate_runs(runs: list[list[dict]], labels: list[str]) -> list[dict]:
    """One row per step of any run (`collect` of each): each column's mean over the runs that have it, and more."""
    if empty := [label for label, rows in zip(labels, runs, strict=True) if not rows]:
        raise ValueError(f"no checkpoint-N.score.json for run(s) {empty}: score their checkpoints first.")
    for what, key in (("benchmarks", "benchmark"), ("numbers of items", "n_items"),
                      ("numbers of passes", "num_samples"), ("data releases", "release")):  # fmt: skip
        found = {label: sorted({row[key] for row in rows}, key=str) for label, rows in zip(labels, runs, strict=True)}
        if len({value for values in found.values() for value in values}) > 1:
            raise ValueError(f"the scores differ in {what} ({found}): aggregate runs scored on the same file with "
                             "the same settings, one folder per run and settings.")  # fmt: skip
    columns = [*dict.fromkeys(c for rows in runs for row in rows for c in row["columns"] if c != "total"), "total"]
    by_run = {label: {row["step"]: row for row in rows} for label, rows in zip(labels, runs, strict=True)}
    out = []
    for step in sorted({row["step"] for rows in runs for row in rows}):
        present = {label: steps[step] for label, steps in by_run.items() if step in steps}
        row = {"step": step, "columns": columns, "n_runs": len(runs), "count": len(present), "runs": list(present),
               "missing_runs": [label for label in labels if label not in present], "values": {},
               **{key: runs[0][0][key] for key in ("benchmark", "n_items", "num_samples", "release", "decoding")},
               "audio_errors": max(run["audio_errors"] for run in present.values()), **{k: {} for k in KINDS}}  # fmt: skip
        for c in columns:
            row["values"][c] = {label: run[c] for label, run in present.items() if run.get(c) is not None}
            numbers = list(row["values"][c].values())
            mean, std = mean_std(numbers) if numbers else (None, None)
            row[c] = None if mean is None else round(mean, 2)
            row["min"][c], row["max"][c] = (min(numbers), max(numbers)) if numbers else (None, None)
            passes = present[labels[0]]["std"].get(c) if len(runs) == 1 else None  # one run: over its passes
            row["std"][c] = round(std, 2) if len(numbers) > 1 else passes
        out.append(row)
    return out


def add_silent(rows: list[dict], silent_rows: list[dict]) -> None:
    """Give each row `silent` and `diff` (with audio minus silent) per column, from the silent row of its step."""
    by_step = {row["step"]: row for row in silent_rows}
    for row in rows:
        row["silent"] = {c: by_step.get(row["step"], {}).get(c) for c in row["columns"]}
        row["diff"] = {c: None if None in (row[c], row["silent"][c]) else round(row[c] - row["silent"][c], 2)
                       for c in row["columns"]}  # fmt: skip


def _candidates(rows: list[dict]) -> list[dict]:
    """The rows a best or selected step may come from: scored, and in every run when some step is."""
    rows = [row for row in rows if row["total"] is not None]
    return [row for row in rows if row["count"] == row["n_runs"]] or rows


def best_step(rows: list[dict]) -> int | None:
    """The step with the highest total (the earliest on a tie) among the candidates."""
    return max(rows, key=lambda row: (row["total"], -row["step"]))["step"] if (rows := _candidates(rows)) else None


def add_selection(rows: list[dict], select_rows: list[dict]) -> int | None:
    """Give each row `select` (its held-out total, std, count, or None); return the best held-out candidate step."""
    by_step = {row["step"]: row for row in select_rows if row["total"] is not None}
    for row in rows:
        other = by_step.get(row["step"])
        row["select"] = other and {"total": other["total"], "std": other["std"]["total"], "count": other["count"]}
    tested = {row["step"] for row in _candidates(rows)}
    return best_step([row for row in _candidates(select_rows) if row["step"] in tested])


def _cell(value: float | None, std: float | None = None) -> str:
    return "-" if value is None else f"{value:.2f}" if std is None else f"{value:.2f}±{std:.2f}"


def _test_cell(row: dict) -> str:
    """A step's total on test: mean±std, with min and max over several runs."""
    spread = f" (min {_cell(row['min']['total'])}, max {_cell(row['max']['total'])})" if row["count"] > 1 else ""
    return f"test {_cell(row['total'], row['std']['total'])}% total{spread}"


def _validation(row: dict) -> str:
    return _cell(row["select"]["total"], row["select"]["std"]) if row.get("select") else "-"


def missing_clips(rows: list[dict]) -> str | None:
    """How many clips were missing or unreadable (the most of any step and run); None when none was."""
    counts = {row["audio_errors"] for row in rows}
    most = f"{'up to ' if len(counts) > 1 else ''}{max(counts)} of {rows[0]['n_items']}"
    return f"{most} clips missing or unreadable (counted wrong)" if max(counts) else None


def format_table(rows: list[dict], best: int, selected=None, select_name=None) -> str:
    """Step x columns (mean±std), best row `*`, over several runs `count/n_runs`, then validation and silent audio."""
    first, columns, n_runs, passes = rows[0], rows[0]["columns"], rows[0]["n_runs"], rows[0]["num_samples"]
    shown = columns + (["validation"] if "select" in first else [])
    cells = [{c: _cell(row[c], row["std"][c]) for c in columns} | {"validation": _validation(row)} for row in rows]
    widths = {c: max(7, len(c), *(len(cell[c]) for cell in cells)) for c in shown}
    header = f"  {'step':>6}  " + ("  runs  " if n_runs > 1 else "") + "  ".join(f"{c:>{widths[c]}}" for c in shown)
    lines = [f"{first['release']}, {first['n_items']} items"] if first["release"] else []  # which benchmark file
    lines += [header, "  " + "-" * (len(header) - 2)]
    for row, cell in zip(rows, cells, strict=True):
        lines.append(f"{'*' if row['step'] == best else ' '} {row['step']:>6}  "
                     + (f"{row['count']}/{n_runs}".rjust(5) + "  " if n_runs > 1 else "")
                     + "  ".join(f"{cell[c]:>{widths[c]}}" for c in shown)
                     + (f"  {SELECTED}" if row["step"] == selected else ""))  # fmt: skip
    if n_runs > 1:
        each = f"; each run counts with its mean over {passes} sampled passes" if passes else ""
        lines.append(f"Mean±std (n-1) over the runs that have the step{each}; a step some lack is no candidate while "
                     "some step is in every run")  # fmt: skip
    top, chosen = ({row["step"]: row for row in rows}.get(step) for step in (best, selected))
    if "select" in first:
        found = chosen and f"step {selected} (highest validation total {_validation(chosen)}%): {_test_cell(chosen)}"
        lines.append(f"Selected on validation ({select_name}): {found or 'none (no step is scored on both)'}")
    line = f"* best on test: step {best}: {_test_cell(top)}"
    line += f" (mean±std over {passes} sampled passes)" if passes and n_runs == 1 else ""
    if chosen is not None and best != selected:  # the paper's practice: the step is picked by the numbers it reports
        line += f"; optimistic, {top['total'] - chosen['total']:.2f} points above the selected step"
    lines.append(line)
    if missing := missing_clips(rows):
        lines.append(f"Audio: {missing}{' (the most of any run)' if n_runs > 1 else ''}.")
    if "silent" in first:
        width, over = max(map(len, columns)), f", means over {n_runs} run(s)" if n_runs > 1 else ""
        lines += [f"Audio vs silence (accuracy %{over}; diff = with audio - silent: what needs the audio):",
                  f"  {'step':>6}  {'':<{width}}  {'audio':>7}  {'silent':>7}  {'diff':>7}"]  # fmt: skip
        lines += [f"  {row['step'] if i == 0 else '':>6}  {c:<{width}}  {_cell(row[c]):>7}  {_cell(row['silent'][c]):>7}"
                  f"  {'-' if row['diff'][c] is None else format(row['diff'][c], '+.2f'):>7}"
                  for row in rows for i, c in enumerate(columns)]  # fmt: skip
    return "\n".join(lines)


def write_files(rows: list[dict], best: int, prefix: str, selected=None, select_name=None, **extra) -> None:
    """PREFIX.csv (per step: the columns' means, `best`, the selection, `_std`, ...) and PREFIX.json (every row)."""
    columns, several = rows[0]["columns"], rows[0]["n_runs"] > 1
    fields = ["step", *columns, "best"] + (["selected", "validation_total", "validation_total_std"]
                                           if "select" in rows[0] else [])  # fmt: skip
    fields += [f"{c}_{kind}" for kind in KINDS[: 3 if several else 1] for c in columns]
    fields += ["count", "n_runs", "missing_runs"] if several else []
    fields += [f"{c}_{kind}" for kind in ("silent", "diff") for c in columns] if "silent" in rows[0] else []
    with open(prefix + ".csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*fields, "n_items", "audio_errors"], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            select = row.get("select") or {}
            flat = {**row, "best": row["step"] == best, "selected": row["step"] == selected,
                    "missing_runs": " ".join(row["missing_runs"]), "validation_total": select.get("total"),
                    "validation_total_std": select.get("std")}  # fmt: skip
            for kind in (*KINDS, "silent", "diff"):
                flat.update({f"{c}_{kind}": value for c, value in row.get(kind, {}).items()})
            writer.writerow(flat)
    data = {"best_step": best, "data_release": rows[0]["release"], "missing_clips": missing_clips(rows), **extra}
    data |= {"selected_step": selected, "select_data": select_name} if "select" in rows[0] else {}
    data["rows"] = [{**row, "best": row["step"] == best} for row in rows]
    Path(prefix + ".json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def plot(rows: list[dict], best: int, path: str, title: str, selected=None, select_name=None):
    """Accuracy against step (returns the figure): the total wide beneath the columns, a ±1 std band; dashed: silent
    audio, validation and (MMAU test-mini) the paper's number."""
    from matplotlib.figure import Figure  # no pyplot: no display, no global state

    first, steps, values = rows[0], [row["step"] for row in rows], []
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()

    def line(get, **style) -> list[float]:
        ys = [math.nan if get(row) is None else get(row) for row in rows]
        values.extend(y for y in ys if not math.isnan(y))
        ax.plot(steps, ys, clip_on=False, **style)  # markers at 0 or 100% drawn whole
        return ys

    for index, label in enumerate(first["runs"] + first["missing_runs"] if first["n_runs"] > 1 else ()):
        line(lambda row, label=label: row["values"]["total"].get(label), color="grey", linewidth=0.7, alpha=0.6,
             label=None if index else "each run (total)")  # fmt: skip
    for index, name in enumerate(first["columns"]):
        if all(row[name] is None for row in rows):
            continue  # a group without items
        total = name == "total"
        style = {"color": f"C{index}", "linewidth": 4 if total else 1.2, "alpha": 0.5 if total else 1}
        ys = line(lambda row, name=name: row[name], marker="o", label=name, zorder=2 if total else 3, **style)
        spread = [row["std"][name] or 0.0 for row in rows]
        if total and any(spread):
            low = [y - s for y, s in zip(ys, spread, strict=True)]
            high = [y + s for y, s in zip(ys, spread, strict=True)]
            over = "runs" if first["n_runs"] > 1 else "sampled passes"
            ax.fill_between(
                steps, low, high, color=style["color"], alpha=0.15, linewidth=0, label=f"total ± 1 std over {over}"
            )
        if "silent" in first:
            line(lambda row, name=name: row["silent"][name], marker=".", linestyle="--",
                 label=f"{name} (silent)" if total else None, **style)  # fmt: skip
    if "select" in first:
        line(lambda row: row["select"] and row["select"]["total"], marker="s", linestyle="--", color="black",
             linewidth=1.2, label=f"validation total ({select_name})")  # fmt: skip
    if first["benchmark"] == "mmau" and (first["release"] or "").startswith("MMAU test-mini"):
        values.append(PAPER_ACCURACY)
        ax.axhline(PAPER_ACCURACY, color="dimgrey", linestyle="--", linewidth=1,
                   label=f"paper: {PAPER_ACCURACY}% on {PAPER_RELEASE}")  # fmt: skip
    for step, marker, label in ((best, "*", "best on test"), (selected, "D", "selected on validation")):
        if (row := next((row for row in rows if row["step"] == step), None)) is not None:
            ax.plot([step], [row["total"]], marker=marker, markersize=16 if marker == "*" else 9, linestyle="none",
                    color="black" if marker == "*" else "red", markerfacecolor=None if marker == "*" else "none",
                    clip_on=False, zorder=5, label=f"{label}: step {step} ({row['total']:.2f}%)")  # fmt: skip
    name, release = NAMES[first["benchmark"]], first["release"] or "release unknown"
    data = f"{release if release.startswith(name) else f'{name}, {release}'}, {first['n_items']} items"
    passes = f", {first['num_samples']} sampled passes" if first["num_samples"] else ""
    subtitle = f"{data}; decoding {first['decoding'] or 'not recorded'}{passes}"
    ax.set_title("\n".join(text for text in (title, subtitle, missing_clips(rows)) if text), fontsize=9, pad=14)
    over = f", mean of {first['n_runs']} runs" if first["n_runs"] > 1 else ""
    ax.set_ylabel(f"{name} accuracy (%){over}" + (" (dashed: silent audio)" if "silent" in first else ""), fontsize=9)
    ax.set(xlabel="training step", xticks=steps, ylim=(max(0.0, min(values) - 5), min(100.0, max(values) + 5)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _labels(score_dirs: list[str]) -> list[str]:
    """Each score folder's run (test_mmau.sh writes RUN/<benchmark>/<data>.<settings>): its name, else its path."""
    runs = [os.path.dirname(os.path.dirname(os.path.abspath(folder))) for folder in score_dirs]
    for labels in ([os.path.basename(run) for run in runs], runs):
        if len(set(labels)) == len(labels) and all(labels):
            return labels
    return list(score_dirs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r1aqa.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    for flag, text in (("score_dir", "checkpoint-N.score.json files, one folder per run"),
                       ("silent_score_dir", "the same checkpoints evaluated with --audio silent, per run"),
                       ("select_score_dir", "the same checkpoints on held-out data, per run: selects a step")):  # fmt: skip
        parser.add_argument(f"--{flag}", f"--{flag}s", nargs="+", metavar="DIR", help=f"Folders: {text}.")
    parser.add_argument("--aggregate", action="store_true", help="Accepted for older commands: --score_dir D1 D2.")
    parser.add_argument("--out_prefix", help="Write PREFIX.csv/.json/.png (one run: default SCORE_DIR/checkpoints).")
    args = parser.parse_args(argv)
    folders = (args.score_dir, args.silent_score_dir, args.select_score_dir)
    if not args.score_dir or (len(args.score_dir) > 1 and not args.out_prefix):
        parser.error("give --score_dir D (one run), or --score_dir D1 D2 ... and --out_prefix (several runs).")
    try:
        rows, silent_rows, select_rows = (group and aggregate_runs([collect(f) for f in group], _labels(group))
                                          for group in folders)  # fmt: skip
    except (OSError, ValueError, KeyError) as error:
        parser.exit(2, f"error: {error}\n")
    if silent_rows:
        add_silent(rows, silent_rows)
    # test_mmau.sh names the held-out folder `<benchmark>/<data>.<settings>`, e.g. avqa/val.answer
    select_name = folders[2] and "/".join(os.path.abspath(folders[2][0]).split(os.sep)[-2:])
    selected = add_selection(rows, select_rows) if select_rows else None
    best, labels = best_step(rows), _labels(folders[0])
    print(format_table(rows, best, selected, select_name))
    prefix = args.out_prefix or os.path.join(args.score_dir[0], "checkpoints")
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    names = ("score_dirs", "silent_score_dirs", "select_score_dirs")
    dirs = {name: [os.path.abspath(f) for f in group] for name, group in zip(names, folders, strict=True) if group}
    write_files(rows, best, prefix, selected, select_name, n_runs=len(labels), runs=labels, **dirs)
    title = labels[0] if len(labels) == 1 else f"{len(labels)} runs ({', '.join(labels)})"
    plot(rows, best, prefix + ".png", title, selected, select_name)
    print(f"Wrote {prefix}.csv, {prefix}.json, {prefix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
