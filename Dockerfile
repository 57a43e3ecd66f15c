# streamconv image: one image, three roles (worker, capture, subscribe); the first argument picks one.
#
#   docker build -t streamconv .
#   docker run --rm --init -e STREAMCONV_WORKER__ALLOW_INSECURE=true \
#       -p 127.0.0.1:5555-5557:5555-5557 streamconv     # the worker, preset "default", plaintext on
#                                                        # the host's loopback (wider: CURVE, README)
#   docker run --rm --no-healthcheck streamconv capture sample --connect tcp://HOST:5555 --stream s0
#
# Which torch the image gets (docs/CONTAINER.md has the details):
#   - By default, torch==2.13.0 from PyPI. On Linux x86_64 that is a CUDA build: several GB with
#     its nvidia-* wheels. It runs on the CPU too, and on a GPU where the host has the NVIDIA
#     Container Toolkit (compose profile "gpu"); the CUDA libraries come in those wheels, so the
#     base needs no CUDA.
#   - --build-arg TORCH_INDEX_URL=<PyTorch's CPU-only wheel index, from pytorch.org's install page>
#     gives the CPU-only build (a wheel of about 190 MB; the whole image about 1.4 GB): no GPU.
#   - Wheels in a wheels/ folder of the build context are used first (pip --find-links), e.g. a CPU
#     torch wheel already on disk, for builds without that index. The folder is optional and is
#     only mounted while installing, so the wheels do not stay in a layer.
#
# Build arguments:
#   BASE_IMAGE       runtime base: Python 3.11+ with `python` and pip (`python -m pip`) that may
#                    install into it (no EXTERNALLY-MANAGED marker), `useradd`, and glibc for the
#                    manylinux wheels. The wheel of streamconv is built on it as well, so it is the
#                    only image a build needs.
#   TORCH_SPEC       the torch requirement installed before the other dependencies. On a base that
#                    already has the torch you want (e.g. pytorch/pytorch), pass TORCH_SPEC= (empty)
#   TORCH_INDEX_URL  empty by default; if set, torch (only) is installed from this index instead.
#   Build arguments are kept in the image history: never put credentials in an index URL.

ARG BASE_IMAGE=python:3.11-slim

# The optional wheels/ folder of the build context, gathered in /wheels for the dependency step to
# mount. The glob lets the folder be missing (pyproject.toml is there so that the COPY never copies
# nothing); only the wheels are kept, so that what the mount holds changes only when they do.
FROM ${BASE_IMAGE} AS wheels
COPY pyproject.toml wheel[s] /context/
RUN mkdir /wheels && find /context -maxdepth 1 -name '*.whl' -exec mv -t /wheels {} +

# The dependency list, as pyproject.toml's [project] dependencies give it: a file that changes only
# when they do (not when a tool's settings in pyproject.toml change), and then the wheel of
# streamconv itself (pure Python): rebuilt on every code change, and cheap.
FROM ${BASE_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /requirements.txt
COPY README.md ./
COPY streamconv ./streamconv
# The presets: pyproject.toml maps config/presets into the package (streamconv.presets).
COPY config/presets ./config/presets
RUN python -m pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /dist .

FROM ${BASE_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 streamconv \
    && useradd --no-log-init --system --uid 10001 --gid 10001 --create-home \
        --home-dir /home/streamconv --shell /usr/sbin/nologin streamconv

# The dependencies, in layers that only their list, wheels/ and these arguments invalidate: torch
# first (TORCH_SPEC carries its pin; DL3013 cannot see through the variable), then the rest. No apt
# packages: the manylinux wheels of opencv-python-headless, torch and pyzmq bundle their libraries
# and need only glibc, libstdc++ and zlib. The list is copied, not only mounted, because some
# builders (buildah 1.28) reuse a cached RUN whatever its mounts hold; there, a change of wheels/
# alone needs --no-cache.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""
COPY --from=builder /requirements.txt /tmp/requirements.txt
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheels,source=/wheels,target=/tmp/wheels \
    set -eu; \
    if [ -n "$TORCH_SPEC" ]; then \
        if [ -n "$TORCH_INDEX_URL" ]; then set -- --index-url "$TORCH_INDEX_URL"; else set --; fi; \
        python -m pip install --no-cache-dir --find-links /tmp/wheels "$@" "$TORCH_SPEC"; \
    fi; \
    python -m pip install --no-cache-dir --find-links /tmp/wheels -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt

# The code: the only layers a change to streamconv/ rebuilds. COPY, not a mount, for the same
# reason as above: a builder must see that the wheel changed.
COPY --from=builder /dist /tmp/dist
RUN python -m pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
    && rm -rf /tmp/dist

# The command-line defaults bind loopback only, which inside a container is unreachable from the
# host and from other containers; the image listens on all its interfaces instead (the ports are
# only reachable from outside where they are published).
ENV STREAMCONV_WORKER__INPUT=tcp://0.0.0.0:5555 \
    STREAMCONV_WORKER__OUTPUT=tcp://0.0.0.0:5556 \
    STREAMCONV_WORKER__HTTP=0.0.0.0:5557

# Numeric, so that a runtime (e.g. Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001
WORKDIR /home/streamconv
EXPOSE 5555 5556 5557

# /healthz answers 200 while the worker's loop is alive (/readyz, used by compose, also waits for
# the model and sockets). Python only: the image has no curl. A non-2xx answer or no answer raises,
# and python exits 1 (unhealthy). The capture and subscribe roles serve no HTTP: run them with
# --no-healthcheck (compose disables it for them).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5557/healthz', timeout=2)"]

# Exec form: PID 1 is the Python process itself, so `docker stop` delivers SIGTERM to streamconv,
# which shuts down cleanly (exit 0). --init (compose: init: true) adds a small init that also reaps
# child processes.
ENTRYPOINT ["streamconv"]
CMD ["worker", "--config", "default"]
