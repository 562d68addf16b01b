"""Losses (eq. 6.2) and penalties (eq. 4.8, 4.9, 5.1, Thm 4.3, paper 004): against direct
formulas, finite differences, and by trying to break the Lipschitz bounds with samples."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import idlkit
from idlkit import train
from idlkit import wellposed as wp
from idlkit.errors import ConfigurationError, InputError, ShapeError, WellPosednessError

F64 = torch.float64


def _model(seed, n=6, p=4, q=3, act="relu", norm=0.8, wellposedness="inf", **kw):
    torch.manual_seed(seed)
    m = idlkit.ImplicitModel(p, n, q, act, bias=True, wellposedness=wellposedness, kappa=0.99,
                             tol=1e-12, max_iter=20000, dtype=F64, **kw)
    with torch.no_grad():
        A = torch.randn(n, n, dtype=F64)  # scaled, not projected: one row attains the max
        m.A.copy_(A * norm / wp.inf_norm(A))  # (norms are not differentiable at ties)
        m.B.mul_(3)
        m.C.mul_(3)
    return m


# ----------------------------------------------------------------------------- losses


def test_squared_error_matches_formula():
    g = torch.Generator().manual_seed(0)
    Yh, Y = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    per = 0.5 * ((Yh - Y) ** 2).sum(dim=1)
    torch.testing.assert_close(train.squared_error(Yh, Y, "none"), per)
    torch.testing.assert_close(train.squared_error(Yh, Y, "sum"), 0.5 * torch.linalg.norm(Yh - Y) ** 2)
    torch.testing.assert_close(train.squared_error(Yh, Y), per.mean())
    with pytest.raises(ShapeError):
        train.squared_error(Yh, Y[:, :2])
    with pytest.raises(ConfigurationError):
        train.squared_error(Yh, Y, "avg")


def test_cross_entropy_labels_and_probabilities():
    g = torch.Generator().manual_seed(1)
    Yh = torch.randn(6, 4, generator=g, dtype=F64) * 5
    lab = torch.randint(0, 4, (6,), generator=g)
    # labels: eq. 6.2 with y the one-hot row, by numpy
    ref_lab = np.mean([np.log(np.exp(Yh[j].numpy()).sum()) - Yh[j, lab[j]].item() for j in range(6)])
    assert float(train.cross_entropy(Yh, lab)) == pytest.approx(ref_lab, rel=1e-12)
    P = torch.softmax(torch.randn(6, 4, generator=g, dtype=F64), dim=1)
    # eq. 6.2: log(1^T exp(y_hat)) - y^T y_hat, summed over columns
    ref = sum(float(np.log(np.exp(Yh[j].numpy()).sum()) - P[j].numpy() @ Yh[j].numpy()) for j in range(6))
    assert float(train.cross_entropy(Yh, P, "sum")) == pytest.approx(ref, rel=1e-12)
    one_hot = torch.nn.functional.one_hot(lab, 4).to(F64)
    torch.testing.assert_close(train.cross_entropy(Yh, one_hot), train.cross_entropy(Yh, lab))
    with pytest.raises(InputError, match="out of range"):
        train.cross_entropy(Yh, torch.tensor([0, 1, 2, 3, 4, 0]))
    with pytest.raises(InputError):
        train.cross_entropy(Yh, P * 2)
    with pytest.raises(ShapeError):
        train.cross_entropy(Yh, lab[:3])


# ----------------------------------------------------------------------------- sparsity penalties


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), alpha=st.sampled_from([1.5, 2.0, 3.0, float("inf")]))
def test_group_penalties_match_numpy(seed, alpha):
    rng = np.random.default_rng(seed)
    B, D = rng.standard_normal((5, 4)), rng.standard_normal((2, 4))
    N = np.vstack([B, D])
    ref = sum(np.linalg.norm(N[:, j], alpha) for j in range(4))
    got = train.feature_selection(torch.tensor(B), torch.tensor(D), alpha)
    assert float(got) == pytest.approx(ref, rel=1e-12)
    assert float(train.l1(torch.tensor(B))) == pytest.approx(np.abs(B).sum(), rel=1e-12)
    with pytest.raises(ConfigurationError):
        train.group_columns(torch.tensor(B), 1.0)
    with pytest.raises(ShapeError):
        train.feature_selection(torch.tensor(B), torch.tensor(D[:, :3]))


def test_penalties_gradcheck():
    m = _model(0, norm=0.7)
    A, B, C, D = (t.detach().clone().requires_grad_() for t in (m.A, m.B, m.C, m.D))
    for fn in (train.lipschitz_penalty, train.lipschitz_bound, train.sensitivity_penalty,
               lambda A, B, C, D: train.feature_selection(B, D),
               lambda A, B, C, D: train.sensitivity_matrix(A, B, C, D).sum()):
        assert torch.autograd.gradcheck(fn, (A, B, C, D), eps=1e-7, atol=1e-5)


# ----------------------------------------------------------------------------- Lipschitz bounds


def _sampled_ratio(m, seed, trials=400):
    """Largest ||y(u) - y(u0)||_inf / ||u - u0||_inf over random and small perturbations."""
    g = torch.Generator().manual_seed(seed)
    U0 = torch.randn(trials, m.in_features, generator=g, dtype=F64) * 2
    scale = torch.logspace(-4, 0, trials, dtype=F64)[:, None]
    dU = torch.randn(trials, m.in_features, generator=g, dtype=F64).sign() * scale
    with torch.no_grad():
        dy = m(U0 + dU) - m(U0)
    return dy, dU


@pytest.mark.parametrize("act", ["relu", "tanh", "leaky_relu"])
@pytest.mark.parametrize("seed", range(4))
def test_lipschitz_and_sensitivity_bounds_hold(act, seed):
    m = _model(seed, act=act)
    args = (m.A.detach(), m.B.detach(), m.C.detach(), m.D.detach())
    kappa = float(train.lipschitz_bound(*args))
    S = train.sensitivity_matrix(*args)
    dy, dU = _sampled_ratio(m, seed)
    ratio = (dy.abs().amax(dim=1) / dU.abs().amax(dim=1)).max()
    assert ratio <= kappa * (1 + 1e-9)
    # componentwise (Thm 4.3): |dy| <= S |du|
    assert bool((dy.abs() <= (dU.abs() @ S.t()) * (1 + 1e-9) + 1e-12).all())
    assert float(train.sensitivity_penalty(*args)) <= kappa * (1 + 1e-12)
    assert float(train.lipschitz_penalty(*args)) >= kappa * (1 - 1e-12)
    # the dense formula
    A, B, C, D = (t.numpy() for t in args)
    ref = np.abs(C) @ np.linalg.solve(np.eye(A.shape[0]) - np.abs(A), np.abs(B)) + np.abs(D)
    np.testing.assert_allclose(S.numpy(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_mu_lipschitz_bound_holds_beyond_the_inf_ball(seed):
    g = torch.Generator().manual_seed(seed)
    n = 6
    T = torch.randn(n, n, generator=g, dtype=F64) * 2
    A = wp.mu_parametrization(T, 0.5)
    assert wp.inf_norm(A) > 1  # the eq. 4.8 bound does not apply
    m = _model(seed, act="tanh", wellposedness="mu", solver="anderson")
    with torch.no_grad():
        m.A.copy_(A)
    args = (m.A.detach(), m.B.detach(), m.C.detach(), m.D.detach())
    bound = float(train.mu_lipschitz_bound(*args))
    dy, dU = _sampled_ratio(m, seed, trials=200)
    assert (dy.abs().amax(dim=1) / dU.abs().amax(dim=1)).max() <= bound * (1 + 1e-9)
    with pytest.raises(WellPosednessError):
        train.lipschitz_bound(*args)


def test_bounds_refuse_non_contractive_A():
    A = torch.eye(3, dtype=F64) * 1.2
    B, C, D = torch.ones(3, 2, dtype=F64), torch.ones(1, 3, dtype=F64), torch.zeros(1, 2, dtype=F64)
    for fn in (train.lipschitz_bound, train.lipschitz_penalty, train.sensitivity_matrix,
               train.mu_lipschitz_bound):
        with pytest.raises(WellPosednessError):
            fn(A, B, C, D)
