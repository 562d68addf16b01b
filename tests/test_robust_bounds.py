"""Trying to break the certified bounds of idlkit.robust (paper 000 §4.1-4.4, Thm 4.1-4.4, 5.1).

Random well-posed models (dense and sparse; ReLU, tanh, leaky ReLU, sigmoid, identity,
BlockMax, SoftMax) and admissible perturbations (random, vertices, sign(Jacobian)-aligned,
k-sparse, projected-gradient ascent on |x - x0|): every bound must hold; violations are
counted and must be 0. Equilibria are solved in float64 to 1e-13, so the comparison
tolerance is 1e-9 (relative to the scale of the quantities).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import idlkit as idl
import idlkit.robust as R
from idlkit.activations import BlockMax, SoftMax
from idlkit.errors import ConfigurationError, InputError, NonFiniteError, ShapeError, WellPosednessError
from idlkit.robust import _linalg
from idlkit.train import penalties as P
from idlkit.wellposed import blip_norm_matrix, pf_eigenvalue

torch.set_num_threads(1)
TOL = 1e-9
COMP = ["relu", "tanh", "leaky_relu", "sigmoid", "identity"]


def _act(name: str, bs: int = 3):
    if name == "blockmax":
        return BlockMax(bs)
    if name == "softmax":
        return SoftMax(bs)
    if name == "leaky_relu":
        return idl.activations.LeakyReLU(0.1)
    return idl.get_activation(name)


def make_model(seed: int, act: str = "relu", n: int = 12, p: int = 7, q: int = 4, sparse: bool = False,
               nonneg: bool = False, kappa: float | None = None) -> idl.ImplicitModel:
    """Random float64 model with ``gamma_inf ||A||_inf <= kappa`` and ``lambda_pf(Gamma N(A)) <= kappa``."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    kappa = float(rng.uniform(0.3, 0.95)) if kappa is None else kappa
    a = _act(act)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    B = torch.randn(n, p, generator=g, dtype=torch.float64)
    C = torch.randn(q, n, generator=g, dtype=torch.float64)
    D = torch.randn(q, p, generator=g, dtype=torch.float64) * 0.3
    if nonneg:
        A, B, C, D = A.abs(), B.abs(), C.abs(), D.abs()
    if sparse:
        A = A * (torch.rand(n, n, generator=g, dtype=torch.float64) < 0.3)
        B = B * (torch.rand(n, p, generator=g, dtype=torch.float64) < 0.5)
    bs = a.blocks(n)
    pf = pf_eigenvalue(blip_norm_matrix(A, bs.sizes, bs.norms, bs.gammas))
    nrm = a.lipschitz_inf * float(A.abs().sum(1).max())
    A = A * (kappa / max(pf, nrm, 1e-12))
    b = torch.randn(n, generator=g, dtype=torch.float64) * 0.5
    if sparse:
        A, B = A.to_sparse_csr(), B.to_sparse_csr()
    return idl.ImplicitModel.from_matrices(A, B, C, D, b, torch.zeros(q, dtype=torch.float64), activation=a,
                                           wellposedness=None, solver="picard", tol=1e-13, max_iter=20000,
                                           backward_solver="picard")


def eq(model, U):
    with torch.no_grad():
        return model.equilibrium(U), model(U)


def jac(model, u):
    """Jacobians of x and y with respect to u at a single input (float64, autograd)."""
    Jx = torch.autograd.functional.jacobian(lambda v: model.equilibrium(v[None])[0], u)
    Jy = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], u)
    return Jx, Jy


def perturbations(model, u0, sigma, k, rng, n_random=24):
    """Admissible perturbations of ``u0``: random, vertices, sign(J)-aligned (per state and output row),
    k-sparse versions (largest |J_i| sigma); for ``k`` every perturbation is made k-sparse."""
    p = u0.shape[0]
    s = torch.from_numpy(sigma)
    out = [s * torch.from_numpy(rng.uniform(-1, 1, p)) for _ in range(n_random)]
    out += [s * torch.from_numpy(rng.choice([-1.0, 1.0], p)) for _ in range(n_random)]
    Jx, Jy = jac(model, u0)
    rows = torch.cat([Jx, Jy], 0)
    for r in rows:
        for sgn in (1.0, -1.0):
            out.append(sgn * s * torch.sign(r))
    if k is not None:
        sparse = []
        for dlt in out:
            idx = torch.argsort((dlt.abs()), descending=True)[:k]
            m = torch.zeros(p, dtype=torch.bool)
            m[idx] = True
            sparse.append(torch.where(m, dlt, torch.zeros_like(dlt)))
        for r in rows:
            idx = torch.argsort(r.abs() * s, descending=True)[:k]
            dlt = torch.zeros(p, dtype=torch.float64)
            dlt[idx] = s[idx] * torch.sign(r[idx])
            sparse += [dlt, -dlt]
        out = sparse
    return torch.stack(out)


def pgd(model, u0, sigma, x0, steps=12):
    """Projected-gradient ascent on sum |x - x0| (box set) from a random start."""
    s = torch.from_numpy(sigma)
    d = (torch.rand_like(u0) * 2 - 1) * s
    for _ in range(steps):
        d = d.detach().requires_grad_(True)
        x = model.equilibrium((u0 + d)[None])[0]
        obj = (x - x0).abs().sum()
        (gd,) = torch.autograd.grad(obj, d)
        d = torch.clamp(d + 0.5 * s * torch.sign(gd), -s, s)
    return d.detach()


CASES = ([(a, False, False) for a in COMP] + [(a, True, False) for a in ("relu", "tanh")]
         + [(a, False, True) for a in ("relu", "identity")] + [("blockmax", False, False),
                                                                 ("softmax", False, False),
                                                                 ("blockmax", True, False)])


@pytest.mark.parametrize("act,sparse,nonneg", CASES)
def test_state_and_output_bounds_hold(act, sparse, nonneg):
    viol = {"box_x": 0, "box_y": 0, "card_x": 0, "card_y": 0, "linf": 0, "lip": 0, "block": 0, "jac": 0}
    checked = 0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        model = make_model(seed * 7 + 1, act, sparse=sparse, nonneg=nonneg)
        p = model.in_features
        sigma = rng.uniform(0.0, 0.3, p) * (rng.uniform(size=p) < 0.8)
        k = int(rng.integers(1, p))
        u0 = torch.from_numpy(rng.normal(size=p))
        x0, y0 = eq(model, u0[None])
        sb = R.state_bound(model, sigma)
        sy = R.output_box_bound(model, sigma)
        sxk, syk = R.state_box_bound(model, sigma, k=k), R.output_box_bound(model, sigma, k=k)
        S = R.sensitivity_matrix(model)
        lips = R.lipschitz_bounds(model)
        linf = R.state_linf_bound(model, sigma)
        assert torch.all(sxk <= sb.sigma_x + 1e-12) and torch.all(syk <= sy + 1e-12)  # card is tighter
        for kk in (None, k):
            D = perturbations(model, u0, sigma, kk, rng)
            if kk is None:
                D = torch.cat([D, pgd(model, u0, sigma, x0[0])[None]])
            X, Y = eq(model, u0[None] + D)
            dx, dy = (X - x0).abs(), (Y - y0).abs()
            checked += D.shape[0]
            tx = TOL * (1 + x0.abs().max())
            ty = TOL * (1 + y0.abs().max())
            if kk is None:
                viol["box_x"] += int((dx > sb.sigma_x + tx).any(1).sum())
                viol["box_y"] += int((dy > sy + ty).any(1).sum())
                viol["linf"] += int((dx.amax(1) > linf + tx).sum())
                viol["lip"] += int((dy.amax(1) > lips.best * D.abs().amax(1) + ty).sum())
                viol["jac"] += int((dy > D.abs() @ S.T + ty).any(1).sum())
                if not model.activation.componentwise:
                    bsz = model.activation.blocks(model.hidden)
                    nrm = bsz.norms[0]
                    blk = (X - x0).reshape(X.shape[0], -1, bsz.sizes[0]).norm(p=nrm, dim=2)
                    viol["block"] += int((blk > sb.eta + tx).any(1).sum())
            else:
                viol["card_x"] += int((dx > sxk + tx).any(1).sum())
                viol["card_y"] += int((dy > syk + ty).any(1).sum())
        # Jacobian at sampled points: |dy/du| <= S entrywise (Thm 4.3 in the limit)
        if act not in ("relu", "blockmax"):  # (kinks: the Jacobian is one-sided there)
            for _ in range(2):
                u = u0 + torch.from_numpy(rng.uniform(-1, 1, p)) * torch.from_numpy(sigma)
                _, Jy = jac(model, u)
                viol["jac"] += int((Jy.abs() > S + 1e-9 * (1 + S)).sum())
    print(f"\n{act} sparse={sparse} nonneg={nonneg}: {checked} perturbations, violations {viol}")
    assert sum(viol.values()) == 0, viol


@pytest.mark.parametrize("act", COMP + ["blockmax", "softmax"])
@pytest.mark.parametrize("sparse", [False, True])
def test_sensitivity_equals_dense_formula(act, sparse):
    for seed in range(3):
        model = make_model(100 + seed, act, n=15, p=9, q=11 if seed == 0 else 4, sparse=sparse)
        S = R.sensitivity_matrix(model)
        A, B, C, D = (getattr(model, k).to_dense() if getattr(model, k).layout != torch.strided
                      else getattr(model, k).detach() for k in "ABCD")
        a = model.activation
        if a.componentwise:
            g = a.lipschitz
            ref = C.abs() @ torch.linalg.solve(torch.eye(15, dtype=torch.float64) - g * A.abs(),
                                              g * B.abs()) + D.abs()
            if g == 1:
                assert torch.allclose(S, P.sensitivity_matrix(A, B, C, D).detach(), rtol=1e-10, atol=1e-12)
        else:
            bs = a.blocks(15)
            L, sz = len(bs.sizes), bs.sizes[0]
            NA = torch.from_numpy(blip_norm_matrix(A, bs.sizes, bs.norms, bs.gammas))
            pn = bs.norms[0]
            dual = {1.0: math.inf, math.inf: 1.0, 2.0: 2.0}[pn]
            NB = B.reshape(L, sz, -1).norm(p=pn, dim=1) * bs.gammas[0]
            NC = C.reshape(C.shape[0], L, sz).norm(p=dual, dim=2)
            ref = NC @ torch.linalg.solve(torch.eye(L, dtype=torch.float64) - NA, NB) + D.abs()
        assert torch.allclose(S, ref, rtol=1e-10, atol=1e-12)
        for method in ("iterate",):
            assert torch.allclose(R.sensitivity_matrix(model, method=method), S, rtol=1e-8, atol=1e-12)


def test_identity_nonneg_sensitivity_is_the_jacobian():
    """A linear model with A, B, C, D >= 0: y(u) - y(u0) = S (u - u0) exactly (the bound is tight)."""
    model = make_model(5, "identity", nonneg=True)
    u0 = torch.randn(7, dtype=torch.float64)
    # finite differences (exact up to rounding for a linear model) and the implicit gradient
    _, y0 = eq(model, u0[None])
    _, Yh = eq(model, u0[None] + torch.eye(7, dtype=torch.float64))
    S = R.sensitivity_matrix(model)
    assert torch.allclose((Yh - y0).T, S, rtol=1e-8, atol=1e-10)
    for per_sample in (False, True):  # the lean and the tracked adjoint solves
        model.set_solver(per_sample=per_sample, backward_tol=1e-12)
        J = torch.autograd.functional.jacobian(lambda u: model(u[None])[0], u0)
        assert torch.allclose(J, S, rtol=1e-8, atol=1e-10)
    s = np.full(7, 0.1)
    x0, _ = eq(model, u0[None])
    x1, _ = eq(model, u0[None] + 0.1)
    assert torch.allclose(x1 - x0, R.state_box_bound(model, s)[None], rtol=1e-9, atol=1e-12)


def test_mixed_precision_dense_path(monkeypatch):
    monkeypatch.setattr(_linalg, "_MIXED_MIN_N", 10)
    model = make_model(3, "relu", n=40, p=9, q=5, kappa=0.9)
    S_mixed = R.sensitivity(model)
    assert S_mixed.certificate.method == "dense-lu-mixed"
    monkeypatch.setattr(_linalg, "_MIXED_MIN_N", 10**9)
    S64 = R.sensitivity(model)
    assert S64.certificate.method == "dense-lu"
    assert torch.allclose(S_mixed.S, S64.S, rtol=1e-10)
    assert torch.all(S_mixed.S >= S64.S * (1 - 1e-12))


@given(n=st.integers(1, 9), seed=st.integers(0, 10_000), rho=st.floats(0.05, 0.999))
def test_solve_nonneg_is_certified_upper_bound(n, seed, rho):
    rng = np.random.default_rng(seed)
    M = rng.uniform(size=(n, n)) * (rng.uniform(size=(n, n)) < 0.6)
    lam = pf_eigenvalue(M)
    M = M * (rho / lam) if lam > 0 else M
    R_ = rng.uniform(size=(n, 3))
    exact = np.linalg.solve(np.eye(n) - M, R_)
    for method in ("solve", "iterate"):
        X, cert = _linalg.solve_nonneg(M, R_, method=method)
        assert np.all(X >= exact - 1e-13 * np.abs(exact).max())
        assert np.allclose(X, exact, rtol=1e-6)
        assert cert.pf_upper < 1
    Mt, _ = _linalg.solve_nonneg(M, R_, transpose=True)
    assert np.allclose(Mt, np.linalg.solve(np.eye(n) - M.T, R_), rtol=1e-8)


def test_model_error_bound_thm51():
    viol, checked = 0, 0
    for seed in range(8):
        act = COMP[seed % len(COMP)]
        model = make_model(200 + seed, act, kappa=0.7)
        rng = np.random.default_rng(seed)
        A0 = model.A.detach()
        eps = float(rng.uniform(0.001, 0.05))
        E = eps * torch.from_numpy(rng.uniform(size=A0.shape))
        U = torch.randn(6, 7, dtype=torch.float64)
        bound = R.model_error_bound(model, E, U)
        x0, _ = eq(model, U)
        for _t in range(8):
            sgn = torch.from_numpy(rng.choice([-1.0, 1.0], A0.shape) * rng.uniform(0.5, 1, A0.shape))
            m1 = make_model(200 + seed, act, kappa=0.7)
            with torch.no_grad():
                m1.A.copy_(A0 + E * sgn)
            x1, _ = eq(m1, U)
            viol += int(((x1 - x0).abs() > bound + TOL * (1 + x0.abs().max())).sum())
            checked += x1.numel()
            assert torch.allclose(R.perturbation_bound(model, m1.A), (E * sgn).abs())
    print(f"\nThm 5.1: {checked} state entries checked, violations {viol}")
    assert viol == 0


def _net(seed, act):
    torch.manual_seed(seed)
    A = torch.nn.ReLU if act == "relu" else torch.nn.Tanh
    return torch.nn.Sequential(torch.nn.Linear(6, 10), A(), torch.nn.Linear(10, 8), A(),
                               torch.nn.Linear(8, 3)).double()


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_ibp_contains_sampled_states_and_compare(act):
    viol, checked, tighter = 0, 0, []
    for seed in range(4):
        net = _net(seed, act)
        U0 = torch.randn(3, 6, dtype=torch.float64)
        model = idl.convert.from_torch(net, U0[:1])
        sigma = 0.1
        ib = R.interval_bounds(model, U0, sigma)
        bb = R.box_bounds(model, U0, sigma)
        rng = np.random.default_rng(seed)
        for i in range(3):
            D = torch.from_numpy(rng.uniform(-1, 1, (64, 6))) * sigma
            D[:32] = torch.sign(D[:32]) * sigma  # vertices
            U = U0[i] + D
            X, Y = eq(model, U)
            Yn = net(U).detach()
            viol += int(((X < ib.x_lower[i] - TOL) | (X > ib.x_upper[i] + TOL)).sum())
            viol += int(((Y < ib.y_lower[i] - TOL) | (Y > ib.y_upper[i] + TOL)).sum())
            viol += int(((Yn < ib.y_lower[i] - TOL) | (Yn > ib.y_upper[i] + TOL)).sum())
            viol += int(((Y < bb.y_lower[i] - TOL) | (Y > bb.y_upper[i] + TOL)).sum())
            checked += U.shape[0]
        c = R.compare_bounds(model, U0, sigma)
        tighter.append(c.box_tighter_fraction)
        print(f"\n{act} seed {seed}: mean output width IBP {c.ibp_output_width.mean():.4g}, "
              f"implicit box {c.box_output_width.mean():.4g}")
    print(f"{act}: {checked} samples, violations {viol}; box tighter on {np.mean(tighter):.0%} of inputs")
    assert viol == 0


def test_worst_case_losses_hold():
    viol = 0
    for seed in range(4):
        model = make_model(300 + seed, COMP[seed], q=4)
        rng = np.random.default_rng(seed)
        U0 = torch.randn(5, 7, dtype=torch.float64)
        labels = torch.from_numpy(rng.integers(0, 4, 5))
        Yt = torch.randn(5, 4, dtype=torch.float64)
        sigma = 0.2
        wc_ce = R.worst_case_loss(model, U0, labels, sigma, loss="cross_entropy")
        wc_se = R.worst_case_loss(model, U0, Yt, sigma, loss="squared_error")
        for i in range(5):
            D = torch.from_numpy(rng.choice([-1.0, 1.0], (40, 7))) * sigma
            _, Y = eq(model, U0[i] + D)
            ce = torch.nn.functional.cross_entropy(Y, labels[i].expand(40), reduction="none")
            se = ((Y - Yt[i]) ** 2).sum(1)
            viol += int((ce > wc_ce.bound[i] + 1e-9).sum()) + int((se > wc_se.bound[i] + 1e-9).sum())
        assert torch.all(wc_ce.nominal <= wc_ce.bound) and torch.all(wc_se.nominal <= wc_se.bound)
    assert viol == 0


def test_lipschitz_matches_penalties_and_orders():
    model = make_model(11, "relu", kappa=0.8)
    A, B, C, D = (getattr(model, k).detach() for k in "ABCD")
    assert math.isclose(R.lipschitz_bound(model, "inf"), float(P.lipschitz_bound(A, B, C, D)), rel_tol=1e-12)
    mu_ref = float(P.mu_lipschitz_bound(A, B, C, D))
    assert math.isclose(R.lipschitz_bound(model, "mu"), mu_ref, rel_tol=1e-12)
    lb = R.lipschitz_bounds(model)
    assert lb.sensitivity <= lb.inf * (1 + 1e-12)
    assert lb.best == min(lb.inf, lb.mu, lb.sensitivity)


def test_bad_inputs():
    model = make_model(1, "relu")
    with pytest.raises(InputError, match="sigma_u"):
        R.state_box_bound(model, -0.1)
    with pytest.raises(NonFiniteError):
        R.state_box_bound(model, np.array([np.nan] + [0.1] * 6))
    with pytest.raises(ShapeError):
        R.state_box_bound(model, np.ones(3))
    for k in (0, 8, 2.5, True):
        with pytest.raises(ConfigurationError, match="k"):
            R.state_box_bound(model, 0.1, k=k)
    bad = make_model(1, "relu")
    with torch.no_grad():
        bad.A.copy_(bad.A.abs() * 5)
    with pytest.raises(WellPosednessError, match="lambda_pf"):
        R.sensitivity_matrix(bad)
    with pytest.raises(WellPosednessError, match="lambda_pf"):
        R.state_box_bound(bad, 0.1, method="iterate")
    with pytest.raises(WellPosednessError, match="gamma"):
        R.state_linf_bound(bad, 0.1)
    with pytest.raises(WellPosednessError):
        R.lipschitz_bound(bad, "inf")
    bm = make_model(2, "blockmax")
    with pytest.raises(ConfigurationError, match="blip"):
        R.sensitivity_matrix(bm, form="cone")
    with pytest.raises(ConfigurationError, match="monotone"):
        R.lipschitz_bound(bm, "mu")
    with pytest.raises(ConfigurationError):
        R.model_error_bound(bm, 0.01, torch.zeros(1, 7, dtype=torch.float64))
    with pytest.raises(InputError):
        R.model_error_bound(model, -1.0, torch.zeros(1, 7, dtype=torch.float64))
    with pytest.raises(ConfigurationError, match="triangular"):
        R.interval_bounds(model, torch.zeros(1, 7, dtype=torch.float64), 0.1)
    with pytest.raises(ConfigurationError):
        R.interval_bounds(make_model(2, "softmax"), torch.zeros(1, 7, dtype=torch.float64), 0.1)
    with pytest.raises(ConfigurationError):
        R.sensitivity_matrix(model, method="magic")
    with pytest.raises(InputError):
        R.worst_case_loss(model, torch.zeros(2, 7, dtype=torch.float64), torch.tensor([0, 9]), 0.1,
                          loss="cross_entropy")


def test_worst_case_loss_takes_a_scalar_label_for_a_single_input():
    torch.manual_seed(0)
    m = idl.ImplicitModel(6, 8, 3, dtype=torch.float64, kappa=0.9)
    u0 = torch.randn(6, dtype=torch.float64)
    one = R.worst_case_loss(m, u0, torch.tensor(1), 0.1, loss="cross_entropy")
    batch = R.worst_case_loss(m, u0[None], torch.tensor([1]), 0.1, loss="cross_entropy")
    torch.testing.assert_close(one.bound, batch.bound)
    U = u0 + 0.1 * (2 * torch.rand(4000, 6, dtype=torch.float64) - 1)
    with torch.no_grad():
        sampled = torch.nn.functional.cross_entropy(m(U), torch.ones(4000, dtype=torch.long),
                                                    reduction="none")
    assert float(sampled.max()) <= float(one.bound)


def test_non_numeric_input_is_a_typed_error():
    import idlkit as idl
    from idlkit.errors import InputError

    m = idl.ImplicitModel(3, 4, 2)
    for bad in ("x", [["a", 1, 2]], object()):
        with pytest.raises(InputError, match="u0 must be numbers"):
            idl.robust.output_bounds(m, bad, 0.1)
