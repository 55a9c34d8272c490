"""One model x one benchmark file (r1aqa.benchmarks): generation with the audio (r1aqa.decoding), the answer extracted
as the accuracy reward does, the official rule's score (docs/evaluation.md).

    python -m r1aqa.evaluate --model_path outputs/grpo-qwen2-audio-7b/checkpoint-100 \\
        --data_file data/mmau/mmau-test-mini.json --audio_dir data/mmau/test-mini-audios \\
        --out_file outputs/grpo-qwen2-audio-7b/mmau/checkpoint-100.json

Writes OUT.json (the items with the predictions), OUT.score.json (if the items carry answers), then OUT.meta.json
(settings, generation config, audio errors); `--num_samples K`: OUT.sample-k.* per pass, OUT.score.json their mean ±
std. An output done with the same settings is skipped (`--force` redoes it); one with other settings is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tqdm import tqdm

from r1aqa import benchmarks
from r1aqa.audio import SAMPLING_RATE, audio_parts, check_audio, prompts_with_audio
from r1aqa.decoding import DECODING_MODES, OVERRIDES, EvalError, batch_seed, checkpoint_defaults_off, generation_config
from r1aqa.models import ModelFolderError, adapter_base_model, has_processor, local_or_hub, resolve_processor_path
from r1aqa.prompts import extract_answer

# The raw output, then the extracted answer under the key of each consumer: ours, MMAU's and MMAR's evaluation.py.
PREDICTION_KEYS = ("model_raw_output", "model_prediction", "model_output", "answer_prediction")
# `--protocol paper`: what the paper-time release (original repo commit 45def50) did; `default` differs in the batch.
PROTOCOLS = {"paper": {"decoding": "original", "batch_size": 16, "max_new_tokens": 256, "prompt_style": "answer"}}
PROTOCOLS["default"] = {**PROTOCOLS["paper"], "batch_size": 32}


def output_paths(out_file: str, sample: int | None = None) -> dict[str, str]:
    """`out`, `meta` and `score`: OUT.json, OUT.meta.json, OUT.score.json, OUT followed by `.sample-k` for pass k."""
    stem = out_file.removesuffix(".json") + ("" if sample is None else f".sample-{sample}")
    return {"out": out_file if sample is None else stem + ".json", "meta": stem + ".meta.json",
            "score": stem + ".score.json"}  # fmt: skip


def write_json_atomic(path: str, data) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the whole new one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    Path(tmp).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_model_and_processor(model_path: str, processor_path: str, device: str, system_prompt: str = "default"):
    """The checkpoint's model (bf16 on GPU, fp32 on CPU; LoRA adapters merged into their base) and its processor."""
    import torch

    from r1aqa.models import detect_family, load_merged_adapter, load_model, load_processor

    base = adapter_base_model(model_path)
    family = detect_family(base or model_path)
    processor = load_processor(processor_path, family, system_prompt=system_prompt)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if base is None:
        model = load_model(model_path, family, dtype=dtype)
    else:
        model = load_merged_adapter(model_path, base, family, dtype=dtype)
    return model.to(device).eval(), processor


def generate_batch(model, processor, conversations: list[list[dict]], config) -> list[str]:
    """Decoded completions of conversations whose audio parts hold loaded samples, generated with `config` only."""
    import torch

    texts = [processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False) for conv in conversations]
    audios = [part["audio"] for conv in conversations for part in audio_parts(conv)]
    rate = processor.feature_extractor.sampling_rate
    inputs = processor(text=texts, audio=audios, sampling_rate=rate, padding=True, return_tensors="pt").to(model.device)
    inputs["input_features"] = inputs["input_features"].to(model.dtype)
    with torch.inference_mode(), checkpoint_defaults_off(model):
        new_tokens = model.generate(**inputs, generation_config=config)[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def generate_ids_vllm(llm, processor, conversations: list[list[dict]], params) -> list[list[int]]:
    """vLLM's generated token ids, prompted with the processor's ids (as HF's); `params`: one per conversation."""
    from r1aqa.vllm_audio import AUDIO_TOKEN, audio_prompt

    audio_token_id = processor.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    prompts = []
    for conversation in conversations:
        text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        clips = [part["audio"] for part in audio_parts(conversation)]
        ids = processor(text=[text], audio=clips or None, sampling_rate=SAMPLING_RATE)["input_ids"][0]
        prompts.append(audio_prompt(list(ids), clips, audio_token_id))
    return [list(out.outputs[0].token_ids) for out in llm.generate(prompts, sampling_params=params, use_tqdm=False)]


def load_generator(model_path: str, processor_path: str, device: str | None = None, backend: str = "hf",
                   system_prompt: str = "default") -> SimpleNamespace:  # fmt: skip
    """The model, loaded once: `generate(conversations, config, seed, (run seed, item ids))` -> decoded completions
    (hf: torch seeded with `seed`; vllm: each request by `item_seed`); `checkpoint_config`, `processor`, ..."""
    import torch
    from transformers import GenerationConfig

    from r1aqa.models import QWEN2_AUDIO, detect_family, load_processor

    started, lora_base = time.time(), adapter_base_model(model_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    family = detect_family(lora_base or model_path)
    if backend == "hf":
        model, processor = load_model_and_processor(model_path, processor_path, device, system_prompt)
        checkpoint, dtype = model.generation_config, model.dtype

        def generate(conversations, config, seed, item_seeds=()):
            torch.manual_seed(seed)
            return generate_batch(model, processor, conversations, config)

    else:
        from r1aqa.decoding import sampling_params
        from r1aqa.vllm_audio import check_audio_expansion, load_llm

        if lora_base or family.name != QWEN2_AUDIO or (os.path.isdir(model_path) and not has_processor(model_path)):
            raise EvalError(f"{model_path}: the vLLM backend needs a full Qwen2-Audio model (LoRA: merge it with "
                            "`python -m r1aqa.merge_lora`) holding its processor files (copy those of "
                            f"{processor_path}), or use --backend hf.")  # fmt: skip
        processor = load_processor(processor_path, family, system_prompt=system_prompt)
        checkpoint = GenerationConfig.from_pretrained(model_path)
        llm = load_llm(model_path, device)
        check_audio_expansion(llm, processor)  # raises unless vLLM expands the audio as the HF processor does
        dtype = llm.llm_engine.model_config.dtype

        def generate(conversations, config, seed, item_seeds=()):
            ids = generate_ids_vllm(llm, processor, conversations, sampling_params(config, *item_seeds))
            return processor.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    channels, seconds = family.audio_channels, time.time() - started
    return SimpleNamespace(generate=generate, checkpoint_config=checkpoint, processor=processor, device=device,
                           dtype=dtype, audio_channels=channels, load_seconds=seconds)  # fmt: skip


def generate_all(generator, prompts: list, ids: list, config, seed: int, batch_size: int, silent=False) -> list[str]:
    """Completions of `prompts` (conversations; None: unusable, "" for it) in slices of `batch_size`, each seeded by
    `batch_seed(seed, b)` (hf) or each request by (seed, its id) (vllm). `silent`: the clips replaced by silence."""
    raws = dict.fromkeys(range(len(prompts)), "")
    for batch, start in enumerate(tqdm(range(0, len(prompts), batch_size), unit="batch", leave=False)):
        ready = [i for i in range(start, min(start + batch_size, len(prompts))) if prompts[i] is not None]
        conversations = prompts_with_audio([prompts[i] for i in ready], channels=generator.audio_channels)
        for part in (part for conversation in conversations for part in audio_parts(conversation)) if silent else ():
            part["audio"] = np.zeros_like(part["audio"])  # fresh parts from prompts_with_audio: its cache is intact
        if ready:
            seeds = (batch_seed(seed, batch), (seed, [ids[i] for i in ready]))
            raws.update(zip(ready, generator.generate(conversations, config, *seeds), strict=True))
    return list(raws.values())


def finished(paths: dict[str, str], settings: dict, scored: bool) -> bool:
    """True when OUT.meta.json (written last) records `settings`; an output made with other settings is refused."""
    meta = Path(paths["meta"])
    old = json.loads(meta.read_text(encoding="utf-8"))["settings"] if meta.is_file() else settings
    if old != settings:
        changed = [f"{key}: {old.get(key)!r} -> {value!r}" for key, value in settings.items() if old.get(key) != value]
        raise EvalError(f"{paths['out']} was made with other settings ({'; '.join(changed)}). Pass --force to redo "
                        "it, or choose another --out_file.")  # fmt: skip
    return meta.is_file() and os.path.isfile(paths["out"]) and (not scored or os.path.isfile(paths["score"]))


def run_pass(generator, items, examples, problems, settings: dict, paths: dict[str, str]) -> dict | None:
    """Generate (an empty prediction where the clip has a problem); write OUT.json, OUT.score.json, OUT.meta.json."""
    import torch
    import transformers

    decoding = settings["decoding"]
    config = generation_config(generator.checkpoint_config, generator.processor.tokenizer, decoding)
    for name in ("meta", "score"):  # they describe an output about to be replaced
        Path(paths[name]).unlink(missing_ok=True)
    started, prompts = time.time(), [None if p else ex["prompt"] for ex, p in zip(examples, problems, strict=True)]
    raws = generate_all(generator, prompts, [item["id"] for item in items], config, decoding["seed"],
                        decoding["batch_size"], settings["audio"] == "silent")  # fmt: skip
    seconds = time.time() - started
    predictions = [{**item, "model_raw_output": raw, **dict.fromkeys(PREDICTION_KEYS[1:], extract_answer(raw))}
                   for item, raw in zip(items, raws, strict=True)]  # fmt: skip
    write_json_atomic(paths["out"], predictions)
    errors = [{"index": i, "id": items[i]["id"], "audio_path": examples[i]["audio_path"],
               "error": f"{examples[i]['audio_path']}: {problem}"} for i, problem in enumerate(problems) if problem]  # fmt: skip
    release = {"data_release": benchmarks.release_name(settings["data_sha256"]), "data_sha256": settings["data_sha256"]}
    summary = None
    if all("answer" in item for item in items):
        summary = {**benchmarks.score(predictions, settings["benchmark"]), "audio_errors": len(errors), **release}
        write_json_atomic(paths["score"], summary)
        print(f"{benchmarks.format_report(summary)}\nAudio errors (empty prediction, counted wrong): {len(errors)}")
    else:
        print("The items carry no `answer` (test split): predictions only, nothing scored.")
    write_json_atomic(paths["meta"], {
        "settings": settings, "data_release": release["data_release"], "generation_config": config.to_dict(),
        "seeding": "batch_seed(seed, batch index) for each batch (hf); item_seed(seed, item id) per request (vllm)",
        "audio_channels": generator.audio_channels, "n_items": len(items), "n_audio_errors": len(errors),
        "audio_errors": errors, "batch_size": decoding["batch_size"], "device": generator.device,
        "dtype": str(generator.dtype).removeprefix("torch."), "load_seconds": round(generator.load_seconds, 2),
        "generate_seconds": round(seconds, 2), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    })  # fmt: skip
    print(f"Wrote {paths['out']} ({len(items)} items, {len(errors)} audio errors, {seconds:.1f} s).", flush=True)
    return summary


def evaluate(args: argparse.Namespace) -> int:
    try:
        benchmark, items = benchmarks.read_items(args.data_file, args.benchmark, args.limit)
        if args.audio_dir is None and benchmark != "avqa":
            raise EvalError(f"--audio_dir is required for {benchmark.upper()}: the folder holding the clips.")
        examples = [benchmarks.example(benchmark, item, args.audio_dir, args.prompt_style) for item in items]
    except (OSError, ValueError) as error:
        raise EvalError(str(error)) from error
    release = benchmarks.data_release(args.data_file)
    print(f"Data: {args.data_file}: {release['release']} (sha256 {release['sha256']}).", flush=True)
    base = {"model_path": local_or_hub(args.model_path),
            "processor_path": resolve_processor_path(args.model_path, args.processor_path),
            "data_file": os.path.abspath(args.data_file), "data_sha256": release["sha256"], "benchmark": benchmark,
            "audio_dir": args.audio_dir and os.path.abspath(args.audio_dir), "audio": args.audio, "limit": args.limit,
            "prompt_style": args.prompt_style}  # fmt: skip
    # recorded only when not the default, so outputs made before these settings existed stay reusable
    optional = {"backend": (args.backend, "hf"), "system_prompt": (args.system_prompt, "default"),
                "protocol": (args.protocol, "default"),
                "base_model_path": (adapter_base_model(args.model_path), None)}  # fmt: skip
    base |= {key: value for key, (value, default) in optional.items() if value != default}
    overrides = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None}
    scored, several, passes = all("answer" in item for item in items), args.num_samples > 1, []
    for k in range(args.num_samples):
        decoding = {"mode": args.decoding, "max_new_tokens": args.max_new_tokens, "seed": args.seed + k,
                    "batch_size": args.batch_size, "overrides": overrides}  # fmt: skip
        paths, settings = output_paths(args.out_file, k if several else None), {**base, "decoding": decoding}
        passes.append((paths, settings, args.force or not finished(paths, settings, scored)))
    if any(redo for _, _, redo in passes):
        problems = [check_audio(example["audio_path"]) for example in examples]
        if all(problems):
            raise EvalError(f"none of the {len(items)} audio files is usable (first: {examples[0]['audio_path']}: "
                            f"{problems[0]}). Check --audio_dir: it must hold the clips the items name.")  # fmt: skip
        if n_bad := sum(map(bool, problems)):
            print(f"{n_bad} of {len(items)} audio files are missing or unreadable: empty predictions.", flush=True)
        generator = load_generator(
            args.model_path, base["processor_path"], args.device, args.backend, args.system_prompt
        )
    summaries = []
    for k, (paths, settings, redo) in enumerate(passes):
        if several:
            print(f"=== pass {k + 1} of {args.num_samples} (seed {args.seed + k}) ===", flush=True)
        if redo:
            summaries.append(run_pass(generator, items, examples, problems, settings, paths))
        else:
            print(f"Skipping {paths['out']}: done with the same settings ({'scored' if scored else 'no answers'}). "
                  "--force redoes it.", flush=True)  # fmt: skip
            summaries.append(json.loads(Path(paths["score"]).read_text(encoding="utf-8")) if scored else None)
    if several and scored:
        path = output_paths(args.out_file)["score"]
        summary = {**benchmarks.aggregate(summaries), "seeds": [args.seed + k for k in range(args.num_samples)],
                   "audio_errors": summaries[0]["audio_errors"], "data_release": release["release"],
                   "data_sha256": release["sha256"], "sample_score_files": [paths["score"] for paths, *_ in passes]}  # fmt: skip
        write_json_atomic(path, summary)
        print(f"{benchmarks.format_report(summary)}\nWrote {path}", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m r1aqa.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add = parser.add_argument
    add("--model_path", required=True, help="Checkpoint folder or hub id (Qwen2-Audio or Qwen2.5-Omni; LoRA: merged).")
    add("--data_file", required=True, help="MMAU JSON, MMAR's MMAR-meta.jsonl, or an AVQA JSONL (r1aqa.prepare_avqa).")
    add("--audio_dir", help="Folder of the clips (required for MMAU and MMAR; AVQA rows name their own).")
    add("--out_file", required=True, help="Predictions JSON; the meta and score files go beside it.")
    add("--benchmark", choices=("auto", *benchmarks.BENCHMARKS), default="auto", help="Default: told from the items.")
    add("--processor_path", help="Default: the model folder, else the run folder of a checkpoint-N folder.")
    add("--protocol", choices=sorted(PROTOCOLS), default="default", help="paper: the paper-time settings, fixed.")
    add("--batch_size", type=int, help="Items per generate call (default 32; paper: 16).")
    add("--max_new_tokens", type=int, help="Default 256, as the paper.")
    add("--prompt_style", choices=sorted(benchmarks.PROMPT_STYLES), help="answer: Prompt <2> (default), think, plain.")
    add("--system_prompt", choices=("default", "qwen", "none"), default="default", help="The system turn.")
    add("--decoding", choices=DECODING_MODES, help="original (default): the checkpoint's own, seeded; greedy.")
    add("--seed", type=int, default=42, help="Seed of the first pass (recorded).")
    add("--num_samples", type=int, default=1, help="K passes with seeds seed..seed+K-1: mean ± std.")
    add("--audio", choices=("real", "silent"), default="real", help="silent: each clip replaced by silence.")
    add("--do_sample", type=str.lower, choices=("true", "false"), help="Override on top of --decoding.")
    for name, kind in (("temperature", float), ("top_k", int), ("top_p", float), ("repetition_penalty", float)):
        add(f"--{name}", type=kind, help="Override on top of --decoding.")
    add("--limit", type=int, help="Evaluate only the first N items.")
    add("--device", help="Default: cuda if available (bf16), else cpu (fp32).")
    add("--backend", choices=("hf", "vllm"), default="hf", help="vllm: the same prompts and decoding with vLLM.")
    add("--force", action="store_true", help="Redo even if done with the same settings.")
    args = parser.parse_args(argv)
    args.do_sample = None if args.do_sample is None else args.do_sample == "true"
    fixed = PROTOCOLS[args.protocol]
    given = {name: getattr(args, name) for name in (*fixed, *OVERRIDES) if getattr(args, name) is not None}
    if args.protocol == "paper" and (clash := [f"--{k} {v}" for k, v in given.items() if fixed.get(k) != v]):
        parser.error(f"--protocol paper fixes {fixed}: {', '.join(clash)} contradicts it. Drop it, or --protocol.")
    for name in ("batch_size", "max_new_tokens", "limit", "num_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    args.__dict__.update({name: value for name, value in fixed.items() if name not in given})
    if args.num_samples > 1 and args.decoding == "greedy" and not args.do_sample:
        parser.error("--num_samples > 1 needs sampling: greedy decoding gives the same predictions for every seed.")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        return evaluate(parse_args(argv))
    except (EvalError, ModelFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
