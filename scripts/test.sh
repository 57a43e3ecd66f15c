#!/usr/bin/env bash
# Set up .venv (if needed), then lint, type-check and run the whole test suite.
source "$(dirname "$0")/setup.sh"
.venv/bin/ruff check streamconv tests bench
.venv/bin/ruff format --check streamconv tests bench
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
