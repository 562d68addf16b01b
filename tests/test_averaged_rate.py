"""Paper 004's averaged iteration on mu_inf models: the observed per-step contraction of the error
never exceeds the predicted l_inf factor ``1 - alpha (1 - mu_inf(A)_+)`` (derivation in
:mod:`idlkit.solve.registry`: Jacobian ``(1 - alpha) I + alpha D A``, ``D = diag(phi')`` in
``[0, 1]``, nonnegative diagonal for ``alpha <= 1 / (1 + max_i (-A_ii)_+)``), the factor is
attained (identity activation, error along the worst row's sign vector), and ``gamma >= 1`` is
refused where the parametrization is meant to certify well-posedness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import idlkit as idl
from idlkit import wellposed as wp
from idlkit.errors import ConfigurationError
from idlkit.solve import default_alpha, fixed_point

F64 = torch.float64


def _mu_model(seed: int, n: int, gamma: float, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    T = torch.randn(n, n, generator=g, dtype=F64) * scale / n ** 0.5
    return wp.mu_parametrization(T, gamma)


def _step(A, b, X, alpha, act):
    """One averaged step written out (independent of the library's solver)."""
    return (1 - alpha) * X + alpha * act(A @ X + b)


ACTS = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda z: z}


@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
@pytest.mark.parametrize(("n", "gamma", "scale"), [(6, 0.5, 1.0), (20, 0.9, 3.0), (20, 0.99, 10.0),
                                                   (12, -0.5, 2.0)])
def test_averaged_error_contracts_at_the_predicted_rate(act, n, gamma, scale):
    for seed in range(3):
        A = _mu_model(seed, n, gamma, scale)
        mu = wp.mu_inf(A)
        assert mu <= gamma + 1e-12
        if scale >= 3:
            assert wp.inf_norm(A) > 1  # a genuine mu model: Picard's certificate fails
        g = torch.Generator().manual_seed(100 + seed)
        b = torch.randn(n, 8, generator=g, dtype=F64) * 3
        Xs, info = fixed_point(A, b, act, method="anderson", tol=1e-14, max_iter=100_000, alpha=0.5
                               * default_alpha(A))
        assert float((Xs - ACTS[act](A @ Xs + b)).abs().max()) < 1e-12
        for alpha in (default_alpha(A), 0.5 * default_alpha(A)):
            q = 1 - alpha * (1 - max(mu, 0.0))
            assert 0 < q < 1
            X = torch.randn(n, 8, generator=g, dtype=F64) * 5 + Xs
            err = (X - Xs).abs().amax(dim=0)
            for k in range(25):
                Xn, _ = fixed_point(A, b, act, method="averaged", alpha=alpha, x0=X, tol=1e-300,
                                    max_iter=1, on_nonconvergence="ignore")
                if k == 0:  # the library's step is the written-out averaged step
                    torch.testing.assert_close(Xn, _step(A, b, X, alpha, ACTS[act]), rtol=0,
                                               atol=1e-12)
                new = (Xn - Xs).abs().amax(dim=0)
                assert bool((new <= q * err + 1e-11).all()), (new / err).max().item()
                X, err = Xn, new


def test_predicted_factor_is_attained():
    """Identity activation: the step's Jacobian J = (1 - alpha) I + alpha A has ||J||_inf = q
    exactly, attained by an error along sign(J[i*]); the observed one-step ratio equals q."""
    for seed in range(5):
        A = _mu_model(seed, 15, 0.8, 4.0)
        mu, alpha = wp.mu_inf(A), default_alpha(A)
        q = 1 - alpha * (1 - max(mu, 0.0))
        J = (1 - alpha) * np.eye(15) + alpha * A.numpy()
        assert np.abs(J).sum(axis=1).max() == pytest.approx(q, abs=1e-12)  # independent: numpy
        i = int(np.abs(J).sum(axis=1).argmax())
        b = torch.randn(15, 1, dtype=F64)
        Xs = torch.linalg.solve(torch.eye(15, dtype=F64) - A, b)
        e0 = torch.as_tensor(np.sign(J[i]))[:, None]
        X1, _ = fixed_point(A, b, "identity", method="averaged", alpha=alpha, x0=Xs + e0, tol=1e-300,
                            max_iter=1, on_nonconvergence="ignore")
        assert float((X1 - Xs).abs().max()) == pytest.approx(q, abs=1e-10)
        # the default step is the largest that keeps J's diagonal nonnegative
        assert alpha == pytest.approx(1 / (1 + max(0.0, float((-torch.diagonal(A)).max()))))


def test_gamma_at_least_one_is_refused():
    with pytest.raises(ConfigurationError, match="kappa"):
        idl.ImplicitModel(4, 6, 2, wellposedness="mu", kappa=1.0)
    with pytest.raises(ConfigurationError, match="kappa"):
        idl.ImplicitModel(4, 6, 2, wellposedness="mu", kappa=1.5)
    for gamma in (1.0, 1.2, float("inf"), float("nan")):
        with pytest.raises(ConfigurationError, match="gamma"):
            wp.MuInfParametrization(gamma)
    assert wp.MuInfParametrization(0.95).gamma == 0.95
    assert wp.MuInfParametrization(-0.5).gamma == -0.5
