#!/usr/bin/env bash
# Supervised fine-tuning baselines of R1-AQA (full and LoRA) on AVQA. Every variable below can be set from the
# environment; every argument after the script name goes to `python -m r1aqa.sft` (e.g. `--num_train_epochs 1`).
#
#   bash run_sft.sh                                   # full fine-tuning on one 8-GPU node (ZeRO-3)
#   SFT_TYPE=lora bash run_sft.sh                     # LoRA (plain DDP); then merge: python -m r1aqa.merge_lora
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash run_sft.sh   # then NODE_RANK=1 on the second node
#   DS_CONFIG=configs/ds_zero3_offload.json bash run_sft.sh    # fewer or smaller GPUs: offload to CPU
#
# Without a GPU it runs a SMOKE TEST on CPU: the same entry point and recipe with a tiny random model and four real
# AVQA clips carrying made-up questions (both built on first use under outputs/sft-smoke/), a few steps. It checks
# that the whole path runs; it trains nothing meaningful.
set -euo pipefail
cd "$(dirname "$0")"

# --- quick config --------------------------------------------------------------------------------------------------
: "${PYTHON:=$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
: "${SFT_TYPE:=full}"                                # full | lora
case "$SFT_TYPE" in
  full) DEFAULT_DS=configs/ds_zero3.json ;;
  lora) DEFAULT_DS= ;;                               # LoRA on a 7B model fits in plain DDP
  *) echo "SFT_TYPE must be full or lora, got '$SFT_TYPE'" >&2; exit 2 ;;
esac
: "${RECIPE:=configs/sft_qwen2_audio_7b_${SFT_TYPE}.yaml}"
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$GPUS" -gt 0 ]; then
  : "${MODEL:=Qwen/Qwen2-Audio-7B-Instruct}"
  : "${DATA_FILE:=data/avqa/train.jsonl}"
  : "${OUTPUT_DIR:=outputs/sft-qwen2-audio-7b-${SFT_TYPE}}"
  : "${DS_CONFIG=$DEFAULT_DS}"                       # set it empty for plain DDP
  : "${NPROC_PER_NODE:=$GPUS}"
else
  SMOKE_DIR=outputs/sft-smoke
  : "${MODEL:=$SMOKE_DIR/tiny-qwen2-audio}"
  : "${DATA_FILE:=$SMOKE_DIR/train.jsonl}"
  : "${OUTPUT_DIR:=$SMOKE_DIR/$SFT_TYPE}"
  : "${DS_CONFIG:=}"
  : "${NPROC_PER_NODE:=${CPU_PROCS:-1}}"
fi
: "${NNODES:=1}"
: "${NODE_RANK:=0}"
: "${MASTER_ADDR:=127.0.0.1}"
: "${MASTER_PORT:=29500}"
: "${R1AQA_SHARED_DATA:=$(dirname "$PWD")/shared/data}"  # the four real AVQA clips of the CPU smoke test
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

ARGS=(--config "$RECIPE" --model_name_or_path "$MODEL" --data_file "$DATA_FILE" --output_dir "$OUTPUT_DIR")
[ -n "$DS_CONFIG" ] && ARGS+=(--deepspeed "$DS_CONFIG")

if [ "$GPUS" -eq 0 ]; then
  echo "No GPU found: running the CPU SMOKE TEST (tiny random model, 4 clips with made-up questions, a few steps)."
  [ -f "$MODEL/config.json" ] || [ "$MODEL" != "$SMOKE_DIR/tiny-qwen2-audio" ] \
    || "$PYTHON" -m r1aqa.tiny --out "$MODEL"
  if [ ! -f "$DATA_FILE" ] && [ "$DATA_FILE" = "$SMOKE_DIR/train.jsonl" ]; then
    # AVQA's JSONL format (SPEC §2) on real clips; the questions and answers are invented, labelled as such.
    AUDIO_DIR="$R1AQA_SHARED_DATA/avqa/audio" OUT="$DATA_FILE" "$PYTHON" - <<'PY'
import glob, json, os
clips = sorted(glob.glob(os.path.join(os.environ["AUDIO_DIR"], "*.wav")))
if not clips:
    raise SystemExit(f"No WAVs in {os.environ['AUDIO_DIR']}: set R1AQA_SHARED_DATA to the shared data folder.")
options = ["motorboat", "dog barking", "car engine", "guitar"]
os.makedirs(os.path.dirname(os.environ["OUT"]), exist_ok=True)
with open(os.environ["OUT"], "w") as f:
    for i, path in enumerate(clips):
        name = os.path.splitext(os.path.basename(path))[0]
        f.write(json.dumps({
            "id": i, "video_name": name, "video_id": i,
            "question_text": "What is the main source of sound in the video?",  # made up (smoke test)
            "multi_choice": options, "answer": i % len(options),                  # made up (smoke test)
            "question_relation": "Sound", "question_type": "Come From",
            "dataset_name": "sft-smoke (made-up questions)", "audio_path": os.path.abspath(path)}) + "\n")
print(f"Wrote {len(clips)} smoke-test questions to {os.environ['OUT']}")
PY
  fi
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  # The 7B recipe, shrunk: fp32 (bf16 matmuls are slow on most CPUs), 2 questions per step, 4 steps, no W&B.
  ARGS+=(--dtype float32 --bf16 false --gradient_checkpointing false --per_device_train_batch_size 2
         --gradient_accumulation_steps 1 --max_steps 4 --save_steps 2 --learning_rate 1e-3 --warmup_steps 0 --report_to none)
  # DeepSpeed on CPU needs use_cpu=false (see src/r1aqa/cpu_deepspeed.py); plain CPU runs need use_cpu=true.
  if [ -n "$DS_CONFIG" ]; then ARGS+=(--use_cpu false); else ARGS+=(--use_cpu true); fi
fi

if [ "$NPROC_PER_NODE" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC_PER_NODE" --nnodes "$NNODES" \
    --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m r1aqa.sft "${ARGS[@]}" "$@"
fi
exec "$PYTHON" -m r1aqa.sft "${ARGS[@]}" "$@"
