# streamconv image: one image, three roles (worker, capture, subscribe); the first argument picks one.
#
#   docker build -t streamconv .
#   docker run --rm -p 127.0.0.1:5555:5555 -p 127.0.0.1:5556:5556 streamconv
#   docker run --rm streamconv capture /data/input.mp4 --connect tcp://HOST:5555 --stream file0
#
# Build arguments:
#   BASE_IMAGE          runtime base; it must provide Python 3.11+ with `python` and `pip` on PATH,
#                       `useradd`, and glibc (manylinux wheels). nvidia/cuda:*-runtime images ship
#                       no Python, so they need one installed first; a pytorch/pytorch:*-runtime
#                       image has Python and a CUDA build of torch (check its Python is 3.11+).
#                       The GPU also needs the NVIDIA Container Toolkit on the host
#                       (docker run --gpus all ...).
#   TORCH_SPEC          the torch requirement installed before streamconv. On a base that already
#                       has torch (pytorch/pytorch), pass --build-arg TORCH_SPEC= to keep that build.
#   PIP_EXTRA_INDEX_URL empty by default: plain PyPI. PyPI's Linux x86_64 torch wheels are CUDA builds
#                       (several GB with their nvidia-* dependencies); for a small CPU-only image pass
#                       the PyTorch CPU wheel index here with --build-arg. Build arguments are kept in
#                       the image history, so never put credentials in this URL.

ARG BASE_IMAGE=python:3.11-slim

# The wheel is pure Python, so it is built on the slim image whatever the runtime base is; the
# runtime stage then gets neither the sources nor the build backend.
FROM python:3.11-slim AS builder
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE} AS runtime
ARG TORCH_SPEC="torch==2.13.0"
ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# No apt packages: the manylinux wheels of opencv-python-headless, torch and pyzmq bundle their
# libraries and need only glibc, libstdc++ and zlib, which the slim base already has.
# torch goes in first, in its own layer, because it is by far the largest and changes least.
# TORCH_SPEC carries the pin (DL3013 cannot see through the variable).
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_SPEC" ]; then pip install --no-cache-dir "$TORCH_SPEC"; fi

COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 streamconv \
    && useradd --no-log-init --system --uid 10001 --gid 10001 --create-home \
        --home-dir /home/streamconv --shell /usr/sbin/nologin streamconv

# The command-line defaults bind loopback only, which inside a container is unreachable from the
# host and from other containers; the image listens on all its interfaces instead (the ports are
# only reachable from outside where they are published).
ENV STREAMCONV_WORKER__INPUT=tcp://0.0.0.0:5555 \
    STREAMCONV_WORKER__OUTPUT=tcp://0.0.0.0:5556

# Numeric, so that a runtime (e.g. Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001
WORKDIR /home/streamconv
EXPOSE 5555 5556

# Exec form: PID 1 is the Python process itself, so `docker stop` delivers SIGTERM to streamconv,
# which shuts down cleanly. Run with --init (compose: init: true) for a role without its own SIGTERM
# handler, since PID 1 ignores signals it has no handler for.
ENTRYPOINT ["streamconv"]
CMD ["worker", "--config", "default"]
