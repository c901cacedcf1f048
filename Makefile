# Two entry points, both self-installing: `make dev` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,load,llama,otlp]'
	touch $@

.PHONY: install dev test lint bench
install: $(BIN)/.installed

dev: $(BIN)/.installed
	$(BIN)/edgeworks dev functions

lint: $(BIN)/.installed
	$(BIN)/ruff check runtime objects sandbox functions tests loadtests
	$(BIN)/lint-imports
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)
