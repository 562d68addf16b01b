"""Activation maps of implicit models: CONE and BLIP (paper 000 §2.1, §3.1).

An activation ``phi`` maps the pre-activation ``z = A x + B u + b`` to the state
``x = phi(z)``. Low-level code uses the papers' column convention: ``z`` is an
``(n, m)`` tensor whose columns are samples, so blockwise maps act on blocks of
*rows*.

* Componentwise maps (ReLU, LeakyReLU, Tanh, Sigmoid, Identity) act entry by
  entry. With derivative in ``[0, 1]`` they are COmponentwise Non-Expansive
  (CONE, eq. 2.1): ``|phi(u) - phi(v)| <= |u - v|``.
* Blockwise Lipschitz (BLIP) maps act on a partition ``n = n_1 + ... + n_L``;
  block ``l`` is ``gamma_l``-Lipschitz in the ``l_{p_l}`` norm. ``SoftMax`` over
  a block is 1-Lipschitz in ``l_1`` (paper 000 eq. 2.2 and [21]); ``BlockMax``
  (max over a block, written in the block's first slot, zeros elsewhere, as the
  max-pooling map of §3.3) is 1-Lipschitz in ``l_inf``; ``Blockwise`` stacks
  maps on consecutive segments of the state.

Every map also exposes ``lipschitz_inf``, its Lipschitz constant with respect to
``l_inf`` on the whole vector, used by the sufficient condition
``lipschitz_inf * ||A||_inf < 1``. For SoftMax it is 1/2: the Jacobian
``diag(s) - s s^T`` has l_inf-induced norm ``max_i 2 s_i (1 - s_i) <= 1/2``.

For activations with ``phi(0) != 0`` (the sigmoid, SoftMax) the model solves
for the shifted state ``x~ = x - phi(0)`` with ``phi~ = phi - phi(0)`` (:class:`Centered`,
paper 000 §3.1, "a related transformation"; the text's signs are garbled,
rederived: ``x~ = phi~(A x~ + B u + b + A phi(0))``), which keeps ``phi~(0) = 0`` and leaves
A, and hence every certificate, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._validation import check_int
from .errors import ConfigurationError, IdlError, ShapeError

__all__ = [
    "Activation",
    "ComponentwiseActivation",
    "ReLU",
    "LeakyReLU",
    "Tanh",
    "Sigmoid",
    "Identity",
    "Centered",
    "SoftMax",
    "BlockMax",
    "Blockwise",
    "BlockStructure",
    "get_activation",
    "stack_activations",
    "block_activations",
    "ACTIVATIONS",
]


@dataclass(frozen=True)
class BlockStructure:
    """BLIP data of an activation on an ``n``-vector (paper 000 §2.1).

    Attributes:
        sizes: block sizes ``(n_1, ..., n_L)``, summing to ``n``.
        norms: ``p_l`` of each block, each in ``{1, 2, inf}``.
        gammas: Lipschitz constant ``gamma_l`` of each block in its norm.
    """

    sizes: tuple[int, ...]
    norms: tuple[float, ...]
    gammas: tuple[float, ...]

    @property
    def n(self) -> int:
        return sum(self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for s in self.sizes:
            out.append(acc)
            acc += s
        return tuple(out)


class Activation:
    """Base class. Subclasses implement ``__call__``, ``vjp`` and ``jvp``.

    Attributes:
        name: registry name.
        componentwise: the map acts entry by entry.
        lipschitz_inf: Lipschitz constant in ``l_inf`` of the whole map.
    """

    name: str = "activation"
    componentwise: bool = False
    lipschitz_inf: float = 1.0

    def __call__(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``J(z)^T v`` column by column (``z, v``: ``(n, m)``)."""
        raise NotImplementedError

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``J(z) v`` column by column (``z, v``: ``(n, m)``)."""
        raise NotImplementedError

    @property
    def is_cone(self) -> bool:
        """Componentwise and 1-Lipschitz (CONE, eq. 2.1)."""
        return False

    @property
    def positively_homogeneous(self) -> bool:
        """``phi(t z) = t phi(z)`` for ``t >= 0`` (needed by rescaling, §2.5)."""
        return False

    def blocks(self, n: int) -> BlockStructure:  # pragma: no cover - abstract
        raise NotImplementedError

    def centered(self, n: int) -> Activation:
        """``phi~ = phi - phi(0)`` on an ``n``-state (§3.1); ``self`` when ``phi(0) = 0``."""
        zero = self(torch.zeros(n, 1, dtype=torch.float64))
        return self if not bool(zero.abs().sum() > 0) else Centered(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def config(self) -> dict:
        """JSON-serialisable description, inverse of :func:`get_activation`."""
        return {"name": self.name}


class ComponentwiseActivation(Activation):
    """A map applied entry by entry, with derivative in ``[slope_min, slope_max]``."""

    componentwise = True
    slope_min: float = 0.0
    slope_max: float = 1.0

    def derivative(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def lipschitz(self) -> float:
        """Lipschitz constant ``gamma = sup |phi'|``."""
        return max(abs(self.slope_min), abs(self.slope_max))

    @property
    def lipschitz_inf(self) -> float:  # type: ignore[override]
        return self.lipschitz

    @property
    def monotone(self) -> bool:
        """``phi' >= 0``: required by the mu_inf certificate (paper 004)."""
        return self.slope_min >= 0.0

    @property
    def is_cone(self) -> bool:
        return self.lipschitz <= 1.0

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        return self.derivative(z) * v

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:
        return self.derivative(z) * v

    def blocks(self, n: int) -> BlockStructure:
        return BlockStructure((1,) * n, (math.inf,) * n, (self.lipschitz,) * n)


class ReLU(ComponentwiseActivation):
    """``max(0, z)``; derivative taken as 0 at 0 (as torch does)."""

    name = "relu"

    def __call__(self, z: Tensor) -> Tensor:
        return torch.relu(z)

    def derivative(self, z: Tensor) -> Tensor:
        return (z > 0).to(z.dtype)

    @property
    def positively_homogeneous(self) -> bool:
        return True


class LeakyReLU(ComponentwiseActivation):
    """``max(z, slope * z)`` for ``slope`` in ``[0, 1]`` (CONE), or any slope >= 0."""

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        slope = float(negative_slope)
        if not math.isfinite(slope) or slope < 0:
            raise ConfigurationError(
                f"LeakyReLU negative_slope must be a finite number >= 0, got {negative_slope!r}"
            )
        self.negative_slope = slope
        self.slope_min = min(slope, 1.0)
        self.slope_max = max(slope, 1.0)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.leaky_relu(z, self.negative_slope)

    def derivative(self, z: Tensor) -> Tensor:
        one = torch.ones((), dtype=z.dtype, device=z.device)
        return torch.where(z > 0, one, one * self.negative_slope)

    @property
    def positively_homogeneous(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope})"

    def config(self) -> dict:
        return {"name": self.name, "negative_slope": self.negative_slope}


class Tanh(ComponentwiseActivation):
    name = "tanh"

    def __call__(self, z: Tensor) -> Tensor:
        return torch.tanh(z)

    def derivative(self, z: Tensor) -> Tensor:
        t = torch.tanh(z)
        return 1 - t * t


class Sigmoid(ComponentwiseActivation):
    """Logistic map; 1/4-Lipschitz, ``phi(0) = 1/2`` (handled by the shift of §3.1)."""

    name = "sigmoid"
    slope_max = 0.25

    def __call__(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    def derivative(self, z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s)


class Identity(ComponentwiseActivation):
    """``phi(z) = z`` (a linear implicit model, ``x = (I - A)^-1 (B u + b)``)."""

    name = "identity"
    slope_min = 1.0

    def __call__(self, z: Tensor) -> Tensor:
        return z

    def derivative(self, z: Tensor) -> Tensor:
        return torch.ones_like(z)

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        return v

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:
        return v

    @property
    def positively_homogeneous(self) -> bool:
        return True


class Centered(Activation):
    """``phi~(z) = phi(z) - phi(0)`` (paper 000 §3.1), for any map ``phi``.

    The Jacobian is that of ``phi``; ``phi~(0) = 0``. For block maps ``phi(0)``
    is a vector (SoftMax gives ``1/n_l``), computed once per state size.
    """

    def __init__(self, base: Activation) -> None:
        if isinstance(base, Centered):
            base = base.base
        self.base = base
        self.name = f"centered_{base.name}"
        self.componentwise = base.componentwise
        self.lipschitz_inf = base.lipschitz_inf
        if isinstance(base, ComponentwiseActivation):
            self.slope_min, self.slope_max = base.slope_min, base.slope_max
            self.lipschitz = base.lipschitz

    def offset(self, n: int, like: Tensor) -> Tensor:
        """``phi(0)`` as an ``(n, 1)`` column."""
        return self.base(torch.zeros(n, 1, dtype=like.dtype, device=like.device))

    def __call__(self, z: Tensor) -> Tensor:
        return self.base(z) - self.offset(z.shape[0], z).reshape(-1, *([1] * (z.dim() - 1)))

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        return self.base.vjp(z, v)

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:
        return self.base.jvp(z, v)

    def derivative(self, z: Tensor) -> Tensor:
        return self.base.derivative(z)  # type: ignore[attr-defined]

    @property
    def is_cone(self) -> bool:
        return self.base.is_cone

    @property
    def monotone(self) -> bool:
        return bool(getattr(self.base, "monotone", False))

    def blocks(self, n: int) -> BlockStructure:
        return self.base.blocks(n)

    def centered(self, n: int) -> Activation:
        return self

    def __repr__(self) -> str:
        return f"Centered({self.base!r})"

    def config(self) -> dict:
        return {"name": "centered", "base": self.base.config()}


def _check_rows(z: Tensor, n_expected: int, who: str) -> None:
    if z.shape[0] != n_expected:
        raise ShapeError(f"{who} expects {n_expected} rows (state size), got tensor of shape "
                         f"{tuple(z.shape)}")


class _BlockMap(Activation):
    """A map acting on consecutive blocks of equal size ``block_size`` of the rows."""

    norm: float = math.inf
    gamma: float = 1.0

    def __init__(self, block_size: int | None = None) -> None:
        self.block_size = check_int("block_size", block_size, 1, allow_none=True)

    def _size(self, n: int) -> int:
        bs = n if self.block_size is None else self.block_size
        if bs == 0:  # an empty state has no blocks
            return 1
        if n % bs != 0:
            raise ShapeError(f"{type(self).__name__}(block_size={bs}) cannot partition a state of "
                             f"size {n}: n must be a multiple of block_size")
        return bs

    def _view(self, z: Tensor) -> Tensor:
        n = z.shape[0]
        bs = self._size(n)
        return z.reshape(n // bs, bs, *z.shape[1:])

    def blocks(self, n: int) -> BlockStructure:
        bs = self._size(n)
        L = n // bs
        return BlockStructure((bs,) * L, (self.norm,) * L, (self.gamma,) * L)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(block_size={self.block_size})"

    def config(self) -> dict:
        return {"name": self.name, "block_size": self.block_size}


class SoftMax(_BlockMap):
    """SoftMax over each block of rows (eq. 2.2); 1-Lipschitz in l_1, 1/2 in l_inf."""

    name = "softmax"
    norm = 1.0
    gamma = 1.0
    lipschitz_inf = 0.5

    def __call__(self, z: Tensor) -> Tensor:
        return torch.softmax(self._view(z), dim=1).reshape(z.shape)

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        s = torch.softmax(self._view(z), dim=1)
        w = self._view(v)
        return (s * (w - (s * w).sum(dim=1, keepdim=True))).reshape(z.shape)

    jvp = vjp  # the Jacobian diag(s) - s s^T is symmetric


class BlockMax(_BlockMap):
    """Max over each block, written in the block's first slot, zeros elsewhere (§3.3).

    1-Lipschitz in ``l_inf``. Ties are broken towards the first index (as torch.max).
    """

    name = "blockmax"
    norm = math.inf
    gamma = 1.0
    lipschitz_inf = 1.0

    def __call__(self, z: Tensor) -> Tensor:
        zb = self._view(z)
        out = torch.zeros_like(zb)
        out[:, 0] = zb.amax(dim=1)
        return out.reshape(z.shape)

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        zb, vb = self._view(z), self._view(v)
        idx = zb.argmax(dim=1, keepdim=True)
        out = torch.zeros_like(vb)
        out.scatter_(1, idx, vb[:, :1])
        return out.reshape(z.shape)

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:
        zb, vb = self._view(z), self._view(v)
        idx = zb.argmax(dim=1, keepdim=True)
        out = torch.zeros_like(vb)
        out[:, :1] = vb.gather(1, idx)
        return out.reshape(z.shape)


class Blockwise(Activation):
    """Stack maps on consecutive segments: ``phi(z) = (phi_1(z_1), ..., phi_k(z_k))``.

    Args:
        segments: pairs ``(size, activation)``; the sizes sum to the state size.
            A componentwise map on a segment of size ``s`` contributes ``s`` blocks
            of size 1; a block map contributes its own blocks.
    """

    name = "blockwise"

    def __init__(self, segments: list[tuple[int, Activation | str]]) -> None:
        if not segments:
            raise ConfigurationError("Blockwise needs at least one (size, activation) segment")
        segs = []
        for item in segments:
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise ConfigurationError(f"Blockwise segments are (size, activation) pairs, "
                                         f"got {item!r}")
            size, act = item
            size = check_int("segment size", size, 1)
            act = get_activation(act)
            if isinstance(act, Blockwise):
                raise ConfigurationError("nested Blockwise: flatten the segments instead")
            segs.append((int(size), act))
        self.segments = tuple(segs)
        self.size = sum(s for s, _ in segs)
        self.lipschitz_inf = max(a.lipschitz_inf for _, a in segs)

    def _apply(self, method: str, z: Tensor, v: Tensor | None = None) -> Tensor:
        _check_rows(z, self.size, "Blockwise activation")
        outs, start = [], 0
        for size, act in self.segments:
            sl = slice(start, start + size)
            fn = getattr(act, method)
            outs.append(fn(z[sl]) if v is None else fn(z[sl], v[sl]))
            start += size
        return torch.cat(outs, dim=0)

    def __call__(self, z: Tensor) -> Tensor:
        return self._apply("__call__", z)

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        return self._apply("vjp", z, v)

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:
        return self._apply("jvp", z, v)

    def blocks(self, n: int) -> BlockStructure:
        if n != self.size:
            raise ShapeError(f"Blockwise activation covers {self.size} states, model has {n}")
        sizes: list[int] = []
        norms: list[float] = []
        gammas: list[float] = []
        for size, act in self.segments:
            bs = act.blocks(size)
            sizes += bs.sizes
            norms += bs.norms
            gammas += bs.gammas
        return BlockStructure(tuple(sizes), tuple(norms), tuple(gammas))

    def __repr__(self) -> str:
        return f"Blockwise({list(self.segments)!r})"

    def config(self) -> dict:
        return {"name": self.name, "segments": [[s, a.config()] for s, a in self.segments]}


def _segments(act: Activation, n: int) -> list[tuple[int, Activation]]:
    """``act`` on an ``n``-state as a flat list of ``(size, activation)`` segments."""
    if n == 0:
        return []
    if isinstance(act, Blockwise):
        return list(act.segments)
    return [(n, act)]


def _mergeable(s1: int, a1: Activation, s2: int, a2: Activation) -> bool:
    """Whether ``a1`` on ``s1`` states followed by ``a2`` on ``s2`` equals ``a1`` on ``s1 + s2``."""
    if a1 is not a2 and (type(a1) is not type(a2) or a1.config() != a2.config()):
        return False
    try:
        whole, p1, p2 = a1.blocks(s1 + s2), a1.blocks(s1), a2.blocks(s2)
    except IdlError:
        return False
    return (whole.sizes == p1.sizes + p2.sizes and whole.norms == p1.norms + p2.norms
            and whole.gammas == p1.gammas + p2.gammas)


def stack_activations(parts: Sequence[tuple[int, Activation]]) -> Activation:
    """``phi(z_1, z_2, ...) = (phi_1(z_1), phi_2(z_2), ...)`` (Thm 2.9), as simply as possible.

    Nested :class:`Blockwise` maps are flattened; adjacent equal maps whose block
    partition is unchanged by merging (componentwise maps, block maps with a fixed
    ``block_size``) are merged, so two parts with the same componentwise map give that
    map itself. Empty parts (``hidden = 0``) contribute nothing; with no state at all
    the (irrelevant) activation is the identity.
    """
    segs: list[tuple[int, Activation]] = []
    for n, act in parts:
        for size, a in _segments(act, n):
            if segs and _mergeable(segs[-1][0], segs[-1][1], size, a):
                segs[-1] = (segs[-1][0] + size, segs[-1][1])
            else:
                segs.append((size, a))
    if not segs:
        return Identity()
    if len(segs) == 1:
        return segs[0][1]
    return Blockwise(segs)  # type: ignore[arg-type]  # (list is invariant)


def block_activations(act: Activation, n: int) -> list[tuple[int, Activation]]:
    """The BLIP blocks of ``act`` on ``n`` states, each with the (uncentred) map acting on it.

    ``phi - phi(0)`` and ``phi`` are well-posed together (a shift of the state, §3.1), so
    :class:`Centered` maps are unwrapped.
    """
    if isinstance(act, Centered):
        return block_activations(act.base, n)
    if isinstance(act, Blockwise):
        if act.size != n:
            raise ShapeError(f"Blockwise activation covers {act.size} states, A has {n}")
        out: list[tuple[int, Activation]] = []
        for size, a in act.segments:
            out += block_activations(a, size)
        return out
    return [(s, act) for s in act.blocks(n).sizes]


ACTIVATIONS: dict[str, type[Activation]] = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "identity": Identity,
    "softmax": SoftMax,
    "blockmax": BlockMax,
}


def get_activation(spec: str | dict | Activation, **kwargs: object) -> Activation:
    """Activation from a name (``"relu"``, ``"leaky_relu"``, ...), a config dict or an instance."""
    if isinstance(spec, Activation):
        if kwargs:
            raise ConfigurationError("keyword arguments are only accepted with an activation name")
        return spec
    if isinstance(spec, dict):
        cfg = dict(spec)
        name = cfg.pop("name", None)
        if name == "centered":
            return Centered(get_activation(cfg["base"]))
        if name == "blockwise":
            return Blockwise([(int(s), get_activation(a)) for s, a in cfg["segments"]])
        return get_activation(str(name), **cfg)
    if not isinstance(spec, str):
        raise ConfigurationError(f"activation must be a name, a config dict or an Activation, "
                                 f"got {type(spec).__name__}")
    key = spec.lower().replace("-", "_")
    if key == "leakyrelu":
        key = "leaky_relu"
    if key not in ACTIVATIONS:
        raise ConfigurationError(
            f"unknown activation {spec!r}; choose one of {sorted(ACTIVATIONS)} or pass an "
            f"Activation instance (e.g. idlkit.activations.Blockwise)"
        )
    try:
        return ACTIVATIONS[key](**kwargs)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigurationError(f"bad arguments {kwargs} for activation {spec!r}: {exc}") from exc
