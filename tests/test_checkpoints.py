"""Which checkpoints are complete: evaluable (weights whole, trainer state readable) and resumable (plus optimizer and
scheduler state). Synthetic folders laid out as HF's Trainer and DeepSpeed write them."""

import json
import struct

import pytest

from r1aqa import checkpoints
from r1aqa.checkpoints import checkpoint_problem, complete_checkpoints, last_resumable_checkpoint


def write_safetensors(path, n_bytes=16, truncate_by=0):
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_bytes // 4], "data_offsets": [0, n_bytes]}}).encode()
    data = struct.pack("<Q", len(header)) + header + bytes(n_bytes)
    path.write_bytes(data[: len(data) - truncate_by])


def make_checkpoint(folder, weights=True, state=True, optimizer=True, deepspeed=False):
    folder.mkdir(parents=True)
    (folder / "training_args.bin").write_bytes(b"args")
    if weights:
        write_safetensors(folder / "model.safetensors")
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": int(folder.name.split("-")[1])}))
    if optimizer:
        if deepspeed:
            (folder / "global_step7").mkdir()
            (folder / "global_step7" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
            (folder / "latest").write_text("global_step7")
        else:
            (folder / "optimizer.pt").write_bytes(b"x")
        (folder / "scheduler.pt").write_bytes(b"x")
    return folder


@pytest.mark.parametrize(
    ("damage", "evaluable", "resumable"),
    [
        (None, True, True),
        ("no_state", False, False),
        ("truncated_state", False, False),
        ("no_weights", False, False),
        ("truncated_weights", False, False),
        ("no_optimizer", True, False),
        ("no_scheduler", True, False),
        ("deepspeed", True, True),
        ("deepspeed_tag_missing", True, False),
        ("missing_shard", False, False),
    ],
)
def test_complete_means_evaluable_and_resumable(tmp_path, damage, evaluable, resumable):
    folder = make_checkpoint(tmp_path / "checkpoint-5", deepspeed=damage and damage.startswith("deepspeed"))
    if damage == "no_state":
        (folder / "trainer_state.json").unlink()
    elif damage == "truncated_state":
        (folder / "trainer_state.json").write_text('{"global_step": 5, "log_hist')
    elif damage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "truncated_weights":
        write_safetensors(folder / "model.safetensors", truncate_by=3)
    elif damage == "no_optimizer":
        (folder / "optimizer.pt").unlink()
    elif damage == "no_scheduler":
        (folder / "scheduler.pt").unlink()
    elif damage == "deepspeed_tag_missing":
        (folder / "latest").write_text("global_step9")
    elif damage == "missing_shard":
        (folder / "model.safetensors").unlink()
        write_safetensors(folder / "model-00001-of-00002.safetensors")
        index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert (checkpoint_problem(str(folder)) is None) == evaluable
    assert (checkpoint_problem(str(folder), resumable=True) is None) == resumable


def test_merged_model_folder_needs_weights_only(tmp_path):
    folder = tmp_path / "checkpoint-100"  # r1aqa.merge_lora output: no training files
    folder.mkdir()
    write_safetensors(folder / "model.safetensors")
    assert checkpoint_problem(str(folder)) is None


def test_resume_takes_the_newest_resumable_and_names_what_it_skips(tmp_path):
    make_checkpoint(tmp_path / "checkpoint-100")
    make_checkpoint(tmp_path / "checkpoint-200")
    broken = make_checkpoint(tmp_path / "checkpoint-300")
    (broken / "trainer_state.json").write_text('{"global_st')
    (tmp_path / "checkpoint-400").mkdir()  # a save that had not started writing
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name
    warnings = []
    assert last_resumable_checkpoint(str(tmp_path), warnings.append) == str(tmp_path / "checkpoint-200")
    assert [w.split(":")[0] for w in warnings] == [
        f"Skipping {tmp_path / 'checkpoint-400'} for resuming",
        f"Skipping {tmp_path / 'checkpoint-300'} for resuming",
    ]
    assert "trainer_state.json is unreadable or truncated" in warnings[1]
    assert [step for step, _ in complete_checkpoints(str(tmp_path), warn=warnings.append)] == [100, 200]
    assert last_resumable_checkpoint(str(tmp_path / "missing")) is None


def test_resume_from_weights_only_checkpoints_stops_with_a_clear_message(tmp_path):
    make_checkpoint(tmp_path / "checkpoint-100", optimizer=False)
    with pytest.raises(ValueError, match="holds weights only.*save_only_model: false"):
        last_resumable_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match="needs resumable checkpoints"):
        checkpoints.resume_checkpoint(str(tmp_path), save_only_model=True)


def test_cli_lists_evaluable_steps(tmp_path, capsys):
    make_checkpoint(tmp_path / "checkpoint-20", optimizer=False)
    make_checkpoint(tmp_path / "checkpoint-3")
    make_checkpoint(tmp_path / "checkpoint-100", state=False)
    assert checkpoints.main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == ["3", "20"]
    assert "checkpoint-100: no trainer_state.json" in captured.err
