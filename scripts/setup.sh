# Sourced by demo.sh and test.sh: make .venv with streamconv installed.
# The CPU wheel of torch goes in first so that pip never pulls a multi-GB CUDA build;
# GPU users install a CUDA build of torch into .venv before running this (see README).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "streamconv needs Python 3.11 or newer (found: $("$PYTHON" --version))" >&2; exit 2; }
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c 'import torch' 2>/dev/null; then
    "$VPY" -m pip install --quiet torch==2.13.0
fi
"$VPY" -m pip install --quiet -e ".[test]"
