"""robust_fit (paper 001 §5) and its convex machinery (idlkit.train.robust_convex).

Independent references: brute-force vertex enumeration of the input box, sampled and PGD-attacked
inputs solved by the model's own solver, the cvxpy LP of the state block, robust.box_bounds
(Thm 4.1), the library's cross_entropy, and standard training by Trainer.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

import idlkit as idl
from idlkit.errors import ConfigurationError, InfeasibleError, InputError, ShapeError
from idlkit.train import robust_convex as rc

F64 = torch.float64


def _model(p: int = 4, n: int = 5, q: int = 3, seed: int = 0, kappa: float = 0.6) -> idl.ImplicitModel:
    torch.manual_seed(seed)
    m = idl.ImplicitModel(p, n, q, kappa=kappa, dtype=F64)
    with torch.no_grad():  # a dense A with both signs, at the boundary of the ball
        m.A.copy_(torch.randn(n, n, dtype=F64))
        m.project_()
    return m


def _data(m: int = 30, p: int = 4, q: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(m, p, generator=g, dtype=F64)
    Y = (U[:, :q] + 0.3 * torch.randn(m, q, generator=g, dtype=F64)).argmax(1)
    return U, Y


def _mats(model: idl.ImplicitModel) -> list[torch.Tensor]:
    return [getattr(model, k).detach().to(F64) for k in ("A", "B", "b", "C", "D", "d")]


def _box_points(U: torch.Tensor, s: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """(k + 2^p, m, p): random points and every vertex of each sample's box (k random vertices
    when p > 10)."""
    g = torch.Generator().manual_seed(seed)
    rnd = (torch.rand(k, *U.shape, generator=g, dtype=F64) * 2 - 1) * s
    p = U.shape[1]
    if p <= 10:  # every vertex
        verts = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=p)), dtype=F64)
    else:  # random vertices
        verts = torch.randint(0, 2, (k, p), generator=g).to(F64) * 2 - 1
    return torch.cat([rnd, (verts[:, None, :] * s).expand(-1, U.shape[0], -1)]) + U


def _pgd(model: idl.ImplicitModel, U: torch.Tensor, Y: torch.Tensor, s: torch.Tensor, steps: int = 20
         ) -> torch.Tensor:
    """Projected gradient ascent on the cross entropy inside the box (the attack that tries to break
    the bound)."""
    delta = torch.zeros_like(U)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(U + delta), Y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = torch.clamp(delta.detach() + 0.25 * s * grad.sign(), -s, s)
    return U + delta


# ----------------------------------------------------------------------------- the relaxation


def test_robust_counterpart_terms_are_the_box_worst_case() -> None:
    """g = |A R + B - R| sigma (|B| sigma for R = 0, §5.3) equals max over the 2^p vertices."""
    model = _model()
    A, B = _mats(model)[:2]
    s = torch.tensor([0.1, 0.3, 0.05, 0.2], dtype=F64)
    R = torch.randn(5, 4, dtype=F64)
    verts = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)), dtype=F64) * s
    for Rm in (torch.zeros_like(R), R):
        brute = (verts @ (A @ Rm + B - Rm).T).amax(0)
        assert torch.allclose(rc._g(A, B, Rm, s), brute, atol=1e-12)


def test_interval_is_the_box_bound_in_the_linear_regime_and_inside_it_otherwise() -> None:
    """With A, B >= 0 and every unit active, the interval map is linear and its fixed point is Thm
    4.1's box x0 +- (I - |A|)^-1 |B| sigma (robust.box_bounds); in general it lies inside that box."""
    U, _ = _data(12)
    s = torch.full((4,), 0.05, dtype=F64)
    model = _model()
    with torch.no_grad():
        model.A.abs_()
        model.B.abs_()
        model.b.fill_(5.0)
    st = rc.interval_states(model, U, s)
    bb = idl.robust.box_bounds(model, U, s)
    assert torch.allclose(st.hi, bb.x0 + bb.sigma_x, atol=1e-8)
    assert torch.allclose(st.lo, bb.x0 - bb.sigma_x, atol=1e-8)
    for seed in range(3):
        model = _model(seed=seed)
        st = rc.interval_states(model, U, 0.2 * torch.ones(4, dtype=F64))
        bb = idl.robust.box_bounds(model, U, 0.2)
        assert bool((st.lo >= bb.x_lower - 1e-9).all() and (st.hi <= bb.x_upper + 1e-9).all())
        assert float((st.hi - st.lo).sum()) < float((bb.x_upper - bb.x_lower).sum())


@pytest.mark.parametrize("recourse", [False, True])
def test_interval_contains_sampled_equilibria_and_loss_bound_is_never_broken(recourse: bool) -> None:
    model = _model(seed=3)
    U, Y = _data(10)
    s = torch.full((4,), 0.15, dtype=F64)
    R = 0.3 * torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(4)) if recourse else None
    st = rc.interval_states(model, U, s, R)
    A, B, b, C, D, d = _mats(model)
    M = rc.margin_bounds(C, D, d, st.R, s, U, Y, st.lo, st.hi)
    wc = rc.worst_case_cross_entropy(M)
    pts = _box_points(U, s, 200)
    worst_seen = torch.full((U.shape[0],), -math.inf, dtype=F64)
    with torch.no_grad():
        for P in pts:
            x = model.equilibrium(P)
            shift = (P - U) @ st.R.T
            assert bool((x >= st.lo + shift - 1e-8).all() and (x <= st.hi + shift + 1e-8).all())
            ce = torch.nn.functional.cross_entropy(model(P), Y, reduction="none")
            worst_seen = torch.maximum(worst_seen, ce)
            marg = model(P) - model(P).gather(1, Y[:, None])
            assert bool((marg <= M + 1e-8).all())
    atk = _pgd(model, U, Y, s)
    with torch.no_grad():
        ce_atk = torch.nn.functional.cross_entropy(model(atk), Y, reduction="none")
        worst_seen = torch.maximum(worst_seen, ce_atk)
    assert bool((worst_seen <= wc + 1e-8).all())
    # §5.4's printed bound (each output maximised separately) is never below ours
    c, r = (st.hi + st.lo) / 2, (st.hi - st.lo) / 2
    up = c @ C.T + r @ C.abs().T + U @ D.T + d + (C @ st.R + D).abs() @ s
    low = c @ C.T - r @ C.abs().T + U @ D.T + d - (C @ st.R + D).abs() @ s
    paper = torch.logsumexp(up, 1) - up.gather(1, Y[:, None])[:, 0] + (up - low).gather(1, Y[:, None])[:, 0]
    assert bool((wc <= paper + 1e-10).all())


def test_sigma_zero_collapses_to_the_equilibrium_and_the_nominal_cross_entropy() -> None:
    """The LP relaxation (eq. 17) at the nominal inputs: the interval is the equilibrium and the
    worst-case loss is the nominal cross entropy (train.cross_entropy)."""
    model = _model(seed=5)
    U, Y = _data(15)
    st = rc.interval_states(model, U, torch.zeros(4, dtype=F64))
    with torch.no_grad():
        x = model.equilibrium(U)
        ce = idl.train.cross_entropy(model(U), Y, reduction="none")
    assert torch.allclose(st.lo, x, atol=1e-6) and torch.allclose(st.hi, x, atol=1e-6)
    _, _, _, C, D, d = _mats(model)
    wc = rc.worst_case_cross_entropy(rc.margin_bounds(C, D, d, st.R, torch.zeros(4, dtype=F64), U, Y,
                                                     st.lo, st.hi))
    assert torch.allclose(wc, ce, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.0, 0.1])
def test_state_block_fixed_point_matches_cvxpy(sigma: float) -> None:
    """The first-order state block (fixed point) and the cvxpy LP of the state block agree."""
    model = _model(seed=6)
    U, Y = _data(12)
    s = torch.full((4,), sigma, dtype=F64)
    st = rc.interval_states(model, U, s)
    _, _, _, C, D, d = _mats(model)
    fp = float(rc.worst_case_cross_entropy(rc.margin_bounds(C, D, d, st.R, s, U, Y, st.lo, st.hi)).mean())
    cv, val = rc.state_step_cvx(model, U, Y, s)
    assert val == pytest.approx(fp, rel=1e-5, abs=1e-6)
    # the fixed point is the smallest feasible interval: every LP solution contains it (the LP may
    # have other optima, in states that the loss does not see)
    assert bool((cv.hi >= st.hi - 1e-5).all() and (cv.lo <= st.lo + 1e-5).all())
    assert rc.constraint_violation(model, U, s, st)[0] <= 1e-9


def test_recourse_state_block_never_worse_than_counterpart() -> None:
    """R = 0 is feasible for the recourse state block, so its optimum is <= the counterpart's."""
    model = _model(seed=7)
    U, Y = _data(12)
    s = torch.full((4,), 0.2, dtype=F64)
    _, v0 = rc.state_step_cvx(model, U, Y, s)
    st, v1 = rc.state_step_cvx(model, U, Y, s, recourse=True)
    assert v1 <= v0 + 1e-6
    viol, _ = rc.constraint_violation(model, U, s, st)
    assert viol <= 1e-6


# ----------------------------------------------------------------------------- robust_fit


def _certified_survive(model: idl.ImplicitModel, U: torch.Tensor, Y: torch.Tensor, s: torch.Tensor,
                       mask: torch.Tensor) -> None:
    if not bool(mask.any()):
        return
    Uc, Yc = U[mask], Y[mask]
    with torch.no_grad():
        for P in _box_points(Uc, s, 50):
            assert bool((model(P).argmax(1) == Yc).all())
    atk = _pgd(model, Uc, Yc, s)
    with torch.no_grad():
        assert bool((model(atk).argmax(1) == Yc).all())


@pytest.mark.parametrize("method", ["counterpart", "lp", "recourse"])
def test_robust_fit_cvxpy_certificate_holds_and_survives_attacks(method: str) -> None:
    model = _model(seed=8)
    U, Y = _data(24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = idl.train.robust_fit(model, (U, Y), 0.1, method, solver="cvxpy", iterations=2)
    assert res.solver == "cvxpy" and res.method == method and len(res.history) >= 1
    assert res.certificate_holds and res.certificate.violation <= 0
    assert float(model.A.abs().sum(1).max()) <= model.kappa + 1e-12
    objs = [h.objective for h in res.history]
    assert all(b <= a + 1e-6 for a, b in zip(objs, objs[1:], strict=False))
    s = res.sigma_u
    _certified_survive(model, U, Y, s, res.certificate.certified_mask)
    _certified_survive(model, U, Y, s, res.certified.certified_mask)
    assert (res.recourse is not None) == (method == "recourse")
    # the recorded robust loss is the certificate's (recomputed independently) at the training radius
    if method != "lp":
        assert res.history[-1].robust_loss == pytest.approx(res.certificate.worst_case_loss, rel=1e-6)


@pytest.mark.parametrize("method", ["counterpart", "lp", "recourse"])
def test_robust_fit_first_order_certificate_holds(method: str) -> None:
    model = _model(seed=10)
    U, Y = _data(40)
    res = idl.train.robust_fit(model, (U, Y), 0.1, method, solver="first_order", epochs=8, batch_size=16,
                               lr=2e-2)
    assert res.solver == "first_order" and len(res.history) == 8
    assert res.certificate_holds
    assert float(model.A.abs().sum(1).max()) <= model.kappa + 1e-12
    assert res.history[-1].robust_loss < res.history[0].robust_loss
    if method == "recourse":
        assert res.recourse is not None and float(res.recourse.abs().max()) > 0
    _certified_survive(model, U, Y, res.sigma_u, res.certificate.certified_mask)


def test_first_order_matches_cvxpy_objective() -> None:
    """Both paths minimise the same J(theta). Without states (n = 0: y = D u + d, the robust cross
    entropy with |D_j - D_t| sigma) J is convex: one cvxpy block is its global minimum, and the
    first-order path must reach it."""
    g = torch.Generator().manual_seed(1)
    U = torch.randn(24, 4, generator=g, dtype=F64)
    Y = U[:, :3].argmax(1)
    out = {}
    for solver, kw in (("cvxpy", {"iterations": 1, "prox": 0.0}),
                       ("first_order", {"epochs": 120, "batch_size": 24, "lr": 5e-2})):
        torch.manual_seed(0)
        model = idl.ImplicitModel(4, 0, 3, dtype=F64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = idl.train.robust_fit(model, (U, Y), 0.1, "counterpart", solver=solver,
                                       weight_decay=1e-2, **kw)
        out[solver] = res.history[-1].objective
        assert res.certificate_holds
    assert out["first_order"] >= out["cvxpy"] - 1e-6  # cvxpy's is the global minimum
    assert out["first_order"] == pytest.approx(out["cvxpy"], rel=2e-3)


def test_robust_training_raises_certified_accuracy_over_standard_training() -> None:
    """Digits (300 samples): the counterpart at sigma 0.03 vs Trainer, same model and budget; the
    certified accuracy is the library's Thm 4.1 box bound (robust.certified_accuracy)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    U = torch.tensor(X[:300] / 16.0, dtype=F64)
    Y = torch.tensor(y[:300])
    torch.manual_seed(0)
    std = idl.ImplicitModel(64, 16, 10, kappa=0.5, dtype=F64)
    torch.manual_seed(0)
    rob = idl.ImplicitModel(64, 16, 10, kappa=0.5, dtype=F64)
    idl.train.Trainer(epochs=10, lr=1e-2, batch_size=64).fit(std, (U, Y))
    c_std = idl.robust.certified_accuracy(std, U, Y, 0.03, method="box")
    res = idl.train.robust_fit(rob, (U, Y), 0.03, "counterpart", solver="first_order", epochs=10,
                               batch_size=64, lr=1e-2)
    assert res.certificate_holds
    assert res.certified.certified >= c_std.certified + 0.3, (res.certified, c_std)
    assert res.certified.accuracy >= c_std.accuracy - 0.08
    _certified_survive(rob, U[:60], Y[:60], res.sigma_u, res.certified.certified_mask[:60])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("sigma, err", [(-0.1, InputError), (float("nan"), InputError),
                                        (float("inf"), InputError), (torch.ones(3), ShapeError),
                                        ("x", InputError)])
def test_bad_sigma(sigma: object, err: type) -> None:
    U, Y = _data(6)
    with pytest.raises(err, match="sigma_u"):
        idl.train.robust_fit(_model(), (U, Y), sigma)


@pytest.mark.parametrize("kw", [{"weight_decay": -1.0}, {"l1": -1e-3}, {"prox": -1.0}, {"lr": 0.0},
                                {"iterations": 0}, {"certify_method": "nope"}, {"solver": "adam"},
                                {"attack": "pgd"}])
def test_bad_options(kw: dict) -> None:
    U, Y = _data(6)
    with pytest.raises(ConfigurationError):
        idl.train.robust_fit(_model(), (U, Y), 0.1, **kw)


def test_unknown_method_lists_the_registry() -> None:
    U, Y = _data(6)
    with pytest.raises(ConfigurationError, match="counterpart.*lp.*recourse.*adversarial"):
        idl.train.robust_fit(_model(), (U, Y), 0.1, "ibp")
    assert idl.train.ROBUST_METHODS == ("counterpart", "lp", "recourse", "adversarial")


def test_wrong_shapes_and_activation() -> None:
    U, Y = _data(6)
    with pytest.raises(ShapeError):
        idl.train.robust_fit(_model(), (U[:, :3], Y), 0.1)
    with pytest.raises(ShapeError):
        idl.train.robust_fit(_model(), (U, Y[:4]), 0.1)
    with pytest.raises(ShapeError):
        idl.train.robust_fit(_model(), (U, Y.double()), 0.1)
    with pytest.raises(InputError):
        idl.train.robust_fit(_model(), (U, Y + 5), 0.1)
    tanh = idl.ImplicitModel(4, 5, 3, activation="tanh", dtype=F64)
    with pytest.raises(ConfigurationError, match="relu"):
        idl.train.robust_fit(tanh, (U, Y), 0.1)


def test_infeasible_counterpart_names_rows_and_fix() -> None:
    U, Y = _data(6)
    model = _model()
    with pytest.raises(InfeasibleError, match=r"state rows \[.*samples.*smaller sigma_u"):
        idl.train.robust_fit(model, (U, Y), 5.0, state_bound=0.5, solver="cvxpy", iterations=1)


# ----------------------------------------------------------------------------- adversarial baseline


def test_adversarial_wraps_adversarial_fit() -> None:
    pytest.importorskip("idlkit.train.adversarial")
    model = _model()
    U, Y = _data(24)
    res = idl.train.robust_fit(model, (U, Y), 0.1, "adversarial", epochs=2)
    assert res.method == "adversarial" and res.solver == "adversarial" and len(res.history) == 2
    assert math.isnan(res.history[0].robust_loss)
    assert 0.0 <= res.certified.certified <= res.certified.accuracy <= 1.0
    np.testing.assert_allclose(res.sigma_u.numpy(), 0.1)
