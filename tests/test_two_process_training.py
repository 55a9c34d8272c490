"""Two processes, numbers compared: plain DDP (gloo) and DeepSpeed ZeRO-3 on CPU, each rank's log-prob passes against
a plain forward with its own rows' audio, shared vs per-completion encoding under ZeRO-3's parameter hooks, and the
weight updates of the two runs against each other.

Two torchrun launches of tests/helpers/two_process_logps.py (the paper's batch shape with two iterations, plain SGD, a tiny
model with a 2 s audio window to keep each launch to seconds); each rank writes its numbers to JSON.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.launch import free_port
from helpers.logp_checks import summary
from helpers.tiny_grpo import G

REPO = Path(__file__).resolve().parents[1]
# DDP trains with per-completion audio encoding, ZeRO-3 with shared encoding (the default); each recomputes every
# log-prob pass with the other encoding, and their weight updates must agree.
RUNS = {"ddp_per_completion": ["--unshared"], "zero3_shared": ["--deepspeed", str(REPO / "configs/ds_zero3.json")]}
TOLERANCE, DISCRIMINATES = 1e-4, 1e-3  # as in tests/test_training_step_row_alignment.py


@pytest.fixture(scope="module")
def two_second_model(tmp_path_factory) -> str:
    from r1aqa.tryout.tiny import write_tiny_model

    return write_tiny_model(str(tmp_path_factory.mktemp("two-second-model")), chunk_length=2)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, two_second_model) -> dict:
    """{run: [rank 0 record, rank 1 record]}, each with its weight changes under "deltas"."""
    root = tmp_path_factory.mktemp("two-processes")
    model = two_second_model
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO / "src")}
    results = {}
    for name, extra in RUNS.items():
        out = root / name
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        command += [
            "--master_port",
            str(free_port()),
            str(REPO / "tests/helpers/two_process_logps.py"),
            model,
            str(out),
        ]
        done = subprocess.run([*command, *extra], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        results[name] = []
        for rank in (0, 1):
            record = json.loads((out / f"rank{rank}.json").read_text())
            record["deltas"] = torch.load(out / f"rank{rank}.deltas.pt")
            results[name].append(record)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_each_ranks_logps_equal_a_plain_forward_with_its_own_rows_audio(ranks, run):
    for rank, record in enumerate(ranks[run]):
        assert (record["rank"], record["world_size"], record["global_step"]) == (rank, 2, 2)
        assert record["deepspeed"] == run.startswith("zero3") and record["zero3_sharded"] == record["deepspeed"]
        assert record["share_audio_encoding"] == run.endswith("_shared")
        checked = summary(record["calls"])
        assert set(checked) == {"old", "reference", "loss"}, checked
        for kind, numbers in checked.items():
            assert numbers["own_max"] < TOLERANCE, (run, rank, kind, numbers)
            assert numbers["other_min"] > DISCRIMINATES, (run, rank, kind, numbers)
            assert numbers["none_min"] > DISCRIMINATES, (run, rank, kind, numbers)
            assert numbers["other_encoding_max"] < TOLERANCE, (run, rank, kind, numbers)  # shared vs per completion
    # The ranks scored different questions (each generation: 2 x 4 questions of the 8, none on both ranks).
    questions = [
        {q for c in record["calls"] if c["kind"] == "reference" for q in c["questions"]} for record in ranks[run]
    ]
    assert len(questions[0]) == len(questions[1]) == 4 and not questions[0] & questions[1]


@pytest.mark.slow
def test_weight_updates_agree_across_ranks_launchers_and_encodings(ranks):
    """With SGD a weight's change is the learning rate times its summed, rank-averaged gradients: ZeRO-3 with shared
    encoding and plain DDP with per-completion encoding must change every weight alike, on every rank (same seed,
    same data; the log-probs above show that both encodings give the same numbers, so both sample alike)."""
    reference = ranks["zero3_shared"][0]["deltas"]
    for name, delta in reference.items():
        assert delta.abs().max() > 0, f"{name} did not move"
        for run, records in ranks.items():
            for record in records:
                torch.testing.assert_close(
                    record["deltas"][name], delta, rtol=0, atol=1e-3 * delta.abs().max().item(), msg=f"{run} {name}"
                )


@pytest.fixture(scope="module")
def one_process(ranks, two_second_model, tmp_path_factory) -> dict:
    """{run: the one-process run of the same global batch that replays the completions the run's two ranks sampled}
    (runs that sampled the same completions share one)."""
    from helpers.two_process_logps import train_one_process

    replays, out = [], {}
    for run, records in ranks.items():
        calls = [call for record in records for call in record["generations"]]
        for done_calls, result in replays:
            if done_calls == calls:
                out[run] = result
                break
        else:
            result = train_one_process(two_second_model, str(tmp_path_factory.mktemp(f"one-{run}")), calls)
            replays.append((calls, result))
            out[run] = result
    return out


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_two_processes_equal_one_process_with_the_same_global_batch(ranks, one_process, run):
    """Two processes x (2 questions x G) x accumulation 2 against one process x (2 questions x G) x accumulation 4,
    on the completions the two processes sampled: the logged loss of each step and the change of every weight
    (plain SGD, no clipping: the learning rate times the summed gradients of both steps) agree to float32 rounding
    (the runs sum the same per-row terms in other groupings and paddings). Relative tolerance 1e-3: measured, the
    largest weight-change difference is 5.1e-5 of the largest change (the audio encoder's conv1), the second step's
    loss differs by 2e-6 of itself (the first step's loss is 0 up to 1e-8 in both: ratio 1, KL 0); a loss or gradient
    off by a factor of 2 (e.g. divided by the number of processes) is off by 0.5."""
    single = one_process[run]
    assert single["unused"] == 0 and single["generated_rows"] == 2 * 2 * 2 * G == 32
    assert single["global_step"] == 2
    for rank, record in enumerate(ranks[run]):
        assert len(record["loss"]) == len(single["loss"]) == 2, (record["loss"], single["loss"])
        for step, (two, one) in enumerate(zip(record["loss"], single["loss"], strict=True)):
            assert abs(two - one) <= 1e-3 * max(abs(one), 1e-3), (run, rank, step, two, one)
        for name, delta in single["deltas"].items():
            assert delta.abs().max() > 0, f"{name} did not move"
            torch.testing.assert_close(
                record["deltas"][name], delta, rtol=0, atol=1e-3 * delta.abs().max().item(), msg=f"{run} {rank} {name}"
            )
