"""Fit the model's `sigma` to a target, then save the weights the worker will serve.

    python examples/divisive/fit.py [--out fitted.safetensors]

The target is the same model with sigma = 0.05 on a random clip; fitting starts at 0.3 and
recovers it with the library's own `fit` (Adam, chunks of 8 frames, state carried across
chunks). The saved file is keyed as the model's state_dict(), as the config's
`[model] weights` expects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # model.py beside this script, as the worker finds it

from model import build  # noqa: E402

from streamconv.weights import save  # noqa: E402

TRUE_SIGMA = 0.05


def fit(out: Path, epochs: int = 60) -> float:
    """Fit sigma from 0.3 towards TRUE_SIGMA; save the weights to `out`; return sigma."""
    torch.manual_seed(0)
    clip = torch.rand(1, 1, 48, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        target = build(sigma=TRUE_SIGMA).double().run(clip)["norm"]
    model = build(sigma=0.3).double()
    for name, p in model.named_parameters():  # the time constants are parameters too: keep
        p.requires_grad_(name == "norm.sigma")  # them as built, fit sigma alone
    model.make_optimizer("Adam", lr=0.02)
    model.fit(clip, target, dt=8, epochs=epochs)
    sigma = float(model.norm.sigma.detach().abs())
    save(model, out)
    return sigma


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "fitted.safetensors")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    sigma = fit(args.out, args.epochs)
    print(f"sigma fitted: {sigma:.4f} (true {TRUE_SIGMA}); weights saved to {args.out}")


if __name__ == "__main__":
    main()
