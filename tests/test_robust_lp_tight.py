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
from idlkit.robust.lp import true_states


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
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True):
            x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
            assert torch.allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True), key


# ----------------------------------------------------------------------------- 2. LP tightness

def layer_lp_bounds(net: torch.nn.Sequential, u0: np.ndarray, eps: float) -> list[tuple[np.ndarray, np.ndarray]]:
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
    more = R.lp_state_bounds(model, torch.as_tensor(u0), eps, rounds=3)
    np.testing.assert_array_equal(more.lower.numpy(), sb.lower.numpy())
    np.testing.assert_array_equal(more.upper.numpy(), sb.upper.numpy())
    # inside IBP and the Thm 4.1 box
    ib = R.interval_bounds(model, torch.as_tensor(u0)[None], eps)
    assert np.all(sb.upper.numpy() <= ib.x_upper[0].numpy()) and np.all(sb.lower.numpy() >= ib.x_lower[0].numpy())
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
