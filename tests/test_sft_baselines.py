"""SFT baselines: the loss covers exactly the answer, the audio reaches it, training learns, checkpoints round-trip."""

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers.paths import AVQA_AUDIO_DIR
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
from trl import ModelConfig, SFTConfig, get_peft_config

from r1aqa.audio import load_audio
from r1aqa.merge_lora import main as merge_lora_main
from r1aqa.prompts import ANSWER_INSTRUCTION, extract_answer, format_question, user_turn
from r1aqa.sft import (
    END_OF_TURN,
    IGNORE_INDEX,
    AudioSFTCollator,
    assistant_turn,
    build_trainer,
    check_sft_config,
    load_sft_dataset,
    parse_args,
)

CLIPS = sorted(str(p) for p in AVQA_AUDIO_DIR.glob("*.wav"))
# Two questions whose answers differ in length, so the batch is padded.
QUESTIONS = [
    ("What is making the sound?", ["a boat", "a dog"], 0),
    ("Which instrument is playing?", ["piano", "a violin sings loudly"], 1),
]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LORA_TARGETS = [r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"]


def sft_rows(paths=CLIPS[:2]) -> list[dict]:
    return [
        {
            "prompt": user_turn(path, format_question(question, choices, format_instruction=False)),
            "completion": assistant_turn(choices[answer]),
        }
        for path, (question, choices, answer) in zip(paths, QUESTIONS, strict=True)
    ]


def targets() -> list[str]:
    return [choices[answer] for _, choices, answer in QUESTIONS]


def sft_config(output_dir, **changes) -> SFTConfig:
    settings = dict(
        output_dir=str(output_dir),
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    settings.update(changes)
    return SFTConfig(**settings)


def load(model_dir):
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    return Qwen2AudioForConditionalGeneration.from_pretrained(model_dir), processor


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def greedy_answers(model, processor, rows, max_new_tokens=8) -> list[str]:
    """What evaluation does with Prompt <1>: greedy decoding, special tokens skipped, answer = whole output."""
    answers = []
    for row in rows:
        prompt = row["prompt"]
        text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], audio=[load_audio(prompt[0]["content"][0]["path"])], return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        completion = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        answers.append(extract_answer(completion))
    return answers


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: with two threads, a busy machine (parallel test runs) slows training ~10x (OpenMP
    threads spin waiting for each other), with one it does not. Restored afterwards for other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def short_model_dir(tmp_path_factory) -> str:
    """A tiny Qwen2-Audio with a 2 s audio window: the training tests run ~10x faster than with the 30 s window."""
    from r1aqa.tryout.tiny import write_tiny_model

    return write_tiny_model(str(tmp_path_factory.mktemp("tiny-2s")), seed=0, chunk_length=2)


@pytest.fixture(scope="module")
def batch_and_processor(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    return AudioSFTCollator(processor)(list(Dataset.from_list(sft_rows()))), processor


def test_rows_use_prompt_1_and_the_option_text_as_target(tmp_path):
    path = tmp_path / "train.jsonl"
    records = [
        {"id": i, "video_name": f"v{i}", "video_id": i, "question_text": "What happened in the video?",
         "multi_choice": ["motorboat", "Yacht consignment"], "answer": i % 2, "question_relation": "View",
         "question_type": "Happening", "dataset_name": "AVQA", "audio_path": clip}
        for i, clip in enumerate(CLIPS)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    dataset = load_sft_dataset(str(path))
    text = dataset[1]["prompt"][0]["content"][1]["text"]
    assert text == "What happened in the audio? Please choose the answer from the following options: " \
                   "['motorboat', 'Yacht consignment']."  # fmt: skip
    assert dataset[1]["completion"] == [{"role": "assistant", "content": "Yacht consignment"}]
    assert dataset[0]["completion"][0]["content"] == "motorboat"
    # Prompt <2> variant: the format instruction, and the target in answer tags.
    tagged = load_sft_dataset(str(path), format_instruction=True)
    assert tagged[1]["prompt"][0]["content"][1]["text"] == text + ANSWER_INSTRUCTION
    assert tagged[1]["completion"][0]["content"] == "<answer>Yacht consignment</answer>"


def test_loss_mask_covers_exactly_the_answer_and_end_of_turn(batch_and_processor):
    batch, processor = batch_and_processor
    tokenizer = processor.tokenizer
    audio_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    for row, (ids, mask, labels, target) in enumerate(
        zip(batch["input_ids"], batch["attention_mask"], batch["labels"], targets(), strict=True)
    ):
        trained = labels != IGNORE_INDEX
        # Exactly the answer and the end-of-turn token, which are the last real tokens, in one block.
        assert tokenizer.decode(labels[trained]) == target + END_OF_TURN
        assert torch.equal(labels[trained], ids[trained])
        positions = trained.nonzero()[:, 0]
        assert positions.tolist() == list(range(positions[0], int(mask.sum())))
        # Prompt, audio placeholders and padding are all masked.
        assert not trained[ids == audio_id].any() and (ids == audio_id).sum() > 0
        assert (labels[mask == 0] == IGNORE_INDEX).all()
        # The prompt part is what generation sees: the processor's own tokens for the prompt alone.
        prompt = sft_rows()[row]["prompt"]
        text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        alone = processor(text=[text], audio=[load_audio(CLIPS[row])], return_tensors="pt")["input_ids"][0]
        assert torch.equal(ids[: positions[0]], alone)
        # The whole sequence is the chat template's rendering of prompt + answer, up to <|im_end|>.
        rendered = processor.apply_chat_template(prompt + assistant_turn(target), tokenize=False)
        decoded = tokenizer.decode(ids[mask.bool()]).replace("<|AUDIO|>", "")
        assert decoded == rendered.replace("<|AUDIO|>", "").removesuffix("\n")
    assert (batch["attention_mask"] == 0).any(), "the two rows should differ in length (padding is tested)"


def test_audio_features_reach_the_loss(batch_and_processor, tiny_model_dir, tmp_path):
    batch, processor = batch_and_processor
    assert batch["input_features"].shape == (2, 128, 3000)  # 128 mel bins, 30 s window
    assert batch["feature_attention_mask"].shape == (2, 3000)
    for row, clip in enumerate(CLIPS[:2]):
        frames = int(batch["feature_attention_mask"][row].sum())
        assert abs(frames - len(load_audio(clip)) / 160) <= 1  # 100 frames per second of real audio
        n_audio_tokens = (batch["input_ids"][row] == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")).sum()
        assert n_audio_tokens == (((frames - 1) // 2 + 1) - 2) // 2 + 1

    model, processor = load(tiny_model_dir)
    trainer = build_trainer(model, processor, Dataset.from_list(sft_rows()), sft_config(tmp_path))
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
        # TRL patched the instance's forward (fused LM head); the class's forward gives the model's own loss.
        reference = Qwen2AudioForConditionalGeneration.forward(model, **batch).loss.item()
        swapped = dict(batch, input_features=batch["input_features"].flip(0))
        swapped_loss = trainer.compute_loss(model, swapped).item()
        silent_loss = trainer.compute_loss(model, dict(batch, input_features=torch.zeros_like(batch["input_features"])))
    assert loss == pytest.approx(reference, abs=1e-5)  # TRL's loss = cross-entropy over the unmasked labels
    assert abs(swapped_loss - loss) > 1e-4, "the loss does not depend on the audio"
    assert abs(silent_loss.item() - loss) > 1e-4


def test_full_sft_learns_saves_reloads_and_answers(short_model_dir, tmp_path):
    model, processor = load(short_model_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rows = sft_rows()
    config = sft_config(tmp_path, max_steps=20, save_strategy="steps", save_steps=20)
    trainer = build_trainer(model, processor, Dataset.from_list(rows), config)
    trainer.train()

    history = losses(trainer)
    assert len(history) == 20
    assert history[-1] < 0.75 * history[0], history
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    for part in ("audio_tower", "multi_modal_projector", "language_model", "lm_head"):
        assert any(part in name for name in changed), f"{part} did not change"

    checkpoint = tmp_path / "checkpoint-20"
    reloaded, reloaded_processor = load(checkpoint)
    for name, p in reloaded.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[name].detach()), name
    # The trained model answers its two training questions with the option text and stops.
    assert greedy_answers(reloaded.eval(), reloaded_processor, rows) == targets()


def test_lora_sft_trains_only_the_adapter_then_merges(short_model_dir, tmp_path):
    model, processor = load(short_model_dir)
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    peft_config = get_peft_config(
        ModelConfig(use_peft=True, lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_target_modules=LORA_TARGETS)
    )
    rows = sft_rows()
    config = sft_config(tmp_path / "run", max_steps=10, learning_rate=1e-2, save_strategy="steps", save_steps=10)
    trainer = build_trainer(model, processor, Dataset.from_list(rows), config, peft_config)
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name and "language_model" in name for name in trainable)
    trainer.train()
    history = losses(trainer)
    assert history[-1] < history[0] - 0.2, history
    for name, p in trainer.model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(p.detach(), base[name.replace(".base_layer", "")]), f"{name} changed"

    adapter = tmp_path / "run" / "checkpoint-10"
    merged_dir = tmp_path / "merged"
    merge_lora_main(["--adapter", str(adapter), "--out", str(merged_dir)])
    merged, merged_processor = load(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    batch = AudioSFTCollator(merged_processor)(list(Dataset.from_list(rows)))
    peft_model = trainer.model.eval()
    with torch.no_grad():
        expected = peft_model(**batch).logits
        got = merged.eval()(**batch).logits
    assert (expected - got).abs().max() < 1e-4
    assert not torch.allclose(got, Qwen2AudioForConditionalGeneration.from_pretrained(short_model_dir)(**batch).logits)
    assert greedy_answers(merged, merged_processor, rows) == greedy_answers(peft_model, processor, rows)


def test_recipes_parse_and_pass_the_checks(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("")
    parsed = {}
    for kind in ("full", "lora"):
        script_args, training_args, model_args = parse_args(
            ["--config", str(CONFIGS / f"sft_qwen2_audio_7b_{kind}.yaml"), "--data_file", str(data), "--report_to", "none",
             "--output_dir", str(tmp_path / kind), "--use_cpu", "true", "--bf16", "false"]
        )  # fmt: skip
        check_sft_config(training_args)
        assert script_args.format_instruction is False  # Prompt <1>
        assert training_args.max_length is None
        parsed[kind] = (training_args, model_args)
    assert parsed["full"][1].use_peft is False and parsed["full"][0].learning_rate == 1e-5
    assert parsed["lora"][1].use_peft is True and parsed["lora"][0].learning_rate == 1e-4
    # The LoRA regex selects exactly the language model's linear layers (not the audio encoder, projector, LM head).
    from peft import get_peft_model

    model, _ = load(tiny_model_dir)
    peft_model = get_peft_model(model, get_peft_config(parsed["lora"][1]))
    adapted = [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")]
    assert len(adapted) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert all(".language_model." in name for name in adapted)


def test_config_check_names_every_fix(tmp_path):
    bad = sft_config(tmp_path, remove_unused_columns=True, dataset_kwargs=None)
    with pytest.raises(ValueError, match="remove_unused_columns: false") as error:
        check_sft_config(bad)
    assert "skip_prepare_dataset: true" in str(error.value)
