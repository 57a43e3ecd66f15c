#!/usr/bin/env bash
# Run here (with network) before lending a GPU machine that has none: downloads into .whl/
# the Python 3.12 x86-64 wheels bench/gpu_check.sh needs beyond that machine's image
# (PyTorch, OpenCV, numpy, pytest, hypothesis and prometheus-client are there already).
# Carry .whl with the call; gpu_check.sh installs them first.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d .whl \
    pyzmq pydantic pydantic-core annotated-types typing-inspection starlette uvicorn \
    websockets pytest-timeout continual-inference typing-extensions
ls .whl
