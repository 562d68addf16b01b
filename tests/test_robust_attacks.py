"""LP/SDP relaxations (paper 000 Thm 4.5, eq. 4.19) and attacks (§7.3): try to break the bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idlkit.errors import (
    ConfigurationError,
    InputError,
    NonFiniteError,
    ShapeError,
    SolverError,
    WellPosednessError,
)
from idlkit.model import ImplicitModel
from idlkit.robust import (
    Budget,
    attack,
    fgsm_attack,
    lp_attack,
    lp_margin_attack,
    saliency_attack,
    sdp_attack,
    sensitivity_attack,
    success_rate,
)
from idlkit.robust.lp import true_states

torch.set_num_threads(1)
VIOLATIONS = {"lp": 0, "sdp": 0, "checked": 0}


def random_model(seed: int, n: int, p: int, q: int = 3, kappa: float = 0.8) -> ImplicitModel:
    torch.manual_seed(seed)
    # picard: ||A||_inf <= kappa < 1 makes it a contraction
    return ImplicitModel(p, n, q, activation="relu", dtype=torch.float64, kappa=kappa, tol=1e-12,
                         max_iter=20_000, solver="picard")


def sample_set(rng: np.random.Generator, u0: np.ndarray, sigma: np.ndarray, k: int | None, m: int,
               clip: tuple[float, float] | None = None) -> np.ndarray:
    """Random points of the box (4.1) / cardinality set (4.2), with box vertices mixed in."""
    p = u0.size
    R = rng.uniform(-1, 1, (m, p))
    R[: m // 2] = np.sign(R[: m // 2])  # vertices
    if k is not None:
        keep = np.zeros((m, p), dtype=bool)
        for i in range(m):
            keep[i, rng.choice(p, size=k, replace=False)] = True
        R = np.where(keep, R, 0.0)
    U = u0 + R * sigma
    return U if clip is None else np.clip(U, *clip)


def l2_values(model: ImplicitModel, U: np.ndarray, x0: np.ndarray) -> np.ndarray:
    return ((true_states(model, U) - x0) ** 2).sum(axis=1)


def projected_ascent(model: ImplicitModel, u0: np.ndarray, sigma: np.ndarray, x0: np.ndarray,
                     starts: int = 4, steps: int = 40, seed: int = 0) -> float:
    """Adversary: projected gradient ascent of ||x(u) - x0||^2 over the box (implicit gradients)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = torch.as_tensor(u0 - sigma), torch.as_tensor(u0 + sigma)
    U = lo + (hi - lo) * torch.rand(starts, u0.size, generator=gen, dtype=torch.float64)
    x0t = torch.as_tensor(x0)
    best = 0.0
    step = float(sigma.max()) / 4 + 1e-12
    for _ in range(steps):
        U.requires_grad_(True)
        v = ((model.equilibrium(U) - x0t) ** 2).sum(dim=1)
        best = max(best, float(v.detach().max()))
        (g,) = torch.autograd.grad(v.sum(), U)
        with torch.no_grad():
            U = torch.minimum(torch.maximum(U + step * g.sign(), lo), hi)
    with torch.no_grad():
        best = max(best, float(((model.equilibrium(U) - x0t) ** 2).sum(dim=1).max()))
    return best


# ----------------------------------------------------------------------------- LP bound: never violated

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 15), p=st.integers(1, 8),
       kappa=st.sampled_from([0.3, 0.7, 0.95]), sigma=st.floats(0.01, 1.0),
       card=st.booleans(), clip=st.booleans())
def test_lp_l2_bound_holds(seed: int, n: int, p: int, kappa: float, sigma: float, card: bool,
                           clip: bool) -> None:
    model = random_model(seed, n, p, kappa=kappa)
    rng = np.random.default_rng(seed)
    u0 = rng.uniform(0.1, 0.9, p) if clip else rng.normal(size=p)
    k = int(rng.integers(0, p + 1)) if card else None
    box = (0.0, 1.0) if clip else None
    res = lp_attack(model, torch.as_tensor(u0), sigma, k, clip=box)
    x0 = res.extra["x0"]
    sig = np.full(p, sigma)
    # the attack is in its set
    ua = res.u_adv.numpy()
    assert np.all(np.abs(ua - u0) <= sig + 1e-12)
    if box:
        assert ua.min() >= 0 and ua.max() <= 1
    if k is not None:
        assert int((ua != u0).sum()) <= k
    U = sample_set(rng, u0, sig, k, 200, box)
    vals = l2_values(model, U, x0)
    tol = 1e-7 * (1 + abs(res.bound))
    bad = int((vals > res.bound + tol).sum()) + int(res.value > res.bound + tol)
    VIOLATIONS["lp"] += bad
    VIOLATIONS["checked"] += vals.size + 1
    assert bad == 0, (res.bound, vals.max(), res.value)
    assert res.value == pytest.approx(l2_values(model, ua[None], x0)[0], rel=1e-9, abs=1e-12)
    assert res.status == "optimal"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), p=st.integers(1, 6),
       sigma=st.floats(0.05, 1.0), card=st.booleans(), triangle=st.booleans())
def test_lp_linear_bound_holds(seed: int, n: int, p: int, sigma: float, card: bool, triangle: bool) -> None:
    _linear_case(seed, n, p, sigma, card, triangle)


def _linear_case(seed: int, n: int, p: int, sigma: float, card: bool, triangle: bool) -> None:
    model = random_model(seed, n, p, kappa=0.9)
    rng = np.random.default_rng(seed + 1)
    u0, c, e = rng.normal(size=p), rng.normal(size=n), rng.normal(size=p)
    k = int(rng.integers(1, p + 1)) if card else None
    res = lp_attack(model, torch.as_tensor(u0), sigma, k, objective="linear", c=c, e=e, const=0.5,
                    triangle=triangle)
    U = sample_set(rng, u0, np.full(p, sigma), k, 200)
    vals = true_states(model, U) @ c + U @ e + 0.5
    tol = 1e-7 * (1 + abs(res.bound))
    bad = int((vals > res.bound + tol).sum()) + int(res.value > res.bound + tol)
    VIOLATIONS["lp"] += bad
    VIOLATIONS["checked"] += vals.size + 1
    assert bad == 0


@pytest.mark.parametrize("seed", range(6))
def test_lp_bound_beats_projected_gradient_adversary(seed: int) -> None:
    n, p = 6 + seed, 2 + seed % 4
    model = random_model(100 + seed, n, p, kappa=0.7)
    u0 = np.random.default_rng(seed).normal(size=p)
    sig = np.full(p, 0.4)
    res = lp_attack(model, torch.as_tensor(u0), 0.4)
    adv = projected_ascent(model, u0, sig, res.extra["x0"], seed=seed)
    assert adv <= res.bound + 1e-7 * (1 + res.bound)
    assert res.value <= res.bound + 1e-7 * (1 + res.bound)


@pytest.mark.parametrize("seed", range(4))
def test_milp_tighter_than_hull_and_feasible(seed: int) -> None:
    model = random_model(200 + seed, 10, 6, kappa=0.8)
    u0 = torch.as_tensor(np.random.default_rng(seed).normal(size=6))
    hull = lp_attack(model, u0, 0.5, k=2, card_method="hull")
    milp = lp_attack(model, u0, 0.5, k=2, card_method="milp")
    box = lp_attack(model, u0, 0.5)
    assert milp.bound <= hull.bound + 1e-7 * (1 + hull.bound) <= box.bound + 2e-7 * (1 + box.bound)
    for r in (hull, milp):
        assert int(r.n_perturbed) <= 2
        assert r.value <= milp.bound + 1e-7 * (1 + milp.bound)


def test_lp_sparse_model_matches_dense() -> None:
    model = random_model(7, 9, 4, kappa=0.6)
    with torch.no_grad():
        sparse = ImplicitModel.from_matrices(model.A.to_sparse_csr(), model.B.to_sparse_csr(), model.C,
                                             model.D, model.b, model.d, tol=1e-12, max_iter=20_000)
    u0 = torch.linspace(-1, 1, 4, dtype=torch.float64)
    for k in (None, 2):
        a, b = lp_attack(model, u0, 0.3, k), lp_attack(sparse, u0, 0.3, k)
        assert a.bound == pytest.approx(b.bound, rel=1e-6, abs=1e-9)
        assert a.value == pytest.approx(b.value, rel=1e-6, abs=1e-9)


def test_lp_zero_radius_is_exact_nominal() -> None:
    model = random_model(3, 8, 3)
    u0 = torch.randn(3, dtype=torch.float64)
    res = lp_attack(model, u0, 0.0)
    assert res.value == pytest.approx(0.0, abs=1e-18)
    assert res.bound == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- SDP

@pytest.mark.parametrize("seed", range(3))
def test_sdp_bound_holds_and_both_extractions(seed: int) -> None:
    pytest.importorskip("cvxpy")
    n, p = 5 + seed, 3
    model = random_model(300 + seed, n, p, kappa=0.6)
    rng = np.random.default_rng(seed)
    u0 = rng.normal(size=p)
    res = sdp_attack(model, torch.as_tensor(u0), 0.3)
    vals = l2_values(model, sample_set(rng, u0, np.full(p, 0.3), None, 300), res.extra["x0"])
    tol = 1e-5 * (1 + res.bound)  # interior-point accuracy
    bad = int((vals > res.bound + tol).sum())
    bad += sum(int(v > res.bound + tol) for v in (res.extra["value_u"], res.extra["value_rank1"]))
    VIOLATIONS["sdp"] += bad
    assert bad == 0
    for key in ("u_opt", "u_rank1"):
        assert np.all(np.abs(res.extra[key] - u0) <= 0.3 + 1e-12)
    assert res.value == max(res.extra["value_u"], res.extra["value_rank1"])


# ----------------------------------------------------------------------------- attacks

def _clf(seed: int = 0, n: int = 10, p: int = 8,
         q: int = 3) -> tuple[ImplicitModel, torch.Tensor, torch.Tensor]:
    model = random_model(seed, n, p, q, kappa=0.8)
    U = torch.rand(30, p, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        Y = model(U).argmax(dim=1)
    return model, U, Y


@pytest.mark.parametrize("method", ["sensitivity", "saliency", "fgsm", "lp"])
@pytest.mark.parametrize("mode", ["sign", "random"])
def test_attacks_stay_in_their_set(method: str, mode: str) -> None:
    model, U, Y = _clf()
    U, Y = (U[:6], Y[:6]) if method == "lp" else (U, Y)
    k = None if method == "fgsm" else 3
    budget = Budget(k=k, epsilon=0.2, clip=(0.0, 1.0))
    opts = {"mode": mode} if method in ("sensitivity", "saliency") else {}
    if mode == "random" and not opts:
        pytest.skip("no random mode")
    res = attack(model, U, Y, budget, method=method, **opts)
    d = (res.u_adv - U).abs()
    assert float(d.max()) <= 0.2 + 1e-12
    assert float(res.u_adv.min()) >= 0 and float(res.u_adv.max()) <= 1
    if k is not None:
        assert int(res.n_perturbed.max()) <= k
    with torch.no_grad():
        assert torch.equal(res.success, model(res.u_adv).argmax(dim=1) != Y)
    if method == "lp":
        assert bool((res.value <= res.bound + 1e-7).all())  # certified margin bound


def test_sensitivity_attack_picks_largest_D_entries() -> None:
    q, p = 3, 10
    D = torch.zeros(q, p, dtype=torch.float64)
    D[0, [2, 7, 5]] = torch.tensor([3.0, -2.5, 2.0], dtype=torch.float64)
    D[1, [1, 4]] = torch.tensor([-4.0, 1.0], dtype=torch.float64)
    D[2, 9] = 1.0
    n = 2  # a state that does not depend on u (B = 0): S = |D|
    model = ImplicitModel.from_matrices(torch.zeros(n, n, dtype=torch.float64),
                                        torch.zeros(n, p, dtype=torch.float64),
                                        torch.zeros(q, n, dtype=torch.float64), D)
    u = torch.zeros(2, p, dtype=torch.float64)
    y = torch.tensor([0, 1])
    res = sensitivity_attack(model, u, y, Budget(k=2, epsilon=0.5))
    changed = res.u_adv != u
    assert changed[0].nonzero().flatten().tolist() == [2, 7]
    assert changed[1].nonzero().flatten().tolist() == [1, 4]
    # sign mode: the move lowers the true class's score
    assert float(D[0] @ res.u_adv[0]) < 0 and float(D[1] @ res.u_adv[1]) < 0


def test_fgsm_and_saliency_on_linear_model() -> None:
    D = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]], dtype=torch.float64)
    model = ImplicitModel.from_matrices(torch.zeros(1, 1, dtype=torch.float64),
                                        torch.zeros(1, 3, dtype=torch.float64),
                                        torch.zeros(2, 1, dtype=torch.float64), D)
    u = torch.tensor([[0.3, 0.0, 0.0]], dtype=torch.float64)  # class 0 by 0.6
    y = torch.tensor([0])
    f = fgsm_attack(model, u, y, 0.1)
    assert torch.allclose(f.u_adv, torch.tensor([[0.2, 0.1, -0.1]], dtype=torch.float64))
    s = saliency_attack(model, u, y, Budget(k=1, epsilon=0.1))
    assert (s.u_adv != u).nonzero()[:, 1].tolist() == [1]


def test_success_rate_toy() -> None:
    D = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    model = ImplicitModel.from_matrices(torch.zeros(1, 1, dtype=torch.float64),
                                        torch.zeros(1, 2, dtype=torch.float64),
                                        torch.zeros(2, 1, dtype=torch.float64), D)
    gen = torch.Generator().manual_seed(0)
    U = torch.rand(50, 2, dtype=torch.float64, generator=gen)
    Y = (U[:, 1] > U[:, 0]).long()
    gap = (U[:, 0] - U[:, 1]).abs()
    for method in ("sensitivity", "saliency", "fgsm", "lp"):
        kw = {"k": None} if method == "fgsm" else {"k": 2}
        r0 = success_rate(model, method, U, Y, Budget(epsilon=0.0, **kw), batch_size=16)
        assert r0.rate == 0 and r0.clean_accuracy == 1 and r0.n_attacked == 50
        r = success_rate(model, method, U, Y, Budget(epsilon=0.1, **kw), batch_size=16)
        # moving both coordinates by 0.1 in opposite directions flips exactly the gap < 0.2 samples
        assert r.n_success == int((gap < 0.2).sum())
    half = success_rate(model, "sensitivity", U, Y, Budget(k=1, epsilon=0.1), batch_size=7)
    assert half.n_success == int((gap < 0.1).sum())


# ----------------------------------------------------------------------------- errors

def test_errors() -> None:
    model = random_model(0, 5, 3)
    u0 = torch.zeros(3, dtype=torch.float64)
    tanh = ImplicitModel(3, 5, 2, activation="tanh", dtype=torch.float64)
    with pytest.raises(ConfigurationError, match="tanh"):
        lp_attack(tanh, u0, 0.1)
    with pytest.raises(ConfigurationError, match="ReLU"):
        sdp_attack(tanh, u0, 0.1)
    with pytest.raises(InputError, match="sigma_u"):
        lp_attack(model, u0, -0.1)
    with pytest.raises(NonFiniteError):
        lp_attack(model, u0, torch.tensor([0.1, float("nan"), 0.1]))
    with pytest.raises(ShapeError):
        lp_attack(model, u0, torch.ones(4))
    with pytest.raises(ShapeError):
        lp_attack(model, torch.zeros(4, dtype=torch.float64), 0.1)
    for k in (-1, 4, 1.5, True):
        with pytest.raises(ConfigurationError, match="k"):
            lp_attack(model, u0, 0.1, k=k)
    with pytest.raises(ConfigurationError):
        lp_attack(model, u0, 0.1, objective="linear")
    with pytest.raises(ConfigurationError):
        Budget(k=2)
    with pytest.raises(ConfigurationError):
        Budget(k=1.5, epsilon=0.1)
    with pytest.raises(ConfigurationError):
        Budget(epsilon=-1.0)
    with pytest.raises(ConfigurationError):
        attack(model, u0, 0, 0.1, method="nope")
    with pytest.raises(InputError):
        fgsm_attack(model, u0[None], torch.tensor([7]), 0.1)
    with pytest.raises(ConfigurationError):
        lp_margin_attack(model, u0[None], torch.tensor([0]), Budget(clip=(0.0, 1.0)))


def test_not_wellposed_raises() -> None:
    A = torch.tensor([[0.0, 1.2], [1.0, 0.0]], dtype=torch.float64)
    model = ImplicitModel.from_matrices(A, torch.eye(2, dtype=torch.float64),
                                        torch.eye(2, dtype=torch.float64),
                                        torch.zeros(2, 2, dtype=torch.float64), wellposedness=None)
    with pytest.raises(WellPosednessError, match="lambda_pf"):
        lp_attack(model, torch.zeros(2, dtype=torch.float64), 0.1)


def test_solver_failure_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import scipy.optimize

    class Fail:
        status, message, x, fun = 4, "numerical difficulties", None, None

    from idlkit.robust.lp import LPProblem

    monkeypatch.setattr(scipy.optimize, "linprog", lambda *a, **k: Fail())
    monkeypatch.setattr(LPProblem, "_solve_highspy", lambda self, obj: None)  # the linprog path
    model = random_model(0, 4, 2)
    with pytest.raises(SolverError, match="status 4"):
        lp_attack(model, torch.zeros(2, dtype=torch.float64), 0.1)


# ----------------------------------------------------------------------------- LP state bounds (Fig. 4.3)

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 10), p=st.integers(1, 6),
       sigma=st.floats(0.01, 1.0), card=st.booleans(), rounds=st.integers(1, 2))
def test_lp_state_bounds_contain_states_and_inside_box(seed: int, n: int, p: int, sigma: float, card: bool,
                                                       rounds: int) -> None:
    """Implicit LP bounds contain sampled true states and lie inside the Thm 4.1 box."""
    from idlkit.robust import lp_state_bounds, state_box_bound

    model = random_model(seed, n, p, kappa=0.8)
    rng = np.random.default_rng(seed + 7)
    u0 = rng.normal(size=p)
    k = int(rng.integers(1, p + 1)) if card else None
    sb = lp_state_bounds(model, torch.as_tensor(u0), sigma, k, rounds=rounds)
    lo, hi, x0 = sb.lower.numpy(), sb.upper.numpy(), sb.x0.numpy()
    X = true_states(model, sample_set(rng, u0, np.full(p, sigma), k, 200))
    tol = 1e-9 * (1 + np.abs(X))
    bad = int((X < lo - tol).sum() + (X > hi + tol).sum())
    VIOLATIONS["lp"] += bad
    VIOLATIONS["checked"] += X.size
    assert bad == 0
    sx = state_box_bound(model, sigma, k).numpy()
    slack = 1e-5 * (1 + np.abs(x0))  # solver-tolerance widening of lp.py
    assert np.all(hi <= x0 + sx + slack) and np.all(lo >= x0 - sx - slack)
    assert np.all(lo <= hi)


def test_lp_state_bounds_coords_and_tighten() -> None:
    from idlkit.robust import lp_state_bounds

    model = random_model(11, 8, 4, kappa=0.9)
    u0 = torch.linspace(-1, 1, 4, dtype=torch.float64)
    full = lp_state_bounds(model, u0, 0.3)
    sub = lp_state_bounds(model, u0, 0.3, coords=[5, 1])
    assert torch.allclose(sub.lower, full.lower[[5, 1]]) and torch.allclose(sub.upper, full.upper[[5, 1]])
    two = lp_state_bounds(model, u0, 0.3, rounds=2)
    assert torch.all(two.upper <= full.upper + 1e-9) and torch.all(two.lower >= full.lower - 1e-9)
    plain, tight = lp_attack(model, u0, 0.3), lp_attack(model, u0, 0.3, tighten=True)
    assert tight.bound <= plain.bound * (1 + 1e-7) + 1e-9
    assert tight.extra["n_lp"] > plain.extra["n_lp"]
    with pytest.raises(ConfigurationError):
        lp_state_bounds(model, u0, 0.3, rounds=0)
    with pytest.raises(ShapeError):
        lp_state_bounds(model, u0, 0.3, coords=[8])
    with pytest.raises(ConfigurationError):
        lp_attack(model, u0, 0.3, tighten=-1)


@pytest.mark.parametrize("seed", range(3))
def test_lp_tighten_bound_still_holds(seed: int) -> None:
    model = random_model(400 + seed, 7, 3, kappa=0.9)
    rng = np.random.default_rng(seed)
    u0 = rng.normal(size=3)
    for k in (None, 1):
        res = lp_attack(model, torch.as_tensor(u0), 0.5, k, tighten=2)
        vals = l2_values(model, sample_set(rng, u0, np.full(3, 0.5), k, 300), res.extra["x0"])
        bad = int((vals > res.bound + 1e-7 * (1 + res.bound)).sum()) + int(res.value > res.bound * (1 + 1e-7))
        VIOLATIONS["lp"] += bad
        assert bad == 0


def test_zero_violations_summary() -> None:
    """Runs last (file order): the property tests above found no violation."""
    assert VIOLATIONS["lp"] == 0 and VIOLATIONS["sdp"] == 0
