"""Several runs and an honest checkpoint choice (issue 17): `r1aqa.report --aggregate` (mean, std (n-1), min, max and
count over runs per step), selection on held-out data (AVQA validation) beside best on test, and the whole path on
CPU: `SEEDS="1 2" run_grpo.sh`, then `RUN_DIRS=... SELECT_FILE=... test_mmau.sh`.

The unit tests write score files with `r1aqa.benchmarks.score` on made-up predictions, so every expected number below is
worked out by hand from how many items each run got right.
"""

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import MMAR_SAMPLE

from r1aqa import report as tables
from r1aqa.benchmarks import aggregate, score

REPO = Path(__file__).resolve().parents[1]


def write_mmau_score(folder: Path, step: int, correct: dict[str, int]) -> None:
    """`checkpoint-<step>.score.json`: `correct[task]` of 4 items right per task (25 points each)."""
    items = [
        {"answer": "yes", "choices": ["yes", "no"], "task": task, "difficulty": "easy",
         "model_output": "yes" if i < n_right else "no"}
        for task, n_right in correct.items() for i in range(4)
    ]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"checkpoint-{step}.score.json").write_text(json.dumps(score(items)))


def write_avqa_score(folder: Path, step: int, n_right: int, n_items: int = 4) -> None:
    """An AVQA validation score file: `n_right` of `n_items` right."""
    items = [
        {"id": i, "multi_choice": ["a", "b"], "answer": 0, "question_type": "Which", "question_relation": "View",
         "model_output": "a" if i < n_right else "b"}
        for i in range(n_items)
    ]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"checkpoint-{step}.score.json").write_text(json.dumps(score(items)))


def test_dirs(root: Path, runs, benchmark="mmau", name="test.answer") -> list[Path]:
    return [root / run / benchmark / name for run in runs]


test_dirs.__test__ = False  # a helper, not a test


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table_rows(printed: str) -> dict[int, str]:
    """The printed table's step lines by step (the lines whose second field is a step number)."""
    rows = {}
    for line in printed.splitlines():
        fields = line[2:].split()
        if line[:2] in ("* ", "  ") and fields and fields[0].isdigit() and len(fields) > 2 and "/" in fields[1]:
            rows[int(fields[0])] = line
    return rows


@pytest.fixture
def three_runs(tmp_path) -> list[Path]:
    """Runs a, b, c: steps 100 and 200; c lacks step 200 (still training, or crashed)."""
    a, b, c = test_dirs(tmp_path, "abc")
    write_mmau_score(a, 100, {"sound": 1, "music": 2})  # sound 25, music 50, total 37.5
    write_mmau_score(b, 100, {"sound": 2, "music": 2})  # 50, 50, 50
    write_mmau_score(c, 100, {"sound": 3, "music": 4})  # 75, 100, 87.5
    write_mmau_score(a, 200, {"sound": 4, "music": 3})  # 100, 75, 87.5
    write_mmau_score(b, 200, {"sound": 2, "music": 3})  # 50, 75, 62.5: step 200's mean total 75 beats step 100's
    return [a, b, c]


def test_aggregate_gives_mean_std_min_max_and_count_per_step_and_task(three_runs, tmp_path, capsys):
    prefix = tmp_path / "agg" / "aggregate"
    argv = ["--aggregate", "--score_dirs", *map(str, three_runs), "--out_prefix", str(prefix)]
    assert tables.main(argv) == 0
    printed = capsys.readouterr().out

    data = json.loads(prefix.with_suffix(".json").read_text())
    first, second = data["rows"]
    assert data["n_runs"] == 3 and data["runs"] == ["a", "b", "c"]
    # step 100, every run: sound 25/50/75, music 50/50/100, total 37.5/50/87.5
    assert (first["step"], first["count"], first["missing_runs"]) == (100, 3, [])
    assert (first["sound"], first["std"]["sound"], first["min"]["sound"], first["max"]["sound"]) == (50.0, 25.0, 25.0,
                                                                                                     75.0)  # fmt: skip
    assert (first["music"], first["std"]["music"]) == (66.67, 28.87)
    assert (first["total"], first["std"]["total"], first["min"]["total"], first["max"]["total"]) == (58.33, 26.02,
                                                                                                     37.5, 87.5)  # fmt: skip
    assert first["speech"] is None and first["std"]["speech"] is None  # no speech items: no number
    assert first["values"]["total"] == {"a": 37.5, "b": 50.0, "c": 87.5}
    # step 200: c lacks it; the numbers are over a and b only, and say so
    assert (second["count"], second["runs"], second["missing_runs"]) == (2, ["a", "b"], ["c"])
    assert (second["sound"], second["std"]["sound"], second["total"], second["std"]["total"]) == (75.0, 35.36, 75.0,
                                                                                                  17.68)  # fmt: skip
    # best on test: step 100, although step 200's mean (over 2 of 3 runs) is higher
    assert data["best_step"] == 100

    lines = table_rows(printed)
    assert lines[100].startswith("*") and lines[100].split()[1:3] == ["100", "3/3"]
    assert lines[100].split()[3:] == ["50.00±25.00", "66.67±28.87", "-", "58.33±26.02"]
    assert lines[200].split()[:2] == ["200", "2/3"] and not lines[200].startswith("*")
    assert "a step some lack is no candidate while some step is in every run" in printed

    rows = read_csv(prefix.with_suffix(".csv"))
    assert [row["step"] for row in rows] == ["100", "200"]
    assert {key: rows[0][key] for key in ("count", "n_runs", "total", "total_std", "total_min", "total_max")} == {
        "count": "3", "n_runs": "3", "total": "58.33", "total_std": "26.02", "total_min": "37.5",
        "total_max": "87.5"}  # fmt: skip
    assert (rows[1]["count"], rows[1]["missing_runs"], rows[0]["best"]) == ("2", "c", "True")
    assert prefix.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_one_run_has_no_std_and_a_complete_step_wins_even_if_lower(tmp_path, capsys):
    a, b = test_dirs(tmp_path, "ab")
    write_mmau_score(a, 100, {"sound": 2})
    write_mmau_score(b, 100, {"sound": 2})
    write_mmau_score(a, 200, {"sound": 4})  # only in a
    assert tables.main(["--aggregate", "--score_dirs", str(a), str(b), "--out_prefix", str(tmp_path / "p")]) == 0
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["rows"][1]["std"]["total"] is None and data["rows"][1]["count"] == 1  # n - 1 = 0: undefined
    assert data["best_step"] == 100
    assert read_csv(tmp_path / "p.csv")[1]["total_std"] == ""


def test_selected_on_validation_beside_best_on_test(tmp_path, capsys):
    runs = test_dirs(tmp_path, ["seed-1", "seed-2"])
    vals = test_dirs(tmp_path, ["seed-1", "seed-2"], "avqa", "val.answer")
    # test totals, mean over the 2 runs: step 100 50, step 200 75 (best on test), step 300 62.5
    for run, (s100, s200, s300) in zip(runs, ((1, 3, 2), (3, 3, 3)), strict=True):
        for step, n_right in zip((100, 200, 300), (s100, s200, s300), strict=True):
            write_mmau_score(run, step, {"sound": n_right, "music": n_right})
    # validation totals, mean over the 2 runs: 100 50, 200 62.5, 300 87.5 (selected)
    for val, (v100, v200, v300) in zip(vals, ((2, 2, 3), (2, 3, 4)), strict=True):
        for step, n_right in zip((100, 200, 300), (v100, v200, v300), strict=True):
            write_avqa_score(val, step, n_right)
    prefix = tmp_path / "aggregate" / "mmau" / "test.answer" / "aggregate"
    argv = ["--aggregate", "--score_dirs", *map(str, runs), "--select_score_dirs", *map(str, vals)]
    assert tables.main([*argv, "--out_prefix", str(prefix)]) == 0
    printed = capsys.readouterr().out

    data = json.loads(prefix.with_suffix(".json").read_text())
    assert (data["best_step"], data["selected_step"]) == (200, 300)
    assert data["select_data"] == "avqa/val.answer" and data["rows"][2]["select"]["total"] == 87.5
    lines = table_rows(printed)
    assert lines[300].endswith(tables.SELECTED) and lines[300].split()[-5] == "87.50±17.68"
    assert lines[200].startswith("*") and not lines[200].endswith(tables.SELECTED)
    assert "Selected on validation (avqa/val.answer): step 300 (highest validation total 87.50±17.68%" in printed
    assert "test 62.50±17.68% total (min 50.00, max 75.00)" in printed
    assert "* best on test: step 200: test 75.00±0.00% total" in printed and "12.50 points above" in printed
    rows = read_csv(prefix.with_suffix(".csv"))
    assert [row["selected"] for row in rows] == ["False", "False", "True"]
    assert [row["validation_total"] for row in rows] == ["50.0", "62.5", "87.5"]


def test_selection_tie_goes_to_the_earliest_step_and_needs_every_run(tmp_path):
    a, b = test_dirs(tmp_path, "ab")
    va, vb = test_dirs(tmp_path, "ab", "avqa", "val.answer")
    for run in (a, b):
        for step in (100, 200, 300):
            write_mmau_score(run, step, {"sound": 2})
    for val in (va, vb):
        write_avqa_score(val, 100, 2)
        write_avqa_score(val, 200, 3)
        write_avqa_score(val, 300, 3)  # a tie with step 200
    write_avqa_score(va, 400, 4)  # the highest, but one run only (and never tested)
    rows = tables.aggregate_runs([tables.collect(a), tables.collect(b)], ["a", "b"])
    select_rows = tables.aggregate_runs([tables.collect(va), tables.collect(vb)], ["a", "b"])
    assert tables.add_selection(rows, select_rows) == 200
    assert [row["select"]["total"] for row in rows] == [50.0, 75.0, 75.0]
    assert tables.add_selection(rows, []) is None and all(row["select"] is None for row in rows)


def test_single_run_table_marks_the_selected_step(tmp_path, capsys):
    run, val = tmp_path / "run" / "mmau" / "t.answer", tmp_path / "run" / "avqa" / "val.answer"
    write_mmau_score(run, 100, {"sound": 2})
    write_mmau_score(run, 200, {"sound": 4})  # best on test
    write_avqa_score(val, 100, 3)  # selected
    write_avqa_score(val, 200, 1)
    assert tables.main(["--score_dir", str(run), "--select_score_dir", str(val)]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line[2:8].strip().isdigit()]
    assert lines[0].endswith(tables.SELECTED) and lines[0].split()[:6] == ["100", "50.00", "-", "-", "50.00", "75.00"]
    assert lines[1].startswith("*") and lines[1].split()[1:7] == ["200", "100.00", "-", "-", "100.00", "25.00"]
    assert "Selected on validation (avqa/val.answer): step 100" in printed and "test 50.00% total" in printed
    data = json.loads((run / "checkpoints.json").read_text())
    assert (data["best_step"], data["selected_step"]) == (200, 100)
    assert [row["selected"] for row in read_csv(run / "checkpoints.csv")] == ["True", "False"]


def test_sampled_passes_count_with_each_runs_mean(tmp_path, capsys):
    """NUM_SAMPLES=K: each run's checkpoint score is the mean over its passes; the aggregate is over those means."""
    items = [json.loads(line) for line in MMAR_SAMPLE.read_text(encoding="utf-8").splitlines()]

    def passes(*n_right):
        return aggregate(
            [score([{**item, "answer_prediction": item["answer"] if i < n else ""} for i, item in enumerate(items)])
             for n in n_right]
        )  # fmt: skip

    a, b = test_dirs(tmp_path, "ab", "mmar", "MMAR-meta.answer.samples-2")
    for folder, summary in ((a, passes(13, 26)), (b, passes(0, 13))):  # run means 75 and 25 (of 26 items)
        folder.mkdir(parents=True)
        (folder / "checkpoint-5.score.json").write_text(json.dumps(summary))
    assert tables.main(["--aggregate", "--score_dirs", str(a), str(b), "--out_prefix", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out
    row = json.loads((tmp_path / "p.json").read_text())["rows"][0]
    assert (row["total"], row["std"]["total"], row["values"]["total"]) == (50.0, 35.36, {"a": 75.0, "b": 25.0})
    assert row["columns"][:2] == ["sound", "music"] and len(row["columns"]) == 8  # MMAR's 7 modalities + total
    assert "each run counts with its mean over 2 sampled passes" in printed


def test_silent_control_aggregates_beside_the_audio(tmp_path, capsys):
    a, b = test_dirs(tmp_path, "ab")
    sa, sb = (folder.with_name(folder.name + ".silent") for folder in (a, b))
    write_mmau_score(a, 100, {"sound": 4})
    write_mmau_score(b, 100, {"sound": 2})  # mean 75
    write_mmau_score(sa, 100, {"sound": 2})
    write_mmau_score(sb, 100, {"sound": 1})  # mean 37.5
    argv = ["--aggregate", "--score_dirs", str(a), str(b), "--silent_score_dirs", str(sa), str(sb)]
    assert tables.main([*argv, "--out_prefix", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out
    row = json.loads((tmp_path / "p.json").read_text())["rows"][0]
    assert (row["total"], row["silent"]["total"], row["diff"]["total"]) == (75.0, 37.5, 37.5)
    assert "Audio vs silence (accuracy %, means over 2 run(s)" in printed
    assert read_csv(tmp_path / "p.csv")[0]["total_diff"] == "37.5"


def test_runs_scored_on_other_items_or_benchmarks_are_refused(tmp_path, capsys):
    a, b = test_dirs(tmp_path, "ab")
    write_mmau_score(a, 100, {"sound": 2})
    write_mmau_score(b, 100, {"sound": 2, "music": 1})  # 8 items, not 4: another file or --limit
    with pytest.raises(SystemExit) as exit_info:
        tables.main(["--aggregate", "--score_dirs", str(a), str(b), "--out_prefix", str(tmp_path / "p")])
    assert exit_info.value.code == 2 and "differ in numbers of items" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        tables.main(["--aggregate", "--score_dirs", str(a), str(tmp_path / "empty"), "--out_prefix", "p"])
    assert "no checkpoint-N.score.json for run(s)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tables.main(["--score_dirs", str(a), str(b)])  # several runs need --out_prefix


# ---- the "Done when", on CPU with the tiny model ------------------------------------------------------------


@pytest.mark.slow  # training 2 seeds x 2 steps, then 10 evaluation subprocesses; ~2 min of CPU
@pytest.mark.skipif(not (os.path.exists("/usr/bin/ffmpeg") or os.path.exists("/usr/local/bin/ffmpeg")),
                    reason="needs ffmpeg (prepare_avqa)")  # fmt: skip
def test_two_seeds_trained_evaluated_aggregated_and_selected_on_avqa_validation(toy, tmp_path):
    from helpers.avqa_val import write_avqa_val

    out = tmp_path / "X"
    env = {**os.environ, "DEVICE": "cpu", "MODEL": toy["model"], "DATA_FILE": toy["data"], "SEEDS": "1 2"}
    train = subprocess.run(["bash", str(REPO / "run_grpo.sh"), "--max_steps", "2", "--save_steps", "1",
                            "--output_dir", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=900)  # fmt: skip
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    for seed in (1, 2):
        assert sorted(p.name for p in (out / f"seed-{seed}").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    val_file, _, _ = write_avqa_val(tmp_path)  # AVQA validation questions made by prepare_avqa (real AVQA clips)
    toy_dir = Path(toy["data"]).parent  # r1aqa.tryout.toy_task: test.json (MMAU format) and test-mini-audios/
    env = {**os.environ, "PYTHON": sys.executable, "RUN_DIRS": f"{out / 'seed-1'} {out / 'seed-2'}",
           "DATA_FILE": str(toy_dir / "test.json"), "AUDIO_DIR": str(toy_dir / "test-mini-audios"),
           "SELECT_FILE": str(val_file), "BATCH_SIZE": "4", "MAX_NEW_TOKENS": "4"}  # fmt: skip
    script = str(REPO / "test_mmau.sh")
    result = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    totals, val_totals = {}, {}
    for seed in (1, 2):
        run = out / f"seed-{seed}"
        for step in (1, 2):
            summary = json.loads((run / "mmau" / "test.answer" / f"checkpoint-{step}.score.json").read_text())
            totals.setdefault(step, []).append(summary["total"]["accuracy"])
            val = json.loads((run / "avqa" / "val.answer" / f"checkpoint-{step}.score.json").read_text())
            assert val["benchmark"] == "avqa" and val["total"]["total"] == 4
            val_totals.setdefault(step, []).append(val["total"]["accuracy"])
        assert (run / "mmau" / "test.answer" / "checkpoints.json").exists()  # each run's own table too
    agg = out / "aggregate" / "mmau" / "test.answer"
    data = json.loads((agg / "aggregate.json").read_text())
    assert [(row["step"], row["count"]) for row in data["rows"]] == [(1, 2), (2, 2)]
    for row in data["rows"]:
        assert row["total"] == round(statistics.fmean(totals[row["step"]]), 2)
        assert row["std"]["total"] == round(statistics.stdev(totals[row["step"]]), 2)
        assert row["select"]["total"] == round(statistics.fmean(val_totals[row["step"]]), 2)
    expected = max((1, 2), key=lambda step: (statistics.fmean(val_totals[step]), -step))
    assert data["selected_step"] == expected
    header = (agg / "aggregate.csv").read_text().splitlines()[0].split(",")
    assert {"total", "total_std", "total_min", "total_max", "count"} <= set(header)
    assert (agg / "aggregate.png").exists()
    printed = result.stdout[result.stdout.index("##### aggregate of 2 runs") :]
    lines = table_rows(printed)
    assert lines[1][2:].split()[1] == lines[2][2:].split()[1] == "2/2"  # count 2 per step
    assert lines[expected].endswith(tables.SELECTED) and "Selected on validation (avqa/val.answer)" in printed

    # A folder of seed-* runs is found by itself; the silent control aggregates too (already scored steps skip).
    env = {**env, "RUN_DIRS": "", "RUN_DIR": str(out), "AUDIO": "silent", "STEPS": "2"}
    silent = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=900)
    assert silent.returncode == 0, silent.stdout[-3000:] + silent.stderr[-3000:]
    assert "##### run " + str(out / "seed-1") in silent.stdout and "Audio vs silence" in silent.stdout
    rows = json.loads((out / "aggregate" / "mmau" / "test.answer.silent" / "aggregate.json").read_text())["rows"]
    assert [row["step"] for row in rows if row["silent"]["total"] is not None] == [2]
    assert rows[1]["total"] == data["rows"][1]["total"]  # with audio, from the first evaluation


@pytest.mark.parametrize(
    "env,message",
    [
        ({"RUN_DIRS": "{tmp}/a {tmp}/b", "OUT_DIR": "{tmp}/o"}, "OUT_DIR is one run's folder"),
        ({"RUN_DIRS": "{tmp}/a {tmp}/missing"}, "RUN_DIRS: {tmp}/missing is not a folder"),
        ({"RUN_DIR": "{tmp}/a", "SELECT_FILE": "{tmp}/val.jsonl"}, "SELECT_FILE={tmp}/val.jsonl does not exist"),
    ],
)
def test_shell_script_several_runs_and_select_file_errors(tmp_path, env, message):
    for run in ("a", "b"):
        (tmp_path / run / "checkpoint-1").mkdir(parents=True)
    (tmp_path / "test.json").write_text("[]")
    env = {key: value.format(tmp=tmp_path) for key, value in env.items()}
    environment = {**os.environ, "PYTHON": sys.executable, "DATA_FILE": str(tmp_path / "test.json"), **env}
    result = subprocess.run(["bash", str(REPO / "test_mmau.sh")], env=environment, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 2 and message.format(tmp=tmp_path) in result.stderr


def test_plot_names_run_benchmark_release_decoding_and_draws_the_papers_line(tmp_path):
    """The picture read at a glance: the run's name (not a path), the benchmark, its release and the decoding in the
    title; the axis names the benchmark plotted; the paper's 64.5 dashed on MMAU test-mini; the best step's star at
    100% unclipped; a task equal to the total drawn over it; the legend outside the axes."""
    from r1aqa.benchmarks import PAPER_RELEASE

    scores = test_dirs(tmp_path, ["seed-42"], name="mmau-test-mini.answer")[0]
    for step, correct in ((100, {"sound": 2}), (200, {"sound": 4})):  # sound only: the total equals it
        write_mmau_score(scores, step, correct)
        path = scores / f"checkpoint-{step}.score.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "data_release": PAPER_RELEASE}))
        (scores / f"checkpoint-{step}.meta.json").write_text(json.dumps({"settings": {"decoding": {"mode": "greedy"}}}))
    rows = tables.aggregate_runs([tables.collect(str(scores))], tables._labels([str(scores)]))
    assert rows[0]["runs"] == ["seed-42"]
    figure = tables.plot(rows, tables.best_step(rows), str(tmp_path / "p.png"), "seed-42")
    ax = figure.axes[0]
    title = ax.get_title().splitlines()
    assert title == ["seed-42", f"{PAPER_RELEASE}, 4 items; decoding greedy"]
    assert ax.get_ylabel() == "MMAU accuracy (%)"
    lines = {line.get_label(): line for line in ax.get_lines()}
    paper = lines[f"paper: 64.5% on {PAPER_RELEASE}"]
    assert paper.get_linestyle() == "--" and list(paper.get_ydata()) == [64.5, 64.5]
    star = lines["best on test: step 200 (100.00%)"]
    assert star.get_marker() == "*" and list(star.get_ydata()) == [100.0] and not star.get_clip_on()
    assert lines["sound"].get_zorder() > lines["total"].get_zorder()
    figure.canvas.draw()
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1  # beside the axes, never over a curve

    val = test_dirs(tmp_path, ["seed-42"], "avqa", "val.answer")[0]
    write_avqa_score(val, 100, 3)
    rows = tables.aggregate_runs([tables.collect(str(val))], ["seed-42"])
    ax = tables.plot(rows, 100, str(tmp_path / "v.png"), "seed-42").axes[0]
    assert ax.get_ylabel() == "AVQA validation accuracy (%)" and "AVQA validation" in ax.get_title()
    assert not any(line.get_label().startswith("paper") for line in ax.get_lines())  # the paper's number is MMAU's
