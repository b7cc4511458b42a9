# Every target installs what it needs into a local virtual environment (.venv) first.
# torch is pinned and installed on its own first so pip takes the CPU wheel here (and the same version from PyPI
# on a CUDA machine) instead of resolving a multi-GB build through another package.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
CRFGAN  = $(VENV)/bin/crfgan
STAMP   = $(VENV)/.installed
BENCH_OUT ?= bench-results

.PHONY: install browser demo test test-all bench lint clean up down demo-cluster

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(CRFGAN) demo

# The local stack (infra/local): a Ray head with token auth + one worker node, an mlflow server, a moto S3 endpoint,
# all on 127.0.0.1; state, logs and the token in outputs/stack. `make down` stops exactly what `make up` started.
up: install
	PYTHON=$(PY) infra/local/up.sh

down:
	PYTHON=$(PY) infra/local/down.sh

# The demo's preprocess -> train chain as `ray job submit` jobs against `make up`'s stack.
demo-cluster: install
	eval "$$($(PY) infra/local/stack.py env)" && $(CRFGAN) demo --address "$$RAY_API_SERVER_ADDRESS"

# Debian's Chromium for the slice viewer's browser tests (tests/pipelines/bench/test_viewer.py) and `crfgan bench
# viewer`. Best effort: where it cannot be installed (not root, no apt-get), those two tests are skipped, with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "make: installing Debian's chromium for the browser tests" && \
	  { DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { timeout 300 apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "make: chromium not installed; the browser tests will be skipped" >&2

# The CI tier: everything but tests marked slow. pytest's exit code 5 (no tests collected) is a failure here.
test: install browser
	$(PY) -m pytest -q -ra --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-all: install browser
	$(PY) -m pytest -q -ra -m "" --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-all: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: install
	mkdir -p $(BENCH_OUT)
	$(CRFGAN) bench train-step --json $(BENCH_OUT)/train-step.json
	$(CRFGAN) bench render --json $(BENCH_OUT)/render.json
	$(CRFGAN) bench preprocess --json $(BENCH_OUT)/preprocess.json
	$(CRFGAN) bench train --json $(BENCH_OUT)/train.json
	$(CRFGAN) bench synthesize --json $(BENCH_OUT)/synthesize.json
	$(CRFGAN) bench feed --json $(BENCH_OUT)/feed.json
	$(CRFGAN) bench metrics --json $(BENCH_OUT)/metrics.json

lint: install
	$(VENV)/bin/ruff check crfgan pipelines tests

clean:
	rm -rf outputs $(BENCH_OUT) .pytest_cache
