#!/usr/bin/env bash
# Evaluate every checkpoint-N of a training run on MMAU, then print accuracy per step (best marked), write it as
# CSV/JSON and plot it. The paper scored steps 100..1000 and reported the best (paper §4, Table 1; docs/recipe.md).
#
#   bash test_mmau.sh                                            # every checkpoint in $RUN_DIR, in step order
#   THINK=true RUN_DIR=outputs/grpo-think bash test_mmau.sh       # Prompt <3> (think mode)
#   STEPS="100 500" BATCH_SIZE=8 bash test_mmau.sh --limit 50    # extra arguments go to r1aqa.evaluate
#   BACKEND=vllm bash test_mmau.sh                               # generate with vLLM (python: .venv-vllm if present)
#
# Checkpoints already scored with the same settings are skipped (add --force to redo them). Results go to
# $OUT_DIR/checkpoint-N.{json,meta.json,score.json} and $OUT_DIR/checkpoints.{csv,json,png}.
set -euo pipefail

# ---- quick config (override any of these from the environment) -------------------------------------------------
: "${RUN_DIR:=outputs/grpo-qwen2-audio-7b}"                        # output_dir of the training run
: "${MMAU_FILE:=data/mmau/mmau-test-mini.json}"                     # paper: the 2025-03-25 version
: "${AUDIO_DIR:=data/mmau/test-mini-audios}"
: "${BATCH_SIZE:=32}"                                               # paper: 32
: "${MAX_NEW_TOKENS:=256}"                                          # paper: 256
: "${THINK:=}"                                                      # true: Prompt <3>; false: Prompt <2>;
                                                                    # empty: as the run was trained (r1aqa_run.json)
: "${PROMPT_STYLE:=}"                                               # answer|think|plain; default from THINK
: "${STEPS:=}"                                                      # e.g. "100 200 300"; empty: every checkpoint
: "${OUT_DIR:=}"                                                    # default: $RUN_DIR/mmau/<data file>.<style>
: "${BACKEND:=hf}"                                                  # hf (transformers) or vllm
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    VENV_PYTHON="$REPO_DIR/.venv/bin/python"
    [[ "$BACKEND" == vllm ]] && VENV_PYTHON="$REPO_DIR/.venv-vllm/bin/python"   # made by `make setup-vllm`
    if [[ -x "$VENV_PYTHON" ]]; then PYTHON="$VENV_PYTHON"; else PYTHON=python; fi
fi
export PYTHONPATH="$REPO_DIR/src${PYTHONPATH:+:$PYTHONPATH}"   # works without `pip install -e .`

die() { echo "test_mmau.sh: error: $*" >&2; exit 2; }

if [[ -z "$THINK" ]]; then
    # The training run records its mode; evaluating with the prompt it was trained with needs no second setting.
    THINK=$("$PYTHON" -c 'import json, sys; print(str(json.load(open(sys.argv[1]))["think"]).lower())' \
        "$RUN_DIR/r1aqa_run.json" 2>/dev/null || echo false)
fi
case "$THINK" in
    true) THINK_STYLE=think ;;
    false) THINK_STYLE=answer ;;
    *) die "THINK must be true or false, got '$THINK'" ;;
esac
if [[ -z "$PROMPT_STYLE" ]]; then
    PROMPT_STYLE="$THINK_STYLE"
elif [[ "$THINK" == true && "$PROMPT_STYLE" != think ]]; then
    die "THINK=true contradicts PROMPT_STYLE=$PROMPT_STYLE: set one of them"
fi
[[ -d "$RUN_DIR" ]] || die "RUN_DIR=$RUN_DIR is not a folder (set RUN_DIR to the training run's output_dir)"
[[ -f "$MMAU_FILE" ]] || die "MMAU_FILE=$MMAU_FILE does not exist (see data/README.md)"
[[ -d "$AUDIO_DIR" ]] || die "AUDIO_DIR=$AUDIO_DIR is not a folder (see data/README.md)"
: "${OUT_DIR:=$RUN_DIR/mmau/$(basename "$MMAU_FILE" .json).$PROMPT_STYLE}"

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
echo "MMAU: ${#steps[@]} checkpoint(s) of $RUN_DIR (steps ${steps[*]}), $MMAU_FILE, prompt $PROMPT_STYLE -> $OUT_DIR"

# ---- evaluate ----------------------------------------------------------------------------------------------------
mkdir -p "$OUT_DIR"
for step in "${steps[@]}"; do
    echo "=== checkpoint-$step ==="
    # Skips at once (no model loaded) when the checkpoint was already scored with the same settings; stops with an
    # error when its output was made with other settings (--limit, prompt, decoding...).
    "$PYTHON" -m r1aqa.evaluate \
        --model_path "$RUN_DIR/checkpoint-$step" \
        --data_file "$MMAU_FILE" \
        --audio_dir "$AUDIO_DIR" \
        --out_file "$OUT_DIR/checkpoint-$step.json" \
        --batch_size "$BATCH_SIZE" \
        --max_new_tokens "$MAX_NEW_TOKENS" \
        --prompt_style "$PROMPT_STYLE" \
        --backend "$BACKEND" \
        "$@"
done

# ---- table and plot ----------------------------------------------------------------------------------------------
if compgen -G "$OUT_DIR/checkpoint-*.score.json" >/dev/null; then
    "$PYTHON" -m r1aqa.tables --score_dir "$OUT_DIR"
else
    echo "No scores (the data file has no answers): predictions are in $OUT_DIR."
fi
