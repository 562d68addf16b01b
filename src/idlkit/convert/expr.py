"""Affine expressions of the input and of the implicit state (the converter's value type).

Every tensor a traced network computes between two activations is an affine function
of the input ``u`` and of the states made so far (paper 000 §3: linear layers,
batch normalisation, average pooling, residual sums and reshapes are all affine).
:class:`Affine` holds that function per sample, in float64 scipy sparse matrices:

    v = sum_j M_j s_j + M_u u + c,

where ``s_j`` is state block ``j`` (see :mod:`idlkit.convert.trace`), ``u`` the
flattened input and ``v`` the flattened per-sample value (C order of ``shape``).
Linear layers compose by a sparse product, sums add the terms; nothing is dense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

__all__ = ["Affine", "INPUT"]

INPUT = -1  # key of the input u among the terms


@dataclass
class Affine:
    """``v = sum_k terms[k] @ source_k + const`` with per-sample shape ``shape``.

    Attributes:
        shape: per-sample shape (the batch dimension left out).
        terms: source key (:data:`INPUT` or a state block index) -> CSR ``(size, source_size)``.
        const: ``(size,)`` float64 constant.
        batch_dim: position of the batch dimension in the network's tensor (0, except
            ``h_n`` of ``nn.RNN``, which is ``(layers, batch, hidden)``).

    Examples:
        >>> u = Affine.source(INPUT, (3,))                           # v = u, per-sample shape (3,)
        >>> v = u.linear(np.array([[1.0, 2.0, 0.0]]), (1,), bias=np.array([0.5]))
        >>> v.shape, v.terms[INPUT].toarray().tolist(), v.const.tolist()
        ((1,), [[1.0, 2.0, 0.0]], [0.5])
    """

    shape: tuple[int, ...]
    terms: dict[int, sp.csr_array] = field(default_factory=dict)
    const: np.ndarray | None = None
    batch_dim: int = 0

    def __post_init__(self) -> None:
        if self.const is None:
            self.const = np.zeros(self.size)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def source(cls, key: int, shape: tuple[int, ...]) -> Affine:
        """The identity on one source (the input or a state block).

        Args:
            key: the source, :data:`INPUT` or a state block index.
            shape: the source's per-sample shape.

        Returns:
            The identity :class:`Affine` on that source.
        """
        k = math.prod(shape)
        return cls(tuple(shape), {key: sp.identity(k, format="csr", dtype=np.float64)})

    def linear(self, M: sp.sparray, shape: tuple[int, ...], bias: np.ndarray | None = None) -> Affine:
        """``M v + bias`` with new per-sample shape ``shape``.

        Args:
            M: sparse matrix with ``prod(self.shape)`` columns.
            shape: the result's per-sample shape (``prod(shape)`` rows of ``M``).
            bias: offset of the result's size, or ``None``.

        Returns:
            The :class:`Affine` ``M v + bias``.
        """
        M = sp.csr_array(M)
        terms = {k: sp.csr_array(M @ T) for k, T in self.terms.items()}
        const = M @ self.const
        if bias is not None:
            const = const + bias
        return Affine(tuple(shape), terms, np.asarray(const, dtype=np.float64).ravel())

    def gather(self, index: np.ndarray, shape: tuple[int, ...]) -> Affine:
        """Rows ``index`` of ``v`` (``-1``: a zero entry), new per-sample shape ``shape``.

        Args:
            index: entries of ``v`` to take (``-1``: zero).
            shape: the result's per-sample shape (``index``'s size).

        Returns:
            The gathered :class:`Affine`.
        """
        index = np.asarray(index, dtype=np.int64).ravel()
        keep = index >= 0
        rows = np.nonzero(keep)[0]
        P = sp.csr_array((np.ones(rows.size), (rows, index[keep])), shape=(index.size, self.size))
        return self.linear(P, shape)

    def scale(self, a: float) -> Affine:
        """``a v``.

        Args:
            a: the factor.

        Returns:
            The scaled :class:`Affine`.
        """
        return Affine(self.shape, {k: sp.csr_array(T * a) for k, T in self.terms.items()},
                      self.const * a, self.batch_dim)

    def shift(self, c: np.ndarray) -> Affine:
        """``v + c``.

        Args:
            c: the offset, of the per-sample size.

        Returns:
            The shifted :class:`Affine`.
        """
        return Affine(self.shape, dict(self.terms), self.const + np.asarray(c, dtype=np.float64).ravel(),
                      self.batch_dim)

    def __add__(self, other: Affine) -> Affine:
        terms = dict(self.terms)
        for k, T in other.terms.items():
            terms[k] = sp.csr_array(terms[k] + T) if k in terms else T
        return Affine(self.shape, terms, self.const + other.const, self.batch_dim)

    @property
    def nnz(self) -> int:
        return sum(int(T.nnz) for T in self.terms.values())
