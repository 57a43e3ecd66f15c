#!/usr/bin/env bash
# One prepared script for a lent GPU machine (H100 or H200): correctness first, then speed.
#   1. the GPU tests: CUDA against the CPU and the float64 reference (float32 with TF32 off
#      under 1e-5, float16 within its rounding), batched streams, uint8 pixels on the device;
#   2. the retina preset at 1920x1080 with 1, 8 and 32 streams, batched against unbatched:
#      aggregate frames/s, bytes up and down per frame, time per stage (bench/streams.py);
#      then float16 end to end at 32 streams;
#   3. MemoryConv3d against continual-inference's co.Conv3d (bench/layers.py).
# Copy the printed figures into BENCHMARKS.md. Targets on an H100: >= 500 frames/s of
# 1920x1080 aggregate through retina; MemoryConv3d >= 4x faster per frame than co.Conv3d.
# Usage (repository root): bash bench/gpu_check.sh. Uses .venv/bin/python when there, else
# python3 (a machine image with CUDA torch); wheels carried in .whl/ (bench/gpu_wheels.sh
# makes them) are installed first for what that image lacks. About 5 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH#"$PWD"}"  # before the image's own
fi
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print(torch.__version__, torch.cuda.get_device_name(0))'
echo "== 1. correctness"
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/unit/test_gpu.py tests/unit/test_separable.py
echo "== 2. retina, 1920x1080, streams batched against unbatched"
"$PY" bench/streams.py --device cuda --size 1920x1080 --streams 1 8 32 --frames 32 --rounds 3
"$PY" bench/streams.py --device cuda --size 1920x1080 --streams 32 --frames 32 --rounds 3 \
    --dtype float16 --output-dtype float16
echo "== 3. MemoryConv3d against co.Conv3d"
"$PY" bench/layers.py --device cuda --frames 128 --repeats 7
