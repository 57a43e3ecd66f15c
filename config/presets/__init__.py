"""The shipped config presets (TOML), read with importlib.resources: `--config NAME`.

This folder is the package streamconv.presets once installed: pyproject.toml maps it there
([tool.setuptools.package-dir]), in the wheel and in an editable install."""
