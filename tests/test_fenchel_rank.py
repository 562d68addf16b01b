"""Rank sparsity in Fenchel BCD (paper 001 §6.3): ``rank=k`` (A = L R^T, alternating convex
factor steps) and ``nuclear=w`` (singular-value soft threshold), and the ``"nuclear"``
differentiable penalty.

References: cvxpy (Clarabel) for the convex factor sub-problems, numpy's SVD for the soft
threshold and the nuclear norm, numpy eigenvalues for the low-rank certificate, the
unconstrained fit for the rank-k fit's objective.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import idlkit
from idlkit import wellposed as wp
from idlkit.compress import singular_value_threshold
from idlkit.errors import ConfigurationError
from idlkit.train import PENALTIES, Trainer, fenchel_bcd
from idlkit.train import fenchel as fz

F64 = torch.float64


def _rank_teacher(n=8, p=3, q=2, k=2, m=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, k, generator=g, dtype=F64) @ torch.randn(k, n, generator=g, dtype=F64)
    A *= 0.5 / A.abs().sum(1).max()
    teacher = idlkit.ImplicitModel.from_matrices(
        A, torch.randn(n, p, generator=g, dtype=F64), torch.randn(q, n, generator=g, dtype=F64),
        torch.zeros(q, p, dtype=F64), wellposedness="inf", kappa=0.9)
    U = torch.randn(m, p, generator=g, dtype=F64)
    with torch.no_grad():
        Y = teacher(U)
    return U, Y


def _setup(k=2, seed=1, l1=0.0):
    """A rank-k problem (column convention) and a random interior point of it."""
    U, Y = _rank_teacher(seed=seed)
    torch.manual_seed(seed + 10)
    model = idlkit.ImplicitModel(3, 8, 2, "relu", kappa=0.9, dtype=F64)
    pb = fz._problem(model, U, Y, 1.0, 0.7, "squared_error", 0.8, False, None, l1, 0.0, 0.0, None, None)
    pb = fz._rank_settings(pb, k, 0.0)
    TAB, _ = fz._thetas(model)
    L, R = fz._init_factors(pb, TAB[:, :8], k)
    TAB = torch.cat([L @ R.t(), TAB[:, 8:]], dim=1)
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(8, U.shape[0], generator=g, dtype=F64)
    P = torch.rand(8, U.shape[0], generator=g, dtype=F64)
    return pb, TAB, L, R, X, P


def _div(pb, P, Z):
    return float(fz._divergence_cols(pb, P, Z).sum())


def _relu_div_cvx(lam, P, Z):
    return cp.sum(lam * (0.5 * cp.square(cp.pos(Z)) - cp.multiply(P, Z)))


def test_factor_steps_descend_and_solve_their_convex_problems():
    pb, TAB, L, R, X, P = _setup(l1=0.2)
    n, p, k = 8, 3, 2
    f0 = _div(pb, P, TAB @ pb.W(X)) + 0.2 * float(TAB[:, n:n + p].abs().sum())
    TAB1, L1 = fz._step_L(pb, TAB, L, R, X, P, 3000, 1e-13)
    f1 = _div(pb, P, TAB1 @ pb.W(X)) + 0.2 * float(TAB1[:, n:n + p].abs().sum())
    assert f1 <= f0 + 1e-12 * abs(f0)
    assert fz._row_l1(L1) * fz._col_l1(R) <= 0.8 * (1 + 1e-12)
    # the L step against cvxpy: rows of L in the l1 ball of radius 0.8 / ||R||_1, l1 on B
    W = pb.W(R.t() @ X).numpy()
    T = cp.Variable((n, k + p + 1))
    Z = T @ W
    obj = _relu_div_cvx(1.0, P.numpy(), Z) + 0.2 * cp.sum(cp.abs(T[:, k:k + p]))
    cons = [cp.sum(cp.abs(T[:, :k]), axis=1) <= 0.8 / fz._col_l1(R)]
    cp.Problem(cp.Minimize(obj), cons).solve(solver=cp.CLARABEL)
    ref = float(obj.value) + float((0.5 * P**2).sum())  # F's constant 1/2 P^2 part
    assert f1 <= ref + 1e-6 * (1 + abs(ref))
    # the R step: never up, and the optimum of its convex problem (columns of R in an l1 ball)
    TAB2, R2 = fz._step_R(pb, TAB1, L1, R, X, P, 3000, 1e-13)
    f2 = _div(pb, P, TAB2 @ pb.W(X)) + 0.2 * float(TAB2[:, n:n + p].abs().sum())
    assert f2 <= f1 + 1e-12 * abs(f1)
    assert fz._row_l1(L1) * fz._col_l1(R2) <= 0.8 * (1 + 1e-12)
    torch.testing.assert_close(TAB2[:, :n], L1 @ R2.t())
    Rv = cp.Variable((n, k))
    Z0 = (TAB1[:, n:n + p] @ pb.U + TAB1[:, n + p:]).numpy()
    Z = L1.numpy() @ Rv.T @ X.numpy() + Z0
    obj = _relu_div_cvx(1.0, P.numpy(), Z)
    cons = [cp.sum(cp.abs(Rv), axis=0) <= 0.8 / fz._row_l1(L1)]
    cp.Problem(cp.Minimize(obj), cons).solve(solver=cp.CLARABEL)
    ref = float(obj.value) + float((0.5 * P**2).sum()) + 0.2 * float(TAB1[:, n:n + p].abs().sum())
    assert f2 <= ref + 1e-6 * (1 + abs(ref))


def test_rank_k_fit_reaches_the_unconstrained_objective():
    U, Y = _rank_teacher(m=40)
    runs = {}
    for rank in (None, 2):
        torch.manual_seed(3)
        model = idlkit.ImplicitModel(3, 8, 2, "relu", wellposedness="inf", kappa=0.9, dtype=F64)
        res = fenchel_bcd(model, (U, Y), lam=1.0, mu=1.0, iterations=8, rank=rank, inner_iterations=100)
        runs[rank] = (model, res)
    model, res = runs[2]
    # every block, the two factor steps included, is a descent step
    vals = [res.objectives[0]] + [v for sw in res.sweeps for _, v in sw.blocks]
    assert max(np.diff(vals)) <= 1e-9 * vals[0]
    assert [b for b, _ in res.sweeps[0].blocks] == ["CD", "L", "R", "X", "P"]
    assert set(res.sweeps[-1].stationarity) == {"CD", "L", "R", "X", "P"}
    # rank <= k exactly (factors), the model holds their product
    assert res.L.shape == res.R.shape == (8, 2)
    torch.testing.assert_close(model.A.detach(), res.L @ res.R.t(), atol=1e-14, rtol=0)
    s = np.linalg.svd(model.A.detach().numpy(), compute_uv=False)
    assert (s > 1e-10 * s[0]).sum() <= 2
    # certificates: the dense inf set and the low-rank PF certificate (numpy eigenvalues)
    assert model.certificate().holds["inf"]
    La, Ra = np.abs(res.L.numpy()), np.abs(res.R.numpy())
    assert max(abs(np.linalg.eigvals(Ra.T @ La))) <= 0.9 + 1e-12
    assert fz._row_l1(res.L) * fz._col_l1(res.R) <= 0.9 * (1 + 1e-12)
    # the true A has rank 2: the rank-2 fit gets as low as the unconstrained one (stated tolerance:
    # 1e-3 of the starting objective; both fall by more than 99 %)
    full = runs[None][1]
    assert res.objectives[-1] <= full.objectives[-1] + 1e-3 * full.objectives[0]
    assert res.objectives[-1] < 0.01 * res.objectives[0]


def test_singular_value_threshold_matches_numpy():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(7, 5, generator=g, dtype=F64)
    U, S, Vt = np.linalg.svd(A.numpy(), full_matrices=False)
    for lam in (0.0, 0.5, float(S[2]) + 1e-9, 100.0):
        ref = (U * np.maximum(S - lam, 0)) @ Vt
        out = singular_value_threshold(A, lam)
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
        assert np.linalg.matrix_rank(out.numpy(), tol=1e-9) == int((S > lam).sum())


def test_nuclear_prox_in_the_bcd_block():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(4, 4, generator=g, dtype=F64) * 0.1
    pb, TAB, *_ = _setup()
    pb = fz.dataclasses.replace(pb, rank=None, nuclear=0.5, radius=10.0)
    T8 = torch.zeros(8, 8, dtype=F64)
    T8[:4, :4] = A
    TAB = torch.cat([T8, TAB[:, 8:]], dim=1)
    out = fz._prox_AB(pb, TAB, 0.1)[:, :8]
    U, S, Vt = np.linalg.svd(T8.numpy())
    np.testing.assert_allclose(out.numpy(), (U * np.maximum(S - 0.05, 0)) @ Vt, atol=1e-12)
    # outside the ball: rescaled onto it, the rank kept
    pb = fz.dataclasses.replace(pb, radius=0.01)
    out = fz._prox_AB(pb, TAB, 0.1)[:, :8]
    ref = (U * np.maximum(S - 0.05, 0)) @ Vt
    assert wp.inf_norm(out) <= 0.01 * (1 + 1e-12)
    np.testing.assert_allclose(out.numpy() * (np.abs(ref).sum(1).max() / 0.01), ref, atol=1e-12)


def test_nuclear_fit_descends_and_lowers_the_rank():
    U, Y = _rank_teacher(m=40)
    ranks = []
    for w in (1e-3, 3.0):
        torch.manual_seed(3)
        model = idlkit.ImplicitModel(3, 8, 2, "relu", wellposedness="inf", kappa=0.9, dtype=F64)
        res = fenchel_bcd(model, (U, Y), lam=1.0, mu=1.0, iterations=6, nuclear=w, inner_iterations=100)
        vals = [res.objectives[0]] + [v for sw in res.sweeps for _, v in sw.blocks]
        assert max(np.diff(vals)) <= 1e-9 * vals[0]
        assert model.certificate().holds["inf"]
        s = np.linalg.svd(model.A.detach().numpy(), compute_uv=False)
        ranks.append(int((s > 1e-10 * max(s[0], 1e-300)).sum()))
        # the reported objective carries w ||A||_* (numpy's nuclear norm)
        plain = fz.relaxed_objective(model, U, Y, res.X, res.P, lam=1.0, mu=1.0)
        nuc = np.linalg.norm(model.A.detach().numpy(), "nuc")
        assert abs(res.objectives[-1] - (plain + w * nuc)) <= 1e-8 * abs(res.objectives[-1])
    assert ranks[1] < ranks[0]


def test_nuclear_penalty_registry_and_trainer():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(5, 5, generator=g, dtype=F64, requires_grad=True)
    val = PENALTIES["nuclear"](A)
    assert abs(float(val) - np.linalg.norm(A.detach().numpy(), "nuc")) < 1e-12
    (gA,) = torch.autograd.grad(val, A)
    U, _, Vt = np.linalg.svd(A.detach().numpy())
    np.testing.assert_allclose(gA.numpy(), U @ Vt, atol=1e-10)  # d||A||_* = U V^T (full rank)
    torch.manual_seed(0)
    model = idlkit.ImplicitModel(3, 6, 2, dtype=F64)
    tr = Trainer(loss="squared_error", epochs=1, lr=1e-2, penalties=[("nuclear", 0.5)], dtype=F64)
    assert abs(float(tr._penalty(model)) - 0.5 * np.linalg.norm(model.A.detach().numpy(), "nuc")) < 1e-10
    U_, Y_ = _rank_teacher(n=6, m=20)
    res = tr.fit(model, (U_, Y_))
    assert np.isfinite(res.history[-1].train_loss)


@pytest.mark.parametrize("kw", [dict(rank=0), dict(rank=9), dict(rank="2"), dict(rank=2.5),
                                dict(nuclear=-1.0), dict(rank=2, nuclear=0.1),
                                dict(rank=2, triangular=True), dict(nuclear=0.1, triangular=True),
                                dict(rank=2, masks={"A": torch.ones(8, 8)}),
                                dict(rank=2, group=0.1)])
def test_bad_rank_settings(kw):
    U, Y = _rank_teacher(m=10)
    model = idlkit.ImplicitModel(3, 8, 2, "relu", kappa=0.9, dtype=F64)
    if "masks" in kw:
        kw["masks"] = {"A": torch.triu(torch.ones(8, 8))}
    with pytest.raises(ConfigurationError):
        fenchel_bcd(model, (U, Y), lam=1.0, mu=1.0, iterations=1, **kw)
