# `make run` starts a hub; `make check` installs everything and runs every check (CI runs it).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := redis-server memcached chromium

.PHONY: install system-deps run readme proto proto-check lint format typecheck pytest test check \
	bench lock lock-upgrade lock-check check-latest dist

system-deps:  ## Debian packages the tests use: redis-server, memcached, chromium
	@if ! command -v redis-server >/dev/null || ! command -v memcached >/dev/null \
	     || ! command -v chromium >/dev/null; then \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y $(APT_PACKAGES); fi

$(PY):
	python3 -m venv $(VENV)

install: $(PY) lock-check  ## exactly the locked packages, then cachewire itself (editable), into .venv
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/dev.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .

lock-check:  ## fail when pyproject.toml's dependencies changed and the locks did not
	python3 scripts/lock.py --check

$(BIN)/uv: | $(PY)
	$(PY) -m pip install -q uv

lock: $(BIN)/uv  ## regenerate requirements/*.lock after a change to pyproject.toml (keeps other pins)
	$(PY) scripts/lock.py

lock-upgrade: $(BIN)/uv  ## regenerate requirements/*.lock with the newest allowed versions
	$(PY) scripts/lock.py --upgrade

check-latest:  ## nightly-style: the newest allowed versions instead of the lock, then the tests
	rm -rf .venv-latest && python3 -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade -e '.[dev]'
	.venv-latest/bin/mypy
	.venv-latest/bin/pytest

dist: install  ## an sdist and a wheel in dist/
	rm -rf dist && $(PY) -m build --no-isolation --outdir dist .

run: install  ## a hub with the embedded memory broker on 127.0.0.1:8080 (gRPC 50051)
	$(BIN)/cachewire hub

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

check: system-deps install proto-check lint typecheck pytest  ## everything CI checks (lock-check first)

# The load generator for the Plasma rows: grpcbench's HTTP/2 client (see bench/RESULTS.md,
# "Delivery under load"). Without it, bench/delivery_bench.py uses its grpc.aio stand-in.
GRPCBENCH ?=
bench:  ## the delivery benchmarks (bench/RESULTS.md, "Delivery under load"), < 10 minutes
	timeout 600 sh -c '\
	$(PY) bench/delivery_bench.py plasma --targets held public --events 2000 --rounds 1 \
		--grpcbench "$(GRPCBENCH)" && \
	$(PY) bench/delivery_bench.py burst --targets held --burst 20000 --rounds 1 \
		--grpcbench "$(GRPCBENCH)" && \
	$(PY) bench/pipeline_bench.py latency --rates 1000 5000 --seconds 3 --rounds 1 && \
	$(PY) bench/pipeline_bench.py throughput --events 100000 --rounds 1'

