"""`python -m r1aqa.filter_data`: splits by pass rate with and without the audio, rows copied byte for byte, missing
clips kept out and counted, thresholds recorded, and a SIGKILLed run resumed to the same files as an uninterrupted one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from r1aqa import filter_data
from r1aqa.audio import SAMPLING_RATE
from r1aqa.tryout.toy_task import write_toy_task

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("strong.jsonl", "weak.jsonl", "learnable.jsonl", "pass_rates.jsonl", "summary.json", "settings.json")


class ListeningStub:
    """A generator that hears: given a tone it answers its pitch (250 Hz: low, 2000 Hz: top); without one (silence, or
    a text question's noise) it reads the answer from a text that gives it away, else answers nothing valid. Counts
    the conversations it is given."""

    def __init__(self, *args):
        self.calls = 0
        self.checkpoint_config, self.processor = None, Namespace(tokenizer=None)
        self.audio_channels = "first"  # how the model's family makes a stereo file mono (r1aqa.evaluate.load_generator)

    def generate(self, conversations, config, seed, item_seeds=()):
        self.calls += len(conversations)
        answers = []
        for conversation in conversations:
            parts = conversation[0]["content"]
            audio = next(part["audio"] for part in parts if part["type"] == "audio")
            text = next(part["text"] for part in parts if part["type"] == "text")
            spectrum = np.abs(np.fft.rfft(audio))
            if spectrum.max() > 50:  # a tone (the text questions' clips hold faint noise only)
                peak = np.argmax(spectrum) * SAMPLING_RATE / len(audio)
                answers.append("<answer>low</answer>" if peak < 1000 else "<answer>top</answer>")
            else:
                given = [word for word in ("low", "top") if f"is {word}." in text]
                answers.append(f"<answer>{given[0]}</answer>" if given else "<answer>?</answer>")
        return answers


@pytest.fixture
def stub(monkeypatch):
    made = []

    def model(*args):
        made.append(ListeningStub())
        return made[-1]

    monkeypatch.setattr(filter_data, "load_generator", model)
    monkeypatch.setattr(filter_data, "generation_config", lambda *args: None)
    return made


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """6 tone questions, 4 text-answerable ones, and a tone question whose clip is missing (the last row); the rows
    rewritten with uneven spacing and non-ASCII so that only a byte copy reproduces them."""
    root = tmp_path_factory.mktemp("filter-data")
    data_file = Path(write_toy_task(str(root), n_train=6, n_test=0, n_text=4, seconds=0.5)["train_file"])
    records = [json.loads(line) for line in data_file.read_text().splitlines()]
    records.append({**records[0], "id": 10, "audio_path": str(root / "gone.wav")})
    lines = [json.dumps({**r, "note": "é"}, ensure_ascii=False, separators=(",", ":  ")) for r in records]
    data_file.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return data_file, lines


def run(data_file, out_dir, *extra):
    return filter_data.run(filter_data.parse_args(
        ["--model_path", "stub", "--data_file", str(data_file), "--out_dir", str(out_dir), "--num_samples", "2",
         "--shard_size", "4", "--batch_size", "3", *extra]))  # fmt: skip


def test_text_answerable_questions_are_weak_and_tone_questions_strong(stub, mixed, tmp_path, capsys):
    data_file, lines = mixed
    summary = run(data_file, tmp_path)
    strong = (tmp_path / "strong.jsonl").read_text(encoding="utf-8").splitlines()
    weak = (tmp_path / "weak.jsonl").read_text(encoding="utf-8").splitlines()
    assert strong == lines[:6] and weak == lines[6:10], "split rows are the input rows, byte for byte, in order"
    assert (tmp_path / "learnable.jsonl").read_text() == "", "the stub answers every question right with the audio"
    assert summary["by_question_type"] == {"Pitch": {"strong": 6, "audio_error": 1}, "Text": {"weak": 4}}
    records = [json.loads(line) for line in (tmp_path / "pass_rates.jsonl").read_text().splitlines()]
    assert records[0]["pass_rates"] == {"stub": {"audio": 1.0, "silence": 0.0}}
    assert records[6]["pass_rates"] == {"stub": {"audio": 1.0, "silence": 1.0}}
    assert (tmp_path / "pass_rates.png").stat().st_size > 0 and "| Pitch | 6 | 0 | 0 | 1 |" in capsys.readouterr().out


def test_missing_clip_is_reported_counted_and_in_no_split(stub, mixed, tmp_path, capsys):
    data_file, lines = mixed
    summary = run(data_file, tmp_path)
    assert "Audio error, question 10" in capsys.readouterr().out
    assert summary["counts"]["audio_error"] == 1 and summary["audio_errors"][0]["id"] == 10
    everything = "".join((tmp_path / f"{name}.jsonl").read_text(encoding="utf-8") for name in filter_data.SPLITS)
    assert lines[10] not in everything and "gone.wav" not in everything
    assert stub[0].calls == 10 * 2 * 2, "10 usable questions x 2 samples x 2 conditions; the missing clip never asked"


def test_thresholds_are_recorded_and_new_thresholds_or_models_reuse_finished_shards(stub, mixed, tmp_path):
    data_file, _ = mixed
    run(data_file, tmp_path)
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["thresholds"] == {"silence_threshold": 0.0, "min_models": 1} and settings["num_samples"] == 2
    summary = run(data_file, tmp_path, "--silence_threshold", "1.0")
    assert len(stub) == 1, "only the thresholds changed: no model is loaded, no shard generated again"
    assert summary["counts"]["strong"] == 10 and summary["thresholds"]["silence_threshold"] == 1.0
    assert json.loads((tmp_path / "settings.json").read_text())["thresholds"]["silence_threshold"] == 1.0
    summary = run(data_file, tmp_path, "--model_path", "second", "--min_models", "2")
    assert [s.calls for s in stub[1:]] == [10 * 2 * 2], "a model added: only it is loaded and generates its shards"
    assert summary["thresholds"] == {"silence_threshold": 0.0, "min_models": 2} and summary["counts"]["strong"] == 6


def test_a_clip_repaired_since_redoes_its_shard_only(stub, mixed, tmp_path):
    data_file, lines = mixed
    gone = json.loads(lines[10])["audio_path"]
    local = tmp_path / "train.jsonl"
    local.write_text(data_file.read_text(encoding="utf-8").replace(gone, str(tmp_path / "back.wav")), encoding="utf-8")
    assert run(local, tmp_path / "out")["counts"]["audio_error"] == 1
    shutil.copy(json.loads(lines[0])["audio_path"], tmp_path / "back.wav")
    summary = run(local, tmp_path / "out")
    assert stub[1].calls == 3 * 2 * 2, "the last shard (questions 8-10) only"
    assert summary["counts"]["audio_error"] == 0 and summary["counts"]["strong"] == 7


@pytest.mark.parametrize(
    ("silence", "audio", "min_models", "expected"),
    [
        ([0.0, 0.0], [0.5, 1.0], None, ["strong", "learnable"]),  # both fail without audio; model 0 is mixed
        ([0.0, 1.0], [1.0, 0.5], None, ["weak"]),  # one model answers without audio: not all fail
        ([0.0, 1.0], [0.0, 0.5], 1, ["strong"]),  # ... but one failing model is enough with --min_models 1
        ([0.5, 0.5], [1.0, 1.0], None, ["weak"]),  # above the threshold for both
    ],
)
def test_split_rule_over_models(silence, audio, min_models, expected):
    results = [[{"audio_error": None, "audio": a * 2, "silence": s * 2}] for a, s in zip(audio, silence, strict=True)]
    args = Namespace(num_samples=2, min_models=min_models, model_path=["m0", "m1"], silence_threshold=0.0)
    records, _ = filter_data.assign_splits([{"id": 0, "question_type": "x"}], results, args)
    assert records[0]["splits"] == expected


def filter_command(model, data_file, out_dir):
    return [sys.executable, "-m", "r1aqa.filter_data", "--model_path", str(model), "--data_file", str(data_file),
            "--out_dir", str(out_dir), "--num_samples", "2", "--max_new_tokens", "4", "--shard_size", "2",
            "--batch_size", "2", "--seed", "3"]  # fmt: skip


@pytest.mark.slow
def test_sigkilled_filter_resumes_to_the_same_output_as_an_uninterrupted_run(toy, tmp_path):
    """The tiny model on 16 toy questions (8 shards): killed after its first shards, rerun, the same files as a run
    that was never interrupted; finished shards are not generated again."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    process = subprocess.Popen(filter_command(toy["model"], toy["data"], killed), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while len(list((killed / "shards").glob("*.json"))) < 2:
        assert process.poll() is None and time.time() < deadline, "the filter ended before it could be killed"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {path.name: path.read_bytes() for path in (killed / "shards").glob("*.json")}
    assert 2 <= len(finished) < 8 and not (killed / "summary.json").exists()

    resumed = subprocess.run(filter_command(toy["model"], toy["data"], killed), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("shard") == 8 - len(finished), "only the unfinished shards are generated"
    assert all((killed / "shards" / name).read_bytes() == data for name, data in finished.items())
    uninterrupted = subprocess.run(filter_command(toy["model"], toy["data"], whole), env=env, capture_output=True,
                                   text=True)  # fmt: skip
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    for name in OUTPUTS + tuple(f"shards/model-0-shard-{s:05d}.json" for s in range(8)):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name


def test_text_questions_are_appended_and_leave_the_default_toy_task_unchanged(tmp_path):
    plain = write_toy_task(str(tmp_path / "plain"), n_train=4, n_test=2)
    mixed = write_toy_task(str(tmp_path / "mixed"), n_train=4, n_test=2, n_text=2)
    rows = Path(mixed["train_file"]).read_text().replace(str(tmp_path / "mixed"), str(tmp_path / "plain"))
    assert rows.splitlines()[:4] == Path(plain["train_file"]).read_text().splitlines()
    assert Path(mixed["test_file"]).read_text() == Path(plain["test_file"]).read_text().replace("plain", "mixed")
    text = [json.loads(line) for line in rows.splitlines()[4:]]
    assert [row["question_type"] for row in text] == ["Text", "Text"]
    assert all(f"is {row['multi_choice'][row['answer']]}." in row["question_text"] for row in text)


@pytest.mark.vllm
def test_vllm_backend_draws_k_different_samples_per_question(tmp_path):
    """`--backend vllm` (evaluation's vLLM path): each of the K passes has its own seed, so a question's K answers
    are not K copies of one (vLLM seeds each request: the same prompt with the same seed repeats its answer)."""
    from r1aqa.tryout.tiny import write_tiny_model

    model = write_tiny_model(str(tmp_path / "model"), seed=0, head_dim=32)  # vLLM's CPU attention: head size >= 32
    data = write_toy_task(str(tmp_path / "data"), n_train=2, n_test=0, n_text=2, seconds=0.5)["train_file"]
    argv = ["--model_path", model, "--data_file", data, "--out_dir", str(tmp_path / "out"), "--num_samples", "4",
            "--max_new_tokens", "6", "--backend", "vllm", "--device", "cpu"]  # fmt: skip
    assert filter_data.main(argv) == 0
    shard = json.loads((tmp_path / "out" / "shards" / "model-0-shard-00000.json").read_text())
    answers = [question[f"{c}_answers"] for question in shard["questions"] for c in filter_data.CONDITIONS]
    assert all(len(a) == 4 for a in answers) and all(len(set(a)) > 1 for a in answers)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"]["strong"] + summary["counts"]["weak"] == 4


def test_strong_split_recipe_is_the_paper_recipe_on_the_strong_split():
    """Only the data file, the output folder and the run name differ: a paper value changed in one recipe and not in
    the other (as the KL flag once was) fails here."""
    import yaml

    paper = yaml.safe_load((REPO / "configs/grpo_qwen2_audio_7b.yaml").read_text())
    strong = yaml.safe_load((REPO / "configs/grpo_qwen2_audio_7b_strong.yaml").read_text())
    differ = {"data_file", "output_dir", "run_name"}
    assert strong["data_file"] == "outputs/filter/strong.jsonl"
    assert {k: v for k, v in strong.items() if k not in differ} == {k: v for k, v in paper.items() if k not in differ}
