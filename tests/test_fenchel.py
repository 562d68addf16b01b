"""Fenchel divergences and block-coordinate descent (paper 001 §4): idlkit.train.fenchel."""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import pytest
import scipy.optimize as so
import torch

import idlkit
from idlkit import wellposed as wp
from idlkit.errors import ConfigurationError, InputError, NonFiniteError, ShapeError
from idlkit.train import fenchel as fz
from idlkit.train import fenchel_bcd, fenchel_divergence, group_lasso_prox

torch.set_num_threads(1)
F64 = torch.float64


def _phi(z, act):
    return torch.relu(z) if act == "relu" else torch.tanh(z)


def _domain_sample(act, shape, g):
    X = torch.rand(shape, generator=g, dtype=F64)
    return X * 3 if act == "relu" else X * 1.98 - 0.99


def _teacher(act, n=4, p=3, q=2, m=40, seed=0, bias=True):
    torch.manual_seed(seed)
    true = idlkit.ImplicitModel(p, n, q, act, bias=bias, kappa=0.5, dtype=F64)
    U = torch.randn(m, p, dtype=F64)
    with torch.no_grad():
        Y = true(U) + 0.05 * torch.randn(m, q, dtype=F64)
    return U, Y


def _setup(act, loss="squared_error", seed=1, **kw):
    """A problem and a random interior point of it (column convention)."""
    U, Y = _teacher(act, seed=seed)
    if loss == "cross_entropy":
        Y = Y.argmax(dim=1)
    torch.manual_seed(seed + 10)
    model = idlkit.ImplicitModel(3, 4, 2, act, kappa=0.9, dtype=F64)
    lam = kw.pop("lam", torch.tensor([0.5, 1.0, 2.0, 1.5]))
    pb = fz._problem(model, U, Y, lam, 0.7, loss, kw.pop("radius", 0.8), kw.pop("triangular", False),
                     None, kw.pop("l1", 0.0), kw.pop("group", 0.0), kw.pop("ridge", 0.0),
                     kw.pop("ball_B", None), kw.pop("ball_CD", None))
    TAB, TCD = fz._thetas(model)
    TAB = fz._prox_AB(pb, TAB, 0.0)
    g = torch.Generator().manual_seed(seed)
    X = _domain_sample(act, (4, U.shape[0]), g)
    P = _domain_sample(act, (4, U.shape[0]), g)
    return pb, TAB, TCD, X, P


# ----------------------------------------------------------------------------- divergences


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_divergence_nonnegative_and_zero_at_phi(act):
    g = torch.Generator().manual_seed(0)
    X = _domain_sample(act, (200, 7), g)
    Z = torch.randn(200, 7, generator=g, dtype=F64) * 3
    assert bool((fenchel_divergence(X, Z, act) >= -1e-12).all())
    assert float(fenchel_divergence(_phi(Z, act), Z, act).abs().max()) < 1e-12
    # strictly positive away from the graph of phi
    off = fenchel_divergence(_phi(Z, act) * 0.5 + (0.2 if act == "relu" else 0.0), Z, act)
    assert float(off.min()) > 0 or act == "tanh"


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_divergence_gradient_in_z_is_phi_minus_x(act):
    g = torch.Generator().manual_seed(1)
    X = _domain_sample(act, (30, 5), g)
    Z = (torch.randn(30, 5, generator=g, dtype=F64) * 2).requires_grad_(True)
    fenchel_divergence(X, Z, act, reduction="sum").backward()
    assert torch.allclose(Z.grad, _phi(Z.detach(), act) - X, atol=1e-12)
    # finite differences on one entry
    Zd, h = Z.detach().clone(), 1e-6
    Zp, Zm = Zd.clone(), Zd.clone()
    Zp[3, 2] += h
    Zm[3, 2] -= h
    fd = (fenchel_divergence(X, Zp, act, "sum") - fenchel_divergence(X, Zm, act, "sum")) / (2 * h)
    assert abs(float(fd) - float(Z.grad[3, 2])) < 1e-6


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_divergence_convex_in_each_argument(act):
    g = torch.Generator().manual_seed(2)
    X1, X2 = _domain_sample(act, (500,), g), _domain_sample(act, (500,), g)
    Z1, Z2 = torch.randn(500, generator=g, dtype=F64) * 3, torch.randn(500, generator=g, dtype=F64) * 3
    for t in (0.25, 0.5, 0.8):
        Xt, Zt = t * X1 + (1 - t) * X2, t * Z1 + (1 - t) * Z2
        lhs = fenchel_divergence(Xt, Z1, act)
        rhs = t * fenchel_divergence(X1, Z1, act) + (1 - t) * fenchel_divergence(X2, Z1, act)
        assert bool((lhs <= rhs + 1e-12).all())
        lhs = fenchel_divergence(X1, Zt, act)
        rhs = t * fenchel_divergence(X1, Z1, act) + (1 - t) * fenchel_divergence(X1, Z2, act)
        assert bool((lhs <= rhs + 1e-12).all())


def test_divergence_domain_and_tanh_form():
    Z = torch.tensor([0.3, -1.0])
    assert math.isinf(float(fenchel_divergence(torch.tensor([-0.1, 1.0]), Z, "relu")[0]))
    assert math.isinf(float(fenchel_divergence(torch.tensor([1.2, 0.0]), Z, "tanh")[0]))
    # g(x) = 1/2 [(1+x) log(1+x) + (1-x) log(1-x)] is the first part of eq. 8
    x = torch.linspace(-0.95, 0.95, 21, dtype=F64)
    eq8_g = 0.5 * (x * torch.log((1 + x) / (1 - x)) + torch.log(1 - x * x))
    assert torch.allclose(fz._g(x, "tanh"), eq8_g, atol=1e-14)
    # eq. 8 as printed (log cosh inside the 1/2) goes negative; the Fenchel-Young gap does not
    x, z = torch.tensor(0.9, dtype=F64), torch.tensor(20.0, dtype=F64)
    printed = eq8_g.new_tensor(float(fz._g(x, "tanh") + 0.5 * torch.log(torch.cosh(z)) - x * z))
    assert float(printed) < 0 <= float(fenchel_divergence(x, z, "tanh"))


def test_group_lasso_prox_matches_cvxpy():
    g = torch.Generator().manual_seed(3)
    N = torch.randn(5, 8, generator=g, dtype=F64)
    N[:, 2] *= 0.05
    t = 0.7
    V = cp.Variable((5, 8))
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(V - N.numpy()) + t * cp.sum(cp.norm(V, 2, axis=0)))
               ).solve(solver=cp.CLARABEL)
    ours = group_lasso_prox(N, t)
    assert np.allclose(ours.numpy(), V.value, atol=1e-6)
    assert float(ours[:, 2].abs().max()) == 0.0


# ----------------------------------------------------------------------------- block minimisers


def test_ab_step_matches_cvxpy_relu():
    pb, TAB, TCD, X, P = _setup("relu", l1=0.3)
    new = fz._step_AB(pb, TAB, X, P, 3000, 1e-13)
    W = pb.W(X).numpy()
    T = cp.Variable(TAB.shape)
    Z = T @ W
    lam = pb.lam.numpy()
    obj = cp.sum(cp.multiply(lam, 0.5 * cp.square(cp.pos(Z)) - cp.multiply(P.numpy(), Z)))
    obj = obj + 0.3 * cp.sum(cp.abs(T[:, 4:7]))
    cp.Problem(cp.Minimize(obj), [cp.sum(cp.abs(T[:, :4]), axis=1) <= 0.8]).solve(solver=cp.CLARABEL)
    f = lambda T_: float(fz._divergence_cols(pb, P, T_ @ pb.W(X)).sum()) + 0.3 * float(T_[:, 4:7].abs().sum())  # noqa: E731
    ref = torch.as_tensor(T.value)
    assert f(new) <= f(ref) + 1e-6 * (1 + abs(f(ref)))
    assert torch.allclose(new, ref, atol=1e-3)
    assert wp.inf_norm(new[:, :4]) <= 0.8 + 1e-12


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_ab_step_kkt_via_stationarity(act):
    pb, TAB, TCD, X, P = _setup(act)
    new = fz._step_AB(pb, TAB, X, P, 5000, 1e-14)
    g = fz._grad_AB(pb, new, pb.W(X), P)
    assert float(torch.linalg.norm(new - fz._prox_AB(pb, new - g, 1.0))) < 1e-6


def test_cd_step_least_squares_and_ridge():
    pb, TAB, TCD, X, P = _setup("relu", ridge=0.3)
    new = fz._step_CD(pb, TCD, P, 100, 1e-12)
    V = pb.V(P)
    G = (new @ V - pb.Y) @ V.t() + 0.3 * fz._ridge_mask(pb, new) * new
    assert float(G.abs().max()) < 1e-9


def test_cd_step_cross_entropy_matches_scipy():
    pb, TAB, TCD, X, P = _setup("relu", loss="cross_entropy", l1=0.0, ridge=0.1)
    new = fz._step_CD(pb, TCD, P, 5000, 1e-14)
    V = pb.V(P)

    def f(t):
        T = torch.as_tensor(t).reshape(TCD.shape)
        return float(fz._loss(pb, T @ V).sum()) + fz._penalty(pb, fz._zero_ab(pb), T)

    ref = so.minimize(f, TCD.numpy().ravel(), method="BFGS", options={"gtol": 1e-10})
    assert f(new.numpy().ravel()) <= ref.fun + 1e-7


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("solver", ["newton", "fixed_point"])
def test_x_step_is_minimiser(act, solver):
    pb, TAB, TCD, X, P = _setup(act)
    new = fz._step_X(pb, TAB, X, P, 200, 1e-14, solver)
    A, R = fz._x_parts(pb, TAB, P)

    def f(x):
        Xv = torch.as_tensor(x).reshape(X.shape)
        Z = A @ Xv + R
        return float((pb.lam * (fz._conj(Z, act) - P * Z)).sum() + 0.5 * pb.mu * ((Xv - P) ** 2).sum())

    ref = so.minimize(f, X.numpy().ravel(), method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-11,
                                                                        "maxiter": 5000})
    assert f(new.numpy().ravel()) <= ref.fun + 1e-8
    assert np.allclose(new.numpy().ravel(), ref.x, atol=1e-3)


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("loss", ["squared_error", "cross_entropy"])
def test_p_step_is_minimiser(act, loss):
    pb, TAB, TCD, X, P = _setup(act, loss=loss)
    new = fz._step_P(pb, TAB, TCD, X, P, 3000, 1e-14)
    Z = TAB @ pb.W(X)
    C, D, d = fz._split(TCD, pb.n, pb.p)

    def f(x):
        Pv = torch.as_tensor(x).reshape(P.shape)
        return float(fz._loss(pb, C @ Pv + D @ pb.U + d).sum()
                     + (pb.lam * (fz._g(Pv, act) - Pv * Z)).sum() + 0.5 * pb.mu * ((X - Pv) ** 2).sum())

    bounds = [(0, None)] * P.numel() if act == "relu" else [(-1 + 1e-9, 1 - 1e-9)] * P.numel()
    ref = so.minimize(f, P.numpy().ravel(), method="L-BFGS-B", bounds=bounds,
                      options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 10000})
    assert f(new.numpy().ravel()) <= ref.fun + 1e-7
    assert (bool((new >= 0).all()) if act == "relu" else float(new.abs().max()) < 1)


# ----------------------------------------------------------------------------- the driver


@pytest.mark.parametrize("act,loss,extra", [
    ("relu", "squared_error", {}),
    ("tanh", "squared_error", {"lam": [1e-3, 1e-3, 1e-6, 1e-6]}),
    ("relu", "cross_entropy", {"l1": 0.01}),
    ("relu", "squared_error", {"group": 0.5}),
    ("tanh", "squared_error", {"ball_B": 2.0, "ball_CD": 3.0, "ridge": 0.1}),
])
def test_objective_monotone_and_wellposed(act, loss, extra):
    U, Y = _teacher(act, seed=4)
    if loss == "cross_entropy":
        Y = Y.argmax(dim=1)
    torch.manual_seed(5)
    model = idlkit.ImplicitModel(3, 4, 2, act, kappa=0.9, dtype=F64)
    kw = {"lam": 1.0, "mu": 0.5, **extra}
    res = fenchel_bcd(model, (U, Y), kappa=0.6, iterations=4, loss=loss, **kw)
    vals = [res.objectives[0]] + [v for s in res.sweeps for _, v in s.blocks]
    for a, b in zip(vals, vals[1:], strict=False):
        assert b <= a + 1e-9 * (1 + abs(a))
    assert wp.inf_norm(model.A) <= 0.6 * (1 + 1e-12)
    model(U)  # the declared well-posedness holds
    if "ball_B" in extra:
        assert float(model.B.detach().abs().sum()) <= 2.0 + 1e-9
        assert float(model.C.detach().abs().sum() + model.D.detach().abs().sum()) <= 3.0 + 1e-9
    for s in res.sweeps:
        assert s.stationarity_total >= 0 and set(s.stationarity) >= {"X", "P"}


def test_triangular_masks_feedforward_structure():
    U, Y = _teacher("tanh", seed=6)
    model = idlkit.ImplicitModel(3, 4, 2, "tanh", bias=False, wellposedness="triangular",
                                 solver="triangular", dtype=F64)
    masks = {"D": torch.zeros(2, 3), "C": torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])}
    fenchel_bcd(model, (U, Y), lam=1e-2, mu=1.0, iterations=3, masks=masks)
    assert float(torch.tril(model.A.detach()).abs().max()) == 0.0
    assert float(model.D.detach().abs().max()) == 0.0 and float(model.C.detach()[:, 2:].abs().max()) == 0.0
    model(U)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_learns_teacher(act):
    U, Y = _teacher(act, n=5, p=4, q=2, m=150, seed=7)
    torch.manual_seed(8)
    model = idlkit.ImplicitModel(4, 5, 2, act, kappa=0.9, dtype=F64)
    with torch.no_grad():
        before = float(((model(U) - Y) ** 2).mean())
    res = fenchel_bcd(model, (U, Y), lam=1.0, mu=1.0, iterations=6)
    with torch.no_grad():
        after = float(((model(U) - Y) ** 2).mean())
    assert res.objectives[-1] < 0.5 * res.objectives[0]
    assert after < 0.5 * before
    assert res.X.shape == (150, 5) and res.P.shape == (150, 5)


def test_stops_on_tolerance_and_relaxed_objective():
    U, Y = _teacher("relu", seed=9)
    model = idlkit.ImplicitModel(3, 4, 2, "relu", kappa=0.9, dtype=F64)
    res = fenchel_bcd(model, (U, Y), lam=1.0, mu=1.0, iterations=20, tol=1e9)
    assert res.converged and len(res.sweeps) == 1
    val = fz.relaxed_objective(model, U, Y, res.X, res.P, lam=1.0, mu=1.0)
    assert math.isclose(val, res.objectives[-1], rel_tol=1e-9)
    # an equilibrium state has zero divergence: the relaxed objective is the loss
    X = model.equilibrium(U).detach()
    with torch.no_grad():
        loss = 0.5 * float(((model(U) - Y) ** 2).sum())
    assert math.isclose(fz.relaxed_objective(model, U, Y, X, X, lam=1.0, mu=1.0), loss, rel_tol=1e-6)


# ----------------------------------------------------------------------------- errors


def _model(act="relu"):
    return idlkit.ImplicitModel(3, 4, 2, act, kappa=0.9, dtype=F64)


@pytest.mark.parametrize("kw,match", [
    ({"lam": 0.0}, "lam"), ({"lam": -1.0}, "lam"), ({"mu": 0.0}, "mu"), ({"kappa": 1.0}, "kappa"),
    ({"kappa": 0.95}, "declared kappa"), ({"loss": "hinge"}, "hinge"),
    ({"lam": [1.0, 0.0, 1.0, 1.0]}, "lam"), ({"order": ["AB", "X"]}, "order"),
    ({"group": 1.0, "l1": 1.0}, "group"), ({"iterations": -1}, "iterations"),
])
def test_configuration_errors(kw, match):
    U, Y = _teacher("relu")
    args = {"lam": 1.0, "mu": 1.0, **kw}
    with pytest.raises(ConfigurationError, match=match):
        fenchel_bcd(_model(), (U, Y), **args)


def test_unsupported_activation_lists_supported():
    U, Y = _teacher("relu")
    with pytest.raises(ConfigurationError, match=r"(?i)sigmoid.*\['relu', 'tanh'\]"):
        fenchel_bcd(_model("sigmoid"), (U, Y), lam=1.0, mu=1.0)
    with pytest.raises(ConfigurationError, match="supported"):
        fenchel_divergence(torch.zeros(2), torch.zeros(2), "softmax")


def test_bad_inputs():
    U, Y = _teacher("relu")
    Un = U.clone()
    Un[0, 0] = math.nan
    with pytest.raises(NonFiniteError):
        fenchel_bcd(_model(), (Un, Y), lam=1.0, mu=1.0)
    with pytest.raises(ShapeError, match=r"\(m, 3\)"):
        fenchel_bcd(_model(), (U[:, :2], Y), lam=1.0, mu=1.0)
    with pytest.raises(ShapeError, match=r"\(40, 2\)"):
        fenchel_bcd(_model(), (U, Y[:, :1]), lam=1.0, mu=1.0)
    with pytest.raises(ShapeError, match="lam has 3"):
        fenchel_bcd(_model(), (U, Y), lam=[1.0, 1.0, 1.0], mu=1.0)
    with pytest.raises(InputError, match="labels"):
        fenchel_bcd(_model(), (U, torch.full((40,), 5)), lam=1.0, mu=1.0, loss="cross_entropy")
    with pytest.raises(ShapeError):
        fenchel_divergence(torch.zeros(2), torch.zeros(3))


# ----------------------------------------------------------------------------- layered (eq. 9) BCD


def _ff_data(seed=0, sizes=(4, 3, 2, 2), m=60):
    g = torch.Generator().manual_seed(seed)
    Ws = [torch.rand(o, i, generator=g, dtype=F64) - 0.5 for i, o in zip(sizes[:-1], sizes[1:], strict=True)]
    U = torch.randn(m, sizes[0], generator=g, dtype=F64)
    Y = torch.tanh(torch.tanh(U @ Ws[0].t()) @ Ws[1].t()) @ Ws[2].t()
    W0 = [torch.rand(o, i, generator=g, dtype=F64) - 0.5 for i, o in zip(sizes[:-1], sizes[1:], strict=True)]
    return Ws, W0, U, Y


def test_layered_bcd_monotone_and_w_step_optimal():
    _, W0, U, Y = _ff_data()
    res = fz.layered_bcd(W0, (U, Y), eps=0.1, iterations=3)
    flat = [res.objectives[0]] + [v for blocks in res.block_objectives for _, v in blocks]
    assert all(b <= a * (1 + 1e-12) + 1e-15 for a, b in zip(flat[:-1], flat[1:], strict=True))
    assert [name for name, _ in res.block_objectives[0]] == ["W3", "X2", "W2", "X1", "W1"]  # paper's order
    # the last block (W1) is solved to optimality: the GLM gradient vanishes
    X1 = res.states[0].t()
    G = (torch.tanh(res.weights[0] @ U.t()) - X1) @ U
    assert float(G.norm()) < 1e-7


@pytest.mark.parametrize("top", ["loss", "divergence"])
def test_layered_x_step_is_minimiser(top):
    g = torch.Generator().manual_seed(3)
    X = torch.rand(3, 5, generator=g, dtype=F64) * 1.8 - 0.9
    Z = torch.randn(3, 5, generator=g, dtype=F64)
    Wn = torch.randn(2, 3, generator=g, dtype=F64)
    target = torch.randn(2, 5, generator=g, dtype=F64) if top == "loss" else \
        torch.rand(2, 5, generator=g, dtype=F64) * 1.8 - 0.9
    lam_next = None if top == "loss" else 0.3
    out = fz._layer_x_step(X, Z, 0.05, "tanh", Wn, target, lam_next, 100, 1e-14)
    for j in range(5):
        def f(x, j=j):
            x = torch.as_tensor(x, dtype=F64)
            own = 0.05 * float((fz._g(x, "tanh") - x * Z[:, j]).sum())
            zn = Wn @ x
            if lam_next is None:
                return own + 0.5 * float(((target[:, j] - zn) ** 2).sum())
            return own + lam_next * float((fz._conj(zn, "tanh") - target[:, j] * zn).sum())
        ref = so.minimize(f, X[:, j].numpy(), bounds=[(-1 + 1e-9, 1 - 1e-9)] * 3, method="L-BFGS-B",
                          options={"ftol": 1e-15, "gtol": 1e-12})
        assert f(out[:, j].numpy()) <= ref.fun + 1e-9


def test_layered_bcd_teacher_is_a_fixed_point():
    Ws, _, U, Y = _ff_data(seed=1)
    res = fz.layered_bcd(Ws, (U, Y), eps=1e-2, iterations=2)
    assert res.objectives[0] < 1e-12 and res.objectives[-1] < 1e-12
    Yhat = torch.tanh(torch.tanh(U @ res.weights[0].t()) @ res.weights[1].t()) @ res.weights[2].t()
    assert float((Yhat - Y).abs().max()) < 1e-4


def test_layered_bcd_configuration_errors():
    _, W0, U, Y = _ff_data()
    with pytest.raises(ConfigurationError, match="tanh"):
        fz.layered_bcd(W0, (U, Y), eps=0.1, activation="relu")
    with pytest.raises(ConfigurationError, match="eps"):
        fz.layered_bcd(W0, (U, Y), eps=0.0)
    with pytest.raises(ShapeError, match="lam has"):
        fz.layered_bcd(W0, (U, Y), lam=[1.0, 2.0, 3.0])
    with pytest.raises(ShapeError, match="chain"):
        fz.layered_bcd([W0[0], W0[2]], (U, Y), eps=0.1)
