#!/usr/bin/env bash
# Evaluate every checkpoint-N of a training run on MMAU (or MMAR), then print accuracy per step (best marked), write
# it as CSV/JSON and plot it. The table names the benchmark file's release, told from its content (docs/recipe.md §7).
# Defaults: every checkpoint, batch 32, DECODING=original (each checkpoint's own generation config, as the paper),
# Prompt <2> or the prompt the run was trained with (r1aqa_run.json). PROTOCOL=paper: what the paper-time release
# (original repo commit 45def50) did: checkpoints 100-500, batch 16, decoding original, Prompt <2>, first channel.
# Paths you give are relative to the current folder; the defaults are relative to this repository.
#
#   bash test_mmau.sh                                            # every checkpoint in $RUN_DIR, in step order
#   PROTOCOL=paper bash test_mmau.sh                             # the paper-time protocol (steps 100-500, batch 16)
#   EVAL_DEVICES="0 1" bash test_mmau.sh                         # checkpoints spread over GPUs 0 and 1
#   THINK=true RUN_DIR=outputs/grpo-think bash test_mmau.sh       # Prompt <3> (think mode)
#   STEPS="100 500" BATCH_SIZE=8 bash test_mmau.sh --limit 50    # extra arguments go to r1aqa.evaluate
#   DECODING=greedy bash test_mmau.sh                            # fully specified greedy decoding
#   NUM_SAMPLES=3 bash test_mmau.sh                              # 3 seeded passes: mean ± std per task
#   AUDIO=silent bash test_mmau.sh                               # clips replaced by silence; table: audio vs silent
#   DATA_FILE=data/mmar/MMAR-meta.jsonl AUDIO_DIR=data/mmar/audio bash test_mmau.sh   # MMAR (docs/recipe.md §8)
#   SELECT_FILE=data/avqa/val.jsonl bash test_mmau.sh             # + AVQA validation: the step selected on it marked
#   RUN_DIRS="outputs/grpo/seed-42 outputs/grpo/seed-43" bash test_mmau.sh   # several runs, then their aggregate
#   RUN_DIR=outputs/grpo bash test_mmau.sh                       # the same for every seed-* run in the folder
#   BACKEND=vllm bash test_mmau.sh                               # generate with vLLM (python: .venv-vllm if present)
#
# Checkpoints already scored with the same settings are skipped (add --force to redo them). Results go to
# $OUT_DIR/checkpoint-N.{json,meta.json,score.json} and $OUT_DIR/checkpoints.{csv,json,png}; with AUDIO=silent to
# $OUT_DIR.silent/, whose table sets each step's silent accuracy beside the one in $OUT_DIR (when scored).
#
# Choosing a checkpoint without the test set: SELECT_FILE (AVQA's validation questions, made by
# `python -m r1aqa.prepare_avqa --qa_json val_qa.json ... --out_file data/avqa/val.jsonl`) is evaluated too, with the
# same prompt, decoding, seed and passes but always with the audio, into $RUN_DIR/avqa/val.<style>...; the table then
# marks the step with the highest validation accuracy (the earliest on a tie) and gives the test accuracy there beside
# the best on test (the paper's practice, optimistic). SELECT_AUDIO_DIR: its WAV folder if moved since conversion.
# Extra arguments (e.g. --limit) go to both evaluations.
#
# Several runs (RUN_DIRS, or a RUN_DIR holding seed-* runs and no checkpoint-N): each run is evaluated exactly as
# alone (its own folders and table), then the runs are aggregated per step (mean, std (n-1), min, max, count over
# runs, per task or modality and in total; r1aqa.report --aggregate) into
# $AGG_DIR/<benchmark>/<data file>.<style>[.greedy][.samples-K][.silent]/aggregate.{csv,json,png}, AGG_DIR defaulting
# to <the runs' common parent folder>/aggregate.
set -euo pipefail
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "test_mmau.sh: error: $*" >&2; exit 2; }

# ---- quick config (override any of these from the environment) -------------------------------------------------
: "${PROTOCOL:=default}"                                            # default | paper (see above)
if [[ "$PROTOCOL" == paper ]]; then                                 # fixed; a different value is refused
    for fixed in DECODING=original BATCH_SIZE=16 MAX_NEW_TOKENS=256; do
        name=${fixed%%=*}
        [[ -z "${!name:-}" || "${!name}" == "${fixed#*=}" ]] || die "PROTOCOL=paper sets $fixed (the paper-time \
release), got $name=${!name}: unset $name, or drop PROTOCOL"
        printf -v "$name" %s "${fixed#*=}"
    done
    : "${STEPS:=100 200 300 400 500}"
elif [[ "$PROTOCOL" != default ]]; then
    die "PROTOCOL must be default or paper, got '$PROTOCOL'"
fi
: "${RUN_DIR:=$REPO_DIR/outputs/grpo-qwen2-audio-7b}"              # output_dir of the training run
: "${MMAU_FILE:=$REPO_DIR/data/mmau/mmau-test-mini.json}"           # the paper's: MMAU a5cd89a (data/README.md)
: "${DATA_FILE:=$MMAU_FILE}"                                        # MMAU JSON list or MMAR-meta.jsonl
: "${BENCHMARK:=auto}"                                              # auto|mmau|mmar (auto: from the file)
: "${AUDIO_DIR:=}"                                                  # default: data/mmau/test-mini-audios;
                                                                    # AVQA: the audio_path of each row
: "${DECODING:=original}"                                           # original (as the paper) | greedy
: "${SEED:=42}"                                                     # seed of the first pass
: "${NUM_SAMPLES:=1}"                                               # K seeded passes: mean ± std
: "${AUDIO:=real}"                                                  # real | silent (audio-dependence control)
: "${BATCH_SIZE:=32}"                                               # paper-time release: 16 (PROTOCOL=paper)
: "${MAX_NEW_TOKENS:=256}"                                          # paper: 256
: "${THINK:=}"                                                      # true: Prompt <3>; false: Prompt <2>;
: "${PROMPT_STYLE:=}"                                               # answer|think|plain; both empty: as the run was
                                                                    # trained (r1aqa_run.json), else answer
: "${SYSTEM_PROMPT:=}"                                              # default|qwen|none; empty: as the run was trained
: "${STEPS:=}"                                                      # e.g. "100 200 300"; empty: every checkpoint
: "${EVAL_DEVICES:=}"                                               # GPUs, one worker each, e.g. "0 1"; cpu: none;
                                                                    # default: every visible GPU
: "${EVAL_PROCS:=1}"                                                # workers on CPU (no GPU)
: "${OUT_DIR:=}"                                                    # default: see below
: "${SELECT_FILE:=}"                                                # AVQA validation JSONL: selects a step
: "${SELECT_AUDIO_DIR:=}"                                           # its WAVs, if moved (default: its audio_path)
: "${RUN_DIRS:=}"                                                   # several runs, e.g. "out/seed-42 out/seed-43"
: "${AGG_DIR:=}"                                                    # default: <the runs' parent>/aggregate
: "${BACKEND:=hf}"                                                  # hf (transformers) or vllm
if [[ -z "${PYTHON:-}" ]]; then
    VENV_PYTHON="$REPO_DIR/.venv/bin/python"
    [[ "$BACKEND" == vllm ]] && VENV_PYTHON="$REPO_DIR/.venv-vllm/bin/python"   # made by `make setup-vllm`
    if [[ -x "$VENV_PYTHON" ]]; then PYTHON="$VENV_PYTHON"; else PYTHON=python; fi
fi
export PYTHONPATH="$REPO_DIR/src${PYTHONPATH:+:$PYTHONPATH}"   # works without `pip install -e .`

SELF="${BASH_SOURCE[0]}"

# ---- several runs: each evaluated as alone (this script, once per run), then aggregated -------------------------
if [[ -z "$RUN_DIRS" && -d "$RUN_DIR" ]] && ! compgen -G "$RUN_DIR/checkpoint-*" >/dev/null; then
    # A folder of seed-* runs (SEEDS="42 43" bash run_grpo.sh), in seed order.
    RUN_DIRS=$(find "$RUN_DIR" -mindepth 1 -maxdepth 1 -type d -name 'seed-*' | sort -V | tr '\n' ' ')
fi
if [[ -n "$RUN_DIRS" ]]; then
    read -r -a runs <<< "$RUN_DIRS"
    [[ -z "$OUT_DIR" ]] || die "OUT_DIR is one run's folder: with several runs unset it (AGG_DIR places the aggregate)"
    for run in "${runs[@]}"; do [[ -d "$run" ]] || die "RUN_DIRS: $run is not a folder"; done
    for run in "${runs[@]}"; do
        echo "##### run $run #####"
        RUN_DIRS="" RUN_DIR="$run" bash "$SELF" "$@" || die "evaluating $run failed (see above)"
    done
    # Each run's score folders, named by the same code that wrote them.
    dirs_of() { RUN_DIRS="" RUN_DIR="$1" TEST_MMAU_PRINT_DIRS=1 bash "$SELF"; }
    test_dirs=(); audio_dirs=(); select_dirs=()
    for run in "${runs[@]}"; do
        mapfile -t dirs < <(dirs_of "$run")
        ((${#dirs[@]} >= 2)) || die "cannot name the result folders of $run"
        audio_dirs+=("${dirs[0]}"); test_dirs+=("${dirs[1]}")
        [[ -n "$SELECT_FILE" ]] && select_dirs+=("${dirs[2]}")
    done
    names=$(for dir in "${test_dirs[@]}"; do echo "$(basename "$(dirname "$dir")")/$(basename "$dir")"; done | sort -u)
    [[ $(wc -l <<< "$names") -eq 1 ]] || die "the runs' results have different settings (${names//$'\n'/, }): \
were they trained in different modes? Set THINK or PROMPT_STYLE to evaluate them alike."
    if [[ -z "$AGG_DIR" ]]; then
        parent=$("$PYTHON" -c 'import os, sys
print(os.path.commonpath([os.path.dirname(os.path.abspath(run)) for run in sys.argv[1:]]))' "${runs[@]}")
        [[ "$parent" != / ]] || die "the runs share no parent folder: set AGG_DIR (where the aggregate goes)"
        AGG_DIR="$parent/aggregate"
    fi
    TABLE=(--aggregate --out_prefix "$AGG_DIR/$names/aggregate")
    all_scored() { local dir; for dir in "$@"; do compgen -G "$dir/checkpoint-*.score.json" >/dev/null || return 1; done; }
    if [[ "$AUDIO" == silent ]] && all_scored "${audio_dirs[@]}"; then
        TABLE+=(--score_dirs "${audio_dirs[@]}" --silent_score_dirs "${test_dirs[@]}")  # audio vs silent, as alone
    else
        TABLE+=(--score_dirs "${test_dirs[@]}")
    fi
    ((${#select_dirs[@]})) && TABLE+=(--select_score_dirs "${select_dirs[@]}")
    echo "##### aggregate of ${#runs[@]} runs -> $AGG_DIR/$names #####"
    "$PYTHON" -m r1aqa.report "${TABLE[@]}"
    exit 0
fi

if [[ -z "$THINK$PROMPT_STYLE" ]]; then
    # The training run records its prompt (`prompt_style`, else `think`): evaluating with the prompt it was trained
    # with needs no setting. Without r1aqa_run.json: Prompt <2>.
    PROMPT_STYLE=$("$PYTHON" -c 'import json, os, sys
run = json.load(open(sys.argv[1])) if os.path.isfile(sys.argv[1]) else {}
print(run.get("prompt_style") or ("think" if run.get("think") else "answer"))' "$RUN_DIR/r1aqa_run.json") \
        || die "cannot read $RUN_DIR/r1aqa_run.json"
fi
case "$THINK" in
    true) [[ -z "$PROMPT_STYLE" || "$PROMPT_STYLE" == think ]] || die "THINK=true contradicts PROMPT_STYLE=$PROMPT_STYLE"
          PROMPT_STYLE=think ;;
    false) : "${PROMPT_STYLE:=answer}" ;;
    "") ;;
    *) die "THINK must be true or false, got '$THINK'" ;;
esac
case "$PROMPT_STYLE" in answer|think|plain) ;; *) die "PROMPT_STYLE must be answer, think or plain, got '$PROMPT_STYLE'" ;; esac
[[ "$PROTOCOL" != paper || "$PROMPT_STYLE" == answer ]] || die "PROTOCOL=paper evaluates with Prompt <2> (answer), not \
$PROMPT_STYLE (from THINK, PROMPT_STYLE or $RUN_DIR/r1aqa_run.json): set PROMPT_STYLE=answer, or drop PROTOCOL"
if [[ -z "$SYSTEM_PROMPT" ]]; then  # likewise the system turn (runs made before the setting existed: default)
    SYSTEM_PROMPT=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("system_prompt") or "default")' \
        "$RUN_DIR/r1aqa_run.json" 2>/dev/null || echo default)
fi
case "$SYSTEM_PROMPT" in default|qwen|none) ;; *) die "SYSTEM_PROMPT must be default, qwen or none, got '$SYSTEM_PROMPT'" ;; esac
[[ -d "$RUN_DIR" ]] || die "RUN_DIR=$RUN_DIR is not a folder (set RUN_DIR to the training run's output_dir)"
[[ -f "$DATA_FILE" ]] || die "DATA_FILE=$DATA_FILE does not exist (see data/README.md)"
[[ -z "$SELECT_FILE" || -f "$SELECT_FILE" ]] || die "SELECT_FILE=$SELECT_FILE does not exist (python -m r1aqa.prepare_avqa --qa_json val_qa.json ... writes it)"
case "$DECODING" in original|greedy) ;; *) die "DECODING must be original or greedy, got '$DECODING'" ;; esac
case "$AUDIO" in real|silent) ;; *) die "AUDIO must be real or silent, got '$AUDIO'" ;; esac
[[ "$NUM_SAMPLES" =~ ^[1-9][0-9]*$ ]] || die "NUM_SAMPLES must be a positive number, got '$NUM_SAMPLES'"
[[ "$SEED" =~ ^[0-9]+$ ]] || die "SEED must be a number, got '$SEED'"
if [[ "$BENCHMARK" == auto ]]; then
    BENCHMARK=$("$PYTHON" -c 'import sys; from r1aqa.benchmarks import detect_benchmark, load_items
print(detect_benchmark(load_items(sys.argv[1])))' "$DATA_FILE") || die "cannot read DATA_FILE=$DATA_FILE"
fi
AUDIO_ARGS=()
if [[ -n "$AUDIO_DIR" || "$BENCHMARK" != avqa ]]; then                # AVQA rows name their own clips
    : "${AUDIO_DIR:=$REPO_DIR/data/mmau/test-mini-audios}"
    [[ -d "$AUDIO_DIR" ]] || die "AUDIO_DIR=$AUDIO_DIR is not a folder (see data/README.md)"
    AUDIO_ARGS=(--audio_dir "$AUDIO_DIR")
fi
# One folder per benchmark file, prompt style, decoding, protocol (+ number of passes), so settings never mix:
# $RUN_DIR/<benchmark>/<data file>.<style>[.greedy][.samples-K][.paper]; the silent control: the same name + .silent.
DATA_NAME=$(basename "$DATA_FILE"); DATA_NAME=${DATA_NAME%.jsonl}; DATA_NAME=${DATA_NAME%.json}
SUFFIX=""
[[ "$DECODING" == greedy ]] && SUFFIX+=".greedy"
((NUM_SAMPLES > 1)) && SUFFIX+=".samples-$NUM_SAMPLES"
[[ "$PROTOCOL" == paper ]] && SUFFIX+=".paper"
[[ "$SYSTEM_PROMPT" != default ]] && SUFFIX+=".system-$SYSTEM_PROMPT"
: "${OUT_DIR:=$RUN_DIR/$BENCHMARK/$DATA_NAME.$PROMPT_STYLE$SUFFIX}"
EVAL_DIR="$OUT_DIR"
[[ "$AUDIO" == silent ]] && EVAL_DIR="$OUT_DIR.silent"
# The validation file, evaluated by this script too: same run, prompt, decoding and passes; always with the audio.
select_run() {
    # (assignments apply left to right: DATA_FILE takes SELECT_FILE before it is emptied for the child)
    DATA_FILE="$SELECT_FILE" AUDIO_DIR="$SELECT_AUDIO_DIR" SELECT_FILE="" RUN_DIRS="" OUT_DIR="" BENCHMARK=auto \
        AUDIO=real THINK="$THINK" PROMPT_STYLE="$PROMPT_STYLE" bash "$SELF" "$@"
}
if [[ -n "${TEST_MMAU_PRINT_DIRS:-}" ]]; then   # for the several-runs mode above: this run's folders, one a line
    printf '%s\n' "$OUT_DIR" "$EVAL_DIR"
    [[ -z "$SELECT_FILE" ]] || select_run | tail -n 1
    exit 0
fi

# ---- checkpoints, in numeric step order --------------------------------------------------------------------------
if [[ -n "$STEPS" ]]; then
    read -r -a steps <<< "$STEPS"
    for step in "${steps[@]}"; do
        [[ "$step" =~ ^[0-9]+$ ]] || die "STEPS must be step numbers, got '$step'"
        [[ -d "$RUN_DIR/checkpoint-$step" ]] || die "$RUN_DIR/checkpoint-$step does not exist"
    done
else
    # Complete checkpoints only (r1aqa/checkpoints.py): one still being written, or cut short by a crash, is named
    # and skipped.
    mapfile -t steps < <("$PYTHON" -m r1aqa.checkpoints "$RUN_DIR")
    ((${#steps[@]})) || die "no complete checkpoint-N folder in RUN_DIR=$RUN_DIR (training saves one every save_steps)"
fi
echo "${BENCHMARK^^}: ${#steps[@]} checkpoint(s) of $RUN_DIR (steps ${steps[*]}), $DATA_FILE, prompt $PROMPT_STYLE," \
    "decoding $DECODING (seed $SEED, $NUM_SAMPLES pass(es)), batch $BATCH_SIZE, protocol $PROTOCOL, audio $AUDIO -> $EVAL_DIR"

# ---- evaluate: one worker per GPU (EVAL_DEVICES) or EVAL_PROCS on CPU, checkpoints in step order (r1aqa.eval_workers)
# A checkpoint already scored with the same settings is skipped at once (no model loaded); one whose output was made
# with other settings (--limit, prompt, decoding...) stops with an error. A failed checkpoint is redone next time.
mkdir -p "$EVAL_DIR"
"$PYTHON" -m r1aqa.eval_workers --run_dir "$RUN_DIR" --steps "${steps[@]}" --out_dir "$EVAL_DIR" \
    --devices $EVAL_DEVICES --procs "$EVAL_PROCS" -- \
    --data_file "$DATA_FILE" \
    --benchmark "$BENCHMARK" \
    ${AUDIO_ARGS[@]+"${AUDIO_ARGS[@]}"} \
    --batch_size "$BATCH_SIZE" \
    --max_new_tokens "$MAX_NEW_TOKENS" \
    --prompt_style "$PROMPT_STYLE" \
    --system_prompt "$SYSTEM_PROMPT" \
    --decoding "$DECODING" \
    --protocol "$PROTOCOL" \
    --seed "$SEED" \
    --num_samples "$NUM_SAMPLES" \
    --audio "$AUDIO" \
    --backend "$BACKEND" \
    "$@"

# ---- the validation file (SELECT_FILE) -----------------------------------------------------------------------------
TABLE=()
if [[ -n "$SELECT_FILE" ]]; then
    echo "=== validation: $SELECT_FILE (selects a step without the test set) ==="
    select_run "$@"
    SELECT_DIR=$(TEST_MMAU_PRINT_DIRS=1 select_run | tail -n 1)
    TABLE=(--select_score_dir "$SELECT_DIR")
fi

# ---- table and plot ----------------------------------------------------------------------------------------------
if ! compgen -G "$EVAL_DIR/checkpoint-*.score.json" >/dev/null; then
    echo "No scores (the data file has no answers): predictions are in $EVAL_DIR."
elif [[ "$AUDIO" == silent ]] && compgen -G "$OUT_DIR/checkpoint-*.score.json" >/dev/null; then
    # With audio (scored earlier into $OUT_DIR) beside silent, per step and task; files in the silent folder.
    "$PYTHON" -m r1aqa.report --score_dir "$OUT_DIR" --silent_score_dir "$EVAL_DIR" \
        --out_prefix "$EVAL_DIR/checkpoints" ${TABLE[@]+"${TABLE[@]}"}
else
    [[ "$AUDIO" == silent ]] && echo "No scores with audio in $OUT_DIR yet: the table shows silent accuracy only."
    "$PYTHON" -m r1aqa.report --score_dir "$EVAL_DIR" ${TABLE[@]+"${TABLE[@]}"}
fi
