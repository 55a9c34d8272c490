"""Session-wide fixtures: the tiny Qwen2-Audio is built once per test session (imports cost seconds)."""

import importlib.util
import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # deepspeed warns on import without CUDA otherwise
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per vLLM engine (tests marked vllm)


def pytest_collection_modifyitems(config, items):
    """Tests marked `vllm` are skipped, with the reason, where vLLM is not installed."""
    if importlib.util.find_spec("vllm") is not None:
        return
    skip = pytest.mark.skip(reason="vLLM is not installed here: `make test-vllm` runs these in .venv-vllm")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random Qwen2-Audio (30 s window, the real Qwen2-Audio processor layout) saved to disk."""
    from r1aqa.tryout.tiny import write_tiny_model

    return write_tiny_model(str(tmp_path_factory.mktemp("tiny-qwen2-audio")), seed=0)


@pytest.fixture(scope="session")
def tiny_model_and_processor(tiny_model_dir):
    """The tiny model (eval mode, fp32) and its processor, loaded once. Tests must not modify the model."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    processor.tokenizer.padding_side = "left"
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    return model, processor


@pytest.fixture(scope="session")
def tiny_omni_dir(tmp_path_factory) -> str:
    """A tiny random Qwen2.5-Omni thinker (30 s window, Omni's tokens and chat template) saved to disk, with the toy
    task's whole-word tokens so the CPU try-out's data also runs on it."""
    from r1aqa.tryout.tiny import write_tiny_model

    return write_tiny_model(
        str(tmp_path_factory.mktemp("tiny-qwen2.5-omni")),
        extra_tokens=("<answer>", "</answer>", "low", "top"),
        family="qwen2_5_omni",
    )


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> dict:
    """What run_grpo.sh builds on CPU, smaller: the tiny model with the demo vocabulary and a 16-question toy task."""
    from r1aqa.tryout.tiny import write_tiny_model
    from r1aqa.tryout.toy_task import write_toy_task

    root = tmp_path_factory.mktemp("toy")
    return {
        "model": write_tiny_model(str(root / "model"), extra_tokens=("<answer>", "</answer>", "low", "top")),
        "data": write_toy_task(str(root / "data"), n_train=16, n_test=4)["train_file"],
    }
