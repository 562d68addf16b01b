"""Deterministic synthetic tasks of the extrapolation studies (thesis, ch. 5, §5.2 "Problem Setup").

The thesis (paper 003) trains on ``u_train ~ P(mu; sigma)`` and tests on the shifted
``u_test ~ P(mu + kappa; sigma + kappa)``. Every generator here takes the training support
``[low, high)`` and a ``shift`` (the thesis's kappa, see :func:`shifted_range`) and draws from
``U(low - shift, high + shift)``. The tasks:

* :func:`identity_task`: ``f(u) = u`` (§5.2 "Identity function", §5.3 Fig. 5.5);
* :class:`ArithmeticTask`, :func:`addition_task`, :func:`subtraction_task`: sums of two random
  index ranges, added or subtracted (§5.2 "Arithmetic operations", after Trask et al. 2018);
* :func:`rolling_average_task`, :func:`rolling_argmax_task`: rolling functions over sequences
  (§5.2 "Rolling function over sequential data");
* :func:`spiky_series`, :class:`SpikySeries`: the spiky synthetic time series of §5.2
  "Oscillating Time Series Forecasting".

Reproducibility: all randomness comes from ``np.random.default_rng(seed)`` local to the call
(global numpy / torch random states are neither read nor changed), samples are drawn in
float64 and cast once to ``dtype``, so the same arguments give bit-identical tensors. Every
invalid argument raises :class:`~idlkit.errors.ConfigurationError` naming the argument, the
value given and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._validation import check_choice, check_int, check_positive, check_scalar
from .errors import ConfigurationError, ShapeError

__all__ = [
    "shifted_range",
    "identity_task",
    "ArithmeticTask",
    "addition_task",
    "subtraction_task",
    "rolling_average_task",
    "rolling_argmax_task",
    "SpikySeries",
    "spiky_series",
]

_OPS = ("add", "sub")


# ----------------------------------------------------------------------------- validation


def _check_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigurationError(
            f"dtype must be a floating torch dtype, got {dtype!r}; pass e.g. dtype=torch.float32"
        )
    return dtype


def _check_seed(name: str, seed: Any) -> int:
    return check_int(name, seed, 0)


def _uniform(
    shape: tuple[int, ...], low: float, high: float, shift: float, seed: int, dtype: torch.dtype
) -> Tensor:
    """``U(shifted_range(low, high, shift))`` samples of ``shape``, float64 draws cast to ``dtype``."""
    lo, hi = shifted_range(low, high, shift)
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(lo, hi, size=shape)).to(dtype)


# ----------------------------------------------------------------------------- ranges


def shifted_range(low: float, high: float, shift: float) -> tuple[float, float]:
    """The support ``(low - shift, high + shift)`` of the shifted test distribution.

    Thesis §5.2: training data ``u_train ~ P(mu; sigma)``, test data
    ``u_test ~ P(mu + kappa; sigma + kappa)`` with kappa the distribution shift. Read literally
    for a uniform law this moves the mean by kappa as well; the thesis's one explicit instance
    (§5.3, identity task: train ``U(-5, 5)``, test ``U(-205, 205)`` at kappa = 200) instead
    widens both ends of the support by kappa, keeping the centre, which is what this implements.
    ``shift = 0`` returns the training support unchanged.

    Raises :class:`ConfigurationError` if ``low >= high``, a bound is not finite, or ``shift``
    is negative or not finite.

    Args:
        low: lower end of the training support.
        high: upper end of the training support (``> low``).
        shift: the shift ``kappa >= 0``.

    Returns:
        ``(low - shift, high + shift)``.

    Raises:
        ConfigurationError: an invalid argument, named in the message (e.g. ``low >= high``,
            a negative ``shift``, ``n < 1``, a non-floating ``dtype``).

    Examples:
        >>> shifted_range(1.0, 2.0, 0.5)
        (0.5, 2.5)
    """
    lo = check_scalar("low", low)
    hi = check_scalar("high", high)
    if lo >= hi:
        raise ConfigurationError(f"low must be < high, got low={low!r}, high={high!r}; pass low < high")
    s = check_positive("shift", shift, allow_zero=True)
    return lo - s, hi + s


# ----------------------------------------------------------------------------- identity


def identity_task(
    n: int,
    dim: int = 10,
    *,
    low: float = -5.0,
    high: float = 5.0,
    shift: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Identity mapping ``f(u) = u`` (thesis §5.2 "Identity function"; §5.3, Fig. 5.5).

    Returns ``(U, Y)`` with ``U ~ U(shifted_range(low, high, shift))`` of shape ``(n, dim)``
    and ``Y = U.clone()``. The thesis trains on ``U(-5, 5)^10`` (the defaults) and tests up to
    ``shift = 200``, i.e. ``U(-205, 205)^10``.

    Args:
        n: number of samples, ``>= 1``.
        dim: input dimension.
        low: lower end of the training support.
        high: upper end of the training support (``> low``).
        shift: distribution shift ``kappa >= 0`` (:func:`shifted_range`).
        seed: seed of the samples, ``>= 0``.
        dtype: floating dtype of the tensors.

    Returns:
        ``(U, Y)``, both ``(n, dim)``.

    Raises:
        ConfigurationError: an invalid argument, named in the message (e.g. ``low >= high``,
            a negative ``shift``, ``n < 1``, a non-floating ``dtype``).

    Examples:
        >>> U, Y = identity_task(8, dim=3)
        >>> U.shape, Y.shape, torch.equal(U, Y)
        (torch.Size([8, 3]), torch.Size([8, 3]), True)
    """
    n = check_int("n", n, 1)
    dim = check_int("dim", dim, 1)
    seed = _check_seed("seed", seed)
    dtype = _check_dtype(dtype)
    U = _uniform((n, dim), low, high, shift, seed, dtype)
    return U, U.clone()


# ----------------------------------------------------------------------------- arithmetic


def _check_index_range(name: str, r: Any, dim: int) -> tuple[int, int]:
    if not isinstance(r, tuple) or len(r) != 2:
        raise ConfigurationError(
            f"{name} must be a tuple (start, stop) of two ints (inclusive), got {r!r}; "
            f"pass e.g. {name}=(0, 1)"
        )
    a = check_int(f"{name}[0]", r[0], 0)
    b = check_int(f"{name}[1]", r[1], 0)
    if not a < b < dim:
        raise ConfigurationError(
            f"{name} must satisfy 0 <= {name}[0] < {name}[1] < dim={dim}, got {r!r}; "
            f"pass an inclusive index range inside [0, {dim})"
        )
    return a, b


@dataclass(frozen=True)
class ArithmeticTask:
    """Addition / subtraction of two index-range sums (thesis §5.2 "Arithmetic operations").

    After Trask et al. (2018, NALU), for ``u in R^dim``::

        a = sum_{t = first[0]}^{first[1]} u_t,   b = sum_{t = second[0]}^{second[1]} u_t,
        y = a + b  (op = "add"),   y = a - b  (op = "sub").

    ``first`` and ``second`` are 0-based INCLUSIVE index ranges (the thesis's ``i < j`` and
    ``k < l``, drawn from ``[1, 50]`` 1-based); they may overlap. The thesis's §5.2 text uses
    ``u in R^50`` while its Table 5.2 experiment uses ``R^100`` with train ``U(1, 2)^100`` and
    test ``U(2, 5)^100``; :meth:`random` defaults to ``dim = 100``. For the Table 5.2 test set a
    caller passes ``low=2.0, high=5.0`` to :meth:`sample` (that test law is not of the
    ``shift`` form, which only widens ``[1, 2]`` symmetrically).

    Args:
        op: ``"add"`` or ``"sub"``.
        dim: input dimension, ``>= 2``.
        first: 0-based inclusive index range ``(i, j)`` of ``a``.
        second: 0-based inclusive index range ``(k, l)`` of ``b``.

    Raises:
        ConfigurationError: an unknown ``op``, ``dim < 2`` or a range outside ``[0, dim)``.

    Examples:
        >>> task = ArithmeticTask("add", 4, first=(0, 1), second=(1, 3))   # inclusive index ranges
        >>> task.target(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))     # (1 + 2) + (2 + 3 + 4)
        tensor([[12.]])
    """

    op: str
    dim: int
    first: tuple[int, int]
    second: tuple[int, int]

    def __post_init__(self) -> None:
        check_choice("op", self.op, _OPS)
        dim = check_int("dim", self.dim, 2)
        object.__setattr__(self, "dim", dim)
        object.__setattr__(self, "first", _check_index_range("first", self.first, dim))
        object.__setattr__(self, "second", _check_index_range("second", self.second, dim))

    @classmethod
    def random(cls, op: str, dim: int = 100, seed: int = 0) -> ArithmeticTask:
        """A task with ``i < j`` and ``k < l`` each drawn uniformly among ordered index pairs.

        Each pair is two distinct indices of ``range(dim)`` drawn without replacement and
        sorted (so every pair ``i < j`` has probability ``1 / C(dim, 2)``); the two pairs are
        independent. Deterministic in ``seed`` (thesis §5.2, after Trask et al. 2018).

        Args:
            op: ``"add"`` or ``"sub"``.
            dim: input dimension, ``>= 2``.
            seed: seed of the samples, ``>= 0``.

        Returns:
            The :class:`ArithmeticTask`.

        Raises:
            ConfigurationError: an invalid argument, named in the message (e.g. ``low >= high``,
                a negative ``shift``, ``n < 1``, a non-floating ``dtype``).
        """
        check_choice("op", op, _OPS)
        dim = check_int("dim", dim, 2)
        seed = _check_seed("seed", seed)
        rng = np.random.default_rng(seed)
        i, j = sorted(int(v) for v in rng.choice(dim, size=2, replace=False))
        k, l = sorted(int(v) for v in rng.choice(dim, size=2, replace=False))
        return cls(op=op, dim=dim, first=(i, j), second=(k, l))

    def target(self, U: Tensor) -> Tensor:
        """``y`` of shape ``(n, 1)`` from inputs ``U`` of shape ``(n, dim)`` (same dtype as ``U``).

        Args:
            U: ``(n, dim)`` inputs.

        Returns:
            ``(n, 1)`` targets, ``U``'s dtype.

        Raises:
            ShapeError: ``U`` not of shape ``(n, dim)``.
        """
        if not isinstance(U, Tensor) or U.ndim != 2 or U.shape[1] != self.dim:
            got = tuple(U.shape) if isinstance(U, Tensor) else type(U).__name__
            raise ShapeError(f"U must be a tensor of shape (n, {self.dim}), got {got}")
        a = U[:, self.first[0] : self.first[1] + 1].sum(dim=1, keepdim=True)
        b = U[:, self.second[0] : self.second[1] + 1].sum(dim=1, keepdim=True)
        return a + b if self.op == "add" else a - b

    def sample(
        self,
        n: int,
        *,
        low: float = 1.0,
        high: float = 2.0,
        shift: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        """``(U, y)`` with ``U ~ U(shifted_range(low, high, shift))^dim`` of shape ``(n, dim)``
        and ``y = self.target(U)`` of shape ``(n, 1)``.

        Defaults: the thesis's training law ``U(1, 2)^dim`` (Table 5.2). Its test law
        ``U(2, 5)^dim`` is ``low=2.0, high=5.0``.

        Args:
            n: number of samples, ``>= 1``.
            low: lower end of the training support.
            high: upper end of the training support (``> low``).
            shift: distribution shift ``kappa >= 0`` (:func:`shifted_range`).
            seed: seed of the samples, ``>= 0``.
            dtype: floating dtype of the tensors.

        Returns:
            ``(U, y)``: ``(n, dim)`` inputs and ``(n, 1)`` targets.

        Raises:
            ConfigurationError: an invalid argument, named in the message (e.g. ``low >= high``,
                a negative ``shift``, ``n < 1``, a non-floating ``dtype``).
        """
        n = check_int("n", n, 1)
        seed = _check_seed("seed", seed)
        dtype = _check_dtype(dtype)
        U = _uniform((n, self.dim), low, high, shift, seed, dtype)
        return U, self.target(U)


def _arithmetic(
    op: str,
    n: int,
    dim: int,
    low: float,
    high: float,
    shift: float,
    seed: int,
    task_seed: int,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    task = ArithmeticTask.random(op, dim, _check_seed("task_seed", task_seed))
    return task.sample(n, low=low, high=high, shift=shift, seed=seed, dtype=dtype)


def addition_task(
    n: int,
    dim: int = 100,
    *,
    low: float = 1.0,
    high: float = 2.0,
    shift: float = 0.0,
    seed: int = 0,
    task_seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Addition task ``y = a + b`` (thesis §5.2; Table 5.2): ``ArithmeticTask.random("add", dim,
    task_seed).sample(n, ...)``.

    ``task_seed`` fixes the index ranges, ``seed`` the samples: a train and a test set of the
    same task share ``task_seed`` and differ in ``seed``. Table 5.2: train with the defaults
    (``U(1, 2)^100``), test with ``low=2.0, high=5.0`` (``U(2, 5)^100``).

    Args:
        n: number of samples, ``>= 1``.
        dim: input dimension.
        low: lower end of the training support.
        high: upper end of the training support (``> low``).
        shift: distribution shift ``kappa >= 0`` (:func:`shifted_range`).
        seed: seed of the samples, ``>= 0``.
        task_seed: seed of the task's index ranges, ``>= 0``.
        dtype: floating dtype of the tensors.

    Returns:
        ``(U, y)``: ``(n, dim)`` inputs and ``(n, 1)`` targets.

    Raises:
        ConfigurationError: an invalid argument, named in the message (e.g. ``low >= high``,
            a negative ``shift``, ``n < 1``, a non-floating ``dtype``).

    Examples:
        >>> U, Y = addition_task(8, dim=6)
        >>> U.shape, Y.shape
        (torch.Size([8, 6]), torch.Size([8, 1]))
        >>> torch.allclose(Y, ArithmeticTask.random("add", 6, seed=0).target(U))   # the task of task_seed=0
        True
    """
    return _arithmetic("add", n, dim, low, high, shift, seed, task_seed, dtype)


def subtraction_task(
    n: int,
    dim: int = 100,
    *,
    low: float = 1.0,
    high: float = 2.0,
    shift: float = 0.0,
    seed: int = 0,
    task_seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Subtraction task ``y = a - b`` (thesis §5.2; Table 5.2): ``ArithmeticTask.random("sub",
    dim, task_seed).sample(n, ...)``.

    ``task_seed`` fixes the index ranges, ``seed`` the samples. Table 5.2: train with the
    defaults (``U(1, 2)^100``), test with ``low=2.0, high=5.0`` (``U(2, 5)^100``).

    Args:
        n: number of samples, ``>= 1``.
        dim: input dimension.
        low: lower end of the training support.
        high: upper end of the training support (``> low``).
        shift: distribution shift ``kappa >= 0`` (:func:`shifted_range`).
        seed: seed of the samples, ``>= 0``.
        task_seed: seed of the task's index ranges, ``>= 0``.
        dtype: floating dtype of the tensors.

    Returns:
        ``(U, y)``: ``(n, dim)`` inputs and ``(n, 1)`` targets.

    Raises:
        ConfigurationError: an invalid argument, named in the message (e.g. ``low >= high``,
            a negative ``shift``, ``n < 1``, a non-floating ``dtype``).

    Examples:
        >>> U, Y = subtraction_task(8, dim=6)
        >>> U.shape, Y.shape
        (torch.Size([8, 6]), torch.Size([8, 1]))
    """
    return _arithmetic("sub", n, dim, low, high, shift, seed, task_seed, dtype)


# ----------------------------------------------------------------------------- rolling


def _sequences(
    n: int, length: int, low: float, high: float, shift: float, seed: int, dtype: torch.dtype
) -> Tensor:
    n = check_int("n", n, 1)
    length = check_int("length", length, 1)
    seed = _check_seed("seed", seed)
    dtype = _check_dtype(dtype)
    return _uniform((n, length, 1), low, high, shift, seed, dtype)


def rolling_average_task(
    n: int,
    length: int = 10,
    *,
    low: float = 0.0,
    high: float = 1.0,
    shift: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Rolling average (thesis §5.2 "Rolling function over sequential data").

    Returns ``(S, Y)``: sequences ``S ~ U(shifted_range(low, high, shift))`` of shape
    ``(n, length, 1)`` and ``Y`` of shape ``(n, length)`` with
    ``Y[:, j] = mean(S[:, :j + 1, 0])`` (the thesis's ``(1/j) sum_{i=1}^j u_i``, 1-based),
    computed in float64 from the returned ``S`` and cast to ``dtype``.

    Args:
        n: number of samples, ``>= 1``.
        length: sequence length ``T``.
        low: lower end of the training support.
        high: upper end of the training support (``> low``).
        shift: distribution shift ``kappa >= 0`` (:func:`shifted_range`).
        seed: seed of the samples, ``>= 0``.
        dtype: floating dtype of the tensors.

    Returns:
        ``(S, Y)``: ``(n, length, 1)`` sequences and ``(n, length)`` running means.

    Raises:
        ConfigurationError: an invalid argument, named in the message (e.g. ``low >= high``,
            a negative ``shift``, ``n < 1``, a non-floating ``dtype``).

    Examples:
        >>> U, Y = rolling_average_task(4, length=5)
        >>> U.shape, Y.shape
        (torch.Size([4, 5, 1]), torch.Size([4, 5]))
        >>> torch.allclose(Y[:, -1], U[:, :, 0].mean(1))           # the last step averages all
        True
    """
    S = _sequences(n, length, low, high, shift, seed, dtype)
    s64 = S[:, :, 0].double()
    counts = torch.arange(1, s64.shape[1] + 1, dtype=torch.float64)
    return S, (s64.cumsum(dim=1) / counts).to(dtype)


def rolling_argmax_task(
    n: int,
    length: int = 10,
    *,
    low: float = 0.0,
    high: float = 1.0,
    shift: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Rolling argmax (thesis §5.2 "Rolling function over sequential data").

    Returns ``(S, labels)``: sequences ``S`` of shape ``(n, length, 1)`` as in
    :func:`rolling_average_task` and int64 ``labels`` of shape ``(n, length)`` with
    ``labels[:, j]`` the index of the maximum of ``S[:, :j + 1, 0]`` (first occurrence on
    ties, computed on the returned ``S``). The thesis casts this as classification over
    ``L = 10`` classes and evaluates the final element: use ``labels[:, -1]``, classes
    ``0 .. length - 1``.

    Args:
        n: number of samples, ``>= 1``.
        length: sequence length ``T``.
        low: lower end of the training support.
        high: upper end of the training support (``> low``).
        shift: distribution shift ``kappa >= 0`` (:func:`shifted_range`).
        seed: seed of the samples, ``>= 0``.
        dtype: floating dtype of the tensors.

    Returns:
        ``(S, labels)``: ``(n, length, 1)`` sequences and ``(n, length)`` int64 labels.

    Raises:
        ConfigurationError: an invalid argument, named in the message (e.g. ``low >= high``,
            a negative ``shift``, ``n < 1``, a non-floating ``dtype``).

    Examples:
        >>> U, Y = rolling_argmax_task(4, length=5)
        >>> U.shape, Y.shape
        (torch.Size([4, 5, 1]), torch.Size([4, 5]))
    """
    S = _sequences(n, length, low, high, shift, seed, dtype)
    s = S[:, :, 0]
    labels = torch.zeros(s.shape, dtype=torch.int64)
    best_val = s[:, 0].clone()
    best_idx = torch.zeros(s.shape[0], dtype=torch.int64)
    for j in range(1, s.shape[1]):
        better = s[:, j] > best_val  # strict: earlier index wins ties
        best_val = torch.where(better, s[:, j], best_val)
        best_idx = torch.where(better, torch.full_like(best_idx, j), best_idx)
        labels[:, j] = best_idx
    return S, labels


# ----------------------------------------------------------------------------- spiky series


@dataclass(frozen=True, eq=False)
class SpikySeries:
    """A spiky synthetic time series (thesis §5.2 "Spiky Synthetic Data"), see :func:`spiky_series`.

    ``x`` and ``y`` have shape ``(T,)``; ``spike`` is the boolean mask of the spiky points;
    ``y[:n_train]`` is the training part and ``y[n_train:]`` the test part; ``regions`` lists
    the ``(start, stop)`` (stop exclusive) of every spiky region, sorted, train regions first.

    Attributes:
        x: ``(T,)`` time points.
        y: ``(T,)`` values.
        spike: ``(T,)`` bool mask of the spiky points.
        n_train: length of the training part.
        regions: ``(start, stop)`` of every spiky region, sorted, train regions first.

    Examples:
        >>> s = spiky_series(n_train=70, n_test=30, n_regions=2, region_length=10)
        >>> isinstance(s, SpikySeries), s.spike.dtype
        (True, torch.bool)
    """

    x: Tensor
    y: Tensor
    spike: Tensor
    n_train: int
    regions: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        T = self.y.shape[0] if isinstance(self.y, Tensor) and self.y.ndim == 1 else -1
        for name in ("x", "y", "spike"):
            v = getattr(self, name)
            if not isinstance(v, Tensor) or v.ndim != 1 or v.shape[0] != T:
                got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ShapeError(f"SpikySeries.{name} must be a 1-D tensor of length len(y), got {got}")
        if self.spike.dtype != torch.bool:
            raise ConfigurationError(f"SpikySeries.spike must be a bool mask, got dtype {self.spike.dtype}")
        check_int("n_train", self.n_train, 1)
        if self.n_train >= T:
            raise ConfigurationError(
                f"n_train must be < len(y)={T} (a non-empty test part), got {self.n_train}"
            )

    @property
    def train(self) -> Tensor:
        """``y[:n_train]``."""
        return self.y[: self.n_train]

    @property
    def test(self) -> Tensor:
        """``y[n_train:]``."""
        return self.y[self.n_train :]

    def windows(self, lookback: int, horizon: int = 1) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Forecasting pairs ``((S_train, y_train), (S_test, y_test))``.

        The window starting at ``t`` has inputs ``S = y[t : t + lookback]`` of shape
        ``(lookback, 1)`` and target ``y[t + lookback + horizon - 1]`` (``horizon = 1``: the
        next point). A pair is a training pair iff its TARGET index is ``< n_train``; test
        inputs may reach back into the training part, so every test point is a target once.
        Shapes: ``S_* (N_*, lookback, 1)``, ``y_* (N_*, 1)``.

        Raises :class:`ConfigurationError` if ``lookback < 1``, ``horizon < 1`` or
        ``lookback + horizon > n_train`` (no training pair).

        Args:
            lookback: input window length, ``>= 1``.
            horizon: steps ahead of the target, ``>= 1``.

        Returns:
            ``((S_train, y_train), (S_test, y_test))``.

        Raises:
            ConfigurationError: ``lookback < 1``, ``horizon < 1`` or no training pair.
        """
        lookback = check_int("lookback", lookback, 1)
        horizon = check_int("horizon", horizon, 1)
        if lookback + horizon > self.n_train:
            raise ConfigurationError(
                f"lookback + horizon must be <= n_train={self.n_train} for at least one training "
                f"pair, got lookback={lookback}, horizon={horizon}; pass a shorter lookback"
            )
        T = self.y.shape[0]
        n_win = T - lookback - horizon + 1
        S = self.y.unfold(0, lookback, 1)[:n_win].unsqueeze(-1)
        tgt = self.y[lookback + horizon - 1 :].unsqueeze(-1)
        n_tr = self.n_train - lookback - horizon + 1
        return (S[:n_tr].clone(), tgt[:n_tr].clone()), (S[n_tr:].clone(), tgt[n_tr:].clone())


def _place_regions(
    rng: np.random.Generator, count: int, length: int, span: int, offset: int, part: str
) -> list[tuple[int, int]]:
    """``count`` non-overlapping ``length``-point regions uniformly placed in ``[offset, offset + span)``.

    Uniform over all arrangements: choose ``count`` sorted slots among ``free + count``
    (``free = span - count * length``) and expand slot ``i`` by the ``i`` regions before it.
    """
    free = span - count * length
    if free < 0:
        raise ConfigurationError(
            f"{count} spiky regions of region_length={length} need {count * length} points but the "
            f"{part} part has {span}; pass fewer regions (n_regions), a shorter region_length or a "
            f"longer n_{part}"
        )
    if count == 0:
        return []
    slots = np.sort(rng.choice(free + count, size=count, replace=False))
    return [
        (offset + int(c) + i * (length - 1), offset + int(c) + i * (length - 1) + length)
        for i, c in enumerate(slots)
    ]


def spiky_series(
    n_train: int = 7000,
    n_test: int = 3000,
    *,
    n_regions: int = 20,
    region_length: int = 100,
    amplitude: float = 5.0,
    cap: float = 20.0,
    noise_std: float = 0.5,
    step: float = 0.01,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> SpikySeries:
    """The spiky synthetic time series of thesis §5.2 ("Oscillating Time Series Forecasting").

    ``T = n_train + n_test`` points at ``x_t = t * step``. ``n_regions`` non-overlapping
    regions of ``region_length`` points are placed uniformly at random inside the training
    part, and the thesis's "proportionate number" ``round(n_regions * n_test / n_train)``
    (half rounded up; 9 for the defaults 20 * 3000 / 7000 = 8.57) inside the test part.
    Inside a region::

        y = clip(amplitude * (sin 2x + sin 23x + sin 78x + sin 100x), -cap, cap)

    (thesis: amplitude 5, "magnitude capped at 20"); elsewhere ``y = sin x + eps`` with
    ``eps ~ N(0, noise_std^2)``. The thesis writes ``eps ~ N(0, 0.25)``, read here as
    variance 0.25, hence ``noise_std = 0.5``. The thesis does not state the sampling step of
    ``x``; ``step = 0.01`` (default) is this library's choice. Noise is drawn for every point
    (then overwritten in regions), so changing the regions does not change the noise.

    The train/test shift of this task is the thesis's: temporal. The test part follows the
    training part in ``x`` and holds spiky regions at new places, so there is no ``shift``
    (kappa) argument here, unlike the other generators.

    Raises :class:`ConfigurationError` for non-integer or too small sizes, non-finite or
    non-positive ``amplitude``/``cap``/``step``, negative ``noise_std``, or regions that do not
    fit (the message names the numbers).

    Args:
        n_train: points of the training part.
        n_test: points of the test part.
        n_regions: spiky regions in the training part.
        region_length: points per spiky region.
        amplitude: factor of the spiky sum of sines.
        cap: magnitude cap of the spiky values.
        noise_std: standard deviation of the noise outside the regions.
        step: spacing of ``x``.
        seed: seed of the samples, ``>= 0``.
        dtype: floating dtype of the tensors.

    Returns:
        The :class:`SpikySeries`.

    Raises:
        ConfigurationError: a non-positive size, or regions that do not fit in their part.

    Examples:
        >>> s = spiky_series(n_train=70, n_test=30, n_regions=2, region_length=10)
        >>> s.x.shape, s.y.shape, s.n_train, s.regions
        (torch.Size([100]), torch.Size([100]), 70, ((33, 43), (52, 62), (75, 85)))
    """
    n_train = check_int("n_train", n_train, 1)
    n_test = check_int("n_test", n_test, 1)
    n_regions = check_int("n_regions", n_regions, 0)
    region_length = check_int("region_length", region_length, 1)
    amplitude = check_positive("amplitude", amplitude)
    cap = check_positive("cap", cap)
    noise_std = check_positive("noise_std", noise_std, allow_zero=True)
    step = check_positive("step", step)
    seed = _check_seed("seed", seed)
    dtype = _check_dtype(dtype)

    n_test_regions = (2 * n_regions * n_test + n_train) // (2 * n_train)  # round half up
    T = n_train + n_test
    rng = np.random.default_rng(seed)
    train_regions = _place_regions(rng, n_regions, region_length, n_train, 0, "train")
    test_regions = _place_regions(rng, n_test_regions, region_length, n_test, n_train, "test")
    regions = tuple(train_regions + test_regions)

    x = np.arange(T, dtype=np.float64) * step
    y = np.sin(x) + rng.normal(0.0, noise_std, size=T)
    spike = np.zeros(T, dtype=bool)
    for start, stop in regions:
        spike[start:stop] = True
    xs = x[spike]
    wave = amplitude * (np.sin(2 * xs) + np.sin(23 * xs) + np.sin(78 * xs) + np.sin(100 * xs))
    y[spike] = np.clip(wave, -cap, cap)
    return SpikySeries(
        x=torch.from_numpy(x).to(dtype),
        y=torch.from_numpy(y).to(dtype),
        spike=torch.from_numpy(spike),
        n_train=n_train,
        regions=regions,
    )
