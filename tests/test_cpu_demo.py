"""The CPU demo (r1aqa.tryout.demo): the option-only format reward, the format-only warm-up, and the pipeline's wiring on a
very small setting. Whether GRPO learns is the bench's job (`python -m r1aqa.tryout.demo --bench`), not a test's."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from r1aqa.rewards import REWARD_FUNCS, option_format_reward
from r1aqa.tryout import demo

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ["low", "top"]

OPTION_FORMAT_CASES = [
    # (completion, options, expected)
    ("<answer>low</answer>", OPTIONS, 1.0),
    ("<answer>top</answer>", OPTIONS, 1.0),
    ("<answer> top\n</answer>", OPTIONS, 1.0),  # stripped, as the accuracy reward compares
    ("<answer></answer>", OPTIONS, 0.0),  # the paper's format reward pays for this one
    ("<answer> </answer>", OPTIONS, 0.0),
    ("<answer>2</answer>", OPTIONS, 0.0),  # tagged, but not an option
    ("<answer>Low</answer>", OPTIONS, 0.0),  # case-sensitive, as the accuracy reward
    ("<answer>low top</answer>", OPTIONS, 0.0),
    ("low", OPTIONS, 0.0),  # an option without the format
    (" <answer>low</answer>", OPTIONS, 0.0),  # nothing may surround the tags (as the format reward)
    ("<answer>low</answer>\n", OPTIONS, 0.0),
    ("<answer>low</answer><answer>top</answer>", OPTIONS, 1.0),  # the first pair is the answer, as for accuracy
    ("<answer>2</answer><answer>top</answer>", OPTIONS, 0.0),
    ("<answer>Sailboat</answer>", ["motorboat", " Sailboat "], 1.0),  # options compared stripped
    ("", OPTIONS, 0.0),
]


@pytest.mark.parametrize("completion,options,expected", OPTION_FORMAT_CASES)
def test_option_format_reward(completion, options, expected):
    assert option_format_reward([completion], multi_choice=[options]) == [expected]
    assert option_format_reward([[{"role": "assistant", "content": completion}]], choices=[options]) == [expected]


def test_option_format_reward_is_registered_and_checks_its_inputs():
    assert REWARD_FUNCS["option_format"] is option_format_reward
    with pytest.raises(ValueError, match="multi_choice"):
        option_format_reward(["<answer>low</answer>"])
    with pytest.raises(ValueError, match="2 completions but 1 option lists"):
        option_format_reward(["a", "b"], multi_choice=[OPTIONS])


# --- warm-up ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_model_and_rows(tmp_path_factory):
    """The demo's 2 s-window tiny model (processor only) and a few training rows of the tone task."""
    from transformers import AutoProcessor

    from r1aqa.data import load_avqa_dataset
    from r1aqa.tryout.demo import CHUNK_LENGTH, EXTRA_TOKENS
    from r1aqa.tryout.tiny import write_tiny_model
    from r1aqa.tryout.toy_task import write_toy_task

    root = tmp_path_factory.mktemp("demo")
    model = write_tiny_model(str(root / "model"), chunk_length=CHUNK_LENGTH, extra_tokens=EXTRA_TOKENS)
    data = write_toy_task(str(root / "data"), n_train=6, n_test=2)
    rows = load_avqa_dataset(data["train_file"]).to_list()
    return AutoProcessor.from_pretrained(model), rows


def test_warmup_targets_are_always_listed_options_and_not_the_answer(demo_model_and_rows):
    from r1aqa.prompts import extract_answer
    from r1aqa.tryout.warmup import TARGETS

    _, rows = demo_model_and_rows
    rng = np.random.default_rng(0)
    picked, correct = [], 0
    for _ in range(100):
        for row, target in zip(rows, TARGETS["random"](rows, rng), strict=True):
            answer = extract_answer(target)
            assert target == f"<answer>{answer}</answer>" and answer in row["multi_choice"]
            picked.append(answer)
            correct += answer == row["multi_choice"][row["answer"]]
    assert set(picked) == set(OPTIONS)
    assert 0.4 < correct / len(picked) < 0.6, "targets must be drawn at random, not from the answer"


def test_warmup_loss_covers_the_answer_tokens_only(demo_model_and_rows):
    from r1aqa.tryout.warmup import IGNORE_INDEX, build_batch

    processor, rows = demo_model_and_rows
    tokenizer = processor.tokenizer
    targets = ["<answer>low</answer>", "<answer>top</answer>", "<answer>low</answer>"]
    batch = build_batch(processor, rows[:3], targets)
    labels, input_ids = batch["labels"], batch["input_ids"]
    audio_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert (input_ids == audio_id).sum(dim=1).min() > 0, "the audio placeholders are in the inputs"
    for i, target in enumerate(targets):
        scored = labels[i] != IGNORE_INDEX
        assert tokenizer.decode(labels[i][scored]) == target + tokenizer.eos_token
        assert not scored[input_ids[i] == audio_id].any(), "no loss on audio placeholders"
        first = int(scored.nonzero()[0])
        assert not scored[:first].any() and scored[first:].all(), "prompt masked, answer scored to the end"
        assert (labels[i][scored] == input_ids[i][scored]).all()
    assert batch["input_features"].shape[0] == 3


# --- the pipeline ----------------------------------------------------------------------------------------------------


def test_bench_pipeline_wiring_on_a_tiny_setting(tmp_path):
    """Warm-up, both GRPO runs (ours via run_grpo.sh, stock TRL), checkpoints, evaluation and the summary line."""
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "r1aqa.tryout.demo", "--bench", "--out", str(out), "--steps", "1"]
    command += ["--warmup_steps", "2", "--n_train", "4", "--n_test", "4", "--save_steps", "1"]
    command += ["--per_device_train_batch_size", "8", "--max_completion_length", "4"]  # passed to both GRPO runs
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for run in ("grpo", "stock-trl"):
        checkpoint = out / run / "checkpoint-1"
        assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 1
        assert (out / run / "model.safetensors").is_file() and (out / run / "processor_config.json").is_file()
        assert (out / run / "mmau" / "demo" / "checkpoint-0.score.json").is_file()  # the warm-up, as step 0
    assert (out / "warmup" / "model.safetensors").is_file() and (out / "warmup" / "processor_config.json").is_file()
    assert (out / "grpo" / "mmau" / "demo.silent" / "checkpoint-1.score.json").is_file()
    assert "option_format_reward" in (out / "grpo.log").read_text()  # the demo recipe's rewards were used
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"before=\d+\.\d\d% after=\d+\.\d\d% audio_blind=\d+\.\d\d% stock_trl=\d+\.\d\d%", last), last


def test_bench_over_seeds_reports_mean_and_std_of_each_row(tmp_path, monkeypatch, capsys):
    accuracies = {3: (50.0, 100.0, 50.0, 50.0), 4: (50.0, 90.0, 48.0, 52.0)}
    seen = []

    def fake_run(args):
        seen.append((args.seed, args.out))
        return dict(zip(("before", "after", "audio_blind", "stock_trl"), accuracies[args.seed], strict=True))

    monkeypatch.setattr(demo, "run", fake_run)
    demo.main(["--bench", "--seeds", "3", "4", "--out", str(tmp_path / "b")])
    assert seen == [(3, f"{tmp_path}/b/seed-3"), (4, f"{tmp_path}/b/seed-4")]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "before=50.00±0.00% after=95.00±7.07% audio_blind=49.00±1.41% stock_trl=51.00±1.41% seeds=2"


def test_seeds_need_the_bench():
    with pytest.raises(SystemExit):
        demo.main(["--seeds", "1", "2"])


def test_demo_subprocesses_ignore_the_users_launcher_settings(monkeypatch):
    """`make bench-learning SEEDS="0 1 2"` exports SEEDS; passed on, run_grpo.sh would train three runs per GRPO run."""
    for key, value in {"SEEDS": "0 1 2", "SMOKE": "1", "OUTPUT_DIR": "elsewhere", "PROTOCOL": "paper"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", "keep")
    env = demo.subprocess_env()
    assert not {"SEEDS", "SMOKE", "OUTPUT_DIR", "PROTOCOL"} & set(env)
    assert env["DEVICE"] == "cpu" and env["PYTHONPATH"].endswith("keep")
