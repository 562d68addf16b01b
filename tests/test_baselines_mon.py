"""MON (Winston & Kolter 2020), the l2 baseline of paper 004: equilibrium, implicit gradients,
monotonicity of I - W, and the certified l2 / l_inf Lipschitz bounds (tried to break)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from idlkit.baselines import MON
from idlkit.errors import ConfigurationError, ConvergenceError, InputError
from idlkit.robust import empirical_lipschitz

F64 = torch.float64


def _net(splitting: str = "peaceman_rachford", seed: int = 0, p: int = 5, n: int = 7, q: int = 3,
         m: float = 0.2) -> MON:
    torch.manual_seed(seed)
    return MON(p, n, q, m=m, splitting=splitting, tol=1e-12, max_iter=20_000, dtype=F64)


@pytest.mark.parametrize("splitting", ["peaceman_rachford", "forward_backward"])
def test_equilibrium_solves_the_fixed_point(splitting):
    net = _net(splitting)
    x = torch.randn(16, 5, dtype=F64)
    with torch.no_grad():
        z = net.equilibrium(x)
        W = net.W()
        # the fixed-point residual written out from W = (1 - m) I - P^T P + Q - Q^T
        res = (z - torch.relu(z @ W.T + x @ net.U.T + net.b)).abs().max()
    assert float(res) <= 1e-10
    assert net.last_residual <= 1e-12
    # both splittings land on the same (unique) equilibrium
    other = _net("forward_backward" if splitting == "peaceman_rachford" else "peaceman_rachford")
    with torch.no_grad():
        torch.testing.assert_close(other.equilibrium(x), z, rtol=0, atol=1e-9)


def test_I_minus_W_is_m_strongly_monotone():
    for seed in range(5):
        net = _net(seed=seed, n=12, m=0.07)
        with torch.no_grad():
            net.P.mul_(3.0)
            net.Q.mul_(5.0)
            S = torch.eye(12, dtype=F64) - net.W()
            eig = np.linalg.eigvalsh(((S + S.T) / 2).numpy())
        assert eig.min() >= 0.07 - 1e-10
        # tight: with P = 0 the smallest eigenvalue is exactly m
        with torch.no_grad():
            net.P.zero_()
            S = torch.eye(12, dtype=F64) - net.W()
        assert np.linalg.eigvalsh(((S + S.T) / 2).numpy()).min() == pytest.approx(0.07, abs=1e-12)


def test_gradients_match_finite_differences_and_dense_ift():
    net = _net()
    x = torch.randn(4, 5, dtype=F64, requires_grad=True)
    params = [net.U, net.P, net.Q, net.b, net.C, net.d]
    assert torch.autograd.gradcheck(lambda x: net(x), (x,), eps=1e-6, atol=1e-6)
    # parameter gradients against central finite differences of the loss
    w = torch.randn(4, 3, dtype=F64)
    loss = (net(x) * w).sum()
    grads = torch.autograd.grad(loss, params)
    for p, g in zip(params, grads, strict=True):
        idx = [tuple(int(i) for i in np.unravel_index(k, p.shape)) for k in range(0, p.numel(), 3)]
        for ix in idx:
            with torch.no_grad():
                old = p[ix].item()
                p[ix] = old + 1e-6
                lp = float((net(x) * w).sum())
                p[ix] = old - 1e-6
                lm = float((net(x) * w).sum())
                p[ix] = old
            assert g[ix].item() == pytest.approx((lp - lm) / 2e-6, abs=1e-6, rel=1e-5)
    # dense implicit-function-theorem Jacobian dz/dx = (I - D W)^-1 D U, per sample
    with torch.no_grad():
        W = net.W()
        z = net.equilibrium(x)
        D = torch.diag_embed(((z @ W.T + x @ net.U.T + net.b) > 0).to(F64))
        J_ref = torch.linalg.solve(torch.eye(7, dtype=F64) - D @ W, D @ net.U)
    for i in range(4):
        J = torch.autograd.functional.jacobian(lambda u: net.equilibrium(u[None])[0], x[i].detach())
        torch.testing.assert_close(J, J_ref[i], rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_certified_bounds_are_never_broken(seed):
    """l2 and l_inf certificates against 10^4 random pairs and gradient-attacked pairs."""
    net = _net(seed=seed, m=0.3)
    g = torch.Generator().manual_seed(seed)
    L2, Linf = net.lipschitz_l2(), net.lipschitz_inf()
    assert Linf == pytest.approx(math.sqrt(5) * L2)
    with torch.no_grad():
        u = torch.randn(10_000, 5, generator=g, dtype=F64)
        scale = torch.exp(torch.empty(10_000, 1, dtype=F64).uniform_(-6, 1, generator=g))
        v = u + scale * torch.randn(10_000, 5, generator=g, dtype=F64)
        dy, du = net(u) - net(v), u - v
    r2 = dy.norm(dim=1) / du.norm(dim=1)
    rinf = dy.abs().amax(dim=1) / du.abs().amax(dim=1)
    assert int((r2 > L2).sum()) == 0 and int((rinf > Linf).sum()) == 0
    U0 = torch.randn(100, 5, generator=g, dtype=F64)
    for norm, bound in (("2", L2), ("inf", Linf)):
        emp = empirical_lipschitz(net, U0, norm=norm, steps=100, generator=g)
        assert emp.trials >= 10_000
        assert 0 < emp.value <= bound
        assert emp.value >= float(r2.max() if norm == "2" else rinf.max()) * 0.99


def test_penalty_matches_bound_and_errors():
    net = _net()
    assert float(net.lipschitz_penalty("inf")) == pytest.approx(net.lipschitz_inf(), rel=1e-10)
    assert float(net.lipschitz_penalty("2")) == pytest.approx(net.lipschitz_l2(), rel=1e-10)
    with pytest.raises(ConfigurationError):
        net.lipschitz_penalty("1")
    with pytest.raises(ConfigurationError):
        MON(3, 4, 2, m=0.0)
    with pytest.raises(ConfigurationError):
        MON(3, 4, 2, m=1.5)
    with pytest.raises(ConfigurationError):
        MON(3, 4, 2, splitting="douglas")
    with pytest.raises(InputError):
        _net()(torch.randn(2, 5, dtype=torch.float32))
    slow = MON(3, 4, 2, splitting="forward_backward", max_iter=2, tol=1e-14, dtype=F64)
    with pytest.raises(ConvergenceError, match="max_iter"):
        slow(torch.randn(2, 3, dtype=F64))
