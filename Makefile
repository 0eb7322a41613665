# Quick start: `make demo` (set up + run the demo) and `make test` (set up + run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt tools/setup_env.sh
	bash tools/setup_env.sh

setup: $(VENV)/.installed

demo: setup
	$(PY) -m merc.pipelines.demo --out demo_out

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) tools/bench_extract.py

clean:
	rm -rf demo_out .pytest_cache
