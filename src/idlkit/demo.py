"""The default job of ``make demo``: train an implicit model on scikit-learn's digits.

Until the full training stack exists (``idlkit.train``), this is a compact
projected-gradient loop (paper 000 problem 6.4): Adam steps on (A, B, C, D, b, d)
with implicit gradients, each followed by the exact projection of A onto
``{||A||_inf <= kappa}``. It prints train/test accuracy, the float64
well-posedness certificate and solver statistics, saves the model and checks
that the saved file reloads to the same predictions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .io import load, save
from .model import ImplicitModel

__all__ = ["DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    train_accuracy: float
    test_accuracy: float
    seconds: float
    mean_forward_iterations: float
    mean_backward_iterations: float
    path: Path


def _digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.25, random_state=seed,
                                          stratify=y)
    mean = Xtr.mean(axis=0)
    f = lambda a: torch.as_tensor(a - mean, dtype=torch.float32)  # noqa: E731
    return f(Xtr), torch.as_tensor(ytr), f(Xte), torch.as_tensor(yte)


def _accuracy(model: ImplicitModel, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(X).argmax(dim=1) == y).double().mean())


def run_demo(out: str | Path = "runs/demo/model.safetensors", hidden: int = 100,
             epochs: int = 15, kappa: float = 0.95, seed: int = 0, lr: float = 5e-3,
             batch_size: int = 64, log: bool = True) -> DemoResult:
    """Train, report and save; returns the figures (also printed when ``log``)."""
    say = print if log else (lambda *a, **k: None)
    torch.manual_seed(seed)
    Xtr, ytr, Xte, yte = _digits(seed)
    model = ImplicitModel(Xtr.shape[1], hidden, 10, activation="relu", bias=True,
                          wellposedness="inf", kappa=kappa, solver="anderson", tol=1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.attach_projection(opt)
    gen = torch.Generator().manual_seed(seed)
    say(f"idlkit demo: ImplicitModel(p={Xtr.shape[1]}, n={hidden}, q=10, relu), "
        f"||A||_inf <= {kappa}, digits: {len(Xtr)} train / {len(Xte)} test")
    fwd_it, bwd_it = [], []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(Xtr), generator=gen)
        total = 0.0
        for i in range(0, len(Xtr), batch_size):
            idx = perm[i:i + batch_size]
            loss = torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            fwd, bwd = model.last_solve, model.last_backward_solve
            fwd_it.append(fwd.iterations if fwd else 0)
            bwd_it.append(bwd.iterations if bwd else 0)
            total += float(loss.detach()) * len(idx)
        if log and (epoch % 5 == 4 or epoch == epochs - 1):
            say(f"  epoch {epoch + 1:3d}  loss {total / len(Xtr):.4f}  "
                f"test acc {_accuracy(model, Xte, yte):.4f}")
    seconds = time.perf_counter() - t0
    train_acc, test_acc = _accuracy(model, Xtr, ytr), _accuracy(model, Xte, yte)
    say(f"train accuracy {train_acc:.4f}   test accuracy {test_acc:.4f}   ({seconds:.1f} s)")
    say(str(model.certificate()))
    with torch.no_grad():
        model(Xte)
    info = model.last_solve
    say(f"forward solver on the test set: {info}")
    say(f"training: mean iterations forward {np.mean(fwd_it):.1f}, backward {np.mean(bwd_it):.1f}")
    path = save(model, out)
    same = torch.equal(load(path)(Xte), model(Xte).detach())
    say(f"saved to {path} (reload gives identical predictions: {same})")
    return DemoResult(train_acc, test_acc, seconds, float(np.mean(fwd_it)),
                      float(np.mean(bwd_it)), Path(path))
