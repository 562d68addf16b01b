"""Explicit baselines of the extrapolation studies (thesis, paper 003, ch. 5, §5.2-5.3).

The thesis compares implicit models with explicit networks "specifically designed to
excel on each task" (§5.2): MLPs (identity, arithmetic; 15 activations, Table 5.1 and
Table 5.2), LSTMs (sequential data), NALUs (Trask et al. 2018, out-of-distribution
arithmetic) and Transformer encoders (with and without positional encodings, §5.3
"Rolling Functions"). "The number of parameters in the implicit models is matched to
their non-implicit counterparts" (§5.2): :func:`count_parameters` and
:func:`matched_width` do that matching.

:class:`MON` (Winston & Kolter 2020) is the l2 monotone-operator baseline of paper 004's
robustness comparison, with its certified l2 and l_inf Lipschitz bounds.

All models are plain :class:`torch.nn.Module` s, batch-first, with no global state.
Sequence models take ``(batch, T, F)``; a 2-D ``(batch, p)`` input is read as a sequence
of ``p`` scalar steps ``(batch, p, 1)`` (then ``input_size`` must be 1). The flat models
(:class:`MLP`, :class:`NALU`) take ``(batch, in_features)`` or ``(batch, T, F)`` with
``T * F == in_features`` (flattened), so they run on the sequence tasks too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._validation import all_finite, check_int, check_positive, check_probability
from .errors import ConfigurationError, ConvergenceError, InputError, NonFiniteError, ShapeError

__all__ = [
    "ACTIVATIONS",
    "MODES",
    "MLP",
    "MON",
    "SPLITTINGS",
    "LSTMModel",
    "TransformerModel",
    "BoundedAttention",
    "NAC",
    "NALU",
    "count_parameters",
    "fit_classifier",
    "matched_width",
    "sinusoidal_encoding",
]

MODES = ("seq2one", "seq2seq")

#: The 15 MLP activations of thesis §5.3 (Table 5.1), each a factory of the layer width.
#: ``"prelu"`` has one shared slope (``nn.PReLU()``), ``"multiprelu"`` one slope per unit
#: (``nn.PReLU(num_parameters=width)``); both start at slope 0.25 (torch default), so
#: they compute the same function at initialisation. Other parameters are torch defaults
#: (``leaky_relu`` slope 0.01, ``hardshrink``/``softshrink`` lambda 0.5, ...).
ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "hardtanh": lambda width: nn.Hardtanh(),
    "sigmoid": lambda width: nn.Sigmoid(),
    "relu6": lambda width: nn.ReLU6(),
    "tanh": lambda width: nn.Tanh(),
    "tanhshrink": lambda width: nn.Tanhshrink(),
    "hardshrink": lambda width: nn.Hardshrink(),
    "leaky_relu": lambda width: nn.LeakyReLU(),
    "softshrink": lambda width: nn.Softshrink(),
    "softsign": lambda width: nn.Softsign(),
    "relu": lambda width: nn.ReLU(),
    "prelu": lambda width: nn.PReLU(),
    "multiprelu": lambda width: nn.PReLU(num_parameters=width),
    "softplus": lambda width: nn.Softplus(),
    "elu": lambda width: nn.ELU(),
    "selu": lambda width: nn.SELU(),
}


# ----------------------------------------------------------------------------- validation


def _check_widths(hidden: object, example: str) -> tuple[int, ...]:
    """``hidden`` as a tuple of positive ints (layer widths), else a ConfigurationError."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ConfigurationError(f"hidden must be a sequence of positive ints, got {hidden!r}; "
                                 f"pass e.g. hidden={example} or hidden=()")
    return tuple(check_int(f"hidden[{i}]", h, 1) for i, h in enumerate(hidden))


def _check_mode(mode: object) -> str:
    if mode not in MODES:
        raise ConfigurationError(f"unknown mode {mode!r}; use one of {MODES}")
    return str(mode)


def _check_tensor(x: object) -> Tensor:
    """``x`` as a floating, finite tensor, else InputError / NonFiniteError."""
    if not isinstance(x, Tensor):
        raise InputError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"input must be a floating tensor, got dtype {x.dtype}; convert with x.float()")
    if not all_finite(x):
        raise NonFiniteError("input contains NaN or Inf; clean or mask the data before the forward pass")
    return x


def _flat_input(x: object, in_features: int) -> Tensor:
    """A flat model's input as ``(batch, in_features)``: ``(batch, T, F)`` with ``T F = in_features``
    is flattened over its last two dims."""
    x = _check_tensor(x)
    if x.dim() == 2 and x.shape[1] == in_features:
        return x
    if x.dim() == 3 and x.shape[1] * x.shape[2] == in_features:
        return x.reshape(x.shape[0], in_features)
    raise ShapeError(f"expected input of shape (batch, {in_features}) or (batch, T, F) with "
                     f"T * F = {in_features}; got {tuple(x.shape)}")


def _seq_input(x: object, input_size: int) -> Tensor:
    """A sequence model's input as ``(batch, T, input_size)``; 2-D ``(batch, p)`` becomes
    ``(batch, p, 1)`` (p scalar steps), which needs ``input_size == 1``."""
    x = _check_tensor(x)
    if x.dim() == 2:
        if input_size != 1:
            raise ShapeError(f"a 2-D input {tuple(x.shape)} is read as a sequence of scalar steps "
                             f"(batch, p, 1), which needs input_size=1, got input_size={input_size}; "
                             f"pass a 3-D input (batch, T, {input_size})")
        x = x.unsqueeze(-1)
    if x.dim() != 3 or x.shape[2] != input_size:
        raise ShapeError(f"expected input of shape (batch, T, {input_size}) or (batch, p) with "
                         f"input_size=1; got {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ShapeError(f"the sequence is empty (T = 0) in input of shape {tuple(x.shape)}; pass T >= 1")
    return x


# ----------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """Multilayer perceptron baseline (thesis §5.2-5.3, Tables 5.1-5.2).

    ``Linear(in, h_1), act, Linear(h_1, h_2), act, ..., Linear(h_k, out)``: one activation
    after every hidden layer, none after the output layer. ``hidden=()`` gives a linear
    model. ``activation`` is one of the 15 names in :data:`ACTIVATIONS`; each hidden layer
    gets its own activation module (so ``"prelu"``/``"multiprelu"`` slopes are per layer).

    Input ``(batch, in_features)``, or ``(batch, T, F)`` with ``T * F == in_features``
    (flattened); output ``(batch, out_features)``.

    Args:
        in_features: input size.
        hidden: widths of the hidden layers (``()``: a linear model).
        out_features: output size.
        activation: one of :data:`ACTIVATIONS`.

    Raises:
        ConfigurationError: an unknown ``activation`` or a non-positive size.

    Examples:
        >>> net = MLP(4, [8, 8], 3, activation="tanh")
        >>> net(torch.randn(5, 4)).shape, count_parameters(net)     # 40 + 72 + 27
        (torch.Size([5, 3]), 139)
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int,
                 activation: str = "relu") -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.hidden = _check_widths(hidden, example="(32, 32)")
        if activation not in ACTIVATIONS:
            raise ConfigurationError(f"unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}")
        self.activation = activation
        widths = (self.in_features, *self.hidden, self.out_features)
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation](widths[i + 1]))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, out_features)`` for ``x`` of shape ``(batch, in_features)`` or ``(batch, T, F)``.

        Args:
            x: ``(batch, in_features)`` or ``(batch, T, F)`` input.

        Returns:
            ``(batch, out_features)`` output.
        """
        return self.net(_flat_input(x, self.in_features))


# ----------------------------------------------------------------------------- LSTM


class LSTMModel(nn.Module):
    """LSTM baseline for the sequential tasks (thesis §5.2 "LSTMs for tasks involving
    sequential data", §5.3 rolling average / argmax, spiky series, AMC volatility).

    A batch-first ``nn.LSTM(input_size, hidden_size, num_layers)`` and a linear head
    ``Linear(hidden_size, output_size)``. ``mode="seq2one"`` applies the head to the last
    step's hidden state, giving ``(batch, output_size)``; ``mode="seq2seq"`` applies it to
    every step, giving ``(batch, T, output_size)`` (causal: step ``t`` sees steps ``<= t``).

    Parameters (torch convention, two bias vectors per gate block): each layer ``l`` has
    ``4 (h (i_l + h) + 2 h)`` with ``i_0 = input_size``, ``i_l = hidden_size``, plus
    ``hidden_size * output_size + output_size`` for the head.

    Args:
        input_size: features per time step.
        hidden_size: LSTM state size.
        output_size: output size of the head.
        num_layers: stacked LSTM layers.
        mode: ``"seq2one"`` or ``"seq2seq"``.

    Raises:
        ConfigurationError: an unknown ``mode`` or a non-positive size.

    Examples:
        >>> net = LSTMModel(2, 8, 1)
        >>> net(torch.randn(5, 7, 2)).shape                  # (batch, T, p) -> (batch, q)
        torch.Size([5, 1])
        >>> LSTMModel(2, 8, 1, mode="seq2seq")(torch.randn(5, 7, 2)).shape
        torch.Size([5, 7, 1])
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, *, num_layers: int = 1,
                 mode: str = "seq2one") -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self.output_size = check_int("output_size", output_size, 1)
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.mode = _check_mode(mode)
        self.lstm = nn.LSTM(self.input_size, self.hidden_size, num_layers=self.num_layers, batch_first=True)
        self.head = nn.Linear(self.hidden_size, self.output_size)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, output_size)`` (seq2one) or ``(batch, T, output_size)`` (seq2seq) for ``x``
        of shape ``(batch, T, input_size)`` or ``(batch, p)`` (with ``input_size=1``).

        Args:
            x: ``(batch, T, input_size)`` sequences, or ``(batch, p)`` with ``input_size=1``.

        Returns:
            ``(batch, output_size)`` (seq2one) or ``(batch, T, output_size)`` (seq2seq).
        """
        h, _ = self.lstm(_seq_input(x, self.input_size))
        if self.mode == "seq2one":
            return self.head(h[:, -1])
        return self.head(h)


# ----------------------------------------------------------------------------- Transformer


def sinusoidal_encoding(length: int, d_model: int) -> Tensor:
    """Sinusoidal positional encoding (Vaswani et al. 2017, §3.5), shape ``(length, d_model)``:
    ``PE[t, 2k] = sin(t / 10000^(2k/d))``, ``PE[t, 2k+1] = cos(t / 10000^(2k/d))``.

    Args:
        length: number of positions ``T``.
        d_model: encoding size.

    Returns:
        ``(length, d_model)`` float tensor.

    Examples:
        >>> P = sinusoidal_encoding(5, 4)
        >>> P.shape, P[0].tolist()                           # position 0: sin 0 = 0, cos 0 = 1
        (torch.Size([5, 4]), [0.0, 1.0, 0.0, 1.0])
    """
    position = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)[:, : d_model // 2]
    return pe.to(torch.get_default_dtype())


class TransformerModel(nn.Module):
    """Transformer-encoder baseline (thesis §5.2 "Transformer-based models", §5.3: compared
    with and without positional encodings).

    ``Linear(input_size, d_model)``, optional sinusoidal positional encoding (added),
    ``nn.TransformerEncoder`` of ``num_layers`` layers (``batch_first=True``), head
    ``Linear(d_model, output_size)``.

    * ``mode="seq2one"``: full (bidirectional) attention, then the head on the **mean over
      time** of the encoder output, giving ``(batch, output_size)``. Without positional
      encoding this is invariant to permuting the time steps (the encoder is permutation
      equivariant and the mean is symmetric) -- the thesis's "Transformer without
      positional encodings, which lacks the ability to differentiate between sequence
      positions".
    * ``mode="seq2seq"``: a causal attention mask (step ``t`` attends to steps ``<= t``)
      and the head at every step, giving ``(batch, T, output_size)``.

    A 2-D input ``(batch, p)`` is read as ``p`` scalar tokens (needs ``input_size=1``).
    Sequences longer than ``max_len`` are rejected when ``positional_encoding`` is on.

    Args:
        input_size: features per time step.
        output_size: output size of the head.
        d_model: embedding size.
        nhead: attention heads (dividing ``d_model``).
        num_layers: encoder layers.
        dim_feedforward: width of each layer's feed-forward block.
        dropout: dropout probability in ``[0, 1)``.
        mode: ``"seq2one"`` or ``"seq2seq"``.
        positional_encoding: add the sinusoidal encoding.
        max_len: longest sequence the encoding is precomputed for.

    Raises:
        ConfigurationError: an unknown ``mode`` or ``nhead`` not dividing ``d_model``.

    Examples:
        >>> net = TransformerModel(2, 1)
        >>> net(torch.randn(5, 7, 2)).shape
        torch.Size([5, 1])
    """

    def __init__(self, input_size: int, output_size: int, *, d_model: int = 16, nhead: int = 2,
                 num_layers: int = 1, dim_feedforward: int = 32, dropout: float = 0.0,
                 mode: str = "seq2one", positional_encoding: bool = True, max_len: int = 4096) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size, 1)
        self.output_size = check_int("output_size", output_size, 1)
        self.d_model = check_int("d_model", d_model, 1)
        self.nhead = check_int("nhead", nhead, 1)
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.dim_feedforward = check_int("dim_feedforward", dim_feedforward, 1)
        self.max_len = check_int("max_len", max_len, 1)
        self.mode = _check_mode(mode)
        if self.d_model % self.nhead != 0:
            raise ConfigurationError(f"d_model={d_model} is not divisible by nhead={nhead}; pick d_model "
                                     f"a multiple of nhead (e.g. d_model={nhead * max(1, d_model // nhead)})")
        dropout = check_probability("dropout", dropout, high_inclusive=False, example=0.1)
        if not isinstance(positional_encoding, bool):
            raise ConfigurationError(f"positional_encoding must be True or False, "
                                     f"got {positional_encoding!r}")
        self.positional_encoding = positional_encoding
        self.input_proj = nn.Linear(self.input_size, self.d_model)
        layer = nn.TransformerEncoderLayer(self.d_model, self.nhead, dim_feedforward=self.dim_feedforward,
                                           dropout=float(dropout), batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=self.num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(self.d_model, self.output_size)
        pe = sinusoidal_encoding(self.max_len, self.d_model) if positional_encoding else torch.zeros(0)
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, output_size)`` (seq2one) or ``(batch, T, output_size)`` (seq2seq) for ``x``
        of shape ``(batch, T, input_size)`` or ``(batch, p)`` (with ``input_size=1``).

        Args:
            x: ``(batch, T, input_size)`` sequences, or ``(batch, p)`` with ``input_size=1``.

        Returns:
            ``(batch, output_size)`` (seq2one) or ``(batch, T, output_size)`` (seq2seq).

        Raises:
            ShapeError: a sequence longer than ``max_len`` or of another feature size.
        """
        x = _seq_input(x, self.input_size)
        T = x.shape[1]
        z = self.input_proj(x)
        if self.positional_encoding:
            if T > self.max_len:
                raise ShapeError(f"sequence length T={T} exceeds max_len={self.max_len}; build the model "
                                 f"with max_len >= {T}")
            z = z + self.pe[:T].to(dtype=z.dtype)
        if self.mode == "seq2seq":
            mask = torch.triu(torch.full((T, T), float("-inf"), dtype=z.dtype, device=z.device), diagonal=1)
            return self.head(self.encoder(z, mask=mask, is_causal=True))
        return self.head(self.encoder(z).mean(dim=1))


# ----------------------------------------------------------------------------- bounded attention


class BoundedAttention(nn.Module):
    """Self-attention with tanh-bounded queries, keys and values: the attention unit that has an
    exact, well-posed implicit form (paper 000 §2.4, §3.6).

    For ``x`` of shape ``(batch, T, dim)`` and each of ``heads`` heads (``dim / heads`` features)::

        q, k, v = tanh(W_q x + b_q), tanh(W_k x + b_k), tanh(W_v x + b_v)
        a = softmax(q k^T / sqrt(dim / heads))          (over the keys)
        y = W_o (a v) + b_o

    Why bounded: the scores ``q k^T`` multiply two functions of the input, and a product is
    Lipschitz only when both factors are bounded (§2.4: ``|phi_1| <= c_1``, ``|phi_2| <= c_2`` give
    the constant ``max(c_2 gamma_1, c_1 gamma_2)``). Standard attention (``nn.MultiheadAttention``,
    q, k, v plain linear maps) is a product of unbounded maps and has no such form; here
    ``|q|, |k|, |v| <= 1``, the softmax weights lie in ``[0, 1]``, and every product of the
    unit is one of §3.6's multiplicative units, so ``idlkit.convert.from_torch`` converts it
    exactly (each product a :class:`~idlkit.activations.Product` state pair).

    Args:
        dim: feature size of ``x``.
        heads: attention heads, dividing ``dim``.
        bias: learn the biases ``b_q, b_k, b_v, b_o``.

    Raises:
        ConfigurationError: ``dim`` not divisible by ``heads``.

    Examples:
        >>> att = BoundedAttention(8, heads=2)
        >>> att(torch.randn(3, 5, 8)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, dim: int, heads: int = 1, *, bias: bool = True) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, 1)
        self.heads = check_int("heads", heads, 1)
        if self.dim % self.heads:
            raise ConfigurationError(f"dim={dim} is not divisible by heads={heads}; pick dim a multiple "
                                     f"of heads (e.g. dim={self.heads * max(1, self.dim // self.heads)})")
        self.head_dim = self.dim // self.heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Linear(self.dim, self.dim, bias=bias)
        self.key = nn.Linear(self.dim, self.dim, bias=bias)
        self.value = nn.Linear(self.dim, self.dim, bias=bias)
        self.out = nn.Linear(self.dim, self.dim, bias=bias)

    def _split(self, y: Tensor, b: object, t: object) -> Tensor:
        """``(batch, T, dim) -> (batch, heads, T, head_dim)``."""
        if self.heads == 1:
            return y
        return y.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, T, dim) -> (batch, T, dim)``.

        Args:
            x: ``(batch, T, dim)`` input.

        Returns:
            ``(batch, T, dim)`` output.

        Raises:
            ShapeError: ``x`` not of shape ``(batch, T, dim)``.
        """
        if not isinstance(x, torch.fx.Proxy):  # (a torch.fx trace cannot branch on shapes)
            if not isinstance(x, Tensor):
                raise InputError(f"input must be a torch.Tensor, got {type(x).__name__}")
            if x.dim() != 3 or x.shape[-1] != self.dim:
                raise ShapeError(f"BoundedAttention expects (batch, T, {self.dim}), got {tuple(x.shape)}")
        b, t = x.size(0), x.size(1)
        q = self._split(torch.tanh(self.query(x)), b, t)
        k = self._split(torch.tanh(self.key(x)), b, t)
        v = self._split(torch.tanh(self.value(x)), b, t)
        a = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        y = a @ v
        if self.heads > 1:
            y = y.transpose(1, 2).reshape(b, t, self.dim)
        return self.out(y)


# ----------------------------------------------------------------------------- NAC / NALU


class NAC(nn.Module):
    """Neural accumulator (Trask et al. 2018, §2.1): ``a = W x`` with
    ``W = tanh(W_hat) * sigmoid(M_hat)`` (elementwise), which biases ``W`` towards
    ``{-1, 0, 1}`` so that the layer adds and subtracts inputs. No bias.

    ``W_hat`` and ``M_hat`` (shape ``(out_features, in_features)``) are initialised
    Xavier-uniform, as in Trask et al.'s reference implementations (e.g. the
    TensorFlow ``glorot_uniform`` default); ``2 * in * out`` parameters.

    Args:
        in_features: input size.
        out_features: output size.

    Examples:
        >>> nac = NAC(3, 2)
        >>> nac(torch.randn(5, 3)).shape, count_parameters(nac)
        (torch.Size([5, 2]), 12)
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.W_hat = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.M_hat = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform ``W_hat`` and ``M_hat``."""
        nn.init.xavier_uniform_(self.W_hat)
        nn.init.xavier_uniform_(self.M_hat)

    @property
    def weight(self) -> Tensor:
        """``W = tanh(W_hat) * sigmoid(M_hat)`` (Trask et al. eq. 1)."""
        return torch.tanh(self.W_hat) * torch.sigmoid(self.M_hat)

    def forward(self, x: Tensor) -> Tensor:
        """``a = W x`` for ``x`` of shape ``(batch, in_features)`` or ``(batch, T, F)`` (flattened).

        Args:
            x: ``(batch, in_features)`` or ``(batch, T, F)`` input.

        Returns:
            ``(batch, out_features)`` output ``a``.
        """
        return _flat_input(x, self.in_features) @ self.weight.t()


class _NALULayer(nn.Module):
    """One NALU layer (Trask et al. 2018, §2.2, eqs. 2): ``a = W x`` (a :class:`NAC`),
    ``m = exp(W log(|x| + eps))`` with the same ``W``, ``g = sigmoid(G x)``,
    ``y = g * a + (1 - g) * m``; ``G`` Xavier-uniform, no bias; ``3 * in * out`` parameters."""

    def __init__(self, in_features: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.eps = eps
        self.nac = NAC(in_features, out_features)
        self.G = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.xavier_uniform_(self.G)

    def forward(self, x: Tensor) -> Tensor:
        W = self.nac.weight
        a = x @ W.t()
        m = torch.exp(torch.log(x.abs() + self.eps) @ W.t())
        g = torch.sigmoid(x @ self.G.t())
        return g * a + (1 - g) * m


class NALU(nn.Module):
    """Neural arithmetic logic unit stack (Trask et al. 2018, §2.2; thesis §5.2 "NALUs for
    out-of-distribution (OOD) arithmetic tasks").

    Layers of widths ``in_features -> hidden[0] -> ... -> out_features``, each

        W = tanh(W_hat) * sigmoid(M_hat),   a = W x,   m = exp(W log(|x| + eps)),
        g = sigmoid(G x),                   y = g * a + (1 - g) * m

    (the additive and the multiplicative path share ``W``, as in the paper; no biases).
    ``W_hat``, ``M_hat`` and ``G`` are Xavier-uniform (see :class:`NAC`). Each layer has
    ``3 * in * out`` parameters. The layers are in ``self.layers``; layer ``k``'s NAC is
    ``self.layers[k].nac`` and its gate matrix ``self.layers[k].G``.

    Input ``(batch, in_features)`` or ``(batch, T, F)`` with ``T * F == in_features``.

    Args:
        in_features: input size.
        out_features: output size.
        hidden: widths of the hidden NALU layers.
        eps: the ``eps`` of ``log(|x| + eps)``, ``> 0``.

    Examples:
        >>> nalu = NALU(3, 1, hidden=[4])
        >>> nalu(torch.rand(5, 3) + 1).shape
        torch.Size([5, 1])
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (),
                 eps: float = 1e-7) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.hidden = _check_widths(hidden, example="(8,)")
        self.eps = check_positive("eps", eps, example=1e-7, why="the default is 1e-7")
        widths = (self.in_features, *self.hidden, self.out_features)
        self.layers = nn.ModuleList(_NALULayer(widths[i], widths[i + 1], self.eps)
                                    for i in range(len(widths) - 1))

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, out_features)`` for ``x`` of shape ``(batch, in_features)`` or ``(batch, T, F)``.

        Args:
            x: ``(batch, in_features)`` or ``(batch, T, F)`` input.

        Returns:
            ``(batch, out_features)`` output.
        """
        y = _flat_input(x, self.in_features)
        for layer in self.layers:
            y = layer(y)
        return y


# ----------------------------------------------------------------------------- parameter matching


def fit_classifier(net: nn.Module, X: Tensor, y: Tensor, *, epochs: int, lr: float = 1e-2,
                   batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Train a baseline classifier in place and return it in eval mode: Adam (``lr``) on the
    mean cross-entropy of shuffled minibatches of ``batch_size`` (one permutation per epoch from
    a generator seeded with ``seed``, so two calls on equal networks give equal weights). The
    teachers of SIM and of the robustness studies are trained this way; ``X`` is cast to the
    network's dtype.

    Args:
        net: the classifier ``(batch, p) -> (batch, q)``, trained in place.
        X: ``(N, p)`` inputs.
        y: ``(N,)`` integer labels.
        epochs: passes over the data, ``>= 1``.
        lr: Adam learning rate, ``> 0``.
        batch_size: minibatch size, ``>= 1``.
        seed: seed of the batch order.

    Returns:
        ``net``, in eval mode.

    Raises:
        ShapeError: ``X`` and ``y`` of different lengths or ``y`` not 1-D.
        ConfigurationError: bad ``epochs``, ``lr`` or ``batch_size``.

    Examples:
        >>> _ = torch.manual_seed(0); X = torch.randn(64, 2); y = (X[:, 0] > 0).long()
        >>> net = fit_classifier(nn.Linear(2, 2), X, y, epochs=30)
        >>> bool((net(X).argmax(1) == y).float().mean() > 0.9)
        True
    """
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    check_positive("lr", lr)
    if not isinstance(net, nn.Module):
        raise ConfigurationError(f"net must be a torch.nn.Module; got {type(net).__name__}")
    X = _check_tensor(X)
    if not isinstance(y, Tensor) or y.dim() != 1 or X.shape[0] != y.shape[0] \
            or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ShapeError(f"X must be (m, ...) and y (m,) integer class labels; got X {tuple(X.shape)}, "
                         f"y {getattr(y, 'shape', type(y).__name__)} {getattr(y, 'dtype', '')}")
    param = next(net.parameters(), None)
    if param is None:
        raise ConfigurationError("net has no parameters to train")
    X, y = X.to(param.dtype), y.long()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(X.shape[0], generator=gen).split(batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(net(X[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars of ``module`` (``requires_grad`` parameters; buffers excluded).

    Args:
        module: any torch module.

    Returns:
        The count, an int.

    Examples:
        >>> count_parameters(torch.nn.Linear(4, 3))
        15
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def matched_width(build: Callable[[int], nn.Module], target: int, *, low: int = 1, high: int = 4096) -> int:
    """The width ``w`` in ``[low, high]`` whose ``count_parameters(build(w))`` is closest to
    ``target`` (thesis §5.2: "the number of parameters in the implicit models is matched to
    their non-implicit counterparts").

    The count is assumed nondecreasing in ``w``: a binary search finds the smallest ``w``
    with count ``>= target`` (or ``high``), then ``w`` and ``w - 1`` are compared; a tie
    goes to the smaller width. ``O(log(high - low))`` calls of ``build``.

    Args:
        build: ``width -> module``.
        target: the parameter count to match.
        low: smallest width tried, ``>= 1``.
        high: largest width tried, ``>= low``.

    Returns:
        The width, an int.

    Raises:
        ConfigurationError: ``low > high`` or non-positive bounds.

    Examples:
        >>> w = matched_width(lambda w: MLP(4, [w], 3), target=100)
        >>> w, count_parameters(MLP(4, [w], 3))              # 8 w + 3 closest to 100
        (12, 99)
    """
    check_int("target (a parameter count)", target, 1)
    for name, value in (("low", low), ("high", high)):
        check_int(name, value, 1)
    if low > high:
        raise ConfigurationError(f"low={low} > high={high}; pass low <= high")

    cache: dict[int, int] = {}

    def count(w: int) -> int:
        if w not in cache:
            cache[w] = count_parameters(build(w))
        return cache[w]

    lo, hi = low, high
    while lo < hi:  # smallest w in [low, high] with count(w) >= target, else high
        mid = (lo + hi) // 2
        if count(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = lo
    if lo > low and abs(count(lo - 1) - target) <= abs(count(lo) - target):
        best = lo - 1
    return best


# ----------------------------------------------------------------------------- MON

SPLITTINGS = ("peaceman_rachford", "forward_backward")


class MON(nn.Module):
    """Monotone operator equilibrium network (Winston & Kolter, NeurIPS 2020), the l2 baseline
    that paper 004 compares its ``mu_inf`` model with (slides "State-of-the-art architectures").

    ``z = ReLU(W z + U x + b)``, ``y = C z + d`` with
    ``W = (1 - m) I - P^T P + Q - Q^T`` (W&K eq. 9), so that ``I - W = m I + P^T P - (Q - Q^T)``
    has symmetric part ``m I + P^T P >= m I``: ``I - W`` is ``m``-strongly monotone for every
    ``P, Q`` and the equilibrium exists and is unique. Written as ``0 in (I - W) z - (U x + b) +
    N(z)`` (``N`` the normal cone of the nonnegative orthant, whose resolvent is ReLU), it is
    solved by operator splitting (our implementation of W&K §4):

    * ``"peaceman_rachford"`` (default; converges for every ``alpha > 0``), with
      ``V = (I + alpha (I - W))^-1``: ``u' = 2 z - u``, ``z' = V (u' + alpha (U x + b))``,
      ``u = 2 z' - u'``, ``z = ReLU(u)``;
    * ``"forward_backward"``: ``z <- ReLU((1 - alpha) z + alpha (W z + U x + b))``, a contraction
      in l2 for ``alpha < 2 m / ||I - W||_2^2`` (default ``alpha = m / ||I - W||_2^2``).

    Both stop when the residual ``||z - ReLU(W z + U x + b)||_inf <= tol`` for every sample (the
    library's forward rule). Gradients are implicit: with ``D = diag(1[W z + U x + b > 0])`` the
    adjoint ``(I - W^T D) v = dL/dz`` is solved densely per sample (``I - W^T D`` is invertible:
    ``v = W^T D v`` would give ``v^T D (I - W) D v <= 0`` while ``I - W`` is ``m``-monotone), so
    this baseline suits ``n`` up to a few hundred.

    Certified Lipschitz bounds (:meth:`lipschitz_l2`, :meth:`lipschitz_inf`): monotonicity gives
    ``m ||z1 - z2||_2^2 <= <U (x1 - x2), z1 - z2>`` (Pabbaraju, Winston & Kolter 2021), so
    ``||y1 - y2||_2 <= ||U||_2 ||C||_2 / m ||x1 - x2||_2``. Paper 004 compares in l_inf through
    ``Lip_inf <= sqrt(r) Lip_2`` "with r size of the input" (slides, MON): ``r = in_features``
    (``||dy||_inf <= ||dy||_2`` and ``||dx||_2 <= sqrt(r) ||dx||_inf``).

    Args:
        dtype: dtype of the parameters (``None``: torch's default).
        in_features: ``p``, the input size.
        hidden: ``n``, the number of states.
        out_features: ``q``, the output size.
        m: monotonicity margin in ``(0, 1]``.
        splitting: one of :data:`SPLITTINGS`.
        alpha: the splitting's step (default 1 for Peaceman-Rachford).
        tol: stopping rule of the forward solve.
        max_iter: iteration budget; a solve over budget raises
            :class:`~idlkit.errors.ConvergenceError`.

    Attributes:
        last_iterations: iterations of the last forward solve.
        last_residual: the largest residual of the last forward solve.

    Examples:
        >>> net = MON(4, 8, 3, m=0.1)
        >>> net(torch.randn(5, 4)).shape
        torch.Size([5, 3])
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, *, m: float = 0.05,
                 splitting: str = "peaceman_rachford", alpha: float | None = None,
                 tol: float = 1e-5, max_iter: int = 1000, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.hidden = check_int("hidden", hidden, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.m = float(check_positive("m", m, why="I - W must be m-strongly monotone, m > 0"))
        if self.m > 1:
            raise ConfigurationError(f"m must lie in (0, 1], got {m!r}; pass e.g. m=0.05")
        if splitting not in SPLITTINGS:
            raise ConfigurationError(f"unknown splitting {splitting!r}; use one of {SPLITTINGS}")
        self.splitting = splitting
        self.alpha = None if alpha is None else float(check_positive("alpha", alpha))
        self.tol = float(check_positive("tol", tol))
        self.max_iter = check_int("max_iter", max_iter, 1)
        n, p, q = self.hidden, self.in_features, self.out_features
        lin_u, lin_c = nn.Linear(p, n, dtype=dtype), nn.Linear(n, q, dtype=dtype)
        self.U, self.b = nn.Parameter(lin_u.weight.detach()), nn.Parameter(lin_u.bias.detach())
        self.C, self.d = nn.Parameter(lin_c.weight.detach()), nn.Parameter(lin_c.bias.detach())
        self.P = nn.Parameter(torch.randn(n, n, dtype=dtype) / math.sqrt(n))
        self.Q = nn.Parameter(torch.randn(n, n, dtype=dtype) / math.sqrt(n))
        self.last_iterations = 0
        self.last_residual = math.nan

    def W(self) -> Tensor:
        """``W = (1 - m) I - P^T P + Q - Q^T``, shape ``(n, n)`` (W&K eq. 9), with autograd."""
        eye = torch.eye(self.hidden, dtype=self.P.dtype, device=self.P.device)
        return (1 - self.m) * eye - self.P.t() @ self.P + self.Q - self.Q.t()

    def _alpha(self, W: Tensor) -> float:
        if self.alpha is not None:
            return self.alpha
        if self.splitting == "peaceman_rachford":
            return 1.0
        eye = torch.eye(self.hidden, dtype=W.dtype, device=W.device)
        L = float(torch.linalg.matrix_norm((eye - W).double(), ord=2))
        return self.m / (L * L)

    def _solve(self, W: Tensor, Zb: Tensor) -> Tensor:
        """Equilibrium of ``z = ReLU(W z + Zb)`` for batch-first ``Zb (batch, n)``, no graph."""
        alpha = self._alpha(W)
        n = self.hidden
        Z = torch.zeros_like(Zb)
        if self.splitting == "peaceman_rachford":
            eye = torch.eye(n, dtype=W.dtype, device=W.device)
            Vt = torch.linalg.inv(eye + alpha * (eye - W)).t()
            Uvar, aZb = torch.zeros_like(Zb), alpha * Zb
        res = math.inf
        for it in range(1, self.max_iter + 1):
            if self.splitting == "peaceman_rachford":
                Uh = 2 * Z - Uvar
                Zh = (Uh + aZb) @ Vt
                Uvar = 2 * Zh - Uh
                Z = torch.relu(Uvar)
            else:
                Z = torch.relu((1 - alpha) * Z + alpha * (Z @ W.t() + Zb))
            res = float((Z - torch.relu(Z @ W.t() + Zb)).abs().amax()) if Z.numel() else 0.0
            self.last_iterations, self.last_residual = it, res
            if res <= self.tol:
                break
        if res > self.tol:
            raise ConvergenceError(f"MON {self.splitting} splitting: residual {res:.3g} > tol = "
                                   f"{self.tol:g} after max_iter = {self.max_iter}; raise max_iter "
                                   f"or tol, or change alpha (now {alpha:g})")
        return Z

    def equilibrium(self, x: Tensor) -> Tensor:
        """The state ``z (batch, n)`` with implicit gradients (see the class docstring).

        Args:
            x: ``(batch, in_features)`` input.

        Returns:
            ``(batch, n)`` state ``z``.

        Raises:
            InputError: ``x`` not of shape ``(batch, in_features)``.
            ConvergenceError: the splitting did not converge in ``max_iter`` iterations.
        """
        X = _flat_input(x, self.in_features)
        if X.dtype != self.U.dtype:
            raise InputError(f"input dtype {X.dtype} differs from the model's {self.U.dtype}; "
                             f"convert the input (x.to({self.U.dtype}))")
        W = self.W()
        Zb = X @ self.U.t() + self.b
        with torch.no_grad():
            Zs = self._solve(W.detach(), Zb.detach())
        Z = torch.relu(Zs @ W.t() + Zb)  # one step from the equilibrium: carries the graph
        if Z.requires_grad:
            with torch.no_grad():
                mask = (Zs @ W.t() + Zb > 0).to(W.dtype)  # D per sample
                eye = torch.eye(self.hidden, dtype=W.dtype, device=W.device)
                M = eye - W.detach().t()[None] * mask[:, None, :]  # I - W^T D

            def adjoint(g: Tensor | None) -> Tensor | None:
                return None if g is None else torch.linalg.solve(M, g.unsqueeze(-1)).squeeze(-1)

            Z.register_hook(adjoint)
        return Z

    def forward(self, x: Tensor) -> Tensor:
        """``y = C z + d``, shape ``(batch, out_features)``.

        Args:
            x: ``(batch, in_features)`` input.

        Returns:
            ``(batch, out_features)`` output.
        """
        return self.equilibrium(x) @ self.C.t() + self.d

    def lipschitz_l2(self) -> float:
        """Certified ``sup ||y(x1) - y(x2)||_2 / ||x1 - x2||_2 <= ||U||_2 ||C||_2 / m`` (float64)."""
        with torch.no_grad():
            u = float(torch.linalg.matrix_norm(self.U.double(), ord=2))
            c = float(torch.linalg.matrix_norm(self.C.double(), ord=2))
        return u * c / self.m * (1 + 1e-12)

    def lipschitz_inf(self) -> float:
        """Certified l_inf -> l_inf bound ``sqrt(r) ||U||_2 ||C||_2 / m``, ``r = in_features``
        (paper 004: ``Lip_inf <= sqrt(r) Lip_2``, "r size of the input")."""
        return math.sqrt(self.in_features) * self.lipschitz_l2()

    def lipschitz_penalty(self, norm: str = "inf") -> Tensor:
        """:meth:`lipschitz_inf` (``norm="inf"``) or :meth:`lipschitz_l2` (``"2"``) with autograd
        (the training penalty ``lambda Lip`` of paper 004, applied to the baseline).

        Args:
            norm: ``"inf"`` or ``"2"``.

        Returns:
            Scalar tensor, differentiable.

        Raises:
            ConfigurationError: another ``norm``.
        """
        if norm not in ("inf", "2"):
            raise ConfigurationError(f"norm must be 'inf' or '2', got {norm!r}")
        val = (torch.linalg.matrix_norm(self.U, ord=2) * torch.linalg.matrix_norm(self.C, ord=2)
               / self.m)
        return val * math.sqrt(self.in_features) if norm == "inf" else val

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, hidden={self.hidden}, out_features="
                f"{self.out_features}, m={self.m:g}, splitting={self.splitting!r}")
