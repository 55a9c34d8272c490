"""Merge a LoRA adapter (from `r1aqa.sft` with `use_peft: true`) into its base model: a full model folder.

The result loads like its base model (Qwen2-Audio, or a Qwen2.5-Omni thinker: `r1aqa.models.load_model` and
`load_processor`), so `test_mmau.sh` evaluates it like any other checkpoint.

    python -m r1aqa.merge_lora --adapter outputs/sft-qwen2-audio-7b-lora --out outputs/sft-qwen2-audio-7b-lora-merged
    # every checkpoint of a run
    for c in outputs/sft-qwen2-audio-7b-lora/checkpoint-*; do
        python -m r1aqa.merge_lora --adapter "$c" --out "outputs/sft-lora-merged/$(basename "$c")"; done

The base model is the one the adapter was trained on (`base_model_name_or_path` in its adapter_config.json) unless
`--base` says otherwise (e.g. when the run's path does not exist on this machine). The processor is taken from the
adapter folder (`r1aqa.sft` and the trainer's checkpoints save it there), else from the base model.
"""

from __future__ import annotations

import argparse
import json
import os

ADAPTER_CONFIG = "adapter_config.json"
DTYPES = ("auto", "bfloat16", "float16", "float32")


def adapter_base(adapter_dir: str) -> str:
    """The base model recorded in the adapter's config."""
    path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    if not os.path.isfile(path):
        raise SystemExit(
            f"{adapter_dir!r} has no {ADAPTER_CONFIG}: point --adapter at the output (or a checkpoint-N folder) of "
            "a LoRA run (`use_peft: true`)."
        )
    with open(path, encoding="utf-8") as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise SystemExit(f"{path} names no base model: pass --base MODEL.")
    return base


def _has_processor(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "preprocessor_config.json")) or os.path.isfile(
        os.path.join(folder, "processor_config.json")
    )


def merge_lora(adapter_dir: str, out_dir: str, base: str | None = None, dtype: str = "auto") -> str:
    """Load base + adapter, fold the LoRA weights into the base weights, save model and processor to `out_dir`."""
    import torch
    from peft import PeftModel

    from r1aqa.models import detect_family, load_model, load_processor

    base = base or adapter_base(adapter_dir)
    if os.path.abspath(out_dir) == os.path.abspath(adapter_dir):
        raise SystemExit("--out must differ from --adapter (the adapter files would be mixed with the merged model).")
    family = detect_family(base)  # Qwen2-Audio or a Qwen2.5-Omni thinker (r1aqa.models)
    model = load_model(base, family, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    processor = load_processor(adapter_dir if _has_processor(adapter_dir) else base, family)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="Folder with adapter_config.json (a LoRA run or checkpoint).")
    parser.add_argument("--out", required=True, help="Folder to write the merged model and processor to.")
    parser.add_argument("--base", default=None, help="Base model (default: the one in adapter_config.json).")
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="Weights' dtype for merging and saving (auto: the base's)."
    )
    args = parser.parse_args(argv)
    out = merge_lora(args.adapter, args.out, args.base, args.dtype)
    print(f"Merged {args.adapter} into {args.base or adapter_base(args.adapter)}: wrote {out}")


if __name__ == "__main__":
    main()
