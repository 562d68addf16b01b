"""Paper 004's input-to-state bound, paper 000 §4.4's rho-based worst-case cross entropy and JSMA:
each bound attacked by >= 10^4 sampled and gradient-attacked points, JSMA against analytic answers
and the saliency attack."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import idlkit
from idlkit.errors import ConfigurationError, InputError, ShapeError, WellPosednessError
from idlkit.model import ImplicitModel
from idlkit.robust import (
    Budget,
    attack,
    jsma_attack,
    lipschitz_bound,
    state_linf_bound,
    state_lipschitz_bound,
    success_rate,
    worst_case_loss,
)
from idlkit.wellposed import mu_parametrization

torch.set_num_threads(1)
F64 = torch.float64


def mu_model(seed: int, act: str = "relu", n: int = 6, p: int = 4, q: int = 3, g: float = 0.5,
             spread: float = 2.0) -> ImplicitModel:
    """``A = T - diag(|T| 1) + g I``: ``mu_inf(A) <= g`` with ``||A||_inf`` large (> 1)."""
    gen = torch.Generator().manual_seed(seed)
    T = torch.randn(n, n, generator=gen, dtype=F64) * spread / n
    A = mu_parametrization(T, g)
    B = torch.randn(n, p, generator=gen, dtype=F64)
    C = torch.randn(q, n, generator=gen, dtype=F64)
    D = torch.randn(q, p, generator=gen, dtype=F64) * 0.3
    return ImplicitModel.from_matrices(A, B, C, D, b=torch.randn(n, generator=gen, dtype=F64),
                                       activation=act, wellposedness="mu", kappa=0.9, tol=1e-12,
                                       max_iter=20_000)


def _inf(M: torch.Tensor) -> float:
    return max(sum(abs(float(M[i, j])) for j in range(M.shape[1])) for i in range(M.shape[0]))


def _mu(M: torch.Tensor) -> float:
    n = M.shape[0]
    return max(float(M[i, i]) + sum(abs(float(M[i, j])) for j in range(n) if j != i)
               for i in range(n))


# ----------------------------------------------------------------------------- input-to-state


@pytest.mark.parametrize("act,gamma", [("relu", 1.0), ("tanh", 1.0), ("sigmoid", 0.25)])
@pytest.mark.parametrize("seed", range(2))
def test_state_lipschitz_mu_never_violated(act: str, gamma: float, seed: int) -> None:
    model = mu_model(seed, act, g=0.5 if seed == 0 else -0.3)
    A, B = model.A.detach(), model.B.detach()
    assert _inf(A) > 1 > gamma * _mu(A)
    if gamma * _inf(A) >= 1:  # eq. 4.8 / the "inf" measure do not apply
        with pytest.raises(WellPosednessError):
            state_lipschitz_bound(model, "inf")
    L = state_lipschitz_bound(model, "mu")
    written = gamma * _inf(B) / (1 - gamma * max(_mu(A), 0.0))
    assert L == pytest.approx(written, rel=1e-12) and L >= written
    assert state_lipschitz_bound(model, "best") <= L
    # the output bound is ||C|| times it plus ||D||
    assert lipschitz_bound(model, "mu") == pytest.approx(
        written * _inf(model.C.detach()) + _inf(model.D.detach()), rel=1e-12)
    # state_linf_bound(measure="mu") is the same bound on a box
    assert state_linf_bound(model, 0.3, measure="mu") == pytest.approx(0.3 * L, rel=1e-12)
    gen = torch.Generator().manual_seed(seed)
    m = 10_000
    U = torch.randn(m, model.in_features, generator=gen, dtype=F64) * 2
    r = torch.rand(m, 1, generator=gen, dtype=F64) * 0.5 + 0.01
    dU = (torch.rand(U.shape, generator=gen, dtype=F64) * 2 - 1)
    dU = dU / dU.abs().amax(1, keepdim=True) * r  # ||du||_inf = r exactly
    with torch.no_grad():
        X, Xd = model.equilibrium(U), model.equilibrium(U + dU)
    ratio = (X - Xd).abs().amax(1) / dU.abs().amax(1)
    slack = 1e-9 / 0.01  # the solver's tolerance over the smallest radius
    assert int((ratio > L + slack).sum()) == 0, float(ratio.max())
    # gradient attack: sign ascent of ||x(u + d) - x(u)||_2^2 over ||d||_inf <= 0.2
    U0 = U[:64].clone()
    with torch.no_grad():
        X0 = model.equilibrium(U0)
    d = (torch.rand(U0.shape, generator=gen, dtype=F64) * 2 - 1) * 0.2
    worst = 0.0
    for _ in range(25):
        d.requires_grad_(True)
        Xa = model.equilibrium(U0 + d)
        worst = max(worst, float(((Xa - X0).abs().amax(1) / d.abs().amax(1)).max()))
        (g,) = torch.autograd.grad(((Xa - X0) ** 2).sum(), d)
        with torch.no_grad():
            d = (d + 0.05 * g.sign()).clamp(-0.2, 0.2)
    assert worst <= L + slack
    assert worst >= 0.05 * L  # the attack found something: the test can fail


def test_state_lipschitz_inf_and_sensitivity_forms() -> None:
    torch.manual_seed(0)
    model = ImplicitModel(5, 7, 3, kappa=0.8, dtype=F64)
    A, B = model.A.detach(), model.B.detach()
    assert state_lipschitz_bound(model, "inf") == pytest.approx(_inf(B) / (1 - _inf(A)), rel=1e-12)
    absA, absB = A.abs().numpy(), B.abs().numpy()
    S = np.linalg.solve(np.eye(7) - absA, absB)
    assert state_lipschitz_bound(model, "sensitivity") == pytest.approx(S.sum(1).max(), rel=1e-9)
    assert state_lipschitz_bound(model, "best") <= state_lipschitz_bound(model, "inf")


def test_state_lipschitz_errors() -> None:
    with pytest.raises(ConfigurationError):
        state_lipschitz_bound(mu_model(0), "no_such_measure")
    with pytest.raises(ConfigurationError, match="monotone"):
        state_lipschitz_bound(mu_model(0, "gelu"), "mu")
    with pytest.raises(InputError, match=">= 0"):
        state_linf_bound(mu_model(0), -0.1, measure="mu")
    with pytest.raises(ConfigurationError):
        state_linf_bound(mu_model(0), 0.1, measure="sensitivity")


# ----------------------------------------------------------------------------- rho bound


def _ce(model: ImplicitModel, U: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(U), Y, reduction="none")


def _attack_ce(model: ImplicitModel, U0: torch.Tensor, Y: torch.Tensor, sigma: float,
               steps: int = 20) -> torch.Tensor:
    """PGD on the cross entropy over the box |u - u0| <= sigma: the largest loss seen."""
    gen = torch.Generator().manual_seed(1)
    U = U0 + (torch.rand(U0.shape, generator=gen, dtype=F64) * 2 - 1) * sigma
    best = _ce(model, U, Y)
    for _ in range(steps):
        U.requires_grad_(True)
        loss = F.cross_entropy(model(U), Y, reduction="none")
        (g,) = torch.autograd.grad(loss.sum(), U)
        with torch.no_grad():
            best = torch.maximum(best, loss.detach())
            U = torch.minimum(torch.maximum(U + sigma / 4 * g.sign(), U0 - sigma), U0 + sigma)
    return torch.maximum(best, _ce(model, U, Y))


@pytest.mark.parametrize("seed,sigma,k", [(0, 0.1, None), (1, 0.3, None), (2, 0.2, 2)])
def test_rho_bound_above_refined_above_attacked_losses(seed: int, sigma: float, k: int | None) -> None:
    torch.manual_seed(seed)
    model = ImplicitModel(6, 8, 4, kappa=0.8, dtype=F64, tol=1e-12, max_iter=5000)
    gen = torch.Generator().manual_seed(seed)
    U0 = torch.rand(20, 6, generator=gen, dtype=F64)
    Y = torch.randint(0, 4, (20,), generator=gen)
    ref = worst_case_loss(model, U0, Y, sigma, "cross_entropy", k=k)
    for meas in ("inf", "box"):
        rho = worst_case_loss(model, U0, Y, sigma, "cross_entropy", k=k, bound="rho", rho_measure=meas)
        assert rho.kind == "rho" and rho.rho.shape == (20,)
        assert bool((rho.bound >= ref.bound).all())  # one-hot targets: rho >= refined
        torch.testing.assert_close(rho.nominal, ref.nominal)
    best = worst_case_loss(model, U0, Y, sigma, "cross_entropy", k=k, bound="rho", rho_measure="best")
    sq_ref = worst_case_loss(model, U0, torch.nn.functional.one_hot(Y, 4).to(F64), sigma, k=k)
    sq_rho = worst_case_loss(model, U0, torch.nn.functional.one_hot(Y, 4).to(F64), sigma, k=k,
                             bound="rho")
    assert bool((sq_rho.bound >= sq_ref.bound).all())
    # 500 sampled points of the set per sample (vertices half of them): 10^4 trials
    m = 500
    R = torch.rand(20, m, 6, generator=gen, dtype=F64) * 2 - 1
    R[:, : m // 2] = R[:, : m // 2].sign()
    if k is not None:
        keep = torch.rand(20, m, 6, generator=gen).argsort(-1) < k
        R = torch.where(keep, R, torch.zeros_like(R))
    Us = (U0[:, None, :] + sigma * R).reshape(-1, 6)
    Ys = Y.repeat_interleave(m)
    losses = _ce(model, Us, Ys).reshape(20, m).amax(1)
    with torch.no_grad():
        sq = ((model(Us) - torch.nn.functional.one_hot(Ys, 4).to(F64)) ** 2).sum(1).reshape(20, m)
    assert int((losses > ref.bound).sum()) == 0
    assert int((losses > best.bound).sum()) == 0
    assert int((sq.amax(1) > sq_ref.bound).sum()) == 0
    if k is None:
        adv = _attack_ce(model, U0, Y, sigma)
        assert int((adv > ref.bound).sum()) == 0 and int((adv > best.bound).sum()) == 0
        assert bool((adv >= ref.nominal - 1e-12).all())


def test_rho_bound_with_mu_measure_where_refined_fails() -> None:
    """||A||_inf > 1 and lambda_pf(|A|) > 1: only paper 004's radius gives a bound."""
    model = mu_model(3, spread=4.0)
    gen = torch.Generator().manual_seed(0)
    U0 = torch.randn(10, 4, generator=gen, dtype=F64)
    Y = torch.randint(0, 3, (10,), generator=gen)
    with pytest.raises(WellPosednessError):
        worst_case_loss(model, U0, Y, 0.1, "cross_entropy")
    r = worst_case_loss(model, U0, Y, 0.1, "cross_entropy", bound="rho", rho_measure="mu")
    r2 = worst_case_loss(model, U0, Y, 0.1, "cross_entropy", bound="rho", rho_measure="best")
    torch.testing.assert_close(r.bound, r2.bound)
    R = torch.rand(10, 1000, 4, generator=gen, dtype=F64) * 2 - 1
    R[:, :500] = R[:, :500].sign()
    Us = (U0[:, None, :] + 0.1 * R).reshape(-1, 4)
    losses = _ce(model, Us, Y.repeat_interleave(1000)).reshape(10, 1000).amax(1)
    assert int((losses > r.bound).sum()) == 0
    adv = _attack_ce(model, U0, Y, 0.1)
    assert int((adv > r.bound).sum()) == 0


def test_rho_bound_soft_targets_and_errors() -> None:
    torch.manual_seed(4)
    model = ImplicitModel(3, 5, 3, kappa=0.7, dtype=F64, tol=1e-12)
    U0 = torch.rand(6, 3, dtype=F64)
    Y = torch.softmax(torch.randn(6, 3, dtype=F64), 1)
    r = worst_case_loss(model, U0, Y, 0.2, "cross_entropy", bound="rho")
    R = torch.rand(6, 2000, 3, dtype=F64) * 2 - 1
    Us = (U0[:, None, :] + 0.2 * R).reshape(-1, 3)
    with torch.no_grad():
        out = model(Us).reshape(6, 2000, 3)
    ce = (torch.logsumexp(out, -1) - (Y[:, None, :] * out).sum(-1)).amax(1)
    assert int((ce > r.bound).sum()) == 0
    with pytest.raises(ConfigurationError):
        worst_case_loss(model, U0, Y, 0.2, "cross_entropy", bound="nope")
    with pytest.raises(ConfigurationError):
        worst_case_loss(model, U0, Y, 0.2, "cross_entropy", bound="rho", rho_measure="nope")
    with pytest.raises(InputError, match=">= 0"):
        worst_case_loss(model, U0, Y, -0.2, "cross_entropy", bound="rho")
    with pytest.raises(ShapeError):
        worst_case_loss(model, U0, Y[:3], 0.2, "cross_entropy", bound="rho")


# ----------------------------------------------------------------------------- JSMA


def _linear(w1: list[float]) -> ImplicitModel:
    """Two classes, ``y = D u + d`` with ``D = [-w; w]``, ``d = (1, 0)``: class 0 at ``u = 0``."""
    w = torch.tensor(w1, dtype=F64)
    p = w.numel()
    return ImplicitModel.from_matrices(torch.zeros(1, 1, dtype=F64), torch.zeros(1, p, dtype=F64),
                                       torch.zeros(2, 1, dtype=F64), torch.stack([-w, w]),
                                       d=torch.tensor([1.0, 0.0], dtype=F64))


def test_jsma_linear_model_analytic() -> None:
    # margin after raising the features in S to 1: 2 sum_{i in S} w_i - 1; alpha = w, beta = -w,
    # so the saliency of a pair is (w_p + w_q)^2: the pair (1, 2) first, one iteration
    model = _linear([0.3, 0.8, 0.6, 0.1])
    u, y = torch.zeros(1, 4, dtype=F64), torch.tensor([0])
    r = jsma_attack(model, u, y, Budget(clip=(0.0, 1.0)), target=1)
    assert r.u_adv.tolist() == [[0.0, 1.0, 1.0, 0.0]] and bool(r.success[0])
    # one feature allowed: the best single one (w = 0.8) suffices
    r = jsma_attack(model, u, y, Budget(k=1, clip=(0.0, 1.0)))
    assert r.u_adv.tolist() == [[0.0, 1.0, 0.0, 0.0]] and int(r.extra["target"][0]) == 1
    # with the largest w = 0.45, one feature cannot flip it (2 * 0.45 < 1): failure, 1 change
    model = _linear([0.3, 0.45, 0.4, 0.1])
    r = jsma_attack(model, u, y, Budget(k=1, clip=(0.0, 1.0)))
    assert not bool(r.success[0]) and int(r.n_perturbed[0]) == 1
    # small steps (theta = 0.25 within epsilon = 0.5): 2 (0.45 + 0.4) 0.5 = 0.85 < 1 fails,
    # with three features 2 (0.45 + 0.4 + 0.3) 0.5 = 1.15 > 1 succeeds
    r2 = jsma_attack(model, u, y, Budget(k=2, epsilon=0.5, clip=(0.0, 1.0)), theta=0.25)
    assert not bool(r2.success[0]) and r2.u_adv.tolist() == [[0.0, 0.5, 0.5, 0.0]]
    r3 = jsma_attack(model, u, y, Budget(k=3, epsilon=0.5, clip=(0.0, 1.0)), theta=0.25)
    assert bool(r3.success[0]) and int(r3.n_perturbed[0]) == 3
    # decreasing features (theta < 0) on the mirrored model starting at 1
    mirrored = _linear([-0.3, -0.8, -0.6, -0.1])
    with torch.no_grad():
        mirrored.d.copy_(torch.tensor([1.0 - 2 * 1.8, 0.0], dtype=F64))  # class 0 at u = 1
    u1 = torch.ones(1, 4, dtype=F64)
    assert int(mirrored(u1).argmax()) == 0
    r = jsma_attack(mirrored, u1, y, Budget(clip=(0.0, 1.0)), theta=-1.0, target=1)
    assert r.u_adv.tolist() == [[1.0, 0.0, 0.0, 1.0]] and bool(r.success[0])


@pytest.mark.parametrize("mixed", [False, True])
def test_jsma_respects_budget(mixed: bool) -> None:
    torch.manual_seed(0)
    model = ImplicitModel(8, 10, 3, kappa=0.8, dtype=F64, tol=1e-10)
    U = torch.rand(30, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        Y = model(U).argmax(1)
    for budget in (Budget(k=3, epsilon=0.2, clip=(0.0, 1.0)), Budget(k=2, clip=(0.0, 1.0))):
        res = attack(model, U, Y, budget, method="jsma", theta=0.1, mixed=mixed)
        d = (res.u_adv - U).abs()
        if budget.epsilon is not None:
            assert float(d.max()) <= budget.epsilon + 1e-12
        assert float(res.u_adv.min()) >= 0 and float(res.u_adv.max()) <= 1
        assert int(res.n_perturbed.max()) <= budget.k
        with torch.no_grad():
            assert torch.equal(res.success, model(res.u_adv).argmax(1) != Y)
    one = jsma_attack(model, U[0], Y[0], Budget(k=2, epsilon=0.3, clip=(0.0, 1.0)))
    assert one.u_adv.shape == (8,)


def test_jsma_at_least_as_strong_as_saliency_on_digits() -> None:
    d = idlkit.datasets.load("digits")
    Xtr, ytr = torch.as_tensor(d.x_train), torch.as_tensor(d.y_train)
    Xte, yte = torch.as_tensor(d.x_test)[:150], torch.as_tensor(d.y_test)[:150]
    torch.manual_seed(0)
    model = ImplicitModel(64, 24, 10, "relu", kappa=0.9)
    idlkit.train.Trainer(lr=5e-3, epochs=4, batch_size=64, seed=0).fit(model, (Xtr, ytr))
    budget = Budget(k=4, epsilon=0.5, clip=(0.0, 1.0))
    sal = success_rate(model, "saliency", Xte, yte, budget)
    js = success_rate(model, "jsma", Xte, yte, budget, theta=0.5)  # Papernot's: increase, softmax
    assert sal.clean_accuracy > 0.8 and sal.n_attacked == js.n_attacked
    assert js.rate >= sal.rate, (js.rate, sal.rate)  # measured: 0.61 vs 0.49
    assert js.mean_perturbed <= 4


def test_jsma_errors() -> None:
    model = _linear([0.3, 0.8])
    u, y = torch.zeros(2, 2, dtype=F64), torch.tensor([0, 0])
    b = Budget(k=1, clip=(0.0, 1.0))
    with pytest.raises(ConfigurationError, match="theta"):
        jsma_attack(model, u, y, b, theta=0.0)
    with pytest.raises(ConfigurationError, match="theta"):
        jsma_attack(model, u, y, b, theta=float("nan"))
    with pytest.raises(InputError, match="target"):
        jsma_attack(model, u, y, b, target=0)  # the true class
    with pytest.raises(InputError):
        jsma_attack(model, u, y, b, target=5)
    with pytest.raises(ShapeError):
        jsma_attack(model, u, y, b, target=torch.tensor([1, 1, 1]))
    with pytest.raises(ConfigurationError):
        jsma_attack(model, u, y, b, max_iter=0)
    with pytest.raises(ConfigurationError):
        jsma_attack(model, u, y, Budget(k=3, clip=(0.0, 1.0)))  # k > p
    with pytest.raises(ConfigurationError, match="unknown attack"):
        attack(model, u, y, b, method="jsmaa")
    with pytest.raises(ConfigurationError):
        Budget(k=1, epsilon=-0.1)
