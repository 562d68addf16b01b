"""Relaxed SIM row problems (paper 002 App. C, problems 10-11) against cvxpy/Clarabel, brute force
and closed forms: idlkit.sim.penalized and idlkit.sim.cvx."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idlkit.errors import ConfigurationError
from idlkit.sim.cvx import exact_row, factor, relaxed_row
from idlkit.sim.penalized import _project_ball, _prox_huber, penalized_rows, penalty_value

cp = pytest.importorskip("cvxpy")


def _problem(seed: int, m: int = 40, n: int = 8, p: int = 6, rows: int = 3, scale: float = 1.0,
             col_scales: bool = False):
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.normal(size=(m, n)), 0.0)
    U = rng.normal(size=(m, p))
    if col_scales:  # columns of very different scale, as rescaled states next to raw inputs
        X *= 10.0 ** rng.uniform(-3, 0, size=n)
    F = np.hstack([X, U, np.ones((m, 1))])
    T = rng.normal(size=(rows, m)) * scale
    d = F.shape[1]
    cons = np.zeros(d, bool)
    cons[:n] = True
    free = np.zeros(d, bool)
    free[-1] = True
    return F, T, cons, free


def _objective(F, t, w, lam, penalty, weight, free, sigma=None):
    pen = penalty_value(w[None, ~free], penalty, weight, None if sigma is None else sigma[~free])[0]
    return lam * float(np.sum((t - F @ w) ** 2)) + pen


def _cvx_reference(F, t, lam, penalty, weight, kappa, cons, free, sigma=None):
    """Problems 10-11 written directly on F (no factor), solved by Clarabel."""
    d = F.shape[1]
    w = cp.Variable(d)
    P = np.flatnonzero(~free)
    sg = np.ones(d) if sigma is None else sigma
    v = cp.multiply(sg[P], w[P])
    cons_list = []
    if penalty == "l1":
        pen = weight * cp.norm1(v)
    else:
        s = cp.Variable(P.size, nonneg=True)
        tt = cp.Variable(P.size)
        cons_list += [cp.SOC(s + tt, cp.vstack([2 * v, s - tt]), axis=0), tt >= 0, tt <= 1]
        pen = weight * (cp.sum(s) + cp.sum(tt))
    if kappa is not None:
        cons_list.append(cp.norm1(w[np.flatnonzero(cons)]) <= kappa)
    prob = cp.Problem(cp.Minimize(pen + lam * cp.sum_squares(F @ w - t)), cons_list)
    prob.solve(solver="CLARABEL")
    assert prob.status == "optimal"
    return prob.value


@pytest.mark.parametrize("penalty", ["l1", "perspective"])
@pytest.mark.parametrize("kappa", [0.2, None])
@pytest.mark.parametrize("scale,col_scales", [(1.0, False), (30.0, False), (1.0, True)])
def test_penalized_rows_matches_clarabel(penalty, kappa, scale, col_scales):
    # scale=30 puts weights beyond |w| = 1: the perspective's quadratic branch is exercised
    F, T, cons, free = _problem(1, scale=scale, col_scales=col_scales)
    lam, weight = 0.1, 0.4
    res = penalized_rows(F.T @ F, T @ F, np.einsum("ij,ij->i", T, T), lam=lam, penalty=penalty,
                         weight=weight, kappa=kappa, constrained=cons, free=free, tol=1e-12,
                         max_iter=200_000)
    assert set(res.status) == {"optimal"}
    for i, t in enumerate(T):
        ref = _cvx_reference(F, t, lam, penalty, weight, kappa, cons, free)
        ours = _objective(F, t, res.W[i], lam, penalty, weight, free)
        assert ours == pytest.approx(res.objective[i], rel=1e-9, abs=1e-9)
        assert ours <= ref + 1e-6 * max(1.0, abs(ref))  # never worse than the conic solver
        assert ours >= ref - 1e-6 * max(1.0, abs(ref))  # and the certificate is honest
        assert res.gap[i] >= ours - ref - 1e-6 * max(1.0, abs(ref))
        if kappa is not None:
            assert np.sum(np.abs(res.W[i, cons])) <= kappa * (1 + 1e-12)
    if penalty == "perspective" and scale > 1:
        assert np.max(np.abs(res.W[:, ~free])) > 1.0  # quadratic branch really reached


def test_standardised_penalty_matches_clarabel():
    F, T, cons, free = _problem(2, col_scales=True)
    sigma = np.sqrt(np.sum(F * F, axis=0) / F.shape[0])
    res = penalized_rows(F.T @ F, T @ F, np.einsum("ij,ij->i", T, T), lam=0.1, penalty="l1", weight=0.05,
                         kappa=0.5, constrained=cons, free=free, sigma=sigma, tol=1e-12, max_iter=200_000)
    for i, t in enumerate(T):
        ref = _cvx_reference(F, t, 0.1, "l1", 0.05, 0.5, cons, free, sigma)
        assert _objective(F, t, res.W[i], 0.1, "l1", 0.05, free, sigma) == pytest.approx(ref, rel=1e-6)


def test_gap_certificate_bounds_suboptimality_at_every_budget():
    """Stopped early, the reported gap still bounds the distance to the optimum (the dual point
    is feasible): a bound tested by trying to break it."""
    F, T, cons, free = _problem(3, rows=4, col_scales=True)
    G, C, tt = F.T @ F, T @ F, np.einsum("ij,ij->i", T, T)
    exact = penalized_rows(G, C, tt, lam=0.1, penalty="l1", weight=0.2, kappa=0.3, constrained=cons,
                           free=free, tol=1e-13, max_iter=300_000)
    for it in (1, 3, 10, 30, 100):
        early = penalized_rows(G, C, tt, lam=0.1, penalty="l1", weight=0.2, kappa=0.3, constrained=cons,
                               free=free, tol=0.0, max_iter=it)
        sub = early.objective - exact.objective
        assert np.all(sub <= early.gap + 1e-9)
        assert np.all(early.gap >= -1e-9)


def test_warm_start_is_used_and_feasible():
    F, T, cons, free = _problem(4, rows=3)
    G, C, tt = F.T @ F, T @ F, np.einsum("ij,ij->i", T, T)
    kw = dict(lam=0.1, penalty="l1", weight=0.2, kappa=0.3, constrained=cons, free=free, tol=1e-9,
              max_iter=100_000)
    cold = penalized_rows(G, C, tt, **kw)
    warm = penalized_rows(G, C, tt, W0=cold.W, **kw)
    assert np.all(warm.iterations <= 1)
    np.testing.assert_allclose(warm.objective, cold.objective, rtol=1e-9)
    wild = penalized_rows(G, C, tt, W0=np.full_like(cold.W, 50.0), **kw)  # infeasible start: projected
    np.testing.assert_allclose(wild.objective, cold.objective, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(v=st.lists(st.floats(-5, 5), min_size=1, max_size=8), weight=st.floats(0.01, 3.0),
       sig=st.floats(0.05, 3.0), step=st.floats(0.01, 2.0))
def test_prox_huber_is_the_minimiser(v, weight, sig, step):
    """prox of step * alpha * rh(sigma x) against a fine grid search of the scalar problem."""
    V = np.array(v)
    out = _prox_huber(V, weight, np.full(V.size, sig), step)
    grid = np.linspace(-6, 6, 240_001)
    rh = np.where(np.abs(sig * grid) <= 1, 2 * np.abs(sig * grid), (sig * grid) ** 2 + 1)
    for x, vi in zip(out, V, strict=True):
        f = 0.5 * (grid - vi) ** 2 + step * weight * rh
        sx = abs(sig * x)
        fx = 0.5 * (x - vi) ** 2 + step * weight * (2 * sx if sx <= 1 else sx * sx + 1)
        assert fx <= f.min() + 1e-8


def test_perspective_closed_form_is_the_socp_minimum():
    """min_{t in [0,1]} (w^2 / t + t) is the reverse Huber function (eq. 4 -> penalty_value)."""
    w = np.linspace(-3, 3, 61)
    t = np.linspace(1e-6, 1, 200_001)
    brute = np.array([np.min(x * x / t + t) for x in w])
    np.testing.assert_allclose(penalty_value(w[None, :], "perspective", 1.0)[0], brute.sum(), rtol=1e-6)
    for x, b in zip(w, brute, strict=True):
        assert penalty_value(np.array([[x]]), "perspective", 1.0)[0] == pytest.approx(b, abs=1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 12), kap=st.floats(0.05, 3.0))
def test_weighted_ball_projection_is_exact(seed, k, kap):
    rng = np.random.default_rng(seed)
    V = rng.normal(size=(2, k)) * 2
    c = rng.uniform(0.1, 3.0, size=k)
    P = _project_ball(V, c, np.full(2, kap))
    for i in range(2):
        x = cp.Variable(k)
        prob = cp.Problem(cp.Minimize(cp.sum_squares(x - V[i])), [cp.abs(x) @ c <= kap])
        prob.solve(solver="CLARABEL")
        assert np.abs(P[i]) @ c <= kap * (1 + 1e-9) + 1e-12
        assert np.sum((P[i] - V[i]) ** 2) <= prob.value + 1e-6


def test_exact_row_is_basis_pursuit():
    rng = np.random.default_rng(5)
    m, d = 12, 20  # underdetermined: many exact solutions, the LP picks the least l1 norm
    F = rng.normal(size=(m, d))
    w_true = np.zeros(d)
    w_true[[1, 7, 12]] = [0.3, -0.2, 0.4]
    t = F @ w_true
    fac = factor(F)
    Y, out = fac.project(t[None, :])
    assert out[0] <= 1e-10 * np.linalg.norm(t)
    cons = np.zeros(d, bool)
    cons[:10] = True
    sol = exact_row(fac.R, Y[0], kappa=0.9, constrained=cons, penalized=np.ones(d, bool))
    assert sol.status == "optimal"
    np.testing.assert_allclose(F @ sol.w, t, atol=1e-8)
    w = cp.Variable(d)
    prob = cp.Problem(cp.Minimize(cp.norm1(w)), [F @ w == t, cp.norm1(w[:10]) <= 0.9])
    prob.solve(solver="CLARABEL")
    assert np.sum(np.abs(sol.w)) == pytest.approx(prob.value, rel=1e-6)
    # infeasible budget: a coordinate the data needs cannot fit
    bad = exact_row(fac.R, Y[0], kappa=1e-3, constrained=np.isin(np.arange(d), [1, 7, 12]) | cons,
                    penalized=np.ones(d, bool))
    assert bad.status in ("infeasible", "optimal")
    if bad.status == "optimal":
        assert np.sum(np.abs(bad.w[np.isin(np.arange(d), [1, 7, 12]) | cons])) <= 1e-3 + 1e-9


def test_relaxed_row_factor_identity():
    """||t - F w||^2 = ||Q^T t - R w||^2 + ||t - Q Q^T t||^2 for the reduced factor."""
    F, T, _, _ = _problem(6)
    fac = factor(F)
    Y, out = fac.project(T)
    w = np.random.default_rng(0).normal(size=F.shape[1])
    for i, t in enumerate(T):
        reduced = np.sum((Y[i] - fac.R @ w) ** 2) + out[i] ** 2
        assert np.sum((t - F @ w) ** 2) == pytest.approx(reduced, rel=1e-10)
    sol = relaxed_row(fac.R, Y[0], float(out[0]), objective="l1", lam=0.1, weight=0.1, kappa=None,
                      constrained=np.zeros(F.shape[1], bool), penalized=np.ones(F.shape[1], bool))
    assert sol.status == "optimal" and sol.solver == "clarabel"


def test_bad_arguments():
    F, T, cons, free = _problem(7)
    G, C, tt = F.T @ F, T @ F, np.einsum("ij,ij->i", T, T)
    with pytest.raises(ConfigurationError, match="penalty"):
        penalized_rows(G, C, tt, lam=0.1, penalty="l0", weight=1.0, kappa=None, constrained=None)
    with pytest.raises(ConfigurationError, match="weight"):
        penalized_rows(G, C, tt, lam=0.1, penalty="l1", weight=0.0, kappa=None, constrained=None)
    with pytest.raises(ConfigurationError, match="both free and constrained"):
        penalized_rows(G, C, tt, lam=0.1, penalty="l1", weight=1.0, kappa=0.5, constrained=cons, free=cons)
    with pytest.raises(ConfigurationError, match="sigma_j"):
        penalized_rows(G, C, tt, lam=0.1, penalty="perspective", weight=1.0, kappa=0.5, constrained=cons,
                       sigma=np.full(F.shape[1], 5.0))


def test_weight_zero_is_the_constrained_lasso():
    """weight 0, lam 1/2, every non-free coordinate constrained: P(kappa) of thesis eq. 3.4."""
    F, T, _, free = _problem(8, col_scales=True)
    cons = ~free
    res = penalized_rows(F.T @ F, T @ F, np.einsum("ij,ij->i", T, T), lam=0.5, penalty="l1", weight=0.0,
                         kappa=0.4, constrained=cons, free=free, tol=1e-12, max_iter=300_000)
    for i, t in enumerate(T):
        w = cp.Variable(F.shape[1])
        prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(F @ w - t)), [cp.norm1(w[cons]) <= 0.4])
        prob.solve(solver="CLARABEL")
        ours = 0.5 * np.sum((t - F @ res.W[i]) ** 2)
        assert ours == pytest.approx(prob.value, rel=1e-6)
        assert np.sum(np.abs(res.W[i, cons])) <= 0.4 * (1 + 1e-12)
    with pytest.raises(ConfigurationError, match="weight = 0"):
        penalized_rows(F.T @ F, T @ F, np.einsum("ij,ij->i", T, T), lam=0.5, penalty="l1", weight=0.0,
                       kappa=None, constrained=None)


# ------------------------------------------------------------------ elastic net, torch, bad rows


def _enet_reference(F, t, lam, weight, ratio, kappa, cons, free, sigma=None):
    d = F.shape[1]
    w = cp.Variable(d)
    P = np.flatnonzero(~free)
    sg = np.ones(d) if sigma is None else sigma
    v = cp.multiply(sg[P], w[P])
    pen = weight * (ratio * cp.norm1(v) + 0.5 * (1 - ratio) * cp.sum_squares(v))
    cons_list = [] if kappa is None else [cp.norm1(w[np.flatnonzero(cons)]) <= kappa]
    prob = cp.Problem(cp.Minimize(pen + lam * cp.sum_squares(F @ w - t)), cons_list)
    prob.solve(solver="CLARABEL")
    assert prob.status == "optimal"
    return prob.value


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("kappa", [0.2, None])
@pytest.mark.parametrize("standardise", [False, True])
def test_elastic_net_matches_clarabel(ratio, kappa, standardise):
    F, T, cons, free = _problem(11, col_scales=standardise)
    sigma = np.sqrt(np.mean(F * F, axis=0)) if standardise else None
    res = penalized_rows(F.T @ F, T @ F, np.einsum("ij,ij->i", T, T), lam=0.1, penalty="elastic_net",
                         weight=0.4, l1_ratio=ratio, kappa=kappa, constrained=cons, free=free, sigma=sigma,
                         tol=1e-12, max_iter=200_000)
    assert set(res.status) == {"optimal"}
    for i, t in enumerate(T):
        ref = _enet_reference(F, t, 0.1, 0.4, ratio, kappa, cons, free, sigma)
        sg = None if sigma is None else sigma[~free]
        pen = penalty_value(res.W[i:i + 1, ~free], "elastic_net", 0.4, sg, l1_ratio=ratio)[0]
        ours = 0.1 * float(np.sum((t - F @ res.W[i]) ** 2)) + pen
        assert ours == pytest.approx(res.objective[i], rel=1e-9, abs=1e-9)
        assert ours == pytest.approx(ref, rel=1e-6, abs=1e-9)
        if kappa is not None:
            assert np.sum(np.abs(res.W[i, cons])) <= kappa * (1 + 1e-12)


def test_elastic_net_gap_bounds_suboptimality_when_stopped_early():
    F, T, cons, free = _problem(12, rows=4, col_scales=True)
    G, C, tt = F.T @ F, T @ F, np.einsum("ij,ij->i", T, T)
    kw = dict(lam=0.1, penalty="elastic_net", weight=0.3, l1_ratio=0.5, kappa=0.25, constrained=cons,
              free=free)
    exact = penalized_rows(G, C, tt, tol=1e-13, max_iter=300_000, **kw)
    for it in (1, 3, 10, 30, 100):
        early = penalized_rows(G, C, tt, tol=0.0, max_iter=it, **kw)
        assert np.all(early.objective - exact.objective <= early.gap + 1e-9)


def test_sim_elastic_net_fast_agrees_with_cvxpy():
    import torch

    from idlkit.sim import SIM, extract_states

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).double()
    st = extract_states(net, torch.randn(60, 5, dtype=torch.float64), dtype=torch.float64)
    kw = dict(objective="elastic_net", backend="serial", beta=0.02, l1_ratio=0.6, kappa=0.3, refit=False,
              sparse=False)
    fast, rf = SIM(tol=1e-10, **kw).fit_states(st)
    ref, rr = SIM(solver="cvxpy", prune_tol=0.0, **kw).fit_states(st)
    assert set(rr.solver) == {"clarabel"} and set(rf.solver) == {"fista"}
    np.testing.assert_allclose(fast.A.detach().numpy(), ref.A.detach().numpy(), atol=2e-4)
    np.testing.assert_allclose(fast.C.detach().numpy(), ref.C.detach().numpy(), atol=2e-4)


def test_torch_inputs_give_torch_outputs_equal_to_numpy():
    import torch

    F, T, cons, free = _problem(13, col_scales=True)
    G, C, tt = F.T @ F, T @ F, np.einsum("ij,ij->i", T, T)
    kw = dict(lam=0.1, penalty="l1", weight=0.2, kappa=0.3, constrained=cons, free=free, tol=1e-10,
              max_iter=100_000)
    a = penalized_rows(G, C, tt, **kw)
    b = penalized_rows(torch.from_numpy(G), torch.from_numpy(C), torch.from_numpy(tt), **kw)
    c = penalized_rows(G, C, tt, device="cpu", **kw)
    assert isinstance(b.W, torch.Tensor) and isinstance(c.W, np.ndarray)
    np.testing.assert_allclose(b.W.numpy(), a.W, atol=1e-12)
    np.testing.assert_allclose(c.W, a.W, atol=1e-12)


def test_cuda_matches_cpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    F, T, cons, free = _problem(14, rows=6)
    G, C, tt = F.T @ F, T @ F, np.einsum("ij,ij->i", T, T)
    kw = dict(lam=0.1, penalty="elastic_net", weight=0.2, kappa=0.3, constrained=cons, free=free, tol=1e-12,
              max_iter=100_000)
    cpu = penalized_rows(G, C, tt, **kw)
    gpu = penalized_rows(G, C, tt, device="cuda", **kw)  # numpy in, numpy out, iterations on the GPU
    assert isinstance(gpu.W, np.ndarray)
    np.testing.assert_allclose(gpu.objective, cpu.objective, rtol=1e-9)


def test_non_finite_rows_are_named():
    from idlkit.errors import NonFiniteError

    F, T, cons, free = _problem(15, rows=5)
    G, C, tt = F.T @ F, T @ F, np.einsum("ij,ij->i", T, T)
    C[3, 2] = np.inf
    with pytest.raises(NonFiniteError, match=r"rows \[3\]"):
        penalized_rows(G, C, tt, lam=0.1, penalty="l1", weight=0.1, kappa=None, constrained=None)
    with pytest.raises(ConfigurationError, match="l1_ratio"):
        penalized_rows(G, C[:3], tt[:3], lam=0.1, penalty="elastic_net", weight=0.1, l1_ratio=1.5, kappa=None,
                       constrained=None)
    with pytest.raises(ConfigurationError, match="kappa"):
        penalized_rows(G, C[:3], tt[:3], lam=0.1, penalty="l1", weight=0.1, kappa=-1.0, constrained=cons)
