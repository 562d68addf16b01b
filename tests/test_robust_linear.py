"""Linear bound propagation (robust/linear.py) and the one entry output_bounds / state_bounds
(robust/certify.py): soundness by trying to break the bounds (samples, vertices, PGD), exact worst
cases on tiny models (MILP, activation-pattern enumeration with one LP each), an independent dense
CROWN for nn.Sequential, alpha-CROWN vs CROWN, CROWN vs IBP, float32 models, typed errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

import idlkit as idl
from idlkit.errors import ConfigurationError, InputError, NonFiniteError, ShapeError
from idlkit.robust._model import float64_copy
from idlkit.robust.linear import linear_bounds
from idlkit.robust.lp import _lp_tol

F64 = torch.float64
METHODS = ("box", "ibp", "crown", "alpha-crown", "crown-ibp", "best")


def _net(sizes: list[int], act: type[torch.nn.Module], seed: int, **kw) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act(**kw))
    return torch.nn.Sequential(*layers).to(F64)


def _implicit(n: int, p: int, q: int, act: str, seed: int, scale: float = 0.9) -> idl.ImplicitModel:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=F64)
    A = scale * A / A.abs().sum(1).max()  # ||A||_inf = scale < 1: well-posed, not triangular
    B = torch.randn(n, p, generator=g, dtype=F64)
    C = torch.randn(q, n, generator=g, dtype=F64)
    D = torch.randn(q, p, generator=g, dtype=F64)
    b = 0.3 * torch.randn(n, generator=g, dtype=F64)
    return idl.ImplicitModel.from_matrices(A, B, C, D, b=b, activation=act, tol=1e-13, max_iter=2000,
                                           solver="picard")


def _implicit_pf(n: int, p: int, q: int, act: str, seed: int, pf: float = 0.9) -> idl.ImplicitModel:
    """lambda_pf(|A|) = pf < 1 but ||A||_inf > 1 (Thm 4.1 holds, eq. 4.3 does not)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=F64)
    A = pf * A / float(np.max(np.abs(np.linalg.eigvals(A.abs().numpy()))))
    assert float(A.abs().sum(1).max()) > 1
    mats = [torch.randn(*s, generator=g, dtype=F64) for s in ((n, p), (q, n), (q, p))]
    return idl.ImplicitModel.from_matrices(A, *mats, activation=act, tol=1e-13, max_iter=5000,
                                           solver="anderson", wellposedness=None)


def _attack_points(f, u0: torch.Tensor, eps: float, q: int, n_rand: int, seed: int) -> torch.Tensor:
    """Random points, box vertices and PGD points (both signs of every output) around ``u0 (p,)``."""
    g = torch.Generator().manual_seed(seed)
    p = u0.numel()
    R = u0 + eps * (2 * torch.rand(n_rand, p, generator=g, dtype=F64) - 1)
    V = u0 + eps * (2 * torch.randint(0, 2, (n_rand // 4, p), generator=g).to(F64) - 1)
    starts = u0 + eps * (2 * torch.rand(8, p, generator=g, dtype=F64) - 1)
    pgd = []
    for j, sgn in itertools.product(range(q), (1.0, -1.0)):
        u = starts.clone()
        for _ in range(15):
            u.requires_grad_(True)
            (sgn * f(u)[:, j]).sum().backward()
            with torch.no_grad():
                u = torch.clamp(u + 0.25 * eps * u.grad.sign(), u0 - eps, u0 + eps)
            pgd.append(u.detach())
    return torch.cat([R, V, *pgd])


def _violations(model, U: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, tol: float = 0.0) -> int:
    with torch.no_grad():
        Y = model(U)
    return int((Y < lo - tol).sum() + (Y > hi + tol).sum())


# ----------------------------------------------------------------------------- soundness

CASES = [("relu", torch.nn.ReLU, {}), ("tanh", torch.nn.Tanh, {}),
         ("leaky", torch.nn.LeakyReLU, {"negative_slope": 0.1}), ("gelu", torch.nn.GELU, {}),
         ("sigmoid", torch.nn.Sigmoid, {})]


@pytest.mark.parametrize("name,act,kw", CASES, ids=[c[0] for c in CASES])
def test_converted_nets_sound(name, act, kw):
    """>= 1e5 random, vertex and PGD points per method, 0 violations (exact float64 check)."""
    net = _net([6, 12, 10, 3], act, seed=1, **kw)
    model = idl.convert.from_torch(net, torch.zeros(1, 6, dtype=F64))
    for i, eps in enumerate((0.05, 0.5)):
        u0 = torch.randn(6, generator=torch.Generator().manual_seed(i), dtype=F64)
        U = _attack_points(net, u0, eps, 3, 60_000 if i == 0 else 20_000, seed=i)
        for method in METHODS:
            ob = idl.robust.output_bounds(model, u0, eps, method=method)
            sb = idl.robust.state_bounds(model, u0[None], eps, method=method)
            assert ob.lower.shape == (1, 3) and sb.lower.shape == (1, model.A.shape[0])
            assert _violations(model, U, ob.lower, ob.upper) == 0, (name, method, eps)
            with torch.no_grad():
                X = model.equilibrium(U[:5000])
            assert bool(((X >= sb.lower) & (X <= sb.upper)).all()), (name, method, eps)


@pytest.mark.parametrize("act", ["relu", "tanh", "leaky_relu", "sigmoid"])
def test_implicit_general_sound(act):
    """Non-triangular A (||A||_inf = 0.9): linear bounds, box, best; 1e5 points, 0 violations
    beyond the model solver's own error (tol 1e-13)."""
    model = _implicit(12, 5, 3, act, seed=3)
    u0 = torch.randn(5, generator=torch.Generator().manual_seed(7), dtype=F64)
    eps = 0.2
    U = _attack_points(model, u0, eps, 3, 80_000, seed=5)
    lin = linear_bounds(model, u0, eps)
    assert lin.method == "linear-fixed-point" and lin.levels == 0
    for method in ("box", "crown", "alpha-crown", "best"):
        ob = idl.robust.output_bounds(model, u0, eps, method=method)
        assert _violations(model, U, ob.lower, ob.upper, tol=1e-9) == 0, (act, method)
    box = idl.robust.output_bounds(model, u0, eps, method="box")
    crown = idl.robust.output_bounds(model, u0, eps, method="crown")
    assert bool((crown.width <= box.width + 1e-9).all())


def test_loose_solver_tolerance_still_sound():
    """The model's own solver at tol 1e-3: box, linear bounds and best hold for the exact equilibria
    (evaluated by a tol-1e-13 twin of the same matrices)."""
    exact = _implicit(12, 5, 3, "relu", seed=9, scale=0.95)
    loose = idl.ImplicitModel.from_matrices(exact.A.detach(), exact.B.detach(), exact.C.detach(),
                                            exact.D.detach(), b=exact.b.detach(), d=exact.d.detach(),
                                            activation="relu", tol=1e-3, solver="picard")
    u0 = torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=F64)
    U = _attack_points(exact, u0, 1e-7, 3, 20_000, seed=4)
    for method in ("box", "crown", "best"):
        ob = idl.robust.output_bounds(loose, u0, 1e-7, method=method)
        assert _violations(exact, U, ob.lower, ob.upper, tol=1e-10) == 0, method


def test_implicit_pf_only_sound():
    """||A||_inf = 1.1 > 1 with lambda_pf(|A|) = 0.9: the linear bounds (and best) still hold."""
    model = _implicit_pf(20, 6, 3, "relu", seed=4)
    u0 = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=F64)
    U = _attack_points(model, u0, 0.1, 3, 80_000, seed=2)
    for method in ("crown", "alpha-crown", "best"):
        ob = idl.robust.output_bounds(model, u0, 0.1, method=method)
        assert _violations(model, U, ob.lower, ob.upper, tol=1e-9) == 0, method


# ----------------------------------------------------------------------------- exact worst cases

def _milp_range(net: torch.nn.Sequential, u0: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact min/max of each output of a ReLU nn.Sequential over the box (big-M MILP, the big-M
    from plain interval arithmetic)."""
    Ws = [m.weight.detach().numpy() for m in net if isinstance(m, torch.nn.Linear)]
    bs = [m.bias.detach().numpy() for m in net if isinstance(m, torch.nn.Linear)]
    p = u0.size
    # variable layout: u, then per hidden layer (z, x, delta)
    nv, offs = p, []
    lo, hi = u0 - eps, u0 + eps
    var_lo, var_hi, integ = list(lo), list(hi), [0] * p
    rows, rl, rh = [], [], []
    prev, plo, phi_ = list(range(p)), lo, hi
    for W, b in zip(Ws[:-1], bs[:-1], strict=True):
        k = W.shape[0]
        zc = W @ ((plo + phi_) / 2) + b
        zr = np.abs(W) @ ((phi_ - plo) / 2)
        zl, zh = zc - zr - 1e-9, zc + zr + 1e-9
        z0, x0, d0 = nv, nv + k, nv + 2 * k
        nv += 3 * k
        var_lo += list(zl) + [0.0] * k + [0.0] * k
        var_hi += list(zh) + list(np.maximum(zh, 0)) + [1.0] * k
        integ += [0] * 2 * k + [1] * k
        for i in range(k):
            r = {z0 + i: -1.0, **{prev[j]: W[i, j] for j in range(len(prev))}}
            rows.append(r), rl.append(-b[i]), rh.append(-b[i])  # W x_prev - z = -b
            rows.append({x0 + i: 1.0, z0 + i: -1.0}), rl.append(0.0), rh.append(np.inf)  # x >= z
            # x <= z - zl (1 - d);  x <= zh d
            rows.append({x0 + i: 1.0, z0 + i: -1.0, d0 + i: -zl[i]}), rl.append(-np.inf), rh.append(-zl[i])
            rows.append({x0 + i: 1.0, d0 + i: -max(zh[i], 0.0)}), rl.append(-np.inf), rh.append(0.0)
        offs.append((z0, x0, d0))
        prev = list(range(x0, x0 + k))
        plo, phi_ = np.maximum(zl, 0), np.maximum(zh, 0)
    Amat = np.zeros((len(rows), nv))
    for r, row in enumerate(rows):
        for j, v in row.items():
            Amat[r, j] = v
    cons = LinearConstraint(Amat, rl, rh)
    W, b = Ws[-1], bs[-1]
    mins, maxs = [], []
    for j in range(W.shape[0]):
        c = np.zeros(nv)
        c[prev] = W[j]
        vals = []
        for sgn in (1.0, -1.0):
            res = milp(sgn * c, constraints=cons, integrality=np.array(integ),
                       bounds=Bounds(var_lo, var_hi), options={"mip_rel_gap": 1e-12})
            assert res.status == 0
            vals.append(sgn * res.fun + b[j])
        mins.append(vals[0])
        maxs.append(vals[1])
    return np.array(mins), np.array(maxs)


def test_exact_milp_tiny_relu():
    net = _net([3, 5, 4, 2], torch.nn.ReLU, seed=11)
    model = idl.convert.from_torch(net, torch.zeros(1, 3, dtype=F64))
    u0 = np.array([0.3, -0.2, 0.5])
    for eps in (0.1, 0.6):
        ymin, ymax = _milp_range(net, u0, eps)
        for method in METHODS + ("lp",):
            ob = idl.robust.output_bounds(model, torch.from_numpy(u0), eps, method=method)
            lo, hi = ob.lower[0].numpy(), ob.upper[0].numpy()
            assert (lo <= ymin + 1e-7).all() and (hi >= ymax - 1e-7).all(), (method, eps)
        # the sampled range lies inside the exact one (checks the MILP itself)
        U = torch.from_numpy(u0) + eps * (2 * torch.rand(20000, 3, dtype=F64) - 1)
        with torch.no_grad():
            Y = net(U).numpy()
        assert (Y.min(0) >= ymin - 1e-7).all() and (Y.max(0) <= ymax + 1e-7).all()


def _pattern_range(model: idl.ImplicitModel, u0: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact output range of a tiny non-triangular ReLU model: every activation pattern P gives
    the linear system x = P z, z = A x + B u + b with sign constraints on z, one LP per pattern."""
    A, B, C, D = (getattr(model, k).detach().numpy() for k in "ABCD")
    b = model.b.detach().numpy()
    d = model.d.detach().numpy()
    n, p = B.shape
    ymin, ymax = np.full(C.shape[0], np.inf), np.full(C.shape[0], -np.inf)
    for pat in itertools.product((0.0, 1.0), repeat=n):
        P = np.diag(pat)
        M = np.eye(n) - P @ A  # x = P (A x + B u + b)  =>  x = M^-1 P (B u + b)
        if abs(np.linalg.det(M)) < 1e-12:
            continue
        G = np.linalg.solve(M, P @ B)
        g = np.linalg.solve(M, P @ b)
        # z = A x + B u + b = (A G + B) u + (A g + b); active: z >= 0, inactive: z <= 0
        Zu, z0 = A @ G + B, A @ g + b
        sgn = np.where(np.array(pat) > 0, -1.0, 1.0)  # -z <= 0 for active, z <= 0 for inactive
        A_ub, b_ub = sgn[:, None] * Zu, -sgn * z0
        Yu, y0 = C @ G + D, C @ g + d
        for j in range(C.shape[0]):
            for s in (1.0, -1.0):
                box = list(zip(u0 - eps, u0 + eps, strict=True))
                res = linprog(-s * Yu[j], A_ub=A_ub, b_ub=b_ub, bounds=box, method="highs")
                if res.status == 0:
                    v = s * (-res.fun) + y0[j]
                    ymax[j] = max(ymax[j], v) if s > 0 else ymax[j]
                    ymin[j] = min(ymin[j], v) if s < 0 else ymin[j]
    return ymin, ymax


def test_exact_patterns_tiny_implicit():
    model = _implicit(4, 2, 2, "relu", seed=21, scale=0.8)
    u0 = np.array([0.2, -0.4])
    for eps in (0.1, 0.5):
        ymin, ymax = _pattern_range(model, u0, eps)
        for method in ("box", "crown", "alpha-crown", "lp", "best"):
            ob = idl.robust.output_bounds(model, torch.from_numpy(u0), eps, method=method)
            lo, hi = ob.lower[0].numpy(), ob.upper[0].numpy()
            assert (lo <= ymin + 1e-7).all() and (hi >= ymax - 1e-7).all(), (method, eps)
        U = torch.from_numpy(u0) + eps * (2 * torch.rand(5000, 2, dtype=F64) - 1)
        with torch.no_grad():
            Y = model(U).numpy()
        assert (Y.min(0) >= ymin - 1e-7).all() and (Y.max(0) <= ymax + 1e-7).all()


# ----------------------------------------------------------------------------- reference CROWN

def _ref_crown(net: torch.nn.Sequential, u0: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain dense CROWN for Linear/ReLU nn.Sequential, layer by layer (Zhang et al. 2018), with
    the adaptive lower slope (1 if u >= -l else 0) and the chord as upper slope."""
    lins = [m for m in net if isinstance(m, torch.nn.Linear)]
    Ws = [m.weight.detach().to(F64) for m in lins]
    bs = [m.bias.detach().to(F64) for m in lins]
    hi_u = u0 + eps
    slopes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # lower slope, upper slope, offset

    def bound(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        # bounds of z_k = W_k x_{k-1} + b_k, x_{k-1} = relu(z_{k-1}) relaxed by slopes[k-1], ...
        res = []
        for sign in (1.0, -1.0):  # upper bound of sign * z_k
            lam = sign * Ws[k]
            const = sign * bs[k]
            for j in range(k - 1, -1, -1):
                dl, du, cu = slopes[j]
                pos, neg = lam.clamp(min=0), lam.clamp(max=0)
                const = const + pos @ cu
                lam = pos * du + neg * dl
                const = const + lam @ bs[j]
                lam = lam @ Ws[j]
            val = const + lam @ u0 + lam.abs() @ (hi_u - u0)
            res.append(sign * val)
        return res[1], res[0]

    for k in range(len(Ws) - 1):
        l, h = bound(k)
        unstable = (l < 0) & (h > 0)
        du = torch.where(h <= 0, 0.0, torch.where(l >= 0, 1.0, h / (h - l)))
        cu = torch.where(unstable, -l * h / (h - l), 0.0)
        dl = torch.where(h <= 0, 0.0, torch.where(l >= 0, 1.0, (h >= -l).to(F64)))
        slopes.append((dl, du, cu))
    return bound(len(Ws) - 1)


def test_crown_equals_reference():
    cases = (([8, 20, 15, 10, 4], 0.05, 0), ([5, 30, 3], 0.3, 1), ([10, 16, 16, 16, 2], 0.1, 2))
    for sizes, eps, seed in cases:
        net = _net(sizes, torch.nn.ReLU, seed)
        model = idl.convert.from_torch(net, torch.zeros(1, sizes[0], dtype=F64))
        for i in range(3):
            u0 = torch.randn(sizes[0], generator=torch.Generator().manual_seed(i), dtype=F64)
            lo, hi = _ref_crown(net, u0, eps)
            ob = idl.robust.output_bounds(model, u0, eps, method="crown")
            torch.testing.assert_close(ob.lower[0], lo, rtol=0, atol=1e-10)
            torch.testing.assert_close(ob.upper[0], hi, rtol=0, atol=1e-10)


def test_alpha_never_looser_and_crown_vs_ibp():
    for act, kw in ((torch.nn.ReLU, {}), (torch.nn.Tanh, {}), (torch.nn.LeakyReLU, {"negative_slope": 0.2})):
        net = _net([10, 32, 32, 5], act, seed=4, **kw)
        model = idl.convert.from_torch(net, torch.zeros(1, 10, dtype=F64))
        u0 = torch.randn(4, 10, generator=torch.Generator().manual_seed(0), dtype=F64)
        for eps in (0.02, 0.2):
            c = idl.robust.output_bounds(model, u0, eps, method="crown")
            a = idl.robust.output_bounds(model, u0, eps, method="alpha-crown")
            i = idl.robust.output_bounds(model, u0, eps, method="ibp")
            best = idl.robust.output_bounds(model, u0, eps, method="best")
            assert bool((a.lower >= c.lower).all() and (a.upper <= c.upper).all())
            assert float(c.width.mean()) <= float(i.width.mean())
            assert bool((best.width <= torch.minimum(a.width, i.width) + 1e-12).all())
            assert best.method.startswith("best(")


def test_chunked_batch_equals_per_input():
    net = _net([5, 12, 3], torch.nn.ReLU, seed=8)
    model = idl.convert.from_torch(net, torch.zeros(1, 5, dtype=F64))
    u0 = torch.randn(7, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    whole = linear_bounds(model, u0, 0.2, batch_size=3)
    for r in range(7):
        one = linear_bounds(model, u0[r], 0.2)
        torch.testing.assert_close(whole.y_lower[r], one.y_lower[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(whole.y_upper[r], one.y_upper[0], rtol=0, atol=1e-12)


def test_float32_model_bounds_hold_for_float64_evaluation():
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(7, 20), torch.nn.ReLU(), torch.nn.Linear(20, 20),
                              torch.nn.Tanh(), torch.nn.Linear(20, 3))
    model = idl.convert.from_torch(net, torch.zeros(1, 7))
    assert model.A.dtype == torch.float32
    u0 = torch.randn(2, 7)
    m64 = float64_copy(model)
    for method in ("crown", "alpha-crown", "ibp", "best"):
        ob = idl.robust.output_bounds(model, u0, 0.1, method=method)
        assert ob.lower.dtype == F64
        for r in range(2):
            U = _attack_points(m64, u0[r].to(F64), 0.1, 3, 4000, seed=r)
            assert _violations(m64, U, ob.lower[r], ob.upper[r]) == 0


def test_clip_and_batch_shapes():
    net = _net([4, 8, 2], torch.nn.ReLU, seed=0)
    model = idl.convert.from_torch(net, torch.zeros(1, 4, dtype=F64))
    u0 = torch.rand(3, 4, dtype=F64)
    full = idl.robust.output_bounds(model, u0, 0.5, method="crown")
    clipped = idl.robust.output_bounds(model, u0, 0.5, method="crown", clip=(0.0, 1.0))
    assert bool((clipped.width <= full.width + 1e-12).all())
    U = torch.clamp(u0[0] + 0.5 * (2 * torch.rand(20000, 4, dtype=F64) - 1), 0, 1)
    assert _violations(model, U, clipped.lower[0], clipped.upper[0]) == 0
    ib = idl.robust.output_bounds(model, u0, 0.5, method="ibp", clip=(0.0, 1.0))
    assert ib.lower.shape == (3, 2)
    fast = idl.robust.output_bounds(model, u0, 0.5, time_budget=1e-9)  # no time for alpha-CROWN
    assert "alpha-crown" not in fast.method and fast.lower.shape == (3, 2)
    kb = idl.robust.output_bounds(model, u0[0], 0.5, k=2)
    assert kb.lower.shape == (1, 2) and kb.method.startswith("best(")


# ----------------------------------------------------------------------------- typed errors

def test_typed_errors():
    net = _net([4, 8, 2], torch.nn.ReLU, seed=0)
    model = idl.convert.from_torch(net, torch.zeros(1, 4, dtype=F64))
    u0 = torch.zeros(2, 4, dtype=F64)
    for method in ("crown", "alpha-crown", "ibp"):
        with pytest.raises(ConfigurationError, match="'box'.*'lp'"):
            idl.robust.output_bounds(model, u0, 0.1, k=2, method=method)
    with pytest.raises(ConfigurationError, match="method"):
        idl.robust.output_bounds(model, u0, 0.1, method="zonotope")
    with pytest.raises(ShapeError):
        idl.robust.output_bounds(model, torch.zeros(2, 5, dtype=F64), 0.1)
    with pytest.raises(ShapeError):
        idl.robust.output_bounds(model, u0, torch.ones(3, dtype=F64))
    with pytest.raises(NonFiniteError):
        idl.robust.output_bounds(model, torch.full((2, 4), float("nan"), dtype=F64), 0.1)
    with pytest.raises(NonFiniteError):
        idl.robust.state_bounds(model, u0, float("nan"))
    with pytest.raises(InputError):
        idl.robust.output_bounds(model, u0, -0.1)
    with pytest.raises(InputError):
        idl.robust.output_bounds(model, u0 + 5, 0.1, clip=(0.0, 1.0))
    tanh = idl.convert.from_torch(_net([4, 8, 2], torch.nn.Tanh, seed=0), torch.zeros(1, 4, dtype=F64))
    with pytest.raises(ConfigurationError, match="ReLU.*'crown'"):
        idl.robust.output_bounds(tanh, u0, 0.1, method="lp")
    soft = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Softmax(dim=-1), torch.nn.Linear(6, 2)).to(F64)
    sm = idl.convert.from_torch(soft, torch.zeros(1, 4, dtype=F64))
    with pytest.raises(ConfigurationError, match="'ibp'"):
        idl.robust.output_bounds(sm, u0, 0.1, method="crown")
    ob = idl.robust.output_bounds(sm, u0, 0.1)  # best falls back to box and IBP
    assert "crown" not in ob.method and ob.lower.shape == (2, 2)


def test_crown_ibp_sparse_cnn():
    """A converted CNN (sparse A, B): CROWN-IBP on the sparse matrices is sound (it is not always
    tighter than IBP output by output, so only the soundness is asserted)."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(3 * 6 * 6, 4)).to(F64)
    model = idl.convert.from_torch(net, torch.zeros(1, 1, 6, 6, dtype=F64))
    u0 = torch.rand(2, 36, dtype=F64)
    ci = idl.robust.output_bounds(model, u0, 0.05, method="crown-ibp")
    assert ci.method == "crown-ibp" and ci.lower.shape == (2, 4)
    for r in range(2):
        U = _attack_points(lambda v: net(v.reshape(-1, 1, 6, 6)), u0[r], 0.05, 4, 20000, seed=r)
        with torch.no_grad():
            Y = net(U.reshape(-1, 1, 6, 6))
        assert int(((Y < ci.lower[r]) | (Y > ci.upper[r])).sum()) == 0


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "identity", "tanh", "sigmoid", "softsign", "gelu",
                                  "silu", "mish", "hardswish", "elu", "celu", "selu", "softplus",
                                  "hardtanh", "relu6", "hardsigmoid", "logsigmoid", "tanhshrink",
                                  "softshrink"])
def test_relaxation_families_sound_for_every_t(name):
    """``relax``: for random intervals and t in {0, 0.3, 0.7, 1} (both families), the lines stay
    below / above the map on a dense grid of the interval."""
    from idlkit.activations import ACTIVATIONS, get_activation
    from idlkit.robust.linear import relax

    if name not in ACTIVATIONS:
        pytest.skip(f"{name} not registered")
    f = get_activation(name)
    g = torch.Generator().manual_seed(0)
    c = 6 * torch.randn(1, 400, generator=g, dtype=F64)
    scale = torch.tensor([0.01, 1.0, 8.0], dtype=F64).repeat(134)[:400]
    w = torch.rand(1, 400, generator=g, dtype=F64) * scale
    l, h = c - w, c + w
    rel = relax(f, l, h)
    s = torch.linspace(0, 1, 201, dtype=F64)[:, None]
    Z = l + s * (h - l)  # (201, 400)
    FZ = f(Z)
    for t in (0.0, 0.3, 0.7, 1.0):
        T = torch.full_like(l, t)
        al, cl, au, cu = rel.lines(T, T)
        tol = 1e-12 * (1 + FZ.abs() + Z.abs())
        assert bool((al * Z + cl <= FZ + tol).all()), (name, t)
        assert bool((au * Z + cu >= FZ - tol).all()), (name, t)


def test_best_with_budget_adds_lp():
    net = _net([4, 10, 8, 3], torch.nn.ReLU, seed=12)
    model = idl.convert.from_torch(net, torch.zeros(1, 4, dtype=F64))
    u0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    best = idl.robust.output_bounds(model, u0, 0.3, time_budget=60.0)
    assert best.method.endswith(",lp)")
    for m in ("lp", "alpha-crown", "ibp"):
        other = idl.robust.output_bounds(model, u0, 0.3, method=m)
        assert bool((best.lower >= other.lower - 1e-12).all() and (best.upper <= other.upper + 1e-12).all())
    U = _attack_points(net, u0[0], 0.3, 3, 20000, seed=0)
    assert _violations(model, U, best.lower[0], best.upper[0]) == 0


@pytest.mark.parametrize("eps", [0.01, 0.1])
def test_lp_starts_from_crown_and_is_at_least_as_tight(eps):
    """method='lp' starts from CROWN's state bounds and takes its triangle cuts from its own LP
    bounds on z: the triangle relaxation with those intervals contains CROWN's and alpha-CROWN's
    linear bounds, so its output interval is never wider (up to the outward rounding), and it
    stays sound against the exact MILP range."""
    net = _net([6, 12, 10, 3], torch.nn.ReLU, seed=5)
    U = torch.rand(2, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    model = idl.convert.from_torch(net, U)
    lp = idl.robust.output_bounds(model, U, eps, method="lp")
    for other in ("crown", "alpha-crown"):
        ob = idl.robust.output_bounds(model, U, eps, method=other)
        slack = 2 * torch.from_numpy(_lp_tol(ob.upper.numpy())) + 1e-9  # the LP's outward rounding
        assert (lp.lower >= ob.lower - slack).all() and (lp.upper <= ob.upper + slack).all(), other
    for i in range(2):
        ymin, ymax = _milp_range(net, U[i].numpy(), eps)
        assert (lp.lower[i].numpy() <= ymin + 1e-7).all() and (lp.upper[i].numpy() >= ymax - 1e-7).all()
