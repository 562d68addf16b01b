"""Bounds against thousands of random well-posed models (issue 6: "property tests over
thousands of random well-posed models and random admissible perturbations").

Tiny models (n <= 6, p <= 4) keep each case cheap; every case draws its own matrices,
activation, radius and perturbations (box vertices, random points of the box and of the
cardinality set). Zero violations are required; the counts are asserted, not sampled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import idlkit as idl
import idlkit.robust as R

ACTS = ("relu", "tanh", "leaky_relu", "sigmoid", "identity")


def _model(rng: np.random.Generator) -> idl.ImplicitModel:
    n, p, q = int(rng.integers(1, 7)), int(rng.integers(1, 5)), int(rng.integers(1, 4))
    A = rng.normal(size=(n, n)) * (rng.random((n, n)) < 0.7)
    A *= rng.uniform(0.1, 0.97) / max(np.abs(A).sum(axis=1).max(), 1e-12)  # ||A||_inf < 1
    mats = [torch.as_tensor(M) for M in (A, rng.normal(size=(n, p)), rng.normal(size=(q, n)),
                                         rng.normal(size=(q, p)) * rng.integers(0, 2))]
    act = ACTS[int(rng.integers(len(ACTS)))]
    return idl.ImplicitModel.from_matrices(*mats, torch.as_tensor(rng.normal(size=n)),
                                           torch.as_tensor(rng.normal(size=q)), activation=act,
                                           wellposedness=None, tol=1e-12, max_iter=5000)


def _perturbations(rng: np.random.Generator, p: int, sigma: np.ndarray, k: int | None, m: int) -> np.ndarray:
    signs = rng.choice([-1.0, 1.0], size=(m, p))
    scale = np.where(rng.random((m, 1)) < 0.5, 1.0, rng.random((m, p)))  # vertices and inside
    D = signs * scale * sigma
    if k is not None:  # keep at most k coordinates per perturbation
        for row in D:
            row[rng.permutation(p)[k:]] = 0.0
    return D


@pytest.mark.parametrize("block", range(4))
def test_state_and_output_bounds_hold_on_thousands_of_models(block):
    rng = np.random.default_rng(1000 + block)
    cases = violations = 0
    for _ in range(500):
        model = _model(rng)
        p = model.in_features
        sigma = rng.uniform(0.0, 1.0, size=p) * (rng.random(p) < 0.9)
        k = int(rng.integers(1, p + 1)) if rng.random() < 0.4 else None
        u0 = torch.as_tensor(rng.normal(size=p))
        sx = R.state_box_bound(model, torch.as_tensor(sigma), k=k).numpy()
        sy = R.output_box_bound(model, torch.as_tensor(sigma), k=k).numpy()
        U = u0 + torch.as_tensor(_perturbations(rng, p, sigma, k, 24))
        with torch.no_grad():
            x0, y0 = model.equilibrium(u0[None]).numpy(), model(u0[None]).numpy()
            X, Y = model.equilibrium(U).numpy(), model(U).numpy()
        slack = 1e-9 * (1 + np.abs(X).max())
        violations += int((np.abs(X - x0) > sx + slack).sum()) + int((np.abs(Y - y0) > sy + slack).sum())
        cases += 1
    assert cases == 500 and violations == 0


def test_lp_bound_holds_on_a_thousand_relu_models():
    rng = np.random.default_rng(7)
    violations = 0
    for _ in range(1000):
        n, p = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        A = np.abs(rng.normal(size=(n, n))) * rng.choice([-1, 1], size=(n, n))
        A *= rng.uniform(0.1, 0.9) / max(np.abs(A).sum(axis=1).max(), 1e-12)
        model = idl.ImplicitModel.from_matrices(
            *(torch.as_tensor(M) for M in (A, rng.normal(size=(n, p)), rng.normal(size=(2, n)),
                                           np.zeros((2, p)))),
            activation="relu", wellposedness=None, tol=1e-12, max_iter=5000, solver="picard")
        sigma = float(rng.uniform(0.05, 1.0))
        k = int(rng.integers(1, p + 1)) if rng.random() < 0.3 else None
        u0 = torch.as_tensor(rng.normal(size=p))
        res = R.lp_attack(model, u0, sigma, k)
        U = u0 + torch.as_tensor(_perturbations(rng, p, np.full(p, sigma), k, 16))
        with torch.no_grad():
            X = model.equilibrium(U).numpy()
            x0 = model.equilibrium(u0[None]).numpy()
        values = ((X - x0) ** 2).sum(axis=1)
        tol = 1e-7 * (1 + abs(res.bound))
        violations += int((values > res.bound + tol).sum()) + int(res.value > res.bound + tol)
    assert violations == 0
