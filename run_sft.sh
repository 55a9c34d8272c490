#!/usr/bin/env bash
# Supervised fine-tuning baselines of R1-AQA (full and LoRA) on AVQA. Every variable below can be set from the
# environment; every argument after the script name goes to `python -m r1aqa.sft` (e.g. `--num_train_epochs 1`).
#
#   bash run_sft.sh                                   # full fine-tuning on one 8-GPU node (ZeRO-3)
#   SFT_TYPE=lora bash run_sft.sh                     # LoRA (plain DDP); test_mmau.sh evaluates its adapters as they are
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash run_sft.sh   # then NODE_RANK=1 on the second node
#   DS_CONFIG=configs/ds_zero3_offload.json bash run_sft.sh    # fewer or smaller GPUs: offload to CPU
#   DEVICE=cpu bash run_sft.sh                        # CPU smoke test: tiny random model, toy tone task, 4 steps
#
# With no GPU visible and no DEVICE=cpu it stops and says so. The CPU smoke test checks that the whole path runs
# (the same recipe, shrunk); it trains nothing meaningful. Paths you give are relative to the folder you run it from;
# the defaults are in the repository. A folder that already holds checkpoints is continued with --resume true.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$REPO/scripts/launch.sh"                             # PYTHON, DEVICE, SEEDS, node variables, launch_seeds
check_device
: "${SFT_TYPE:=full}"                                # full | lora
case "$SFT_TYPE" in
  full) DEFAULT_DS=$REPO/configs/ds_zero3.json ;;
  lora) DEFAULT_DS= ;;                               # LoRA on a 7B model fits in plain DDP
  *) launch_die "SFT_TYPE must be full or lora, got '$SFT_TYPE'" ;;
esac
: "${RECIPE:=$REPO/configs/sft_qwen2_audio_7b_${SFT_TYPE}.yaml}"
if [ "$DEVICE" = gpu ]; then
  : "${MODEL:=Qwen/Qwen2-Audio-7B-Instruct}"
  : "${DATA_FILE:=$REPO/data/avqa/train.jsonl}"
  : "${OUTPUT_DIR:=$REPO/outputs/sft-qwen2-audio-7b-${SFT_TYPE}}"
  : "${DS_CONFIG=$DEFAULT_DS}"                       # set it empty for plain DDP
  : "${NPROC_PER_NODE:=$GPUS}"
else
  : "${MODEL:=$CPU_MODEL}"
  : "${DATA_FILE:=$CPU_DATA}"
  : "${OUTPUT_DIR:=$REPO/outputs/sft-tiny-cpu-${SFT_TYPE}}"
  : "${DS_CONFIG:=}"
  : "${NPROC_PER_NODE:=${CPU_PROCS:-1}}"
fi

ARGS=(--config "$RECIPE" --model_name_or_path "$MODEL" --data_file "$DATA_FILE")
[ -n "$DS_CONFIG" ] && ARGS+=(--deepspeed "$DS_CONFIG")
if [ "$DEVICE" = cpu ]; then
  echo "DEVICE=cpu: the SFT SMOKE TEST ($MODEL, $DATA_FILE, a few steps): checks the path, learns nothing."
  prepare_cpu_tryout
  # The 7B recipe, shrunk: fp32 (bf16 matmuls are slow on most CPUs), 2 questions per step, 4 steps, no W&B.
  ARGS+=(--dtype float32 --bf16 false --gradient_checkpointing false --per_device_train_batch_size 2
         --gradient_accumulation_steps 1 --max_steps 4 --save_steps 2 --learning_rate 1e-3 --warmup_steps 0
         --report_to none)
fi

launch_seeds r1aqa.sft "$@"                      # SEEDS="42 43 44": one run per seed
