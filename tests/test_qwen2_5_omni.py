"""The second model family, a Qwen2.5-Omni thinker (r1aqa.models), on the tiny random thinker (r1aqa.tryout.tiny).

The audio-path checks of test_audio_reaches_logprobs.py, test_shared_audio_encoding.py and test_evaluation.py, for an audio encoder that packs the
batch along time: log-probs equal a plain forward pass with the audio and differ without it; each completion is
scored with its own clip; training moves the audio encoder (and never the vision tower); shared audio encoding gives
the same log-probs and gradients as per-completion encoding; evaluation with batch 4 equals batch 1. Also: loading
(a thinker folder or a full Omni checkpoint), the processor and the chat template.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.audio_checks import (
    assert_same,
    check_each_completion_is_scored_with_its_own_clip,
    check_logps_match_a_plain_forward_with_audio,
    loss_logps_and_grads,
    loss_pass_policy_logps,
)
from helpers.tiny_grpo import CLIPS, G, make_trainer, rows
from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict

from r1aqa import evaluate as evaluator
from r1aqa.audio import load_audio
from r1aqa.audio_sharing import find_audio_tower
from r1aqa.models import (
    OMNI_SYSTEM_PROMPT,
    QWEN2_5_OMNI,
    Qwen2_5OmniAudioProcessor,
    detect_family,
    load_model,
    load_processor,
    placeholder_token_ids,
)
from r1aqa.prompts import format_question, user_turn

# Qwen/Qwen2.5-Omni-7B's chat template as docs/recipe.md §11 sources it, verbatim: the default system message is
# "You are a helpful assistant."; the model card passes its own system prompt.
HUB_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}{% set video_count = "
    "namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in "
    "message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>{% elif content['type'] == 'audio' or 'audio' in content or "
    "'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio "
    "{{ audio_count.value }}: {% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif content['type'] == 'video' or "
    "'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
# docs/recipe.md §11's rendering of one training prompt (the recipes' `system_prompt: default`).
RECIPE_RENDERING = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|audio_bos|><|AUDIO|><|audio_eos|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
)
PARAMETERS = [
    "model.audio_tower.conv1.weight",
    "model.audio_tower.layers.0.self_attn.q_proj.weight",
    "model.audio_tower.proj.weight",
    "model.language_model.layers.0.mlp.up_proj.weight",
    "lm_head.weight",
]


def tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(16_000 * seconds)) / 16_000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


class EncodedClips:
    """Counts the clips the packed audio encoder encodes (`feature_lens` after any pre-hook)."""

    def __init__(self, model):
        self.clips = 0
        self.handle = find_audio_tower(model).register_forward_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs, output):
        self.clips += kwargs["feature_lens"].numel()


@pytest.fixture(scope="module")
def omni(tiny_omni_dir):
    return load_model(tiny_omni_dir).eval(), load_processor(tiny_omni_dir)


# ---- loading, processor, template ----------------------------------------------------------------------------------


def test_tiny_omni_is_a_thinker_with_frozen_vision_and_all_placeholders_known(omni, tiny_omni_dir):
    model, processor = omni
    assert detect_family(tiny_omni_dir).name == QWEN2_5_OMNI
    assert type(model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert isinstance(processor, Qwen2_5OmniAudioProcessor)  # the full processor needs torchvision (r1aqa.models)
    assert processor.tokenizer.padding_side == "left"
    assert not any(p.requires_grad for p in model.model.visual.parameters())
    assert all(p.requires_grad for p in model.model.audio_tower.parameters())
    tokens = ("<|AUDIO|>", "<|IMAGE|>", "<|VIDEO|>")
    assert placeholder_token_ids(model.config) == sorted(processor.tokenizer.convert_tokens_to_ids(tokens))


def test_chat_template_is_the_hub_template(omni, tiny_omni_dir):
    _, processor = omni
    assert processor.chat_template == HUB_TEMPLATE
    prompt = format_question("What happened in the audio?", ["motorboat", "Yacht consignment"])
    conversation = user_turn("clip.wav", prompt)
    ours = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    hub = processor.tokenizer.apply_chat_template(
        conversation, chat_template=HUB_TEMPLATE, add_generation_prompt=True, tokenize=False
    )
    assert ours == hub == RECIPE_RENDERING.format(prompt=prompt)
    # `system_prompt: qwen` renders as the hub template given the model card's prompt as a system message
    card = load_processor(tiny_omni_dir, system_prompt="qwen")
    system = [{"role": "system", "content": OMNI_SYSTEM_PROMPT}]
    assert card.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False) == (
        processor.tokenizer.apply_chat_template(
            system + conversation, chat_template=HUB_TEMPLATE, add_generation_prompt=True, tokenize=False
        )
    )
    # `datasets` gives every content part every key (missing ones as None): the rendering must not change
    padded = [{"role": "user", "content": [{"type": p["type"], "text": p.get("text"), "path": p.get("path")}
                                           for p in conversation[0]["content"]]}]  # fmt: skip
    assert processor.apply_chat_template(padded, add_generation_prompt=True, tokenize=False) == ours


@pytest.mark.parametrize("seconds,expected_tokens", [(1.0, 25), (3.0, 75), ("real_10s", 250)])
def test_audio_processor_expands_and_extracts_as_the_omni_processor(omni, seconds, expected_tokens):
    """Same features and placeholder count as `Qwen2_5OmniProcessor`'s own audio code (run on our components)."""
    from transformers import Qwen2_5OmniProcessor

    _, processor = omni
    samples = load_audio(CLIPS[0]) if seconds == "real_10s" else tone(seconds)
    text = processor.apply_chat_template(user_turn("x", "Q"), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], audio=[samples], return_tensors="pt")
    assert sorted(inputs) == ["attention_mask", "feature_attention_mask", "input_features", "input_ids"]
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert int((inputs["input_ids"] == audio_id).sum()) == expected_tokens
    kwargs = dict(Qwen2_5OmniProcessor.audio_kwargs, return_tensors="pt")
    omni_inputs, replacements = Qwen2_5OmniProcessor._process_audio(processor, [samples], **kwargs)
    assert int(omni_inputs["num_audio_tokens"][0]) == expected_tokens == replacements[0].count("<|AUDIO|>")
    torch.testing.assert_close(inputs["input_features"], omni_inputs["input_features"], atol=0, rtol=0)
    assert torch.equal(inputs["feature_attention_mask"], omni_inputs["feature_attention_mask"])


def test_full_omni_checkpoint_loads_as_the_thinker(omni, tiny_omni_dir, tmp_path):
    """A folder laid out like the hub's Qwen2.5-Omni (model_type qwen2_5_omni, `thinker_config`, weights prefixed
    `thinker.`, plus a talker's) loads into the thinker with the same weights."""
    from safetensors.torch import load_file, save_file

    model, _ = omni
    for name in os.listdir(tiny_omni_dir):
        if name not in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(tiny_omni_dir, name), tmp_path)
    thinker_config = json.loads(Path(tiny_omni_dir, "config.json").read_text())
    config = {"model_type": "qwen2_5_omni", "architectures": ["Qwen2_5OmniForConditionalGeneration"],
              "enable_audio_output": False, "thinker_config": thinker_config}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = load_file(os.path.join(tiny_omni_dir, "model.safetensors"))
    weights = {f"thinker.{key}": value for key, value in weights.items()}
    weights["talker.model.embed_tokens.weight"] = torch.zeros(4, 4)
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert detect_family(str(tmp_path)).name == QWEN2_5_OMNI
    loaded = load_model(str(tmp_path))
    assert type(loaded).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    ours = model.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, ours[name]), name


# ---- trainer -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored_batch(tiny_omni_dir, tmp_path_factory):
    """One generation batch on the tiny Omni thinker: two prompts with different real audio, G completions each, and
    the policy log-probs the loss computes from it; clips encoded per pass counted."""
    trainer = make_trainer(tiny_omni_dir, str(tmp_path_factory.mktemp("omni-grpo")))
    inputs = [row for row in rows(CLIPS[:2]) for _ in range(G)]
    policy, reference = EncodedClips(trainer.model), EncodedClips(trainer.ref_model)
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions(inputs)
    encoded = {"generation": policy.clips, "reference": reference.clips}
    policy.handle.remove(), reference.handle.remove()
    policy_logps = loss_pass_policy_logps(trainer, batch)
    # Fixed non-zero advantages for the gradient comparisons (a zero advantage means a zero gradient).
    batch["advantages"] = torch.linspace(-1.0, 1.0, batch["advantages"].numel()).reshape(batch["advantages"].shape)
    return trainer, inputs, batch, policy_logps, encoded


@pytest.mark.parametrize("which", ["reference", "policy"])
def test_logps_match_a_plain_forward_with_audio(scored_batch, which):
    trainer, inputs, batch, policy_logps, _ = scored_batch
    check_logps_match_a_plain_forward_with_audio(trainer, inputs, batch, policy_logps, which)


def test_each_completion_is_scored_with_its_own_clip(scored_batch):
    trainer, inputs, batch, _, _ = scored_batch
    # The tiny random thinker hears little difference between two real clips: 10x the match tolerance (1e-4).
    check_each_completion_is_scored_with_its_own_clip(trainer, inputs, batch, other_clip_effect=1e-3)


def test_generation_never_samples_a_placeholder(scored_batch):
    trainer, _, batch, _, _ = scored_batch
    placeholders = placeholder_token_ids(trainer.model.config)
    assert len(placeholders) == 3  # audio, image, video
    assert set(placeholders) <= set(trainer.generation_config.suppress_tokens)
    assert not torch.isin(batch["completion_ids"], torch.tensor(placeholders)).any()


def test_shared_encoding_same_logps_and_gradients_one_encoding_per_clip(scored_batch):
    trainer, _, batch, _, encoded = scored_batch
    assert encoded == {"generation": 2, "reference": 2}, "one encoding per distinct clip in each pass"
    counters = {}
    for share in (True, False):
        counter = EncodedClips(trainer.model)
        counters[share] = loss_logps_and_grads(trainer, [batch], share=share, parameters=PARAMETERS)
        counter.handle.remove()
        assert counter.clips == (2 if share else 2 * G)
    assert_same(counters[True], counters[False], PARAMETERS)


def test_shared_encoding_with_groups_split_across_shuffled_micro_batches(scored_batch):
    trainer, _, batch, _, _ = scored_batch
    torch.manual_seed(3)
    micro_batches = split_tensor_dict(shuffle_sequence_dict(batch), 2)
    assert all(len(set(mb["audio_group"].tolist())) == 2 for mb in micro_batches), "want split groups"
    shared = loss_logps_and_grads(trainer, micro_batches, share=True, parameters=PARAMETERS)
    separate = loss_logps_and_grads(trainer, micro_batches, share=False, parameters=PARAMETERS)
    assert_same(shared, separate, PARAMETERS)


def test_training_moves_the_audio_encoder_never_the_vision_tower(tiny_omni_dir, tmp_path):
    trainer = make_trainer(tiny_omni_dir, str(tmp_path))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert any("audio_tower" in name for name in changed), "audio encoder"
    assert any("language_model" in name for name in changed), "language model"
    assert not any(".visual." in name for name in changed), "the vision tower is frozen"
    assert any(entry.get("kl", 0) > 0 for entry in trainer.state.log_history)


# ---- evaluation and SFT --------------------------------------------------------------------------------------------


def test_evaluation_batch_4_equals_batch_1(tiny_omni_dir, tmp_path):
    """r1aqa.evaluate on the Omni thinker: five MMAU-format items (real AVQA clips and made tones of 2-7 s)."""
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    names = []
    for index, path in enumerate(CLIPS[:3]):
        shutil.copy(path, audio_dir / f"clip{index}.wav")
        names.append(f"clip{index}.wav")
    import soundfile as sf

    for index, seconds in enumerate((2.0, 7.0)):
        sf.write(audio_dir / f"tone{index}.wav", tone(seconds, 300 + 500 * index), 16_000)
        names.append(f"tone{index}.wav")
    items = [
        {"id": f"item-{i}", "audio_id": f"./test-mini-audios/{name}", "question": "What is the sound?",
         "choices": ["low", "top"], "answer": "low", "task": "sound", "difficulty": "easy",
         "sub-category": "toy"}
        for i, name in enumerate(names)
    ]  # fmt: skip
    data_file = tmp_path / "items.json"
    data_file.write_text(json.dumps(items))
    outputs = {}
    for batch_size in (4, 1):
        out = tmp_path / f"b{batch_size}.json"
        argv = ["--model_path", tiny_omni_dir, "--data_file", str(data_file), "--audio_dir", str(audio_dir),
                "--out_file", str(out), "--max_new_tokens", "8", "--batch_size", str(batch_size)]  # fmt: skip
        assert evaluator.main(argv) == 0
        outputs[batch_size] = [item["model_raw_output"] for item in json.loads(out.read_text())]
    assert outputs[4] == outputs[1]
    assert any(outputs[1])


def test_sft_collator_masks_everything_but_the_answer_on_omni(omni):
    from r1aqa.sft import IGNORE_INDEX, AudioSFTCollator, assistant_turn

    _, processor = omni
    collator = AudioSFTCollator(processor)
    batch = collator([
        {"prompt": user_turn(CLIPS[0], format_question("Q?", ["low", "top"])), "completion": assistant_turn("low")},
        {"prompt": user_turn(CLIPS[1], format_question("A longer Q?", ["low", "top"])),
         "completion": assistant_turn("top")},
    ])  # fmt: skip
    for row, target in zip(range(2), ("low", "top"), strict=True):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert processor.tokenizer.decode(kept) == target + "<|im_end|>"
    assert batch["input_features"].shape[0] == 2


def test_lora_adapter_merges_into_an_omni_thinker(omni, tiny_omni_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from r1aqa.merge_lora import merge_lora

    model, processor = omni
    targets = r".*language_model.*\.(q_proj|v_proj)"
    peft = get_peft_model(load_model(tiny_omni_dir), LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    processor.save_pretrained(tmp_path / "adapter")
    merge_lora(str(tmp_path / "adapter"), str(tmp_path / "merged"), base=tiny_omni_dir)
    merged = load_model(str(tmp_path / "merged"))
    assert type(merged).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert isinstance(load_processor(str(tmp_path / "merged")), Qwen2_5OmniAudioProcessor)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, peft(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
