"""Exact implicit forms of standard networks (paper 000 §3, paper 002 §3): idlkit.convert.

Every converted model is compared with the network itself on random inputs (float64 to
1e-10, float32 to 1e-5 relative to the output scale), for random architectures of every
supported kind with odd sizes, batch 1 and batch > 1; its A must be strictly upper
triangular and solved by one ``triangular`` sweep; ``states`` must list the blocks in the
same order (checked against forward hooks).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _convert_check import check_outputs
from torch import nn

import idlkit as idl
from idlkit.convert import SPARSE_AUTO_THRESHOLD, from_torch, resnet20, states
from idlkit.errors import ConversionError

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning",
                                        "ignore:Using padding='same':UserWarning")
F64, F32 = torch.float64, torch.float32
TOL = {F64: 1e-10, F32: 1e-5}


def randomize_bn(net: nn.Module, g: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters for every batch norm."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def check_exact(net: nn.Module, x: torch.Tensor, **kw: object) -> idl.ImplicitModel:
    return check_outputs(net, x, TOL, **kw)


class FunctionalMLP(nn.Module):
    def __init__(self, sizes: list[int], act: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False))
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = {"relu": F.relu, "trelu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
                     "leaky": lambda t: F.leaky_relu(t, 0.2), "mrelu": lambda t: t.relu()}[self.act](x)
        return F.softmax(x, dim=-1)


ACT_MODULES = [nn.ReLU, lambda: nn.LeakyReLU(0.05), nn.Tanh, nn.Sigmoid]


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("seed", range(4))
def test_mlp_modules_random(dtype: torch.dtype, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    depth = 1 + seed % 3
    sizes = [int(s) for s in torch.randint(1, 12, (depth + 2,), generator=g)]
    layers: list[nn.Module] = []
    for i in range(depth + 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bool((seed + i) % 2)))
        if i < depth:
            layers.append(ACT_MODULES[(seed + i) % 4]())
            if i % 2:
                layers.append(nn.Dropout(0.3))
    if seed % 2:
        layers.append(nn.Softmax(dim=1))
    net = nn.Sequential(nn.Sequential(*layers[:2]), *layers[2:]).to(dtype)  # nested Sequential
    for batch in (1, 5):
        check_exact(net, torch.randn(batch, sizes[0], dtype=dtype, generator=g).to(dtype) * 2)


@pytest.mark.parametrize("act", ["relu", "trelu", "tanh", "sigmoid", "leaky", "mrelu"])
def test_functional_forms_and_softmax_output(act: str) -> None:
    torch.manual_seed(1)
    net = FunctionalMLP([9, 7, 5, 4], act).double()
    for dtype in (F64, F32):
        net = net.to(dtype)
        model = check_exact(net, torch.randn(3, 9, dtype=dtype) * 3)
        assert model.hidden == 7 + 5 + 4  # two hidden layers and the softmax state (§3.1)


def small_cnn(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c_in = 1 + seed % 3
    groups = 2 if seed % 2 else 1
    c1 = 2 * (1 + seed % 3)
    net = nn.Sequential(
        nn.Conv2d(c_in, c1, 3, stride=1 + seed % 2, padding=seed % 3, dilation=1 + (seed // 2) % 2,
                  bias=bool(seed % 2)),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=2 + seed % 2, stride=2, padding=1, dilation=1 + seed % 2),
        nn.Conv2d(c1, 4, 3, padding=1, groups=groups),
        nn.AvgPool2d(2, ceil_mode=bool(seed % 2), count_include_pad=not seed % 3 == 0, padding=seed % 2),
        nn.Tanh(),
        nn.Dropout2d(0.5),
        nn.AdaptiveAvgPool2d((2, 3)),
        nn.Flatten(),
        nn.Linear(24, 5),
    )
    randomize_bn(net, g)
    return net, (c_in, 13 + seed, 11 + 2 * seed)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [F64, F32])
def test_cnn_random(seed: int, dtype: torch.dtype) -> None:
    net, shape = small_cnn(seed)
    net = net.to(dtype)
    for batch in (1, 3):
        model = check_exact(net, torch.randn(batch, *shape, dtype=dtype), sparse=True if seed % 2 else "auto")
        assert model.sparse == (bool(seed % 2) or model.hidden >= SPARSE_AUTO_THRESHOLD)


def test_conv1d_bn1d_and_functional_pools() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(3, 6, 5, stride=2, padding=3, dilation=2, groups=3)
            self.bn = nn.BatchNorm1d(6)
            self.c2 = nn.Conv2d(2, 3, (2, 3), padding="same")
            self.fc = nn.Linear(3 * 6 * 3, 7)
            self.bn1 = nn.BatchNorm1d(7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.leaky_relu(self.bn(self.c1(x)), 0.1)              # (B, 6, L)
            h = h.view(h.size(0), 2, 3, -1)                         # (B, 2, 3, L')
            h = F.max_pool2d(self.c2(h), 2, stride=1, padding=1)
            h = F.avg_pool2d(torch.sigmoid(h), (1, 2))
            h = F.adaptive_avg_pool2d(h, (6, 3))
            h = torch.flatten(h, 1)
            return self.bn1(self.fc(F.dropout(h, 0.5, training=self.training))) * 0.5 - 1.0

    torch.manual_seed(3)
    net = Net().double()
    randomize_bn(net, torch.Generator().manual_seed(3))
    for batch in (1, 4):
        check_exact(net, torch.randn(batch, 3, 22, dtype=F64))


class Residual(nn.Module):
    """``relu(x + W2 relu(W1 x))`` plus a projection shortcut block (paper 000 §3.4)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(5, 6)
        self.w1, self.w2 = nn.Linear(6, 9), nn.Linear(9, 6)
        self.proj = nn.Linear(6, 3, bias=False)
        self.w3 = nn.Linear(6, 3)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc0(u))
        x = F.relu(x + self.w2(F.relu(self.w1(x))))
        out = self.w3(x)
        out += self.proj(x)
        return torch.tanh(out) - x[:, :3]


def test_residual_blocks() -> None:
    torch.manual_seed(4)
    net = Residual().double()
    for batch in (1, 6):
        check_exact(net, torch.randn(batch, 5, dtype=F64))
    check_exact(net.float(), torch.randn(2, 5, dtype=F32))


def test_resnet20_exact_float64() -> None:
    """The ResNet-20 architecture (20 weight layers, three stages), narrow and on 12x12 images
    to stay fast; the full-width 32x32 network is converted in benchmarks/bench_convert.py."""
    torch.manual_seed(5)
    net = resnet20(num_classes=7, width=3, softmax=True).double()
    randomize_bn(net, torch.Generator().manual_seed(5))
    x = torch.randn(2, 3, 12, 12, dtype=F64)
    model = check_exact(net, x, sparse=True)
    assert model.sparse and model.A.layout == torch.sparse_csr
    n_conv = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in net.modules())
    assert n_conv == 19


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("layers", [1, 2])
def test_rnn_unrolled(nonlinearity: str, layers: int) -> None:
    torch.manual_seed(6)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 5, num_layers=layers, nonlinearity=nonlinearity, batch_first=True,
                              bias=layers == 1)
            self.fc = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, h = self.rnn(x)
            return self.fc(out[:, -1]) + self.fc(h[0]) + out[:, 1:].sum(dim=2) if False else \
                torch.cat([self.fc(out[:, -1]) + self.fc(h[0]), out[:, 1]], dim=1)

    net = Net().double()
    for batch in (1, 3):
        model = check_exact(net, torch.randn(batch, 7, 3, dtype=F64))
        assert model.hidden == 7 * 5 * layers  # one block per layer and time step (§3.5)


def test_states_order_matches_hooks_and_model() -> None:
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3),
                        nn.Softmax(dim=1)).double().eval()
    u = torch.randn(4, 6, dtype=F64)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append((i[0].detach(), o.detach())))
             for m in net if isinstance(m, nn.ReLU | nn.Tanh | nn.Softmax)]
    net(u)
    for h in hooks:
        h.remove()
    Z, X = states(net, u)
    # last layer on top: x = (x_3; x_2; x_1) (paper 002 §3)
    expect_z = torch.cat([z for z, _ in seen[::-1]], dim=1)
    expect_x = torch.cat([x for _, x in seen[::-1]], dim=1)
    assert torch.equal(Z, expect_z) and torch.equal(X, expect_x)
    model = from_torch(net, u)
    assert torch.allclose(model.equilibrium(u), X, atol=1e-12)
    Zm = X @ model.A.t() + u @ model.B.t() + model.b
    assert torch.allclose(Zm, Z, atol=1e-12)


def test_states_cnn_and_rnn_consistent_with_model() -> None:
    net, shape = small_cnn(1)
    net = net.double().eval()
    u = torch.randn(2, *shape, dtype=F64)
    Z, X = states(net, u)
    model = from_torch(net, u, sparse=True)
    assert torch.allclose(model.equilibrium(u), X, atol=1e-12)
    Zm = (model.A @ X.t()).t() + (model.B @ u.reshape(2, -1).t()).t() + model.b
    assert torch.allclose(Zm, Z, atol=1e-12)


def test_input_gradient_matches_network() -> None:
    torch.manual_seed(8)
    for net, shape in ((Residual().double(), (5,)), (small_cnn(2)[0].double(), small_cnn(2)[1])):
        net.eval()
        u = torch.randn(3, *shape, dtype=F64, requires_grad=True)
        model = from_torch(net, u.detach(), sparse=True)
        w = torch.randn(3, model.out_features, dtype=F64)
        g_net, = torch.autograd.grad((net(u).reshape(3, -1) * w).sum(), u)
        g_mod, = torch.autograd.grad((model(u) * w).sum(), u)
        assert torch.allclose(g_mod, g_net, atol=1e-10), float((g_mod - g_net).abs().max())


def test_sparse_and_dense_models_agree() -> None:
    net, shape = small_cnn(0)
    net = net.double().eval()
    u = torch.randn(2, *shape, dtype=F64)
    ms, md = from_torch(net, u, sparse=True), from_torch(net, u, sparse=False)
    assert torch.allclose(ms(u), md(u), atol=1e-12)
    assert torch.equal(ms.A.to_dense(), md.A)
    cs, cd = ms.certificate(), md.certificate()
    assert cs.triangular and cd.triangular and cs.pf == 0.0
    assert abs(cs.inf_norm - cd.inf_norm) < 1e-9
    assert [k for k, _ in ms.named_buffers()] == ["A", "B", "C", "D"]


def test_triangular_levels_follow_layers() -> None:
    torch.manual_seed(9)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    model = from_torch(net, torch.randn(2, 4, dtype=F64))
    model(torch.randn(3, 4, dtype=F64))
    assert model.last_solve.iterations == 2  # one level per hidden layer: one backward sweep
    assert model.hidden == 11


# ------------------------------------------------------------------ errors


def test_unsupported_module_named() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(ConversionError, match=r"'1'.*LayerNorm"):
        from_torch(net, torch.randn(2, 3))


def test_training_mode_batchnorm_and_dropout() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
    with pytest.raises(ConversionError, match="training mode"):
        from_torch(net.train(), torch.randn(2, 3))
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.2), nn.ReLU())
    with pytest.raises(ConversionError, match=r"dropout '1'.*training mode"):
        from_torch(net.train(), torch.randn(2, 3))
    bn = nn.BatchNorm1d(4, track_running_stats=False).eval()
    with pytest.raises(ConversionError, match="track_running_stats"):
        from_torch(nn.Sequential(nn.Linear(3, 4), bn), torch.randn(2, 3))


def test_dynamic_control_flow() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return self.fc(x)
            return x

    with pytest.raises(ConversionError, match="control flow"):
        from_torch(Net(), torch.randn(2, 3))


def test_shape_mismatch_and_bad_inputs() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ConversionError, match=r"'0'.*Linear.*shape mismatch"):
        from_torch(net, torch.randn(2, 5))
    with pytest.raises(ConversionError, match="dtype"):
        from_torch(net, torch.randn(2, 3, dtype=F64))
    with pytest.raises(ConversionError, match="nn.Module"):
        from_torch(lambda x: x, torch.randn(2, 3))  # type: ignore[arg-type]

    class Prod(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x) * x

    with pytest.raises(ConversionError, match="both factors bounded"):
        from_torch(Prod(), torch.randn(2, 3))

    class Soft(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(x, dim=0)

    with pytest.raises(ConversionError, match="not the batch"):
        from_torch(Soft(), torch.randn(2, 3, 4))


def test_nothing_half_converted_rnn_options() -> None:
    rnn = nn.RNN(3, 4)  # not batch_first
    with pytest.raises(ConversionError, match="batch_first"):
        from_torch(nn.Sequential(rnn), torch.randn(2, 5, 3))


def test_model_rejects_wrong_input_after_conversion() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU()).double()
    model = from_torch(net, torch.randn(2, 3, dtype=F64))
    with pytest.raises(idl.ShapeError):
        model(torch.randn(2, 4, dtype=F64))
    assert np.isclose(model.certificate().pf, 0.0)


def test_spy_draws_converted_resnet(tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from idlkit import plot

    net = resnet20(width=2).double().eval()
    model = from_torch(net, torch.randn(1, 3, 8, 8, dtype=F64), sparse=True)
    ax = plot.spy(model)
    assert "nonzeros" in ax.get_title()
    ax.figure.savefig(tmp_path / "spy.png", dpi=50)
    assert (tmp_path / "spy.png").stat().st_size > 0


class _RefusedInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return F.hardshrink(self.lin(x))  # unsupported: the error must point here


def test_conversion_error_points_at_the_users_line():
    with pytest.raises(ConversionError) as info:
        idl.convert.from_torch(_RefusedInForward().eval(), torch.randn(2, 4))
    msg = str(info.value)
    assert "hardshrink" in msg and "test_convert.py" in msg and "F.hardshrink(self.lin(x))" in msg
    assert "torch/fx" not in msg


class _Reductions(nn.Module):
    """Global average pooling written as tensor reductions (as many ResNets do)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.lin = nn.Linear(9, 2)

    def forward(self, x):
        h = F.relu(self.conv(x))
        parts = [h.mean(dim=(2, 3)), h.sum(3).mean(2), torch.mean(h, dim=[2, 3], keepdim=True).flatten(1)]
        return self.lin(torch.cat(parts, dim=1))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_mean_and_sum_reductions(dtype, tol):
    torch.manual_seed(0)
    net = _Reductions().eval().to(dtype)
    u = torch.randn(3, 2, 5, 6, dtype=dtype)
    model = from_torch(net, u[:1])
    torch.testing.assert_close(model(u), net(u), rtol=0, atol=tol)
    torch.testing.assert_close(model(u[:1]), net(u[:1]), rtol=0, atol=tol)


class _BatchMean(nn.Module):
    def forward(self, x):
        return x.mean()


def test_reduction_over_the_batch_is_refused():
    with pytest.raises(ConversionError, match="mixes the samples"):
        from_torch(_BatchMean(), torch.randn(2, 3))
