#!/usr/bin/env bash
# Evaluate every checkpoint-N of a training run (or of several) on MMAU, MMAR or AVQA validation, then print accuracy
# per step (best marked), write it as CSV/JSON and plot it: a launcher for `python -m r1aqa.sweep` (`--help` lists
# every variable; each is also a flag). Paths you give are relative to the current folder; the defaults are relative
# to this repository. Extra arguments go to `python -m r1aqa.evaluate` (e.g. --limit, --force).
#
#   bash test_mmau.sh                                            # every checkpoint in $RUN_DIR, in step order
#   PROTOCOL=paper bash test_mmau.sh                             # the paper-time protocol (steps 100-500, batch 16)
#   EVAL_DEVICES="0 1" bash test_mmau.sh                         # checkpoints spread over GPUs 0 and 1
#   THINK=true RUN_DIR=outputs/grpo-think bash test_mmau.sh       # Prompt <3> (think mode)
#   STEPS="100 500" BATCH_SIZE=8 bash test_mmau.sh --limit 50    # extra arguments go to r1aqa.evaluate
#   DECODING=greedy bash test_mmau.sh                            # fully specified greedy decoding
#   NUM_SAMPLES=3 bash test_mmau.sh                              # 3 seeded passes: mean ± std per task
#   AUDIO=silent bash test_mmau.sh                               # clips replaced by silence; table: audio vs silent
#   DATA_FILE=data/mmar/MMAR-meta.jsonl AUDIO_DIR=data/mmar/audio bash test_mmau.sh   # MMAR
#   SELECT_FILE=data/avqa/val.jsonl bash test_mmau.sh             # + AVQA validation: the step selected on it marked
#   RUN_DIRS="outputs/grpo/seed-42 outputs/grpo/seed-43" bash test_mmau.sh   # several runs, then their aggregate
#   RUN_DIR=outputs/grpo bash test_mmau.sh                       # the same for every seed-* run in the folder
#   BACKEND=vllm bash test_mmau.sh                               # generate with vLLM (python: .venv-vllm if present)
set -euo pipefail
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON="$REPO_DIR/.venv/bin/python"
    [[ "${BACKEND:-}" == vllm ]] && PYTHON="$REPO_DIR/.venv-vllm/bin/python"   # made by `make setup-vllm`
    [[ -x "$PYTHON" ]] || PYTHON=python
fi
export PYTHONPATH="$REPO_DIR/src${PYTHONPATH:+:$PYTHONPATH}"   # works without `pip install -e .`
exec "$PYTHON" -m r1aqa.sweep --repo_dir "$REPO_DIR" "$@"
