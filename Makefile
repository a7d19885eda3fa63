# `make run` starts a hub; `make check` installs everything and runs every check (CI runs it).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := redis-server memcached chromium

.PHONY: install system-deps run readme proto proto-check lint format typecheck pytest test check bench

system-deps:  ## Debian packages the tests use: redis-server, memcached, chromium
	@if ! command -v redis-server >/dev/null || ! command -v memcached >/dev/null \
	     || ! command -v chromium >/dev/null; then \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y $(APT_PACKAGES); fi

$(PY):
	python3 -m venv $(VENV)

install: $(PY)  ## the package and its dev tools into .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'

run: install  ## a hub with the embedded memory broker on 127.0.0.1:8080 (gRPC 50051)
	$(BIN)/cachewire-hub

proto:  ## regenerate the committed stubs from proto/
	$(PY) scripts/gen_proto.py

proto-check:  ## fail when the committed stubs (or README's settings tables) drift
	$(PY) scripts/gen_proto.py --check
	$(PY) scripts/render_readme.py --check

readme:  ## regenerate README.md's settings tables
	$(PY) scripts/render_readme.py

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest

test: system-deps install pytest  ## install what the tests need, then run them

check: system-deps install proto-check lint typecheck pytest  ## everything CI checks
