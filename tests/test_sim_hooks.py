"""idl.sim.hooks: states of any network through forward hooks (paper 002 §3).

Hooked states equal the converter's on networks both handle; on networks the converter refuses
(layer norm, standard attention) they satisfy X = phi(Z) block by block; bad networks and
inputs give typed errors that name the fix.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import idlkit as idl
from idlkit.errors import ConfigurationError, ConversionError, InputError, NonFiniteError, ShapeError
from idlkit.sim import SIM, extract_states, hook_states

torch.set_num_threads(1)
D64 = torch.float64


def relu_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 7), nn.LeakyReLU(0.1), nn.Linear(7, 3))


def cnn() -> nn.Module:  # max pooling (BlockMax, §3.3) and an in-place ReLU
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3),
                         nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(16, 3))


class Attention(nn.Module):
    """Standard (unbounded) dot-product self-attention with an nn.Softmax module: refused by the
    converter (a product of two unbounded maps, paper 000 §2.4)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.softmax = nn.Softmax(dim=-1)
        self.d = d

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        return self.softmax(q @ k.transpose(1, 2) / math.sqrt(self.d)) @ v


class TinyTransformer(nn.Module):
    """Features -> T tokens, attention + LayerNorm + GELU/SiLU feed-forward, mean pool, head."""

    def __init__(self, p: int = 10, T: int = 3, d: int = 4, q: int = 3) -> None:
        super().__init__()
        self.T, self.d = T, d
        self.embed = nn.Linear(p, T * d)
        self.attn = Attention(d)
        self.norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 8), nn.GELU(), nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, d))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(d, q)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = self.embed(u).reshape(u.shape[0], self.T, self.d)
        h = self.norm(h + self.attn(h))
        h = h + self.ff(h)
        return self.head(self.pool(h.transpose(1, 2)).squeeze(-1))


def _phi_holds(st) -> None:
    for lay in st.layers:
        sl = slice(lay.offset, lay.offset + lay.size)
        torch.testing.assert_close(lay.activation(st.Z[:, sl].t()).t(), st.X[:, sl], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(st.activation(st.Z.t()).t(), st.X, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("build", "shape"), [(relu_mlp, (6,)), (cnn, (1, 8, 8))])
@pytest.mark.parametrize("rescale", [False, True])
def test_hooked_states_equal_the_converters(build, shape, rescale):
    torch.manual_seed(0)
    net = build().double()
    U = torch.randn(11, *shape, dtype=D64)
    a = extract_states(net, U, method="convert", rescale=rescale)
    b = extract_states(net, U, method="hooks", rescale=rescale)
    assert (a.method, b.method) == ("convert", "hooks")
    assert torch.equal(a.Z, b.Z) and torch.equal(a.X, b.X)
    assert torch.equal(a.Y_hat, b.Y_hat) and torch.equal(a.U, b.U)
    assert a.activation.config() == b.activation.config()
    assert a.baseline_nnz == b.baseline_nnz
    if rescale:  # same divisor (max ||W_l||_inf) and depths (forward positions of a chain)
        assert b.divisor == pytest.approx(a.divisor, rel=1e-13)
        assert torch.equal(a.depth, b.depth)
        torch.testing.assert_close(a.scale, b.scale, rtol=1e-13, atol=0)


def test_resnet_block_reused_inplace_relu():
    """ResNet's BasicBlock calls one in-place ReLU twice: one block per call, equal to the converter."""
    torch.manual_seed(1)
    net = idl.convert.resnet20(width=2, in_channels=1).double().eval()
    U = torch.randn(3, 1, 8, 8, dtype=D64)
    a = extract_states(net, U, method="convert", rescale=False)
    hs = hook_states(net, U)
    assert torch.equal(a.Z, hs.Z) and torch.equal(a.X, hs.X)
    labels = [lay.label for lay in hs.layers]
    assert labels[-3:] == ["3.relu@1", "3.relu", "2"]  # the stem's ReLU, then block 3's two calls
    assert [lay.position for lay in hs.layers] == list(range(len(labels), 0, -1))


def test_converter_refused_networks_give_exact_hooked_states():
    torch.manual_seed(2)
    net = TinyTransformer().double().eval()
    U = torch.randn(13, 10, dtype=D64)
    with pytest.raises(ConversionError):
        idl.convert.states(net, U)
    st = extract_states(net, U, rescale=False)  # auto: falls back to hooks
    assert st.method == "hooks"
    # forward order softmax (3 query rows x 3 keys per sample), GELU, SiLU; stacked last on top
    assert [lay.label for lay in st.layers] == ["ff.3", "ff.1", "attn.softmax"]
    assert [lay.size for lay in st.layers] == [3 * 8, 3 * 8, 3 * 3]
    assert [type(lay.activation).__name__ for lay in st.layers] == ["SiLU", "GELU", "SoftMax"]
    assert st.layers[-1].activation.block_size == 3
    _phi_holds(st)
    with torch.no_grad():
        torch.testing.assert_close(st.Y_hat, net(U), rtol=0, atol=0)
    # the SiLU state's pre-activation is the linear map of the GELU state (ff.2)
    W, c = net.ff[2].weight.detach(), net.ff[2].bias.detach()
    g = st.X[:, 24:48].reshape(13, 3, 8)
    torch.testing.assert_close(st.Z[:, :24].reshape(13, 3, 8), g @ W.t() + c, rtol=1e-12, atol=1e-12)


def test_transformer_encoder_layer_gelu_module_and_skip_identity():
    """nn.TransformerEncoderLayer with activation=nn.GELU(): the fused fast path is off while hooks
    are attached, so its feed-forward GELU is recorded; identity_layers adds a pooled state."""
    torch.manual_seed(3)

    class Clf(nn.Module):
        def __init__(self, act: nn.Module | str) -> None:
            super().__init__()
            self.embed = nn.Linear(12, 4 * 8)
            self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, activation=act, batch_first=True)
            self.pool = nn.Flatten()  # a stand-in module whose output we record as a state
            self.head = nn.Linear(8, 5)

        def forward(self, u: torch.Tensor) -> torch.Tensor:
            h = self.enc(self.embed(u).reshape(u.shape[0], 4, 8))
            return self.head(self.pool(h.mean(dim=1)))

    net = Clf(nn.GELU()).double().eval()
    U = torch.randn(9, 12, dtype=D64)
    st = extract_states(net, U, rescale=False, identity_layers=["pool"])
    assert [lay.label for lay in st.layers] == ["pool", "enc.activation"]
    assert [lay.kind for lay in st.layers] == ["identity", "activation"]
    assert st.n == 8 + 4 * 16
    _phi_holds(st)
    torch.testing.assert_close(st.X[:, :8], st.Z[:, :8])
    # the head is linear in the pooled state: Y_hat = X_pool W^T + b exactly
    torch.testing.assert_close(st.Y_hat, st.X[:, :8] @ net.head.weight.detach().t() + net.head.bias.detach())
    with pytest.raises(InputError, match="pass rescale=False"):
        extract_states(net, U, identity_layers=["pool"])  # GELU is not positively homogeneous
    # the string "gelu" makes torch call F.gelu: hooks see nothing, and the error says so
    with pytest.raises(InputError, match=r"activation=nn.GELU\(\)") as err:
        extract_states(Clf("gelu").double().eval(), U, rescale=False)
    assert "converter" in str(err.value)
    # dropout in training mode makes the forward random
    with pytest.raises(InputError, match=r"net.eval\(\)"):
        extract_states(Clf(nn.GELU()).double().train(), U, method="hooks", rescale=False)


def test_skip_layers_and_names():
    torch.manual_seed(4)
    net = TinyTransformer().double().eval()
    U = torch.randn(5, 10, dtype=D64)
    assert idl.sim.hooks.hookable_modules(net) == ["attn.softmax", "ff.1", "ff.3"]
    assert idl.sim.hooks.hookable_modules(net, skip_layers=["ff"]) == ["attn.softmax"]
    st = extract_states(net, U, rescale=False, skip_layers=["attn"])
    assert [lay.label for lay in st.layers] == ["ff.3", "ff.1"]
    full = hook_states(net, U)
    torch.testing.assert_close(st.X, full.X[:, :48], rtol=0, atol=0)
    with pytest.raises(ConfigurationError, match="did you mean 'attn.softmax'"):
        hook_states(net, U, skip_layers=["attn.softmx"])
    with pytest.raises(ConfigurationError, match="list of module names"):
        hook_states(net, U, skip_layers="attn")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="both"):
        hook_states(net, U, skip_layers=["ff"], identity_layers=["ff"])
    with pytest.raises(ConfigurationError, match="method"):
        extract_states(net, U, method="trace")
    with pytest.raises(ConversionError):
        extract_states(net, U, method="convert", rescale=False)


def test_positively_homogeneous_hooked_states_rescale_exactly():
    """ReLU + LayerNorm: no implicit form, but X = phi(Z) survives the rescaling (homogeneous phi),
    with depth = forward position and s = max(1, gamma max ||W||_inf) from the Linear weights."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(),
                        nn.Linear(6, 2)).double()
    U = torch.randn(8, 5, dtype=D64)
    raw = hook_states(net, U)
    st = extract_states(net, U, kappa=0.9)
    assert st.method == "hooks"
    w = max(float(lin.weight.abs().sum(1).max()) for lin in (net[0], net[3], net[5]))
    assert raw.weight_norm == pytest.approx(w, rel=1e-14)
    s = max(1.0, 1.01 / 0.9 * w)
    assert st.divisor == pytest.approx(s, rel=1e-14)
    assert st.depth.tolist() == [2] * 6 + [1] * 7
    torch.testing.assert_close(st.X, raw.X * st.scale, rtol=1e-14, atol=0)
    _phi_holds(st)


def test_functional_only_network_names_the_fix():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.norm, self.l2 = nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 2)

        def forward(self, u: torch.Tensor) -> torch.Tensor:
            return self.l2(F.relu(self.norm(self.l1(u))))

    U = torch.randn(6, 4)
    with pytest.raises(InputError, match=r"F\.relu.*nn\.ReLU\(\)") as err:
        extract_states(Functional(), U)
    assert "refused" in str(err.value)  # auto says what the converter said
    with pytest.raises(InputError, match="no activation module ran"):
        hook_states(relu_mlp(), torch.randn(3, 6), skip_layers=["1", "3"])


def test_refused_and_malformed_modules_are_typed_errors():
    torch.manual_seed(6)
    U = torch.randn(4, 3)
    with pytest.raises(InputError, match=r"skip_layers=\['1'\]"):
        hook_states(nn.Sequential(nn.Linear(3, 4), nn.Hardshrink(), nn.Linear(4, 2)), U)
    hs = hook_states(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.LogSoftmax(dim=1)), U,
                     skip_layers=["3"])
    assert [lay.label for lay in hs.layers] == ["1"]
    with pytest.raises(InputError, match="GLU"):
        hook_states(nn.Sequential(nn.Linear(3, 4), nn.GLU()), U)

    class SeqFirst(nn.Module):  # the activation sees (T, m, d): not batch-first
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.act = nn.Linear(3, 4), nn.Tanh()

        def forward(self, u: torch.Tensor) -> torch.Tensor:
            return self.act(self.lin(u).unsqueeze(0).expand(2, -1, -1)).sum(0)

    with pytest.raises(ShapeError, match="batch size m = 4"):
        hook_states(SeqFirst(), U)
    with pytest.raises(ShapeError, match="cannot run"):
        hook_states(relu_mlp(), torch.randn(4, 5))
    with pytest.raises(InputError, match="dim=None"):
        hook_states(nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=None)), U)


def test_nonfinite_states_name_rows_and_blocks():
    class Poison(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[[2, 5], 1] = float("inf")
            return x

    net = nn.Sequential(nn.Linear(3, 4), Poison(), nn.Tanh(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1))
    with pytest.raises(NonFiniteError, match=r"2 row\(s\) \(samples\) \[2, 5\] in block\(s\) \['2'\]"):
        hook_states(net, torch.randn(7, 3))


def test_network_is_left_untouched():
    torch.manual_seed(7)
    net = TinyTransformer().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    st = extract_states(net, torch.randn(4, 10), dtype=D64, rescale=False)
    assert st.X.dtype == D64
    assert all(next(iter(net.parameters())).dtype == torch.float32 for _ in [0])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_sim_fits_a_gelu_silu_mlp_from_hooked_states():
    """SIM (Alg. 1) on the exact unscaled hooked states of a small GELU/SiLU MLP: feasible with
    ||A||_inf <= kappa when the weights are small, and the fitted model reproduces the outputs."""
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(5, 6), nn.GELU(), nn.Linear(6, 6), nn.SiLU(), nn.Linear(6, 2)).double()
    with torch.no_grad():
        net[2].weight.mul_(0.5)
    U = torch.randn(200, 5, dtype=D64)
    st = extract_states(net, U, method="hooks", rescale=False)
    model, rep = SIM(objective="exact", backend="serial", kappa=0.99).fit_states(st, bias=True)
    assert rep.a_inf_norm <= 0.99 / st.activation.lipschitz_inf
    assert rep.state_residual < 1e-8 and rep.output_residual < 1e-8
    ev = idl.sim.evaluate(model, U, teacher=st)
    assert ev.output_error < 1e-8 and ev.state_error < 1e-8
