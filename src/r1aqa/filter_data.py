"""Audio-contribution and difficulty filter: which training questions need the audio, and which carry an advantage
(docs/filter.md).

    python -m r1aqa.filter_data --model_path Qwen/Qwen2-Audio-7B-Instruct --data_file data/avqa/train_qa.jsonl \\
        --out_dir outputs/filter --num_samples 8
    DATA_FILE=outputs/filter/strong.jsonl ./run_grpo.sh     # train on the questions that need the audio

Each model samples K answers per question with the clip and K with silence, scored by the accuracy reward: the
input's rows go to `strong.jsonl` (fails without audio), `weak.jsonl`, `learnable.jsonl` (pass rate in (0, 1)).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from r1aqa.audio import check_audio, prompts_with_audio
from r1aqa.benchmarks import data_release, example, read_items
from r1aqa.decoding import EvalError, generation_config
from r1aqa.evaluate import generate_all, load_generator, write_json_atomic
from r1aqa.models import ModelFolderError, local_or_hub, resolve_processor_path
from r1aqa.prompts import extract_answer
from r1aqa.rewards import accuracy_reward

CONDITIONS = ("audio", "silence")
SPLITS = ("strong", "weak", "learnable")


def run_shard(generator, config, examples, indices, problems, args, shard: int) -> list[dict]:
    """Pass counts of K samples with the audio and with silence for the questions `indices`, and the answers given."""
    ready = [i for i in indices if problems[i] is None]
    loaded = prompts_with_audio([examples[i]["prompt"] for i in ready], channels=generator.audio_channels)
    ids, solutions = [examples[i]["id"] for i in ready], [examples[i]["solution"] for i in ready]
    rows = {i: {**dict.fromkeys(CONDITIONS, 0), **{f"{c}_answers": [] for c in CONDITIONS}} for i in ready}
    for sample in range(args.num_samples):
        # the same seed for both conditions: a question's answers with and without the audio differ by the audio only
        seed = int(np.random.SeedSequence([args.seed, sample, shard]).generate_state(1)[0])
        for condition in CONDITIONS:
            raws = generate_all(generator, loaded, ids, config, seed, args.batch_size, condition == "silence")
            for i, raw, reward in zip(ready, raws, accuracy_reward(raws, solutions), strict=True):
                rows[i][condition] += int(reward)
                rows[i][f"{condition}_answers"].append(extract_answer(raw))
    return [{"index": i, "id": examples[i]["id"], "audio_error": problems[i], **rows.get(i, {})} for i in indices]


def sample_all(args, examples, problems, settings: dict) -> list[list[dict]]:
    """Per model, per question: `run_shard`'s rows, from saved shards with the same settings, else generated."""
    n_shards = -(-len(examples) // args.shard_size)
    shared = {key: value for key, value in settings.items() if key != "model_paths"}  # adding a model reuses shards
    results = []
    for m, model_path in enumerate(args.model_path):
        generator, config, rows = None, None, []
        for shard in range(n_shards):
            path = os.path.join(args.out_dir, "shards", f"model-{m}-shard-{shard:05d}.json")
            indices = list(range(shard * args.shard_size, min((shard + 1) * args.shard_size, len(examples))))
            header = {"settings": shared, "model_path": settings["model_paths"][m], "shard": shard,
                      "audio_errors": [problems[i] for i in indices]}  # fmt: skip
            if os.path.isfile(path):
                saved = json.loads(Path(path).read_text(encoding="utf-8"))
                if {key: saved.get(key) for key in header} == header:
                    rows += saved["questions"]
                    continue
            if generator is None:
                generator = load_generator(model_path, resolve_processor_path(model_path), args.device, args.backend,
                                           args.system_prompt)  # fmt: skip
                decoding = {"mode": "greedy", "max_new_tokens": args.max_new_tokens, "overrides": settings["sampling"]}
                config = generation_config(generator.checkpoint_config, generator.processor.tokenizer, decoding)
            questions = run_shard(generator, config, examples, indices, problems, args, shard)
            write_json_atomic(path, {**header, "questions": questions})
            print(f"model {m} shard {shard + 1}/{n_shards} done", flush=True)
            rows += questions
        results.append(rows)
    return results


def assign_splits(items, results, args) -> tuple[list[dict], dict[str, list[int]]]:
    """Per question record (pass rates per model, splits) and the indices of each split."""
    k, need = args.num_samples, args.min_models or len(args.model_path)
    records, splits = [], {name: [] for name in SPLITS}
    for index, item in enumerate(items):
        per_model = [rows[index] for rows in results]
        record = {"index": index, "id": item["id"], "question_type": item.get("question_type"), "splits": []}
        if per_model[0]["audio_error"]:
            record["audio_error"] = per_model[0]["audio_error"]
        else:
            rates = [{c: row[c] / k for c in CONDITIONS} for row in per_model]
            record["pass_rates"] = dict(zip(args.model_path, rates, strict=True))
            silent_fails = sum(rate["silence"] <= args.silence_threshold for rate in rates)
            learnable = ["learnable"] if 0 < rates[0]["audio"] < 1 else []
            record["splits"] = ["strong" if silent_fails >= need else "weak", *learnable]
            for name in record["splits"]:
                splits[name].append(index)
        records.append(record)
    return records, splits


def summarize(records: list[dict], splits: dict[str, list[int]]) -> tuple[dict, str]:
    """The summary (counts per split and per `question_type`, the audio errors) and its markdown table (printed)."""
    by_type = defaultdict(Counter)
    for record in records:
        for name in record["splits"] or ["audio_error"]:
            by_type[str(record["question_type"])][name] += 1
    errors = [{"index": r["index"], "id": r["id"], "error": r["audio_error"]} for r in records if "audio_error" in r]
    summary = {"n_questions": len(records),
               "counts": {name: len(indices) for name, indices in splits.items()} | {"audio_error": len(errors)},
               "by_question_type": {key: dict(counts) for key, counts in sorted(by_type.items())},
               "audio_errors": errors}  # fmt: skip
    columns = (*SPLITS, "audio_error")
    lines = ["| question_type | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    rows = [*summary["by_question_type"].items(), ("**all**", summary["counts"])]
    lines += [f"| {name} | " + " | ".join(str(counts.get(c, 0)) for c in columns) + " |" for name, counts in rows]
    return summary, "\n".join(lines)


def plot(records: list[dict], path: str, silence_threshold: float) -> None:
    """Silence vs with-audio pass rate, one point per question and model (jittered: rates are multiples of 1/K)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    figure, axis = plt.subplots(figsize=(5, 5))
    for model in dict.fromkeys(m for r in records for m in r.get("pass_rates", {})):
        rates = np.array([[r["pass_rates"][model][c] for c in CONDITIONS] for r in records if "pass_rates" in r])
        rates += rng.uniform(-0.015, 0.015, size=rates.shape)
        axis.scatter(rates[:, 0], rates[:, 1], s=12, alpha=0.6, label=os.path.basename(model.rstrip("/")))
    axis.axhline(silence_threshold, color="gray", linestyle="--", linewidth=1, label="silence threshold")
    axis.set(xlabel="pass rate with audio", ylabel="pass rate with silence", xlim=(-0.05, 1.05), ylim=(-0.05, 1.05))
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(args: argparse.Namespace) -> dict:
    try:
        items = read_items(args.data_file, "avqa")[1]
        examples = [example("avqa", item, args.audio_dir, args.prompt_style) for item in items]
    except (OSError, ValueError) as error:
        raise EvalError(str(error)) from error
    rows = [line for line in Path(args.data_file).read_bytes().split(b"\n") if line.strip()]  # split files copy them
    if len(rows) != len(items):
        raise EvalError(f"{args.data_file}: {len(rows)} non-blank lines but {len(items)} items were read.")
    problems = [check_audio(example["audio_path"]) for example in examples]
    for item, problem in zip(items, problems, strict=True):
        if problem:
            print(f"Audio error, question {item['id']!r} kept out of every split: {problem}", flush=True)
    settings = {
        "model_paths": [local_or_hub(path) for path in args.model_path],
        "data_file": os.path.abspath(args.data_file), "data_sha256": data_release(args.data_file)["sha256"],
        "audio_dir": args.audio_dir and os.path.abspath(args.audio_dir), "prompt_style": args.prompt_style,
        "system_prompt": args.system_prompt, "num_samples": args.num_samples, "max_new_tokens": args.max_new_tokens,
        "sampling": {"do_sample": True, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p},
        "seed": args.seed, "shard_size": args.shard_size, "batch_size": args.batch_size, "backend": args.backend,
    }  # fmt: skip
    results = sample_all(args, examples, problems, settings)
    thresholds = {"silence_threshold": args.silence_threshold, "min_models": args.min_models or len(args.model_path)}
    records, splits = assign_splits(items, results, args)
    write_json_atomic(os.path.join(args.out_dir, "settings.json"), {**settings, "thresholds": thresholds})
    for name, indices in splits.items():
        Path(args.out_dir, f"{name}.jsonl").write_bytes(b"".join(rows[i] + b"\n" for i in indices))
    lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
    Path(args.out_dir, "pass_rates.jsonl").write_text("".join(lines), encoding="utf-8")
    summary, table = summarize(records, splits)
    summary["thresholds"] = thresholds
    write_json_atomic(os.path.join(args.out_dir, "summary.json"), summary)
    plot(records, os.path.join(args.out_dir, "pass_rates.png"), args.silence_threshold)
    print(f"{table}\nWrote the splits, pass rates, summary and plot to {args.out_dir}", flush=True)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m r1aqa.filter_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add = parser.add_argument
    add("--model_path", action="append", required=True, help="Checkpoint or hub id; repeat: several models.")
    add("--data_file", required=True, help="AVQA-format JSONL (r1aqa.prepare_avqa).")
    add("--audio_dir", help="Folder of the clips, if they moved since the conversion (file names).")
    add("--out_dir", required=True, help="Splits, pass rates, summary, plot and shards go here.")
    add("--num_samples", type=int, default=8, help="K answers per question and condition (8: G).")
    add("--silence_threshold", type=float, default=0.0, help="Fails without audio: silence pass rate at most this.")
    add("--min_models", type=int, help="Strong: fails without audio for this many models (default: all).")
    add("--temperature", type=float, default=1.0, help="Rollout temperature (paper: 1.0, the rate GRPO's groups see).")
    add("--top_k", type=int, default=50, help="Rollout top-k (paper: 50; 0: off).")
    add("--top_p", type=float, default=1.0, help="Rollout top-p (paper: 1.0).")
    add("--max_new_tokens", type=int, default=256, help="Paper's max_completion_length: 256.")
    add("--prompt_style", choices=("answer", "think"), default="answer", help="Prompt <2> or <3>.")
    add("--system_prompt", choices=("default", "qwen", "none"), default="default", help="As training's system_prompt.")
    add("--seed", type=int, default=42, help="Seed of the sampling (recorded).")
    add("--shard_size", type=int, default=256, help="Questions per saved shard.")
    add("--batch_size", type=int, default=32, help="Questions per generate call.")
    add("--device", help="Default: cuda if available (bf16), else cpu (fp32).")
    add("--backend", choices=("hf", "vllm"), default="hf", help="As r1aqa.evaluate --backend.")
    args = parser.parse_args(argv)
    for name in ("num_samples", "max_new_tokens", "shard_size", "batch_size", "min_models"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1.")
    if args.min_models is not None and args.min_models > len(args.model_path):
        parser.error(f"--min_models {args.min_models} exceeds the {len(args.model_path)} --model_path given.")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
        return 0
    except (EvalError, ModelFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
