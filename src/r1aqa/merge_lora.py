"""Merge a LoRA adapter (`r1aqa.sft` with `use_peft: true`) into its base model: a full model folder, evaluated like any
checkpoint. `python -m r1aqa.merge_lora --adapter outputs/sft-qwen2-audio-7b-lora --out outputs/...-merged`"""

from __future__ import annotations

import argparse
import os

from r1aqa import models


def merge_lora(adapter_dir: str, out_dir: str, base: str | None = None, dtype: str = "auto") -> str:
    """Base + adapter with the LoRA weights folded in, saved with the run's processor (else the base's) to `out_dir`."""
    import torch

    if not os.path.isfile(os.path.join(adapter_dir, models.ADAPTER_CONFIG)):
        raise SystemExit(f"{adapter_dir}: no {models.ADAPTER_CONFIG}; --adapter takes a LoRA run or checkpoint.")
    if os.path.abspath(out_dir) == os.path.abspath(adapter_dir):
        raise SystemExit("--out must differ from --adapter (the adapter files would be mixed with the merged model).")
    base = base or models.adapter_base_model(adapter_dir)  # ModelFolderError if it names none: it says --base
    family = models.detect_family(base)
    model = models.load_merged_adapter(
        adapter_dir, base, family, dtype=dtype if dtype == "auto" else getattr(torch, dtype)
    )
    processor = models.load_processor(models.resolve_processor_path(adapter_dir, base_model=base), family)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="Folder with adapter_config.json (a LoRA run or checkpoint).")
    parser.add_argument("--out", required=True, help="Folder to write the merged model and processor to.")
    parser.add_argument("--base", default=None, help="Base model (default: the one in adapter_config.json).")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    args = parser.parse_args(argv)
    try:
        print(f"Merged {args.adapter}: wrote {merge_lora(args.adapter, args.out, args.base, args.dtype)}")
    except models.ModelFolderError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
