"""One rank of a two-process training run whose log-prob passes are checked with tests/logp_checks.py; launched by
tests/test_two_processes.py with torchrun (plain DDP on gloo, or DeepSpeed ZeRO-3 on CPU).

    torchrun --nproc_per_node 2 tests/two_process_logps.py MODEL_DIR OUT_DIR [--deepspeed DS.json] [--unshared]

Each rank trains the paper's batch shape (2 questions x G per device, accumulation 2, two iterations so that the
old-policy pass runs too) with plain SGD, and writes `OUT_DIR/rank<R>.json`: per log-prob pass, the questions of
its rows and how far the trainer's log-probs are from a plain forward with each row's own clip, another clip, no
audio and per-completion encoding; and the change of a few weights (gathered from ZeRO-3's shards), which with SGD
is the learning rate times the summed gradients of both steps. `--unshared` trains with per-completion encoding
(and recomputes every pass with shared encoding).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from r1aqa.cpu.deepspeed_patch import enable_cpu_deepspeed  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--deepspeed", default=None)
    parser.add_argument("--unshared", action="store_true", help="share_audio_encoding false")
    args = parser.parse_args()
    enable_cpu_deepspeed()  # before accelerate initialises (a no-op without DeepSpeed's use_cpu=False)

    import torch
    from logp_checks import LogpChecker, question_dataset
    from tiny_grpo import CLIPS, make_trainer

    trainer = make_trainer(
        args.model_dir,
        os.path.join(args.out_dir, "run"),
        dataset=question_dataset(CLIPS),
        gradient_accumulation_steps=2,
        num_iterations=2,
        max_steps=2,
        optim="sgd",
        learning_rate=1e-2,
        use_cpu=args.deepspeed is None,
        deepspeed=args.deepspeed,
        share_audio_encoding=not args.unshared,
    )
    checker = LogpChecker(trainer, CLIPS, compare_sharing=True)
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
    }
    with open(os.path.join(args.out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
