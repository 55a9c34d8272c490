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
        start(tmp_path, resume=True, save_only_model=True)


# --- bounded disk: only the newest checkpoint keeps its resume state ---------------------------------------------------


def add_rng_state(folder, ranks=1):
    for rank in range(ranks):
        (folder / (f"rng_state_{rank}.pth" if ranks > 1 else "rng_state.pth")).write_bytes(b"rng")
    return folder


@pytest.mark.parametrize("deepspeed", [False, True])
def test_removing_the_state_keeps_an_evaluable_weights_only_checkpoint(tmp_path, deepspeed):
    folder = add_rng_state(make_checkpoint(tmp_path / "checkpoint-3", deepspeed=deepspeed), ranks=2)
    (folder / "config.json").write_text("{}")
    assert checkpoint_problem(str(folder), resumable=True) is None
    checkpoints.remove_state(str(folder))
    assert checkpoints.state_paths(str(folder)) == []
    assert checkpoint_problem(str(folder)) is None, "still evaluable"
    assert checkpoint_problem(str(folder), resumable=True) is not None, "no longer resumable"
    left = sorted(p.name for p in folder.iterdir())
    assert left == ["config.json", "model.safetensors", "trainer_state.json", "training_args.bin"]


def on_save(callback, run, step):
    from types import SimpleNamespace

    callback.on_save(
        SimpleNamespace(output_dir=str(run)), SimpleNamespace(global_step=step, is_world_process_zero=True), None
    )


def has_state(folder) -> bool:
    return bool(checkpoints.state_paths(str(folder)))


def test_older_state_is_removed_only_once_a_newer_checkpoint_is_resumable(tmp_path):
    from r1aqa.runs import KeepNewestState

    run = tmp_path / "run"
    for step in (1, 2):
        add_rng_state(make_checkpoint(run / f"checkpoint-{step}"))
    # A save cut short (no scheduler.pt yet): the last good state must survive.
    add_rng_state(make_checkpoint(run / "checkpoint-3"))
    (run / "checkpoint-3" / "scheduler.pt").unlink()
    callback = KeepNewestState()
    on_save(callback, run, 3)
    assert all(has_state(run / f"checkpoint-{step}") for step in (1, 2))
    (run / "checkpoint-3" / "scheduler.pt").write_bytes(b"x")  # now complete
    on_save(callback, run, 3)
    assert [has_state(run / f"checkpoint-{step}") for step in (1, 2, 3)] == [False, False, True]
    assert last_resumable_checkpoint(str(run)) == str(run / "checkpoint-3")
    assert [step for step, _ in complete_checkpoints(str(run))] == [1, 2, 3], "all still evaluable"


# --- where a run starts: never silently over an earlier run ------------------------------------------------------------


def start(run, resume=False, resume_from=None, overwrite=False, save_only_model=False):
    from r1aqa.runs import start_checkpoint

    return start_checkpoint(str(run), resume, resume_from, overwrite, save_only_model)


def test_a_folder_with_checkpoints_and_no_resume_is_refused_with_exit_code_2(tmp_path, capsys):
    run = tmp_path / "run"
    assert start(run) is None, "an empty or new folder starts from step 0"
    make_checkpoint(run / "checkpoint-2")
    with pytest.raises(SystemExit) as stopped:
        start(run)
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert "--resume true" in message and "OUTPUT_DIR" in message and "--overwrite_output_dir true" in message
    assert (run / "checkpoint-2").is_dir(), "nothing was touched"


def test_overwrite_output_dir_deletes_the_old_checkpoints(tmp_path):
    run = tmp_path / "run"
    make_checkpoint(run / "checkpoint-2")
    (run / "keep.txt").write_text("x")
    assert start(run, overwrite=True) is None
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]


def test_resume_from_checkpoint_path_resumes_there_or_says_why_not(tmp_path, capsys):
    run = tmp_path / "run"
    for step in (1, 2):
        make_checkpoint(run / f"checkpoint-{step}", optimizer=step == 2)
    make_checkpoint(run / "checkpoint-3", state=False)  # a save cut short
    assert start(run, resume_from=str(run / "checkpoint-2")) == str(run / "checkpoint-2")
    with pytest.raises(SystemExit) as stopped:
        start(run, resume_from=str(run / "checkpoint-1"))
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert "no optimizer state" in message and "--resume true" in message
    with pytest.raises(SystemExit) as stopped:
        start(run, resume_from=str(run / "checkpoint-9"))
    assert stopped.value.code == 2
    assert "no such folder" in capsys.readouterr().err
    assert start(run, resume_from="true") == str(run / "checkpoint-2"), "`true` means --resume true"


# --- the paper's batch on any number of processes ------------------------------------------------------------------


@pytest.mark.parametrize(("world", "accumulation"), [(1, 16), (2, 8), (4, 4), (8, 2), (16, 1)])
def test_accumulation_reaches_16_questions_on_any_reachable_world_size(world, accumulation):
    from r1aqa.runs import derive_accumulation

    assert derive_accumulation(16, 8, 8, world) == accumulation
    assert world * 8 * accumulation == 16 * 8


@pytest.mark.parametrize("world", [3, 5, 32])
def test_a_world_size_that_cannot_reach_the_batch_is_refused_naming_those_that_can(world, capsys):
    from r1aqa.runs import derive_accumulation

    with pytest.raises(SystemExit) as stopped:
        derive_accumulation(16, 8, 8, world)
    assert stopped.value.code == 2
    assert "World sizes that can: 1, 2, 4, 8, 16" in capsys.readouterr().err


def test_batch_line_says_when_an_explicit_accumulation_is_not_the_recipes_batch():
    from r1aqa.runs import batch_line

    paper = batch_line(16, 8, 8, 4, 4, explicit=False)
    assert paper.startswith("Batch: 16 questions x 8 completions per step = world size 4 x per-device batch 8")
    assert "NOT" not in paper
    other = batch_line(16, 8, 8, 4, 2, explicit=True)
    assert other.startswith("Batch: 8 questions x 8 completions per step") and "NOT the recipe's 16" in other
