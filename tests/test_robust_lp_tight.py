"""Issue 21 part B: sparse conversions everywhere, the LP as tight as its relaxation allows, soundness
by sampling / PGD / exact MILP worst cases, and typed refusals.

References are independent: the dense conversion of the same network (sparse == dense), a
layer-form LP written here from the torch weights (layer-by-layer LP-tight bounds), a big-M MILP
written here from the torch weights (exact worst case, ``scipy.optimize.milp``), and the model's
float64 evaluation at >= 10^5 sampled, vertex and PGD points (0 violations, no tolerance for the
IBP and LP bounds, which are rounded outward).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import idlkit.robust as R
from idlkit._matrix import as_matrix
from idlkit.convert import from_torch
from idlkit.errors import ConfigurationError, InputError, NonFiniteError, ShapeError
from idlkit.robust._model import float64_copy


def ffn(widths: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=False):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).to(dtype)


def linears(net: torch.nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
            for m in net if isinstance(m, torch.nn.Linear)]


# ----------------------------------------------------------------------------- 1. sparse models

@pytest.fixture(scope="module")
def cnn_pair() -> tuple[object, object, torch.nn.Sequential]:
    """A small CNN converted with >= 1,024 states: stored as CSR, and its dense conversion."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, stride=2),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(196, 10)).double()
    ex = torch.zeros(1, 1, 18, 18, dtype=torch.float64)
    ms, md = from_torch(net, ex), from_torch(net, ex, sparse=False)
    assert ms.sparse and not md.sparse and ms.hidden == 1220 >= 1024
    return ms, md, net


def _no_densify(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make every densification of an ``(n, n)`` matrix (torch or scipy) fail."""
    def guard(orig):  # noqa: ANN001, ANN202
        def f(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            if tuple(self.shape) == (n, n):
                raise AssertionError(f"an ({n}, {n}) matrix (A) was densified")
            return orig(self, *a, **k)
        return f
    for cls in (sp.csr_array, sp.csc_array, sp.coo_array, sp.csr_matrix, sp.csc_matrix, sp.coo_matrix):
        monkeypatch.setattr(cls, "toarray", guard(cls.toarray))
        monkeypatch.setattr(cls, "todense", guard(cls.todense))
    monkeypatch.setattr(torch.Tensor, "to_dense", guard(torch.Tensor.to_dense))


def _value_or_error(f):  # noqa: ANN001, ANN202
    try:
        return torch.tensor(f())
    except Exception as exc:  # noqa: BLE001 - the same typed error on both models is the result
        return torch.tensor(float(len(type(exc).__name__)))


def test_sparse_conversion_equals_dense_without_densifying(cnn_pair, monkeypatch) -> None:  # noqa: ANN001
    ms, md, net = cnn_pair
    rng = np.random.default_rng(0)
    U = torch.as_tensor(rng.uniform(0, 1, (2, 324)))
    labels = torch.tensor([1, 3])
    eps = 0.01

    def everything(m: object) -> dict[str, object]:
        out: dict[str, object] = {}
        bb = R.box_bounds(m, U, eps)
        out["box"] = (bb.x_lower, bb.x_upper, bb.y_lower, bb.y_upper)
        out["box_k"] = (R.state_box_bound(m, eps, k=5), R.output_box_bound(m, eps, k=5))
        out["S"] = R.sensitivity_matrix(m)
        lb = R.lipschitz_bounds(m)
        out["lip"] = torch.tensor([lb.inf, lb.sensitivity])
        out["wc"] = R.worst_case_loss(m, U, labels, eps, loss="cross_entropy").bound
        ib, ibk = R.interval_bounds(m, U, eps), R.interval_bounds(m, U, eps, k=5)
        out["ibp"] = (ib.x_lower, ib.x_upper, ib.y_lower, ib.y_upper, ibk.y_lower, ibk.y_upper)
        E = 1e-3 * abs(as_matrix(m.A))  # an error on the nonzeros of A (sparse for the sparse model)
        out["model_error"] = R.model_error_bound(m, torch.as_tensor(E) if not sp.issparse(E) else E, U)
        sb = R.lp_state_bounds(m, U[0], eps)
        out["lp_states"] = (sb.lower, sb.upper, sb.z_lower, sb.z_upper)
        C = torch.as_tensor(md.C.detach().numpy())
        out["lp_out"] = torch.tensor([R.lp_attack(m, U[0], eps, objective="linear", c=C[j], e=np.zeros(324),
                                                  refine=0).bound for j in (0, 7)])
        out["sens_att"] = R.attack(m, U, labels, 0.1, method="sensitivity").u_adv
        out["fgsm"] = R.fgsm_attack(m, U, labels, 0.1).u_adv
        out["lp_margin"] = R.lp_margin_attack(m, U[:1], labels[:1], eps).bound
        out["saliency"] = R.saliency_attack(m, U, labels, R.Budget(k=5, epsilon=0.1)).u_adv
        out["rate"] = torch.tensor(R.success_rate(m, "sensitivity", U, labels, 0.1).rate)
        out["block"] = R.state_block_bound(m, eps)
        out["linf"] = _value_or_error(lambda: R.state_linf_bound(m, eps))
        cb = R.compare_bounds(m, U, eps)
        out["compare"] = (cb.ibp_output_width, cb.box_output_width)
        P = R.perturbation_bound(m, m.A * 1.01)
        assert P.layout == m.A.layout  # sparse stays sparse
        out["perturbation"] = R.model_error_bound(m, P, U)
        return out

    dense = everything(md)
    _no_densify(monkeypatch, ms.hidden)
    with pytest.raises(AssertionError, match="densified"):  # the guard works
        ms.A.to_dense()
    with pytest.raises(AssertionError, match="densified"):
        as_matrix(ms.A).toarray()
    sparse = everything(ms)
    for key, a in dense.items():
        b = sparse[key]
        pairs = zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True)
        for x, y in pairs:
            x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
            assert torch.allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True), key


# ----------------------------------------------------------------------------- 2. LP tightness

def layer_lp_bounds(net: torch.nn.Sequential, u0: np.ndarray, eps: float
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Reference: layer-by-layer LP-tight pre-activation bounds of a ReLU MLP, written from its
    weights (variables ``u, x_1, ..., x_{L-1}``; ``x_l >= 0``, ``x_l >= z_l``, triangle upper cut
    on the final bounds of ``z_l``; ``max / min z_L`` per unit with scipy's linprog)."""
    from scipy.optimize import linprog

    Ws = linears(net)[:-1]  # hidden layers only
    lo_u, hi_u = u0 - eps, u0 + eps
    W1, b1 = Ws[0]
    c, r = W1 @ u0 + b1, np.abs(W1) @ np.full(u0.size, eps)
    bounds = [(c - r, c + r)]  # layer 1: exact
    for L in range(1, len(Ws)):
        sizes = [u0.size] + [W.shape[0] for W, _ in Ws[:L]]
        offs = np.concatenate(([0], np.cumsum(sizes)))
        nv = offs[-1]
        rows, rhs = [], []
        var_bounds = [(a, b) for a, b in zip(lo_u, hi_u, strict=True)]
        for ell in range(L):
            W, b = Ws[ell]
            zl, zh = bounds[ell]
            Win = np.zeros((W.shape[0], nv))
            Win[:, offs[ell]:offs[ell + 1]] = W  # z_ell = W x_{ell-1} + b (x_0 = u)
            Ix = np.zeros((W.shape[0], nv))
            Ix[:, offs[ell + 1]:offs[ell + 2]] = np.eye(W.shape[0])
            rows.append(Win - Ix)  # z <= x
            rhs.append(-b)
            for i in range(W.shape[0]):
                if zh[i] <= 0:
                    var_bounds.append((0.0, 0.0))
                    continue
                var_bounds.append((max(zl[i], 0.0), zh[i]))
                if zl[i] >= 0:  # x <= z
                    rows.append((Ix[i] - Win[i])[None])
                    rhs.append(np.array([b[i]]))
                else:  # x <= zh (z - zl) / (zh - zl)
                    a = zh[i] / (zh[i] - zl[i])
                    rows.append((Ix[i] - a * Win[i])[None])
                    rhs.append(np.array([a * (b[i] - zl[i])]))
        Aub, bub = np.vstack(rows), np.concatenate(rhs)
        W, b = Ws[L]
        obj = np.zeros((W.shape[0], nv))
        obj[:, offs[L]:offs[L + 1]] = W
        lo, hi = np.zeros(W.shape[0]), np.zeros(W.shape[0])
        for i in range(W.shape[0]):
            hi[i] = -linprog(-obj[i], A_ub=Aub, b_ub=bub, bounds=var_bounds, method="highs").fun + b[i]
            lo[i] = linprog(obj[i], A_ub=Aub, b_ub=bub, bounds=var_bounds, method="highs").fun + b[i]
        bounds.append((lo, hi))
    return bounds


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_lp_state_bounds_are_layerwise_lp_tight(eps: float) -> None:
    """On a feed-forward conversion, lp_state_bounds equals the independent layer-by-layer LP
    (every pre-activation bound), in one round, and further rounds do not shrink it."""
    widths = (5, 10, 10, 10, 3)
    net = ffn(widths, 3)
    model = from_torch(net, torch.zeros(1, 5, dtype=torch.float64))
    u0 = np.random.default_rng(1).uniform(-1, 1, 5)
    sb = R.lp_state_bounds(model, torch.as_tensor(u0), eps)
    assert sb.layerwise
    ref = layer_lp_bounds(net, u0, eps)
    zl, zh = sb.z_lower.numpy(), sb.z_upper.numpy()
    n = model.hidden
    for ell, (lo, hi) in enumerate(ref):  # state order: last hidden layer on top
        sl = slice(n - 10 * (ell + 1), n - 10 * ell)
        assert np.all(zh[sl] >= hi - 1e-7 * (1 + np.abs(hi))), ell  # ours is valid w.r.t. the LP optimum
        np.testing.assert_allclose(zh[sl], hi, rtol=1e-6, atol=1e-6)  # and as tight
        np.testing.assert_allclose(zl[sl], lo, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(sb.upper.numpy()[sl], np.maximum(hi, 0), rtol=1e-6, atol=1e-6)
    # a fixed point: a second pass started from its own bounds changes nothing
    more = R.lp_state_bounds(model, torch.as_tensor(u0), eps, start=(sb.lower.numpy(), sb.upper.numpy()))
    np.testing.assert_allclose(more.lower.numpy(), sb.lower.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(more.upper.numpy(), sb.upper.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(more.z_upper.numpy(), sb.z_upper.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(more.z_lower.numpy(), sb.z_lower.numpy(), rtol=0, atol=1e-12)
    assert R.lp_state_bounds(model, torch.as_tensor(u0), eps, rounds=3).n_lp == sb.n_lp
    # coords in the first layer only: no LP needed (exact intervals)
    first = R.lp_state_bounds(model, torch.as_tensor(u0), eps, coords=np.arange(n - 10, n))
    assert first.n_lp == 0
    np.testing.assert_allclose(first.upper.numpy(), sb.upper.numpy()[n - 10:], rtol=0, atol=1e-12)
    # inside IBP and the Thm 4.1 box
    ib = R.interval_bounds(model, torch.as_tensor(u0)[None], eps)
    assert np.all(sb.upper.numpy() <= ib.x_upper[0].numpy())
    assert np.all(sb.lower.numpy() >= ib.x_lower[0].numpy())
    sx = R.state_box_bound(model, eps).numpy()
    x0 = sb.x0.numpy()
    assert np.all(sb.upper.numpy() <= x0 + sx + 1e-5) and np.all(sb.lower.numpy() >= x0 - sx - 1e-5)
    # a valid start box is respected; the LP default bound starts inside IBP
    half = (sb.lower.numpy(), sb.upper.numpy())
    again = R.lp_state_bounds(model, torch.as_tensor(u0), eps, start=half)
    assert np.all(again.upper.numpy() <= half[1]) and np.all(again.lower.numpy() >= half[0])
    C, D, d = (model.C.detach().numpy(), model.D.detach().numpy(), model.d.detach().numpy())
    for j in range(3):
        plain = R.lp_attack(model, torch.as_tensor(u0), eps, objective="linear", c=C[j], e=D[j],
                            const=float(d[j]), refine=0)
        tight = R.lp_attack(model, torch.as_tensor(u0), eps, objective="linear", c=C[j], e=D[j],
                            const=float(d[j]), refine=0, tighten=True)
        ibp_hi = float(ib.y_upper[0, j])
        assert tight.bound <= plain.bound + 1e-9 and plain.bound <= ibp_hi + 1e-9
        assert tight.value <= tight.bound and plain.value <= plain.bound


# ----------------------------------------------------------------------------- 3. soundness

def pgd_points(net: torch.nn.Sequential, u0: np.ndarray, eps: float, starts: int, steps: int,
               rng: np.random.Generator) -> np.ndarray:
    """Projected sign-gradient ascent on +-y_j (each output) from random starts in the box."""
    out = []
    q = linears(net)[-1][0].shape[0]
    lo, hi = torch.as_tensor(u0 - eps), torch.as_tensor(u0 + eps)
    for j in range(q):
        for sign in (1.0, -1.0):
            u = torch.as_tensor(u0 + rng.uniform(-eps, eps, (starts, u0.size)))
            for _ in range(steps):
                u.requires_grad_(True)
                (g,) = torch.autograd.grad(sign * net(u)[:, j].sum(), u)
                u = torch.minimum(torch.maximum(u.detach() + 0.25 * eps * g.sign(), lo), hi)
            out.append(u.detach().numpy())
    return np.concatenate(out)


def test_every_bound_holds_on_1e5_points_float32_model() -> None:
    """Box (Thm 4.1), IBP, LP (states and outputs) and the sensitivity output box computed from a
    float32 model contain its float64 evaluation at 10^5 sampled points (half of them box
    vertices) and PGD points: 0 violations; IBP and LP with no tolerance at all."""
    rng = np.random.default_rng(5)
    net32 = ffn((6, 12, 12, 3), 5, torch.float32)
    model = from_torch(net32, torch.zeros(1, 6))
    m64 = float64_copy(model)
    u0 = rng.uniform(0, 1, 6).astype(np.float32).astype(np.float64)
    eps = 0.15
    Rn = rng.uniform(-1, 1, (100_000, 6))
    Rn[:50_000] = np.sign(Rn[:50_000])
    U = np.concatenate([u0 + eps * Rn, pgd_points(net32.double(), u0, eps, 100, 20, rng)])
    with torch.no_grad():
        X = m64.equilibrium(torch.as_tensor(U)).numpy()
        Y = m64(torch.as_tensor(U)).numpy()
    ut = torch.as_tensor(u0)
    bb = R.box_bounds(model, ut[None], eps)
    ib = R.interval_bounds(model, ut[None], eps)
    sb = R.lp_state_bounds(model, ut, eps)
    C, D, d = (M.detach().double().numpy() for M in (model.C, model.D, model.d))
    lp_hi = np.array([R.lp_attack(model, ut, eps, objective="linear", c=C[j], e=D[j], const=float(d[j]),
                                  refine=0).bound for j in range(3)])
    lp_lo = -np.array([R.lp_attack(model, ut, eps, objective="linear", c=-C[j], e=-D[j], const=-float(d[j]),
                                   refine=0).bound for j in range(3)])
    y0 = bb.y0[0].numpy()
    sy = R.output_box_bound(model, eps).numpy()
    ulp = 4 * np.finfo(np.float64).eps
    checks = {  # (lower, upper, values, tolerance)
        "box states": (bb.x_lower[0].numpy(), bb.x_upper[0].numpy(), X, ulp * (1 + np.abs(X))),
        "box outputs": (bb.y_lower[0].numpy(), bb.y_upper[0].numpy(), Y, ulp * (1 + np.abs(Y))),
        "sensitivity output box": (y0 - sy, y0 + sy, Y, ulp * (1 + np.abs(Y))),
        "ibp states": (ib.x_lower[0].numpy(), ib.x_upper[0].numpy(), X, 0.0),
        "ibp outputs": (ib.y_lower[0].numpy(), ib.y_upper[0].numpy(), Y, 0.0),
        "lp states": (sb.lower.numpy(), sb.upper.numpy(), X, 0.0),
        "lp outputs": (lp_lo, lp_hi, Y, 0.0),
    }
    assert U.shape[0] >= 100_000
    viol = {k: int(((V < lo - t) | (V > hi + t)).sum()) for k, (lo, hi, V, t) in checks.items()}
    assert all(v == 0 for v in viol.values()), viol
    # the bounds are not vacuous: the LP is much tighter than the box, and PGD gets close to it
    assert np.mean(lp_hi - lp_lo) < np.mean(2 * sy)
    assert np.all(Y.max(0) >= lp_hi - 0.5 * (lp_hi - lp_lo))


def milp_worst_case(net: torch.nn.Sequential, u0: np.ndarray, eps: float, c: np.ndarray
                    ) -> tuple[float, np.ndarray]:
    """Exact ``max c^T net(u)`` over the box by a big-M MILP written from the weights (bounds by
    interval arithmetic here); returns (optimum, maximiser)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    Ws = linears(net)
    p = u0.size
    lo_prev, hi_prev = u0 - eps, u0 + eps
    sizes = [W.shape[0] for W, _ in Ws[:-1]]
    nv = p + 2 * sum(sizes)
    lb, ub = np.concatenate([lo_prev, np.zeros(nv - p)]), np.concatenate([hi_prev, np.zeros(nv - p)])
    integ = np.zeros(nv)
    rows, rlo, rhi = [], [], []
    prev = slice(0, p)
    off = p
    for (W, b), h in zip(Ws[:-1], sizes, strict=True):
        zc = W @ ((lo_prev + hi_prev) / 2) + b
        zr = np.abs(W) @ ((hi_prev - lo_prev) / 2)
        zl, zh = zc - zr - 1e-9, zc + zr + 1e-9
        xs, ds = slice(off, off + h), slice(off + h, off + 2 * h)
        ub[xs], ub[ds], integ[ds] = np.maximum(zh, 0), 1.0, 1.0
        for i in range(h):
            Wz = np.zeros(nv)
            Wz[prev] = W[i]
            ex = np.zeros(nv)
            ex[xs.start + i] = 1.0
            ed = np.zeros(nv)
            ed[ds.start + i] = 1.0
            # x >= z;  x <= z - zl (1 - d)  <=>  x - z - zl d <= -zl;  x <= zh d
            rows += [ex - Wz, ex - Wz - zl[i] * ed, ex - zh[i] * ed]
            rlo += [b[i], -np.inf, -np.inf]
            rhi += [np.inf, b[i] - zl[i], 0.0]
        lo_prev, hi_prev = np.maximum(zl, 0), np.maximum(zh, 0)
        prev = xs
        off += 2 * h
    Wo, bo = Ws[-1]
    obj = np.zeros(nv)
    obj[prev] = -(c @ Wo)
    res = milp(obj, constraints=LinearConstraint(np.array(rows), rlo, rhi), integrality=integ,
               bounds=Bounds(lb, ub), options={"mip_rel_gap": 1e-9})
    assert res.status == 0
    return float(-res.fun + c @ bo), res.x[:p]


@pytest.mark.parametrize("seed", range(4))
def test_lp_bounds_against_exact_milp_worst_case(seed: int) -> None:
    """LP bounds (default and tightened) are never below the exact worst case (a big-M MILP from
    the weights) nor below the model's value at the MILP maximiser (no tolerance); the attack's
    value never exceeds the exact optimum."""
    rng = np.random.default_rng(seed)
    net = ffn((4, 8, 8, 3), 10 + seed)
    model = from_torch(net, torch.zeros(1, 4, dtype=torch.float64))
    u0 = rng.uniform(-1, 1, 4)
    for eps in (0.05, 0.4):
        c = rng.normal(size=3)
        opt, u_star = milp_worst_case(net, u0, eps, c)
        u_star = np.clip(u_star, u0 - eps, u0 + eps)  # the MILP's point is feasible up to 1e-7 only
        with torch.no_grad():
            v_star = float(c @ model(torch.as_tensor(u_star)[None]).numpy()[0])
        assert abs(v_star - opt) <= 1e-6 * (1 + abs(opt))
        C, D, d = (M.detach().numpy() for M in (model.C, model.D, model.d))
        for tighten in (False, True):
            r = R.lp_attack(model, torch.as_tensor(u0), eps, objective="linear", c=c @ C, e=c @ D,
                            const=float(c @ d), refine=0, tighten=tighten)
            assert r.bound >= v_star and r.bound >= opt - 1e-9, (tighten, r.bound, v_star)
            assert r.value <= opt + 1e-6 * (1 + abs(opt))


def test_bound_never_below_value_at_its_own_attack() -> None:
    """Where the relaxation is exact (tiny boxes: every unit stable) the LP bound and the reachable
    value coincide up to rounding; the bound must still be >= the value, with no tolerance."""
    worst = np.inf
    for seed in range(25):
        rng = np.random.default_rng(100 + seed)
        net = ffn((3, 6, 6, 2), 100 + seed)
        model = from_torch(net, torch.zeros(1, 3, dtype=torch.float64))
        u0 = torch.as_tensor(rng.uniform(-1, 1, 3))
        C, D, d = (M.detach().numpy() for M in (model.C, model.D, model.d))
        for j in range(2):
            r = R.lp_attack(model, u0, 1e-4, objective="linear", c=C[j], e=D[j], const=float(d[j]), refine=0)
            assert r.value <= r.bound
            worst = min(worst, r.bound - r.value)
        r = R.lp_attack(model, u0, 1e-4)  # l2 objective
        assert r.value <= r.bound
    assert worst < 1e-6  # the relaxation was exact: the test did probe the rounding


# ----------------------------------------------------------------------------- 4. bad input

def test_refusals_name_the_method_and_the_alternatives() -> None:
    net = ffn((3, 5, 2), 0)
    model = from_torch(net, torch.zeros(1, 3, dtype=torch.float64))
    u0 = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ConfigurationError, match="sdp_attack.*box set.*lp_attack"):
        R.sdp_attack(model, u0, 0.1, k=1)
    tnet = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    tanh = from_torch(tnet, torch.zeros(1, 3, dtype=torch.float64))
    for call in (R.lp_attack, R.lp_state_bounds, R.sdp_attack):
        with pytest.raises(ConfigurationError, match="ReLU.*interval_bounds"):
            call(tanh, u0, 0.1)
    from idlkit import ImplicitModel
    gelu = ImplicitModel(3, 6, 2, activation="gelu", dtype=torch.float64, kappa=0.5)
    with pytest.raises(ConfigurationError, match="monotone.*measure='inf'"):
        R.lipschitz_bound(gelu, "mu")
    # start boxes
    n = model.hidden
    with pytest.raises(ShapeError, match="start"):
        R.lp_state_bounds(model, u0, 0.1, start=(np.zeros(n + 1), np.ones(n + 1)))
    with pytest.raises(InputError, match="lower <= upper"):
        R.lp_state_bounds(model, u0, 0.1, start=(np.ones(n), np.zeros(n)))
    with pytest.raises(InputError, match="nominal state"):
        R.lp_attack(model, u0, 0.1, start=(np.full(n, 50.0), np.full(n, 60.0)))
    with pytest.raises(NonFiniteError):
        R.lp_state_bounds(model, u0, 0.1, start=(np.full(n, np.nan), np.ones(n)))
    with pytest.raises(ConfigurationError, match="start"):
        R.lp_state_bounds(model, u0, 0.1, start=np.zeros(n))
    # an infinite start box is accepted (no information)
    free = R.lp_state_bounds(model, u0, 0.1, start=(np.full(n, -np.inf), np.full(n, np.inf)))
    base = R.lp_state_bounds(model, u0, 0.1)
    np.testing.assert_array_equal(free.upper.numpy(), base.upper.numpy())


def test_ibp_with_cardinality_is_valid_and_tighter() -> None:
    rng = np.random.default_rng(3)
    for sparse in (False, True):
        net = ffn((8, 10, 10, 2), 4)
        model = from_torch(net, torch.zeros(1, 8, dtype=torch.float64), sparse=sparse)
        u0 = rng.uniform(-1, 1, 8)
        box, card = (R.interval_bounds(model, torch.as_tensor(u0)[None], 0.3, k) for k in (None, 2))
        assert torch.all(card.x_upper <= box.x_upper) and torch.all(card.x_lower >= box.x_lower)
        assert float((card.y_upper - card.y_lower).mean()) < float((box.y_upper - box.y_lower).mean())
        Rn = np.sign(rng.uniform(-1, 1, (4000, 8)))
        keep = np.zeros_like(Rn, dtype=bool)
        for i in range(keep.shape[0]):
            keep[i, rng.choice(8, 2, replace=False)] = True
        U = torch.as_tensor(u0 + 0.3 * np.where(keep, Rn, 0.0))
        with torch.no_grad():
            X, Y = model.equilibrium(U), model(U)
        assert torch.all((X >= card.x_lower) & (X <= card.x_upper))
        assert torch.all((Y >= card.y_lower) & (Y <= card.y_upper))
        cmp = R.compare_bounds(model, torch.as_tensor(u0)[None], 0.3, k=2)
        assert torch.allclose(cmp.ibp_output_width, (card.y_upper - card.y_lower).mean(1))


@pytest.mark.parametrize("act", ["relu", "tanh", "softmax"])
def test_box_bounds_cover_the_solver_error_of_x0(act: str) -> None:
    """A loose solver (tol 1e-3): x0 is off by ~1e-3, yet box_bounds (even with sigma_u = 0)
    contains the exact states and outputs, through the residual-based x_err / y_err."""
    from idlkit import ImplicitModel

    torch.manual_seed(2)
    base = ImplicitModel(4, 12, 3, activation=act, dtype=torch.float64, kappa=0.9)
    mats = [getattr(base, k).detach() for k in ("A", "B", "C", "D")]
    if act == "softmax":  # BLIP: lambda_pf(Gamma N(A)) < 1 needs a smaller A
        mats[0] = mats[0] * 0.2
    kw = dict(b=base.b.detach(), d=base.d.detach(), activation=base.activation, wellposedness=None,
              solver="picard")
    loose = ImplicitModel.from_matrices(*mats, **kw, tol=1e-3, max_iter=10_000)
    exact = ImplicitModel.from_matrices(*mats, **kw, tol=1e-14, max_iter=100_000)
    U = torch.randn(6, 4, dtype=torch.float64)
    with torch.no_grad():
        X, Y = exact.equilibrium(U), exact(U)
    for sigma in (0.0, 0.05):
        bb = R.box_bounds(loose, U, sigma)
        assert float(bb.x_err.max()) > 1e-8  # the error term is not vacuous here
        assert torch.all((X >= bb.x_lower) & (X <= bb.x_upper))
        assert torch.all((Y >= bb.y_lower) & (Y <= bb.y_upper))
        assert float(bb.x_err.max()) < 1e-1
    exact_err = R.box_bounds(exact, U, 0.0).x_err
    assert float(exact_err.max()) < 1e-10


def test_warm_started_highs_equals_linprog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm-started HiGHS path and scipy's linprog (fallback) give the same bounds."""
    import idlkit.robust.lp as lp

    net = ffn((4, 8, 8, 2), 21)
    model = from_torch(net, torch.zeros(1, 4, dtype=torch.float64))
    u0 = torch.as_tensor(np.random.default_rng(2).uniform(-1, 1, 4))
    warm = R.lp_state_bounds(model, u0, 0.2)
    wa = R.lp_attack(model, u0, 0.2, tighten=True)
    made = lp._new_highs()
    assert made is not None  # scipy's bundled HiGHS (or highspy) is available here
    monkeypatch.setattr(lp, "_new_highs", lambda: None)
    cold = R.lp_state_bounds(model, u0, 0.2)
    ca = R.lp_attack(model, u0, 0.2, tighten=True)
    np.testing.assert_allclose(warm.upper.numpy(), cold.upper.numpy(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(warm.lower.numpy(), cold.lower.numpy(), rtol=1e-7, atol=1e-9)
    assert abs(wa.bound - ca.bound) <= 1e-7 * (1 + abs(ca.bound))


def test_sparse_block_norms_are_exact_without_densifying(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gamma N(A) of a sparse A with non-scalar blocks (SoftMax l1, BlockMax l_inf, mixed pairs)
    equals the dense exact one, computed block by block (A itself is never densified)."""
    from idlkit.activations import BlockMax, Blockwise, SoftMax
    from idlkit.robust._model import _sparse_block_norms
    from idlkit.wellposed import blip_norm_matrix

    rng = np.random.default_rng(0)
    act = Blockwise([(9, SoftMax(3)), (8, BlockMax(2)), (3, "relu")])
    n = 20
    bs = act.blocks(n)
    A = rng.normal(size=(n, n)) * (rng.random((n, n)) < 0.3)
    dense = blip_norm_matrix(A, bs.sizes, bs.norms, bs.gammas)
    _no_densify(monkeypatch, n)
    sparse = _sparse_block_norms(sp.csr_array(A), bs)
    np.testing.assert_allclose(sparse.toarray(), dense, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("clip", [None, (-0.2, 0.7)])
def test_cardinality_hull_knapsack_equals_the_lp(clip) -> None:  # noqa: ANN001
    """First-layer bounds over the cardinality hull (closed form, a fractional knapsack) equal the
    LP over the same hull; every k-sparse sample lies inside."""
    from idlkit.robust.lp import LPProblem, _card_hull_z, _z_bounds, input_box

    rng = np.random.default_rng(4)
    p, m, k = 9, 6, 3
    W = sp.csr_array(rng.normal(size=(m, p)) * (rng.random((m, p)) < 0.7))
    b = rng.normal(size=m)
    u0 = rng.uniform(-0.2, 0.5, p)
    sig = rng.uniform(0.0, 0.6, p)
    sig[2] = 0.0
    ulo, uhi = input_box(u0, sig, clip)
    zl, zh = _card_hull_z(W, b, u0, ulo, uhi, sig, k)
    empty = sp.csr_array((0, 0))
    prob = LPProblem.assemble(empty, sp.csr_array((0, p)), np.zeros(0), np.zeros(0), np.zeros(0), ulo, uhi,
                              u0, sig, k, "hull", True)
    ll, lh, _ = _z_bounds(prob, sp.csr_array((m, 0)), W, b, np.arange(m))
    np.testing.assert_allclose(zh, lh, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(zl, ll, rtol=1e-9, atol=1e-9)
    for _ in range(2000):
        u = u0.copy()
        j = rng.choice(p, k, replace=False)
        u[j] = rng.uniform(ulo[j], uhi[j])
        u[j[:1]] = np.where(rng.random() < 0.5, ulo[j[:1]], uhi[j[:1]])
        z = W @ u + b
        assert np.all(z >= zl) and np.all(z <= zh)


def test_lp_state_bounds_cardinality_on_a_conversion() -> None:
    """k-sparse inputs with clipping on a feed-forward conversion: the bounds contain 20,000
    k-sparse samples (half at box vertices) and are inside IBP for the same k."""
    rng = np.random.default_rng(9)
    net = ffn((10, 12, 12, 3), 8)
    model = from_torch(net, torch.zeros(1, 10, dtype=torch.float64))
    u0 = rng.uniform(0, 1, 10)
    sb = R.lp_state_bounds(model, torch.as_tensor(u0), 0.4, k=3, clip=(0.0, 1.0))
    ib = R.interval_bounds(model, torch.as_tensor(u0)[None], 0.4, k=3)
    assert np.all(sb.upper.numpy() <= ib.x_upper[0].numpy() + 1e-12)
    Rn = rng.uniform(-1, 1, (20_000, 10))
    Rn[:10_000] = np.sign(Rn[:10_000])
    keep = np.argsort(rng.random((20_000, 10)), axis=1) < 3
    U = np.clip(u0 + 0.4 * np.where(keep, Rn, 0.0), 0.0, 1.0)
    with torch.no_grad():
        X = model.equilibrium(torch.as_tensor(U)).numpy()
    assert np.all(X >= sb.lower.numpy()) and np.all(X <= sb.upper.numpy())
