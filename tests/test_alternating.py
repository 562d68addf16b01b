"""The §7.1 alternating scheme: (A, B) by projected gradient, then (C, D) by least squares."""

import math

import numpy as np
import pytest
import torch

import idlkit
from idlkit import train
from idlkit.errors import ConfigurationError, ShapeError

F64 = torch.float64


def _problem(seed=0, m=80):
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(m, 2, generator=g, dtype=F64) * 4 - 2
    Y = torch.stack([torch.sin(math.pi * U[:, 0]), U[:, 0] * U[:, 1]], dim=1)
    return U, Y


def test_output_layer_is_the_least_squares_solution():
    U, Y = _problem()
    torch.manual_seed(0)
    m = idlkit.ImplicitModel(2, 10, 2, "tanh", kappa=0.6, tol=1e-12, dtype=F64)
    r = train.fit_output_layer(m, U, Y)
    with torch.no_grad():
        X = m.equilibrium(U).numpy()
    F = np.hstack([X, U.numpy(), np.ones((U.shape[0], 1))])
    W, *_ = np.linalg.lstsq(F, Y.numpy(), rcond=None)
    np.testing.assert_allclose(F @ W, m(U).detach().numpy(), atol=1e-9)
    assert r == pytest.approx(np.sqrt(((F @ W - Y.numpy()) ** 2).mean()), rel=1e-9)
    # ridge shrinks (C, D) and can only raise the training error
    norm0 = float(m.C.norm())
    r2 = train.fit_output_layer(m, U, Y, ridge=10.0)
    assert r2 >= r - 1e-12 and float(m.C.norm()) < norm0


def test_alternating_updates_blocks_in_turn():
    U, Y = _problem(1)
    torch.manual_seed(1)
    m = idlkit.ImplicitModel(2, 12, 2, "relu", kappa=0.5, dtype=F64)
    C0, D0, A0 = m.C.detach().clone(), m.D.detach().clone(), m.A.detach().clone()
    seen = []

    def check(rec):  # during the (A, B) block the output layer must not move
        seen.append(torch.equal(m.C, C0) and torch.equal(m.D, D0))

    res = train.alternating_fit(m, (U, Y), train.Trainer(loss="squared_error", lr=1e-2, epochs=3,
                                                         batch_size=16, log=check))
    assert all(seen) and not torch.equal(m.A, A0)
    assert all(p.requires_grad for p in m.parameters())  # restored
    assert res.rmse_after_output_block <= res.rmse_after_state_block
    assert idlkit.wellposed.inf_norm(m.A) <= 0.5


def test_errors():
    U, Y = _problem()
    m = idlkit.ImplicitModel(2, 5, 2, dtype=F64)
    with pytest.raises(ConfigurationError):
        train.fit_output_layer(m, U, Y, ridge=-1.0)
    with pytest.raises(ShapeError):
        train.fit_output_layer(m, U, Y[:, :1])
