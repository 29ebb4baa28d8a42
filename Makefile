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

.PHONY: venv wordnet demo test lint format bench test-vllm clean

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
	$(OFFLINE) $(BIN)/atlas build --model tiny-deepseek-v3 --out $(DEMO_DIR) --max-lemmas $(DEMO_MAX_LEMMAS)
	$(OFFLINE) $(BIN)/atlas validate $(DEMO_DIR)
	$(OFFLINE) $(BIN)/atlas metrics $(DEMO_DIR) --out $(DEMO_DIR)/metrics
	$(OFFLINE) $(BIN)/atlas card $(DEMO_DIR)
	@echo
	@echo "Demo atlas: $(abspath $(DEMO_DIR))  (metrics report: $(DEMO_DIR)/metrics/report.md)"
	@echo "tiny-deepseek-v3 is RANDOM-INIT: its routing is plumbing and a null model, not a finding."
	@echo "Load it with (paste into Python as it is):"
	@echo
	@echo "from datasets import load_dataset"
	@echo "routing = load_dataset(\"$(abspath $(DEMO_DIR))\", \"routing-tiny-deepseek-v3\", split=\"train\")"
	@echo "senses = load_dataset(\"$(abspath $(DEMO_DIR))\", \"senses\", split=\"train\")"

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

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
