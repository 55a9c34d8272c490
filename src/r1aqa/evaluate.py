"""MMAU inference for one checkpoint: batched, left-padded generation with audio, then the official scoring.

    python -m r1aqa.evaluate --model_path outputs/grpo-qwen2-audio-7b/checkpoint-100 \\
        --data_file data/mmau/mmau-test-mini.json --audio_dir data/mmau/test-mini-audios \\
        --out_file outputs/grpo-qwen2-audio-7b/mmau/checkpoint-100.json

    # the smallest CPU run: a tiny random model, 3 items
    python -m r1aqa.cpu.tiny --out outputs/tiny && python -m r1aqa.evaluate --model_path outputs/tiny \\
        --data_file data/mmau/mmau-test-mini.json --audio_dir data/mmau/test-mini-audios \\
        --out_file outputs/tiny-mmau.json --limit 3 --max_new_tokens 16

`test_mmau.sh` runs this for every checkpoint of a run. Prompts come from `r1aqa.data.mmau_example` (the builder
training uses), answers from `r1aqa.prompts.extract_answer` (the accuracy reward's extraction). Decoding is greedy
with 256 new tokens unless told otherwise, whatever the checkpoint's generation_config.json says.

Files, where OUT is `--out_file` without its `.json`:
- `OUT.json`: a JSON list, the input items in order, each plus `model_raw_output` (decoded, special tokens skipped),
  `model_prediction` and `model_output` (both the extracted answer: MMAU's `evaluation.py` reads `model_output`).
- `OUT.meta.json`: how it was made (model, processor, data, prompt style, decoding, device, timing, versions) and the
  items whose audio was missing or unreadable (they get empty predictions and count as wrong).
- `OUT.score.json`: `r1aqa.scoring.score` of OUT.json, plus `audio_errors`; only when every item has an `answer` (the
  full test split withholds them: then predictions only).
- `OUT.partial.jsonl`: progress while running, one line per finished item. A killed run leaves it (and never a
  half-written OUT.json); the same command resumes from it. Deleted once OUT.json is written.

OUT.json is written atomically. When it exists and was made with the same settings, the run is skipped (or only
scored, if OUT.score.json is missing) unless `--force`; made with other settings, the run stops and says so rather
than mixing results. Checking this needs no model, torch or GPU: test_mmau.sh relies on it to skip finished
checkpoints.

The processor comes from `--processor_path`, else from the model folder itself, else, when the model folder is a
`checkpoint-N` inside a run directory (a trainer may save weights only), from that run directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

from r1aqa.audio import AudioError, check_audio
from r1aqa.data import DataError, mmau_example
from r1aqa.prompts import extract_answer
from r1aqa.scoring import format_report, load_items, score

# Prompt <2> (the paper's main result), Prompt <3> (think) and Prompt <1> (question and options only: SFT baselines).
PROMPT_STYLES = {
    "answer": {"think": False, "format_instruction": True},
    "think": {"think": True, "format_instruction": True},
    "plain": {"think": False, "format_instruction": False},
}
ITEM_KEYS = ("id", "audio_id", "question", "choices")
PREDICTION_KEYS = ("model_raw_output", "model_prediction", "model_output")
CHECKPOINT_DIR = re.compile(r"^checkpoint-\d+$")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class EvalError(ValueError):
    """A problem with the arguments or files of an evaluation; the message says what to do."""


# ---- paths ---------------------------------------------------------------------------------------------------------


def output_paths(out_file: str) -> dict[str, str]:
    """`out`, `meta`, `score` and `partial` paths: OUT.json, OUT.meta.json, OUT.score.json, OUT.partial.jsonl."""
    stem = out_file[: -len(".json")] if out_file.endswith(".json") else out_file
    return {
        "out": out_file,
        "meta": stem + ".meta.json",
        "score": stem + ".score.json",
        "partial": stem + ".partial.jsonl",
    }


def _local_or_hub(path: str) -> str:
    """Absolute path for a local folder/file, unchanged for a hub id, so settings compare across working dirs."""
    return os.path.abspath(path) if os.path.exists(path) else path


def has_processor(folder: str) -> bool:
    """A saved processor: a feature-extractor/processor config and a tokenizer."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in PROCESSOR_FILES) and any(
        os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES
    )


def resolve_processor_path(model_path: str, processor_path: str | None = None) -> str:
    """`processor_path` if given; else the model folder; else its run directory if it is a `checkpoint-N` folder.

    A hub id (not a local folder) is its own processor path. The run directory is only tried for `checkpoint-N`
    folders: the parent of any other folder may hold an unrelated processor.
    """
    if processor_path:
        return _local_or_hub(processor_path)
    if not os.path.isdir(model_path):
        return model_path
    model_dir = os.path.abspath(model_path)
    candidates = [model_dir]
    if CHECKPOINT_DIR.match(os.path.basename(model_dir)):
        candidates.append(os.path.dirname(model_dir))
    for folder in candidates:
        if has_processor(folder):
            return folder
    raise EvalError(
        f"no processor (a {' or '.join(PROCESSOR_FILES)} and a tokenizer) in {' or '.join(candidates)}. Pass "
        "--processor_path with the folder or hub id of the model this checkpoint was trained from."
    )


# ---- items and prompts ---------------------------------------------------------------------------------------------


def read_items(data_file: str, limit: int | None = None) -> list[dict]:
    """The MMAU items of `data_file` (the first `limit`), each checked for the keys a prompt needs."""
    try:
        items = load_items(data_file)
    except (OSError, ValueError) as error:
        raise EvalError(str(error)) from error
    if limit is not None:
        items = items[:limit]
    if not items:
        raise EvalError(f"{data_file}: no items to evaluate.")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise EvalError(f"{data_file}: item {index} is a JSON {type(item).__name__}, not an object.")
        missing = [key for key in ITEM_KEYS if key not in item]
        if missing:
            raise EvalError(f"{data_file}: item {index} (id {item.get('id')!r}) lacks {missing}.")
    return items


def build_examples(items: list[dict], audio_dir: str, prompt_style: str) -> list[dict]:
    """Each item's conversation and audio path, from the training prompt builder (items of the full test split,
    which withholds `answer`, included)."""
    style = PROMPT_STYLES[prompt_style]
    try:
        return [mmau_example(item, audio_dir, **style) for item in items]
    except DataError as error:
        raise EvalError(str(error)) from error


def has_answers(items: list[dict]) -> bool:
    return all("answer" in item for item in items)


# ---- model and generation ------------------------------------------------------------------------------------------


def load_model_and_processor(model_path: str, processor_path: str, device: str):
    """Qwen2-Audio in bf16 on GPU, fp32 on CPU (eval mode), and its processor with left padding."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    processor = AutoProcessor.from_pretrained(processor_path)
    if not hasattr(processor, "feature_extractor"):
        raise EvalError(f"{processor_path}: {type(processor).__name__} is not an audio processor (Qwen2-Audio's).")
    processor.tokenizer.padding_side = "left"  # not saved with the tokenizer; batched generation needs it
    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_path, dtype=dtype).to(device).eval()
    return model, processor


def decoding_settings(args: argparse.Namespace) -> dict:
    """What decides the generated text, recorded in the meta file and compared before reusing an output."""
    settings = {"do_sample": args.do_sample, "max_new_tokens": args.max_new_tokens, "num_beams": 1}
    if args.do_sample:
        settings.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    return settings


def generation_config(model, processor, decoding: dict):
    """A fresh GenerationConfig: only the special token ids come from the checkpoint.

    A checkpoint's generation_config.json may turn sampling, top-k/top-p or a repetition penalty on; evaluation
    settings must not depend on that.
    """
    from transformers import GenerationConfig

    base = model.generation_config
    tokenizer = processor.tokenizer
    return GenerationConfig(
        **{key: value for key, value in decoding.items() if key != "seed"},
        repetition_penalty=1.0,
        eos_token_id=base.eos_token_id if base.eos_token_id is not None else tokenizer.eos_token_id,
        pad_token_id=base.pad_token_id if base.pad_token_id is not None else tokenizer.pad_token_id,
        bos_token_id=base.bos_token_id,
    )


def generate_batch(model, processor, conversations: list[list[dict]], config) -> list[str]:
    """Generate for conversations whose audio parts hold loaded samples (`audio` key); decoded, specials skipped."""
    import torch

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
    with torch.inference_mode():
        sequences = model.generate(**inputs, generation_config=config)
    new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)


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
        out.append({**item, "model_raw_output": raw, "model_prediction": answer, "model_output": answer})
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


def run_inference(
    args, items: list[dict], examples: list[dict], problems: list[str | None], settings: dict, paths: dict[str, str]
) -> dict:
    """Generate for every item not already in the progress file; write OUT.json and OUT.meta.json; return the meta.

    `problems[i]` is `check_audio`'s finding for item i (None: fine); such items get an empty prediction.
    """
    import torch
    from tqdm import tqdm

    # Training's loader (imports TRL): decodes each audio file (first channel, 16 kHz) into the part's `audio` key,
    # which both the tiny template and Qwen2-Audio's hub template (it tests `'audio' in content`) render as audio.
    from r1aqa.audio import prompts_with_audio

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    done = read_partial(paths["partial"], settings, items)
    if done:
        print(f"Resuming: {len(done)} of {len(items)} items already done in {paths['partial']}.", flush=True)
    pending = [index for index in range(len(items)) if index not in done]

    started = time.time()
    if args.backend == "vllm":  # same prompts and decoding settings, generated by vLLM (r1aqa.vllm_audio)
        from r1aqa.vllm_audio import load_eval_backend

        generate, dtype = load_eval_backend(
            args.model_path, settings["processor_path"], device, settings["decoding"], args.seed
        )
    else:
        model, processor = load_model_and_processor(args.model_path, settings["processor_path"], device)
        config = generation_config(model, processor, settings["decoding"])
        generate, dtype = (lambda conversations: generate_batch(model, processor, conversations, config)), model.dtype
    load_seconds = time.time() - started
    torch.manual_seed(args.seed)  # only sampling uses it

    progress = tqdm(total=len(items), initial=len(done), unit="item", desc=os.path.basename(paths["out"]))
    partial = _open_partial(paths["partial"], settings, done, items)
    try:
        for start in range(0, len(pending), args.batch_size):
            batch = pending[start : start + args.batch_size]
            conversations, ready = [], []
            for index in batch:
                try:
                    if problems[index]:
                        raise AudioError(f"{examples[index]['audio_path']}: {problems[index]}")
                    conversations.append(prompts_with_audio([examples[index]["prompt"]])[0])
                    ready.append(index)
                except AudioError as error:
                    progress.write(f"Audio error, empty prediction for item {items[index]['id']}: {error}")
                    done[index] = {"raw": "", "audio_error": str(error)}
            raws = generate(conversations) if conversations else []
            for index, raw in zip(ready, raws, strict=True):
                done[index] = {"raw": raw, "audio_error": None}
            for index in batch:
                _append(partial, index, items[index]["id"], done[index]["raw"], done[index]["audio_error"])
            partial.flush()
            os.fsync(partial.fileno())
            progress.update(len(batch))
    finally:
        partial.close()
        progress.close()

    generate_seconds = time.time() - started - load_seconds
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
        "n_items": len(items),
        "n_audio_errors": len(audio_errors),
        "audio_errors": audio_errors,
        "processed_this_run": len(pending),
        "resumed_items": len(items) - len(pending),
        "batch_size": args.batch_size,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "load_seconds": round(load_seconds, 2),
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


def score_output(predictions: list[dict], paths: dict[str, str], n_audio_errors: int) -> dict:
    """Official-rule accuracies of OUT.json, written to OUT.score.json and printed."""
    summary = {**score(predictions), "audio_errors": n_audio_errors}
    write_json_atomic(paths["score"], summary)
    print(format_report(summary))
    print(f"Audio errors (empty prediction, counted wrong): {n_audio_errors}")
    print(f"Wrote {paths['score']}", flush=True)
    return summary


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _total(score_file: str) -> str:
    total = json.loads(Path(score_file).read_text(encoding="utf-8"))["total"]
    return f"total accuracy {total['accuracy']:.2f}% over {total['total']} items"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m r1aqa.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_path", required=True, help="Checkpoint folder or hub id (Qwen2-Audio).")
    parser.add_argument("--data_file", required=True, help="MMAU JSON list (test-mini, or the test split).")
    parser.add_argument("--audio_dir", required=True, help="Folder holding the items' WAVs (`audio_id`'s file name).")
    parser.add_argument("--out_file", required=True, help="Predictions JSON; meta/score/partial files go beside it.")
    parser.add_argument(
        "--processor_path",
        help="Processor folder or hub id. Default: the model folder, else the run directory of a checkpoint-N folder.",
    )
    parser.add_argument("--batch_size", type=int, default=32, help="Items per generate call (paper: 32).")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="Paper: 256.")
    parser.add_argument(
        "--prompt_style",
        choices=sorted(PROMPT_STYLES),
        help="answer: Prompt <2> (default, the paper's main result); think: Prompt <3>; "
        "plain: Prompt <1>, question and options only (the SFT baselines).",
    )
    parser.add_argument("--think", action="store_true", help="Shorthand for --prompt_style think.")
    parser.add_argument("--do_sample", action="store_true", help="Sample instead of greedy decoding.")
    parser.add_argument("--temperature", type=float, default=1.0, help="With --do_sample.")
    parser.add_argument("--top_k", type=int, default=50, help="With --do_sample.")
    parser.add_argument("--top_p", type=float, default=1.0, help="With --do_sample.")
    parser.add_argument("--seed", type=int, default=42, help="With --do_sample (results then depend on batching).")
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
    args.prompt_style = "think" if args.think else (args.prompt_style or "answer")
    for name in ("batch_size", "max_new_tokens", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return evaluate(args)
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def evaluate(args: argparse.Namespace) -> int:
    paths = output_paths(args.out_file)
    items = read_items(args.data_file, args.limit)
    examples = build_examples(items, args.audio_dir, args.prompt_style)
    settings = {
        "model_path": _local_or_hub(args.model_path),
        "processor_path": resolve_processor_path(args.model_path, args.processor_path),
        "data_file": os.path.abspath(args.data_file),
        "data_sha256": _sha256(args.data_file),  # another file version under the same name is not the same data
        "audio_dir": os.path.abspath(args.audio_dir),
        "limit": args.limit,
        "prompt_style": args.prompt_style,
        "decoding": decoding_settings(args),
    }
    if args.backend != "hf":  # recorded only when not the default, so outputs made before --backend stay reusable
        settings["backend"] = args.backend

    predictions = None if args.force else reusable_output(paths, settings, len(items))
    if predictions is not None:
        if not has_answers(items) or os.path.isfile(paths["score"]):
            done = "scored, " + _total(paths["score"]) if has_answers(items) else "no answers to score"
            print(f"Skipping {paths['out']}: done with the same settings ({done}). --force redoes it.", flush=True)
            return 0
        print(f"Reusing {paths['out']}: made with the same settings (--force redoes it).", flush=True)
        n_audio_errors = json.loads(Path(paths["meta"]).read_text(encoding="utf-8"))["n_audio_errors"]
    else:
        problems = [check_audio(example["audio_path"]) for example in examples]
        n_bad = sum(problem is not None for problem in problems)
        if n_bad == len(items):
            raise EvalError(
                f"none of the {len(items)} audio files is usable (first: {examples[0]['audio_path']}: {problems[0]}). "
                "Check --audio_dir: it must hold the WAVs named in the items' `audio_id`."
            )
        if n_bad:
            print(f"{n_bad} of {len(items)} audio files are missing or unreadable: empty predictions.", flush=True)
        stale = ["meta", "score"] + (["partial"] if args.force else [])
        for name in stale:  # they describe an output about to be replaced
            if os.path.exists(paths[name]):
                os.remove(paths[name])
        meta = run_inference(args, items, examples, problems, settings, paths)
        n_audio_errors = meta["n_audio_errors"]
        predictions = load_items(paths["out"])
        print(
            f"Wrote {paths['out']} ({len(items)} items, {n_audio_errors} audio errors, "
            f"{meta['generate_seconds']:.1f} s generating on {meta['device']}).",
            flush=True,
        )

    if has_answers(items):
        score_output(predictions, paths, n_audio_errors)
    else:
        print("The items carry no `answer` (test split): predictions only, nothing scored.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
