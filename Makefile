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

.PHONY: serve ask dev test test-vllm lint install install-test bench

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
