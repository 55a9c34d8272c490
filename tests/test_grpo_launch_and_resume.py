"""The training entry point and run_grpo.sh: bad arguments stop early; runs save, reload and resume, in one process,
two processes (DDP on gloo) and two processes under DeepSpeed ZeRO-3 on CPU."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.launch import free_port, parse_recipe_on_cpu, run_grpo_sh

from r1aqa import grpo
from r1aqa.checkpoints import checkpoint_dirs, checkpoint_problem

REPO = Path(__file__).resolve().parents[1]


def global_step(checkpoint_dir) -> int:
    return json.loads((Path(checkpoint_dir) / "trainer_state.json").read_text())["global_step"]


def reloads_and_generates(model_dir) -> None:
    """Load a saved model in a fresh process (never inside a DeepSpeed-configured one) and generate with audio."""
    code = (
        "import sys, numpy as np, torch\n"
        "from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration\n"
        "m = Qwen2AudioForConditionalGeneration.from_pretrained(sys.argv[1]); p = AutoProcessor.from_pretrained(sys.argv[1])\n"
        "t = p.apply_chat_template([{'role':'user','content':[{'type':'audio'},{'type':'text','text':'Q'}]}],"
        " add_generation_prompt=True, tokenize=False)\n"
        "x = p(text=[t], audio=[np.zeros(16000, np.float32)], return_tensors='pt')\n"
        "print(m.generate(**x, max_new_tokens=3, do_sample=False).shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


# --- arguments -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,message",
    [
        (["--data_file", "nowhere.jsonl"], "does not exist"),
        (["--model_name_or_path", "./no/such/model"], "neither a local folder nor a hub id"),
        (["--reward_funcs", "accuracy", "bleu"], "unknown reward name"),
        (["--per_device_train_batch_size", "6"], "num_generations"),
        (["--not_a_field", "1"], "not_a_field"),
    ],
)
def test_bad_arguments_stop_before_any_model_loads(toy, monkeypatch, tmp_path, capsys, override, message):
    monkeypatch.setattr(grpo, "main", lambda *a: pytest.fail("main() must not be reached"))
    argv = [
        "--config",
        str(REPO / "configs/grpo_tiny_cpu.yaml"),
        "--model_name_or_path",
        toy["model"],
        "--data_file",
        toy["data"],
        "--output_dir",
        str(tmp_path),
        *override,
    ]
    with pytest.raises((SystemExit, ValueError)) as error:
        grpo.cli(argv)
    # The message names the problem: in the exception, or (argparse) on stderr before exit code 2.
    assert message in str(error.value) + capsys.readouterr().err, str(error.value)


def test_paper_recipe_parses_to_the_paper_hyperparameters(toy, tmp_path):
    script_args, training_args, model_args = parse_recipe_on_cpu(
        REPO / "configs/grpo_qwen2_audio_7b.yaml", toy["data"], tmp_path
    )
    assert model_args.model_name_or_path == "Qwen/Qwen2-Audio-7B-Instruct"
    assert (training_args.num_generations, training_args.per_device_train_batch_size) == (8, 8)
    # The paper's 16 questions x 8 completions per step, reached on this one process by accumulation (2 on 8 GPUs).
    assert script_args.questions_per_step == 16 and training_args.gradient_accumulation_steps == 16
    assert training_args.generation_batch_size == 128
    assert script_args.batch_line.startswith("Batch: 16 questions x 8 completions per step = world size 1 x ")
    assert (training_args.learning_rate, training_args.beta, training_args.loss_type) == (1e-6, 0.04, "grpo")
    assert (training_args.temperature, training_args.top_k, training_args.top_p) == (1.0, 50, 1.0)
    assert training_args.max_completion_length == 256 and training_args.max_steps == 1000
    assert training_args.save_steps == 100 and training_args.seed == 42 and training_args.num_iterations == 1
    assert training_args.scale_rewards == "group" and training_args.weight_decay == 0.0
    assert training_args.max_grad_norm == 1.0 and training_args.lr_scheduler_type == "linear"
    assert training_args.gradient_checkpointing is False and script_args.think is False
    assert script_args.freeze_audio_encoder is False and model_args.use_peft is False


@pytest.mark.parametrize("script", ["run_grpo.sh", "run_sft.sh"])
def test_launch_script_without_a_gpu_stops_and_names_the_cpu_tryout(script, tmp_path):
    """No silent fallback to the toy model: with no GPU visible and no DEVICE=cpu, nothing starts."""
    environment = {k: v for k, v in os.environ.items() if k != "DEVICE"}
    environment |= {"CUDA_VISIBLE_DEVICES": "", "OUTPUT_DIR": str(tmp_path / "out")}
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(REPO / script)], cwd=REPO, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no GPU is visible" in result.stderr and f"DEVICE=cpu bash {script}" in result.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()


def test_launch_script_rejects_an_unknown_device():
    result = subprocess.run(
        ["bash", str(REPO / "run_grpo.sh")],
        cwd=REPO,
        env={**os.environ, "DEVICE": "tpu"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "DEVICE must be gpu or cpu, got 'tpu'" in result.stderr


# --- runs ------------------------------------------------------------------------------------------------------------


def optimizer_steps(run) -> list[int]:
    """Steps of the checkpoints of `run` that still hold optimizer state."""
    return [step for step, path in checkpoint_dirs(str(run)) if (Path(path) / "optimizer.pt").is_file()]


def test_run_grpo_sh_keeps_state_in_the_newest_checkpoint_refuses_a_rerun_and_resumes(toy, tmp_path):
    out = tmp_path / "run"
    log = run_grpo_sh(toy, out, "--max_steps", "4", "--save_steps", "1")
    assert "DEVICE=cpu: the CPU try-out" in log
    assert [global_step(out / f"checkpoint-{step}") for step in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert optimizer_steps(out) == [4], "only the newest checkpoint keeps optimizer state"
    assert all(checkpoint_problem(str(out / f"checkpoint-{step}")) is None for step in (1, 2, 3, 4)), "all evaluable"
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    run_info = json.loads((out / "r1aqa_run.json").read_text())  # read by test_mmau.sh
    assert run_info["think"] is False and run_info["prompt_style"] == "answer"
    reloads_and_generates(out / "checkpoint-2")  # a weights-only checkpoint still loads and generates

    # A second run into the same folder without --resume: stopped before any data or model loads.
    log = run_grpo_sh(toy, out, "--max_steps", "6", expect=2)
    assert "--resume true" in log and "OUTPUT_DIR" in log and "Training on" not in log
    # --resume_from_checkpoint a checkpoint whose state was removed: refused, saying why.
    log = run_grpo_sh(toy, out, "--resume_from_checkpoint", str(out / "checkpoint-2"), expect=2)
    assert "no optimizer state" in log and "--resume true" in log and "Training on" not in log

    # A save cut short at step 5 (no trainer_state.json): resume skips it, continues from 4 and writes it whole.
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "model.safetensors").write_bytes(b"\0" * 8)
    log = run_grpo_sh(toy, out, "--max_steps", "6", "--save_steps", "1", "--resume", "true")
    assert f"Skipping {out / 'checkpoint-5'} for resuming" in log
    assert f"Resuming from {out / 'checkpoint-4'}" in log
    assert global_step(out / "checkpoint-5") == 5 and global_step(out / "checkpoint-6") == 6
    assert optimizer_steps(out) == [6]
    # --resume_from_checkpoint PATH with state resumes from it.
    log = run_grpo_sh(
        toy, out, "--max_steps", "7", "--save_steps", "1", "--resume_from_checkpoint", str(out / "checkpoint-6")
    )
    assert f"Resuming from {out / 'checkpoint-6'}" in log and global_step(out / "checkpoint-7") == 7
    reloads_and_generates(out / "checkpoint-7")


def test_keep_all_checkpoint_state_keeps_every_checkpoints_state(toy, tmp_path):
    out = tmp_path / "run"
    run_grpo_sh(toy, out, "--max_steps", "2", "--save_steps", "1", "--keep_all_checkpoint_state", "true")
    assert optimizer_steps(out) == [1, 2]


def test_overwrite_output_dir_starts_again_from_step_0(toy, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-9").mkdir(parents=True)
    run_grpo_sh(toy, out, "--max_steps", "1", "--save_steps", "1", "--overwrite_output_dir", "true")
    assert [path.name for path in sorted(out.glob("checkpoint-*"))] == ["checkpoint-1"]


@pytest.mark.slow
def test_cpu_procs_1_and_2_train_the_same_questions_per_step_with_different_accumulation(toy, tmp_path):
    lines = {}
    for procs in (1, 2):
        log = run_grpo_sh(toy, tmp_path / f"procs{procs}", "--max_steps", "1", "--save_steps", "1",
                          CPU_PROCS=str(procs), MASTER_PORT=str(free_port()))  # fmt: skip
        lines[procs] = next(line for line in log.splitlines() if "Batch: " in line).split("Batch: ", 1)[1]
        assert f"decoded now (over {procs} process(es))" in log, "the audio check is shared by the processes"
    assert lines[1].startswith("2 questions x 4 completions per step = world size 1 x per-device batch 4 ")
    assert lines[2].startswith("2 questions x 4 completions per step = world size 2 x per-device batch 4 ")
    assert lines[1].split(" = ")[0] == lines[2].split(" = ")[0]
    assert "accumulation 2" in lines[1] and "accumulation 1" in lines[2]
    log = run_grpo_sh(toy, tmp_path / "explicit", "--max_steps", "1", "--save_steps", "1",
                      "--gradient_accumulation_steps", "1")  # fmt: skip
    assert "Batch: 1 questions x 4 completions per step" in log and "NOT the recipe's 2" in log


def test_a_world_size_that_cannot_reach_the_recipes_batch_stops(toy, tmp_path, capsys):
    argv = ["--config", str(REPO / "configs/grpo_qwen2_audio_7b.yaml"), "--data_file", toy["data"]]
    argv += ["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false"]
    with pytest.raises(SystemExit) as stopped:
        grpo.parse_args([*argv, "--per_device_train_batch_size", "48"])
    assert stopped.value.code == 2 and "World sizes that can: none" in capsys.readouterr().err
    _, training_args, _ = grpo.parse_args([*argv, "--per_device_train_batch_size", "16"])
    assert training_args.gradient_accumulation_steps == 8


def test_smoke_run_ends_with_the_report_and_reruns_into_its_folder(toy, tmp_path):
    out = tmp_path / "smoke"
    for _ in range(2):  # a smoke run is disposable: the second replaces the first instead of being refused
        log = run_grpo_sh(toy, out, "--smoke_steps", "4", SMOKE="1")
    screen = log[log.index("First run (smoke)") :]
    assert "First run (smoke): 4 of 4 steps on 1 process(es), CPU" in screen
    assert "Batch: 2 questions x 4 completions per step" in screen
    assert " s/step (median of TRL's step_time, steps 2-4" in screen and "the recipe's 6 steps: ~" in screen
    assert "Memory: peak of rank 0: " in screen and " GB RSS" in screen
    assert "checkpoint-2 " in screen and "(weights only)" in screen and "checkpoint-4 " in screen
    assert "(with optimizer state)" in screen and "the recipe's 2 checkpoints (save_steps 3)" in screen
    assert "If it did not fit" in screen
    assert [path.name for path in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]
    assert not (out / "wandb").exists()


def test_run_sft_sh_records_the_plain_prompt_and_refuses_a_rerun(toy, tmp_path):
    out = tmp_path / "sft"
    run_grpo_sh(toy, out, "--max_steps", "2", "--save_steps", "1", script="run_sft.sh")
    run_info = json.loads((out / "r1aqa_run.json").read_text())
    assert run_info["prompt_style"] == "plain" and run_info["think"] is False and run_info["system_prompt"] is None
    assert optimizer_steps(out) == [2]
    log = run_grpo_sh(toy, out, "--max_steps", "2", script="run_sft.sh", expect=2)
    assert "--resume true" in log and "Training on" not in log


def test_resume_from_weights_only_checkpoints_stops_before_anything_loads(toy, tmp_path, monkeypatch):
    """`--resume true` where the checkpoints hold weights only (`save_only_model: true`, as the original saved) stops
    with a message saying how to continue, instead of silently restarting from step 0."""
    from r1aqa import data

    monkeypatch.setattr(data, "load_avqa_dataset", lambda *a, **k: pytest.fail("must stop before loading data"))
    checkpoint = tmp_path / "run" / "checkpoint-5"
    checkpoint.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (checkpoint / name).write_bytes((Path(toy["model"]) / name).read_bytes())
    (checkpoint / "training_args.bin").write_bytes(b"")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    argv = ["--config", str(REPO / "configs/grpo_tiny_cpu.yaml"), "--model_name_or_path", toy["model"]]
    argv += ["--data_file", toy["data"], "--output_dir", str(tmp_path / "run"), "--resume", "true"]
    with pytest.raises(ValueError, match=r"checkpoint-5 holds weights only .*--model_name_or_path"):
        grpo.cli(argv)
    with pytest.raises(ValueError, match="`resume: true` needs resumable checkpoints: set `save_only_model: false`"):
        grpo.cli([*argv, "--save_only_model", "true"])


@pytest.mark.slow
def test_seeds_train_one_complete_run_per_seed(toy, tmp_path):
    out = tmp_path / "runs"
    log = run_grpo_sh(toy, out, "--max_steps", "1", "--save_steps", "1", SEEDS="3 4")
    assert log.index("=== seed 3 ->") < log.index("=== seed 4 ->")
    for seed in (3, 4):
        run = out / f"seed-{seed}"
        assert global_step(run / "checkpoint-1") == 1 and (run / "model.safetensors").is_file()
        assert json.loads((run / "r1aqa_run.json").read_text())["seed"] == seed
    assert sorted(p.name for p in out.iterdir()) == ["seed-3", "seed-4"]


def test_seeds_with_a_seed_argument_stops(tmp_path):
    result = subprocess.run(
        ["bash", str(REPO / "run_grpo.sh"), "--seed", "1"],
        cwd=REPO,
        env={**os.environ, "DEVICE": "cpu", "SEEDS": "1 2", "MODEL": str(tmp_path / "m"), "DATA_FILE": "-"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "sets --seed per run: do not pass --seed" in result.stderr


@pytest.mark.slow
def test_two_processes_under_zero3_train_save_reload_and_resume(toy, tmp_path):
    """The paper's launcher shape on CPU: two processes, DeepSpeed ZeRO-3, accumulation 2 and two iterations (the
    old-policy pass). Plain DDP on two processes trains, is SIGKILLed and resumes in test_runs_survive_faults.py."""
    env = {"CPU_PROCS": "2", "MASTER_PORT": str(free_port()), "DS_CONFIG": "configs/ds_zero3.json"}
    out = tmp_path / "deepspeed_zero3"
    run_grpo_sh(toy, out, "--max_steps", "2", "--save_steps", "2", "--gradient_accumulation_steps", "2",
                "--num_iterations", "2", **env)  # fmt: skip
    checkpoint = out / "checkpoint-2"
    assert global_step(checkpoint) == 2
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file(), "2 processes"
    assert (checkpoint / "global_step2").is_dir(), "DeepSpeed's own resumable state"
    reloads_and_generates(checkpoint)
    log = run_grpo_sh(toy, out, "--max_steps", "3", "--save_steps", "1", "--gradient_accumulation_steps", "2",
                      "--num_iterations", "2", "--resume", "true", **env)  # fmt: skip
    assert f"Resuming from {checkpoint}" in log
    assert global_step(out / "checkpoint-3") == 3


def test_unknown_recipe_key_is_named(toy, tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text((REPO / "configs/grpo_tiny_cpu.yaml").read_text() + "lerning_rate: 0.1\n")
    with pytest.raises(ValueError, match="lerning_rate"):
        grpo.parse_args(["--config", str(recipe), "--data_file", toy["data"], "--output_dir", str(tmp_path)])


def launch_command(tmp_path, *args, **env) -> str:
    """What run_grpo.sh would start, run from `tmp_path` with a stand-in PYTHON that prints its folder and arguments."""
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\necho "cwd=$(pwd) args=$*"\n')
    python.chmod(0o755)
    environment = {k: v for k, v in os.environ.items() if k not in ("OUTPUT_DIR", "SMOKE", "RECIPE", "DS_CONFIG")}
    environment |= {"DEVICE": "cpu", "PYTHON": str(python), **env}
    result = subprocess.run(
        ["bash", str(REPO / "run_grpo.sh"), *args], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return next(line for line in result.stdout.splitlines() if line.startswith("cwd="))


def test_user_paths_are_relative_to_the_current_folder_and_defaults_to_the_repository(toy, tmp_path):
    line = launch_command(tmp_path, MODEL=toy["model"], DATA_FILE="my/train.jsonl", OUTPUT_DIR="runs/a")
    assert line.startswith(f"cwd={tmp_path} "), "the launcher stays in the user's folder"
    assert "--data_file my/train.jsonl" in line and "--output_dir runs/a" in line
    assert f"--config {REPO}/configs/grpo_tiny_cpu.yaml" in line
    line = launch_command(tmp_path, "--think", "true", MODEL=toy["model"], DATA_FILE=toy["data"])
    assert f"--output_dir {REPO}/outputs/grpo-tiny-cpu-think " in line, "think mode: its own default folder"
    line = launch_command(tmp_path, "--think=false", MODEL=toy["model"], DATA_FILE=toy["data"], SMOKE="1")
    assert f"--output_dir {REPO}/outputs/grpo-tiny-cpu-smoke " in line and "--smoke true" in line


def test_lora_without_target_modules_stops_before_loading_and_names_the_setting():
    """PEFT would stop deep in the trainer's start-up; the entry point says which setting is missing instead."""
    from trl import ModelConfig

    from r1aqa.runs import check_model_args

    hub_id = "Qwen/Qwen2-Audio-7B-Instruct"
    with pytest.raises(SystemExit, match="lora_target_modules"):
        check_model_args(ModelConfig(hub_id, use_peft=True))
    check_model_args(ModelConfig(hub_id, use_peft=True, lora_target_modules=["q_proj"]))
    check_model_args(ModelConfig(hub_id, use_peft=False))
