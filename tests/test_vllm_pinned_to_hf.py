"""vLLM pinned to what the trainer and the HF processor decide (r1aqa.vllm_audio):

- rollouts stop at the trainer's end ids even when the model folder's generation_config.json names none;
- rollouts never sample a multimodal placeholder, even where it is the model's first choice;
- the engine expands `<|AUDIO|>` into as many positions as the HF processor for 1, 10 and 30 s clips (Qwen2-Audio's
  real feature-extractor configuration), and refuses to start when it would not;
- evaluation seeds each request from its item: a rerun repeats, and an item's prediction does not depend on its batch.

Marked `vllm`: run with `.venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_pinned_to_hf.py`. The models are the tiny
Qwen2-Audio with a head size of 32 (vLLM's CPU attention needs at least 32).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers.paths import AVQA_AUDIO_DIR, MMAU_2025_03

from r1aqa.audio import prompts_with_audio
from r1aqa.prompts import format_question, user_turn

pytestmark = pytest.mark.vllm
CLIPS = sorted(str(p) for p in AVQA_AUDIO_DIR.glob("*.wav"))
QUESTION = format_question("What is making the sound?", ["a boat", "a dog"])

# Qwen2-Audio-7B-Instruct's preprocessor_config.json (WhisperFeatureExtractor), every field.
QWEN2_AUDIO_PREPROCESSOR = {
    "chunk_length": 30,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "Qwen2AudioProcessor",
    "return_attention_mask": True,
    "sampling_rate": 16000,
}


@pytest.fixture(scope="module")
def real_processor_model_dir(tmp_path_factory) -> str:
    """The tiny model (head size 32) with Qwen2-Audio-7B-Instruct's feature-extractor configuration."""
    from r1aqa.tryout.tiny import write_tiny_model

    folder = Path(write_tiny_model(str(tmp_path_factory.mktemp("tiny-vllm-real-fe")), seed=0, head_dim=32))
    (folder / "preprocessor_config.json").write_text(json.dumps(QWEN2_AUDIO_PREPROCESSOR))
    return str(folder)


@pytest.fixture(scope="module")
def llm(real_processor_model_dir):
    from r1aqa.vllm_audio import load_llm

    return load_llm(real_processor_model_dir, "cpu")


# ---- prompt expansion ---------------------------------------------------------------------------------------------


def test_vllm_expands_audio_like_the_hf_processor_for_1_10_and_30_s(llm, real_processor_model_dir):
    from r1aqa.models import load_processor
    from r1aqa.vllm_audio import check_audio_expansion

    processor = load_processor(real_processor_model_dir)
    assert processor.feature_extractor.to_dict()["n_samples"] == 480000  # the real configuration was read
    # 100 frames per second, then two stride-2 stages: 1 s -> 25, 10 s -> 250, 30 s (the window) -> 750 positions
    assert check_audio_expansion(llm, processor) == {1: (25, 25), 10: (250, 250), 30: (750, 750)}


def test_engine_refuses_a_processor_that_expands_differently(llm, real_processor_model_dir):
    """A scoring processor with a 2 s window (the CPU demo's) beside an engine started from a 30 s folder."""
    from transformers import WhisperFeatureExtractor

    from r1aqa.models import load_processor
    from r1aqa.vllm_audio import check_audio_expansion

    processor = load_processor(real_processor_model_dir)
    processor.feature_extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16_000, chunk_length=2)
    with pytest.raises(RuntimeError, match=r"10 s clip: HF 50, vLLM 250 positions"):
        check_audio_expansion(llm, processor)


# ---- rollouts -----------------------------------------------------------------------------------------------------


def plant_first_choice(model, token_id: int) -> None:
    """Make `token_id` the model's overwhelming first choice at every generated position: every token embedding
    gets a large constant in dimension 0, the final norm keeps only that dimension, and only `token_id`'s LM-head row
    reads it (logit ~ +80; every other token 0)."""
    text = model.model.language_model
    with torch.no_grad():
        text.embed_tokens.weight[:, 0] += 50.0
        text.norm.weight.zero_()
        text.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[token_id, 0] = 10.0


def planted_model(folder: Path, first_choice: str):
    """A tiny model in `folder` whose tokenizer's eos is `<|endoftext|>` and whose generation_config.json names no
    eos, steered to `first_choice`; returned in memory with `generation_config.eos_token_id` = [`<|endoftext|>`,
    `<|im_end|>`] (Qwen2-Audio-7B-Instruct's end ids: what the trainer stops at). vLLM, started from the folder,
    knows only `<|endoftext|>`."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from r1aqa.tryout.tiny import write_tiny_model

    write_tiny_model(str(folder), seed=0, head_dim=32)
    processor = AutoProcessor.from_pretrained(folder)
    processor.tokenizer.eos_token = "<|endoftext|>"
    processor.save_pretrained(folder)
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", first_choice)}
    model = Qwen2AudioForConditionalGeneration.from_pretrained(folder)
    plant_first_choice(model, ids[first_choice])
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    saved = json.loads((folder / "generation_config.json").read_text())
    assert "eos_token_id" not in saved, saved
    model.generation_config.eos_token_id = [ids["<|endoftext|>"], ids["<|im_end|>"]]
    return model, ids


def vllm_rollouts(folder: Path, model, tmp_path: Path) -> tuple[object, list[list[int]]]:
    """One generation batch (2 clips x 4 completions, at most 8 tokens) with vLLM; the raw completions vLLM returned."""
    from helpers.tiny_grpo import make_trainer

    rows = [{"prompt": user_turn(clip, QUESTION), "solution": "<answer>a dog</answer>"} for clip in CLIPS[:2]]
    trainer = make_trainer(
        str(folder),
        str(tmp_path / "out"),
        model=model,
        dataset=Dataset.from_list(rows),
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=2048,
        beta=0.0,
    )
    trainer.reward_funcs = [lambda completions, **kwargs: [0.0] * len(completions)]
    engine = trainer.vllm_generation.llm._llm
    raw = []
    generate = engine.generate

    def recorded(prompts, *args, **kwargs):
        outputs = generate(prompts, *args, **kwargs)
        raw.extend(list(o.outputs[0].token_ids) for o in outputs)
        return outputs

    engine.generate = recorded
    trainer._generate_and_score_completions([row for row in rows for _ in range(4)])
    return trainer, raw


def test_vllm_rollouts_stop_at_the_trainers_end_ids_when_the_folder_names_none(tmp_path):
    model, ids = planted_model(tmp_path / "model", "<|im_end|>")
    trainer, raw = vllm_rollouts(tmp_path / "model", model, tmp_path)
    assert ids["<|im_end|>"] in trainer.eos_token_ids
    assert len(raw) == 8
    assert all(completion == [ids["<|im_end|>"]] for completion in raw), raw  # not <|im_end|> x 8


def test_vllm_rollouts_never_sample_a_placeholder_even_as_first_choice(tmp_path):
    model, ids = planted_model(tmp_path / "model", "<|AUDIO|>")
    _, raw = vllm_rollouts(tmp_path / "model", model, tmp_path)
    assert len(raw) == 8 and all(raw)
    assert not any(ids["<|AUDIO|>"] in completion for completion in raw), raw


# ---- evaluation seeds ---------------------------------------------------------------------------------------------


def test_each_evaluation_request_is_seeded_from_its_item(llm, real_processor_model_dir):
    """Sampling (the checkpoint's generation config, as `--decoding original`): an item's completion is the same
    alone, in a batch, at another position and on a rerun; different items draw differently."""
    from transformers import GenerationConfig

    from r1aqa.decoding import generation_config, sampling_params
    from r1aqa.evaluate import generate_ids_vllm
    from r1aqa.models import load_processor

    processor = load_processor(real_processor_model_dir)
    decoding = {"mode": "greedy", "max_new_tokens": 12, "overrides": {"do_sample": True, "temperature": 1.0}}
    config = generation_config(
        GenerationConfig.from_pretrained(real_processor_model_dir), processor.tokenizer, decoding
    )
    assert config.do_sample
    silent = np.zeros(16_000, dtype=np.float32)  # the same prompt for every item: only the seed tells them apart
    conversation = prompts_with_audio([user_turn(CLIPS[0], QUESTION)])[0]
    conversation[0]["content"][0]["audio"] = silent
    ids = ["item-a", "item-b", "item-c"]

    def run(items):
        params = sampling_params(config, 42, items)
        return dict(zip(items, generate_ids_vllm(llm, processor, [conversation] * len(items), params), strict=True))

    together = run(ids)
    assert run(["item-c"]) == {"item-c": together["item-c"]}
    assert run(["item-c", "item-a"]) == {"item-c": together["item-c"], "item-a": together["item-a"]}
    assert run(ids) == together
    assert len({tuple(v) for v in together.values()}) > 1, "items must not share one seed"


def test_vllm_evaluation_predictions_do_not_depend_on_the_batch_size(real_processor_model_dir, tmp_path):
    """`r1aqa.evaluate --backend vllm` with sampling: batch 1 and batch 3 give the same predictions item by item."""
    from r1aqa import evaluate

    item = json.loads(MMAU_2025_03.read_text())[0]
    items = [{**item, "id": f"item-{i}", "audio_id": f"./audios/{Path(CLIPS[0]).name}"} for i in range(3)]
    data_file = tmp_path / "items.json"
    data_file.write_text(json.dumps(items))
    (tmp_path / "audios").mkdir()
    (tmp_path / "audios" / Path(CLIPS[0]).name).symlink_to(CLIPS[0])
    outputs = {}
    for batch in (1, 3):
        out_file = tmp_path / f"b{batch}.json"
        argv = [
            "--model_path", real_processor_model_dir, "--data_file", str(data_file),
            "--audio_dir", str(tmp_path / "audios"), "--out_file", str(out_file), "--max_new_tokens", "8",
            "--batch_size", str(batch), "--device", "cpu", "--decoding", "greedy", "--do_sample", "true",
            "--temperature", "1.0", "--backend", "vllm",
        ]  # fmt: skip
        assert evaluate.main(argv) == 0
        outputs[batch] = [entry["model_raw_output"] for entry in json.loads(out_file.read_text())]
    assert outputs[1] == outputs[3]
    assert len(set(outputs[1])) > 1, "the three identical questions are sampled with their own seeds"
