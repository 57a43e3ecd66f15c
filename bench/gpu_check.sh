#!/usr/bin/env bash
# One script for a lent GPU machine: correctness of the CUDA path against the CPU first,
# then the layer benchmark on CUDA. Copy the printed figures into BENCHMARKS.md.
# Usage (repository root, .venv with a CUDA build of torch): bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print(torch.cuda.get_device_name(0))'
"$PY" -m pytest -q -m gpu tests/unit/test_gpu.py
"$PY" bench/layers.py --device cuda --frames 128 --repeats 7
