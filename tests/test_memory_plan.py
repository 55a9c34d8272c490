"""r1aqa.plan: the real Qwen2-Audio-7B-Instruct architecture on the meta device, and the memory/time table."""

from pathlib import Path

import pytest

from r1aqa import plan

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPE = str(CONFIGS / "grpo_qwen2_audio_7b.yaml")
ARCH_CONFIGS = {"Qwen/Qwen2-Audio-7B-Instruct": CONFIGS / "qwen2_audio_7b_instruct_config.json",
                "Qwen/Qwen2.5-Omni-7B": CONFIGS / "qwen2_5_omni_7b_thinker_config.json"}  # fmt: skip


@pytest.fixture(scope="module")
def size():
    return plan.KNOWN_MODELS["Qwen/Qwen2-Audio-7B-Instruct"]


@pytest.mark.parametrize("model", sorted(ARCH_CONFIGS))
def test_known_models_are_their_published_configs_counted_on_the_meta_device(model, capsys):
    """The numbers written in r1aqa.plan are the real architecture's, and --arch_config gives the same table."""
    assert plan.count_parameters(plan.build_meta_model(ARCH_CONFIGS[model])) == plan.KNOWN_MODELS[model]
    recipe = RECIPE if "Audio" in model else OMNI_RECIPE
    known, built = (
        plan.main(["--recipe", recipe]),
        plan.main(["--recipe", recipe, "--arch_config", str(ARCH_CONFIGS[model])]),
    )
    assert known.splitlines()[1:] == built.splitlines()[1:] and "meta device" in built.splitlines()[0]


def test_parameter_counts_match_the_architecture_arithmetic(size):
    """docs/recipe.md §9: ~7.76B language model (embeddings and head included), ~0.64B encoder, ~5M projector, ~8.4B."""
    h, layers, inter, vocab = 4096, 32, 11008, 156032
    per_layer = 3 * (h * h + h) + h * h + 3 * h * inter + 2 * h  # q/k/v with bias, o, SwiGLU MLP, two RMSNorms
    assert size.language_model == vocab * h + layers * per_layer + h
    assert size.lm_head == vocab * h
    assert size.language_model + size.lm_head == pytest.approx(7.76e9, rel=0.01)
    assert size.audio_encoder == pytest.approx(0.64e9, rel=0.01)
    assert size.projector == 1280 * 4096 + 4096
    assert size.total == pytest.approx(8.4e9, rel=0.02)
    assert size.largest_layer == vocab * h  # the embedding / LM head


def test_table_prints_every_setup_and_a_recommendation(capsys):
    report = plan.main(["--recipe", RECIPE])
    assert report == capsys.readouterr().out.strip()
    lines = report.splitlines()
    rows = [line for line in lines if line.strip()[:1].isdigit() and "|" in line]
    assert len(rows) == 4 * 2 * 2  # GPUs x offload x checkpointing
    for gpus in plan.GPU_COUNTS:
        assert sum(line.split()[0] == str(gpus) for line in rows) == 4
    recommendation = lines[-1]
    assert recommendation.startswith("Recommendation")
    assert "configs/ds_zero3" in recommendation
    assert "total" in report and "host RAM" in report and "s/step" in report


def test_more_gpus_need_less_memory_and_time_per_gpu(size):
    args = plan.parse_args(["--recipe", RECIPE])
    work = plan.Workload(8, 8, 750, 100, 256, share_audio_encoding=True)
    rows = {(r.gpus, r.offload, r.checkpointing): r for r in plan.plan(size, work, args)}
    assert rows[(8, False, False)].per_gpu < rows[(1, False, False)].per_gpu
    assert rows[(8, False, False)].step_seconds < rows[(1, False, False)].step_seconds / 7
    assert rows[(1, True, False)].per_gpu < rows[(1, False, False)].per_gpu, "offload moves model states to the host"
    assert rows[(1, False, True)].activations < rows[(1, False, False)].activations, "checkpointing"
    separate = plan.Workload(8, 8, 750, 100, 256, share_audio_encoding=False)
    assert plan.activation_bytes(size, separate, False, 40) > plan.activation_bytes(size, work, False, 40)


OMNI_RECIPE = str(CONFIGS / "grpo_qwen2_5_omni_7b.yaml")


def test_omni_7b_thinker_counts_and_table(capsys):
    """docs/recipe.md §11: the Qwen2.5-Omni-7B thinker, from its published config: 8.93B parameters, of which the
    vision tower (0.677B) is frozen; its audio encoder includes the projection to the language model."""
    size = plan.KNOWN_MODELS["Qwen/Qwen2.5-Omni-7B"]
    h, layers, inter, vocab, kv = 3584, 28, 18944, 152064, 512  # kv: 4 key/value heads of 128
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * inter + 2 * h  # q/k/v with bias, o, MLP, norms
    assert size.language_model == vocab * h + layers * per_layer + h
    assert size.lm_head == vocab * h
    assert (size.projector, size.packed_encoder, size.kv_hidden) == (0, True, kv)
    assert size.audio_encoder == pytest.approx(0.640e9, rel=0.005)
    assert size.vision == pytest.approx(0.677e9, rel=0.005)
    assert size.total == 8_931_813_888
    report = plan.main(["--recipe", OMNI_RECIPE])
    assert report == capsys.readouterr().out.strip()
    assert report.startswith("Qwen2.5-Omni thinker parameters") and "vision encoder" in report
    assert sum(line.strip()[:1].isdigit() and "|" in line for line in report.splitlines()) == 16
    # frozen vision: less model-state memory than if all 8.93B parameters were trained
    args = plan.parse_args(["--recipe", OMNI_RECIPE])
    work = plan.Workload(8, 8, 750, 100, 256, share_audio_encoding=True)
    frozen = {(r.gpus, r.offload, r.checkpointing): r for r in plan.plan(size, work, args)}
    trained = {(r.gpus, r.offload, r.checkpointing): r for r in plan.plan(size._replace(vision=0,
               language_model=size.language_model + size.vision), work, args)}  # fmt: skip
    assert frozen[(8, False, False)].model_states < trained[(8, False, False)].model_states


def test_recipe_without_a_known_architecture_needs_arch_config(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: Qwen/Qwen2.5-Omni-3B\n")
    with pytest.raises(SystemExit, match="--arch_config"):
        plan.main(["--recipe", str(recipe)])
