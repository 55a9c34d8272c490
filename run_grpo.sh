#!/usr/bin/env bash
# GRPO training of Qwen2-Audio on AVQA (R1-AQA). Every variable below can be set from the environment; every
# argument after the script name goes to `python -m r1aqa.grpo` (e.g. `--max_steps 500 --think true`).
#
#   bash run_grpo.sh                                   # one 8-GPU node, the paper's recipe
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash run_grpo.sh   # then NODE_RANK=1 on the second node
#   DS_CONFIG=configs/ds_zero3_offload.json bash run_grpo.sh    # fewer or smaller GPUs: offload to CPU
#   DEVICE=cpu bash run_grpo.sh                        # CPU try-out: tiny random model, toy tone task
#   DEVICE=cpu PYTHON=.venv-vllm/bin/python bash run_grpo.sh --use_vllm true   # the same, generating with vLLM
#   SMOKE=1 bash run_grpo.sh                           # a first run: 20 steps, then a report (time, memory, disk)
#
# With no GPU visible and no DEVICE=cpu it stops and says so. DEVICE=cpu CPU_PROCS=2 runs two processes; add
# DS_CONFIG=configs/ds_zero3.json for DeepSpeed ZeRO-3 on CPU. Paths you give (MODEL, DATA_FILE, OUTPUT_DIR, RECIPE,
# DS_CONFIG, --output_dir ...) are relative to the folder you run it from; the defaults are in the repository.
# A folder that already holds checkpoints is continued with --resume true, never overwritten by default.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$REPO/scripts/launch.sh"                     # PYTHON, DEVICE, SEEDS, node variables, launch_seeds
check_device
SUFFIX=""                                            # default folders: think mode and smoke runs get their own
if flag_true --think "$@"; then SUFFIX+="-think"; fi
if [ "${SMOKE:-0}" = 1 ]; then SUFFIX+="-smoke"; fi

if [ "$DEVICE" = gpu ]; then
  : "${MODEL:=Qwen/Qwen2-Audio-7B-Instruct}"
  : "${DATA_FILE:=$REPO/data/avqa/train.jsonl}"
  : "${OUTPUT_DIR:=$REPO/outputs/grpo-qwen2-audio-7b$SUFFIX}"
  : "${RECIPE:=$REPO/configs/grpo_qwen2_audio_7b.yaml}"
  : "${DS_CONFIG=$REPO/configs/ds_zero3.json}"     # set it empty for plain DDP
  : "${NPROC_PER_NODE:=$GPUS}"
else
  if flag_true --use_vllm "$@"; then                 # vLLM's CPU attention needs a head size of at least 32
    CPU_MODEL=$REPO/outputs/tiny-qwen2-audio-vllm CPU_TINY_ARGS=(--head_dim 32)
  fi
  : "${MODEL:=$CPU_MODEL}"
  : "${DATA_FILE:=$CPU_DATA}"
  : "${OUTPUT_DIR:=$REPO/outputs/grpo-tiny-cpu$SUFFIX}"
  : "${RECIPE:=$REPO/configs/grpo_tiny_cpu.yaml}"
  : "${DS_CONFIG:=}"
  : "${NPROC_PER_NODE:=${CPU_PROCS:-1}}"
fi

ARGS=(--config "$RECIPE" --model_name_or_path "$MODEL" --data_file "$DATA_FILE")
[ -n "$DS_CONFIG" ] && ARGS+=(--deepspeed "$DS_CONFIG")
if [ "$DEVICE" = cpu ]; then
  echo "DEVICE=cpu: the CPU try-out ($MODEL, $DATA_FILE, $RECIPE). Set MODEL/DATA_FILE/RECIPE to change it."
  prepare_cpu_tryout
fi
if [ "${SMOKE:-0}" = 1 ]; then                      # disposable: a rerun replaces the last smoke run
  echo "SMOKE=1: a first run of 20 steps into $OUTPUT_DIR, then a report (time, memory, disk)."
  ARGS+=(--smoke true --overwrite_output_dir true)
fi

launch_seeds r1aqa.grpo "$@"                      # SEEDS="42 43 44": one run per seed
