# The launcher run_grpo.sh and run_sft.sh source (they set REPO and stay in the user's folder): the device, the CPU
# try-out's model and data, and how processes start (one process, or torchrun over NPROC_PER_NODE x NNODES).
#   DEVICE=gpu (default)  the real run; with no GPU visible it stops (a job that fell back to a toy model would
#                         "succeed" and train nothing).
#   DEVICE=cpu            the CPU try-out: a tiny random Qwen2-Audio and a toy tone task, built on first use
#                         (CPU_PROCS=2: two processes; DS_CONFIG=configs/ds_zero3.json: DeepSpeed ZeRO-3 on CPU).
# Bash 4.2: an array that may be empty is expanded as ${a[@]+"${a[@]}"} (a bare "${a[@]}" is unbound under set -u).

: "${PYTHON:=$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python)}"
: "${DEVICE:=gpu}" "${NNODES:=1}" "${NODE_RANK:=0}" "${MASTER_ADDR:=127.0.0.1}" "${MASTER_PORT:=29500}"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
SCRIPT_NAME="$(basename "$0")"
CPU_MODEL=$REPO/outputs/tiny-qwen2-audio CPU_DATA=$REPO/outputs/toy/train.jsonl   # the CPU try-out's defaults
CPU_TINY_ARGS=()                                     # extra arguments of r1aqa.tryout.tiny for CPU_MODEL

launch_die() { echo "$SCRIPT_NAME: $*" >&2; exit 2; }

# Sets GPUS (the number of GPUs torch sees); stops unless DEVICE=gpu finds one or DEVICE=cpu.
check_device() {
  case "$DEVICE" in
    cpu) GPUS=0; return ;;
    gpu) ;;
    *) launch_die "DEVICE must be gpu or cpu, got '$DEVICE'." ;;
  esac
  local probe
  probe=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count(), torch.version.cuda or "none", torch.__version__)' \
    2>&1 | tail -n 1) || launch_die "cannot import torch with $PYTHON ($probe). Run 'make setup' or set PYTHON."
  read -r GPUS TORCH_CUDA TORCH_VERSION <<< "$probe"
  if [ "$GPUS" -eq 0 ]; then
    cat >&2 <<MSG
$SCRIPT_NAME: no GPU is visible, so nothing was started.
  torch $TORCH_VERSION (CUDA build: $TORCH_CUDA) sees 0 GPUs; CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES-<unset>}'.
  On a GPU node: check nvidia-smi, CUDA_VISIBLE_DEVICES and that torch is a CUDA build (torch.version.cuda).
  To try the pipeline on CPU instead (tiny random model, toy task):  DEVICE=cpu bash $SCRIPT_NAME
MSG
    exit 1
  fi
}

# The CPU try-out: build the tiny model and the toy task when their default paths are used and missing. DeepSpeed
# on CPU (src/r1aqa/deepspeed_cpu.py) needs use_cpu=false, plain CPU runs use_cpu=true.
prepare_cpu_tryout() {
  if [ "$MODEL" = "$CPU_MODEL" ] && [ ! -f "$MODEL/config.json" ]; then
    "$PYTHON" -m r1aqa.tryout.tiny --out "$MODEL" --extra_tokens "<answer>" "</answer>" low top ${CPU_TINY_ARGS[@]+"${CPU_TINY_ARGS[@]}"}
  fi
  if [ "$DATA_FILE" = "$CPU_DATA" ] && [ ! -f "$DATA_FILE" ]; then
    "$PYTHON" -m r1aqa.tryout.toy_task --out "$(dirname "$CPU_DATA")" > /dev/null
  fi
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"   # GiB of KV cache when vLLM generates on CPU
  if [ -n "$DS_CONFIG" ]; then ARGS+=(--use_cpu false); else ARGS+=(--use_cpu true); fi
}

# flag_true --NAME ARG...: whether the arguments set the boolean --NAME true (the last one given counts).
flag_true() {
  local name="$1" previous="" value=""; shift
  for arg in "$@"; do
    case "$arg" in "$name="*) value="${arg#"$name="}" ;; esac
    [ "$previous" = "$name" ] && value="$arg"
    previous="$arg"
  done
  case "$value" in true | True | 1) return 0 ;; *) return 1 ;; esac
}

# launch MODULE ARG...: one process, or torchrun when there are several processes or nodes.
launch() {
  local module="$1"; shift
  if [ "$NPROC_PER_NODE" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
    "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC_PER_NODE" --nnodes "$NNODES" \
      --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m "$module" "$@"
  else
    "$PYTHON" -m "$module" "$@"
  fi
}

# launch_seeds MODULE ARG...: the run with the script's ARGS then the user's ARG... (which win). SEEDS="42 43 44":
# one complete run per seed, one after the other, into <OUTPUT_DIR or --output_dir>/seed-<seed> with --seed <seed>
# (each resumable, with its own r1aqa_run.json); a --seed among ARG... contradicts SEEDS and stops.
launch_seeds() {
  local module="$1"; shift
  if [ -z "${SEEDS:-}" ]; then
    launch "$module" "${ARGS[@]}" --output_dir "$OUTPUT_DIR" "$@"
    return
  fi
  local base="$OUTPUT_DIR" seed user=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --seed|--seed=*) launch_die "SEEDS=\"$SEEDS\" sets --seed per run: do not pass $1 as well." ;;
      --output_dir) [ $# -ge 2 ] || launch_die "--output_dir needs a value."; base="$2"; shift 2 ;;
      --output_dir=*) base="${1#--output_dir=}"; shift ;;
      *) user+=("$1"); shift ;;
    esac
  done
  for seed in $SEEDS; do [[ "$seed" =~ ^[0-9]+$ ]] || launch_die "SEEDS must be integers, got '$seed'."; done
  for seed in $SEEDS; do
    echo "=== seed $seed -> $base/seed-$seed ==="
    launch "$module" "${ARGS[@]}" --seed "$seed" --output_dir "$base/seed-$seed" ${user[@]+"${user[@]}"}
  done
}
