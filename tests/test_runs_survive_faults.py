"""Runs survive faults: a SIGKILLed training run resumes to the same result, secrets stay out of every file, and audio
of any rate, channel count or length is read the way training expects."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers.launch import free_port
from helpers.paths import AVQA_AUDIO_DIR
from safetensors.torch import load_file

from r1aqa.audio import load_audio

REPO = Path(__file__).resolve().parents[1]
SECRET = "wandb-secret-1234567890abcdef"


def grpo_command(toy, output_dir, *args, processes=1):
    launcher = [sys.executable]
    if processes > 1:  # plain DDP on gloo, as run_grpo.sh starts it (torchrun)
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        launcher += ["--master_port", str(free_port())]
    return [
        *launcher,
        str(REPO / "tests/helpers/grpo_with_varied_reward.py"),
        "--reward_funcs",
        "varied",
        "--config",
        str(REPO / "configs/grpo_tiny_cpu.yaml"),
        "--model_name_or_path",
        toy["model"],
        "--data_file",
        toy["data"],
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "4",
        "--save_steps",
        "1",
        "--learning_rate",
        "1e-2",
        *args,
    ]


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the process and every process it started, at once (no cleanup runs), as a preempted job dies. torchrun
    starts each worker in a session of its own, so killing the launcher's process group would leave them training."""
    import psutil

    parent = psutil.Process(process.pid)
    for child in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)


def environment(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **extra}


def run(toy, output_dir, *args, processes=1, **env):
    result = subprocess.run(
        grpo_command(toy, output_dir, *args, processes=processes),
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def logs(tmp_path: Path, name: str) -> dict:
    """The environment of a run that logs its data order (tests/helpers/grpo_with_varied_reward.py: R1AQA_ORDER_LOG) and
    probes the model at every step start (R1AQA_STEP_LOG)."""
    return {"R1AQA_ORDER_LOG": str(tmp_path / f"{name}.log"), "R1AQA_STEP_LOG": str(tmp_path / f"{name}.steps")}


def steps(path: Path) -> dict[int, dict]:
    """{step: probe at its start} from a R1AQA_STEP_LOG file (the last record of a step a killed run repeated)."""
    return {record["step"]: record for record in map(json.loads, path.read_text().splitlines())}


def order(log: Path, processes: int) -> list[list[list[str]]]:
    """Per generation batch, the clips each process scored (a process's file: one line per batch)."""
    files = [log] if processes == 1 else [Path(f"{log}.rank{rank}") for rank in range(processes)]
    per_process = [[json.loads(line) for line in f.read_text().splitlines()] for f in files]
    return [list(batch) for batch in zip(*per_process, strict=True)]


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_sigkilled_run_resumes_at_the_right_step_with_the_same_data_order(toy, tmp_path, processes):
    straight = tmp_path / "straight"
    run(toy, straight, processes=processes, **logs(tmp_path, "straight"))

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        grpo_command(toy, killed, processes=processes),
        env=environment(**logs(tmp_path, "killed")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoint-2" / "trainer_state.json").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before checkpoint-2"
        time.sleep(0.05)
    kill_tree(process)
    process.wait()
    assert not (killed / "checkpoint-4").exists()
    # A checkpoint the kill interrupted mid-save (no trainer_state.json) must not be resumed from.
    (killed / "checkpoint-3").mkdir(exist_ok=True)
    (killed / "checkpoint-3" / "trainer_state.json").unlink(missing_ok=True)

    log = run(toy, killed, "--resume", "true", processes=processes, **logs(tmp_path, "resumed"))
    assert f"Resuming from {killed / 'checkpoint-2'}" in log
    for step in (1, 2, 3, 4):
        state = json.loads((killed / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert state["global_step"] == step
    if processes > 1:
        assert (killed / "checkpoint-4" / "rng_state_1.pth").is_file(), "both processes' state"
    # Same questions at every step, on every process: steps 3-4 of the resumed run are those of the uninterrupted one.
    straight_order = order(tmp_path / "straight.log", processes)
    assert len(straight_order) == 4 and all(len(batch) == processes for batch in straight_order)
    if processes > 1:
        assert all(batch[0] != batch[1] for batch in straight_order), "the processes score different questions"
    assert order(tmp_path / "killed.log", processes)[:2] == straight_order[:2]
    assert order(tmp_path / "resumed.log", processes) == straight_order[2:]
    # Training really ran: the weights moved. (They are not bit-identical to the uninterrupted run: HF's Trainer
    # restores the RNG before the data loader draws its seed, so sampling differs after a resume.)
    initial = load_file(Path(toy["model"]) / "model.safetensors")
    final = load_file(killed / "model.safetensors")
    assert any(not torch.equal(final[k], initial[k]) for k in final)
    initial_model = torch.load(
        tmp_path / "straight.steps.weights.pt" if processes == 1 else tmp_path / "straight.steps.weights.rank0.pt"
    )

    # The resumed run starts from the checkpoint's weights, on every process: at the start of its first step (before
    # any update) the policy is checkpoint-2's, tensor for tensor, not the initial model's.
    from r1aqa.models import load_model

    saved = load_model(str(killed / "checkpoint-2")).state_dict()
    assert any(not torch.equal(value, initial_model[name]) for name, value in saved.items()), "the weights moved"
    for rank in range(processes):
        suffix = f".rank{rank}" if processes > 1 else ""
        resumed_weights = torch.load(tmp_path / f"resumed.steps.weights{suffix}.pt")
        assert set(saved) == set(resumed_weights), set(saved) ^ set(resumed_weights)
        for name, value in saved.items():
            assert torch.equal(resumed_weights[name], value), f"rank {rank}: {name} is not the checkpoint's"
        # Policy and reference at the start of each step, on a fixed probe (its own question, audio and completion):
        # the resumed run's first step sees what the uninterrupted run saw at step 3; the killed run saw what it saw
        # at steps 1-2. (The logged loss/KL of a step are not comparable: they average over completions that are
        # sampled differently after a resume.)
        probes = {name: steps(tmp_path / f"{name}.steps{suffix}") for name in ("straight", "killed", "resumed")}
        assert sorted(probes["straight"]) == [0, 1, 2, 3] and sorted(probes["resumed"]) == [2, 3]
        assert probes["straight"][0]["kl"] == 0 and probes["straight"][2]["kl"] > 1e-6, probes["straight"]
        for name, first in (("killed", 0), ("killed", 1), ("resumed", 2)):
            for key in ("logps", "ref_logps"):
                expected, got = probes["straight"][first][key], probes[name][first][key]
                assert np.allclose(got, expected, rtol=0, atol=1e-6), (rank, name, first, key, got, expected)
            assert np.isclose(probes[name][first]["kl"], probes["straight"][first]["kl"], rtol=1e-4, atol=1e-9)


def test_wandb_key_never_reaches_logs_or_checkpoints(toy, tmp_path):
    """A run with a W&B key logs (offline: no server here) into a run folder; the key is in no file written under a
    redirected HOME (W&B's settings and caches) or the output folder (checkpoints, W&B's run files), nor in the logs.
    Online mode is not tested: it needs W&B's GraphQL server, which a local fake would have to reimplement."""
    home, out = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    log = run(
        toy,
        out,
        "--max_steps",
        "1",
        "--save_steps",
        "1",
        "--report_to",
        "wandb",
        HOME=str(home),
        WANDB_API_KEY=SECRET,
        WANDB_MODE="offline",
        WANDB_DIR=str(out),
    )
    assert SECRET not in log
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "an offline run folder, to `wandb sync` later"
    assert b"train/loss" in next(runs[0].glob("*.wandb")).read_bytes(), "the run's metrics were logged"
    assert (out / "checkpoint-1" / "model.safetensors").is_file()
    files = [path for root in (home, out) for path in root.rglob("*") if path.is_file()]
    assert len(files) > 20
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


def test_missing_wandb_key_logs_offline_instead_of_crashing(toy, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"), HOME=str(tmp_path), WANDB_DIR=str(tmp_path))
    result = subprocess.run(
        grpo_command(toy, tmp_path / "run", "--max_steps", "1", "--report_to", "wandb"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logging offline" in result.stderr
    assert any(tmp_path.glob("wandb/offline-run-*")), "an offline run to `wandb sync` later"


@pytest.mark.parametrize("rate", [8_000, 16_000, 32_000, 44_100, 48_000])
@pytest.mark.parametrize("channels", [1, 2])
def test_any_rate_and_channel_count_reads_as_first_channel_16k(tmp_path, rate, channels):
    t = np.arange(rate) / rate
    first = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    second = (0.5 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)  # the down-mix would correlate ~0.7 only
    samples = np.stack([first, second], axis=1) if channels == 2 else first
    path = tmp_path / f"clip-{rate}-{channels}.wav"
    sf.write(path, samples, rate, subtype="FLOAT")
    audio = load_audio(str(path))
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) == 16_000
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)
    assert np.corrcoef(audio[100:-100], expected[100:-100])[0, 1] > 0.999


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt", "not_audio"])
def test_unusable_audio_files_give_a_clear_error(tmp_path, kind):
    from r1aqa.audio import AudioError, check_audio

    path = tmp_path / "clip.wav"
    if kind == "empty":
        sf.write(path, np.zeros(0, np.float32), 16_000)
    elif kind == "corrupt":
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    elif kind == "not_audio":
        path.write_text("this is a text file")
    expected = {"missing": "missing", "empty": "empty", "corrupt": "unreadable", "not_audio": "unreadable"}[kind]
    assert check_audio(str(path)) == expected
    with pytest.raises((AudioError, FileNotFoundError)) as error:
        load_audio(str(path))
    assert str(path) in str(error.value)


def bad_body_files(tmp_path, good: Path) -> dict[str, Path]:
    """Files whose header is fine (soundfile reads it) but whose body is not: a PCM WAV cut in half (a conversion
    killed mid-write), a float WAV with NaN samples, a FLAC whose second half is zeroed."""
    files = {"truncated": tmp_path / "cut.wav", "nan": tmp_path / "nan.wav", "flac": tmp_path / "lost.flac"}
    data = good.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    samples = load_audio(str(good))[:16_000].copy()
    samples[100:200] = np.nan
    sf.write(files["nan"], samples, 16_000, subtype="FLOAT")
    sf.write(files["flac"], load_audio(str(good)), 16_000)
    flac = bytearray(files["flac"].read_bytes())
    flac[len(flac) // 2 :] = bytes(len(flac) - len(flac) // 2)
    files["flac"].write_bytes(bytes(flac))
    return files


def test_audio_with_a_good_header_and_a_bad_body_is_dropped_before_training(tmp_path, caplog):
    """A header-only check passes these: the truncated WAV would train on half a clip, the NaN one would turn the loss
    into NaN, the FLAC would stop training when its batch comes. The check decodes the whole body."""
    import logging

    from r1aqa.audio import AudioError, check_audio
    from r1aqa.data import load_avqa_dataset

    good = Path(sorted(AVQA_AUDIO_DIR.glob("*.wav"))[0])
    files = bad_body_files(tmp_path, good)
    expected = {"truncated": "truncated", "nan": "corrupt", "flac": "corrupt"}
    for kind, path in files.items():
        assert sf.info(str(path)).frames > 0, f"{kind}: the header must look fine"
        assert check_audio(str(path)) == expected[kind], kind
    for kind in ("nan", "flac"):  # what training would have hit mid-run
        with pytest.raises(AudioError, match=str(files[kind])):
            load_audio(str(files[kind]))
    assert check_audio(str(good)) is None
    question = {"question_text": "What is making the sound?", "multi_choice": ["a boat", "a dog"], "answer": 1}
    jsonl = tmp_path / "train.jsonl"
    paths = [good, *files.values()]
    jsonl.write_text(
        "".join(json.dumps({**question, "id": i, "audio_path": str(p)}) + "\n" for i, p in enumerate(paths))
    )
    with caplog.at_level(logging.WARNING, logger="r1aqa.data"):
        dataset = load_avqa_dataset(str(jsonl))
    assert [row["id"] for row in dataset] == [0]
    assert "dropped 3 of 4 rows (audio_corrupt: 2, audio_truncated: 1)" in caplog.text


def test_audio_check_is_reused_for_unchanged_files_and_redone_for_changed_ones(tmp_path, monkeypatch, caplog):
    """What a resume gets: files whose size and modification time are unchanged are not decoded again; a file
    replaced since (here: cut in half) is, and its new problem counts."""
    import logging
    import shutil

    from r1aqa import data

    wavs = sorted(AVQA_AUDIO_DIR.glob("*.wav"))[:3]
    copies = [tmp_path / wav.name for wav in wavs]
    for wav, copy in zip(wavs, copies, strict=True):
        shutil.copy(wav, copy)
    question = {"question_text": "What is making the sound?", "multi_choice": ["a boat", "a dog"], "answer": 1}
    records = [{**question, "id": i, "audio_path": str(p)} for i, p in enumerate([*copies, copies[0]])]
    decoded = []
    real_check = data.check_audio
    monkeypatch.setattr(data, "check_audio", lambda path: decoded.append(path) or real_check(path))
    cache = str(tmp_path / "out" / "audio_check.json")

    with caplog.at_level(logging.INFO, logger="r1aqa.data"):
        usable, dropped = data.usable_records(records, cache_file=cache)
    assert len(usable) == 4 and not dropped and sorted(decoded) == sorted(map(str, copies)), "each file once"
    assert "Audio check: 3 files, 3 decoded now (over 1 process(es)), 0 unchanged" in caplog.text
    decoded.clear()
    assert len(data.usable_records(records, cache_file=cache)[0]) == 4 and decoded == [], "all reused"
    copies[1].write_bytes(copies[1].read_bytes()[:2000])  # replaced by a truncated file
    with caplog.at_level(logging.INFO, logger="r1aqa.data"):
        usable, dropped = data.usable_records(records, cache_file=cache)
    assert decoded == [str(copies[1])] and dropped == {"audio_truncated": 1} and len(usable) == 3
    assert "Audio check: 3 files, 1 decoded now (over 1 process(es)), 2 unchanged" in caplog.text


def test_audio_longer_than_30_s_fills_the_window_without_error(tiny_model_and_processor):
    """Qwen2-Audio sees at most 30 s: longer audio is cut to the window (750 audio tokens), never an error, and the
    prompt text around it is never truncated (the original's max_prompt_length=512 did that)."""
    _, processor = tiny_model_and_processor
    conversation = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Q"}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], audio=[np.zeros(16_000 * 45, np.float32)], return_tensors="pt")
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert int((inputs["input_ids"] == audio_id).sum()) == 750
    assert inputs["input_features"].shape[-1] == 3000
    assert processor.tokenizer.decode(inputs["input_ids"][0][-8:]).endswith("<|im_start|>assistant\n")
