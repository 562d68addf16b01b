"""Tests of idlkit.baselines: the explicit baselines of thesis ch. 5 (§5.2-5.3)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from idlkit.baselines import (
    ACTIVATIONS,
    MLP,
    NAC,
    NALU,
    LSTMModel,
    TransformerModel,
    count_parameters,
    matched_width,
    sinusoidal_encoding,
)
from idlkit.errors import ConfigurationError, NonFiniteError, ShapeError

THESIS_ACTIVATIONS = {"hardtanh", "sigmoid", "relu6", "tanh", "tanhshrink", "hardshrink", "leaky_relu",
                      "softshrink", "softsign", "relu", "prelu", "multiprelu", "softplus", "elu", "selu"}
# Pairs that compute the same function at initialisation: both PReLUs start at slope 0.25.
COINCIDE_AT_INIT = {frozenset({"prelu", "multiprelu"})}


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("hidden", [(), (7,), (5, 3, 4)])
def test_mlp_count_closed_form(hidden):
    widths = (6, *hidden, 2)
    expected = sum(a * b + b for a, b in itertools.pairwise(widths))
    assert count_parameters(MLP(6, hidden, 2)) == expected
    # multiprelu adds one slope per hidden unit, prelu one per hidden layer
    assert count_parameters(MLP(6, hidden, 2, "multiprelu")) == expected + sum(hidden)
    assert count_parameters(MLP(6, hidden, 2, "prelu")) == expected + len(hidden)


@pytest.mark.parametrize(("i", "h", "o", "L"), [(1, 4, 1, 1), (3, 5, 2, 2), (2, 8, 3, 3)])
def test_lstm_count_closed_form(i, h, o, L):
    expected = 4 * (h * (i + h) + 2 * h) + (L - 1) * 4 * (h * (h + h) + 2 * h) + h * o + o
    assert count_parameters(LSTMModel(i, h, o, num_layers=L)) == expected


@pytest.mark.parametrize(("i", "hidden", "o"), [(2, (), 1), (5, (4,), 3), (3, (2, 6), 2)])
def test_nalu_count_closed_form(i, hidden, o):
    widths = (i, *hidden, o)
    assert count_parameters(NALU(i, o, hidden)) == sum(3 * a * b for a, b in itertools.pairwise(widths))
    assert count_parameters(NAC(i, o)) == 2 * i * o


def test_count_parameters_trainable_only():
    m = MLP(3, (4,), 1)
    m.net[0].weight.requires_grad_(False)
    assert count_parameters(m) == 4 + 4 * 1 + 1
    # the positional encoding is a buffer, not a parameter
    with_pe = TransformerModel(1, 1, positional_encoding=True)
    without = TransformerModel(1, 1, positional_encoding=False)
    assert count_parameters(with_pe) == count_parameters(without)


# ----------------------------------------------------------------------------- matched_width


BUILDERS = {
    "mlp": lambda w: MLP(10, (w, w), 1),
    "mlp_multiprelu": lambda w: MLP(4, (w,), 2, "multiprelu"),
    "lstm": lambda w: LSTMModel(1, w, 1),
    "nalu": lambda w: NALU(50, 1, (w,)),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("target", [1, 57, 640, 7650, 10**6])
def test_matched_width_is_bruteforce_argmin(name, target):
    build = BUILDERS[name]
    low, high = 1, 60
    counts = {w: count_parameters(build(w)) for w in range(low, high + 1)}
    brute = min(range(low, high + 1), key=lambda w: (abs(counts[w] - target), w))
    assert matched_width(build, target, low=low, high=high) == brute


def test_matched_width_ties_go_to_smaller():
    # count(w) = 10 w: target 15 is equidistant from w=1 and w=2
    assert matched_width(lambda w: nn.Linear(w, 10, bias=False), 15, low=1, high=8) == 1
    assert matched_width(lambda w: nn.Linear(w, 10, bias=False), 16, low=1, high=8) == 2
    assert matched_width(lambda w: nn.Linear(w, 10, bias=False), 40, low=5, high=8) == 5


@pytest.mark.parametrize(("target", "low", "high"), [(0, 1, 10), (-3, 1, 10), (10, 5, 4), (10, 0, 4)])
def test_matched_width_errors(target, low, high):
    with pytest.raises(ConfigurationError):
        matched_width(lambda w: nn.Linear(w, 1), target, low=low, high=high)


# ----------------------------------------------------------------------------- activations


def test_activation_names_are_the_thesis_15():
    assert set(ACTIVATIONS) == THESIS_ACTIVATIONS and len(ACTIVATIONS) == 15


def test_activations_construct_run_and_differ():
    torch.manual_seed(0)
    x = torch.linspace(-8, 8, 161).unsqueeze(0).repeat(2, 1)  # covers relu vs relu6 (> 6) etc.
    out = {}
    for name, factory in ACTIVATIONS.items():
        module = factory(161)
        assert isinstance(module, nn.Module)
        y = module(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        out[name] = y
        mlp = MLP(3, (5, 4), 2, name)
        assert mlp(torch.randn(7, 3)).shape == (7, 2)
    for a, b in itertools.combinations(sorted(out), 2):
        same = torch.allclose(out[a], out[b], atol=1e-6)
        assert same == (frozenset({a, b}) in COINCIDE_AT_INIT), (a, b)


def test_multiprelu_has_per_unit_slopes():
    assert ACTIVATIONS["multiprelu"](9).weight.numel() == 9
    assert ACTIVATIONS["prelu"](9).weight.numel() == 1


def test_mlp_layers_and_3d_input():
    m = MLP(6, (4,), 2, "tanh")
    assert isinstance(m.net[-1], nn.Linear)  # no activation after the last layer
    assert [type(x) for x in m.net] == [nn.Linear, nn.Tanh, nn.Linear]
    x = torch.randn(5, 3, 2)
    torch.testing.assert_close(m(x), m(x.reshape(5, 6)))


# ----------------------------------------------------------------------------- NAC / NALU


def test_nac_constructed_adds_and_subtracts():
    nac = NAC(5, 2)
    signs = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, -1.0, 1.0]])
    with torch.no_grad():
        nac.W_hat.copy_(20.0 * signs)  # tanh -> +-1 where selected, 0 elsewhere
        nac.M_hat.fill_(20.0)  # sigmoid -> 1
    x = torch.randn(64, 5) * 10
    expected = torch.stack([x[:, 0] + x[:, 1], x[:, 1] - x[:, 3] + x[:, 4]], dim=1)
    torch.testing.assert_close(nac(x), expected, atol=1e-4, rtol=0)
    # M_hat very negative switches the selection off
    with torch.no_grad():
        nac.M_hat.fill_(-30.0)
    assert nac(x).abs().max() < 1e-4


def test_nalu_gate_zero_multiplies():
    nalu = NALU(3, 1)
    layer = nalu.layers[0]
    with torch.no_grad():
        layer.nac.W_hat.copy_(torch.tensor([[20.0, 20.0, 0.0]]))
        layer.nac.M_hat.fill_(20.0)
        layer.G.fill_(-50.0)  # positive inputs: g = sigmoid(-50 * sum) ~ 0, y = m
    x = torch.rand(32, 3) + 1.0
    torch.testing.assert_close(nalu(x)[:, 0], x[:, 0] * x[:, 1], rtol=1e-4, atol=1e-4)
    # gate forced to 1: the same layer adds
    with torch.no_grad():
        layer.G.fill_(50.0)
    torch.testing.assert_close(nalu(x)[:, 0], x[:, 0] + x[:, 1], rtol=1e-4, atol=1e-4)


def test_nalu_stack_shapes_and_3d_input():
    nalu = NALU(6, 2, (4, 3))
    assert [(l.in_features, l.out_features) for l in nalu.layers] == [(6, 4), (4, 3), (3, 2)]
    x = torch.randn(5, 2, 3)
    assert nalu(x).shape == (5, 2)
    torch.testing.assert_close(nalu(x), nalu(x.reshape(5, 6)))


# ----------------------------------------------------------------------------- sequence models


def _seq2seq_models():
    torch.manual_seed(1)
    return {
        "lstm": LSTMModel(2, 6, 3, num_layers=2, mode="seq2seq"),
        "transformer": TransformerModel(2, 3, d_model=8, nhead=2, num_layers=2, mode="seq2seq"),
    }


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_seq2seq_is_causal(name):
    model = _seq2seq_models()[name].double().eval()
    torch.manual_seed(2)
    x = torch.randn(4, 9, 2, dtype=torch.float64)
    y = model(x)
    assert y.shape == (4, 9, 3)
    for t in (0, 3, 7):
        later = x.clone()
        later[:, t + 1:] += torch.randn_like(later[:, t + 1:]) * 3
        y_later = model(later)
        torch.testing.assert_close(y_later[:, : t + 1], y[:, : t + 1], atol=1e-10, rtol=0)
        assert not torch.allclose(y_later[:, t + 1:], y[:, t + 1:], atol=1e-6)
        now = x.clone()
        now[:, t] += 1.0
        assert (model(now)[:, t] - y[:, t]).abs().max() > 1e-6
        torch.testing.assert_close(model(now)[:, :t], y[:, :t], atol=1e-10, rtol=0)


def test_seq2one_shapes_and_2d_input():
    torch.manual_seed(3)
    lstm = LSTMModel(1, 5, 2)
    tf = TransformerModel(1, 2)
    x2 = torch.randn(6, 10)
    for m in (lstm, tf):
        m.eval()
        assert m(x2).shape == (6, 2)
        torch.testing.assert_close(m(x2), m(x2.unsqueeze(-1)))
    lstm_s = LSTMModel(1, 5, 2, mode="seq2seq")
    tf_s = TransformerModel(1, 2, mode="seq2seq")
    assert lstm_s(x2).shape == (6, 10, 2) and tf_s(x2).shape == (6, 10, 2)
    assert LSTMModel(3, 4, 1)(torch.randn(2, 7, 3)).shape == (2, 1)
    assert TransformerModel(3, 1, d_model=6, nhead=3)(torch.randn(2, 7, 3)).shape == (2, 1)


def test_lstm_seq2one_is_last_step_of_seq2seq():
    torch.manual_seed(4)
    one = LSTMModel(2, 5, 3)
    seq = LSTMModel(2, 5, 3, mode="seq2seq")
    seq.load_state_dict(one.state_dict())
    x = torch.randn(3, 8, 2)
    torch.testing.assert_close(one(x), seq(x)[:, -1])


def test_transformer_positional_encoding_breaks_permutation_invariance():
    torch.manual_seed(5)
    x = torch.randn(4, 12, 2, dtype=torch.float64)
    perm = torch.randperm(12)
    no_pe = TransformerModel(2, 3, d_model=8, positional_encoding=False).double().eval()
    torch.testing.assert_close(no_pe(x[:, perm]), no_pe(x), atol=1e-10, rtol=0)
    with_pe = TransformerModel(2, 3, d_model=8, positional_encoding=True).double().eval()
    with_pe.load_state_dict(no_pe.state_dict())  # same weights: only the encoding differs
    assert not torch.allclose(with_pe(x[:, perm]), with_pe(x), atol=1e-6)


def test_sinusoidal_encoding_values():
    pe = sinusoidal_encoding(5, 7)  # odd d_model: 4 sine and 3 cosine columns
    assert pe.shape == (5, 7)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1, 0, 1, 0, 1, 0]))
    torch.testing.assert_close(pe[:, 0], torch.sin(torch.arange(5.0)))
    torch.testing.assert_close(pe[:, 3], torch.cos(torch.arange(5.0) / 10000 ** (2 / 7)))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("build", [
    lambda: MLP(0, (4,), 1),
    lambda: MLP(3, (4, -1), 1),
    lambda: MLP(True, (4,), 1),
    lambda: MLP(3, (4.0,), 1),
    lambda: MLP(3, 4, 1),
    lambda: MLP(3, (4,), 1, "gelu"),
    lambda: LSTMModel(1, 0, 1),
    lambda: LSTMModel(1, 4, 1, num_layers=False),
    lambda: LSTMModel(1, 4, 1, mode="seq2many"),
    lambda: TransformerModel(1, 1, d_model=10, nhead=3),
    lambda: TransformerModel(1, 1, mode="both"),
    lambda: TransformerModel(1, 0),
    lambda: TransformerModel(1, 1, dropout=1.0),
    lambda: NALU(2, 1, (0,)),
    lambda: NALU(2, 1, eps=0.0),
    lambda: NAC(2, True),
])
def test_bad_config_raises(build):
    with pytest.raises(ConfigurationError):
        build()


def test_error_messages_name_value_and_fix():
    with pytest.raises(ConfigurationError, match="d_model=10.*nhead=3"):
        TransformerModel(1, 1, d_model=10, nhead=3)
    with pytest.raises(ConfigurationError, match="'gelu'.*relu"):
        MLP(2, (), 1, "gelu")
    with pytest.raises(ShapeError, match="input_size=1.*input_size=3"):
        LSTMModel(3, 4, 1)(torch.randn(2, 5))


@pytest.mark.parametrize(("model", "x"), [
    (MLP(4, (3,), 1), torch.randn(2, 5)),
    (MLP(4, (3,), 1), torch.randn(2, 3, 3)),
    (MLP(4, (3,), 1), torch.randn(4)),
    (NALU(4, 1), torch.randn(2, 3)),
    (LSTMModel(3, 4, 1), torch.randn(2, 5)),
    (LSTMModel(3, 4, 1), torch.randn(2, 5, 2)),
    (LSTMModel(1, 4, 1), torch.randn(2, 0)),
    (TransformerModel(2, 1), torch.randn(2, 5)),
    (TransformerModel(2, 1), torch.randn(2, 5, 3)),
    (TransformerModel(1, 1, max_len=4), torch.randn(2, 5)),
])
def test_bad_shape_raises(model, x):
    with pytest.raises(ShapeError):
        model(x)


@pytest.mark.parametrize("model", [MLP(2, (3,), 1), NALU(2, 1), LSTMModel(1, 3, 1), TransformerModel(1, 1)])
def test_nan_input_raises(model):
    x = torch.randn(3, 2)
    x[1, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        model(x)


# ----------------------------------------------------------------------------- training smoke


@pytest.mark.parametrize("kind", ["mlp", "nalu"])
def test_learns_addition_in_distribution(kind):
    # x ~ U(1, 2): the thesis's arithmetic training distribution (§5.3, Table 5.2). On inputs
    # around 0 a NALU plateaus (MSE ~ 0.15): its gate sigmoid(G x) has no bias, so g -> 1/2 as
    # x -> 0 and the multiplicative path leaks in (a property of Trask et al.'s unit).
    torch.manual_seed(0)
    model = MLP(2, (16,), 1) if kind == "mlp" else NALU(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2 if kind == "mlp" else 0.1)
    x = torch.rand(256, 2) + 1
    y = x.sum(dim=1, keepdim=True)
    for _ in range(400):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    x_test = torch.rand(256, 2) + 1
    mse = nn.functional.mse_loss(model(x_test), x_test.sum(dim=1, keepdim=True)).item()
    assert mse < 1e-2, mse


def test_fit_classifier_is_the_plain_adam_loop_and_deterministic():
    """fit_classifier equals a hand-written Adam / shuffled-minibatch loop, weight for weight."""
    from idlkit.baselines import fit_classifier

    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 4, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long()

    def net() -> torch.nn.Module:
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    ours = fit_classifier(net(), X, y, epochs=3, lr=1e-2, batch_size=16, seed=5)
    ref = net()
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        perm = torch.randperm(50, generator=gen)
        for i in range(0, 50, 16):
            idx = perm[i:i + 16]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(X[idx]), y[idx]).backward()
            opt.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not ours.training
    again = fit_classifier(net(), X, y, epochs=3, lr=1e-2, batch_size=16, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), again.parameters(), strict=True))
    acc = float((fit_classifier(net(), X, y, epochs=60).double()(X.double()).argmax(1) == y).float().mean())
    assert acc >= 0.95


def test_fit_classifier_bad_input_is_typed():
    from idlkit.baselines import fit_classifier
    from idlkit.errors import ConfigurationError, IdlError, NonFiniteError, ShapeError

    net = torch.nn.Linear(3, 2)
    X, y = torch.randn(6, 3), torch.zeros(6, dtype=torch.long)
    with pytest.raises(ConfigurationError, match="epochs"):
        fit_classifier(net, X, y, epochs=0)
    with pytest.raises(ConfigurationError, match="lr"):
        fit_classifier(net, X, y, epochs=1, lr=-1.0)
    with pytest.raises(ShapeError, match="integer class labels"):
        fit_classifier(net, X, y.float(), epochs=1)
    with pytest.raises(ShapeError, match="integer class labels"):
        fit_classifier(net, X, y[:5], epochs=1)
    with pytest.raises(NonFiniteError):
        fit_classifier(net, X.clone().fill_(float("nan")), y, epochs=1)
    with pytest.raises(IdlError, match="Module"):
        fit_classifier("net", X, y, epochs=1)  # type: ignore[arg-type]
