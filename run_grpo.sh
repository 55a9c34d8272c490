#!/usr/bin/env bash
# GRPO training of Qwen2-Audio on AVQA (R1-AQA). Every variable below can be set from the environment; every
# argument after the script name goes to `python -m r1aqa.grpo` (e.g. `--max_steps 500 --think true`).
#
#   bash run_grpo.sh                                   # one 8-GPU node, the paper's recipe
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash run_grpo.sh   # then NODE_RANK=1 on the second node
#   DS_CONFIG=configs/ds_zero3_offload.json bash run_grpo.sh    # fewer or smaller GPUs: offload to CPU
#
# Without a GPU it runs the same entry point on CPU with a tiny random model and a toy tone task (built on first
# use), so the whole path can be tried anywhere. CPU_PROCS=2 runs two processes; add DS_CONFIG=configs/ds_zero3.json
# for DeepSpeed ZeRO-3 on CPU.
set -euo pipefail
cd "$(dirname "$0")"

# --- quick config --------------------------------------------------------------------------------------------------
: "${PYTHON:=$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$GPUS" -gt 0 ]; then
  : "${MODEL:=Qwen/Qwen2-Audio-7B-Instruct}"
  : "${DATA_FILE:=data/avqa/train.jsonl}"
  : "${OUTPUT_DIR:=outputs/grpo-qwen2-audio-7b}"
  : "${RECIPE:=configs/grpo_qwen2_audio_7b.yaml}"
  : "${DS_CONFIG=configs/ds_zero3.json}"           # set it empty for plain DDP
  : "${NPROC_PER_NODE:=$GPUS}"
else
  : "${MODEL:=outputs/tiny-qwen2-audio}"
  : "${DATA_FILE:=outputs/toy/train.jsonl}"
  : "${OUTPUT_DIR:=outputs/grpo-tiny-cpu}"
  : "${RECIPE:=configs/grpo_tiny_cpu.yaml}"
  : "${DS_CONFIG:=}"
  : "${NPROC_PER_NODE:=${CPU_PROCS:-1}}"
fi
: "${NNODES:=1}"
: "${NODE_RANK:=0}"
: "${MASTER_ADDR:=127.0.0.1}"
: "${MASTER_PORT:=29500}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

ARGS=(--config "$RECIPE" --model_name_or_path "$MODEL" --data_file "$DATA_FILE" --output_dir "$OUTPUT_DIR")
[ -n "$DS_CONFIG" ] && ARGS+=(--deepspeed "$DS_CONFIG")

if [ "$GPUS" -eq 0 ]; then
  echo "No GPU found: running the CPU try-out (tiny model, toy task). Set MODEL/DATA_FILE/RECIPE to change it."
  [ -f "$MODEL/config.json" ] || [ "$MODEL" != outputs/tiny-qwen2-audio ] \
    || "$PYTHON" -m r1aqa.tiny --out "$MODEL" --extra_tokens "<answer>" "</answer>" low top
  [ -f "$DATA_FILE" ] || [ "$DATA_FILE" != outputs/toy/train.jsonl ] \
    || "$PYTHON" -m r1aqa.toy_task --out outputs/toy > /dev/null
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  # DeepSpeed on CPU needs use_cpu=false (see src/r1aqa/cpu_deepspeed.py); plain CPU runs need use_cpu=true.
  if [ -n "$DS_CONFIG" ]; then ARGS+=(--use_cpu false); fi
fi

if [ "$NPROC_PER_NODE" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC_PER_NODE" --nnodes "$NNODES" \
    --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m r1aqa.grpo "${ARGS[@]}" "$@"
fi
exec "$PYTHON" -m r1aqa.grpo "${ARGS[@]}" "$@"
