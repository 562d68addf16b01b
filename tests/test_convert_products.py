"""from_torch on products of input-dependent tensors (paper 000 §2.4, §3.6).

Elementwise products (with broadcasting), matrix products (``@``, ``matmul``, ``bmm``, ``mm``,
the tensor methods; with a constant factor: linear), GLU, the tanh-bounded attention of
:class:`idlkit.baselines.BoundedAttention` and ``F.scaled_dot_product_attention`` (plain,
causal, masked) convert exactly: float64 outputs within 1e-12 of the network, ``states``
equal to the model's equilibrium, a triangular certificate, input gradients equal to torch's
autograd (the implicit backward through the Product blocks). Products with an unbounded factor
(standard dot-product attention, ``nn.MultiheadAttention``) and operations mixing the samples
of a batch are refused with a ConversionError naming the node and the reason.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from _convert_check import check_exact
from torch import nn

from idlkit.activations import Product
from idlkit.baselines import BoundedAttention
from idlkit.convert import from_torch, states
from idlkit.convert.products import matmul_pairs
from idlkit.errors import ConversionError, ShapeError

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
F64 = torch.float64


def products_in(model) -> int:  # noqa: ANN001
    """Number of Product pairs in a converted model's activation."""
    act = model.activation
    segs = act.segments if hasattr(act, "segments") else [(model.hidden, act)]
    return sum(size // 2 for size, a in segs if isinstance(a, Product))


# ------------------------------------------------------------------------------ index arrays


@pytest.mark.parametrize("sa, sb", [((2, 3), (3, 4)), ((3,), (3, 4)), ((2, 3), (3,)), ((3,), (3,)),
                                    ((5, 1, 2, 3), (4, 3, 2)), ((2, 2, 3), (3, 1))])
def test_matmul_pairs_match_torch(sa: tuple, sb: tuple) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(sa, dtype=F64, generator=g), torch.randn(sb, dtype=F64, generator=g)
    IA, IB, shape = matmul_pairs(sa, sb)
    ref = torch.matmul(a, b)
    assert shape == tuple(ref.shape)
    got = (a.reshape(-1)[torch.from_numpy(IA)] * b.reshape(-1)[torch.from_numpy(IB)]).sum(-1)
    torch.testing.assert_close(got.reshape(shape), ref, rtol=1e-14, atol=1e-14)


# ------------------------------------------------------------------------------ elementwise


class Elementwise(nn.Module):
    """Bounded factors of several shapes, multiplied with broadcasting; constant tensors too."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(4, 3), nn.Linear(4, 2)
        self.w = nn.Parameter(torch.randn(2, 3))
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        A = torch.tanh(self.a(x)).reshape(-1, 2, 3)
        Bv = torch.sigmoid(self.b(x)).reshape(-1, 1, 3)           # broadcast over rows
        Cv = F.softsign(self.c(x)).reshape(-1, 2, 1)              # broadcast over columns
        P = A * Bv + Bv * Cv                                       # (batch, 2, 3) each
        Q = torch.mul(P, Cv) * self.w / torch.tensor([1.0, 2.0, 4.0])  # a product of a product
        return self.out(Q.flatten(1))


def test_elementwise_products_with_broadcasting() -> None:
    torch.manual_seed(0)
    net = Elementwise().double()
    model = check_exact(net, torch.randn(5, 4, dtype=F64) * 2)
    assert products_in(model) == 6 + 6 + 6  # A*B, B*C, P*C; the gates themselves are absorbed


def test_elementwise_product_of_unbounded_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.a(x)) * F.gelu(x)   # GELU is unbounded above

    with pytest.raises(ConversionError, match=r"node 'mul'.*both factors bounded.*§2.4.*second factor"):
        from_torch(Net().double(), torch.randn(2, 3, dtype=F64))


def test_elementwise_product_mixing_samples_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 6), nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.a(x)).reshape(-1, 2, 3) * torch.tanh(self.b(x))  # (B,2,3)*(B,3)

    with pytest.raises(ConversionError, match="mixes samples"):
        from_torch(Net().double(), torch.randn(2, 3, dtype=F64))


# ------------------------------------------------------------------------------ matrix products


class MatMuls(nn.Module):
    """Every spelling of the matrix product, batched, broadcast and with constants."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 12), nn.Linear(4, 6), nn.Linear(4, 3)
        self.W = nn.Parameter(torch.randn(3, 2))
        self.L = nn.Parameter(torch.randn(5, 2))
        self.v = nn.Parameter(torch.randn(3))
        self.out = nn.Linear(8 + 4 + 10 + 2 + 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        A = torch.tanh(self.a(x)).reshape(-1, 2, 2, 3)        # (B, 2, 2, 3): two "heads"
        Bm = torch.sigmoid(self.b(x)).reshape(-1, 1, 3, 2)    # (B, 1, 3, 2): broadcast over heads
        c = torch.tanh(self.c(x))                               # (B, 3)
        A3 = A[:, 0]                                            # (B, 2, 3)
        B3 = Bm[:, 0]                                           # (B, 3, 2)
        parts = [
            (A @ Bm).flatten(1),                                # (B, 2, 2, 2)
            torch.bmm(A3, B3).flatten(1) + A3.matmul(B3).flatten(1) + A3.bmm(B3).flatten(1),
            torch.matmul(self.L, A3 @ self.W).flatten(1),       # constant @ input-dependent
            (A3 @ self.v),                                      # matrix-vector: (B, 2)
            torch.mm(c, self.W),                                # (B, 3) @ (3, 2): a linear layer
        ]
        return self.out(torch.cat(parts, dim=1))


def test_matrix_products_every_spelling() -> None:
    torch.manual_seed(1)
    net = MatMuls().double()
    model = check_exact(net, torch.randn(4, 4, dtype=F64) * 2)
    # A @ Bm: 2 heads x 2 x 2 entries x 3 terms; bmm, matmul, .bmm: 2 x 2 x 3 each
    assert products_in(model) == 2 * 2 * 2 * 3 + 3 * (2 * 2 * 3)


def test_matmul_that_mixes_samples_refused() -> None:
    class Gram(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.a(x))
            return h @ h.t()   # (B, B): every sample reads every other

    with pytest.raises(ConversionError, match="mixes"):
        from_torch(Gram().double(), torch.randn(3, 3, dtype=F64))

    class Ranks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 12), nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # (B, 3, 4) @ (B, 4): torch reads the second operand as a (B x 4) matrix (B = 4)
            return torch.tanh(self.a(x)).reshape(-1, 3, 4) @ torch.tanh(self.b(x))

    with pytest.raises(ConversionError, match=r"node 'matmul'.*\(4, 3, 4\) @ \(4, 4\) mixes the samples"):
        from_torch(Ranks().double(), torch.randn(4, 3, dtype=F64))

    class PerSampleConstant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 12)
            self.W = nn.Parameter(torch.randn(2, 4, 5))  # its dim 0 meets the batch dim

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.a(x)).reshape(-1, 3, 4) @ self.W

    with pytest.raises(ConversionError, match="differs between the samples"):
        from_torch(PerSampleConstant().double(), torch.randn(2, 3, dtype=F64))


# ------------------------------------------------------------------------------ bounded attention


class Encoder(nn.Module):
    """Embedding, a residual BoundedAttention block, and a head on the flattened sequence."""

    def __init__(self, p: int, d: int, heads: int, T: int) -> None:
        super().__init__()
        self.embed = nn.Linear(p, d)
        self.att = BoundedAttention(d, heads=heads)
        self.head = nn.Linear(T * d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.att(h)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("T, d, heads", [(1, 2, 1), (3, 4, 2), (5, 6, 3), (4, 8, 1)])
def test_bounded_attention_exact(T: int, d: int, heads: int) -> None:
    torch.manual_seed(T * 10 + d + heads)
    net = Encoder(3, d, heads, T).double()
    model = check_exact(net, torch.randn(4, T, 3, dtype=F64) * 2)
    dh = d // heads
    # scores: heads x T x T pairs of dh terms; output: heads x T x dh pairs of T terms
    assert products_in(model) == heads * T * T * dh + heads * T * dh * T
    # exactly the product and softmax states (q, k, v absorbed), plus nothing else
    assert model.hidden == 2 * products_in(model) + heads * T * T


def test_bounded_attention_float32_and_batch_sizes() -> None:
    torch.manual_seed(2)
    net = BoundedAttention(4, heads=2).float().eval()
    model = from_torch(net, torch.randn(1, 3, 4))
    u = torch.randn(6, 3, 4)
    with torch.no_grad():
        err = float((model(u) - net(u).reshape(6, -1)).abs().max())
    assert err <= 1e-5


def test_bounded_attention_module() -> None:
    att = BoundedAttention(6, heads=3)
    assert att(torch.randn(2, 4, 6)).shape == (2, 4, 6)
    with pytest.raises(ShapeError, match=r"\(batch, T, 6\)"):
        att(torch.randn(2, 6))
    with pytest.raises(Exception, match="divisible"):
        BoundedAttention(5, heads=2)


def test_attention_conversion_is_fast() -> None:
    """T = 16 tokens, d = 16: the index arrays are built by broadcasting, not entry by entry."""
    torch.manual_seed(3)
    net = BoundedAttention(16, heads=2).double().eval()
    u = torch.randn(2, 16, 16, dtype=F64)
    best = math.inf
    for _ in range(2):
        t0 = time.perf_counter()
        model = from_torch(net, u)
        best = min(best, time.perf_counter() - t0)
    assert best < 1.0, f"conversion took {best:.2f}s"
    with torch.no_grad():
        assert float((model(u) - net(u).reshape(2, -1)).abs().max()) <= 1e-12
    Z, X = states(net, u)
    with torch.no_grad():
        assert float((X - model.equilibrium(u)).abs().max()) <= 1e-12


# ------------------------------------------------------------------------------ SDPA


class SDPA(nn.Module):
    """tanh/sigmoid-bounded q, k, v into ``F.scaled_dot_product_attention`` (2 heads); keys and
    values from the first ``tk`` tokens (cross-attention lengths)."""

    def __init__(self, d: int, tk: int | None = None, mask: torch.Tensor | None = None,
                 causal: bool = False, scale: float | None = None, heads: int = 2) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.tk, self.causal, self.scale, self.heads = tk, causal, scale, heads
        self.register_buffer("mask", mask)

    def _split(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(y.size(0), y.size(1), self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = x if self.tk is None else x[:, : self.tk]
        q = self._split(torch.tanh(self.q(x)))
        k = self._split(torch.tanh(self.k(kv)))
        v = self._split(torch.sigmoid(self.v(kv)))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal,
                                           scale=self.scale)
        return o.transpose(1, 2).flatten(1)


def _float_mask(T: int, Tk: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    m = torch.randn(T, Tk, dtype=F64, generator=g)
    m[0, 1:] = -math.inf
    m[2, ::2] = -math.inf
    return m


@pytest.mark.parametrize("kind", ["plain", "causal", "causal-cross", "cross", "bool-mask", "float-mask",
                                  "scale"])
def test_sdpa_exact(kind: str) -> None:
    torch.manual_seed(len(kind))
    T, d = 5, 4
    kw: dict = {
        "plain": {}, "causal": {"causal": True}, "causal-cross": {"causal": True, "tk": 3},
        "cross": {"tk": 3}, "scale": {"scale": 0.3},
        "bool-mask": {"mask": torch.rand(2, T, T, generator=torch.Generator().manual_seed(4)) > 0.4},
        "float-mask": {"mask": _float_mask(T, T)},
    }[kind]
    if kind == "bool-mask":
        kw["mask"][:, :, 0] = True  # every query keeps a key
    net = SDPA(d, **kw).double()
    model = check_exact(net, torch.randn(3, T, d, dtype=F64) * 2)
    if kind == "causal":  # query i attends to i + 1 keys: a SoftMax block per length
        assert "SoftMax(block_size=1)" in repr(model.activation)


def test_sdpa_with_constant_keys_and_values() -> None:
    """Learned memory tokens as keys/values: the scores are linear in q, the output a product."""

    class Memory(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(3, 4)
            self.k = nn.Parameter(torch.randn(1, 6, 4))
            self.v = nn.Parameter(torch.randn(1, 6, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = self.q(x)  # need not be bounded: q k^T with a constant k is linear
            return F.scaled_dot_product_attention(q, self.k, self.v).flatten(1)

    torch.manual_seed(6)
    model = check_exact(Memory().double(), torch.randn(2, 5, 3, dtype=F64))
    assert products_in(model) == 0  # weights times constant values: linear


def test_sdpa_refusals() -> None:
    torch.manual_seed(7)
    u = torch.randn(2, 4, 4, dtype=F64)

    class Unbounded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(self.q(x), self.k(x), torch.tanh(x))

    with pytest.raises(ConversionError, match=r"scaled_dot_product_attention.*scores.*§2.4.*the queries q.*"
                                              r"BoundedAttention"):
        from_torch(Unbounded().double(), u)

    class Dropout(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = torch.tanh(x)
            return F.scaled_dot_product_attention(t, t, t, dropout_p=0.1)

    with pytest.raises(ConversionError, match="dropout_p"):
        from_torch(Dropout(), u.float())

    class PerSample(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("m", torch.rand(2, 1, 4, 4) > 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = torch.tanh(x).unsqueeze(1)
            return F.scaled_dot_product_attention(t, t, t, attn_mask=self.m)

    with pytest.raises(ConversionError, match="differs between the samples"):
        from_torch(PerSample(), u.float())

    class AllMasked(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = torch.tanh(x)
            m = torch.ones(4, 4, dtype=torch.bool)
            m[1] = False
            return F.scaled_dot_product_attention(t, t, t, attn_mask=m)

    with pytest.raises(ConversionError, match="every key masked"):
        from_torch(AllMasked(), u.float())


# ------------------------------------------------------------------------------ standard attention


class DotProductAttention(nn.Module):
    """Textbook attention: q, k, v plain linear maps of the input (unbounded)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.q(x) @ self.k(x).transpose(-2, -1) / math.sqrt(x.size(-1)), dim=-1)
        return a @ self.v(x)


def test_standard_attention_refused() -> None:
    u = torch.randn(2, 3, 4)
    with pytest.raises(ConversionError) as info:
        from_torch(DotProductAttention(4), u)
    msg = str(info.value)
    assert "node 'matmul'" in msg and "q k^T" in msg and "not Lipschitz" in msg and "§2.4" in msg
    assert "tanh" in msg and "BoundedAttention" in msg


@pytest.mark.parametrize("make", [lambda: nn.MultiheadAttention(4, 2, batch_first=True),
                                  lambda: nn.TransformerEncoderLayer(4, 2, 8, batch_first=True)])
def test_multihead_attention_refused(make) -> None:  # noqa: ANN001
    mha = make().eval()
    u = torch.randn(2, 3, 4)
    with pytest.raises(ConversionError, match=r"q k\^T.*not Lipschitz.*§2.4.*BoundedAttention"):
        from_torch(mha, u)  # as the root module

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = make()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x, x, x)[0] if isinstance(self.inner, nn.MultiheadAttention) else self.inner(x)

    with pytest.raises(ConversionError, match=r"node 'inner'.*q k\^T.*not Lipschitz"):
        from_torch(Wrapped().eval(), u)


def test_products_with_constants_need_no_product_states() -> None:
    """``x @ W``, ``W @ x`` and ``x * w`` with constant tensors are linear: no Product block, and
    ``states`` (a value-only trace then) agrees with the model."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 8)
            self.W = nn.Parameter(torch.randn(4, 3))
            self.L = nn.Parameter(torch.randn(5, 2))
            self.w = nn.Parameter(torch.randn(1, 2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.elu(self.a(x)).reshape(-1, 2, 4)
            g = torch.relu((h @ self.W) * self.w)   # (B, 2, 3)
            return (self.L @ g).flatten(1) / 3.0

    torch.manual_seed(8)
    model = check_exact(Net().double(), torch.randn(3, 3, dtype=F64))
    assert products_in(model) == 0 and model.hidden == 8 + 6
