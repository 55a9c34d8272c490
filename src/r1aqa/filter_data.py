"""Audio-contribution and difficulty filter: which training questions need the audio, and which carry an advantage.

For each question of an AVQA-format JSONL (what `r1aqa.prepare_avqa` writes), every `--model_path` samples K answers
with the clip and K with the clip replaced by silence of the same length; each answer is scored by the accuracy
reward training uses (`r1aqa.rewards.accuracy_reward`). Generation is evaluation's (`r1aqa.evaluate.Model`: the same
prompts, loaded audio, silence and backends, hf or vllm).

    python -m r1aqa.filter_data --model_path Qwen/Qwen2-Audio-7B-Instruct --data_file data/avqa/train_qa.jsonl \\
        --out_dir outputs/filter --num_samples 8
    DATA_FILE=outputs/filter/strong.jsonl ./run_grpo.sh     # train on the questions that need the audio

Splits (each a JSONL of the input's rows, byte for byte, so the training loader reads it as it is):
- `strong.jsonl`: strong audio contribution: the silence pass rate is at most `--silence_threshold` for at least
  `--min_models` of the models (default: all of them);
- `weak.jsonl`: every other question (answerable without hearing);
- `learnable.jsonl`: the first model's with-audio pass rate is strictly between 0 and 1 (its GRPO groups carry an
  advantage; the first `--model_path` is meant to be the model you train).
A question whose clip is missing or unreadable is in no split: it is listed in `summary.json` and counted.

Also in `--out_dir`: `settings.json` (sampling settings and thresholds), `pass_rates.jsonl` (per question and model),
`summary.json` and `summary.md` (counts per split and per `question_type`), `pass_rates.png` (the two pass rates).
Work is saved per shard (`shards/`, `--shard_size` questions of one model, written atomically): the same command
after a crash redoes only unfinished shards. Changing only the thresholds reuses every shard; adding a
`--model_path` at the end reuses the other models' shards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

from r1aqa.audio import check_audio
from r1aqa.benchmarks import data_release
from r1aqa.evaluate import (
    EvalError,
    Model,
    _local_or_hub,
    build_examples,
    generation_config,
    read_items,
    resolve_processor_path,
    silenced,
    write_json_atomic,
)
from r1aqa.prompts import extract_answer
from r1aqa.rewards import accuracy_reward

CONDITIONS = ("audio", "silence")
SPLITS = ("strong", "weak", "learnable")


def sample_seed(seed: int, sample: int, shard: int, batch: int) -> int:
    """The torch / vLLM seed of one batch of one pass: a rerun of a shard draws the same numbers. Both conditions use
    it, so a question's answers with and without the audio differ by the audio only."""
    import numpy as np

    return int(np.random.SeedSequence([seed, sample, shard, batch]).generate_state(1)[0])


def raw_rows(path: str) -> list[bytes]:
    """The non-blank lines of the input, as bytes (a split file repeats them exactly)."""
    return [line.rstrip(b"\n") for line in Path(path).read_bytes().split(b"\n") if line.strip()]


def run_shard(generator, config, examples, indices, problems, args, shard: int) -> list[dict]:
    """Pass counts of K samples with the audio and with silence for the questions `indices` of one shard, and the
    answers given (`extract_answer`, for inspection)."""
    from r1aqa.audio import prompts_with_audio

    ready = [i for i in indices if problems[i] is None]
    counts = {i: dict.fromkeys(CONDITIONS, 0) for i in ready}
    answers = {i: {f"{condition}_answers": [] for condition in CONDITIONS} for i in ready}
    batches = [ready[start : start + args.batch_size] for start in range(0, len(ready), args.batch_size)]
    for b, batch in enumerate(batches):
        conversations = prompts_with_audio([examples[i]["prompt"] for i in batch], channels=generator.audio_channels)
        solutions = [examples[i]["solution"] for i in batch]
        ids = [examples[i]["id"] for i in batch]
        for sample in range(args.num_samples):
            seed = sample_seed(args.seed, sample, shard, b)
            for condition in CONDITIONS:
                batch_conversations = conversations if condition == "audio" else [silenced(c) for c in conversations]
                # vLLM seeds each request from (seed, its item): the batch it falls in does not matter
                raws = generator.generate(batch_conversations, config, seed, item_seeds=(seed, ids))
                for i, raw, reward in zip(batch, raws, accuracy_reward(raws, solutions), strict=True):
                    counts[i][condition] += int(reward)
                    answers[i][f"{condition}_answers"].append(extract_answer(raw))
    return [
        {"index": i, "id": examples[i]["id"], "audio_error": problems[i], **counts.get(i, {}), **answers.get(i, {})}
        for i in indices
    ]


def sample_all(args, examples, problems, settings: dict) -> list[list[dict]]:
    """Per model, per question: `{"index", "id", "audio_error", "audio": passes, "silence": passes, answers}`, from
    finished shards where they exist (same settings), else generated and saved shard by shard."""
    n_shards = -(-len(examples) // args.shard_size)
    results = []
    for m, model_path in enumerate(args.model_path):
        evaluation = argparse.Namespace(
            model_path=model_path, device=args.device, backend=args.backend, system_prompt=args.system_prompt
        )
        loaded = Model(evaluation,
                       resolve_processor_path(model_path))  # fmt: skip
        config, rows = None, []
        for shard in range(n_shards):
            path = os.path.join(args.out_dir, "shards", f"model-{m}-shard-{shard:05d}.json")
            # What decides the shard's numbers (not the other models: adding one reuses this model's shards), and its
            # clips' state (a clip repaired or lost since: the shard is redone).
            indices = list(range(shard * args.shard_size, min((shard + 1) * args.shard_size, len(examples))))
            shared = {key: value for key, value in settings.items() if key != "model_paths"}
            header = {"settings": shared, "model_path": settings["model_paths"][m], "shard": shard,
                      "audio_errors": [problems[i] for i in indices]}  # fmt: skip
            if os.path.isfile(path):
                saved = json.loads(Path(path).read_text(encoding="utf-8"))
                if {key: saved.get(key) for key in header} == header:
                    rows += saved["questions"]
                    continue
            generator = loaded.get()
            if config is None:
                decoding = {"mode": "greedy", "max_new_tokens": args.max_new_tokens, "overrides": settings["sampling"]}
                config = generation_config(generator.checkpoint_config, generator.processor.tokenizer, decoding)
            questions = run_shard(generator, config, examples, indices, problems, args, shard)
            write_json_atomic(path, {**header, "questions": questions})
            print(f"model {m} shard {shard + 1}/{n_shards} done", flush=True)
            rows += questions
        results.append(rows)
        del loaded
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
            record["splits"].append("strong" if silent_fails >= need else "weak")
            if 0 < rates[0]["audio"] < 1:
                record["splits"].append("learnable")
            for name in record["splits"]:
                splits[name].append(index)
        records.append(record)
    return records, splits


def summarize(records: list[dict], splits: dict[str, list[int]]) -> dict:
    by_type = defaultdict(Counter)
    for record in records:
        for name in record["splits"] or ["audio_error"]:
            by_type[str(record["question_type"])][name] += 1
    errors = [{"index": r["index"], "id": r["id"], "error": r["audio_error"]} for r in records if "audio_error" in r]
    return {
        "n_questions": len(records),
        "counts": {name: len(indices) for name, indices in splits.items()} | {"audio_error": len(errors)},
        "by_question_type": {key: dict(counts) for key, counts in sorted(by_type.items())},
        "audio_errors": errors,
    }


def table(summary: dict) -> str:
    columns = (*SPLITS, "audio_error")
    lines = ["| question_type | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    rows = [*summary["by_question_type"].items(), ("**all**", summary["counts"])]
    lines += [f"| {name} | " + " | ".join(str(counts.get(c, 0)) for c in columns) + " |" for name, counts in rows]
    return "\n".join(lines)


def plot(records: list[dict], path: str, silence_threshold: float) -> None:
    """Silence vs with-audio pass rate, one point per question and model (jittered: rates are multiples of 1/K), and
    the threshold (at or below it: fails without audio)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rng = np.random.default_rng(0)
    figure, axis = plt.subplots(figsize=(5, 5))
    models = list(dict.fromkeys(m for r in records for m in r.get("pass_rates", {})))
    for model in models:
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
    _, items = read_items(args.data_file, "avqa")
    rows = raw_rows(args.data_file)
    if len(rows) != len(items):
        raise EvalError(f"{args.data_file}: {len(rows)} non-blank lines but {len(items)} items were read.")
    examples = build_examples(items, args.audio_dir, args.prompt_style, "avqa")
    problems = [check_audio(example["audio_path"]) for example in examples]
    for index in (i for i, problem in enumerate(problems) if problem):
        print(f"Audio error, question {items[index]['id']!r} kept out of every split: {problems[index]}", flush=True)
    sampling = {"do_sample": True, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    settings = {
        "model_paths": [_local_or_hub(path) for path in args.model_path],
        "data_file": os.path.abspath(args.data_file),
        "data_sha256": data_release(args.data_file)["sha256"],
        "audio_dir": args.audio_dir and os.path.abspath(args.audio_dir),
        "prompt_style": args.prompt_style,
        "system_prompt": args.system_prompt,
        "num_samples": args.num_samples,
        "max_new_tokens": args.max_new_tokens,
        "sampling": sampling,
        "seed": args.seed,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "backend": args.backend,
    }
    results = sample_all(args, examples, problems, settings)
    thresholds = {"silence_threshold": args.silence_threshold, "min_models": args.min_models or len(args.model_path)}
    records, splits = assign_splits(items, results, args)
    write_json_atomic(os.path.join(args.out_dir, "settings.json"), {**settings, "thresholds": thresholds})
    for name, indices in splits.items():
        with open(os.path.join(args.out_dir, f"{name}.jsonl"), "wb") as f:
            f.writelines(rows[i] + b"\n" for i in indices)
    with open(os.path.join(args.out_dir, "pass_rates.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    summary = summarize(records, splits) | {"thresholds": thresholds}
    write_json_atomic(os.path.join(args.out_dir, "summary.json"), summary)
    Path(args.out_dir, "summary.md").write_text(table(summary) + "\n", encoding="utf-8")
    plot(records, os.path.join(args.out_dir, "pass_rates.png"), args.silence_threshold)
    print(table(summary), flush=True)
    print(f"Wrote the splits, pass rates, summary and plot to {args.out_dir}", flush=True)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m r1aqa.filter_data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_path", action="append", required=True,
                        help="Checkpoint folder or hub id; repeat for several models (the first one decides "
                        "`learnable`).")  # fmt: skip
    parser.add_argument("--data_file", required=True, help="AVQA-format JSONL (r1aqa.prepare_avqa).")
    parser.add_argument("--audio_dir", help="Folder of the clips, if they moved since the conversion (file names).")
    parser.add_argument("--out_dir", required=True, help="Splits, pass rates, summary, plot and shards go here.")
    parser.add_argument("--num_samples", type=int, default=8, help="K answers per question and condition (8: G).")
    parser.add_argument("--silence_threshold", type=float, default=0.0,
                        help="A model fails without audio when its silence pass rate is at most this.")  # fmt: skip
    parser.add_argument("--min_models", type=int, help="Strong: fails without audio for this many models (all).")
    # The paper's rollout sampling (configs/grpo_qwen2_audio_7b.yaml), so pass rates are those GRPO's groups see.
    parser.add_argument("--temperature", type=float, default=1.0, help="Rollout temperature (paper: 1.0).")
    parser.add_argument("--top_k", type=int, default=50, help="Rollout top-k (paper: 50; 0: off).")
    parser.add_argument("--top_p", type=float, default=1.0, help="Rollout top-p (paper: 1.0).")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="Paper's max_completion_length: 256.")
    parser.add_argument("--prompt_style", choices=("answer", "think"), default="answer", help="Prompt <2> or <3>.")
    parser.add_argument(
        "--system_prompt",
        choices=("default", "qwen", "none"),
        default="default",
        help="The system turn, as training's `system_prompt` (default: the chat template's own).",
    )
    parser.add_argument("--seed", type=int, default=42, help="Seed of the sampling (recorded).")
    parser.add_argument("--shard_size", type=int, default=256, help="Questions per saved shard.")
    parser.add_argument("--batch_size", type=int, default=32, help="Questions per generate call.")
    parser.add_argument("--device", help="Default: cuda if available (bf16), else cpu (fp32).")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="As r1aqa.evaluate --backend.")
    args = parser.parse_args(argv)
    for name in ("num_samples", "max_new_tokens", "shard_size", "batch_size", "min_models"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1.")
    if args.min_models is not None and args.min_models > len(args.model_path):
        parser.error(f"--min_models {args.min_models} exceeds the {len(args.model_path)} --model_path given.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
