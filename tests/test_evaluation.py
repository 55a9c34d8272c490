"""MMAU inference (r1aqa.evaluate), the per-checkpoint table (r1aqa.report) and test_mmau.sh.

Six items of the real test-mini file (2025-03-25): the one item whose audio ships with the data
(`MMAU_REAL_ITEM_ID`, its real WAV) plus sound, music and speech items. Their audio is not available here, so for
those this file writes its own clips of 2-7 s (sine tones, chirps and noise made with numpy, one stereo 44.1 kHz)
into tmp_path. Models are tiny random Qwen2-Audios (r1aqa.tryout.tiny; the silent-audio and own-clip test also runs the
tiny Qwen2.5-Omni thinker), so accuracies are meaningless: the tests check files, keys, batching, skipping, resuming,
failure handling, that the model hears each item's own clip, and (with answers planted at the generation seam) that
MMAR's official script counts what we count.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers.avqa_val import write_avqa_val
from helpers.paths import MMAR_SAMPLE, MMAU_2025_03, MMAU_AUDIO_DIR, MMAU_REAL_ITEM_ID
from helpers.stop_model import END_OF_TEXT, IM_END, steer, stop_test_model

from r1aqa import decoding
from r1aqa import evaluate as evaluator
from r1aqa import report as tables
from r1aqa.benchmarks import PROMPT_STYLES, example, score
from r1aqa.models import resolve_processor_path
from r1aqa.prompts import extract_answer, format_question
from r1aqa.tryout.tiny import build_model, build_processor, write_tiny_model

REPO = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = "12"  # the tiny model babbles until the limit; 12 tokens keep each run to seconds
PREDICTION_KEYS = ("model_raw_output", "model_prediction", "model_output", "answer_prediction")


def _select_items() -> list[dict]:
    """The real-audio item first, then one more sound item, two music and two speech items (file order)."""
    items = json.loads(MMAU_2025_03.read_text())
    chosen = [item for item in items if item["id"] == MMAU_REAL_ITEM_ID]
    for task, count in (("sound", 1), ("music", 2), ("speech", 2)):
        chosen += [item for item in items if item["task"] == task and item["id"] != MMAU_REAL_ITEM_ID][:count]
    return chosen


def _made_clip(index: int) -> tuple[np.ndarray, int]:
    """A locally made clip (not MMAU audio): a different length and kind of sound per item."""
    seconds = (3.0, 5.0, 2.0, 7.0, 4.0)[index % 5]
    rate = 44_100 if index == 2 else 16_000
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(index)
    if index % 3 == 0:
        samples = 0.3 * np.sin(2 * np.pi * (200 + 150 * index) * t)  # tone
    elif index % 3 == 1:
        samples = 0.3 * np.sin(2 * np.pi * (100 + 400 * t) * t)  # chirp
    else:
        samples = 0.1 * rng.standard_normal(len(t))  # noise
    samples = samples.astype(np.float32)
    if index == 2:
        samples = np.stack([samples, np.zeros_like(samples)], axis=1)  # stereo: only the first channel is used
    return samples, rate


@pytest.fixture(scope="module")
def mmau_slice(tmp_path_factory):
    """(data_file, audio_dir, items): the six real items, the real WAV for the first, made clips for the rest."""
    root = tmp_path_factory.mktemp("mmau")
    audio_dir = root / "audio"
    audio_dir.mkdir()
    items = _select_items()
    assert items[0]["id"] == MMAU_REAL_ITEM_ID and len(items) == 6
    assert {item["task"] for item in items} == {"sound", "music", "speech"}
    shutil.copy(MMAU_AUDIO_DIR / f"{MMAU_REAL_ITEM_ID}.wav", audio_dir)
    for index, item in enumerate(items[1:]):
        samples, rate = _made_clip(index)
        sf.write(audio_dir / os.path.basename(item["audio_id"]), samples, rate)
    data_file = root / "mmau-slice.json"
    data_file.write_text(json.dumps(items, indent=2))
    return str(data_file), str(audio_dir), items


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    """A fake training run: checkpoint-100 with its processor; checkpoint-200 (other weights) saved without one,
    as a trainer saving weights only would, the processor being in the run folder."""
    run = tmp_path_factory.mktemp("run")
    shutil.copytree(tiny_model_dir, run / "checkpoint-100")
    processor = build_processor()
    build_model(processor, seed=1).save_pretrained(run / "checkpoint-200")
    processor.save_pretrained(run)
    return run


def _run(model_dir, data_file, audio_dir, out_file, *extra) -> int:
    argv = ["--model_path", str(model_dir), "--data_file", str(data_file), "--audio_dir", str(audio_dir)]
    argv += ["--out_file", str(out_file), "--max_new_tokens", MAX_NEW_TOKENS, *map(str, extra)]
    return evaluator.main(argv)


def _read(path) -> list[dict] | dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def scored_run(run_dir, mmau_slice):
    """Both checkpoints evaluated with batch size 4 (6 items: a full batch and a partial one)."""
    data_file, audio_dir, _ = mmau_slice
    score_dir = run_dir / "mmau"
    for step in (100, 200):
        assert _run(run_dir / f"checkpoint-{step}", data_file, audio_dir, score_dir / f"checkpoint-{step}.json",
                    "--batch_size", 4) == 0  # fmt: skip
    return score_dir


def test_predictions_file_has_both_keys_and_raw_output(scored_run, mmau_slice):
    _, _, items = mmau_slice
    predictions = _read(scored_run / "checkpoint-100.json")
    assert isinstance(predictions, list) and len(predictions) == len(items)
    for item, predicted in zip(items, predictions, strict=True):
        assert {key: predicted[key] for key in item} == item  # input keys unchanged, same order of items
        assert set(predicted) == set(item) | set(PREDICTION_KEYS)
        answer = extract_answer(predicted["model_raw_output"])
        assert predicted["model_output"] == predicted["model_prediction"] == predicted["answer_prediction"] == answer
    assert any(predicted["model_raw_output"] for predicted in predictions)
    # the two checkpoints have different weights, so they must say different things
    assert [p["model_raw_output"] for p in predictions] != [
        p["model_raw_output"] for p in _read(scored_run / "checkpoint-200.json")
    ]


def test_meta_records_decoding_and_processor_fallback(scored_run, run_dir):
    meta = _read(scored_run / "checkpoint-100.meta.json")
    assert meta["settings"]["decoding"] == {
        "mode": "original",
        "max_new_tokens": 12,
        "seed": 42,
        "batch_size": 4,
        "overrides": {},
    }
    assert (meta["settings"]["benchmark"], meta["settings"]["audio"]) == ("mmau", "real")
    # the tiny checkpoint's generation_config.json sets no sampling: transformers' defaults (greedy) resolve it
    used = meta["generation_config"]
    assert (used["do_sample"], used["max_new_tokens"], used["num_beams"], used["top_k"]) == (False, 12, 1, 50)
    assert meta["settings"]["prompt_style"] == "answer"
    assert meta["settings"]["processor_path"] == str(run_dir / "checkpoint-100")
    assert (meta["device"], meta["dtype"], meta["n_items"], meta["n_audio_errors"]) == ("cpu", "float32", 6, 0)
    # checkpoint-200 has no processor files: the run folder's processor is used
    assert _read(scored_run / "checkpoint-200.meta.json")["settings"]["processor_path"] == str(run_dir)
    assert not list(scored_run.glob("*.tmp"))


def test_score_file_is_the_official_rule(scored_run):
    predictions = _read(scored_run / "checkpoint-100.json")
    summary = _read(scored_run / "checkpoint-100.score.json")
    data = _read(scored_run / "checkpoint-100.meta.json")["settings"]["data_sha256"]
    assert summary == {**score(predictions), "audio_errors": 0, "data_sha256": data,
                       "data_release": f"unknown release (sha256 {data[:12]})"}  # fmt: skip
    assert summary["total"]["total"] == 6
    assert {task: row["total"] for task, row in summary["task"].items()} == {"sound": 2, "music": 2, "speech": 2}


def test_table_csv_json_and_plot(scored_run, capsys):
    assert tables.main(["--score_dir", str(scored_run)]) == 0
    printed = capsys.readouterr().out
    rows = _read(scored_run / "checkpoints.json")["rows"]
    assert [row["step"] for row in rows] == [100, 200]
    for row, step in zip(rows, (100, 200), strict=True):
        summary = _read(scored_run / f"checkpoint-{step}.score.json")
        assert row["total"] == summary["total"]["accuracy"]
        assert row["music"] == summary["task"]["music"]["accuracy"]
    assert sum(row["best"] for row in rows) == 1
    best = next(row["step"] for row in rows if row["best"])
    assert any(line.startswith("*") and f" {best} " in line for line in printed.splitlines())
    csv_lines = (scored_run / "checkpoints.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,sound,music,speech,total,best") and len(csv_lines) == 3
    assert (scored_run / "checkpoints.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_score(folder: Path, step: int, correct: dict[str, int]) -> None:
    """A score file from `r1aqa.benchmarks.score` on made-up predictions: `correct[task]` of 4 items right per task."""
    items = []
    for task, n_right in correct.items():
        for i in range(4):
            answer = "yes" if i < n_right else "no"
            items.append({"answer": "yes", "choices": ["yes", "no"], "task": task, "difficulty": "easy",
                          "model_output": answer})  # fmt: skip
    folder.joinpath(f"checkpoint-{step}.score.json").write_text(json.dumps(score(items)))


def test_table_orders_steps_numerically_and_marks_best(tmp_path, capsys):
    _write_score(tmp_path, 1000, {"sound": 1, "music": 1})  # 2 of 8 right
    _write_score(tmp_path, 200, {"sound": 3, "music": 2})  # 5 of 8
    _write_score(tmp_path, 100, {"sound": 2, "music": 3})  # 5 of 8 as well: the tie goes to the earliest step
    (tmp_path / "checkpoint-300.json").write_text("[]")  # predictions without a score: not a row
    assert tables.main(["--score_dir", str(tmp_path), "--out_prefix", str(tmp_path / "t" / "table")]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line[2:8].strip().isdigit()]
    assert [int(line[2:8]) for line in rows] == [100, 200, 1000]
    assert rows[0].startswith("*") and not rows[1].startswith("*")
    assert rows[0].split()[1:] == ["100", "50.00", "75.00", "-", "62.50"]  # no speech items: "-"
    data = _read(tmp_path / "t" / "table.json")
    assert data["best_step"] == 100 and data["rows"][0]["speech"] is None
    assert (tmp_path / "t" / "table.png").exists() and (tmp_path / "t" / "table.csv").exists()


def test_table_without_scores_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tables.main(["--score_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no checkpoint-N.score.json" in capsys.readouterr().err


def test_batch_size_4_gives_the_same_predictions_as_batch_size_1(scored_run, run_dir, mmau_slice, tmp_path):
    data_file, audio_dir, _ = mmau_slice
    assert _run(run_dir / "checkpoint-100", data_file, audio_dir, tmp_path / "b1.json", "--batch_size", 1) == 0
    single = [item["model_raw_output"] for item in _read(tmp_path / "b1.json")]
    batched = [item["model_raw_output"] for item in _read(scored_run / "checkpoint-100.json")]
    assert batched == single


def test_rerun_skips_and_force_redoes(scored_run, run_dir, mmau_slice, capsys):
    data_file, audio_dir, _ = mmau_slice
    out = scored_run / "checkpoint-100.json"
    before, content = out.stat().st_mtime_ns, out.read_text()
    scored = scored_run / "checkpoint-100.score.json"
    scored_before = scored.stat().st_mtime_ns
    assert _run(run_dir / "checkpoint-100", data_file, audio_dir, out, "--batch_size", 4) == 0
    assert f"Skipping {out}: done with the same settings (scored)" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == before and scored.stat().st_mtime_ns == scored_before
    scored.unlink()  # predictions without a score (killed while scoring): redone
    assert _run(run_dir / "checkpoint-100", data_file, audio_dir, out, "--batch_size", 4) == 0
    assert "Wrote" in capsys.readouterr().out and scored.exists() and out.read_text() == content
    before = out.stat().st_mtime_ns
    assert _run(run_dir / "checkpoint-100", data_file, audio_dir, out, "--batch_size", 4, "--force") == 0
    printed = capsys.readouterr().out
    assert "Skipping" not in printed and "Wrote" in printed
    assert out.stat().st_mtime_ns > before and out.read_text() == content
    assert (scored_run / "checkpoint-100.score.json").exists()


def test_existing_output_from_other_settings_is_refused(scored_run, run_dir, mmau_slice, capsys):
    data_file, audio_dir, _ = mmau_slice
    out = scored_run / "checkpoint-100.json"
    before = out.stat().st_mtime_ns
    assert _run(run_dir / "checkpoint-100", data_file, audio_dir, out, "--prompt_style", "think") == 2
    error = capsys.readouterr().err
    assert "prompt_style: 'answer' -> 'think'" in error and "--force" in error
    assert out.stat().st_mtime_ns == before


def test_other_file_version_under_the_same_name_is_refused(run_dir, mmau_slice, tmp_path, capsys):
    _, audio_dir, items = mmau_slice
    data_file = tmp_path / "mmau-test-mini.json"
    data_file.write_text(json.dumps(items[:2]))
    assert _run(run_dir / "checkpoint-100", data_file, audio_dir, tmp_path / "out.json", "--limit", 1) == 0
    revised = [items[0], {**items[1], "answer": items[1]["choices"][-1]}]  # as the May-2025 revision changed items
    data_file.write_text(json.dumps(revised))
    assert _run(run_dir / "checkpoint-100", data_file, audio_dir, tmp_path / "out.json", "--limit", 1) == 2
    assert "data_sha256" in capsys.readouterr().err


def test_missing_and_unreadable_audio_get_empty_predictions(run_dir, mmau_slice, tmp_path, capsys):
    data_file, audio_dir, items = mmau_slice
    broken = tmp_path / "audio"
    shutil.copytree(audio_dir, broken)
    os.remove(broken / os.path.basename(items[1]["audio_id"]))  # missing
    (broken / os.path.basename(items[2]["audio_id"])).write_bytes(b"not a wav at all")  # unreadable
    out = tmp_path / "out.json"
    assert _run(run_dir / "checkpoint-100", data_file, broken, out, "--batch_size", 4, "--limit", 3) == 0
    printed = capsys.readouterr().out
    assert "2 of 3 audio files are missing or unreadable" in printed
    predictions = _read(out)
    assert [bool(p["model_raw_output"]) for p in predictions] == [True, False, False]
    for predicted in predictions[1:3]:
        assert predicted["model_prediction"] == predicted["model_output"] == ""
    meta = _read(tmp_path / "out.meta.json")
    assert meta["n_audio_errors"] == 2
    assert [(error["id"], error["error"].rsplit(": ", 1)[1]) for error in meta["audio_errors"]] == [
        (items[1]["id"], "missing"),
        (items[2]["id"], "unreadable"),
    ]
    assert _read(tmp_path / "out.score.json")["audio_errors"] == 2
    assert "Audio errors (empty prediction, counted wrong): 2" in printed


def test_no_usable_audio_at_all_stops_before_loading_the_model(run_dir, mmau_slice, tmp_path, capsys):
    data_file, _, _ = mmau_slice
    assert _run(run_dir / "checkpoint-100", data_file, tmp_path, tmp_path / "out.json") == 2
    assert "none of the 6 audio files is usable" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_killed_run_leaves_no_output(run_dir, mmau_slice, tmp_path, monkeypatch):
    data_file, audio_dir, _ = mmau_slice
    real_generate = evaluator.generate_batch
    calls = []

    def killed_after_first_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # what Ctrl-C or a scheduler's SIGINT raises mid-run
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(evaluator, "generate_batch", killed_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        _run(run_dir / "checkpoint-100", data_file, audio_dir, tmp_path / "out.json", "--batch_size", 2, "--limit", 4)
    assert list(tmp_path.iterdir()) == []  # no output, no temp file: the same command starts over


def test_crash_while_writing_the_output_leaves_no_file(run_dir, mmau_slice, tmp_path, monkeypatch):
    data_file, audio_dir, _ = mmau_slice
    monkeypatch.setattr(evaluator, "extract_answer", lambda raw: object())  # the output cannot be serialised
    with pytest.raises(TypeError):
        _run(run_dir / "checkpoint-100", data_file, audio_dir, tmp_path / "out.json", "--limit", 2)
    assert list(tmp_path.iterdir()) == []


def test_test_split_without_answers_gives_predictions_only(run_dir, mmau_slice, tmp_path, capsys):
    _, audio_dir, items = mmau_slice
    data_file = tmp_path / "mmau-test.json"
    data_file.write_text(json.dumps([{k: v for k, v in item.items() if k != "answer"} for item in items[:3]]))
    out = tmp_path / "out.json"
    assert _run(run_dir / "checkpoint-100", data_file, audio_dir, out, "--batch_size", 3) == 0
    assert "no `answer` (test split)" in capsys.readouterr().out
    predictions = _read(out)
    assert len(predictions) == 3 and all("answer" not in p and "model_output" in p for p in predictions)
    assert not (tmp_path / "out.score.json").exists()


@pytest.mark.parametrize(
    "flags,style", [([], "answer"), (["--prompt_style", "think"], "think"), (["--prompt_style", "plain"], "plain")]
)
def test_prompts_come_from_the_training_builder(run_dir, mmau_slice, tmp_path, monkeypatch, flags, style):
    data_file, audio_dir, items = mmau_slice
    seen = []

    def record(model, processor, conversations, config):
        seen.extend(conversations)
        return [""] * len(conversations)

    monkeypatch.setattr(evaluator, "generate_batch", record)
    assert _run(run_dir / "checkpoint-100", data_file, audio_dir, tmp_path / "out.json", "--limit", 2, *flags) == 0
    settings = PROMPT_STYLES[style]
    for item, conversation in zip(items[:2], seen, strict=True):
        expected = example("mmau", item, audio_dir, style)["prompt"]
        audio, text = conversation[0]["content"]
        assert text == expected[0]["content"][1]
        assert text["text"] == format_question(item["question"], item["choices"], *settings)
        assert audio["type"] == "audio" and audio["audio"].dtype == np.float32 and audio["audio"].ndim == 1


def test_processor_path_resolution(tmp_path, run_dir):
    from r1aqa.models import ModelFolderError

    assert resolve_processor_path(str(run_dir / "checkpoint-200")) == str(run_dir)
    assert resolve_processor_path("Qwen/Qwen2-Audio-7B-Instruct") == "Qwen/Qwen2-Audio-7B-Instruct"
    assert resolve_processor_path(str(run_dir / "checkpoint-200"), "other/proc") == "other/proc"
    # a folder that is not checkpoint-N never borrows its parent's processor
    lone = tmp_path / "run" / "final"
    lone.mkdir(parents=True)
    shutil.copy(run_dir / "processor_config.json", tmp_path / "run")
    with pytest.raises(ModelFolderError, match="--processor_path"):
        resolve_processor_path(str(lone))
    assert resolve_processor_path(str(lone), base_model="org/base") == "org/base"  # a LoRA merge's --base


@pytest.mark.slow  # three subprocesses; ~16 s of CPU, mostly imports
def test_shell_script_evaluates_skips_and_tabulates(tmp_path, tiny_model_dir, mmau_slice):
    data_file, audio_dir, items = mmau_slice
    run = tmp_path / "run"
    write_tiny_model(str(run / "checkpoint-5"), seed=2)
    (run / "checkpoint-notes").mkdir()  # not a checkpoint-N folder: ignored
    (run / "checkpoint-7").mkdir()  # a training checkpoint still being written: no trainer_state.json yet
    (run / "checkpoint-7" / "training_args.bin").write_bytes(b"")
    small = tmp_path / "mmau-3.json"
    small.write_text(json.dumps([items[1], items[2], items[4]]))  # sound, music, speech; 16 kHz clips: no resampling
    env = {**os.environ, "RUN_DIR": str(run), "MMAU_FILE": str(small), "AUDIO_DIR": audio_dir, "BATCH_SIZE": "3",
           "MAX_NEW_TOKENS": "8", "PYTHON": sys.executable}  # fmt: skip
    script = str(REPO / "test_mmau.sh")

    first = subprocess.run([script], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    score_dir = run / "mmau" / "mmau-3.answer"
    assert (score_dir / "checkpoint-5.json").exists() and (score_dir / "checkpoint-5.score.json").exists()
    assert "*      5" in first.stdout and (score_dir / "checkpoints.png").exists()
    # r1aqa.checkpoints names the incomplete checkpoint on stderr
    assert "Skipping" in first.stderr and "checkpoint-7" in first.stderr
    assert not (score_dir / "checkpoint-7.json").exists()

    again = subprocess.run([script], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Skipping" in again.stdout and "done with the same settings (scored" in again.stdout
    assert "*      5" in again.stdout  # the table again

    # Think mode is one setting: a run trained with think=true is evaluated with Prompt <3> unless told otherwise.
    (run / "r1aqa_run.json").write_text(json.dumps({"think": True}))
    think = subprocess.run([script, "--limit", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert think.returncode == 0, think.stderr[-3000:]
    assert "prompt think" in think.stdout and (run / "mmau" / "mmau-3.think" / "checkpoint-5.json").exists()

    (tmp_path / "empty").mkdir()
    empty = subprocess.run([script], env={**env, "RUN_DIR": str(tmp_path / "empty")}, capture_output=True, text=True)
    assert empty.returncode == 2 and "no complete checkpoint-N folder" in empty.stderr


@pytest.mark.slow  # three subprocesses, ~25 s of CPU
def test_shell_script_silent_control_and_mmar(tmp_path, mmau_slice, mmar_slice):
    data_file, audio_dir, items = mmau_slice
    run = tmp_path / "run"
    write_tiny_model(str(run / "checkpoint-5"), seed=2)
    small = tmp_path / "mmau-3.json"
    small.write_text(json.dumps([items[1], items[2], items[4]]))
    env = {**os.environ, "RUN_DIR": str(run), "MMAU_FILE": str(small), "AUDIO_DIR": audio_dir, "BATCH_SIZE": "3",
           "MAX_NEW_TOKENS": "8", "PYTHON": sys.executable}  # fmt: skip
    script = str(REPO / "test_mmau.sh")
    for audio in ("real", "silent"):
        result = subprocess.run([script], env={**env, "AUDIO": audio}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    with_audio, silent = run / "mmau" / "mmau-3.answer", run / "mmau" / "mmau-3.answer.silent"
    assert _read(silent / "checkpoint-5.meta.json")["settings"]["audio"] == "silent"
    assert "Audio vs silence" in result.stdout and (silent / "checkpoints.png").exists()
    row = _read(silent / "checkpoints.json")["rows"][0]
    assert row["total"] == _read(with_audio / "checkpoint-5.score.json")["total"]["accuracy"]
    assert row["silent"]["total"] == _read(silent / "checkpoint-5.score.json")["total"]["accuracy"]

    mmar_file, mmar_audio, _ = mmar_slice
    mmar = subprocess.run([script], env={**env, "DATA_FILE": mmar_file, "AUDIO_DIR": mmar_audio, "DECODING": "greedy"},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert mmar.returncode == 0, mmar.stderr[-3000:]
    folder = run / "mmar" / "MMAR-meta.answer.greedy"
    assert _read(folder / "checkpoint-5.score.json")["benchmark"] == "mmar"
    assert "mix-sound-speech" in mmar.stdout and "MMAR: 1 checkpoint(s)" in mmar.stdout


# ---- decoding modes, seeds and passes (issue 14; docs/recipe.md §7) -------------------------------------------------

# What Qwen2-Audio-7B-Instruct's generation_config.json turns on (sampling), plus fields a checkpoint may carry that
# change greedy output: all of them must stay out of `--decoding greedy`.
PLANTED = {
    "do_sample": True,
    "temperature": 0.7,
    "top_k": 20,
    "top_p": 0.5,
    "repetition_penalty": 1.1,
    "no_repeat_ngram_size": 2,
    "min_new_tokens": 12,
    "suppress_tokens": list(range(10, 300)),  # "off" is None here: only keeping the file out of generate() helps
}


@pytest.fixture(scope="module")
def planted_model(tmp_path_factory, tiny_model_dir):
    """The tiny model with a generation_config.json that samples and sets greedy-changing fields."""
    folder = tmp_path_factory.mktemp("planted") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = _read(folder / "generation_config.json")
    (folder / "generation_config.json").write_text(json.dumps({**config, **PLANTED}))
    return folder


def _raws(path) -> list[str]:
    return [item["model_raw_output"] for item in _read(path)]


def test_greedy_ignores_a_planted_generation_config(planted_model, tiny_model_dir, mmau_slice, tmp_path):
    data_file, audio_dir, _ = mmau_slice
    for name, model in (("plain", tiny_model_dir), ("planted", planted_model)):
        for mode in ("greedy", "original"):
            out = tmp_path / f"{name}-{mode}.json"
            assert _run(model, data_file, audio_dir, out, "--decoding", mode, "--batch_size", 3, "--limit", 3) == 0
    assert _raws(tmp_path / "planted-greedy.json") == _raws(tmp_path / "plain-greedy.json")
    # the planted file does matter where it should: the original protocol samples with it
    assert _raws(tmp_path / "planted-original.json") != _raws(tmp_path / "plain-original.json")
    # the tiny checkpoint itself sets no sampling: its original protocol is greedy decoding
    assert _raws(tmp_path / "plain-original.json") == _raws(tmp_path / "plain-greedy.json")
    greedy = _read(tmp_path / "planted-greedy.meta.json")["generation_config"]
    assert {key: greedy[key] for key in PLANTED} == {key: decoding.GREEDY[key] for key in PLANTED}
    original = _read(tmp_path / "planted-original.meta.json")
    assert {key: original["generation_config"][key] for key in PLANTED} == PLANTED
    assert (
        original["settings"]["decoding"]["mode"] == "original" and original["generation_config"]["max_new_tokens"] == 12
    )


# Every field `--decoding greedy` fixes, at the value that does nothing (this file's own list, not evaluate.GREEDY), and
# the opposite value a checkpoint's generation_config.json may carry. With the opposite in effect, greedy output
# changes (sampling, beams, penalties, banned, forced or biased tokens, early stops) or generate fails.
GREEDY_OFF = {
    "do_sample": (False, True),
    "num_beams": (1, 2),
    "num_return_sequences": (1, 2),
    "temperature": (1.0, 0.7),
    "top_k": (50, 20),
    "top_p": (1.0, 0.5),
    "min_p": (None, 0.2),
    "typical_p": (1.0, 0.5),
    "epsilon_cutoff": (0.0, 3e-4),
    "eta_cutoff": (0.0, 3e-4),
    "repetition_penalty": (1.0, 1.1),
    "encoder_repetition_penalty": (1.0, 1.2),
    "no_repeat_ngram_size": (0, 2),
    "encoder_no_repeat_ngram_size": (0, 2),
    "length_penalty": (1.0, 2.0),
    "early_stopping": (False, True),
    "min_new_tokens": (0, 12),
    "renormalize_logits": (False, True),
    "remove_invalid_values": (False, True),
    "use_cache": (True, False),
    "bad_words_ids": (None, [[10]]),
    "suppress_tokens": (None, list(range(20, 300))),
    "begin_suppress_tokens": (None, [11]),
    "sequence_bias": (None, [[[12], 5.0]]),
    "forced_bos_token_id": (None, 13),
    "forced_eos_token_id": (None, 14),
    "exponential_decay_length_penalty": (None, [2, 1.5]),
    "stop_strings": (None, ["a"]),
    "max_time": (None, 0.01),
    "guidance_scale": (None, 2.0),
    "watermarking_config": (None, {"bias": 2.5, "seeding_scheme": "lefthash"}),
}


def test_greedy_sets_every_constant_against_its_opposite_in_the_checkpoint(tiny_model_dir, mmau_slice, tmp_path):
    """Each greedy constant pinned: a checkpoint whose generation_config.json holds the opposite of every one of them
    decodes greedily exactly as the plain checkpoint, and the config `generate` itself resolves (after merging in
    the checkpoint's config and transformers' defaults) holds every constant at its off value."""
    from r1aqa.audio import prompts_with_audio

    folder = tmp_path / "opposite"
    shutil.copytree(tiny_model_dir, folder)
    config = _read(folder / "generation_config.json")
    opposite = {key: values[1] for key, values in GREEDY_OFF.items()}
    (folder / "generation_config.json").write_text(json.dumps({**config, **opposite}))
    _, audio_dir, items = mmau_slice
    conversations = prompts_with_audio([example("mmau", item, audio_dir)["prompt"] for item in items[:3]])
    greedy = {"mode": "greedy", "max_new_tokens": 12, "overrides": {}}
    outputs = {}
    for name, path in (("plain", tiny_model_dir), ("opposite", folder)):
        model, processor = evaluator.load_model_and_processor(str(path), str(path), "cpu")
        if name == "opposite":  # the planted values are what the checkpoint says
            planted = model.generation_config
            assert all(
                getattr(planted, key) == value for key, value in opposite.items() if key != "watermarking_config"
            )
            assert planted.watermarking_config.bias == 2.5
        used = []
        prepare = model._prepare_generation_config

        def recorded(*args, prepare=prepare, used=used, **kwargs):
            result = prepare(*args, **kwargs)
            used.append(result[0])
            return result

        model._prepare_generation_config = recorded
        resolved = decoding.generation_config(model.generation_config, processor.tokenizer, greedy)
        outputs[name] = evaluator.generate_batch(model, processor, conversations, resolved)
        assert len(used) == 1
        for key, (off, _) in GREEDY_OFF.items():
            assert getattr(used[0], key) == off, f"{name}: {key} = {getattr(used[0], key)!r} reached generate"
    assert outputs["opposite"] == outputs["plain"] and any(outputs["plain"])
    assert set(GREEDY_OFF) == set(decoding.GREEDY), "a new greedy constant needs its off and opposite values here"


def test_original_is_the_original_generate_call_seeded(planted_model, mmau_slice):
    """`--decoding original` generates what `model.generate(**inputs, max_new_tokens=N)` does under the same seed."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from r1aqa.audio import prompts_with_audio

    data_file, audio_dir, items = mmau_slice
    processor = AutoProcessor.from_pretrained(planted_model)
    processor.tokenizer.padding_side = "left"
    model = Qwen2AudioForConditionalGeneration.from_pretrained(planted_model).eval()
    conversations = prompts_with_audio([example("mmau", item, audio_dir)["prompt"] for item in items[:3]])
    texts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    audios = [conversation[0]["content"][0]["audio"] for conversation in conversations]
    inputs = processor(text=texts, audio=audios, sampling_rate=16_000, padding=True, return_tensors="pt")
    original = {"mode": "original", "max_new_tokens": 12, "seed": 0, "batch_size": 3, "overrides": {}}
    config = decoding.generation_config(model.generation_config, processor.tokenizer, original)
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        with torch.inference_mode():
            literal = model.generate(**inputs, max_new_tokens=12)
        torch.manual_seed(seed)
        with torch.inference_mode(), decoding.checkpoint_defaults_off(model):
            ours = model.generate(**inputs, generation_config=config)
        assert torch.equal(ours, literal)
        runs.append(ours)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])  # seeded; and it does sample
    assert model.generation_config.do_sample is True  # the context restored the checkpoint's config


def test_original_sampling_reruns_identically(planted_model, mmau_slice, tmp_path):
    data_file, audio_dir, _ = mmau_slice
    args = ("--batch_size", 2, "--limit", 6)
    assert _run(planted_model, data_file, audio_dir, tmp_path / "a.json", *args) == 0
    assert _run(planted_model, data_file, audio_dir, tmp_path / "b.json", *args) == 0
    assert _run(planted_model, data_file, audio_dir, tmp_path / "c.json", *args, "--seed", 7) == 0
    assert _raws(tmp_path / "a.json") == _raws(tmp_path / "b.json") != _raws(tmp_path / "c.json")

    assert _read(tmp_path / "a.meta.json")["seeding"].startswith("batch_seed(seed, batch index) for each batch")


def test_overrides_apply_on_top_of_the_mode_and_are_recorded(planted_model, mmau_slice, tmp_path):
    data_file, audio_dir, _ = mmau_slice
    out = tmp_path / "out.json"
    flags = ("--decoding", "greedy", "--do_sample", "true", "--temperature", "1.5", "--limit", 2)
    assert _run(planted_model, data_file, audio_dir, out, *flags) == 0
    meta = _read(tmp_path / "out.meta.json")
    assert meta["settings"]["decoding"]["overrides"] == {"do_sample": True, "temperature": 1.5}
    used = meta["generation_config"]
    assert (used["do_sample"], used["temperature"], used["top_k"], used["no_repeat_ngram_size"]) == (True, 1.5, 50, 0)


def test_several_passes_give_mean_and_std(planted_model, mmau_slice, tmp_path, capsys):
    data_file, audio_dir, _ = mmau_slice
    flags = ("--batch_size", 3, "--max_new_tokens", 4)
    assert _run(planted_model, data_file, audio_dir, tmp_path / "ck.json", *flags, "--num_samples", 3, "--seed", 1) == 0
    passes = [_read(tmp_path / f"ck.sample-{k}.score.json") for k in range(3)]
    assert [_read(tmp_path / f"ck.sample-{k}.meta.json")["settings"]["decoding"]["seed"] for k in range(3)] == [1, 2, 3]
    combined = _read(tmp_path / "ck.score.json")
    assert combined["seeds"] == [1, 2, 3] and combined["num_samples"] == 3
    assert combined["total"]["per_sample"] == [p["total"]["accuracy"] for p in passes]
    assert combined["task"]["music"]["per_sample"] == [p["task"]["music"]["accuracy"] for p in passes]
    assert not (tmp_path / "ck.json").exists()
    # pass k is the single-pass evaluation with seed seed + k
    assert _run(planted_model, data_file, audio_dir, tmp_path / "one.json", *flags, "--seed", 2) == 0
    assert _raws(tmp_path / "one.json") == _raws(tmp_path / "ck.sample-1.json")
    assert "Total Accuracy:" in capsys.readouterr().out
    # a rerun skips every pass and rewrites the same aggregate
    assert _run(planted_model, data_file, audio_dir, tmp_path / "ck.json", *flags, "--num_samples", 3, "--seed", 1) == 0
    assert capsys.readouterr().out.count("Skipping") == 3 and _read(tmp_path / "ck.score.json") == combined
    # greedy passes would all be the same
    with pytest.raises(SystemExit):
        evaluator.parse_args(["--model_path", "m", "--data_file", "d", "--audio_dir", "a", "--out_file", "o",
                              "--decoding", "greedy", "--num_samples", "2"])  # fmt: skip


# ---- stop tokens ---------------------------------------------------------------------------------------------------


def test_evaluation_stops_at_im_end_when_the_tokenizer_eos_differs(mmau_slice, tmp_path, monkeypatch):
    data_file, audio_dir, _ = mmau_slice
    ids = stop_test_model(tmp_path / "model")
    real_load = evaluator.load_model_and_processor
    steps = []

    def load_steered(*args):
        model, processor = real_load(*args)
        steps.append(steer(model, ids))
        return model, processor

    monkeypatch.setattr(evaluator, "load_model_and_processor", load_steered)
    for mode in ("original", "greedy"):
        out = tmp_path / f"{mode}.json"
        assert _run(tmp_path / "model", data_file, audio_dir, out, "--decoding", mode, "--limit", 1) == 0
        assert _raws(out) == ["yes"]  # not "yes" + "no" * 10: generation ended at <|im_end|>
        assert steps[-1][-1] == 1  # one step after the prompt: <|im_end|>, then no more
        assert _read(tmp_path / f"{mode}.meta.json")["generation_config"]["eos_token_id"] == [
            ids[END_OF_TEXT],
            ids[IM_END],
        ]


# ---- silent audio --------------------------------------------------------------------------------------------------


@pytest.fixture(params=["qwen2_audio", "qwen2_5_omni"])
def family_model(request, run_dir, tiny_omni_dir):
    """A tiny checkpoint of each model family and the arguments it is evaluated with: Qwen2-Audio, and the Qwen2.5-Omni
    thinker with the model card's system prompt (under the template's own, this random thinker answers two of the six
    clips with the same babble, so a swapped clip could not show)."""
    if request.param == "qwen2_audio":
        return run_dir / "checkpoint-100", ()
    return Path(tiny_omni_dir), ("--system_prompt", "qwen")


def test_silent_audio_is_silence_of_the_same_length_and_each_item_hears_its_own_clip(
    family_model, mmau_slice, tmp_path
):
    """For each family: `--audio silent` equals real WAVs of zeros and differs from the real clips (the model hears),
    and in a batch of 3 each item is answered with its own clip: as when it is evaluated alone, and unlike with a
    neighbour's clip (every item's answer depends on which clip it hears, so a row given another row's audio would
    show)."""
    from r1aqa.audio import load_audio

    data_file, audio_dir, items = mmau_slice
    names = [os.path.basename(item["audio_id"]) for item in items]
    zeros, rotated = tmp_path / "zeros", tmp_path / "rotated"
    zeros.mkdir(), rotated.mkdir()
    for index, name in enumerate(names):  # zeros: as long as the clip once loaded; rotated: the next item's clip
        sf.write(zeros / name, np.zeros_like(load_audio(os.path.join(audio_dir, name))), 16_000)
        shutil.copy(os.path.join(audio_dir, names[(index + 1) % len(names)]), rotated / name)
    model, family_args = family_model
    silent = ("--audio", "silent", "--batch_size", 3)
    assert _run(model, data_file, audio_dir, tmp_path / "silent.json", *silent, *family_args) == 0
    assert _run(model, data_file, zeros, tmp_path / "zeros.json", "--batch_size", 3, *family_args) == 0
    assert _run(model, data_file, audio_dir, tmp_path / "real.json", "--batch_size", 3, *family_args) == 0
    assert _run(model, data_file, audio_dir, tmp_path / "alone.json", "--batch_size", 1, *family_args) == 0
    assert _run(model, data_file, rotated, tmp_path / "rotated.json", "--batch_size", 1, *family_args) == 0
    real, alone, rotated = (_raws(tmp_path / f"{name}.json") for name in ("real", "alone", "rotated"))
    assert _raws(tmp_path / "silent.json") == _raws(tmp_path / "zeros.json") != real
    assert _read(tmp_path / "silent.meta.json")["settings"]["audio"] == "silent"
    assert real == alone
    assert all(own != neighbours for own, neighbours in zip(alone, rotated, strict=True)), (alone, rotated)


# ---- MMAR ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmar_slice(tmp_path_factory):
    """(data_file, audio_dir, items): the first 5 lines of the real MMAR sample, with made clips (tones, chirps,
    noise; not MMAR audio) named as their `audio_path`s."""
    root = tmp_path_factory.mktemp("mmar")
    (root / "audio").mkdir()
    lines = MMAR_SAMPLE.read_text(encoding="utf-8").splitlines()[:5]
    items = [json.loads(line) for line in lines]
    for index, item in enumerate(items):
        samples, rate = _made_clip(index)
        sf.write(root / "audio" / os.path.basename(item["audio_path"]), samples, rate)
    data_file = root / "MMAR-meta.jsonl"
    data_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(data_file), str(root / "audio"), items


def steered_mmar_output(item: dict, right: bool) -> str:
    """What a reasoning model writes: a sentence naming another option, then its answer in tags (the item's answer
    when `right`, else another option). Only the tagged answer scores right; the whole text never does (it names a
    wrong option, which the official rule rejects)."""
    others = [choice for choice in item["choices"] if choice != item["answer"]]
    return f"It could be {others[-1]}, or not. <answer>{item['answer'] if right else others[0]}</answer>"


def test_mmar_is_detected_evaluated_and_scored_by_modality(run_dir, mmar_slice, tmp_path, monkeypatch):
    """The tiny model generates (batch 3), then each item's text is replaced at the generation seam by a tagged answer,
    right for items 0, 2 and 4 and wrong for 1 and 3 (the tiny model's own babble carries no tags: scoring it would
    count 0 right whatever went into `answer_prediction`)."""
    from helpers.official_scoring import official_mmar_report

    data_file, audio_dir, items = mmar_slice
    right = [True, False, True, False, True]
    real_generate = evaluator.generate_batch
    generated = []

    def steered(model, processor, conversations, config):
        raws = real_generate(model, processor, conversations, config)
        generated.extend(raws)
        texts = [part["text"] for conv in conversations for part in conv[-1]["content"] if part["type"] == "text"]
        indices = [next(i for i, item in enumerate(items) if item["question"] in text) for text in texts]
        return [steered_mmar_output(items[i], right[i]) for i in indices]

    monkeypatch.setattr(evaluator, "generate_batch", steered)
    out = tmp_path / "mmar.json"
    assert _run(run_dir / "checkpoint-100", data_file, audio_dir, out, "--batch_size", 3) == 0
    assert len(generated) == 5 and not any("<answer>" in raw for raw in generated)
    predictions = _read(out)
    assert isinstance(predictions, list) and len(predictions) == 5
    for item, predicted, is_right in zip(items, predictions, right, strict=True):
        assert {key: predicted[key] for key in item} == item  # MMAR's keys kept, `audio_path` as in the file
        assert predicted["model_raw_output"] == steered_mmar_output(item, is_right)
        assert predicted["answer_prediction"] == extract_answer(predicted["model_raw_output"])
        assert predicted["answer_prediction"] != predicted["model_raw_output"]
        assert (predicted["answer_prediction"] == item["answer"]) is is_right
    summary = _read(tmp_path / "mmar.score.json")
    assert summary["benchmark"] == "mmar" and _read(tmp_path / "mmar.meta.json")["settings"]["benchmark"] == "mmar"
    assert sum(row["total"] for row in summary["modality"].values()) == 5
    # MMAR's official script, run on our output file, counts the three right answers; so do we.
    assert summary["total"]["correct"] == official_mmar_report(predictions)[1] == 3
    # The raw texts would score nothing: the official rule rejects each (it names a wrong option).
    assert official_mmar_report([{**p, "answer_prediction": p["model_raw_output"]} for p in predictions])[1] == 0
    # the same predictions with each item's answer: the output's keys are what MMAR's script reads
    answered = [{**p, "answer_prediction": p["answer"]} for p in predictions]
    assert score(answered)["total"]["accuracy"] == 100.0


def test_mmar_bad_line_and_wrong_benchmark_are_clear_errors(run_dir, mmar_slice, tmp_path, capsys):
    data_file, audio_dir, _ = mmar_slice
    lines = Path(data_file).read_text(encoding="utf-8").splitlines()
    broken = tmp_path / "MMAR-meta.jsonl"
    broken.write_text("\n".join([lines[0], lines[1][:40], *lines[2:]]) + "\n", encoding="utf-8")
    assert _run(run_dir / "checkpoint-100", broken, audio_dir, tmp_path / "out.json") == 2
    assert f"{broken}:2: not valid JSON" in capsys.readouterr().err
    assert _run(run_dir / "checkpoint-100", data_file, audio_dir, tmp_path / "out.json", "--benchmark", "mmau") == 2
    assert "lacks ['audio_id']" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


# ---- AVQA validation questions: the held-out file that selects a checkpoint (issue 17) -----------------------------


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")
def test_avqa_validation_file_is_prompted_as_training_and_scored(run_dir, tmp_path, monkeypatch):
    from r1aqa.data import avqa_example

    val_file, wav_dir, questions = write_avqa_val(tmp_path)
    rows = [json.loads(line) for line in val_file.read_text().splitlines()]
    seen = []

    def answer_all_but_the_last(model, processor, conversations, config):
        """The gold option for every question but the last (a wrong option there): 3 of 4 right."""
        seen.extend(conversations)
        indices = [i % len(rows) for i in range(len(seen) - len(conversations), len(seen))]  # the items, in order
        gold = [rows[i]["multi_choice"][rows[i]["answer"] - (i == len(rows) - 1)] for i in indices]
        return [f"<answer>{option}</answer>" for option in gold]

    monkeypatch.setattr(evaluator, "generate_batch", answer_all_but_the_last)
    argv = ["--model_path", str(run_dir / "checkpoint-100"), "--data_file", str(val_file), "--max_new_tokens", "4"]
    assert evaluator.main([*argv, "--out_file", str(tmp_path / "val.json"), "--batch_size", "3"]) == 0  # no --audio_dir
    for row, conversation in zip(rows, seen, strict=True):
        audio, text = conversation[0]["content"]
        assert text == avqa_example(row)["prompt"][0]["content"][1]  # the training builder's Prompt <2>
        assert text["text"].startswith("What happened in the audio? Please choose")  # video -> audio
        assert audio["audio"].ndim == 1 and len(audio["audio"]) > 16_000  # the clip the row names
    summary = _read(tmp_path / "val.score.json")
    assert summary["benchmark"] == "avqa" and _read(tmp_path / "val.meta.json")["settings"]["benchmark"] == "avqa"
    assert summary["total"] == {"accuracy": 75.0, "correct": 3, "total": len(questions)}
    assert {name: group["total"] for name, group in summary["question_type"].items()} == {"Happening": 3, "Which": 1}
    assert summary["question_type"]["Which"]["accuracy"] == 0.0 and summary["audio_errors"] == 0

    # The WAVs moved: --audio_dir finds each clip by the file name of its audio_path.
    moved = tmp_path / "moved"
    shutil.copytree(wav_dir, moved)
    shutil.rmtree(wav_dir)
    assert evaluator.main([*argv, "--out_file", str(tmp_path / "moved.json"), "--audio_dir", str(moved)]) == 0
    assert _read(tmp_path / "moved.score.json")["audio_errors"] == 0


def test_mmau_still_needs_audio_dir(run_dir, mmau_slice, tmp_path, capsys):
    data_file, _, _ = mmau_slice
    argv = ["--model_path", str(run_dir / "checkpoint-100"), "--data_file", data_file, "--out_file", "o.json"]
    assert evaluator.main(argv) == 2
    assert "--audio_dir is required for MMAU" in capsys.readouterr().err


# ---- tables: audio vs silence, mean ± std, MMAR columns ------------------------------------------------------------


def test_table_shows_audio_silence_and_difference(tmp_path, capsys):
    audio, silent = tmp_path / "ck", tmp_path / "ck.silent"
    audio.mkdir(), silent.mkdir()
    _write_score(audio, 100, {"sound": 2, "music": 3, "speech": 4})  # 9 of 12
    _write_score(audio, 200, {"sound": 4, "music": 4, "speech": 4})
    _write_score(silent, 100, {"sound": 1, "music": 3, "speech": 2})  # 6 of 12
    argv = ["--score_dir", str(audio), "--silent_score_dir", str(silent), "--out_prefix", str(silent / "checkpoints")]
    assert tables.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Audio vs silence"))
    assert [line.split() for line in lines[start + 2 : start + 6]] == [
        ["100", "sound", "50.00", "25.00", "+25.00"],
        ["music", "75.00", "75.00", "+0.00"],
        ["speech", "100.00", "50.00", "+50.00"],
        ["total", "75.00", "50.00", "+25.00"],
    ]
    assert lines[start + 6].split() == ["200", "sound", "100.00", "-", "-"]  # no silent score for step 200
    rows = _read(silent / "checkpoints.json")["rows"]
    assert rows[0]["silent"]["total"] == 50.0 and rows[0]["diff"] == {"sound": 25.0, "music": 0.0, "speech": 50.0,
                                                                       "total": 25.0}  # fmt: skip
    header = (silent / "checkpoints.csv").read_text().splitlines()[0].split(",")
    assert {"total_silent", "total_diff", "sound_diff"} <= set(header)
    assert (silent / "checkpoints.png").read_bytes()[:4] == b"\x89PNG"


def test_table_of_sampled_mmar_passes_shows_mean_and_std(tmp_path, capsys):
    from r1aqa.benchmarks import aggregate

    items = [json.loads(line) for line in MMAR_SAMPLE.read_text(encoding="utf-8").splitlines()]
    passes = []
    for n_right in (13, 26):  # half right, then all right
        predicted = [
            {**item, "answer_prediction": item["answer"] if i < n_right else ""} for i, item in enumerate(items)
        ]
        passes.append(score(predicted))
    (tmp_path / "checkpoint-300.score.json").write_text(json.dumps(aggregate(passes)))
    assert tables.main(["--score_dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["step", "sound", "music", "speech", "mix-sound-music", "mix-sound-speech",
                                "mix-music-speech", "mix-sound-music-speech", "total"]  # fmt: skip
    assert lines[2].split()[-1] == "75.00±35.36" and "mean±std over 2 sampled passes" in lines[3]
    row = _read(tmp_path / "checkpoints.json")["rows"][0]
    assert (row["benchmark"], row["total"], row["std"]["total"]) == ("mmar", 75.0, 35.36)


# ---- which benchmark file, the paper's protocol, workers, LoRA checkpoints (issues 21, 22) -------------------------


def _quiet_model(folder: Path) -> str:
    """A tiny model whose final norm is zero: every logit is 0, greedy picks id 0, an eos id of its generation
    config, so every answer is one token: runs at the paper's 256 new tokens cost nothing."""
    import torch

    write_tiny_model(str(folder), seed=3)
    model = evaluator.load_model_and_processor(str(folder), str(folder), "cpu")[0]
    with torch.no_grad():
        model.model.language_model.norm.weight.zero_()
    assert 0 in model.generation_config.eos_token_id and not model.generation_config.do_sample
    model.save_pretrained(folder)
    return str(folder)


def _one_item_file(folder: Path) -> tuple[Path, Path]:
    """(data file, audio dir): the test-mini item whose real WAV ships in tests/data."""
    items = [item for item in json.loads(MMAU_2025_03.read_text()) if item["id"] == MMAU_REAL_ITEM_ID]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mmau-1.json").write_text(json.dumps(items))
    return folder / "mmau-1.json", MMAU_AUDIO_DIR


@pytest.mark.parametrize(
    "name,release",
    [
        ("mmau-test-mini.2025-03-25.json", "MMAU test-mini 1f675a9 (2025-03-25)"),
        ("mmau-test-mini.v05.15.25.json", "MMAU test-mini v05.15.25 (f0a4a97, 2025-08-09)"),
        ("edited", "unknown release (sha256 "),
    ],
)
def test_the_release_of_the_data_file_is_in_meta_score_table_json_and_plot(
    run_dir, tmp_path, monkeypatch, capsys, name, release
):
    import matplotlib.axes

    source = MMAU_2025_03 if name == "edited" else MMAU_AUDIO_DIR.parent / name
    items = json.loads(source.read_text())
    data_file = tmp_path / "mmau-test-mini.json"  # the name says nothing: the content decides
    text = source.read_text()
    if name == "edited":  # the last item's answer changed, as a hand-edited or re-exported copy would be
        at = text.rindex('"answer": "') + len('"answer": "')
        text = text[:at] + "edited " + text[at:]
    data_file.write_text(text)
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    sf.write(audio_dir / os.path.basename(items[0]["audio_id"]), *_made_clip(0))
    out = tmp_path / "scores" / "checkpoint-100.json"
    assert _run(run_dir / "checkpoint-100", data_file, audio_dir, out, "--limit", 1, "--max_new_tokens", 2) == 0
    assert release in capsys.readouterr().out
    meta, summary = _read(out.with_suffix(".meta.json")), _read(tmp_path / "scores" / "checkpoint-100.score.json")
    assert meta["data_release"].startswith(release) and summary["data_release"] == meta["data_release"]
    if name == "edited":
        assert meta["data_release"] == f"unknown release (sha256 {meta['settings']['data_sha256'][:12]})"
    titles = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, text, **kw: titles.append(text))
    assert tables.main(["--score_dir", str(tmp_path / "scores")]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == f"{meta['data_release']}, 1 items"
    assert _read(tmp_path / "scores" / "checkpoints.json")["data_release"] == meta["data_release"]
    assert meta["data_release"] in titles[0]


def test_paper_protocol_fixes_its_settings_and_refuses_others():
    base = ["--model_path", "m", "--data_file", "d", "--out_file", "o"]
    paper = evaluator.parse_args([*base, "--protocol", "paper"])
    assert (paper.decoding, paper.batch_size, paper.max_new_tokens, paper.prompt_style) == (
        "original",
        16,
        256,
        "answer",
    )
    default = evaluator.parse_args(base)
    assert (default.decoding, default.batch_size, default.max_new_tokens, default.prompt_style) == (
        "original", 32, 256, "answer")  # fmt: skip
    assert evaluator.parse_args([*base, "--protocol", "paper", "--batch_size", "16"]).batch_size == 16
    for conflict in (
        ["--batch_size", "32"],
        ["--decoding", "greedy"],
        ["--prompt_style", "think"],
        ["--temperature", "1.0"],
    ):
        with pytest.raises(SystemExit):
            evaluator.parse_args([*base, "--protocol", "paper", *conflict])


def _script(env: dict, cwd, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "test_mmau.sh"), *args], env={**os.environ, "PYTHON": sys.executable,
                          **env}, cwd=cwd, capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.mark.slow  # five evaluations of one item in subprocesses
def test_paper_protocol_from_another_folder_scores_checkpoints_100_to_500_with_batch_16(tmp_path):
    model = _quiet_model(tmp_path / "model")
    for step in range(100, 800, 100):
        os.makedirs(tmp_path / "run", exist_ok=True)
        os.symlink(model, tmp_path / "run" / f"checkpoint-{step}")
    data_file, audio_dir = _one_item_file(tmp_path / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # every path relative to the current folder, which is neither the repository nor the run's
    env = {"PROTOCOL": "paper", "RUN_DIR": "../run", "MMAU_FILE": "../data/mmau-1.json", "AUDIO_DIR": str(audio_dir)}
    result = _script(env, elsewhere)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    scores = tmp_path / "run" / "mmau" / "mmau-1.answer.paper"
    assert sorted(path.name for path in scores.glob("checkpoint-*.score.json")) == [
        f"checkpoint-{step}.score.json" for step in (100, 200, 300, 400, 500)
    ]
    for step in (100, 200, 300, 400, 500):
        settings = _read(scores / f"checkpoint-{step}.meta.json")["settings"]
        assert settings["protocol"] == "paper" and settings["prompt_style"] == "answer"
        assert (settings["decoding"]["mode"], settings["decoding"]["batch_size"]) == ("original", 16)
        assert settings["decoding"]["max_new_tokens"] == 256
    refused = _script({**env, "BATCH_SIZE": "32"}, elsewhere)
    assert (
        refused.returncode == 2 and "--protocol paper fixes" in refused.stderr and "batch_size" in refused.stderr
    )  # r1aqa.evaluate refuses


@pytest.mark.slow  # nine subprocesses of one item each
def test_two_workers_give_one_workers_predictions_and_a_failed_checkpoint_is_redone(tmp_path, tiny_model_dir):
    other = write_tiny_model(str(tmp_path / "other"), seed=2)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(tiny_model_dir, run / "checkpoint-100")
    (run / "checkpoint-100" / "config.json").write_text("{")  # its worker dies first, before any model is loaded
    os.symlink(other, run / "checkpoint-200")
    os.symlink(tiny_model_dir, run / "checkpoint-300")
    os.symlink(other, run / "checkpoint-400")
    data_file, audio_dir = _one_item_file(tmp_path / "data")
    env = {"RUN_DIR": str(run), "MMAU_FILE": str(data_file), "AUDIO_DIR": str(audio_dir), "MAX_NEW_TOKENS": "6",
           "DECODING": "greedy", "STEPS": "100 200 300 400", "EVAL_PROCS": "2", "EVAL_DEVICES": "cpu"}  # fmt: skip
    two = run / "mmau" / "mmau-1.answer.greedy"

    first = _script(env, tmp_path)
    assert first.returncode != 0 and "checkpoint-100 (cpu" in first.stderr and "2 workers" in first.stdout
    # only the failed checkpoint is lost: the other worker took the rest of the queue
    scored = {path.name for path in two.glob("checkpoint-*.score.json")}
    assert scored == {f"checkpoint-{step}.score.json" for step in (200, 300, 400)}

    (run / "checkpoint-100" / "config.json").write_text((Path(tiny_model_dir) / "config.json").read_text())
    again = _script(env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("Skipping") == 3 and (two / "checkpoint-100.json").exists()

    one = tmp_path / "one"
    alone = _script({**env, "EVAL_PROCS": "1", "OUT_DIR": str(one)}, tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    raws = {step: _raws(one / f"checkpoint-{step}.json") for step in (100, 200, 300, 400)}
    assert raws[100] != raws[200]  # the two models answer differently: a mix-up of checkpoints would show
    for step in (100, 200, 300, 400):
        assert _raws(two / f"checkpoint-{step}.json") == raws[step]


@pytest.mark.slow  # two subprocesses and two evaluations
def test_lora_checkpoint_and_recorded_plain_prompt_are_evaluated_without_settings(tmp_path, tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model

    from r1aqa.merge_lora import merge_lora

    model = evaluator.load_model_and_processor(tiny_model_dir, tiny_model_dir, "cpu")[0]
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    run = tmp_path / "sft-lora"
    lora.save_pretrained(run / "checkpoint-10")  # adapters only: no config.json, no processor
    assert not (run / "checkpoint-10" / "config.json").exists()
    (run / "r1aqa_run.json").write_text(json.dumps({"prompt_style": "plain", "think": False}))
    data_file, audio_dir = _one_item_file(tmp_path / "data")
    env = {"RUN_DIR": str(run), "MMAU_FILE": str(data_file), "AUDIO_DIR": str(audio_dir), "MAX_NEW_TOKENS": "6",
           "DECODING": "greedy"}  # fmt: skip
    result = _script(env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = run / "mmau" / "mmau-1.plain.greedy" / "checkpoint-10.json"
    settings = _read(out.with_suffix(".meta.json"))["settings"]
    assert settings["prompt_style"] == "plain" and settings["base_model_path"] == tiny_model_dir
    # the same predictions as the merged model's
    merged = merge_lora(str(run / "checkpoint-10"), str(tmp_path / "merged"))
    assert _run(merged, data_file, audio_dir, tmp_path / "merged.json", "--max_new_tokens", 6, "--decoding", "greedy",
                "--prompt_style", "plain") == 0  # fmt: skip
    assert _raws(out) == _raws(tmp_path / "merged.json")
    plain_base = tmp_path / "base.json"
    assert _run(tiny_model_dir, data_file, audio_dir, plain_base, "--max_new_tokens", 6, "--decoding", "greedy",
                "--prompt_style", "plain") == 0  # fmt: skip
    assert _raws(out) != _raws(plain_base)  # the adapters took part


def test_missing_clips_are_shown_in_the_table_json_and_plot(tmp_path, monkeypatch, capsys):
    import matplotlib.axes

    for step, missing in ((100, 2), (200, 2)):
        _write_score(tmp_path, step, {"sound": 2, "music": 3})
        summary = _read(tmp_path / f"checkpoint-{step}.score.json")
        (tmp_path / f"checkpoint-{step}.score.json").write_text(json.dumps({**summary, "audio_errors": missing}))
    titles = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, text, **kw: titles.append(text))
    assert tables.main(["--score_dir", str(tmp_path)]) == 0
    note = "2 of 8 clips missing or unreadable (counted wrong)"
    assert f"Audio: {note}." in capsys.readouterr().out
    assert _read(tmp_path / "checkpoints.json")["missing_clips"] == note and note in titles[0]


def test_default_paths_are_the_repositorys_wherever_the_script_is_started(tmp_path):
    default_run = REPO / "outputs" / "grpo-qwen2-audio-7b"
    if default_run.exists():
        pytest.skip(f"{default_run} exists here: the default run would be evaluated")
    result = _script({}, tmp_path, timeout=60)
    assert result.returncode == 2 and f"RUN_DIR={default_run} is not a folder" in result.stderr
