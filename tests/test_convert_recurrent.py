"""Recurrent layers in exact implicit form (paper 000 §3.5 unrolling, §3.6 gates as the
multiplicative map of §2.4): idlkit.convert.from_torch on nn.RNN / nn.LSTM / nn.GRU and their
cells in Python loops.

Every converted model is compared with torch on random inputs (float64 to 1e-12 relative to the
output scale, float32 to 1e-5) over random sequence lengths (1..8), layers (1..3) and hidden
sizes (1..16); ``A`` must be strictly upper triangular (the ``triangular`` certificate holds) and
solved in one sweep whose number of levels is the recursion's depth; ``states`` must equal the
model's equilibrium; input gradients must equal torch's autograd through the LSTM/GRU.
"""

from __future__ import annotations

import random

import pytest
import torch
from _convert_check import check_outputs
from torch import nn

import idlkit as idl
from idlkit.activations import Blockwise, Hardtanh, Identity, Product
from idlkit.convert import from_torch, states
from idlkit.errors import ConversionError

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
F64, F32 = torch.float64, torch.float32
TOL = {F64: 1e-12, F32: 1e-5}


def check_exact(net: nn.Module, x: torch.Tensor, **kw: object) -> idl.ImplicitModel:
    return check_outputs(net, x, TOL, **kw)


class Layer(nn.Module):
    """A recurrent layer with every output option: batch-first or sequence-first (transposed in
    and out by the network), h0/c0 omitted, constant or computed from the input, and a readout
    of ``out`` (every step), ``h_n[-1]`` and (LSTM) ``c_n[0]``."""

    def __init__(self, kind: str, p: int, hidden: int, layers: int, *, batch_first: bool, bias: bool,
                 bidirectional: bool, init: str, proj: int = 0, nonlinearity: str = "tanh") -> None:
        super().__init__()
        kw: dict = {"num_layers": layers, "batch_first": batch_first, "bias": bias,
                    "bidirectional": bidirectional}
        if kind == "RNN":
            kw["nonlinearity"] = nonlinearity
        if proj:
            kw["proj_size"] = proj
        self.rnn = getattr(nn, kind)(p, hidden, **kw)
        self.kind, self.bf, self.init = kind, batch_first, init
        self.rows = layers * (2 if bidirectional else 1)
        self.h_size = proj or hidden
        self.enc = nn.Linear(p, self.h_size)
        self.enc_c = nn.Linear(p, hidden)
        self.h0 = nn.Parameter(torch.randn(self.rows, 1, self.h_size) * 0.5)
        self.c0 = nn.Parameter(torch.randn(self.rows, 1, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.size(0)
        seq = x if self.bf else x.transpose(0, 1)
        if self.init == "zeros":
            h0 = torch.zeros(self.rows, B, self.h_size, dtype=x.dtype)
            c0 = torch.zeros(self.rows, B, self.rnn.hidden_size, dtype=x.dtype)
        elif self.init == "const":
            h0 = self.h0.expand(-1, B, -1).contiguous()
            c0 = self.c0.expand(-1, B, -1).contiguous()
        else:  # computed from the first input, bounded where it is multiplied (§2.4)
            h0 = torch.tanh(self.enc(x[:, 0])).unsqueeze(0).repeat(self.rows, 1, 1)
            c0 = torch.sigmoid(self.enc_c(x[:, -1])).unsqueeze(0).expand(self.rows, B, -1)
        if self.kind == "LSTM":
            state = None if self.init == "none" else (h0, c0)
            out, (hn, cn) = self.rnn(seq) if state is None else self.rnn(seq, state)
            extra = [cn[0]]
        else:
            out, hn = self.rnn(seq) if self.init == "none" else self.rnn(seq, h0)
            extra = []
        if not self.bf:
            out = out.transpose(0, 1)
        return torch.cat([out.flatten(1), hn[-1], *extra], dim=1)


GRID = [  # (batch_first, bias, bidirectional, init)
    (True, True, False, "none"), (False, True, False, "zeros"), (True, False, False, "const"),
    (False, True, True, "input"), (True, True, True, "const"), (False, False, False, "input"),
]


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("case", range(len(GRID)))
def test_layers_exact_over_option_grid(kind: str, case: int) -> None:
    bf, bias, bidir, init = GRID[case]
    rng = random.Random(f"{kind}{case}")
    T, H, L = rng.randint(1, 8), rng.randint(1, 16), rng.randint(1, 3)
    p, B = rng.randint(1, 5), rng.randint(1, 4)
    torch.manual_seed(case)
    net = Layer(kind, p, H, L, batch_first=bf, bias=bias, bidirectional=bidir, init=init,
                nonlinearity="relu" if case % 2 else "tanh").double()
    x = torch.randn(B, T, p, dtype=F64) * 2
    model = check_exact(net, x)
    y = torch.randn(5, T, p, dtype=F64)  # another batch size: the model is batch-independent
    with torch.no_grad():
        assert torch.allclose(model(y), net.eval()(y).reshape(5, -1), atol=1e-12)
    if kind == "LSTM" and not bidir:  # two levels per step, one more step per layer (wavefront),
        # after the bounded maps of an input-dependent initial state
        assert model.last_solve.iterations == 2 * (T + L - 1) + (init == "input")
    Z, X = states(net, x)
    assert torch.allclose(model.equilibrium(x), X, atol=1e-12)
    Zm = (model.A @ X.t()).t() + (model.B @ x.reshape(B, -1).t()).t() + model.b
    assert torch.allclose(Zm, Z, atol=1e-12)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_float32_and_the_gate_blocks(kind: str) -> None:
    torch.manual_seed(11)
    net = Layer(kind, 3, 7, 2, batch_first=True, bias=True, bidirectional=False, init="none")
    model = check_exact(net, torch.randn(4, 5, 3) * 3)
    act = model.activation
    maps = {type(a) for _, a in act.segments} if isinstance(act, Blockwise) else {type(act)}
    assert maps == ({Product} if kind == "LSTM" else {Product, Identity})  # GRU: h as a state
    seconds = {type(a.second) for _, a in act.segments if isinstance(a, Product)}
    assert Hardtanh in seconds  # the cell state / hidden state factor: identity on its interval


def test_lstm_projection_and_bidirectional_readouts() -> None:
    torch.manual_seed(12)
    net = Layer("LSTM", 4, 6, 2, batch_first=True, bias=True, bidirectional=True, init="const", proj=3)
    check_exact(net.double(), torch.randn(3, 5, 4, dtype=F64))

    class Slices(nn.Module):  # h_n[-2:] (a slice along dim 0, batch in dim 1), out[-1]
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 4, num_layers=2, bidirectional=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, hn = self.rnn(x.permute(1, 0, 2))
            return torch.cat([hn[-2:].transpose(0, 1).flatten(1), out[-1], out[0, :, 4:]], dim=1)

    for batch in (1, 3):
        check_exact(Slices().double(), torch.randn(batch, 6, 3, dtype=F64))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_input_gradients_match_autograd(kind: str) -> None:
    torch.manual_seed(13)
    net = Layer(kind, 3, 5, 2, batch_first=True, bias=True, bidirectional=kind == "GRU",
                init="input").double().eval()
    u = torch.randn(3, 6, 3, dtype=F64, requires_grad=True)
    model = from_torch(net, u.detach())
    w = torch.randn(3, model.out_features, dtype=F64)
    g_net, = torch.autograd.grad((net(u).reshape(3, -1) * w).sum(), u)
    g_mod, = torch.autograd.grad((model(u) * w).sum(), u)
    assert float((g_mod - g_net).abs().max()) <= 1e-9


class CellLoop(nn.Module):
    """A cell stepped by a Python loop in forward, in one of the usual forms."""

    def __init__(self, kind: str, p: int, hidden: int, form: str) -> None:
        super().__init__()
        self.cell = getattr(nn, kind)(p, hidden)
        self.head = nn.Linear(hidden, 2)
        self.kind, self.form, self.hidden = kind, form, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.size(0), self.hidden, dtype=x.dtype)
        c = x.new_zeros(x.shape[0], self.hidden)
        state = (h, c) if self.kind == "LSTMCell" else h
        if self.form == "range-size":
            steps = [x[:, t] for t in range(x.size(1))]
        elif self.form == "range-shape":
            steps = [x[:, t, :] for t in range(x.shape[1])]
        elif self.form == "unbind":
            steps = list(x.unbind(1))
        elif self.form == "iterate":  # iteration over dim 0 of a sequence-first tensor
            steps = list(x.transpose(0, 1))
        else:  # "omitted": the first step without a state
            steps = [x[:, t] for t in range(len(x[0]))]
            state = self.cell(steps[0])
            steps = steps[1:]
        outs = []
        for xt in steps:
            state = self.cell(xt, state)
            outs.append(state[0] if self.kind == "LSTMCell" else state)
        last = state[1] if self.kind == "LSTMCell" else state
        return torch.cat([self.head(torch.stack(outs, dim=1)).flatten(1), last], dim=1)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("form", ["range-size", "range-shape", "unbind", "iterate", "omitted"])
def test_cells_in_python_loops(kind: str, form: str) -> None:
    rng = random.Random(f"{kind}{form}")
    T, H = rng.randint(2, 6), rng.randint(1, 9)
    torch.manual_seed(T * H)
    net = CellLoop(kind, 3, H, form).double()
    x = torch.randn(3, T, 3, dtype=F64)
    model = check_exact(net, x)
    Z, X = states(net, x)
    assert torch.allclose(model.equilibrium(x), X, atol=1e-12)
    assert [k for k in vars(net) if k.startswith("_tensor_constant")] == []  # the net is left alone


def test_lstm_cell_state_given_by_the_input_bounded() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell, self.enc = nn.LSTMCell(3, 4), nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.enc(x[:, 0]))
            state = (h, h * 0.5)
            for t in range(1, x.shape[1]):
                state = self.cell(x[:, t], state)
            return state[0]

    check_exact(Net().double(), torch.randn(2, 4, 3, dtype=F64))


def test_shape_queries_are_python_numbers() -> None:
    """Shape-based control flow is specialised to the example; constants of the batch's size
    are accepted when equal across the batch."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.GRUCell(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() == 2:  # a single step given as (batch, features)
                x = x.unsqueeze(1)
            assert x.ndim == 3 and x.numel() == len(x) * x.shape[1] * x.size(-1)
            h = torch.ones(x.size(0), 4, dtype=x.dtype) * 0.5
            for t in range(x.size(1)):
                h = self.cell(x[:, t], h)
            return h + torch.full((x.shape[0], 4), 2.0, dtype=x.dtype) - torch.ones_like(h)

    net = Net().double()
    check_exact(net, torch.randn(3, 4, 3, dtype=F64))
    check_exact(net, torch.randn(3, 3, dtype=F64))

    class Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x) + torch.randn(x.size(0), x.size(1), dtype=x.dtype)

    with pytest.raises(ConversionError, match="varies over the batch"):
        from_torch(Noisy(), torch.randn(3, 4, dtype=F64))


def test_constants_in_rearrangements_are_exact() -> None:
    """``cat`` with a constant (a learned token, a filled tensor) keeps its values: constant
    entries come from a run with zero inputs, moved entries from the coded index runs."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Parameter(torch.randn(1, 2))
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            B = x.shape[0]
            h = torch.cat([self.tok.expand(B, -1), torch.tanh(self.fc(x)), torch.full((B, 2), 3.0,
                                                                                      dtype=x.dtype)], 1)
            return torch.stack([h, -h], dim=0).transpose(0, 1).flatten(1)

    for batch in (1, 4):
        check_exact(Net().double(), torch.randn(batch, 3, dtype=F64))


# ------------------------------------------------------------------ refusals


def test_refusals_name_the_option_and_the_fix() -> None:
    x = torch.randn(3, 5, 4)
    with pytest.raises(ConversionError, match=r"return one tensor.*out\[:, -1\]"):
        from_torch(nn.LSTM(4, 6, batch_first=True), x)  # not "dynamic control flow"
    with pytest.raises(ConversionError, match=r"batch_first=False\) reads dim 0.*transpose"):
        from_torch(nn.Sequential(nn.GRU(4, 6)), x)
    drop = nn.LSTM(4, 6, num_layers=2, dropout=0.2, batch_first=True).train()
    with pytest.raises(ConversionError, match=r"dropout=0.2.*training mode.*net.eval\(\)"):
        from_torch(nn.Sequential(drop), x)

    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 6, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            packed = nn.utils.rnn.pack_padded_sequence(x, [5, 4, 2], batch_first=True)
            return self.rnn(packed)[1][0][-1]

    with pytest.raises(ConversionError, match="PackedSequence.*Pad the batch"):
        from_torch(Packed(), x)

    class Unbatched(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(4, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    with pytest.raises(ConversionError, match="2-d input.*unbatched"):
        from_torch(Unbatched(), torch.randn(3, 4))

    class Unbounded(nn.Module):  # c0 = W u enters f * c0: not bounded (§2.4)
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.enc = nn.LSTM(4, 6, batch_first=True), nn.Linear(4, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            c0 = self.enc(x[:, 0]).unsqueeze(0)
            return self.rnn(x, (torch.zeros_like(c0), c0))[0][:, -1]

    with pytest.raises(ConversionError, match=r"cell state c multiplies a gate.*§2.4.*bounded map"):
        from_torch(Unbounded(), x)

    class RandomH0(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 6, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x, torch.randn(1, x.size(0), 6))[1][-1]

    with pytest.raises(ConversionError, match="h0 is a constant that varies over the batch"):
        from_torch(RandomH0(), x)


def test_forward_arguments_after_the_input_take_their_defaults() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)

        def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
            out, _ = self.rnn(x, state)
            return out[:, -1] if state is None else out[:, 0]

    check_exact(Net().double(), torch.randn(2, 5, 3, dtype=F64))

    class TwoInputs(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    with pytest.raises(ConversionError, match="'y' has no default.*more than one input"):
        from_torch(TwoInputs(), torch.randn(2, 3))


def test_data_dependent_loops_are_refused() -> None:
    class EarlyStop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.GRUCell(4, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.zeros(x.size(0), 6)
            for t in range(x.size(1)):
                h = self.cell(x[:, t], h)
                if h.norm() > 1.0:  # depends on the values
                    break
            return h

    with pytest.raises(ConversionError, match="control flow"):
        from_torch(EarlyStop(), torch.randn(2, 5, 4))

    class ValueLength(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(x[0, 0].long()):
                x = torch.tanh(x)
            return x

    with pytest.raises(ConversionError, match="control flow"):
        from_torch(ValueLength(), torch.randn(2, 5))
