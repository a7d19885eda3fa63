# One image for the hub, the sidecar and the injector: `cachewire hub|sidecar|injector`.
#
#   docker build -t cachewire .
#   docker run --read-only --tmpfs /tmp -p 8080:8080 cachewire hub --host 0.0.0.0
#
# The runtime dependencies come from requirements/runtime.lock (hashes checked), cachewire
# itself from a wheel built in the first stage. The final stage has no compilers, no pip,
# runs as UID 65532 and writes nothing outside /tmp (the Kubernetes manifests mount an
# emptyDir there and set readOnlyRootFilesystem). tests/unit/test_dockerfile.py checks
# these properties; tests/e2e/test_image_run.py runs each component the same way.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The locked dependencies first: this layer is reused until the lock changes.
COPY requirements/runtime.lock requirements/dev.lock requirements/
RUN python -m venv --without-pip /opt/cachewire \
 && python -m pip --python /opt/cachewire/bin/python install \
      --require-hashes --no-deps --only-binary=:all: -r requirements/runtime.lock
# The wheel, built with the locked setuptools (no network-resolved build requirements).
COPY . .
RUN awk '/^setuptools==/ {keep = 1} keep {print} keep && !/\\$/ {exit}' requirements/dev.lock \
      > /tmp/build.lock \
 && python -m pip install --require-hashes --no-deps -r /tmp/build.lock \
 && python -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && python -m pip --python /opt/cachewire/bin/python install --no-deps /wheels/cachewire-*.whl \
 && python -m compileall -q /opt/cachewire

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="cachewire" \
      org.opencontainers.image.description="Cache-invalidation propagation: a Plasma-compatible push hub, a per-pod sidecar and its Kubernetes injector" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/cachewire/cachewire"
# No pip (nor setuptools, wheel) in the final image: nothing installs at run time.
RUN python -m pip uninstall -y -q pip setuptools wheel \
 && rm -rf /root/.cache
COPY --from=build /opt/cachewire /opt/cachewire
ENV PATH=/opt/cachewire/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed non-root UID (the restricted Pod Security Standard; runAsUser in k8s/).
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 50051 8091 10250
ENTRYPOINT ["cachewire"]
CMD ["hub"]
