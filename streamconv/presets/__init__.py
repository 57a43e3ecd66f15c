"""The shipped config presets (TOML), read with importlib.resources: `--config NAME`."""
