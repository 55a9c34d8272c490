"""MMAU or MMAR inference for one checkpoint: batched, left-padded generation with audio, then the official scoring.

    python -m r1aqa.evaluate --model_path outputs/grpo-qwen2-audio-7b/checkpoint-100 \\
        --data_file data/mmau/mmau-test-mini.json --audio_dir data/mmau/test-mini-audios \\
        --out_file outputs/grpo-qwen2-audio-7b/mmau/checkpoint-100.json

    # the smallest CPU run: a tiny random model, 3 items
    python -m r1aqa.tryout.tiny --out outputs/tiny && python -m r1aqa.evaluate --model_path outputs/tiny \\
        --data_file data/mmau/mmau-test-mini.json --audio_dir data/mmau/test-mini-audios \\
        --out_file outputs/tiny-mmau.json --limit 3 --max_new_tokens 16

`test_mmau.sh` runs this for every checkpoint of a run. Prompts come from `r1aqa.data` (the builder training uses),
answers from `r1aqa.prompts.extract_answer` (the accuracy reward's extraction).

Benchmarks (`--benchmark`, default `auto`: AVQA when the items have `multi_choice`, MMAR when they have `modality`,
else MMAU; a `.jsonl` file is read as JSON lines): MMAU, a JSON list whose `audio_id` names the clip; MMAR, the JSON
lines of `MMAR-meta.jsonl` whose `audio_path` (`./audio/<name>.wav`) names it. Either way the clip is the file of that
name in `--audio_dir`. AVQA: the JSONL `r1aqa.prepare_avqa` writes (the validation split `val_qa.json`, held out to
choose a checkpoint without the test set), each row prompted exactly as training prompts it (`r1aqa.data.avqa_example`:
`video` -> `audio`), scored by the same rule against `multi_choice[answer]`, grouped by `question_type` and
`question_relation`; its clip is the row's `audio_path` (or that file name in `--audio_dir`, if given).

Protocol (`--protocol`): `paper` fixes what the paper-time release (original repo commit 45def50) did, and refuses
other values for them: decoding `original`, 16 items per batch, 256 new tokens, Prompt <2> (its test_mmau.sh scored
checkpoints 100-500; `PROTOCOL=paper bash test_mmau.sh` does). `default`: the same with 32 items per batch (faster;
with sampling the batch decides which random numbers an item gets, so numbers differ by sampling noise).

Decoding (`--decoding`, recorded in the meta file with every generation field actually used; docs/recipe.md §7):
- `original` (default): the paper's decoding, what the original's `model.generate(**inputs, max_new_tokens=256)`
  did: the checkpoint's own generation_config.json decides (for Qwen2-Audio-7B-Instruct and checkpoints trained
  from it that is sampling: temperature 0.7, top-k 20, top-p 0.5, repetition penalty 1.1), only `max_new_tokens`
  is set. Unlike the original it is seeded: each batch draws from `torch.manual_seed(batch_seed(seed, batch index))`,
  so a rerun, or a resumed run, gives the same predictions (for the same batch size, which is therefore recorded).
- `greedy`: fully specified greedy decoding: every generation field set here, only the special token ids taken from
  the checkpoint; nothing of the checkpoint's generation_config.json is merged in (see `checkpoint_defaults_off`).
- `--do_sample/--temperature/--top_k/--top_p/--repetition_penalty` override single fields on top of either mode
  (recorded), e.g. `--decoding greedy --do_sample true --temperature 1.0` for plain seeded sampling.
Both modes stop at every id of the checkpoint's `generation_config.eos_token_id` plus the tokenizer's eos.

`--num_samples K` makes K passes with seeds seed, seed+1, ..., each a complete evaluation with its own files
(OUT.sample-k.*), and OUT.score.json holds the mean and standard deviation over the passes. `--audio silent`
replaces each clip with silence of the same length (an audio-dependence control; recorded in the settings).

Files, where OUT is `--out_file` without its `.json` (with K > 1 passes, each pass k has OUT.sample-k.json,
OUT.sample-k.meta.json, OUT.sample-k.score.json, OUT.sample-k.partial.jsonl, and OUT.score.json is their
aggregate):
- `OUT.json`: a JSON list, the input items in order, each plus `model_raw_output` (decoded, special tokens skipped)
  and the extracted answer under `model_prediction`, `model_output` (MMAU's `evaluation.py` reads it) and
  `answer_prediction` (MMAR's `evaluation.py` reads it).
- `OUT.meta.json`: how it was made (model, processor, data, benchmark, prompt style, audio, decoding settings and
  the resolved generation config, device, timing, versions) and the items whose audio was missing or unreadable
  (they get empty predictions and count as wrong).
- `OUT.score.json`: `r1aqa.benchmarks.score` of OUT.json, plus `audio_errors`; only when every item has an `answer` (the
  full MMAU test split withholds them: then predictions only).
- `OUT.partial.jsonl`: progress while running, one line per finished item. A killed run leaves it (and never a
  half-written OUT.json); the same command resumes from it. Deleted once OUT.json is written.

OUT.json is written atomically. When it exists and was made with the same settings, the run is skipped (or only
scored, if OUT.score.json is missing) unless `--force`; made with other settings, the run stops and says so rather
than mixing results. Checking this needs no model, torch or GPU: test_mmau.sh relies on it to skip finished
checkpoints.

The processor comes from `--processor_path`, else from the model folder itself, else, when the model folder is a
`checkpoint-N` inside a run directory (a trainer may save weights only), from that run directory. A LoRA checkpoint
(`adapter_config.json`: GRPO or SFT with `use_peft: true`) is evaluated on its base model (`base_model_name_or_path`),
the adapters merged on load; its processor falls back to the base model's.

The data file is identified by its content: `OUT.meta.json` and `OUT.score.json` name its release
(`r1aqa.benchmarks.RELEASES`, e.g. MMAU test-mini a5cd89a, the file of the paper's numbers) or "unknown release" with
its sha256.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from r1aqa.audio import SAMPLING_RATE, AudioError, check_audio
from r1aqa.benchmarks import (
    aggregate,
    data_release,
    detect_benchmark,
    format_aggregate,
    format_report,
    load_items,
    release_name,
    score,
)
from r1aqa.data import DataError, avqa_eval_example, mmar_example, mmau_example, record_problem
from r1aqa.decoding import (
    DECODING_MODES,
    OVERRIDES,
    EvalError,
    batch_seed,
    checkpoint_defaults_off,
    generation_config,
    item_sampling_params,
)
from r1aqa.models import (
    _local_or_hub,
    adapter_base_model,
    has_processor,
    resolve_processor_path,
)
from r1aqa.prompts import extract_answer

# Prompt <2> (the paper's main result), Prompt <3> (think) and Prompt <1> (question and options only: SFT baselines).
PROMPT_STYLES = {
    "answer": {"think": False, "format_instruction": True},
    "think": {"think": True, "format_instruction": True},
    "plain": {"think": False, "format_instruction": False},
}
# What a prompt needs from an item, and how the item names its clip, per benchmark.
ITEM_KEYS = {
    "mmau": ("id", "audio_id", "question", "choices"),
    "mmar": ("id", "audio_path", "question", "choices"),
    "avqa": ("id", "audio_path", "question_text", "multi_choice", "answer"),
}
EXAMPLE_BUILDERS = {"mmau": mmau_example, "mmar": mmar_example, "avqa": avqa_eval_example}
BENCHMARK_NAMES = tuple(ITEM_KEYS)
# The raw output, then the extracted answer under the key of each consumer: ours, MMAU's and MMAR's evaluation.py.
PREDICTION_KEYS = ("model_raw_output", "model_prediction", "model_output", "answer_prediction")
# `--protocol`: the settings it fixes. `paper` is what the paper-time release (original repo commit 45def50, its
# src/test.py and test_mmau.sh) did: `model.generate(**inputs, max_new_tokens=256)` with the checkpoint's own
# generation config, 16 items per batch, Prompt <2>, the first audio channel (what r1aqa.audio loads for Qwen2-Audio),
# checkpoints 100-500 (test_mmau.sh). `default` is this project's default for users; only the batch differs (32).
PROTOCOLS = {
    "default": {"decoding": "original", "batch_size": 32, "max_new_tokens": 256, "prompt_style": "answer"},
    "paper": {"decoding": "original", "batch_size": 16, "max_new_tokens": 256, "prompt_style": "answer"},
}
REPO_DIR = Path(__file__).resolve().parents[2]


# ---- paths ---------------------------------------------------------------------------------------------------------


def output_paths(out_file: str, sample: int | None = None) -> dict[str, str]:
    """`out`, `meta`, `score` and `partial` paths: OUT.json, OUT.meta.json, OUT.score.json, OUT.partial.jsonl, where
    OUT is `out_file` without `.json`, followed by `.sample-k` for pass k of several (`--num_samples`)."""
    stem = out_file[: -len(".json")] if out_file.endswith(".json") else out_file
    if sample is not None:
        stem = f"{stem}.sample-{sample}"
    return {
        "out": stem + ".json" if sample is not None or out_file.endswith(".json") else out_file,
        "meta": stem + ".meta.json",
        "score": stem + ".score.json",
        "partial": stem + ".partial.jsonl",
    }


# ---- items and prompts ---------------------------------------------------------------------------------------------


def read_items(data_file: str, benchmark: str = "auto", limit: int | None = None) -> tuple[str, list[dict]]:
    """`(benchmark, items)`: the items of `data_file` (the first `limit`), each checked for the keys a prompt needs.

    `benchmark` `auto` tells MMAR (items with `modality`) from MMAU. A line of a `.jsonl` file that is not a JSON
    object is an error naming `file:line`.
    """
    try:
        items = load_items(data_file)
    except (OSError, ValueError) as error:
        raise EvalError(str(error)) from error
    if limit is not None:
        items = items[:limit]
    if not items:
        raise EvalError(f"{data_file}: no items to evaluate.")
    if benchmark == "auto":
        benchmark = detect_benchmark(items)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise EvalError(f"{data_file}: item {index} is a JSON {type(item).__name__}, not an object.")
        missing = [key for key in ITEM_KEYS[benchmark] if key not in item]
        if missing:
            raise EvalError(
                f"{data_file}: item {index} (id {item.get('id')!r}) lacks {missing}, which a {benchmark.upper()} "
                "item has (--benchmark says which benchmark the file holds; default: told from the items)."
            )
        if benchmark == "avqa":  # the training loader's checks (docs/recipe.md §2), with the same reasons
            problem = record_problem(item)
            if problem:
                raise EvalError(f"{data_file}: item {index} (id {item['id']!r}): {problem[0]} ({problem[1]}).")
            continue
        choices = item["choices"]
        if not (isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices)):
            raise EvalError(f"{data_file}: item {index} (id {item['id']!r}): `choices` must be a list of strings.")
    return benchmark, items


def build_examples(items: list[dict], audio_dir: str | None, prompt_style: str, benchmark: str = "mmau") -> list[dict]:
    """Each item's conversation and audio path, from the training prompt builder (items of the full test split,
    which withholds `answer`, included)."""
    style = PROMPT_STYLES[prompt_style]
    try:
        return [EXAMPLE_BUILDERS[benchmark](item, audio_dir, **style) for item in items]
    except DataError as error:
        raise EvalError(str(error)) from error


def has_answers(items: list[dict]) -> bool:
    return all("answer" in item for item in items)


# ---- model and generation ------------------------------------------------------------------------------------------


def load_model_and_processor(model_path: str, processor_path: str, device: str):
    """The checkpoint's model (Qwen2-Audio, or a Qwen2.5-Omni thinker: r1aqa.models) in bf16 on GPU, fp32 on CPU
    (eval mode), and its processor with left padding. A LoRA checkpoint is loaded on its base model and merged."""
    import torch

    from r1aqa.models import detect_family, load_model, load_processor

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    base = adapter_base_model(model_path)
    family = detect_family(base or model_path)
    processor = load_processor(processor_path, family)
    if not hasattr(processor, "feature_extractor"):
        raise EvalError(f"{processor_path}: {type(processor).__name__} is not an audio processor.")
    model = load_model(base or model_path, family, dtype=dtype)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
    return model.to(device).eval(), processor


def decoding_settings(args: argparse.Namespace, seed: int) -> dict:
    """What decides the generated text, recorded in the meta file and compared before reusing an output.

    The batch size is part of it: with sampling it decides which random numbers each item gets (and padding can
    change low-precision greedy results too).
    """
    overrides = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None}
    return {
        "mode": args.decoding,
        "max_new_tokens": args.max_new_tokens,
        "seed": seed,
        "batch_size": args.batch_size,
        "overrides": overrides,
    }


def model_inputs(model, processor, conversations: list[list[dict]]):
    """The left-padded batch (token ids, attention mask, audio features) for conversations whose audio parts hold
    loaded samples (`audio` key), on the model's device and dtype."""
    texts = [processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False) for conv in conversations]
    audios = [
        part["audio"]
        for conv in conversations
        for message in conv
        for part in message["content"]
        if part.get("type") == "audio"
    ]
    inputs = processor(
        text=texts,
        audio=audios,
        sampling_rate=processor.feature_extractor.sampling_rate,
        padding=True,
        return_tensors="pt",
    ).to(model.device)
    inputs["input_features"] = inputs["input_features"].to(model.dtype)
    return inputs


def generate_batch(model, processor, conversations: list[list[dict]], config) -> list[str]:
    """Generate with `config` and nothing else; decoded, special tokens skipped."""
    import torch

    inputs = model_inputs(model, processor, conversations)
    with torch.inference_mode(), checkpoint_defaults_off(model):
        sequences = model.generate(**inputs, generation_config=config)
    new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def silenced(conversation: list[dict]) -> list[dict]:
    """The conversation with each loaded clip replaced by zeros of the same length (and dtype)."""
    import numpy as np

    return [
        {
            **message,
            "content": [
                {**part, "audio": np.zeros_like(part["audio"])} if part.get("type") == "audio" else part
                for part in message["content"]
            ],
        }
        if isinstance(message["content"], list)
        else message
        for message in conversation
    ]


# ---- progress file -------------------------------------------------------------------------------------------------


def read_partial(path: str, settings: dict, items: list[dict]) -> dict[int, dict]:
    """Finished items of an earlier run with the same settings: {index: {"raw": str, "audio_error": str | None}}.

    Lines that do not parse (the last one of a killed run may be cut short) or do not match the items are ignored.
    """
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("settings") != settings:
        print(f"Ignoring {path}: made with other settings (or unreadable); starting over.", flush=True)
        return {}
    done = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
            index = record["index"]
            if items[index]["id"] == record["id"]:
                done[index] = {"raw": record["raw"], "audio_error": record["audio_error"]}
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            continue
    return done


def _open_partial(path: str, settings: dict, done: dict[int, dict], items: list[dict]):
    """The progress file, opened for appending, holding the header and what is already done.

    It is rewritten first (atomically) so a line an earlier kill cut short is dropped, not appended to.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps({"settings": settings}, ensure_ascii=False) + "\n")
        for index in sorted(done):
            _append(f, index, items[index]["id"], done[index]["raw"], done[index]["audio_error"])
    os.replace(tmp, path)
    return open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by the caller after the loop


def _append(f, index: int, item_id, raw: str, audio_error: str | None) -> None:
    record = {"index": index, "id": item_id, "raw": raw, "audio_error": audio_error}
    f.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---- files ---------------------------------------------------------------------------------------------------------


def write_json_atomic(path: str, data) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def predicted_items(items: list[dict], raw_outputs: list[str]) -> list[dict]:
    """The input items with the raw output and the extracted answer under both prediction keys."""
    out = []
    for item, raw in zip(items, raw_outputs, strict=True):
        answer = extract_answer(raw)
        out.append({**item, "model_raw_output": raw, **dict.fromkeys(PREDICTION_KEYS[1:], answer)})
    return out


def reusable_output(paths: dict[str, str], settings: dict, n_items: int) -> list[dict] | None:
    """The finished output of an earlier run with the same settings, or None when there is none.

    Raises `EvalError` when an output exists but was made otherwise (or cannot be told): mixing would be silent.
    """
    if not os.path.exists(paths["out"]):
        return None
    redo = "Pass --force to redo it, or choose another --out_file."
    if not os.path.isfile(paths["meta"]):
        raise EvalError(f"{paths['out']} exists but {paths['meta']} does not: how it was made is unknown. {redo}")
    meta = json.loads(Path(paths["meta"]).read_text(encoding="utf-8"))
    old = meta.get("settings", {})
    changed = [f"{key}: {old.get(key)!r} -> {value!r}" for key, value in settings.items() if old.get(key) != value]
    if changed:
        raise EvalError(f"{paths['out']} was made with other settings ({'; '.join(changed)}). {redo}")
    try:
        items = load_items(paths["out"])
    except ValueError as error:
        raise EvalError(f"{error}. {redo}") from error
    if len(items) != n_items or not all(all(key in item for key in PREDICTION_KEYS) for item in items):
        raise EvalError(f"{paths['out']} does not hold a prediction for each of the {n_items} items. {redo}")
    return items


# ---- the run -------------------------------------------------------------------------------------------------------


class Model:
    """The generator of one evaluation, loaded on first use and shared by its passes: transformers' `generate`
    (`--backend hf`) or vLLM (`--backend vllm`, r1aqa.vllm_audio). Both take the same conversations and the same
    resolved GenerationConfig, so prompts and decoding are the same whichever generates."""

    def __init__(self, args: argparse.Namespace, processor_path: str):
        self.args, self.processor_path = args, processor_path
        self.model = self.engine = self.processor = None
        self.load_seconds = 0.0

    def get(self) -> Model:
        if self.processor is None:
            import torch

            started = time.time()
            self.device = self.args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            if self.args.backend == "vllm":
                self.engine, self.processor, self.checkpoint_config, self.dtype = load_eval_engine(
                    self.args.model_path, self.processor_path, self.device
                )
            else:
                self.model, self.processor = load_model_and_processor(
                    self.args.model_path, self.processor_path, self.device
                )
                self.checkpoint_config, self.dtype = self.model.generation_config, self.model.dtype
            from r1aqa.models import detect_family, set_system_prompt

            set_system_prompt(self.processor, self.args.system_prompt)
            # first channel (Qwen2-Audio) or their mean; a LoRA checkpoint is of its base model's family
            family_path = adapter_base_model(self.args.model_path) or self.args.model_path
            self.audio_channels = detect_family(family_path).audio_channels
            self.load_seconds = time.time() - started
        return self

    def generate(self, conversations: list[list[dict]], config, seed: int, item_seeds: tuple = ()) -> list[str]:
        """Decoded completions (special tokens skipped) of one batch, its random numbers drawn from `seed` (hf) or
        each request's from its item (vllm: `item_seeds` = (run seed, item ids), r1aqa.vllm_audio.item_seed)."""
        if self.engine is not None:
            params = item_sampling_params(config, *item_seeds)
            return generate_batch_vllm(self.engine, self.processor, conversations, params)
        import torch

        torch.manual_seed(seed)
        return generate_batch(self.model, self.processor, conversations, config)


def run_inference(
    args,
    items: list[dict],
    examples: list[dict],
    problems: list[str | None],
    settings: dict,
    paths: dict[str, str],
    loaded: Model,
) -> dict:
    """Generate for every item not already in the progress file; write OUT.json and OUT.meta.json; return the meta.

    `problems[i]` is `check_audio`'s finding for item i (None: fine); such items get an empty prediction. Batches are
    fixed slices of the item list, each seeded from (seed, batch index): a batch of a resumed run is generated whole,
    with the numbers it would have drawn in an uninterrupted run.
    """
    from tqdm import tqdm

    # Training's loader (imports TRL): decodes each audio file (first channel, 16 kHz) into the part's `audio` key,
    # which both the tiny template and Qwen2-Audio's hub template (it tests `'audio' in content`) render as audio.
    from r1aqa.audio import prompts_with_audio

    done = read_partial(paths["partial"], settings, items)
    if done:
        print(f"Resuming: {len(done)} of {len(items)} items already done in {paths['partial']}.", flush=True)
    n_resumed = len(done)
    decoding = settings["decoding"]
    batch_size = decoding["batch_size"]
    batches = [list(range(start, min(start + batch_size, len(items)))) for start in range(0, len(items), batch_size)]

    generator = loaded.get()
    config = generation_config(generator.checkpoint_config, generator.processor.tokenizer, decoding)
    started = time.time()
    progress = tqdm(total=len(items), initial=len(done), unit="item", desc=os.path.basename(paths["out"]))
    partial = _open_partial(paths["partial"], settings, done, items)
    try:
        for batch_index, batch in enumerate(batches):
            if all(index in done for index in batch):
                continue
            new = [index for index in batch if index not in done]
            conversations, ready = [], []
            for index in batch:
                try:
                    if problems[index]:
                        raise AudioError(f"{examples[index]['audio_path']}: {problems[index]}")
                    conversation = prompts_with_audio([examples[index]["prompt"]], channels=generator.audio_channels)[0]
                    conversations.append(silenced(conversation) if settings["audio"] == "silent" else conversation)
                    ready.append(index)
                except AudioError as error:
                    progress.write(f"Audio error, empty prediction for item {items[index]['id']}: {error}")
                    done[index] = {"raw": "", "audio_error": str(error)}
            seed = batch_seed(decoding["seed"], batch_index)
            item_seeds = (decoding["seed"], [items[index]["id"] for index in ready])
            raws = generator.generate(conversations, config, seed, item_seeds) if conversations else []
            for index, raw in zip(ready, raws, strict=True):
                done[index] = {"raw": raw, "audio_error": None}
            for index in new:
                _append(partial, index, items[index]["id"], done[index]["raw"], done[index]["audio_error"])
            partial.flush()
            os.fsync(partial.fileno())
            progress.update(len(new))
    finally:
        partial.close()
        progress.close()

    generate_seconds = time.time() - started
    # OUT.json before OUT.meta.json: a meta file never vouches for an output it did not describe (the old meta and
    # score were removed before inference started).
    write_json_atomic(paths["out"], predicted_items(items, [done[index]["raw"] for index in range(len(items))]))
    audio_errors = [
        {
            "index": index,
            "id": items[index]["id"],
            "audio_path": examples[index]["audio_path"],
            "error": entry["audio_error"],
        }
        for index, entry in sorted(done.items())
        if entry["audio_error"]
    ]
    meta = {
        "settings": settings,
        "data_release": release_name(settings["data_sha256"]),
        "generation_config": config.to_dict(),  # every field generate used (the resolved config)
        "seeding": "batch_seed(seed, batch index) for each batch: torch.manual_seed before generate (hf); "
        "item_seed(seed, item id) for each request: SamplingParams.seed (vllm)",
        "audio_channels": generator.audio_channels,  # how a multi-channel file was made mono (the model's family)
        "n_items": len(items),
        "n_audio_errors": len(audio_errors),
        "audio_errors": audio_errors,
        "processed_this_run": len(items) - n_resumed,
        "resumed_items": n_resumed,
        "batch_size": batch_size,
        "device": loaded.device,
        "dtype": str(generator.dtype).removeprefix("torch."),
        "load_seconds": round(loaded.load_seconds, 2),
        "generate_seconds": round(generate_seconds, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
    }
    write_json_atomic(paths["meta"], meta)
    os.remove(paths["partial"])
    return meta


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def score_output(predictions: list[dict], paths: dict[str, str], n_audio_errors: int, settings: dict) -> dict:
    """Official-rule accuracies of OUT.json, with the data file's release, written to OUT.score.json and printed."""
    summary = {
        **score(predictions, settings["benchmark"]),
        "audio_errors": n_audio_errors,
        "data_release": release_name(settings["data_sha256"]),
        "data_sha256": settings["data_sha256"],
    }
    write_json_atomic(paths["score"], summary)
    print(format_report(summary))
    print(f"Audio errors (empty prediction, counted wrong): {n_audio_errors}")
    print(f"Wrote {paths['score']}", flush=True)
    return summary


def _total(score_file: str) -> str:
    total = json.loads(Path(score_file).read_text(encoding="utf-8"))["total"]
    return f"total accuracy {total['accuracy']:.2f}% over {total['total']} items"


def _true_or_false(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m r1aqa.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model_path", required=True, help="Checkpoint folder or hub id (Qwen2-Audio or Qwen2.5-Omni)."
    )
    parser.add_argument(
        "--data_file",
        required=True,
        help="MMAU JSON list (test-mini or test), MMAR's MMAR-meta.jsonl, or an AVQA JSONL from r1aqa.prepare_avqa.",
    )
    parser.add_argument(
        "--audio_dir",
        help="Folder holding the clips (the file name of `audio_id` / `audio_path`). Required for MMAU and MMAR; "
        "AVQA rows default to their own `audio_path`.",
    )
    parser.add_argument("--out_file", required=True, help="Predictions JSON; meta/score/partial files go beside it.")
    parser.add_argument(
        "--benchmark",
        choices=("auto", *BENCHMARK_NAMES),
        default="auto",
        help="Default: AVQA if items have `multi_choice`, MMAR if they have `modality`, else MMAU.",
    )
    parser.add_argument(
        "--processor_path",
        help="Processor folder or hub id. Default: the model folder, else the run directory of a checkpoint-N folder.",
    )
    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="default",
        help="paper: what the paper-time release (original repo commit 45def50) did: decoding original, batch 16, "
        "256 new tokens, Prompt <2>, first channel; other values for these are refused. default: the same with batch "
        "32; each setting may be changed.",
    )
    parser.add_argument(
        "--batch_size", type=int, help="Items per generate call (default 32; the paper-time release: 16)."
    )
    parser.add_argument("--max_new_tokens", type=int, help="Default 256, as the paper.")
    parser.add_argument(
        "--prompt_style",
        choices=sorted(PROMPT_STYLES),
        help="answer: Prompt <2> (default, the paper's main result); think: Prompt <3>; "
        "plain: Prompt <1>, question and options only (the SFT baselines).",
    )
    parser.add_argument("--think", action="store_true", help="Shorthand for --prompt_style think.")
    parser.add_argument(
        "--system_prompt",
        choices=("default", "qwen", "none"),
        default="default",
        help="The system turn: default (the chat template's own, as the paper and Ke-Omni-R); qwen (the "
        "Qwen2.5-Omni model card's); none. test_mmau.sh passes the one the run was trained with (r1aqa_run.json).",
    )
    parser.add_argument(
        "--decoding",
        choices=DECODING_MODES,
        help="original (default): the checkpoint's generation_config.json, as the paper evaluated, seeded; "
        "greedy: fully specified greedy decoding, nothing taken from generation_config.json.",
    )
    parser.add_argument("--seed", type=int, default=42, help="Seed of the first pass (recorded).")
    parser.add_argument(
        "--num_samples", type=int, default=1, help="K passes with seeds seed..seed+K-1; scores are mean ± std."
    )
    parser.add_argument(
        "--audio",
        choices=("real", "silent"),
        default="real",
        help="silent: each clip replaced by silence of the same length (how much accuracy needs the audio).",
    )
    parser.add_argument("--do_sample", type=_true_or_false, help="Override (true/false) on top of --decoding.")
    parser.add_argument("--temperature", type=float, help="Override on top of --decoding.")
    parser.add_argument("--top_k", type=int, help="Override on top of --decoding.")
    parser.add_argument("--top_p", type=float, help="Override on top of --decoding.")
    parser.add_argument("--repetition_penalty", type=float, help="Override on top of --decoding.")
    parser.add_argument("--limit", type=int, help="Evaluate only the first N items (smoke tests).")
    parser.add_argument("--device", help="Default: cuda if available (bf16), else cpu (fp32).")
    parser.add_argument(
        "--backend",
        choices=("hf", "vllm"),
        default="hf",
        help="hf: transformers generate (default); vllm: the same prompts and decoding with vLLM (r1aqa.vllm_audio; "
        "needs the vLLM environment, see README).",
    )
    parser.add_argument("--force", action="store_true", help="Redo even if the output exists; drop any progress.")
    args = parser.parse_args(argv)
    if args.think and args.prompt_style not in (None, "think"):
        parser.error(f"--think contradicts --prompt_style {args.prompt_style}: give one of them.")
    args.prompt_style = "think" if args.think else args.prompt_style
    protocol = PROTOCOLS[args.protocol]
    if args.protocol != "default":
        given = {name: getattr(args, name) for name in protocol if getattr(args, name) is not None}
        given.update({name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None})
        conflicts = [f"--{name} {value}" for name, value in given.items() if protocol.get(name) != value]
        if conflicts:
            parser.error(f"--protocol {args.protocol} fixes {', '.join(f'{k} {v}' for k, v in protocol.items())}: "
                         f"{', '.join(conflicts)} contradicts it (drop it, or drop --protocol).")  # fmt: skip
    for name, value in protocol.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("batch_size", "max_new_tokens", "limit", "num_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}.")
    if args.num_samples > 1 and args.decoding == "greedy" and not args.do_sample:
        parser.error("--num_samples > 1 needs sampling: greedy decoding gives the same predictions for every seed.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return evaluate(args)
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def evaluate(args: argparse.Namespace) -> int:
    benchmark, items = read_items(args.data_file, args.benchmark, args.limit)
    if args.audio_dir is None and benchmark != "avqa":
        raise EvalError(f"--audio_dir is required for {benchmark.upper()}: the folder holding the clips.")
    examples = build_examples(items, args.audio_dir, args.prompt_style, benchmark)
    release = data_release(args.data_file)
    print(f"Data: {args.data_file}: {release['release']} (sha256 {release['sha256']}).", flush=True)
    base = {
        "model_path": _local_or_hub(args.model_path),
        "processor_path": resolve_processor_path(args.model_path, args.processor_path),
        "data_file": os.path.abspath(args.data_file),
        "data_sha256": release["sha256"],  # another file version under the same name is not the same data
        "benchmark": benchmark,
        "audio_dir": None if args.audio_dir is None else os.path.abspath(args.audio_dir),
        "audio": args.audio,
        "limit": args.limit,
        "prompt_style": args.prompt_style,
    }
    several = args.num_samples > 1
    single, first_sample = output_paths(args.out_file), output_paths(args.out_file, 0)
    if several and os.path.exists(single["out"]):
        raise EvalError(f"{single['out']} holds a single-pass evaluation: give the {args.num_samples} passes another "
                        "--out_file.")  # fmt: skip
    if not several and os.path.exists(first_sample["out"]):
        raise EvalError(f"{first_sample['out']} holds passes of a --num_samples evaluation: give a single pass another "
                        "--out_file.")  # fmt: skip
    if args.backend != "hf":  # recorded only when not the default, so outputs made before --backend stay reusable
        base["backend"] = args.backend
    if args.system_prompt != "default":  # likewise
        base["system_prompt"] = args.system_prompt
    if args.protocol != "default":  # likewise
        base["protocol"] = args.protocol
    adapter_base = adapter_base_model(args.model_path) if os.path.isdir(args.model_path) else None
    if adapter_base is not None:
        if args.backend == "vllm":
            raise EvalError(f"{args.model_path} holds LoRA adapters: --backend vllm needs a full model. Use --backend "
                            "hf (merges them on load), or merge with `python -m r1aqa.merge_lora`.")  # fmt: skip
        base["base_model_path"] = adapter_base

    loaded = Model(args, base["processor_path"])
    problems = None
    summaries = []
    for sample in range(args.num_samples):
        paths = output_paths(args.out_file, sample if several else None)
        settings = {**base, "decoding": decoding_settings(args, args.seed + sample)}
        if several:
            print(f"=== pass {sample + 1} of {args.num_samples} (seed {args.seed + sample}) ===", flush=True)
        if problems is None and (args.force or reusable_output(paths, settings, len(items)) is None):
            problems = _check_all_audio(items, examples)
        summaries.append(_evaluate_pass(args, items, examples, problems, settings, paths, loaded))

    if several and all(summary is not None for summary in summaries):
        paths = output_paths(args.out_file)
        summary = {
            **aggregate(summaries),
            "seeds": [args.seed + sample for sample in range(args.num_samples)],
            "audio_errors": summaries[0]["audio_errors"],
            "data_release": release["release"],
            "data_sha256": release["sha256"],
            "sample_score_files": [output_paths(args.out_file, k)["score"] for k in range(args.num_samples)],
        }
        write_json_atomic(paths["score"], summary)
        print(format_aggregate(summary))
        print(f"Wrote {paths['score']}", flush=True)
    return 0


def _check_all_audio(items: list[dict], examples: list[dict]) -> list[str | None]:
    """`check_audio` of every item's clip; stops when none is usable (a wrong --audio_dir)."""
    problems = [check_audio(example["audio_path"]) for example in examples]
    n_bad = sum(problem is not None for problem in problems)
    if n_bad == len(items):
        raise EvalError(
            f"none of the {len(items)} audio files is usable (first: {examples[0]['audio_path']}: {problems[0]}). "
            "Check --audio_dir: it must hold the clips named in the items' `audio_id` (MMAU) or `audio_path` (MMAR, "
            "AVQA; without --audio_dir, AVQA's `audio_path` itself)."
        )
    if n_bad:
        print(f"{n_bad} of {len(items)} audio files are missing or unreadable: empty predictions.", flush=True)
    return problems


def _evaluate_pass(args, items, examples, problems, settings, paths, loaded: Model) -> dict | None:
    """One pass: reuse, or run, then score. Returns the score summary (None when the items carry no answers)."""
    predictions = None if args.force else reusable_output(paths, settings, len(items))
    if predictions is not None:
        if not has_answers(items):
            print(f"Skipping {paths['out']}: done with the same settings (no answers to score).", flush=True)
            return None
        if os.path.isfile(paths["score"]):
            print(f"Skipping {paths['out']}: done with the same settings (scored, {_total(paths['score'])}). "
                  "--force redoes it.", flush=True)  # fmt: skip
            return json.loads(Path(paths["score"]).read_text(encoding="utf-8"))
        print(f"Reusing {paths['out']}: made with the same settings (--force redoes it).", flush=True)
        n_audio_errors = json.loads(Path(paths["meta"]).read_text(encoding="utf-8"))["n_audio_errors"]
    else:
        stale = ["meta", "score"] + (["partial"] if args.force else [])
        for name in stale:  # they describe an output about to be replaced
            if os.path.exists(paths[name]):
                os.remove(paths[name])
        meta = run_inference(args, items, examples, problems, settings, paths, loaded)
        n_audio_errors = meta["n_audio_errors"]
        predictions = load_items(paths["out"])
        print(
            f"Wrote {paths['out']} ({len(items)} items, {n_audio_errors} audio errors, "
            f"{meta['generate_seconds']:.1f} s generating on {meta['device']}).",
            flush=True,
        )

    if has_answers(items):
        return score_output(predictions, paths, n_audio_errors, settings)
    print("The items carry no `answer` (test split): predictions only, nothing scored.", flush=True)
    return None


if __name__ == "__main__":
    sys.exit(main())


# ---- the vLLM backend (r1aqa.vllm_audio) ----------------------------------------------------------------------


def generate_ids_vllm(llm, processor, conversations: list[list[dict]], params) -> list[list[int]]:
    """The generated token ids for conversations whose audio parts hold loaded samples (`audio` key), from the same
    token ids the HF backend feeds its model (the processor's), collapsed for vLLM. `params`: one `SamplingParams`
    for all, or one per conversation."""
    from r1aqa.vllm_audio import AUDIO_TOKEN, audio_clips, audio_prompt

    texts = [processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False) for conv in conversations]
    clips = [audio_clips(conversation) for conversation in conversations]
    audio_token_id = processor.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    prompts = []
    for text, audio in zip(texts, clips, strict=True):
        ids = processor(text=[text], audio=audio or None, sampling_rate=SAMPLING_RATE)["input_ids"][0]
        prompts.append(audio_prompt(list(ids), audio, audio_token_id))
    outputs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
    return [list(output.outputs[0].token_ids) for output in outputs]


def load_eval_engine(model_path: str, processor_path: str, device: str):
    """`r1aqa.evaluate --backend vllm`: the engine, the processor, the checkpoint's GenerationConfig (the `original`
    decoding mode starts from it, as with `--backend hf`) and the engine's dtype."""
    from transformers import AutoConfig, GenerationConfig

    from r1aqa.models import QWEN2_AUDIO, detect_family, load_processor
    from r1aqa.vllm_audio import check_audio_expansion, load_llm

    family = detect_family(model_path)
    if family.name != QWEN2_AUDIO:
        raise EvalError(f"{model_path}: the vLLM backend supports Qwen2-Audio checkpoints only; use --backend hf.")
    if os.path.isdir(model_path) and not has_processor(model_path):
        raise EvalError(
            f"{model_path} holds no processor files; vLLM reads the processor from the model folder. Copy the "
            f"processor files of {processor_path} into it."
        )
    processor = load_processor(processor_path, family)
    try:
        checkpoint_config = GenerationConfig.from_pretrained(model_path)
    except OSError:  # no generation_config.json: what transformers derives from the model config
        checkpoint_config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_path))
    llm = load_llm(model_path, device)
    try:
        check_audio_expansion(llm, processor)
    except RuntimeError as error:
        raise EvalError(f"{model_path}: {error}") from error
    return llm, processor, checkpoint_config, llm.llm_engine.model_config.dtype


def generate_batch_vllm(llm, processor, conversations: list[list[dict]], params) -> list[str]:
    """`r1aqa.evaluate.generate_batch` with vLLM: the decoded completions (special tokens skipped)."""
    ids = generate_ids_vllm(llm, processor, conversations, params)
    return processor.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
