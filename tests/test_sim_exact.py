"""Batched basis pursuit for SIM's exact matching (paper 002 eqs. 6, 8-9): idlkit.sim.exact.

The reference is an independent LP written here on ``F`` itself (``w = w+ - w-``) and solved by
HiGHS through ``scipy.optimize.linprog``; basis-pursuit denoising is checked against cvxpy +
Clarabel. Certificates are tested by trying to break them: stopped early, on broken steps, and
against the reference optimum.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.optimize as so
import torch

import idlkit.sim.exact as bpm
from idlkit.errors import ConfigurationError, InfeasibleError, NonFiniteError, ShapeError
from idlkit.sim import SIM, extract_states
from idlkit.sim.cvx import factor
from idlkit.sim.exact import BasisPursuitResult, basis_pursuit, basis_pursuit_rows


def _lp(F, t, kappa, cons, free, sigma=None):
    """min sum_{j not free} sigma_j |w_j| s.t. F w = t, ||w_S||_1 <= kappa (HiGHS); None if infeasible."""
    m, d = F.shape
    sg = np.ones(d) if sigma is None else sigma
    wts = np.where(free, 0.0, sg)
    c = np.concatenate([wts, wts])
    A_eq = np.hstack([F, -F])
    A_ub = b_ub = None
    if kappa is not None and cons.any():
        A_ub = np.concatenate([cons, cons]).astype(float)[None, :]
        b_ub = [kappa]
    res = so.linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=t, bounds=(0, None), method="highs")
    if res.status == 2:
        return None
    assert res.status == 0, res.message
    return res.fun


def _problem(seed, m, d, rows, density=0.2, n_cons=8, degenerate=False, bias=False):
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(m, d))
    if degenerate:  # duplicate, proportional and zero columns: rank-deficient F
        F[:, 1] = F[:, 0]
        F[:, 3] = -2.0 * F[:, 2]
        F[:, 5] = 0.0
    if bias:
        F[:, -1] = 1.0
    Wt = rng.normal(size=(rows, d)) * (rng.random((rows, d)) < density)
    T = Wt @ F.T
    cons = np.zeros(d, bool)
    cons[:n_cons] = True
    free = np.zeros(d, bool)
    if bias:
        free[-1] = True
    return F, T, cons, free


CASES = [  # (m, d, rows, kappa, degenerate, bias)
    (20, 40, 5, None, False, False),  # underdetermined, no budget
    (20, 40, 5, 0.6, False, False),  # budget binds on most rows
    (25, 50, 4, 1.5, True, False),  # rank-deficient F
    (30, 45, 4, 0.8, True, True),  # rank-deficient, with a free bias column
    (60, 30, 4, 5.0, False, False),  # m > d: F w = t has one solution
    (60, 30, 4, None, True, True),  # m > d with a null space from duplicate columns
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("m,d,rows,kappa,degenerate,bias", CASES)
def test_matches_highs(seed, m, d, rows, kappa, degenerate, bias):
    F, T, cons, free = _problem(seed, m, d, rows, degenerate=degenerate, bias=bias)
    res = basis_pursuit(F, T, kappa=kappa, constrained=cons, free=free, tol=1e-9, fallback=False)
    assert isinstance(res, BasisPursuitResult)
    for i, t in enumerate(T):
        ref = _lp(F, t, kappa, cons, free)
        if ref is None:
            assert res.status[i] == "infeasible"
            continue
        assert res.status[i] == "optimal", (i, res.status, res.solver)
        w = res.W[i]
        assert np.linalg.norm(F @ w - t) <= 1e-6 * np.linalg.norm(t)
        assert res.feasibility[i] == pytest.approx(np.linalg.norm(F @ w - t) / np.linalg.norm(t), abs=1e-12)
        if kappa is not None:
            assert np.sum(np.abs(w[cons])) <= kappa * (1 + 1e-12)
        obj = np.sum(np.abs(w[~free]))
        assert res.objective[i] == pytest.approx(obj, rel=1e-12)
        assert obj == pytest.approx(ref, rel=1e-7, abs=1e-9)
        # the certificate: D <= p* <= objective, gap = objective - D small
        assert res.dual[i] <= ref * (1 + 1e-9) + 1e-12
        assert res.gap[i] <= 1e-9 * obj + 1e-12


def test_standardised_weights_match_highs():
    F, T, cons, free = _problem(3, 20, 40, 4)
    F *= 10.0 ** np.random.default_rng(0).uniform(-2, 1, size=F.shape[1])  # columns of mixed scale
    T = T * 3.0
    sigma = np.sqrt(np.mean(F * F, axis=0))
    res = basis_pursuit(F, T, kappa=2.0, constrained=cons, sigma=sigma, tol=1e-9, fallback=False)
    for i, t in enumerate(T):
        ref = _lp(F, t, 2.0, cons, free, sigma)
        assert res.status[i] == "optimal"
        assert np.sum(sigma * np.abs(res.W[i])) == pytest.approx(ref, rel=1e-7)


def test_infeasible_rows_are_reported_never_zero():
    rng = np.random.default_rng(4)
    F = rng.normal(size=(50, 20))  # full column rank: F w = t has at most one solution
    W = rng.normal(size=(4, 20)) * 0.3
    T = W @ F.T
    T[1] += 1e-3 * rng.normal(size=50)  # outside range(F)
    cons = np.zeros(20, bool)
    cons[:10] = True
    W[2, :10] *= 4.0
    T[2] = F @ W[2]
    kappa = float(np.sum(np.abs(W[2, :10]))) * 0.5  # row 2's only solution breaks the budget
    res = basis_pursuit(F, T, kappa=kappa, constrained=cons)
    assert res.status[1] == "infeasible" and res.solver[1] == "range"
    assert res.range_residual[1] > 1e-6
    assert res.status[2] == "infeasible" and res.solver[2] == "unique"
    for i in res.infeasible_rows:
        assert np.all(np.isnan(res.W[i]))  # never a silent zero
        assert _lp(F, T[i], kappa, cons, np.zeros(20, bool)) is None  # HiGHS agrees
    # with a null space the budget's infeasibility is left to HiGHS, which proves it
    F2, T2, cons2, free2 = _problem(5, 15, 30, 3, n_cons=30)
    res2 = basis_pursuit(F2, T2, kappa=1e-4, constrained=cons2, max_iter=200)
    assert set(res2.status) == {"infeasible"} and set(res2.solver) == {"highs"}
    assert all(_lp(F2, t, 1e-4, cons2, free2) is None for t in T2)


def test_zero_and_trivial_rows():
    F, T, cons, free = _problem(6, 20, 30, 3)
    T[1] = 0.0
    res = basis_pursuit(F, T, kappa=0.9, constrained=cons)
    assert res.status[1] == "optimal" and np.all(res.W[1] == 0.0) and res.feasibility[1] == 0.0


def test_certificates_hold_when_stopped_early():
    """Every dual value is a lower bound of p*, at every iteration budget (the dual point is
    feasible after scaling): a bound tested by trying to break it."""
    F, T, cons, free = _problem(7, 20, 40, 5)
    refs = [_lp(F, t, 0.7, cons, free) for t in T]
    for it in (1, 10, 30, 100):
        res = basis_pursuit(F, T, kappa=0.7, constrained=cons, max_iter=it, check_every=10 if it >= 10 else 1,
                            fallback=False)
        for i in range(len(T)):
            assert res.dual[i] <= refs[i] * (1 + 1e-9) + 1e-12
            if res.status[i] == "optimal":
                assert res.objective[i] <= refs[i] * (1 + 1e-6)


def test_broken_steps_are_caught_by_the_certificate(monkeypatch):
    """Break the prox (no budget projection) and the polish (a feasible but worse vertex): no row
    is then reported optimal with a broken budget or a worse objective."""
    F, T, cons, free = _problem(8, 20, 40, 5)
    refs = [_lp(F, t, 0.6, cons, free) for t in T]
    monkeypatch.setattr(bpm, "_ball_threshold", lambda A, c, e, kap: torch.zeros_like(kap))
    res = basis_pursuit(F, T, kappa=0.6, constrained=cons, max_iter=300, fallback=False)
    for i in range(len(T)):
        if res.status[i] == "optimal":
            assert np.sum(np.abs(res.W[i, cons])) <= 0.6 * (1 + 1e-12)
            assert res.objective[i] == pytest.approx(refs[i], rel=1e-6)
    monkeypatch.undo()
    real = bpm._polish

    def worse(red, x0, b, z, consL, cw, kap):
        out = real(red, x0, b, z, consL, cw, kap)
        if out is None:
            return None
        x, g = out
        return x + 0.05 * red.N[:, 0] * float(x.abs().max()), g  # still on the affine set, not optimal

    monkeypatch.setattr(bpm, "_polish", worse)
    res = basis_pursuit(F, T, kappa=None, constrained=None, max_iter=400, fallback=False)
    for i in range(len(T)):
        if res.status[i] == "optimal":
            assert res.objective[i] <= _lp(F, T[i], None, cons, free) * (1 + 1e-6)


def test_highs_fallback_rows():
    F, T, cons, free = _problem(9, 20, 40, 4)
    fast = basis_pursuit(F, T, kappa=0.8, constrained=cons, tol=1e-9)
    slow = basis_pursuit(F, T, kappa=0.8, constrained=cons, max_iter=1, check_every=1)
    assert "fallback" in slow.status and set(slow.status) <= {"optimal", "fallback"}
    assert {slow.solver[i] for i, s in enumerate(slow.status) if s == "fallback"} == {"highs"}
    assert np.all(np.isnan(slow.dual[[s == "fallback" for s in slow.status]]))
    np.testing.assert_allclose(slow.objective, fast.objective, rtol=1e-6)


@pytest.mark.parametrize("kappa", [None, 0.7])
def test_bpdn_matches_clarabel(kappa):
    cp = pytest.importorskip("cvxpy")
    F, T, cons, free = _problem(10, 25, 40, 4)
    T = T + 0.01 * np.random.default_rng(1).normal(size=T.shape)
    eps = 0.05
    res = basis_pursuit(F, T, kappa=kappa, constrained=cons, eps=eps, tol=1e-6, max_iter=20_000)
    for i, t in enumerate(T):
        w = cp.Variable(F.shape[1])
        cons_list = [cp.norm(F @ w - t) <= eps * np.linalg.norm(t)]
        if kappa is not None:
            cons_list.append(cp.norm1(w[cons]) <= kappa)
        prob = cp.Problem(cp.Minimize(cp.norm1(w)), cons_list)
        prob.solve(solver="CLARABEL")
        assert res.status[i] in ("optimal", "fallback")
        assert res.feasibility[i] <= eps + 1e-6
        assert res.objective[i] == pytest.approx(prob.value, rel=1e-4)
        if res.status[i] == "optimal":
            assert res.dual[i] <= prob.value * (1 + 1e-6)


@pytest.mark.parametrize("kappa", [None, 4.0])
def test_bpdn_polish_is_exactly_sparse_and_optimal(kappa):
    """m > d with correlated columns (the SIM setting): the support polish of BPDN returns points
    on the matching boundary with exactly the reference's support, certified by the dual bound;
    with kappa = 4 the budget binds on some rows and makes one infeasible (reported, never zero)."""
    cp = pytest.importorskip("cvxpy")
    rng = np.random.default_rng(3)
    base = rng.normal(size=(120, 12))
    F = np.hstack([base, base @ rng.normal(size=(12, 18)) * 0.3 + 0.05 * rng.normal(size=(120, 18))])
    Wt = rng.normal(size=(5, 30)) * (rng.random((5, 30)) < 0.3)
    T = Wt @ F.T + 0.01 * rng.normal(size=(5, 120))
    cons = np.zeros(30, bool)
    cons[12:] = True
    eps = 0.02
    res = basis_pursuit(F, T, kappa=kappa, constrained=cons, eps=eps, tol=1e-8, max_iter=2_000)
    binding = 0
    for i, t in enumerate(T):
        w = cp.Variable(30)
        cl = [cp.norm(F @ w - t) <= eps * np.linalg.norm(t)]
        if kappa is not None:
            cl.append(cp.norm1(w[cons]) <= kappa)
        prob = cp.Problem(cp.Minimize(cp.norm1(w)), cl)
        prob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        if prob.status == "infeasible":
            assert res.status[i] == "infeasible" and np.all(np.isnan(res.W[i]))
            continue
        assert res.status[i] == "optimal" and res.solver[i] == "admm-polish"
        assert res.objective[i] == pytest.approx(prob.value, rel=1e-6)
        assert res.dual[i] <= prob.value * (1 + 1e-7)
        assert res.feasibility[i] == pytest.approx(eps, rel=1e-6)  # the matching constraint is tight
        ref = np.abs(w.value) > 1e-6 * np.abs(w.value).max()
        np.testing.assert_array_equal(res.W[i] != 0, ref)
        if kappa is not None:
            assert res.l1[i] <= kappa * (1 + 1e-12)
            binding += res.l1[i] >= kappa * (1 - 1e-9)
    if kappa is not None:
        assert binding >= 1 and "infeasible" in res.status


def test_torch_tensors_in_torch_out_and_equal_to_numpy():
    F, T, cons, free = _problem(11, 20, 40, 4)
    fac = factor(F)
    Y, resid = fac.project(T)
    tn = np.linalg.norm(T, axis=1)
    a = basis_pursuit_rows(fac.R, Y, resid, tn, kappa=0.8, constrained=cons, fallback=False)
    b = basis_pursuit_rows(*(torch.from_numpy(x) for x in (fac.R, Y, resid, tn)), kappa=0.8,
                           constrained=cons, fallback=False, device="cpu")
    assert isinstance(a.W, np.ndarray) and isinstance(b.W, torch.Tensor)
    np.testing.assert_allclose(b.W.numpy(), a.W, atol=1e-12)
    assert a.status == b.status


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    F, T, cons, free = _problem(12, 30, 60, 6)
    cpu = basis_pursuit(F, T, kappa=0.8, constrained=cons, tol=1e-9, fallback=False)
    gpu = basis_pursuit(torch.from_numpy(F).cuda(), torch.from_numpy(T).cuda(), kappa=0.8, constrained=cons,
                        tol=1e-9, fallback=False)
    assert gpu.W.device.type == "cuda"
    np.testing.assert_allclose(gpu.objective.cpu().numpy(), cpu.objective, rtol=1e-7)
    assert gpu.status == cpu.status


def test_bad_input_is_typed():
    F, T, cons, free = _problem(13, 20, 30, 3)
    fac = factor(F)
    Y, resid = fac.project(T)
    tn = np.linalg.norm(T, axis=1)
    bad = Y.copy()
    bad[2, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"rows \[2\]"):
        basis_pursuit_rows(fac.R, bad, resid, tn, kappa=0.5, constrained=cons)
    with pytest.raises(ConfigurationError, match="kappa"):
        basis_pursuit_rows(fac.R, Y, resid, tn, kappa=0.0, constrained=cons)
    with pytest.raises(ConfigurationError, match="kappa"):
        basis_pursuit_rows(fac.R, Y, resid, tn, kappa=-1.0, constrained=cons)
    with pytest.raises(ShapeError):
        basis_pursuit_rows(fac.R, Y[:, :5], resid, tn, kappa=0.5, constrained=cons)
    with pytest.raises(ConfigurationError, match="free and constrained"):
        basis_pursuit_rows(fac.R, Y, resid, tn, kappa=0.5, constrained=cons, free=cons)
    with pytest.raises(ConfigurationError, match="mask"):
        basis_pursuit_rows(fac.R, Y, resid, tn, kappa=0.5, constrained=np.ones(30))
    with pytest.raises(ConfigurationError, match="eps"):
        basis_pursuit_rows(fac.R, Y, resid, tn, kappa=0.5, constrained=cons, eps=-0.1)


# ------------------------------------------------------------------------------------ SIM level


def _net():
    torch.manual_seed(0)
    lin = lambda a, b: torch.nn.Linear(a, b, bias=False)  # noqa: E731
    return torch.nn.Sequential(lin(6, 8), torch.nn.ReLU(), lin(8, 5), torch.nn.ReLU(), lin(5, 3)).double()


def test_sim_exact_is_basis_pursuit_row_by_row():
    net = _net()
    U = torch.randn(15, 6, dtype=torch.float64)  # fewer samples than unknowns: BP chooses
    st = extract_states(net, U, dtype=torch.float64)
    model, rep = SIM(objective="exact", backend="serial", prune_tol=0.0, tol=1e-9).fit_states(st)
    assert set(rep.status) <= {"optimal"}
    F = np.hstack([st.X.numpy(), st.U.numpy()])
    A = model.A.to_dense() if model.A.layout != torch.strided else model.A
    B = model.B.to_dense() if model.B.layout != torch.strided else model.B
    W = np.hstack([A.detach().numpy(), B.detach().numpy()])
    cons = np.zeros(F.shape[1], bool)
    cons[: st.n] = True
    for i in range(st.n):
        t = st.Z.numpy()[:, i]
        ref = _lp(F, t, 0.99, cons, np.zeros(F.shape[1], bool))
        assert np.sum(np.abs(W[i])) == pytest.approx(ref, rel=1e-6)
        assert np.linalg.norm(F @ W[i] - t) <= 1e-6 * np.linalg.norm(t)


def test_sim_exact_infeasible_rows_are_named():
    net = _net()
    U = torch.randn(60, 6, dtype=torch.float64)  # more samples than unknowns
    st = extract_states(net, U, dtype=torch.float64)
    noisy = st.Z.clone()
    noisy[:, [1, 4]] += 1e-3 * torch.randn(60, 2, dtype=torch.float64)
    with pytest.raises(InfeasibleError, match=r"2 of 13 rows \[1, 4\].*match_eps"):
        SIM(objective="exact", backend="serial").fit_states(dataclasses.replace(st, Z=noisy))
    # relaxed matching: the same rows are fitted to the tolerance asked for
    relaxed = SIM(objective="exact", backend="serial", match_eps=0.05)
    model, rep = relaxed.fit_states(dataclasses.replace(st, Z=noisy))
    assert set(rep.status) <= {"optimal", "fallback"}
    assert np.all(rep.residual[: st.n] <= 0.05 + 1e-6)


def test_sim_exact_bad_settings():
    with pytest.raises(ConfigurationError, match="match_eps"):
        SIM(objective="exact", match_eps=-1.0)
    with pytest.raises(ConfigurationError, match="kappa"):
        SIM(objective="exact", kappa=1.5)
