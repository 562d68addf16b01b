"""from_torch on every torch nonlinearity idlkit has a map for (paper 000 §2.1, §3.1).

Each activation, as a module (with its parameters, in-place variants included) and in its
functional / ``torch.*`` / tensor-method forms, sits in a small random float64 network; the
converted model must reproduce the network to 1e-12 (relative to the output scale), ``states``
must match the model's equilibrium (and ``Z = X A^T + U B^T + b``), the certificate must say
triangular, and the input gradient must match torch's autograd on the network. Maps without an
exact implicit form (discontinuous maps, LogSoftmax, unbounded GLU, training-mode RReLU, a
negative or per-channel PReLU slope) are refused with a ConversionError naming the node and
the reason.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from _convert_check import check_exact
from torch import nn

from idlkit.convert import from_torch, states
from idlkit.errors import ConversionError

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
F64 = torch.float64


# torch's own float64 backward rounds a constant to float32 (hardsigmoid's 1/6: 5e-9 off);
# the converted model uses the exact derivative
GRAD_TOL = {"Hardsigmoid": 1e-7, "F.hardsigmoid": 1e-7}


class Stack(nn.Module):
    """``Linear -> act -> Linear -> act -> Linear`` with ``act`` a module factory or a function."""

    def __init__(self, act: Callable[[], nn.Module] | None = None,
                 fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 sizes: tuple[int, ...] = (5, 7, 6, 3)) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False))
        self.acts = nn.ModuleList(act() for _ in sizes[2:]) if act is not None else None
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.acts[i](x) if self.acts is not None else self.fn(x)  # type: ignore[misc,index]
        return x


def _prelu(w: float) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        m = nn.PReLU()
        with torch.no_grad():
            m.weight.fill_(w)
        return m
    return make


MODULES: dict[str, Callable[[], nn.Module]] = {
    "ReLU": nn.ReLU, "ReLU-inplace": lambda: nn.ReLU(inplace=True),
    "LeakyReLU": lambda: nn.LeakyReLU(0.07, inplace=True), "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid,
    "GELU": nn.GELU, "GELU-tanh": lambda: nn.GELU(approximate="tanh"),
    "SiLU": nn.SiLU, "SiLU-inplace": lambda: nn.SiLU(inplace=True), "Mish": nn.Mish,
    "Hardswish": nn.Hardswish, "ELU": lambda: nn.ELU(0.6), "ELU-inplace": lambda: nn.ELU(1.4, inplace=True),
    # (torch's CELU gradient is computed with 1/alpha in float32: an alpha exact in float32)
    "CELU": lambda: nn.CELU(0.75), "SELU": nn.SELU, "SELU-inplace": lambda: nn.SELU(inplace=True),
    "Softplus": lambda: nn.Softplus(beta=1.5, threshold=2.0), "Softsign": nn.Softsign,
    "Hardtanh": lambda: nn.Hardtanh(-0.7, 1.3), "Hardtanh-inplace": lambda: nn.Hardtanh(inplace=True),
    "ReLU6": nn.ReLU6, "ReLU6-inplace": lambda: nn.ReLU6(inplace=True), "Hardsigmoid": nn.Hardsigmoid,
    "LogSigmoid": nn.LogSigmoid, "Tanhshrink": nn.Tanhshrink, "Softshrink": lambda: nn.Softshrink(0.3),
    "RReLU": lambda: nn.RReLU(0.1, 0.3), "PReLU": _prelu(0.2), "PReLU-steep": _prelu(1.7),
    "Threshold-continuous": lambda: nn.Threshold(0.25, 0.25),
    "Softmax": lambda: nn.Softmax(dim=-1), "Softmin": lambda: nn.Softmin(dim=1),
}

W1 = torch.tensor([0.35], dtype=F64)
FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F.relu": F.relu, "torch.relu_": torch.relu_, "x.relu_": lambda x: x.relu_(),
    "F.leaky_relu": lambda x: F.leaky_relu(x, 0.2), "F.leaky_relu_": lambda x: F.leaky_relu_(x, 0.3),
    "x.tanh": lambda x: x.tanh(), "torch.sigmoid_": torch.sigmoid_,
    "torch.special.expit": torch.special.expit,
    "F.gelu": F.gelu, "F.gelu-tanh": lambda x: F.gelu(x, approximate="tanh"),
    "F.silu": F.silu, "F.silu-inplace": lambda x: F.silu(x, inplace=True), "F.mish": F.mish,
    "F.hardswish": F.hardswish, "F.elu": lambda x: F.elu(x, alpha=0.5), "F.elu_": lambda x: F.elu_(x, 1.2),
    "F.celu": lambda x: F.celu(x, 0.625), "torch.celu_": lambda x: torch.celu_(x, 1.5),
    "F.selu": F.selu, "torch.selu": torch.selu, "torch.selu_": torch.selu_,
    "F.softplus": lambda x: F.softplus(x, beta=2.0, threshold=3.0), "F.softsign": F.softsign,
    "F.hardtanh": lambda x: F.hardtanh(x, -0.5, 0.8), "F.hardtanh_": F.hardtanh_,
    "F.relu6": F.relu6, "F.relu6-inplace": lambda x: F.relu6(x, True), "F.hardsigmoid": F.hardsigmoid,
    "F.logsigmoid": F.logsigmoid, "F.tanhshrink": F.tanhshrink,
    "F.softshrink": lambda x: F.softshrink(x, 0.4),
    "F.rrelu": lambda x: F.rrelu(x, 0.1, 0.2), "torch.rrelu": torch.rrelu,
    "F.prelu": lambda x: F.prelu(x, W1), "F.threshold": lambda x: F.threshold(x, -0.1, -0.1),
    "torch.clamp": lambda x: torch.clamp(x, -1.0, 2.0), "x.clamp-min": lambda x: x.clamp(min=0.1),
    "x.clamp-max": lambda x: x.clamp(max=0.5), "torch.clamp_min": lambda x: torch.clamp_min(x, -0.3),
    "x.clip_": lambda x: x.clip_(-0.5, 0.5),
    "F.softmax": lambda x: F.softmax(x, dim=-1), "x.softmax": lambda x: x.softmax(1),
    "F.softmin": lambda x: F.softmin(x, dim=-1),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_module_forms_exact(name: str) -> None:
    torch.manual_seed(zlib.crc32(name.encode()))
    net = Stack(act=MODULES[name]).double()
    model = check_exact(net, torch.randn(4, 5, dtype=F64) * 3, GRAD_TOL.get(name, 1e-10))
    assert model.hidden == 7 + 6


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_functional_forms_exact(name: str) -> None:
    torch.manual_seed(zlib.crc32(name.encode()))
    net = Stack(fn=FUNCTIONS[name]).double()
    check_exact(net, torch.randn(3, 5, dtype=F64) * 3, GRAD_TOL.get(name, 1e-10))


def test_maps_and_parameters_are_read() -> None:
    """The table reads every parameter (a wrong one would not match, but check the maps too)."""
    torch.manual_seed(0)
    u = torch.randn(2, 5, dtype=F64)
    cases = {
        "GELU-tanh": ("gelu", {"approximate": "tanh"}), "ELU": ("elu", {"alpha": 0.6}),
        "Softplus": ("softplus", {"beta": 1.5, "threshold": 2.0}),
        "Hardtanh": ("hardtanh", {"min_val": -0.7, "max_val": 1.3}),
        "Softshrink": ("softshrink", {"lambd": 0.3}), "RReLU": ("leaky_relu", {"negative_slope": 0.2}),
        "PReLU": ("leaky_relu", {"negative_slope": 0.2}), "ReLU6": ("relu6", {}),
    }
    for name, (kind, params) in cases.items():
        act = from_torch(Stack(act=MODULES[name]).double().eval(), u).activation
        cfg = act.config()
        assert cfg["name"] == kind, (name, cfg)
        for key, val in params.items():
            assert cfg[key] == pytest.approx(val), (name, cfg)


def test_softmax_over_inner_dims_and_glu() -> None:
    """Softmax / Softmin over a middle dimension (an index permutation around a SoftMax block),
    and GLU whose first half is tanh-bounded (a product, §2.4)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.lin = nn.Linear(3 * 4 * 5, 8)
            self.out = nn.Linear(4, 2)
            self.softmin = nn.Softmin(dim=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            h = F.softmax(h, dim=1) + self.softmin(h)   # over channels, over rows
            g = self.lin(h.flatten(1))
            g = torch.cat([torch.tanh(g[:, :4]), g[:, 4:]], dim=1)
            return self.out(F.glu(g, dim=-1))

    torch.manual_seed(1)
    check_exact(Net().double(), torch.randn(3, 2, 4, 5, dtype=F64) * 2)
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.GLU(dim=1), nn.Linear(3, 2)).double()
    check_exact(net, torch.randn(5, 4, dtype=F64) * 2)


# ------------------------------------------------------------------------------ refusals

REFUSED: dict[str, tuple[Callable[[], nn.Module] | None, Callable | None, str]] = {
    "Hardshrink": (nn.Hardshrink, None, "discontinuous"),
    "F.hardshrink": (None, lambda x: F.hardshrink(x, 0.2), "discontinuous"),
    "x.hardshrink": (None, lambda x: x.hardshrink(), "discontinuous"),
    "Threshold": (lambda: nn.Threshold(0.1, 20.0), None, "discontinuous"),
    "F.threshold": (None, lambda x: F.threshold(x, 0.0, 1.0), "discontinuous"),
    "LogSoftmax": (lambda: nn.LogSoftmax(dim=-1), None, "logsumexp"),
    "F.log_softmax": (None, lambda x: F.log_softmax(x, -1), "logsumexp"),
    "x.log_softmax": (None, lambda x: x.log_softmax(-1), "logsumexp"),
    "GLU-unbounded": (nn.GLU, None, "§2.4"),
    "PReLU-negative": (_prelu(-0.5), None, "non-monotone"),
    "PReLU-channels": (lambda: nn.PReLU(num_parameters=6), None, "per channel"),
    "LeakyReLU-negative": (None, lambda x: F.leaky_relu(x, -0.3), "negative_slope"),
    "Hardtanh-empty": (None, lambda x: F.hardtanh(x, 1.0, -1.0), "min_val < max_val"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refusals_name_node_and_reason(name: str) -> None:
    act, fn, reason = REFUSED[name]
    net = Stack(act=act, fn=fn, sizes=(4, 6, 3)).double()
    if name == "GLU-unbounded":
        net = nn.Sequential(nn.Linear(4, 6), nn.GLU(), nn.Linear(3, 2)).double()
    with pytest.raises(ConversionError, match=reason) as info:
        from_torch(net, torch.randn(2, 4, dtype=F64))
    assert "cannot convert node" in str(info.value)


def test_rrelu_training_mode_refused() -> None:
    net = Stack(act=lambda: nn.RReLU(), sizes=(4, 5, 2)).double().train()
    with pytest.raises(ConversionError, match=r"acts.0.*RReLU.*net.eval\(\)"):
        from_torch(net, torch.randn(2, 4, dtype=F64))
    check_exact(net.eval(), torch.randn(2, 4, dtype=F64))


def test_inplace_on_a_tensor_read_later_is_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lin(x)
            y = F.relu_(h)   # overwrites h ...
            return h + y     # ... which is read here

    with pytest.raises(ConversionError, match="in-place.*'lin'.*read again later"):
        from_torch(Net().double(), torch.randn(2, 3, dtype=F64))

    class Ok(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lin(x)
            g = h * 2
            g += h          # in place on g, read nowhere else
            return torch.sigmoid_(g)

    torch.manual_seed(3)
    check_exact(Ok().double(), torch.randn(4, 3, dtype=F64))


def test_parameter_computed_from_the_input_refused() -> None:
    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.clamp(x, min=x.mean(1, keepdim=True))

    with pytest.raises(ConversionError, match="computed from the input"):
        from_torch(Net(), torch.randn(2, 3))


# ------------------------------------------------------------------------------ dead states


def test_unread_blocks_are_dropped_and_states_agree() -> None:
    """A block nobody reads (an unused branch; a gate whose pre-activation a product reads
    directly) is not a state of the model, in from_torch and states() alike."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(3, 5), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.gelu(self.a(x))
            unused = torch.tanh(self.b(x))  # noqa: F841 (a dead branch)
            return self.c(h)

    torch.manual_seed(4)
    model = check_exact(Net().double(), torch.randn(3, 3, dtype=F64))
    assert model.hidden == 4

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.sigmoid(self.a(x)) * torch.tanh(self.b(x)))

    model = check_exact(Gate().double(), torch.randn(3, 3, dtype=F64))
    assert model.hidden == 2 * 4  # only the Product pairs: the gates are absorbed
    assert "Product" in repr(model.activation)


def test_last_layer_on_top_after_dropping() -> None:
    torch.manual_seed(5)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 5), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h1 = torch.relu(self.a(x))
            torch.sigmoid(h1)  # dead, between the two live blocks
            return self.c(F.silu(self.b(h1)))

    net = Net().double()
    u = torch.randn(2, 3, dtype=F64)
    model = check_exact(net, u)
    _, X = states(net, u)
    with torch.no_grad():
        top = F.silu(net.b(torch.relu(net.a(u))))
    assert model.hidden == 9 and torch.allclose(X[:, :5], top, atol=1e-14, rtol=0)


def test_supported_list_in_error_message() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    with pytest.raises(ConversionError, match=r"unsupported module LayerNorm.*GELU.*Softplus") as info:
        from_torch(net, torch.randn(2, 3))
    assert "Hardshrink" not in str(info.value)


def test_conversion_is_cheap() -> None:
    """Many activations in one network: conversion time does not depend on the table's size."""
    import time

    torch.manual_seed(6)
    layers: list[nn.Module] = []
    for make in list(MODULES.values())[:20]:
        layers += [nn.Linear(6, 6), make()]
    net = nn.Sequential(*layers, nn.Linear(6, 2)).double()
    t0 = time.perf_counter()
    model = from_torch(net, torch.randn(2, 6, dtype=F64))
    assert time.perf_counter() - t0 < 5.0 and math.isfinite(float(model(torch.randn(2, 6, dtype=F64)).sum()))
