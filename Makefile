# Quickstart: `make run` (install what serving needs, start api + worker embedded) and `make test` (install the
# dev extras too, run every test). Each install is remembered by a stamp file and redone when pyproject.toml changes.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed

.PHONY: install install-run run example test lint format bench bench-real docs clean

# serving: the base dependencies, the `train` extra (workers run distillation with torch) and the `example` extra
# (`onnx-compress example` trains a small model on scikit-learn's digits)
install-run: $(RUN_STAMP)

# developing: serving plus the `dev` extras (pytest, ruff, import-linter, moto, scikit-learn, ...)
install: $(DEV_STAMP)

$(VENV)/.venv-created:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $@

$(RUN_STAMP): pyproject.toml $(VENV)/.venv-created
	$(PY) -m pip install -q -e '.[train,example]'
	touch $@

$(DEV_STAMP): pyproject.toml $(VENV)/.venv-created
	$(PY) -m pip install -q -e '.[train,example,dev]'
	touch $@ $(RUN_STAMP)

run: install-run
	$(VENV)/bin/onnx-compress serve

# example/: a trained digits CNN, calibration/train/eval data and spec.json (the README's walkthrough uses them)
example: install-run
	$(VENV)/bin/onnx-compress example example

test: install
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium) || echo "chromium not installed (needs root and apt): the browser tests will skip"
	@command -v jq >/dev/null || (apt-get update && apt-get install -y jq) || echo "jq not installed (needs root and apt): the README walkthrough test will skip"
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Development-model benches (minutes); the real-model ones (about an hour on 2 cores) run with `make bench-real`.
BENCH_DEV := bench/quantization.py bench/pruning.py bench/distillation.py bench/executor.py
BENCH_REAL := bench/real_models.py bench/pruning_real.py bench/distill_real.py bench/step_memory.py

bench: install
	for script in $(BENCH_DEV); do $(PY) $$script || exit 1; done

bench-real: install
	for script in $(BENCH_REAL); do $(PY) $$script || exit 1; done

docs: install
	$(PY) scripts/generate_reference.py

clean:
	rm -rf $(VENV) .cache data .pytest_cache example
