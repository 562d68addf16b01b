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

import numpy as np
import torch
from torch import Tensor

from ._validation import check_int, check_positive, check_scalar
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
    "Product",
    "GELU",
    "SiLU",
    "Mish",
    "Hardswish",
    "ELU",
    "CELU",
    "SELU",
    "Softplus",
    "Softsign",
    "Hardtanh",
    "ReLU6",
    "Hardsigmoid",
    "LogSigmoid",
    "Tanhshrink",
    "Softshrink",
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

    Examples:
        >>> bs = SoftMax(block_size=2).blocks(4)
        >>> bs.sizes, bs.norms, bs.gammas
        ((2, 2), (1.0, 1.0), (1.0, 1.0))
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

    Examples:
        >>> phi = get_activation("tanh")
        >>> isinstance(phi, Activation), phi.name, phi.lipschitz_inf
        (True, 'tanh', 1.0)
        >>> z = torch.randn(4, 2); v = torch.randn(4, 2)                   # (n, m)
        >>> torch.allclose(phi.vjp(z, v), (1 - torch.tanh(z) ** 2) * v)  # J(z)^T v
        True
    """

    name: str = "activation"
    componentwise: bool = False
    lipschitz_inf: float = 1.0
    value_range: tuple[float, float] = (-math.inf, math.inf)

    def __call__(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``J(z)^T v`` column by column (``z, v``: ``(n, m)``).

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z)^T v``.
        """
        raise NotImplementedError

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``J(z) v`` column by column (``z, v``: ``(n, m)``).

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z) v``.
        """
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
        """The BLIP block structure on ``n`` states.

        Args:
            n: number of states.

        Returns:
            The :class:`BlockStructure`.
        """
        raise NotImplementedError

    @property
    def bound(self) -> float:
        """``sup |phi(z)|`` over all ``z`` (``inf`` for an unbounded map); the ``c_i`` of §2.4."""
        lo, hi = self.value_range
        return max(abs(lo), abs(hi))

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Bounds on ``phi(z)`` over the box ``lo <= z <= hi`` (``(n, m)``): the interval image
        used by interval bound propagation. Sound (contains the image); exact for the maps here
        except where a subclass says otherwise.

        Args:
            lo: ``(n, m)`` lower ends of the box.
            hi: ``(n, m)`` upper ends of the box.

        Returns:
            ``(lower, upper)``, ``(n, m)`` each.
        """
        raise ConfigurationError(f"{self!r} has no interval image; interval bound propagation "
                                 f"supports the componentwise maps, SoftMax, BlockMax and Product")

    def restrict(self, rows: Tensor) -> Activation:
        """The map acting on the states ``rows`` only (sorted indices covering whole blocks):
        ``phi(z)[rows] = phi.restrict(rows)(z[rows])``. Used by the triangular solver to apply
        one level's part of a block map without touching the other states.

        Args:
            rows: sorted state indices covering whole blocks.

        Returns:
            The restricted :class:`Activation`.
        """
        return self  # maps acting on equal blocks (componentwise, fixed block size)

    def centered(self, n: int) -> Activation:
        """``phi~ = phi - phi(0)`` on an ``n``-state (§3.1); ``self`` when ``phi(0) = 0``.

        Args:
            n: number of states.

        Returns:
            The centred :class:`Activation` (``self`` when ``phi(0) = 0``).
        """
        zero = self(torch.zeros(n, 1, dtype=torch.float64))
        return self if not bool(zero.abs().sum() > 0) else Centered(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def config(self) -> dict:
        """JSON-serialisable description, inverse of :func:`get_activation`."""
        return {"name": self.name}


class ComponentwiseActivation(Activation):
    """A map applied entry by entry, with derivative in ``[slope_min, slope_max]``.

    Examples:
        >>> phi = get_activation("leaky_relu", negative_slope=0.2)
        >>> isinstance(phi, ComponentwiseActivation), phi.slope_min, phi.slope_max
        (True, 0.2, 1.0)
        >>> phi.derivative(torch.tensor([-1.0, 2.0]))
        tensor([0.2000, 1.0000])
    """

    componentwise = True
    slope_min: float = 0.0
    slope_max: float = 1.0
    valley: tuple[float, float] | None = None

    def derivative(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        raise NotImplementedError

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Monotone maps: ``[phi(lo), phi(hi)]``. A *valley* map (decreasing up to ``z*``, then
        increasing: GELU, SiLU, Mish, Hardswish, ELU with a negative ``alpha``): the upper end is
        ``max(phi(lo), phi(hi))``, the lower end ``phi(z*)`` (rounded down) when ``z*`` is in the box.

        Args:
            lo: ``(n, m)`` lower ends of the box.
            hi: ``(n, m)`` upper ends of the box.

        Returns:
            ``(lower, upper)``, ``(n, m)`` each.
        """
        if self.monotone:
            return self(lo), self(hi)
        if self.valley is None:  # pragma: no cover - every non-monotone map here has a valley
            return super().interval(lo, hi)
        z_star, v_min = self.valley
        f_lo, f_hi = self(lo), self(hi)
        low = torch.minimum(f_lo, f_hi)
        inside = (lo <= z_star) & (hi >= z_star)
        low = torch.where(inside, torch.full_like(low, v_min), low)
        return low, torch.maximum(f_lo, f_hi)

    def restrict(self, rows: Tensor) -> Activation:
        """The map acting on the states ``rows`` only.

        Args:
            rows: sorted state indices covering whole blocks.

        Returns:
            The restricted :class:`Activation`.
        """
        return self

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
        """``J(z)^T v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z)^T v``.
        """
        return self.derivative(z) * v

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:
        """``J(z) v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z) v``.
        """
        return self.derivative(z) * v

    def blocks(self, n: int) -> BlockStructure:
        """The BLIP block structure on ``n`` states.

        Args:
            n: number of states.

        Returns:
            The :class:`BlockStructure`.
        """
        return BlockStructure((1,) * n, (math.inf,) * n, (self.lipschitz,) * n)


class ReLU(ComponentwiseActivation):
    """``max(0, z)``; derivative taken as 0 at 0 (as torch does).

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = ReLU()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.relu(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 1.0), True)
    """

    name = "relu"
    value_range = (0.0, math.inf)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.relu(z)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        return (z > 0).to(z.dtype)

    @property
    def positively_homogeneous(self) -> bool:
        return True


class LeakyReLU(ComponentwiseActivation):
    """``max(z, slope * z)`` for ``slope`` in ``[0, 1]`` (CONE), or any slope >= 0.

    Args:
        negative_slope: the slope for ``z < 0``, ``>= 0`` (CONE for ``<= 1``).

    Raises:
        ConfigurationError: a negative or non-finite slope.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = LeakyReLU(0.1)
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.leaky_relu(z, 0.1), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.1, 1.0), True)
    """

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        slope = float(negative_slope)
        if not math.isfinite(slope) or slope < 0:
            raise ConfigurationError(
                f"LeakyReLU negative_slope must be a finite number >= 0, got {negative_slope!r}"
            )
        self.negative_slope = slope
        self.value_range = (0.0 if slope == 0 else -math.inf, math.inf)
        self.slope_min = min(slope, 1.0)
        self.slope_max = max(slope, 1.0)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.leaky_relu(z, self.negative_slope)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
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
    """``tanh(z)``: slopes ``1 - tanh(z)^2`` in ``(0, 1]``, values in ``(-1, 1)``; monotone, CONE.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = Tanh()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), torch.tanh(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 1.0), True)
    """

    name = "tanh"
    value_range = (-1.0, 1.0)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.tanh(z)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        t = torch.tanh(z)
        return 1 - t * t


class Sigmoid(ComponentwiseActivation):
    """Logistic map; 1/4-Lipschitz, ``phi(0) = 1/2`` (handled by the shift of §3.1).

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = Sigmoid()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), torch.sigmoid(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 0.25), True)
    """

    name = "sigmoid"
    slope_max = 0.25
    value_range = (0.0, 1.0)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        s = torch.sigmoid(z)
        return s * (1 - s)


class Identity(ComponentwiseActivation):
    """``phi(z) = z`` (a linear implicit model, ``x = (I - A)^-1 (B u + b)``).

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = Identity()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), z, atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((1.0, 1.0), True)
    """

    name = "identity"
    slope_min = 1.0

    def __call__(self, z: Tensor) -> Tensor:
        return z

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        return torch.ones_like(z)

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        """``J(z)^T v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z)^T v``.
        """
        return v

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:
        """``J(z) v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z) v``.
        """
        return v

    @property
    def positively_homogeneous(self) -> bool:
        return True


# ---------------------------------------------------------------------------------------------
# Smooth and piecewise maps of common networks. For each: the slope range [slope_min, slope_max]
# (its l_inf Lipschitz constant is max(|slope_min|, |slope_max|), CONE when that is <= 1,
# monotone when slope_min >= 0), the closure of its image (value_range) and, for non-monotone
# maps, its valley (z*, phi(z*)). Constants found by a 1-d optimisation are rounded outward by
# _OUT (they are measured optima of smooth functions, exact to ~1e-16); tests re-measure them.

_OUT = 1e-12


def _phi_normal(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _gelu_peak() -> float:
    """``max GELU' = Phi(sqrt 2) + sqrt 2 phi(sqrt 2)``: ``GELU'' = phi(z)(2 - z^2)`` vanishes at
    ``z = +-sqrt 2``."""
    r2 = math.sqrt(2.0)
    return 0.5 * (1 + math.erf(1.0)) + r2 * math.exp(-1.0) / math.sqrt(2 * math.pi)


class GELU(ComponentwiseActivation):
    """``z Phi(z)`` (``approximate="none"``) or ``z (1 + tanh(sqrt(2/pi)(z + 0.044715 z^3))) / 2``
    (``"tanh"``), as ``torch.nn.GELU``. Not monotone: slopes in ``[1 - s, s]`` with
    ``s = 1.12890`` (``GELU(z) - GELU(-z) = z``, so ``phi'(z) + phi'(-z) = 1``); not CONE
    (``gamma = s > 1``). ``phi(0) = 0``; valley at ``z* = -0.75179``, ``phi(z*) = -0.16997``.

    Args:
        approximate: ``"none"`` (exact, ``Phi`` the normal CDF) or ``"tanh"``.

    Raises:
        ConfigurationError: another ``approximate``.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = GELU()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.gelu(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((-0.1289, 1.1289), False)
    """

    name = "gelu"

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ConfigurationError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        peak = _gelu_peak() if approximate == "none" else 1.1289930686587717
        self.slope_max = peak + _OUT
        self.slope_min = 1.0 - peak - _OUT
        vmin = -0.16997120747990363 if approximate == "none" else -0.17004075057125406
        z_star = -0.751791518475 if approximate == "none" else -0.752461426856
        self.valley = (z_star, vmin - _OUT)
        self.value_range = (vmin - _OUT, math.inf)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.gelu(z, approximate=self.approximate)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        if self.approximate == "none":
            return 0.5 * (1 + torch.erf(z / math.sqrt(2.0))) + z * _phi_normal(z)
        k = math.sqrt(2 / math.pi)
        inner = k * (z + 0.044715 * z ** 3)
        t = torch.tanh(inner)
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * k * (1 + 3 * 0.044715 * z * z)

    def __repr__(self) -> str:
        return f"GELU(approximate={self.approximate!r})"

    def config(self) -> dict:
        return {"name": self.name, "approximate": self.approximate}


class SiLU(ComponentwiseActivation):
    """``z sigmoid(z)`` (swish). Slopes in ``[1 - s, s]``, ``s = 1.09984`` (at ``z = +-2.39936``);
    not monotone, not CONE; valley at ``z* = -1.27846``, ``phi(z*) = -0.27846``.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = SiLU()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.silu(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((-0.0998, 1.0998), False)
    """

    name = "silu"
    slope_max = 1.0998393201288668 + _OUT
    slope_min = 1.0 - 1.0998393201288668 - _OUT
    valley = (-1.2784645427610738, -0.2784645427610738 - _OUT)
    value_range = (-0.2784645427610738 - _OUT, math.inf)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.silu(z)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))


class Mish(ComponentwiseActivation):
    """``z tanh(softplus(z))``. Slopes in ``[-0.11253, 1.08850]``; not monotone, not CONE;
    valley at ``z* = -1.19243``, ``phi(z*) = -0.30884``.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = Mish()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.mish(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((-0.1125, 1.0885), False)
    """

    name = "mish"
    slope_max = 1.0884981612517277 + _OUT
    slope_min = -0.11252612238946255 - _OUT
    valley = (-1.19243121375, -0.30884341301725043 - _OUT)
    value_range = (-0.30884341301725043 - _OUT, math.inf)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.mish(z)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        sp_ = torch.nn.functional.softplus(z)
        t = torch.tanh(sp_)
        return t + z * (1 - t * t) * torch.sigmoid(z)


class Hardswish(ComponentwiseActivation):
    """``z relu6(z + 3) / 6``: 0 below -3, ``z`` above 3, ``z (z + 3) / 6`` between. Slopes in
    ``[-1/2, 3/2]``; not monotone, not CONE; valley at ``z* = -3/2``, ``phi(z*) = -3/8``.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = Hardswish()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.hardswish(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((-0.5, 1.5), False)
    """

    name = "hardswish"
    slope_min = -0.5
    slope_max = 1.5
    valley = (-1.5, -0.375)
    value_range = (-0.375, math.inf)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.hardswish(z)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        mid = (2 * z + 3) / 6
        return torch.where(z < -3, torch.zeros_like(z), torch.where(z > 3, torch.ones_like(z), mid))


class ELU(ComponentwiseActivation):
    """``z`` for ``z > 0``, ``alpha (e^z - 1)`` otherwise (``torch.nn.ELU``). Slopes in
    ``[min(0, alpha), max(1, alpha)]``: monotone for ``alpha >= 0``, CONE for ``0 <= alpha <= 1``;
    a negative ``alpha`` makes a valley at 0.

    Args:
        alpha: the scale of the negative part (finite).

    Raises:
        ConfigurationError: a non-finite ``alpha``.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = ELU()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.elu(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 1.0), True)
    """

    name = "elu"

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = float(check_scalar("ELU alpha", alpha))  # type: ignore[arg-type]
        self.slope_min = min(0.0, self.alpha)
        self.slope_max = max(1.0, self.alpha)
        self.value_range = (-self.alpha, math.inf) if self.alpha >= 0 else (0.0, math.inf)
        self.valley = None if self.alpha >= 0 else (0.0, 0.0)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.elu(z, self.alpha)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        return torch.where(z > 0, torch.ones_like(z), self.alpha * torch.exp(torch.clamp_max(z, 0)))

    def __repr__(self) -> str:
        return f"ELU(alpha={self.alpha})"

    def config(self) -> dict:
        return {"name": self.name, "alpha": self.alpha}


class CELU(ComponentwiseActivation):
    """``max(0, z) + min(0, alpha (e^{z/alpha} - 1))``, ``alpha > 0``: slopes in ``(0, 1]``,
    monotone and CONE.

    Args:
        alpha: the scale of the negative part, ``> 0``.

    Raises:
        ConfigurationError: ``alpha <= 0``.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = CELU(0.5)
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.celu(z, 0.5), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 1.0), True)
    """

    name = "celu"
    value_range = (0.0, math.inf)

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = float(check_positive("CELU alpha", alpha))  # type: ignore[arg-type]
        self.value_range = (-self.alpha, math.inf)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.celu(z, self.alpha)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        return torch.where(z > 0, torch.ones_like(z), torch.exp(torch.clamp_max(z, 0) / self.alpha))

    def __repr__(self) -> str:
        return f"CELU(alpha={self.alpha})"

    def config(self) -> dict:
        return {"name": self.name, "alpha": self.alpha}


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


class SELU(ComponentwiseActivation):
    """``scale (max(0, z) + min(0, alpha (e^z - 1)))`` with torch's constants: slopes in
    ``(0, scale alpha] = (0, 1.75810]``; monotone, not CONE.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = SELU()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.selu(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 1.7581), False)
    """

    name = "selu"
    slope_min = 0.0
    slope_max = _SELU_SCALE * _SELU_ALPHA * (1 + _OUT)
    value_range = (-_SELU_SCALE * _SELU_ALPHA * (1 + _OUT), math.inf)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.selu(z)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        neg = _SELU_SCALE * _SELU_ALPHA * torch.exp(torch.clamp_max(z, 0))
        return torch.where(z > 0, torch.full_like(z, _SELU_SCALE), neg)


class Softplus(ComponentwiseActivation):
    """``log(1 + e^{beta z}) / beta``, linear (``z``) where ``beta z > threshold``, as
    ``torch.nn.Softplus``: slopes ``sigmoid(beta z)`` in ``(0, 1]``, monotone and CONE;
    ``phi(0) = log(2) / beta`` (handled by the shift of §3.1).

    torch's switch to the linear piece drops the value by ``log(1 + e^-threshold) / beta`` at
    ``z = threshold / beta`` (2.1e-9 for the defaults): the map is 1-Lipschitz and monotone up to
    that jump, which :meth:`interval` adds to both ends so interval bounds stay sound; the
    Lipschitz-based bounds treat it as rounding (each use can be off by at most the jump).

    Args:
        beta: the sharpness, ``> 0``.
        threshold: ``beta z`` above which the map is linear, ``>= 0``.

    Raises:
        ConfigurationError: ``beta <= 0`` or a negative or non-finite ``threshold``.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = Softplus()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.softplus(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 1.0), True)
    """

    @property
    def jump(self) -> float:
        """Size of the drop at the threshold: ``log(1 + e^-threshold) / beta``."""
        return math.log1p(math.exp(-self.threshold)) / self.beta

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Bounds on ``phi(z)`` over the box ``lo <= z <= hi``.

        Args:
            lo: ``(n, m)`` lower ends of the box.
            hi: ``(n, m)`` upper ends of the box.

        Returns:
            ``(lower, upper)``, ``(n, m)`` each.
        """
        return self(lo) - self.jump, self(hi) + self.jump

    name = "softplus"
    value_range = (0.0, math.inf)

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        self.beta = float(check_positive("Softplus beta", beta))  # type: ignore[arg-type]
        self.threshold = float(check_scalar("Softplus threshold", threshold))  # type: ignore[arg-type]
        # the linear piece starts at z = threshold / beta, where the log piece may sit below z
        # (by log(1 + e^-t) / beta): a threshold < 0 would make the map jump, so refuse it
        if self.threshold < 0:
            raise ConfigurationError(f"Softplus threshold must be >= 0 (the map is discontinuous "
                                     f"otherwise), got {threshold!r}")

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.softplus(z, self.beta, self.threshold)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        bz = self.beta * z
        return torch.where(bz > self.threshold, torch.ones_like(z), torch.sigmoid(bz))

    def __repr__(self) -> str:
        return f"Softplus(beta={self.beta}, threshold={self.threshold})"

    def config(self) -> dict:
        return {"name": self.name, "beta": self.beta, "threshold": self.threshold}


class Softsign(ComponentwiseActivation):
    """``z / (1 + |z|)``: slopes ``1 / (1 + |z|)^2`` in ``(0, 1]``, bounded by 1; CONE.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = Softsign()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.softsign(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 1.0), True)
    """

    name = "softsign"
    value_range = (-1.0, 1.0)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.softsign(z)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        d = 1 + z.abs()
        return 1 / (d * d)


class Hardtanh(ComponentwiseActivation):
    """``clamp(z, min_val, max_val)`` (``torch.nn.Hardtanh``): slopes in ``{0, 1}``, CONE, bounded.
    ``phi(0) = clamp(0, min_val, max_val)`` (nonzero when the interval excludes 0: the shift of
    §3.1 applies). Also the exact stand-in for the identity on a factor known to stay in
    ``[min_val, max_val]`` (the converter's multiplicative units, §3.6).

    Args:
        min_val: lower clamp.
        max_val: upper clamp, ``> min_val``.

    Raises:
        ConfigurationError: ``min_val >= max_val`` or a non-finite bound.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = Hardtanh()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.hardtanh(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 1.0), True)
    """

    name = "hardtanh"

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0) -> None:
        lo = float(check_scalar("Hardtanh min_val", min_val))  # type: ignore[arg-type]
        hi = float(check_scalar("Hardtanh max_val", max_val))  # type: ignore[arg-type]
        if not lo < hi:
            raise ConfigurationError(f"Hardtanh needs min_val < max_val, got min_val={min_val!r}, "
                                     f"max_val={max_val!r}")
        self.min_val, self.max_val = lo, hi
        self.value_range = (lo, hi)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.clamp(z, self.min_val, self.max_val)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        return ((z > self.min_val) & (z < self.max_val)).to(z.dtype)

    @property
    def positively_homogeneous(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Hardtanh(min_val={self.min_val}, max_val={self.max_val})"

    def config(self) -> dict:
        return {"name": self.name, "min_val": self.min_val, "max_val": self.max_val}


class ReLU6(Hardtanh):
    """``min(max(0, z), 6)``: Hardtanh on ``[0, 6]``.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = ReLU6()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.relu6(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 1.0), True)
    """

    name = "relu6"

    def __init__(self) -> None:
        super().__init__(0.0, 6.0)

    def __repr__(self) -> str:
        return "ReLU6()"

    def config(self) -> dict:
        return {"name": self.name}


class Hardsigmoid(ComponentwiseActivation):
    """``relu6(z + 3) / 6``: slopes in ``{0, 1/6}``, values in ``[0, 1]``; monotone, CONE,
    ``phi(0) = 1/2`` (the shift of §3.1).

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = Hardsigmoid()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.hardsigmoid(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 0.1667), True)
    """

    name = "hardsigmoid"
    slope_max = 1.0 / 6.0
    value_range = (0.0, 1.0)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.hardsigmoid(z)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        return ((z > -3) & (z < 3)).to(z.dtype) / 6


class LogSigmoid(ComponentwiseActivation):
    """``log sigmoid(z) = -softplus(-z)``: slopes ``sigmoid(-z)`` in ``(0, 1)``, values below 0;
    monotone, CONE, ``phi(0) = -log 2`` (the shift of §3.1).

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = LogSigmoid()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.logsigmoid(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 1.0), True)
    """

    name = "logsigmoid"
    value_range = (-math.inf, 0.0)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.logsigmoid(z)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        return torch.sigmoid(-z)


class Tanhshrink(ComponentwiseActivation):
    """``z - tanh(z)``: slopes ``tanh(z)^2`` in ``[0, 1)``; monotone, CONE.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = Tanhshrink()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.tanhshrink(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 1.0), True)
    """

    name = "tanhshrink"

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.tanhshrink(z)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        t = torch.tanh(z)
        return t * t


class Softshrink(ComponentwiseActivation):
    """``z - lambd`` above ``lambd``, ``z + lambd`` below ``-lambd``, 0 between (``lambd >= 0``):
    slopes in ``{0, 1}``; monotone, CONE.

    Args:
        lambd: the shrinkage ``>= 0``.

    Raises:
        ConfigurationError: a negative ``lambd``.

    Examples:
        >>> import torch.nn.functional as F
        >>> phi = Softshrink()
        >>> z = torch.linspace(-4.0, 4.0, 9).reshape(3, 3)   # (n, m)
        >>> phi(z).shape, torch.allclose(phi(z), F.softshrink(z), atol=1e-6)
        (torch.Size([3, 3]), True)
        >>> (round(phi.slope_min, 4), round(phi.slope_max, 4)), phi.is_cone
        ((0.0, 1.0), True)
    """

    name = "softshrink"

    def __init__(self, lambd: float = 0.5) -> None:
        self.lambd = float(check_positive("Softshrink lambd", lambd, allow_zero=True))  # type: ignore[arg-type]

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.softshrink(z, self.lambd)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        return (z.abs() > self.lambd).to(z.dtype)

    def __repr__(self) -> str:
        return f"Softshrink(lambd={self.lambd})"

    def config(self) -> dict:
        return {"name": self.name, "lambd": self.lambd}


class Centered(Activation):
    """``phi~(z) = phi(z) - phi(0)`` (paper 000 §3.1), for any map ``phi``.

    The Jacobian is that of ``phi``; ``phi~(0) = 0``. For block maps ``phi(0)``
    is a vector (SoftMax gives ``1/n_l``), computed once per state size.

    Args:
        base: the map ``phi`` to centre.

    Examples:
        >>> phi = Centered(Sigmoid())
        >>> phi(torch.zeros(2, 1)).flatten().tolist()          # phi~(0) = 0
        [0.0, 0.0]
        >>> z = torch.randn(3, 2)
        >>> torch.allclose(phi(z), torch.sigmoid(z) - 0.5)
        True
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
            shift = float(base(torch.zeros(1, 1, dtype=torch.float64)))
            lo, hi = base.value_range
            self.value_range = (lo - shift, hi - shift)

    def offset(self, n: int, like: Tensor) -> Tensor:
        """``phi(0)`` as an ``(n, 1)`` column.

        Args:
            n: number of states.
            like: a tensor whose dtype and device the result takes.

        Returns:
            ``(n, 1)`` tensor.
        """
        return self.base(torch.zeros(n, 1, dtype=like.dtype, device=like.device))

    def __call__(self, z: Tensor) -> Tensor:
        return self.base(z) - self.offset(z.shape[0], z).reshape(-1, *([1] * (z.dim() - 1)))

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        """``J(z)^T v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z)^T v``.
        """
        return self.base.vjp(z, v)

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:
        """``J(z) v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z) v``.
        """
        return self.base.jvp(z, v)

    def derivative(self, z: Tensor) -> Tensor:
        """``phi'(z)`` entrywise.

        Args:
            z: pre-activations, any shape.

        Returns:
            Tensor of ``z``'s shape.
        """
        return self.base.derivative(z)  # type: ignore[attr-defined]

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Bounds on ``phi(z)`` over the box ``lo <= z <= hi``.

        Args:
            lo: ``(n, m)`` lower ends of the box.
            hi: ``(n, m)`` upper ends of the box.

        Returns:
            ``(lower, upper)``, ``(n, m)`` each.
        """
        a, b = self.base.interval(lo, hi)
        off = self.offset(lo.shape[0], lo).reshape(-1, *([1] * (lo.dim() - 1)))
        return a - off, b - off

    def restrict(self, rows: Tensor) -> Activation:
        """The map acting on the states ``rows`` only.

        Args:
            rows: sorted state indices covering whole blocks.

        Returns:
            The restricted :class:`Activation`.
        """
        base = self.base.restrict(rows)
        return self if base is self.base else Centered(base)

    @property
    def is_cone(self) -> bool:
        return self.base.is_cone

    @property
    def monotone(self) -> bool:
        return bool(getattr(self.base, "monotone", False))

    def blocks(self, n: int) -> BlockStructure:
        """The BLIP block structure on ``n`` states.

        Args:
            n: number of states.

        Returns:
            The :class:`BlockStructure`.
        """
        return self.base.blocks(n)

    def centered(self, n: int) -> Activation:
        """``phi~ = phi - phi(0)`` on an ``n``-state.

        Args:
            n: number of states.

        Returns:
            The centred :class:`Activation` (``self`` when ``phi(0) = 0``).
        """
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


def _lse_others(Z: Tensor) -> Tensor:
    """``log sum_{j != i} exp(Z_j)`` along dim 1 (``-inf`` for a block of size 1)."""
    ninf = torch.full_like(Z[:, :1], -math.inf)
    pre = torch.cat((ninf, torch.logcumsumexp(Z, dim=1)[:, :-1]), dim=1)
    suf = torch.cat((torch.logcumsumexp(Z.flip(1), dim=1).flip(1)[:, 1:], ninf), dim=1)
    return torch.logaddexp(pre, suf)


class SoftMax(_BlockMap):
    """SoftMax over each block of rows (eq. 2.2); 1-Lipschitz in l_1, 1/2 in l_inf.

    Args:
        block_size: rows per block, ``>= 1``; ``None``: one block of all the states.

    Raises:
        ConfigurationError: a ``block_size < 1``.

    Examples:
        >>> phi = SoftMax(block_size=2)
        >>> z = torch.tensor([[0.0], [0.0], [0.0], [math.log(3.0)]])   # (n, m) = (4, 1): two blocks of 2
        >>> [round(v, 4) for v in phi(z).flatten().tolist()], phi.lipschitz_inf
        ([0.5, 0.5, 0.25, 0.75], 0.5)
    """

    name = "softmax"
    norm = 1.0
    gamma = 1.0
    lipschitz_inf = 0.5
    value_range = (0.0, 1.0)

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """``s_i`` increases with ``z_i`` and decreases with every other ``z_j``: its extremes on a
        box are ``sigmoid(lo_i - LSE_{j != i} hi_j)`` and ``sigmoid(hi_i - LSE_{j != i} lo_j)``
        (exact per entry; ``LSE`` is log-sum-exp). ``LSE_{j != i}`` joins prefix and suffix
        log-cumsum-exps: no cancellation (``sum_j e^{z_j} - e^{z_i}`` loses every digit when
        ``e^{z_i}`` dominates) and no underflow of ``e^{z_i}`` far below the block's max.

        Args:
            lo: ``(n, m)`` lower ends of the box.
            hi: ``(n, m)`` upper ends of the box.

        Returns:
            ``(lower, upper)``, ``(n, m)`` each.
        """
        L, H = self._view(lo), self._view(hi)
        return (torch.sigmoid(L - _lse_others(H)).reshape(lo.shape),
                torch.sigmoid(H - _lse_others(L)).reshape(hi.shape))

    def __call__(self, z: Tensor) -> Tensor:
        return torch.softmax(self._view(z), dim=1).reshape(z.shape)

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        """``J(z)^T v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z)^T v``.
        """
        s = torch.softmax(self._view(z), dim=1)
        w = self._view(v)
        return (s * (w - (s * w).sum(dim=1, keepdim=True))).reshape(z.shape)

    jvp = vjp  # the Jacobian diag(s) - s s^T is symmetric


class BlockMax(_BlockMap):
    """Max over each block, written in the block's first slot, zeros elsewhere (§3.3).

    1-Lipschitz in ``l_inf``. Ties are broken towards the first index (as torch.max).

    Args:
        block_size: rows per block, ``>= 1``; ``None``: one block of all the states.

    Raises:
        ConfigurationError: a ``block_size < 1``.

    Examples:
        >>> phi = BlockMax(block_size=2)
        >>> z = torch.tensor([[1.0], [3.0], [-2.0], [-5.0]])  # (n, m) = (4, 1)
        >>> phi(z).flatten().tolist()                           # each block's max in its first slot
        [3.0, 0.0, -2.0, 0.0]
    """

    name = "blockmax"
    norm = math.inf
    gamma = 1.0
    lipschitz_inf = 1.0

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Bounds on ``phi(z)`` over the box ``lo <= z <= hi``.

        Args:
            lo: ``(n, m)`` lower ends of the box.
            hi: ``(n, m)`` upper ends of the box.

        Returns:
            ``(lower, upper)``, ``(n, m)`` each.
        """
        return self(lo), self(hi)  # max is monotone in every argument

    def __call__(self, z: Tensor) -> Tensor:
        zb = self._view(z)
        out = torch.zeros_like(zb)
        out[:, 0] = zb.amax(dim=1)
        return out.reshape(z.shape)

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        """``J(z)^T v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z)^T v``.
        """
        zb, vb = self._view(z), self._view(v)
        idx = zb.argmax(dim=1, keepdim=True)
        out = torch.zeros_like(vb)
        out.scatter_(1, idx, vb[:, :1])
        return out.reshape(z.shape)

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:
        """``J(z) v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z) v``.
        """
        zb, vb = self._view(z), self._view(v)
        idx = zb.argmax(dim=1, keepdim=True)
        out = torch.zeros_like(vb)
        out[:, :1] = vb.gather(1, idx)
        return out.reshape(z.shape)


class Product(_BlockMap):
    """The multiplicative map of paper 000 §2.4 / §3.6 on pairs of states.

    The state is a sequence of pairs ``(z_1, z_2)`` (consecutive rows ``2k, 2k + 1``); each pair
    maps to ``(phi_1(z_1) phi_2(z_2), 0)``: the product in the pair's first slot, zero in the
    second (as :class:`BlockMax` writes its max in the first slot), so ``x = phi(z)`` keeps the
    size of ``z`` and the model's ``A`` reads the product from the first slot.

    With ``phi_i`` ``gamma_i``-Lipschitz and bounded, ``|phi_i| <= c_i`` (:attr:`Activation.bound`),
    ``|phi_1(a) phi_2(b) - phi_1(a') phi_2(b')| <= c_2 gamma_1 |a - a'| + c_1 gamma_2 |b - b'|``,
    so each pair is a BLIP block (Thm 2.7) in the ``l_1`` norm with
    ``gamma = max(c_2 gamma_1, c_1 gamma_2)`` (§2.4), and ``lipschitz_inf = c_2 gamma_1 +
    c_1 gamma_2`` on the whole vector. Both maps must be bounded (§2.4: "multiplicative
    connections are in general not Lipschitz-continuous, unless the inputs are bounded"): a
    factor known to stay in ``[lo, hi]`` (an LSTM's cell state, a softmax weight) enters as
    ``Hardtanh(lo, hi)``, which equals the identity there.

    The Jacobian of a pair is ``[[phi_1'(a) phi_2(b), phi_1(a) phi_2'(b)], [0, 0]]``.

    Args:
        first: the bounded map ``phi_1`` of the first slot (name, config or instance).
        second: the bounded map ``phi_2`` of the second slot.

    Raises:
        ConfigurationError: an unbounded or non-componentwise factor map.

    Examples:
        >>> act = Product("sigmoid", "tanh")           # the LSTM's i * g and o * tanh(c)
        >>> act(torch.tensor([[0.0], [1.0]]))           # (sigmoid(0) tanh(1), 0)
        tensor([[0.3808],
                [0.0000]])
    """

    name = "product"
    norm = 1.0

    def __init__(self, first: str | dict | Activation = "sigmoid",
                 second: str | dict | Activation = "tanh") -> None:
        super().__init__(2)
        f1, f2 = get_activation(first), get_activation(second)
        for which, f in (("first", f1), ("second", f2)):
            if not isinstance(f, ComponentwiseActivation):
                raise ConfigurationError(f"Product's {which} map must be componentwise, got {f!r}")
            if not math.isfinite(f.bound):
                raise ConfigurationError(
                    f"Product's {which} map {f!r} is unbounded: the product of unbounded maps is not "
                    f"Lipschitz (paper 000 §2.4). Use a bounded map, or Hardtanh(lo, hi) for a "
                    f"factor known to stay in [lo, hi]")
        self.first, self.second = f1, f2
        c1, c2 = f1.bound, f2.bound
        g1, g2 = f1.lipschitz, f2.lipschitz
        self.gamma = max(c2 * g1, c1 * g2)
        self.lipschitz_inf = c2 * g1 + c1 * g2
        lo1, hi1 = f1.value_range
        lo2, hi2 = f2.value_range
        corners = (lo1 * lo2, lo1 * hi2, hi1 * lo2, hi1 * hi2)
        self.value_range = (min(min(corners), 0.0), max(max(corners), 0.0))

    def _pairs(self, z: Tensor) -> tuple[Tensor, Tensor]:
        v = self._view(z)
        return v[:, 0], v[:, 1]

    def _out(self, first: Tensor, like: Tensor) -> Tensor:
        out = torch.zeros_like(self._view(like))
        out[:, 0] = first
        return out.reshape(like.shape)

    def __call__(self, z: Tensor) -> Tensor:
        a, b = self._pairs(z)
        return self._out(self.first(a) * self.second(b), z)

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        """``J(z)^T v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z)^T v``.
        """
        a, b = self._pairs(z)
        w = self._view(v)[:, 0]
        out = torch.empty_like(self._view(z))
        out[:, 0] = w * self.first.derivative(a) * self.second(b)
        out[:, 1] = w * self.first(a) * self.second.derivative(b)
        return out.reshape(z.shape)

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:
        """``J(z) v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z) v``.
        """
        a, b = self._pairs(z)
        va, vb = self._pairs(v)
        d = self.first.derivative(a) * self.second(b) * va + self.first(a) * self.second.derivative(b) * vb
        return self._out(d, z)

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Interval product of the factors' interval images (the min and max of the 4 corners).

        Args:
            lo: ``(n, m)`` lower ends of the box.
            hi: ``(n, m)`` upper ends of the box.

        Returns:
            ``(lower, upper)``, ``(n, m)`` each.
        """
        la, lb = self._pairs(lo)
        ha, hb = self._pairs(hi)
        a_lo, a_hi = self.first.interval(la, ha)
        b_lo, b_hi = self.second.interval(lb, hb)
        c = torch.stack((a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi))
        return self._out(c.amin(dim=0), lo), self._out(c.amax(dim=0), hi)

    def __repr__(self) -> str:
        return f"Product({self.first!r}, {self.second!r})"

    def config(self) -> dict:
        return {"name": self.name, "first": self.first.config(), "second": self.second.config()}


class Blockwise(Activation):
    """Stack maps on consecutive segments: ``phi(z) = (phi_1(z_1), ..., phi_k(z_k))``.

    Args:
        segments: pairs ``(size, activation)``; the sizes sum to the state size.
            A componentwise map on a segment of size ``s`` contributes ``s`` blocks
            of size 1; a block map contributes its own blocks.

    Examples:
        >>> phi = Blockwise([(2, "relu"), (2, "tanh")])
        >>> z = torch.tensor([[-1.0], [2.0], [0.0], [-1.0]])  # (n, m) = (4, 1)
        >>> [round(v, 4) for v in phi(z).flatten().tolist()]
        [0.0, 2.0, 0.0, -0.7616]
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
        """``J(z)^T v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z)^T v``.
        """
        return self._apply("vjp", z, v)

    def jvp(self, z: Tensor, v: Tensor) -> Tensor:
        """``J(z) v`` column by column.

        Args:
            z: ``(n, m)`` pre-activations.
            v: ``(n, m)`` vectors.

        Returns:
            ``(n, m)`` tensor ``J(z) v``.
        """
        return self._apply("jvp", z, v)

    @property
    def value_range(self) -> tuple[float, float]:  # type: ignore[override]
        return (min(a.value_range[0] for _, a in self.segments),
                max(a.value_range[1] for _, a in self.segments))

    def interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Bounds on ``phi(z)`` over the box ``lo <= z <= hi``.

        Args:
            lo: ``(n, m)`` lower ends of the box.
            hi: ``(n, m)`` upper ends of the box.

        Returns:
            ``(lower, upper)``, ``(n, m)`` each.
        """
        _check_rows(lo, self.size, "Blockwise activation")
        lows, highs, start = [], [], 0
        for size, act in self.segments:
            a, b = act.interval(lo[start:start + size], hi[start:start + size])
            lows.append(a)
            highs.append(b)
            start += size
        return torch.cat(lows, dim=0), torch.cat(highs, dim=0)

    def restrict(self, rows: Tensor) -> Activation:
        """The segments met by ``rows`` (whole blocks), each restricted to its rows there.

        Args:
            rows: sorted state indices covering whole blocks.

        Returns:
            The restricted :class:`Activation`.
        """
        r = rows.detach().cpu().numpy() if isinstance(rows, Tensor) else np.asarray(rows)
        if r.size == self.size:
            return self
        parts, start = [], 0
        for size, act in self.segments:
            lo, hi = np.searchsorted(r, [start, start + size])
            if hi > lo:
                parts.append((int(hi - lo), act.restrict(torch.as_tensor(r[lo:hi] - start))))
            start += size
        return stack_activations(parts)

    def blocks(self, n: int) -> BlockStructure:
        """The BLIP block structure on ``n`` states.

        Args:
            n: number of states.

        Returns:
            The :class:`BlockStructure`.
        """
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

    Args:
        parts: ``(size, map)`` per part, in state order.

    Returns:
        The combined :class:`Activation` (a :class:`Blockwise` when the parts differ).

    Examples:
        >>> stack_activations([(2, ReLU()), (3, ReLU())]).name     # one map where one will do
        'relu'
        >>> phi = stack_activations([(1, ReLU()), (1, Tanh())])
        >>> [round(v, 4) for v in phi(torch.tensor([[-1.0], [-1.0]])).flatten().tolist()]
        [0.0, -0.7616]
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

    Args:
        act: the model's activation.
        n: the number of states.

    Returns:
        ``(size, map)`` per BLIP block, in state order.

    Raises:
        ShapeError: a :class:`Blockwise` map covering another number of states.

    Examples:
        >>> [(size, phi.name) for size, phi in block_activations(Blockwise([(2, "relu"), (1, "tanh")]), 3)]
        [(1, 'relu'), (1, 'relu'), (1, 'tanh')]
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


_ALIASES = {"leakyrelu": "leaky_relu", "swish": "silu", "gelu_tanh": "gelu", "log_sigmoid": "logsigmoid",
            "hard_sigmoid": "hardsigmoid", "hard_swish": "hardswish", "hard_tanh": "hardtanh"}

ACTIVATIONS: dict[str, type[Activation]] = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "identity": Identity,
    "softmax": SoftMax,
    "blockmax": BlockMax,
    "product": Product,
    "gelu": GELU,
    "silu": SiLU,
    "mish": Mish,
    "hardswish": Hardswish,
    "elu": ELU,
    "celu": CELU,
    "selu": SELU,
    "softplus": Softplus,
    "softsign": Softsign,
    "hardtanh": Hardtanh,
    "relu6": ReLU6,
    "hardsigmoid": Hardsigmoid,
    "logsigmoid": LogSigmoid,
    "tanhshrink": Tanhshrink,
    "softshrink": Softshrink,
}


def get_activation(spec: str | dict | Activation, **kwargs: object) -> Activation:
    """Activation from a name (``"relu"``, ``"leaky_relu"``, ...), a config dict or an instance.

    Args:
        spec: a name (``"relu"``, ``"leaky_relu"``, ...), a config dict (:meth:`Activation.config`)
            or an :class:`Activation` (returned as is).
        **kwargs: the map's constructor arguments, with a name only (e.g. ``negative_slope``).

    Returns:
        The :class:`Activation`.

    Raises:
        ConfigurationError: an unknown name, a malformed config, or keywords with an instance.

    Examples:
        >>> get_activation("relu")
        ReLU()
        >>> get_activation({"name": "leaky_relu", "negative_slope": 0.1}).negative_slope
        0.1
        >>> get_activation("relu3")
        Traceback (most recent call last):
            ...
        idlkit.errors.ConfigurationError: unknown activation 'relu3'; choose one of ['blockmax', ...
    """
    if isinstance(spec, Activation):
        if kwargs:
            raise ConfigurationError("keyword arguments are only accepted with an activation name")
        return spec
    if isinstance(spec, dict):
        cfg = dict(spec)
        name = cfg.pop("name", None)
        try:
            if name == "centered":
                return Centered(get_activation(cfg["base"]))
            if name == "blockwise":
                return Blockwise([(int(s), get_activation(a)) for s, a in cfg["segments"]])
            if name == "product":
                return Product(get_activation(cfg.get("first", "sigmoid")),
                               get_activation(cfg.get("second", "tanh")))
        except (KeyError, TypeError, ValueError) as exc:
            needs = {"centered": "'base'", "blockwise": "'segments'"}.get(str(name), "'first', 'second'")
            raise ConfigurationError(f"activation config {spec!r} is incomplete or malformed "
                                     f"({type(exc).__name__}: {exc}); a {name!r} config needs "
                                     f"{needs}") from exc
        if name is None:
            raise ConfigurationError(f"activation config {spec!r} has no 'name'; e.g. {{'name': 'relu'}}")
        return get_activation(str(name), **cfg)
    if not isinstance(spec, str):
        raise ConfigurationError(f"activation must be a name, a config dict or an Activation, "
                                 f"got {type(spec).__name__}")
    key = spec.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in ACTIVATIONS:
        raise ConfigurationError(
            f"unknown activation {spec!r}; choose one of {sorted(ACTIVATIONS)} or pass an "
            f"Activation instance (e.g. idlkit.activations.Blockwise)"
        )
    if spec.lower().replace("-", "_") == "gelu_tanh":
        kwargs = {"approximate": "tanh", **kwargs}
    try:
        return ACTIVATIONS[key](**kwargs)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigurationError(f"bad arguments {kwargs} for activation {spec!r}: {exc}") from exc
