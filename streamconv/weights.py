"""Fitted weights: saved from Python in one line, loaded strictly by the worker.

    from streamconv.weights import save
    save(model, "fitted.safetensors")     # model.state_dict(), as the worker will key it

The file is keyed exactly as the model's own `state_dict()`: for a `[model] factory`, the
factory's model; for `[[layers]]`, `<layer name>.<parameter>` (e.g. `smooth.weight`). Loading
refuses missing or unexpected keys and wrong shapes, naming each; floating tensors of another
dtype are cast to the model's, with a log line. `.pt` files are read with weights_only=True:
a file can hold tensors, never code.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from streamconv.errors import ConfigError

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".pth")


def save(model: nn.Module, path: str | Path) -> Path:
    """Write `model.state_dict()` to `path` (.safetensors; .pt/.pth through torch.save)."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(tensors, str(path))
    elif path.suffix in SUFFIXES:
        torch.save(tensors, path)
    else:
        msg = f"weights file {path}: write .safetensors (or .pt)"
        raise ConfigError(msg)
    return path


def read(path: Path) -> dict[str, Tensor]:
    """The tensors in `path`, on the CPU; ConfigError saying what is wrong with the file."""
    if path.suffix not in SUFFIXES:
        msg = f"[model] weights {path}: a .safetensors or .pt file, got {path.suffix or 'none'}"
        raise ConfigError(msg)
    if not path.is_file():
        raise ConfigError(f"[model] weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            tensors: object = load_file(str(path), device="cpu")
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, or a pickle with code in it
        msg = f"[model] weights {path}: cannot read it ({type(e).__name__}: {e})"
        raise ConfigError(msg) from e
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items()
    ):
        msg = (f"[model] weights {path}: must map names to tensors (a state_dict), got "
               f"{type(tensors).__name__}")  # fmt: skip
        raise ConfigError(msg)
    return tensors


def load(model: nn.Module, path: Path) -> None:
    """Load `path` into `model`, strictly; every mismatch named in one ConfigError."""
    given = read(path)
    own = model.state_dict()
    problems = [f"missing {k!r} {tuple(own[k].shape)}" for k in own if k not in given]
    problems += [f"unexpected {k!r}" for k in given if k not in own]
    problems += [
        f"{k!r} has shape {tuple(given[k].shape)}, the model's is {tuple(own[k].shape)}"
        for k in own
        if k in given and given[k].shape != own[k].shape
    ]
    if problems:
        msg = (f"[model] weights {path} do not fit the model (keyed as its state_dict()): "
               + "; ".join(problems))  # fmt: skip
        raise ConfigError(msg)
    cast = sorted({f"{given[k].dtype} -> {own[k].dtype}" for k in own
                   if given[k].dtype != own[k].dtype})  # fmt: skip
    if cast:
        log.info("weights %s: cast %s", path, ", ".join(cast))
    model.load_state_dict(given, strict=True)
    log.info("weights %s loaded (%d tensors)", path, len(given))


def version(model: nn.Module) -> str:
    """A fingerprint of the weights (names, shapes, dtypes and values): the `model_version`
    that outputs and /status carry. 12 hex digits."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits, as int16
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:12]
