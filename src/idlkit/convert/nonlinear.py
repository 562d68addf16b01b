"""The torch nonlinearities ``from_torch`` knows, in one table (paper 000 §2.1, §2.4, §3.1).

Every activation of a network becomes a state block ``x = phi(z)`` whose pre-activation ``z`` is
the expression of its input. This module maps each torch form of a nonlinearity to what the
tracer needs to build that block:

* :data:`MODULES`: module type -> factory reading the module's parameters;
* :data:`FUNCTIONS`: function (``F.gelu``, ``torch.selu_``, ...) -> :class:`Fn`, the parameter
  names after the input and a factory reading the call's ``args``/``kwargs`` by those names;
* :data:`METHODS`: tensor method name (``x.relu()``, ``x.clamp(0, 6)``) -> :class:`Fn`.

A factory returns a :class:`Pointwise` (a componentwise map, possibly between two affine
changes of variable: ``clamp(min=a) = a + relu(x - a)``), a :class:`Softmax` over one
dimension (``softmin(x) = softmax(-x)``) or a :class:`Glu`; it raises :class:`Refused` with
the reason when the map has no exact implicit form (a discontinuous map is not Lipschitz, and
the well-posedness theory of §2 needs Lipschitz maps). The tables are read-only mappings and
the factories hold no state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from ..activations import (
    CELU,
    ELU,
    GELU,
    SELU,
    Activation,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    LeakyReLU,
    LogSigmoid,
    Mish,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softplus,
    Softshrink,
    Softsign,
    Tanh,
    Tanhshrink,
)

__all__ = ["Pointwise", "Softmax", "Glu", "Refused", "Fn", "MODULES", "FUNCTIONS", "METHODS",
           "ATTENTION_REASON", "SUPPORTED_MODULES", "mutates"]


class Refused(Exception):
    """A nonlinearity without an exact implicit form; the message is the reason."""


@dataclass(frozen=True)
class Pointwise:
    """``y = out_scale * act(in_scale * x + in_shift) + out_shift``, componentwise.

    The state is ``act(z)`` with ``z = in_scale * x + in_shift``; the affine maps around it fold
    into the neighbouring rows of ``A, B, C`` (``clamp(max=b) = b - relu(b - x)``).

    Attributes:
        act: the componentwise :class:`~idlkit.activations.Activation`.
        in_scale: factor applied before ``act``.
        in_shift: offset added before ``act``.
        out_scale: factor applied after ``act``.
        out_shift: offset added after ``act``.

    Examples:
        >>> spec = Pointwise(idlkit.get_activation("relu"), out_scale=2.0)   # 2 relu(x)
        >>> spec.act.name, spec.out_scale
        ('relu', 2.0)
    """

    act: Activation
    in_scale: float = 1.0
    in_shift: float = 0.0
    out_scale: float = 1.0
    out_shift: float = 0.0

    @property
    def plain(self) -> bool:
        return (self.in_scale, self.in_shift, self.out_scale, self.out_shift) == (1.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class Softmax:
    """SoftMax over ``dim`` (eq. 2.2) of ``x``, or of ``-x`` (``softmin``).

    Attributes:
        dim: the dimension the softmax normalises over.
        negate: take ``-x`` (``softmin``).

    Examples:
        >>> Softmax(dim=-1, negate=True)                              # softmin over the last dim
        Softmax(dim=-1, negate=True)
    """

    dim: object
    negate: bool = False


@dataclass(frozen=True)
class Glu:
    """``a * sigmoid(b)`` with ``(a, b)`` the two halves of the input along ``dim``: a product
    (§2.4), exact only when ``a`` is provably bounded.

    Attributes:
        dim: the dimension split into the halves ``a`` and ``b``.

    Examples:
        >>> Glu(dim=-1).dim
        -1
    """

    dim: object = -1


Spec = Pointwise | Softmax | Glu
Getter = Callable[..., object]


@dataclass(frozen=True)
class Fn:
    """A function's (or method's) parameters after the input, and its factory.

    Attributes:
        params: names of the parameters after the input, in call order.
        make: builds the layer's spec from a getter of those parameters.

    Examples:
        >>> fn = FUNCTIONS[torch.nn.functional.leaky_relu]           # the converter's table entry
        >>> isinstance(fn, Fn), fn.params
        (True, ('negative_slope', 'inplace'))
    """

    params: tuple[str, ...]
    make: Callable[[Getter], Spec]


# ---------------------------------------------------------------------------- reasons

ATTENTION_REASON = (
    "the attention scores q k^T are a product of two unbounded (linear) maps of the input, which "
    "is not Lipschitz (paper 000 §2.4), so no well-posed implicit model (nor any certificate or "
    "bound) reproduces it. Bound the queries, keys and values first (tanh, §3.6), e.g. "
    "idlkit.baselines.BoundedAttention, whose attention converts exactly")
_HARDSHRINK = ("Hardshrink jumps from 0 to +-lambd at |z| = lambd: a discontinuous map is not "
               "Lipschitz, and the well-posedness theory of implicit models (paper 000 §2) needs "
               "Lipschitz activations. Use Softshrink (its continuous counterpart)")
_LOG_SOFTMAX = (
    "log_softmax(z) = z - logsumexp(z) needs either a log-sum-exp block map or the log of the "
    "softmax states, which is not Lipschitz near 0 (paper 000 §2 needs Lipschitz maps); idlkit "
    "has neither. Drop the LogSoftmax (its argmax is that of the logits: train with "
    "CrossEntropyLoss on them) or use Softmax")
_TRAINING_RRELU = ("RReLU in training mode draws a random slope per entry; call net.eval() (its "
                   "eval form is LeakyReLU((lower + upper) / 2))")


def _refuse(reason: str) -> Callable[..., Spec]:
    def make(*_: object) -> Spec:
        raise Refused(reason)
    return make


def _rrelu(lower: object, upper: object, training: object) -> Spec:
    if training:
        raise Refused(_TRAINING_RRELU)
    return Pointwise(LeakyReLU((float(lower) + float(upper)) / 2))  # type: ignore[arg-type]


def _prelu(weight: object) -> Spec:
    w = torch.as_tensor(weight).detach()
    if w.numel() != 1:
        raise Refused(f"PReLU with {w.numel()} parameters (a slope per channel) is not one "
                      f"componentwise map; use num_parameters=1")
    slope = float(w.reshape(()))
    if slope < 0:
        raise Refused(f"PReLU weight {slope:.6g} < 0 makes max(z, a z) non-monotone (|z|-like); "
                      f"idlkit's LeakyReLU needs a slope >= 0")
    return Pointwise(LeakyReLU(slope))


def _threshold(threshold: object, value: object) -> Spec:
    t, v = float(threshold), float(value)  # type: ignore[arg-type]
    if t != v:
        raise Refused(f"Threshold({t:g}, {v:g}) jumps from {v:g} to {t:g} at z = {t:g}: a "
                      f"discontinuous map is not Lipschitz (paper 000 §2 needs Lipschitz "
                      f"activations); only Threshold(t, t) = max(z, t) converts")
    return Pointwise(ReLU(), in_shift=-t, out_shift=t)  # max(z, t) = t + relu(z - t)


def _bound(b: object) -> float | None:
    if isinstance(b, torch.Tensor):
        if b.numel() != 1:
            raise Refused("clamp with tensor bounds (one per entry) is not supported; use numbers")
        return float(b)
    return None if b is None else float(b)  # type: ignore[arg-type]


def _clamp(lo: object, hi: object) -> Spec:
    a, b = _bound(lo), _bound(hi)
    if a is not None and b is not None:
        return Pointwise(Hardtanh(a, b))
    if a is not None:
        return Pointwise(ReLU(), in_shift=-a, out_shift=a)  # a + relu(x - a)
    if b is not None:
        return Pointwise(ReLU(), in_scale=-1.0, in_shift=b, out_scale=-1.0, out_shift=b)  # b - relu(b - x)
    raise Refused("clamp without min or max")


def _const(act: Callable[[], Activation], params: tuple[str, ...] = ("inplace",)) -> Fn:
    return Fn(params, lambda get: Pointwise(act()))


def _leaky(get: Getter) -> Spec:
    return Pointwise(LeakyReLU(float(get("negative_slope", 0.01))))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- modules

_ATTENTION_MODULES = (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder,
                      nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)

MODULES: Mapping[type, Callable[[nn.Module], Spec]] = MappingProxyType({
    nn.ReLU: lambda m: Pointwise(ReLU()),
    nn.LeakyReLU: lambda m: Pointwise(LeakyReLU(m.negative_slope)),
    nn.Tanh: lambda m: Pointwise(Tanh()),
    nn.Sigmoid: lambda m: Pointwise(Sigmoid()),
    nn.GELU: lambda m: Pointwise(GELU(m.approximate)),
    nn.SiLU: lambda m: Pointwise(SiLU()),
    nn.Mish: lambda m: Pointwise(Mish()),
    nn.Hardswish: lambda m: Pointwise(Hardswish()),
    nn.ELU: lambda m: Pointwise(ELU(m.alpha)),
    nn.CELU: lambda m: Pointwise(CELU(m.alpha)),
    nn.SELU: lambda m: Pointwise(SELU()),
    nn.Softplus: lambda m: Pointwise(Softplus(m.beta, m.threshold)),
    nn.Softsign: lambda m: Pointwise(Softsign()),
    nn.Hardtanh: lambda m: Pointwise(Hardtanh(m.min_val, m.max_val)),
    nn.ReLU6: lambda m: Pointwise(ReLU6()),
    nn.Hardsigmoid: lambda m: Pointwise(Hardsigmoid()),
    nn.LogSigmoid: lambda m: Pointwise(LogSigmoid()),
    nn.Tanhshrink: lambda m: Pointwise(Tanhshrink()),
    nn.Softshrink: lambda m: Pointwise(Softshrink(m.lambd)),
    nn.RReLU: lambda m: _rrelu(m.lower, m.upper, m.training),
    nn.PReLU: lambda m: _prelu(m.weight),
    nn.Threshold: lambda m: _threshold(m.threshold, m.value),
    nn.Softmax: lambda m: Softmax(m.dim),
    nn.Softmin: lambda m: Softmax(m.dim, negate=True),
    nn.GLU: lambda m: Glu(m.dim),
    nn.Hardshrink: _refuse(_HARDSHRINK),
    nn.LogSoftmax: _refuse(_LOG_SOFTMAX),
    **{t: _refuse(ATTENTION_REASON) for t in _ATTENTION_MODULES},
})

SUPPORTED_MODULES = ", ".join(sorted({t.__name__ for t in MODULES if t not in _ATTENTION_MODULES}
                                     - {"Hardshrink", "LogSoftmax"}))

# ---------------------------------------------------------------------------- functions

_RELU, _TANH, _SIGMOID = _const(ReLU), _const(Tanh), _const(Sigmoid)
_LEAKY = Fn(("negative_slope", "inplace"), _leaky)
_ELU = Fn(("alpha", "inplace"), lambda get: Pointwise(ELU(get("alpha", 1.0))))  # type: ignore[arg-type]
_CELU = Fn(("alpha", "inplace"), lambda get: Pointwise(CELU(get("alpha", 1.0))))  # type: ignore[arg-type]
_SELU = _const(SELU)
_HARDTANH = Fn(("min_val", "max_val", "inplace"),
               lambda get: Pointwise(Hardtanh(get("min_val", -1.0), get("max_val", 1.0))))  # type: ignore[arg-type]
_RRELU = Fn(("lower", "upper", "training", "inplace"),
            lambda get: _rrelu(get("lower", 1 / 8), get("upper", 1 / 3), get("training", False)))
_PRELU = Fn(("weight",), lambda get: _prelu(get("weight")))
_THRESHOLD = Fn(("threshold", "value", "inplace"), lambda get: _threshold(get("threshold"), get("value")))
_CLAMP = Fn(("min", "max"), lambda get: _clamp(get("min"), get("max")))
_CLAMP_MIN = Fn(("min",), lambda get: _clamp(get("min"), None))
_CLAMP_MAX = Fn(("max",), lambda get: _clamp(None, get("max")))
_SOFTMAX = Fn(("dim",), lambda get: Softmax(get("dim")))
_SOFTMIN = Fn(("dim",), lambda get: Softmax(get("dim"), negate=True))
_GLU = Fn(("dim",), lambda get: Glu(get("dim", -1)))
_REFUSE_HARDSHRINK = Fn(("lambd",), _refuse(_HARDSHRINK))
_REFUSE_LOG_SOFTMAX = Fn(("dim",), _refuse(_LOG_SOFTMAX))

FUNCTIONS: Mapping[object, Fn] = MappingProxyType({
    F.relu: _RELU, torch.relu: _RELU, F.relu_: _RELU, torch.relu_: _RELU,
    F.leaky_relu: _LEAKY, F.leaky_relu_: _LEAKY,
    F.tanh: _TANH, torch.tanh: _TANH, torch.tanh_: _TANH,
    F.sigmoid: _SIGMOID, torch.sigmoid: _SIGMOID, torch.sigmoid_: _SIGMOID, torch.special.expit: _SIGMOID,
    F.gelu: Fn(("approximate",), lambda get: Pointwise(GELU(get("approximate", "none")))),  # type: ignore[arg-type]
    F.silu: _const(SiLU), F.mish: _const(Mish), F.hardswish: _const(Hardswish),
    F.elu: _ELU, F.elu_: _ELU,
    F.celu: _CELU, F.celu_: _CELU, torch.celu: _CELU, torch.celu_: _CELU,
    F.selu: _SELU, torch.selu: _SELU, torch.selu_: _SELU,
    F.softplus: Fn(("beta", "threshold"),
                   lambda get: Pointwise(Softplus(get("beta", 1.0), get("threshold", 20.0)))),  # type: ignore[arg-type]
    F.softsign: _const(Softsign, ()),
    F.hardtanh: _HARDTANH, F.hardtanh_: _HARDTANH,
    F.relu6: _const(ReLU6), F.hardsigmoid: _const(Hardsigmoid), F.logsigmoid: _const(LogSigmoid),
    F.tanhshrink: _const(Tanhshrink, ()),
    F.softshrink: Fn(("lambd",), lambda get: Pointwise(Softshrink(get("lambd", 0.5)))),  # type: ignore[arg-type]
    F.rrelu: _RRELU, F.rrelu_: _RRELU, torch.rrelu: _RRELU, torch.rrelu_: _RRELU,
    F.prelu: _PRELU, torch.prelu: _PRELU,
    F.threshold: _THRESHOLD, F.threshold_: _THRESHOLD, torch.threshold: _THRESHOLD,
    torch.threshold_: _THRESHOLD,
    torch.clamp: _CLAMP, torch.clip: _CLAMP, torch.clamp_: _CLAMP, torch.clip_: _CLAMP,
    torch.clamp_min: _CLAMP_MIN, torch.clamp_max: _CLAMP_MAX,
    F.softmax: _SOFTMAX, torch.softmax: _SOFTMAX, torch.special.softmax: _SOFTMAX,
    F.softmin: _SOFTMIN,
    F.glu: _GLU,
    F.hardshrink: _REFUSE_HARDSHRINK, torch.hardshrink: _REFUSE_HARDSHRINK,
    F.log_softmax: _REFUSE_LOG_SOFTMAX, torch.log_softmax: _REFUSE_LOG_SOFTMAX,
    torch.special.log_softmax: _REFUSE_LOG_SOFTMAX,
})

METHODS: Mapping[str, Fn] = MappingProxyType({
    "relu": _RELU, "relu_": _RELU, "tanh": _TANH, "tanh_": _TANH, "sigmoid": _SIGMOID,
    "sigmoid_": _SIGMOID, "softmax": _SOFTMAX, "clamp": _CLAMP, "clamp_": _CLAMP, "clip": _CLAMP,
    "clip_": _CLAMP, "clamp_min": _CLAMP_MIN, "clamp_min_": _CLAMP_MIN, "clamp_max": _CLAMP_MAX,
    "clamp_max_": _CLAMP_MAX, "prelu": _PRELU, "hardshrink": _REFUSE_HARDSHRINK,
    "log_softmax": _REFUSE_LOG_SOFTMAX,
})


def mutates(name: str, inplace: object = False) -> bool:
    """Whether a call named ``name`` (function ``__name__`` or method) writes into its input:
    torch's trailing-underscore convention, the augmented assignments (``iadd``), or an
    ``inplace=True`` argument.

    Args:
        name: the function's ``__name__`` or the method's name.
        inplace: the call's ``inplace`` argument.

    Returns:
        ``True`` when the call writes into its input.

    Examples:
        >>> mutates("relu_"), mutates("relu"), mutates("relu", inplace=True), mutates("iadd")
        (True, False, True, True)
    """
    return bool(inplace) or (name.endswith("_") and not name.startswith("_")) or \
        name in ("iadd", "isub", "imul", "itruediv")
