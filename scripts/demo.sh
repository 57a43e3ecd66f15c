#!/usr/bin/env bash
# Set up .venv (if needed), then run the main job on the built-in sample clip:
# capture -> worker -> subscriber, a summary per layer, preview videos in out/, and a check
# that the streamed outputs equal the offline whole-video pipeline.
source "$(dirname "$0")/setup.sh"
.venv/bin/streamconv run sample --config retina --out out "$@"
