# Every target CI needs runs here; .ci/run calls `make ci`.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: install system-deps proto proto-check lint typecheck test check ci bench

system-deps:  ## Debian packages the tests use (root or sudo)
	@command -v redis-server >/dev/null && command -v memcached >/dev/null && command -v chromium >/dev/null || \
	  { apt-get update && apt-get install -y redis-server memcached chromium; }

$(PY):
	python3 -m venv $(VENV)

install: $(PY)  ## Python packages into .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'

proto:  ## regenerate the committed stubs from proto/
	$(PY) scripts/gen_proto.py

proto-check:  ## fail when the committed stubs drift from proto/
	$(PY) scripts/gen_proto.py --check

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

test:
	$(BIN)/pytest

check: proto-check lint typecheck test

ci: system-deps install check  ## what .ci/run runs: installs everything, then checks
