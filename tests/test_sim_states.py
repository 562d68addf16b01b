"""idl.sim.extract_states: states, order, rescaling feasibility (paper 002 §3), no side effects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import idlkit as idl
from idlkit.errors import ConfigurationError, InputError, NonFiniteError, ShapeError
from idlkit.sim import States, extract_states

torch.set_num_threads(1)


class FunctionalMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(6, 8), nn.Linear(8, 5), nn.Linear(5, 3)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.l3(torch.relu(self.l2(F.relu(self.l1(u)))))


class SkipMLP(nn.Module):  # a skip connection: depths differ by 2 on one edge
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(6, 7), nn.Linear(7, 7), nn.Linear(7, 7)
        self.out = nn.Linear(7, 2)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h1 = F.relu(self.l1(u))
        h2 = F.relu(self.l2(h1))
        return self.out(F.relu(self.l3(h2) + h1))


def module_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 7), nn.LeakyReLU(0.1), nn.Linear(7, 3))


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4, 3))


def scaled_form(net: nn.Module, st: States, U: torch.Tensor):
    m = idl.convert.from_torch(net, U[:1], sparse=False)
    c = st.scale.to(st.Z.dtype)
    A = c[:, None] * m.A.detach() / c[None, :]
    B = c[:, None] * m.B.detach()
    b = c * m.b.detach()
    C = m.C.detach() / c[None, :]
    return m, A, B, b, C


def snapshot(net: nn.Module):
    return [(k, v.detach().clone(), v.dtype, v.device, v.requires_grad)
            for k, v in net.state_dict(keep_vars=True).items()]


def assert_unchanged(net: nn.Module, snap) -> None:
    now = net.state_dict(keep_vars=True)
    for k, v, dt, dev, rg in snap:
        w = now[k]
        assert w.dtype == dt and w.device == dev and w.requires_grad == rg
        assert torch.equal(w.detach(), v)


NETS = [("module_mlp", module_mlp, (6,)), ("functional_mlp", FunctionalMLP, (6,)),
        ("skip_mlp", SkipMLP, (6,)), ("cnn", small_cnn, (1, 6, 6))]


@pytest.mark.parametrize("name,make,shape", NETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layered_rescaled_feasible(name, make, shape, dtype) -> None:
    torch.manual_seed(0)
    net = make().eval()
    with torch.no_grad():  # make the weights large so that rescaling is needed
        for p in net.parameters():
            p.mul_(3.0)
    U = torch.randn(20, *shape)
    snap = snapshot(net)
    st = extract_states(net, U, dtype=dtype, kappa=0.9)
    assert_unchanged(net, snap)
    assert st.Z.dtype == st.X.dtype == st.Y_hat.dtype == st.U.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-11)
    # order and values = convert.states, up to the per-state factors
    net_d = net if dtype == torch.float32 else __import__("copy").deepcopy(net).double()
    Ud = U.to(dtype)
    Z0, X0 = idl.convert.states(net_d, Ud)
    c = st.scale.to(dtype)
    torch.testing.assert_close(st.Z, Z0 * c, **tol)
    torch.testing.assert_close(st.X, X0 * c, **tol)
    torch.testing.assert_close(st.Y_hat, net_d(Ud).detach().reshape(20, -1), **tol)
    assert st.divisor > 1.0
    # the converter's own matrices, rescaled the same way, match exactly with ||A'||_inf <= kappa
    m, A, B, b, C = scaled_form(net_d, st, Ud)
    assert float(A.abs().sum(1).max()) <= (1 / st.gamma) * (1 + 1e-6) < 0.9
    torch.testing.assert_close(st.Z, st.X @ A.t() + st.U @ B.t() + b, **tol)
    torch.testing.assert_close(st.X, st.activation(st.Z.t()).t(), **tol)
    Yhat = st.X @ C.t() + st.U @ m.D.detach().t() + m.d.detach()
    torch.testing.assert_close(Yhat, st.Y_hat, **tol)
    assert st.baseline_nnz == sum(int(torch.count_nonzero(p)) for p in net.parameters())


def test_float64_copy_leaves_float32_net_alone() -> None:
    torch.manual_seed(1)
    net = module_mlp()
    for p in net.parameters():
        assert p.requires_grad
    snap = snapshot(net)
    st = extract_states(net, torch.randn(5, 6), dtype=torch.float64)
    assert st.X.dtype == torch.float64
    assert_unchanged(net, snap)
    assert not st.X.requires_grad and not st.Z.requires_grad


def test_unscaled_equals_convert_states() -> None:
    torch.manual_seed(2)
    net = FunctionalMLP().double()
    U = torch.randn(8, 6, dtype=torch.float64)
    st = extract_states(net, U, rescale=False)
    Z0, X0 = idl.convert.states(net, U)
    assert torch.equal(st.Z, Z0) and torch.equal(st.X, X0)
    assert torch.all(st.scale == 1) and st.divisor == 1.0 and st.gamma is None


def test_tanh_rescale_refused_unscaled_ok() -> None:
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    U = torch.randn(6, 4)
    with pytest.raises(InputError, match="rescale=False"):
        extract_states(net, U)
    st = extract_states(net, U, rescale=False)
    torch.testing.assert_close(st.X, torch.tanh(st.Z))


def make_implicit(norm: float) -> idl.ImplicitModel:
    torch.manual_seed(3)
    m = idl.ImplicitModel(5, 8, 3, wellposedness=None, dtype=torch.float64)
    with torch.no_grad():
        A = torch.rand(8, 8, dtype=torch.float64)
        rows = torch.linspace(0.5, 1.0, 8, dtype=torch.float64)[:, None]
        m.A.copy_(A / A.abs().sum(1, keepdim=True) * norm * rows)
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_implicit_baseline(dtype) -> None:
    m = make_implicit(0.5)
    U = torch.randn(10, 5, dtype=torch.float64)
    snap = snapshot(m)
    st = extract_states(m, U, dtype=dtype)
    assert_unchanged(m, snap)
    tol = dict(rtol=1e-4, atol=1e-5)
    assert st.X.dtype == dtype
    torch.testing.assert_close(st.X, torch.relu(st.Z), **tol)
    torch.testing.assert_close(st.Z, st.X @ m.A.detach().to(dtype).t() + st.U @ m.B.detach().to(dtype).t()
                               + m.b.detach().to(dtype), **tol)
    torch.testing.assert_close(st.Y_hat, m(U).detach().to(dtype), **tol)
    assert torch.all(st.scale == 1)  # ||A||_inf = 0.5 < kappa: nothing to do


def test_implicit_baseline_perron_rescaling() -> None:
    m = make_implicit(1.2)  # ||A||_inf = 1.2 > kappa, lambda_pf(|A|) ~ 0.91 < kappa
    lam = float(torch.linalg.eigvals(m.A.detach().abs()).abs().max())
    assert lam < 0.99 < float(m.A.detach().abs().sum(1).max())
    U = torch.randn(10, 5, dtype=torch.float64)
    st = extract_states(m, U)
    c = st.scale
    A = c[:, None] * m.A.detach() / c[None, :]
    assert float(A.abs().sum(1).max()) < 0.99
    torch.testing.assert_close(st.Z, st.X @ A.t() + st.U @ (c[:, None] * m.B.detach()).t() + c * m.b.detach())
    torch.testing.assert_close(st.X, torch.relu(st.Z), rtol=1e-5, atol=1e-5)  # fixed point to solver tol
    with pytest.raises(idl.WellPosednessError, match="kappa"):
        extract_states(m, U, kappa=0.5)  # lambda_pf(|A|) ~ 0.91 > 0.5


def test_errors() -> None:
    U = torch.randn(4, 6)
    with pytest.raises(InputError, match="no activation"):
        extract_states(nn.Sequential(nn.Linear(6, 3), nn.Linear(3, 2)), U)
    net = module_mlp()
    for k in (0.0, 1.5, -1):
        with pytest.raises(ConfigurationError, match="kappa"):
            extract_states(net, U, kappa=k)
    with pytest.raises(ConfigurationError, match="gamma"):
        extract_states(net, U, kappa=0.5, gamma=1.5)
    with pytest.raises(ConfigurationError, match="dtype"):
        extract_states(net, U, dtype=torch.float16)
    bad = U.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(NonFiniteError):
        extract_states(net, bad)
    big = nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        big[0].weight.fill_(1e38)
    with pytest.raises(NonFiniteError, match="states|Z|X"):
        extract_states(big, torch.full((2, 6), 10.0))
    with pytest.raises(ShapeError, match="shape"):
        extract_states(net, torch.randn(4, 5))
    with pytest.raises(ShapeError):
        extract_states(net, torch.randn(6))
    with pytest.raises(ShapeError):
        extract_states(make_implicit(0.5), torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(InputError):
        extract_states(net, torch.ones(3, 6, dtype=torch.long))
