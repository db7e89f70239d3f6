# molora: `make test` and `make demo` set everything up on a fresh machine (Python 3.11, Linux x86-64).
# The virtual env is installed from requirements.lock (every package, exact versions and hashes):
# a clone installs what was tested. `make lock` regenerates the lock from pyproject.toml's ranges.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
UV     := uv==0.13.9

.PHONY: install test test-fast test-latest test-numerics demo bench bench-compare gpu-check lock clean

$(STAMP): $(LOCK) pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

# Not in CI: the numeric tests with other threads / denormal mode / CPU kernels (scripts/test_numerics.sh).
test-numerics: $(STAMP)
	PY=$(PY) scripts/test_numerics.sh

demo: $(STAMP)
	$(PY) -m molora.cli quickstart

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py --repeats 5

# `make bench-compare BASE=<commit>`: this checkout against an earlier commit, side by side in one run
bench-compare: $(STAMP)
	@test -n "$(BASE)" || { echo "bench-compare: say BASE=<commit>"; exit 2; }
	$(PY) benchmarks/compare_commits.py $(BASE)

# The checks for the day a GPU is lent (benchmarks/gpu_check.py); `make gpu-check DEVICE=cpu PRESET=small`
# runs the same code on the CPU in minutes (the suite does). Writes $$OUT/gpu_check.json when OUT is set.
DEVICE ?= cuda
PRESET ?= phi4-multimodal
SKIP ?=
# VLLM_BASE=DIR (the official folder without weights) adds the serving step: vLLM, in its own venv, serves the
# phi4mm export and its greedy tokens are compared with molora's (benchmarks/gpu_serve_vllm.py; WHEELHOUSE=DIR offline).
VLLM_BASE ?=
WHEELHOUSE ?=
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --device $(DEVICE) --preset $(PRESET) $(if $(SKIP),--skip $(SKIP))
	@if [ -n "$(VLLM_BASE)" ]; then $(PY) benchmarks/gpu_serve_vllm.py --device $(DEVICE) --preset $(PRESET) \
	    --base "$(VLLM_BASE)" $(if $(WHEELHOUSE),--wheelhouse "$(WHEELHOUSE)") \
	    $(if $(VLLM_TRUST_REMOTE_CODE),--trust-remote-code); \
	else echo "gpu-check: serving step skipped (VLLM_BASE=DIR: the official Phi-4-multimodal-instruct folder; see benchmarks/gpu_serve_vllm.py)"; fi

# The lock: pyproject's ranges (+ the test and everyday extras and the build tools), resolved for CPython 3.11 on
# Linux x86-64 by uv (run from a throwaway venv so the lock does not depend on what is installed).
lock:
	test -x .venv-lock/bin/uv || { $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install -q $(UV); }
	.venv-lock/bin/uv pip compile pyproject.toml requirements-build.in --extra test --extra everyday -c constraints-lock.txt \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --upgrade -o $(LOCK)

# Not in CI: the newest versions pyproject's ranges allow, in a separate venv, then the suite.
# The way a maintainer learns early that a new release breaks molora (see README, "Environment").
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install -q --upgrade pip
	.venv-latest/bin/pip install -q --upgrade --upgrade-strategy eager -e ".[test]"
	.venv-latest/bin/pip freeze --exclude-editable > .venv-latest/freeze.txt
	.venv-latest/bin/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .venv-latest .venv-lock runs .pytest_cache
