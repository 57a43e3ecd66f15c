"""The worker role: decode -> engine (per-stream state, layers) -> publisher."""
