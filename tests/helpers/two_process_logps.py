"""One rank of a two-process training run whose log-prob passes are checked with tests/helpers/logp_checks.py; launched by
tests/test_two_process_training.py with torchrun (plain DDP on gloo, or DeepSpeed ZeRO-3 on CPU).

    torchrun --nproc_per_node 2 tests/helpers/two_process_logps.py MODEL_DIR OUT_DIR [--deepspeed DS.json] [--unshared]

Each rank trains the paper's batch shape (2 questions x G per device, accumulation 2, two iterations so that the
old-policy pass runs too) with plain SGD, and writes `OUT_DIR/rank<R>.json`: per log-prob pass, the questions of
its rows and how far the trainer's log-probs are from a plain forward with each row's own clip, another clip, no
audio and per-completion encoding; and the change of a few weights (gathered from ZeRO-3's shards), which with SGD
is the learning rate times the summed gradients of both steps (no gradient clipping). `--unshared` trains with
per-completion encoding (and recomputes every pass with shared encoding). Each rank also records the completions it
sampled and the logged loss per step: tests/test_two_process_training.py replays those completions in a one-process run of
the same global batch (`train_one_process`), whose loss and weight change must be the same.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers package

from r1aqa.deepspeed_cpu import enable_cpu_deepspeed  # noqa: E402

WEIGHTS = (  # one per part: audio encoder, projector, language model
    "model.audio_tower.layers.0.self_attn.q_proj.weight",
    "model.audio_tower.conv1.weight",
    "model.multi_modal_projector.linear.weight",
    "model.language_model.layers.0.mlp.up_proj.weight",
)


def full_weights(model) -> dict:
    """Copies of the WEIGHTS, gathered from ZeRO-3's shards (each rank holds only a slice once training starts)."""
    from contextlib import nullcontext

    params = dict(model.named_parameters())
    chosen = [params[name] for name in WEIGHTS]
    gathered = nullcontext()
    if any(hasattr(p, "ds_id") for p in chosen):
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(chosen)
    with gathered:
        return {name: p.detach().float().clone() for name, p in zip(WEIGHTS, chosen, strict=True)}


def training_settings(accumulation: int) -> dict:
    """The run's settings beside the model and data: 2 questions x G per device and `accumulation` micro-batches per
    optimizer step, two iterations per generation (the old-policy pass runs), plain SGD without gradient clipping (a
    weight's change is then linear in the gradients), two optimizer steps."""
    return dict(
        gradient_accumulation_steps=accumulation,
        num_iterations=2,
        max_steps=2,
        optim="sgd",
        learning_rate=1e-2,
        max_grad_norm=0.0,
    )


def record_generations(trainer) -> list[dict]:
    """Every generation call's prompts (token ids, one per completion) and sampled completions, appended as they run."""
    calls = []
    original = trainer._generate_single_turn

    def recorded(prompt_ids, *args, **kwargs):
        output = original(prompt_ids, *args, **kwargs)
        calls.append({"prompt_ids": [list(map(int, p)) for p in prompt_ids], "completion_ids": output[0]})
        return output

    trainer._generate_single_turn = recorded
    return calls


def replay_generations(trainer, calls: list[dict]) -> list[int]:
    """Make `trainer` generate the recorded completions: each prompt's, in their recorded order, wherever the prompt
    comes in the batch. Returns a list holding the number of completions still unused (0 once all were replayed)."""
    from collections import defaultdict, deque

    queued = defaultdict(deque)
    for call in calls:
        for prompt, completion in zip(call["prompt_ids"], call["completion_ids"], strict=True):
            queued[tuple(prompt)].append(list(completion))
    left = [sum(map(len, queued.values()))]

    def replayed(prompt_ids, *args, **kwargs):
        completions = [queued[tuple(map(int, p))].popleft() for p in prompt_ids]
        left[0] -= len(completions)
        return completions, None

    trainer._generate_single_turn = replayed
    return left


def train_one_process(model_dir: str, out_dir: str, calls: list[dict]) -> dict:
    """The same global batch on one process (accumulation 4 instead of 2 processes x 2), replaying `calls` (every
    rank's sampled completions): {"loss": per step, "deltas": weight changes, "unused": completions not replayed}."""
    from helpers.logp_checks import question_dataset
    from helpers.tiny_grpo import CLIPS, make_trainer

    trainer = make_trainer(model_dir, out_dir, dataset=question_dataset(CLIPS), **training_settings(4))
    left = replay_generations(trainer, calls)
    initial = full_weights(trainer.model)
    trainer.train()
    final = full_weights(trainer.model)
    return {
        "global_step": trainer.state.global_step,
        "loss": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "deltas": {name: final[name] - initial[name] for name in WEIGHTS},
        "unused": left[0],
        "generated_rows": trainer.args.generation_batch_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--deepspeed", default=None)
    parser.add_argument("--unshared", action="store_true", help="share_audio_encoding false")
    args = parser.parse_args()
    enable_cpu_deepspeed()  # before accelerate initialises (a no-op without DeepSpeed's use_cpu=False)

    import torch

    from helpers.logp_checks import LogpChecker, question_dataset
    from helpers.tiny_grpo import CLIPS, make_trainer

    trainer = make_trainer(
        args.model_dir,
        os.path.join(args.out_dir, "run"),
        dataset=question_dataset(CLIPS),
        **training_settings(2),
        use_cpu=args.deepspeed is None,
        deepspeed=args.deepspeed,
        share_audio_encoding=not args.unshared,
    )
    checker = LogpChecker(trainer, CLIPS, compare_sharing=True)
    generations = record_generations(trainer)
    initial = full_weights(trainer.model)
    trainer.train()
    final = full_weights(trainer.model)
    delta = {name: final[name] - initial[name] for name in WEIGHTS}
    params = dict(trainer.model.named_parameters())
    rank = trainer.accelerator.process_index
    deltas_file = os.path.join(args.out_dir, f"rank{rank}.deltas.pt")
    torch.save(delta, deltas_file)
    record = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "deepspeed": trainer.is_deepspeed_enabled,
        "share_audio_encoding": trainer.share_audio_encoding,
        "zero3_sharded": any(getattr(p, "ds_numel", None) for p in params.values()),
        "global_step": trainer.state.global_step,
        "calls": checker.calls,
        "weight_change": {name: value.abs().max().item() for name, value in delta.items()},
        "generations": generations,
        "loss": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
    }
    with open(os.path.join(args.out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
