"""Empirical Lipschitz lower bound (gradient ascent over input pairs) and paper 004's inversion
attack: the certificates of the ||A||_inf and mu_inf models are never broken (>= 10^4 sampled and
>= 10^4 gradient-attacked pairs), the search finds the exact constant of a linear model, and the
attack is the written-out formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import idlkit as idl
from idlkit import wellposed as wp
from idlkit.baselines import MLP, MON
from idlkit.errors import ConfigurationError, InputError, NonFiniteError, ShapeError
from idlkit.robust import (
    ATTACKS,
    Budget,
    attack,
    empirical_lipschitz,
    inversion_attack,
    lipschitz_bound,
)

F64 = torch.float64


def _model(kind: str, seed: int, act: str = "relu") -> idl.ImplicitModel:
    torch.manual_seed(seed)
    p, n, q = 5, 8, 3
    if kind == "inf":
        return idl.ImplicitModel(p, n, q, act, wellposedness="inf", kappa=0.9, dtype=F64, tol=1e-12,
                                 max_iter=10_000)
    m = idl.ImplicitModel(p, n, q, act, wellposedness="mu", kappa=0.9, dtype=F64, solver="anderson",
                          tol=1e-11, max_iter=10_000)
    with torch.no_grad():  # a genuine mu model: ||A||_inf > 1 (Picard's certificate fails)
        m.A.copy_(wp.mu_parametrization(torch.randn(n, n, dtype=F64) * 1.5, 0.9))
    assert wp.inf_norm(m.A) > 1
    return m


def _sampled_ratios(model, g, count=10_000):
    with torch.no_grad():
        u = torch.randn(count, model.in_features, generator=g, dtype=F64) * 2
        scale = torch.exp(torch.empty(count, 1, dtype=F64).uniform_(-7, 1, generator=g))
        v = u + scale * torch.randn(u.shape, generator=g, dtype=F64)
        return (model(u) - model(v)).abs().amax(dim=1) / (u - v).abs().amax(dim=1)


@pytest.mark.parametrize(("kind", "measure", "act"), [("inf", "inf", "relu"), ("inf", "inf", "tanh"),
                                                      ("mu", "mu", "relu"), ("mu", "mu", "tanh")])
def test_certificate_never_broken(kind, measure, act):
    for seed in range(2 if act == "relu" else 1):
        model = _model(kind, seed, act)
        bound = lipschitz_bound(model, measure)
        g = torch.Generator().manual_seed(seed)
        sampled = _sampled_ratios(model, g)
        assert int((sampled > bound).sum()) == 0
        emp = empirical_lipschitz(model, torch.randn(100, 5, generator=g, dtype=F64), pairs=250,
                                  steps=40, generator=g)
        assert emp.trials >= 10_000
        assert int((emp.per_pair > bound).sum()) == 0 and emp.value <= bound
        # the ascent does at least as well as 10^4 random pairs, and its pair reproduces the value
        assert emp.value >= 0.99 * float(sampled.max())
        with torch.no_grad():
            y = model(torch.stack([emp.u, emp.v]))
        ratio = float((y[0] - y[1]).abs().max() / (emp.u - emp.v).abs().max())
        assert ratio == pytest.approx(emp.value, rel=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_linear_model_gives_the_exact_constant(seed):
    """Identity activation: y = (C (I - A)^-1 B + D) u, whose l_inf constant is the max row sum."""
    g = torch.Generator().manual_seed(seed)
    n, p, q = 6, 7, 4
    A = torch.randn(n, n, generator=g, dtype=F64)
    A = A * (0.8 / wp.inf_norm(A))
    B, C, D = (torch.randn(*s, generator=g, dtype=F64) for s in ((n, p), (q, n), (q, p)))
    model = idl.ImplicitModel.from_matrices(A, B, C, D, activation="identity", wellposedness="inf",
                                            kappa=0.9, tol=1e-13, max_iter=10_000)
    M = C.numpy() @ np.linalg.solve(np.eye(n) - A.numpy(), B.numpy()) + D.numpy()
    exact = float(np.abs(M).sum(axis=1).max())
    emp = empirical_lipschitz(model, torch.randn(32, p, generator=g, dtype=F64), steps=20,
                              generator=g)
    assert emp.value == pytest.approx(exact, rel=1e-8)
    assert emp.value <= exact * (1 + 1e-9)
    # l2: the spectral norm, approached by the normalised ascent (power-iteration like)
    emp2 = empirical_lipschitz(model, torch.randn(32, p, generator=g, dtype=F64), norm="2",
                               steps=200, generator=g)
    assert emp2.value == pytest.approx(float(np.linalg.norm(M, 2)), rel=1e-4)


def test_any_module_and_errors():
    torch.manual_seed(0)
    U = torch.randn(20, 6)
    for net in (MLP(6, (10,), 3), MON(6, 5, 3, m=0.2)):
        emp = empirical_lipschitz(net, U, steps=3, pairs=40)
        assert emp.value > 0 and emp.trials == 160 and emp.u.shape == (6,)
    with pytest.raises(ConfigurationError):
        empirical_lipschitz(MLP(6, (4,), 3), U, norm="1")
    with pytest.raises(ConfigurationError):
        empirical_lipschitz(MLP(6, (4,), 3), U, radius=(1.0, 0.1))
    with pytest.raises(ShapeError):
        empirical_lipschitz(MLP(6, (4,), 3), U[0])
    with pytest.raises(NonFiniteError):
        empirical_lipschitz(MLP(6, (4,), 3), U * float("nan"))
    with pytest.raises(ConfigurationError):
        empirical_lipschitz(lambda u: u, U)


def test_inversion_attack_is_the_formula():
    torch.manual_seed(0)
    model = idl.ImplicitModel(6, 5, 3, wellposedness="inf", kappa=0.9)
    u = torch.rand(10, 6)
    u[0, :2] = 0.5  # sign(0) = 0: untouched
    y = torch.randint(0, 3, (10,))
    for eps in (0.0, 0.1, 0.3, 0.8):
        r = inversion_attack(model, u, y, Budget(epsilon=eps, clip=(0.0, 1.0)))
        ref = np.clip(u.numpy() + eps * np.sign(0.5 - u.numpy()), 0, 1)
        np.testing.assert_allclose(r.u_adv.numpy(), ref, rtol=0, atol=1e-7)
        with torch.no_grad():
            logits = model(torch.as_tensor(ref))
        np.testing.assert_array_equal(r.success.numpy(), (logits.argmax(1) != y).numpy())
    # unclipped float budget = the paper's formula; registered under its name
    r = attack(model, u, y, 0.8, method="inversion")
    np.testing.assert_allclose(r.u_adv.numpy(), u.numpy() + 0.8 * np.sign(0.5 - u.numpy()), atol=1e-7)
    assert ATTACKS["inversion"] is inversion_attack
    # any classifier: MON and MLP
    for net in (MON(6, 4, 3, m=0.3), MLP(6, (8,), 3)):
        assert inversion_attack(net, u, y, 0.2).u_adv.shape == (10, 6)
    single = inversion_attack(model, u[0], int(y[0]), 0.2)
    assert single.u_adv.shape == (6,)
    with pytest.raises(ConfigurationError):
        inversion_attack(model, u, y, Budget(k=2, epsilon=0.1))
    with pytest.raises(InputError):
        inversion_attack(model, u, y.float(), 0.1)
    with pytest.raises(ShapeError):
        inversion_attack(model, u[:, :4], y, 0.1)
