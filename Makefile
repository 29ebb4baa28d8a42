# routing-atlas — the two commands: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: never let an install pull a CUDA build of torch (several GB).
PIP_INSTALL := $(BIN)/pip install -q -c constraints/cpu.txt
DEMO_DIR ?= atlas-demo
DEMO_MAX_LEMMAS ?= 300
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: venv wordnet demo test lint format bench test-vllm gpu-check clean

$(BIN)/atlas: pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[dev,traces,ray]'
	touch $(BIN)/atlas

venv: $(BIN)/atlas

# WordNet 3.0: nltk's data path or Debian's /usr/share/wordnet; installs Debian's packages when root.
wordnet: venv
	@if $(BIN)/atlas wordnet-check 2>/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's wordnet-base wordnet-sense-index"; \
	  (apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null)) && \
	  $(BIN)/atlas wordnet-check; \
	else \
	  $(BIN)/atlas wordnet-check || { echo "Install it: sudo apt-get install wordnet-base wordnet-sense-index"; exit 1; }; \
	fi

demo: venv wordnet
	@# --scores 16: the router's selection scores too, so that the report shows margins and near-ties.
	$(OFFLINE) $(BIN)/atlas build --model tiny-deepseek-v3 --out $(DEMO_DIR) --max-lemmas $(DEMO_MAX_LEMMAS) --scores 16
	@# Its random-init twin of another seed: the null_model control of a random-init model checks itself (≈ 0).
	$(OFFLINE) $(BIN)/atlas build --model tiny-deepseek-v3 --out $(DEMO_DIR) --max-lemmas $(DEMO_MAX_LEMMAS) \
	  --random-init --seed 1 --slug tiny-deepseek-v3-seed1
	@# One small pre-registered plan, proposed from the atlas's own routing, run against random experts.
	rm -f $(DEMO_DIR)-plan.json
	$(OFFLINE) $(BIN)/atlas intervene plan $(DEMO_DIR) --slug tiny-deepseek-v3 --out $(DEMO_DIR)-plan.json \
	  --layers 3 --draws 49 --max-texts 40
	$(OFFLINE) $(BIN)/atlas intervene $(DEMO_DIR) --slug tiny-deepseek-v3 --plan $(DEMO_DIR)-plan.json
	$(OFFLINE) $(BIN)/atlas validate $(DEMO_DIR)
	$(OFFLINE) $(BIN)/atlas metrics $(DEMO_DIR) --out $(DEMO_DIR)/metrics --calibrate
	$(OFFLINE) $(BIN)/atlas card $(DEMO_DIR)
	$(OFFLINE) $(BIN)/atlas explore $(DEMO_DIR) --out $(DEMO_DIR)-explorer
	@echo
	@echo "Demo atlas: $(abspath $(DEMO_DIR))  (metrics report: $(DEMO_DIR)/metrics/report.md)"
	@echo "Explorer (open in a browser, works offline): file://$(abspath $(DEMO_DIR))-explorer/index.html"
	@echo "tiny-deepseek-v3 (and its twin tiny-deepseek-v3-seed1) is RANDOM-INIT: its routing is plumbing and a null model, not a finding."
	@echo "Check the controls on planted truth: $(BIN)/atlas metrics calibrate $(DEMO_DIR) --out $(DEMO_DIR)-calibration"
	@echo "Load it with (paste into Python as it is):"
	@echo
	@echo "import hashlib, pathlib"
	@echo "from datasets import load_dataset"
	@echo "atlas = pathlib.Path(\"$(abspath $(DEMO_DIR))\")"
	@echo "# a cache keyed by manifest.json: never the rows of another folder called $(notdir $(DEMO_DIR)), or of this one before a rebuild"
	@echo "cache = str(pathlib.Path.home() / \".cache/routing-atlas\" / hashlib.sha256((atlas / \"manifest.json\").read_bytes()).hexdigest()[:16])"
	@echo "routing = load_dataset(str(atlas), \"routing-tiny-deepseek-v3\", split=\"train\", cache_dir=cache)"
	@echo "senses = load_dataset(str(atlas), \"senses\", split=\"train\", cache_dir=cache)"

test: venv wordnet
	$(OFFLINE) $(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv wordnet
	@for script in bench/bench_*.py; do echo "== $$script"; $(OFFLINE) $(BIN)/python $$script || exit 1; done

# Needs vllm and a CUDA GPU, in its own environment (vllm pins its own torch; see docs/runbook.md):
#   python3 -m venv .venv-vllm && .venv-vllm/bin/pip install -r requirements/vllm.txt -e '.[dev]'
# Skips cleanly without them.
VLLM_VENV ?= .venv-vllm
test-vllm:
	@test -x $(VLLM_VENV)/bin/python || { echo "no $(VLLM_VENV): see docs/runbook.md (vLLM environment)"; exit 1; }
	$(OFFLINE) $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider -m gpu tests/engines/test_vllm_gpu.py

# The prepared GPU check of the hf engine (docs/gpu-check.md): `make gpu-check OUT=DIR`. Its inputs (WordNet
# texts, tokenizer files) are written here once with WordNet installed and travel to the GPU machine, which
# has python3 and torch but no venv; GPU_CHECK_ARGS=--reduced GPU_CHECK_DEVICE=cpu runs the CPU version.
GPU_CHECK_INPUTS ?= build/gpu-check-inputs
GPU_CHECK_DEVICE ?= cuda
GPU_CHECK_ARGS ?=
GPU_CHECK_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	@test -n "$(OUT)" || { echo "usage: make gpu-check OUT=DIR  (results: DIR/gpu-check.json, DIR/gpu-check.md)"; exit 2; }
	@test -f $(GPU_CHECK_INPUTS)/manifest.json || $(OFFLINE) $(GPU_CHECK_PYTHON) bench/gpu_check.py --prepare $(GPU_CHECK_INPUTS)
	$(OFFLINE) $(GPU_CHECK_PYTHON) bench/gpu_check.py --inputs $(GPU_CHECK_INPUTS) --out "$(OUT)" --device $(GPU_CHECK_DEVICE) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(DEMO_DIR) $(DEMO_DIR)-explorer $(DEMO_DIR)-plan.json .pytest_cache
