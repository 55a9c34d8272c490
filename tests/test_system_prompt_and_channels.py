"""The `system_prompt` setting (default / qwen / none) and how each family hears a stereo file.

- default: the chat template's own system turn ("You are a helpful assistant."): what the paper ran on Qwen2-Audio and
  what Ke-Omni-R trained and evaluated Qwen2.5-Omni with; qwen: the Qwen2.5-Omni model card's prompt; none: no turn.
- Training records the setting in r1aqa_run.json; test_mmau.sh reads it and passes `--system_prompt` to evaluation.
- Qwen2-Audio keeps the first channel (the original R1-AQA); Qwen2.5-Omni hears the mean of the channels, as Qwen's
  own loader (qwen_omni_utils: `librosa.load(path, sr=16000)`, mono by default).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers.paths import MMAU_2025_03, MMAU_AUDIO_DIR

from r1aqa.audio import load_audio, prompts_with_audio
from r1aqa.models import OMNI_SYSTEM_PROMPT, load_processor, set_system_prompt
from r1aqa.prompts import format_question, user_turn

REPO = Path(__file__).resolve().parents[1]
QUESTION = format_question("What is making the sound?", ["a boat", "a dog"])
DEFAULT_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
TURNS = {"default": DEFAULT_TURN, "qwen": f"<|im_start|>system\n{OMNI_SYSTEM_PROMPT}<|im_end|>\n", "none": ""}


def rendered(processor) -> str:
    return processor.apply_chat_template(user_turn("clip.wav", QUESTION), add_generation_prompt=True, tokenize=False)


@pytest.fixture(scope="module")
def stereo(tmp_path_factory) -> dict:
    """Two stereo files whose channels differ (a low tone left, a high tone right): one at 16 kHz, one at 44.1 kHz."""
    folder = tmp_path_factory.mktemp("stereo")
    files = {}
    for rate in (16_000, 44_100):
        t = np.arange(rate * 2) / rate
        left, right = 0.5 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 3000 * t)
        path = folder / f"stereo-{rate}.wav"
        sf.write(path, np.stack([left, right], axis=1).astype(np.float32), rate, subtype="FLOAT")
        files[rate] = str(path)
    return files


# ---- the setting ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_audio", "qwen2_5_omni"])
@pytest.mark.parametrize("system_prompt", ["default", "qwen", "none"])
def test_each_system_prompt_renders_its_turn_and_nothing_else_changes(
    family, system_prompt, tiny_model_dir, tiny_omni_dir
):
    folder = tiny_model_dir if family == "qwen2_audio" else tiny_omni_dir
    default = rendered(load_processor(folder))
    assert default.startswith(DEFAULT_TURN)
    text = rendered(load_processor(folder, system_prompt=system_prompt))
    assert text == TURNS[system_prompt] + default[len(DEFAULT_TURN) :]


@pytest.mark.parametrize("saved_with", ["qwen", "none"])
@pytest.mark.parametrize("system_prompt", ["default", "qwen", "none"])
def test_a_checkpoint_saved_with_one_setting_is_evaluated_with_any(tiny_model_dir, tmp_path, saved_with, system_prompt):
    """Training saves its processor (template included) in every checkpoint: the setting still decides."""
    load_processor(tiny_model_dir, system_prompt=saved_with).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((Path(tiny_model_dir) / "config.json").read_text())
    reference = rendered(load_processor(tiny_model_dir, system_prompt=system_prompt))
    assert reference.startswith(TURNS[system_prompt] + "<|im_start|>user\n")
    assert rendered(load_processor(str(tmp_path), system_prompt=system_prompt)) == reference


def test_unknown_setting_and_foreign_template_are_refused(tiny_model_dir):
    processor = load_processor(tiny_model_dir)
    with pytest.raises(ValueError, match="default, qwen, none"):
        set_system_prompt(processor, "Qwen")
    processor.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    set_system_prompt(processor, "default")  # nothing to change
    with pytest.raises(ValueError, match="standard default system turn"):
        set_system_prompt(processor, "none")


def test_training_records_the_setting_and_prompts_carry_it(toy, tmp_path):
    """The GRPO entry point: the recipe value reaches the prompts the trainer tokenizes and r1aqa_run.json."""
    from r1aqa import grpo, runs

    argv = [
        "--config", str(REPO / "configs/grpo_tiny_cpu.yaml"), "--model_name_or_path", toy["model"],
        "--data_file", toy["data"], "--output_dir", str(tmp_path), "--max_steps", "1", "--system_prompt", "none",
        "--save_strategy", "no", "--report_to", "none",
    ]  # fmt: skip
    script_args, training_args, model_args = grpo.parse_args(argv)
    assert script_args.system_prompt == "none"
    _, processor = runs.load_model(model_args, training_args, False, script_args.system_prompt)
    assert rendered(processor).startswith("<|im_start|>user\n")
    grpo.main(script_args, training_args, model_args)
    assert json.loads((tmp_path / "r1aqa_run.json").read_text())["system_prompt"] == "none"
    typo = tmp_path / "typo.yaml"  # a recipe value does not go through argparse's choices
    typo.write_text((REPO / "configs/grpo_tiny_cpu.yaml").read_text() + "system_prompt: nobody\n")
    with pytest.raises(ValueError, match="system_prompt must be"):
        grpo.parse_args(["--config", str(typo), *argv[2:-6]])


@pytest.mark.parametrize("recipe", ["grpo_qwen2_5_omni_3b.yaml", "grpo_qwen2_5_omni_7b.yaml"])
def test_omni_recipes_use_the_templates_own_system_turn_as_ke_omni_r(recipe, toy, tmp_path):
    from r1aqa import grpo

    script_args, _, _ = grpo.parse_args(
        ["--config", str(REPO / "configs" / recipe), "--data_file", toy["data"], "--output_dir", str(tmp_path),
         "--bf16", "false", "--use_cpu", "true"]
    )  # fmt: skip
    assert script_args.system_prompt == "default"


def test_test_mmau_sh_evaluates_with_the_runs_system_prompt(tmp_path):
    """test_mmau.sh (r1aqa.sweep) reads `system_prompt` from r1aqa_run.json (as it reads `think`) and names the folder
    by it."""
    from r1aqa import sweep

    run = tmp_path / "run"
    run.mkdir()

    def out_dir(record: dict | None, **flags) -> str:
        if record is not None:
            (run / "r1aqa_run.json").write_text(json.dumps(record))
        argv = ["--run_dir", str(run), "--data_file", str(MMAU_2025_03), "--audio_dir", str(MMAU_AUDIO_DIR)]
        args, _ = sweep.parse(argv + [f"--{name}={value}" for name, value in flags.items()])
        return sweep.settings(args, str(run)).out_dir

    assert out_dir({"think": False, "system_prompt": "none"}).endswith(".answer.system-none")
    assert out_dir({"think": False, "system_prompt": "qwen"}, system_prompt="none").endswith(".system-none")
    assert out_dir({"think": False, "system_prompt": "default"}).endswith(".answer")
    assert out_dir({"think": False}).endswith(".answer")  # a run made before the setting: default


# ---- channels -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16_000, 44_100])
def test_mean_rule_is_qwens_loader_and_first_rule_is_the_originals(stereo, rate):
    import librosa

    qwen_omni_utils = librosa.load(stereo[rate], sr=16_000)[0]  # what qwen_omni_utils.process_audio_info calls
    mean = load_audio(stereo[rate], channels="mean")
    np.testing.assert_allclose(mean, qwen_omni_utils, atol=1e-6)
    first = load_audio(stereo[rate])
    np.testing.assert_allclose(first, librosa.load(stereo[rate], sr=16_000, mono=False)[0][0], atol=1e-6)
    assert np.abs(first - mean).max() > 0.1


@pytest.mark.parametrize("family", ["qwen2_audio", "qwen2_5_omni"])
def test_trainer_feeds_each_family_its_channel_rule(family, stereo, tiny_model_dir, tiny_omni_dir, tmp_path):
    from helpers.tiny_grpo import make_trainer

    folder = tiny_model_dir if family == "qwen2_audio" else tiny_omni_dir
    trainer = make_trainer(folder, str(tmp_path))
    expected_rule = "first" if family == "qwen2_audio" else "mean"
    assert trainer.audio_channels == expected_rule
    prompt = user_turn(stereo[16_000], QUESTION)
    _, _, fields = trainer._tokenize_prompts([prompt])
    processor = trainer.processing_class
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    features = {
        rule: processor(text=[text], audio=[load_audio(stereo[16_000], channels=rule)], return_tensors="pt")[
            "input_features"
        ]
        for rule in ("first", "mean")
    }
    torch.testing.assert_close(fields["input_features"], features[expected_rule])
    other = "mean" if expected_rule == "first" else "first"
    assert (fields["input_features"] - features[other]).abs().max() > 1e-2


def test_evaluation_applies_the_system_prompt_and_the_omni_channel_rule(tiny_omni_dir, stereo, tmp_path, monkeypatch):
    """`python -m r1aqa.evaluate --system_prompt qwen` on a Qwen2.5-Omni checkpoint: the model card's turn is in the
    prompt, the stereo clip arrives as the mean of its channels, and both are recorded."""
    from r1aqa import evaluate

    seen = []
    real_generate = evaluate.generate_batch

    def recording(model, processor, conversations, config):
        seen.append((rendered(processor), conversations[0][0]["content"][0]["audio"]))
        return real_generate(model, processor, conversations, config)

    monkeypatch.setattr(evaluate, "generate_batch", recording)
    item = {**json.loads(MMAU_2025_03.read_text())[0], "audio_id": "./audios/stereo.wav"}
    (tmp_path / "items.json").write_text(json.dumps([item]))
    (tmp_path / "audios").mkdir()
    (tmp_path / "audios" / "stereo.wav").symlink_to(stereo[16_000])
    out = tmp_path / "out.json"
    argv = [
        "--model_path", tiny_omni_dir, "--data_file", str(tmp_path / "items.json"), "--audio_dir",
        str(tmp_path / "audios"), "--out_file", str(out), "--max_new_tokens", "2", "--device", "cpu",
        "--decoding", "greedy", "--system_prompt", "qwen",
    ]  # fmt: skip
    assert evaluate.main(argv) == 0
    text, audio = seen[0]
    assert text.startswith(TURNS["qwen"])
    np.testing.assert_array_equal(audio, load_audio(stereo[16_000], channels="mean"))
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["settings"]["system_prompt"] == "qwen" and meta["audio_channels"] == "mean"


def test_prompts_with_audio_applies_the_rule_it_is_given(stereo):
    prompt = user_turn(stereo[16_000], QUESTION)
    first = prompts_with_audio([prompt])[0][0]["content"][0]["audio"]
    mean = prompts_with_audio([prompt], channels="mean")[0][0]["content"][0]["audio"]
    np.testing.assert_array_equal(first, load_audio(stereo[16_000]))
    np.testing.assert_array_equal(mean, load_audio(stereo[16_000], channels="mean"))
    with pytest.raises(ValueError, match="channels must be"):
        load_audio(stereo[16_000], channels="left")
