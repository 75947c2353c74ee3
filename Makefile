# Two entry points: `make serve` (set up and run the router's server) and
# `make test` (set up and run ruff, mypy and the tests). Both install into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= Hello!
export LANGSMITH_TRACING ?= false
export LANGSMITH_TEST_TRACKING ?= false
export LANGGRAPH_CLI_NO_ANALYTICS ?= 1
export LANGGRAPH_NO_VERSION_CHECK ?= true

.PHONY: serve ask dev test test-load test-soak test-vllm lint install install-test bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[server]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	# the dashboard's browser test drives Debian's headless Chromium
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

serve: install
	$(BIN)/hybrid-router serve --host $${HOST:-127.0.0.1} --port $${PORT:-8000} --workers $${WORKERS:-1}

ask: install
	$(BIN)/hybrid-router ask "$(PROMPT)"

dev: install
	$(BIN)/langgraph dev --no-browser --port $${PORT:-8123}

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy tests/unit

# Two tiers: unit tests (a node or a function with a fake context, no network:
# seconds) and integration tests (real HTTP, the LangGraph server, PostgreSQL, Redis).
test: lint
	$(BIN)/python -m pytest -q tests/unit
	$(BIN)/python -m pytest -q tests/integration

# The load test at full size: 10,000 requests at concurrency 64 through two workers
# on PostgreSQL, 5 % of backend calls failing (make test runs 1,000). The soak runs
# the same load for SOAK_SECONDS. Both print their figures and write them to
# test-artifacts/load.json (RELIABILITY.md quotes the last full run).
LOAD_REQUESTS ?= 10000
SOAK_SECONDS ?= 600
test-load: install-test
	LOAD_REQUESTS=$(LOAD_REQUESTS) $(BIN)/python -m pytest -q -s --timeout 3600 tests/integration/test_load.py

test-soak: install-test
	LOAD_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest -q -s --timeout $$(( $(SOAK_SECONDS) + 900 )) tests/integration/test_load.py

# The GPU pool against two real vLLM servers (the CPU build, a tiny random Llama
# made offline). vLLM gets its own virtualenv, .venv-vllm (about 3.4 GB), never .venv;
# setup.sh skips what is already there.
test-vllm: install-test
	PYTHON=$(PYTHON) tests/vllm/setup.sh
	$(BIN)/python -m pytest -q tests/vllm

# The benchmarks (BENCHMARKS.md). LiteLLM pins its own openai client, so the
# comparison runs from a separate virtualenv, .venv-bench, never from .venv.
bench:
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install -e '.[bench]'
	.venv-bench/bin/python benchmarks/overhead.py
	.venv-bench/bin/python benchmarks/gateway_throughput.py
	.venv-bench/bin/python benchmarks/step_costs.py
	.venv-bench/bin/python benchmarks/budget_ops.py
