"""Batch-first maps whose fixed points the iterative solvers find (paper 000 eq. 2.4, App. G).

The iterative solvers work batch-first (one *row* per sample, ``(m, n)``): dropping
converged samples is then a contiguous row selection, and ``X A^T`` is one GEMM with a
transposed operand. Activations see the column-convention view ``Z.t()`` unless they act
entrywise. A map returns ``(F(X), aux)``; ``restrict(rows)`` gives the same map on a
subset of the samples, and ``at_zero()`` its value at ``X = 0`` without a product.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from .._matrix import transpose_csr
from ..activations import Activation, Centered, ComponentwiseActivation

__all__ = ["FixedPointMap", "ForwardMap", "AdjointMap", "elementwise"]


def elementwise(act: Activation) -> bool:
    """``act`` applies one scalar function to every entry, so it may act on the batch-first
    layout directly (no transposed views): componentwise maps and their centred shifts.

    Args:
        act: the activation.

    Returns:
        ``True`` for an entrywise map.

    Examples:
        >>> elementwise(idlkit.get_activation("relu")), elementwise(idlkit.activations.SoftMax(2))
        (True, False)
    """
    base = act.base if isinstance(act, Centered) else act
    return isinstance(base, ComponentwiseActivation)


class FixedPointMap(Protocol):
    """A batch-first map for the iterative solvers: ``F(X) -> (F(X), aux)`` with ``X`` and
    ``aux`` of shape ``(m, d)``, and ``F.restrict(rows)``, the same map on those samples.

    Examples:
        >>> from idlkit.solve.maps import ForwardMap
        >>> F = ForwardMap(0.5 * torch.eye(2), torch.ones(3, 2), idlkit.get_activation("relu"))
        >>> FX, Z = F(torch.zeros(3, 2))
        >>> FX.shape, Z.shape
        (torch.Size([3, 2]), torch.Size([3, 2]))
    """

    def restrict(self, rows: Tensor) -> FixedPointMap:
        """The same map for the samples ``rows`` only.

        Args:
            rows: indices of the samples kept.

        Returns:
            The restricted map.
        """
        ...

    def __call__(self, X: Tensor) -> tuple[Tensor, Tensor]: ...


class ForwardMap:
    """``F(x) = phi(A x + b)`` on rows: returns ``(F(X), Z)`` with ``Z = X A^T + b^T``.

    Args:
        A: ``(n, n)`` state matrix.
        bT: ``(m, n)`` batch-first term ``U B^T + b``.
        act: the activation ``phi``.

    Examples:
        >>> A = 0.5 * torch.eye(2); bT = torch.ones(3, 2)               # 3 samples, n = 2
        >>> F = ForwardMap(A, bT, idlkit.get_activation("relu"))
        >>> FX, Z = F(torch.full((3, 2), 2.0))                           # the fixed point x = 2
        >>> FX.shape, FX.tolist() == torch.full((3, 2), 2.0).tolist()
        (torch.Size([3, 2]), True)
    """

    def __init__(self, A: Tensor, bT: Tensor, act: Activation) -> None:
        self.A, self.bT, self.act = A, bT, act
        self.elementwise = elementwise(act)
        self.AT = A.t() if A.layout == torch.strided else None

    def restrict(self, rows: Tensor) -> ForwardMap:
        """The same map for the samples ``rows`` only.

        Args:
            rows: indices of the samples kept.

        Returns:
            The restricted :class:`ForwardMap`.
        """
        return ForwardMap(self.A, self.bT[rows], self.act)

    def at_zero(self) -> tuple[Tensor, Tensor]:
        """``(F(0), Z)`` with ``Z = b^T``: no matrix product (``Z`` is ``b^T`` itself, which
        the solvers never write to)."""
        Z = self.bT
        return (self.act(Z) if self.elementwise else self.act(Z.t()).t()), Z

    def __call__(self, X: Tensor) -> tuple[Tensor, Tensor]:
        if self.AT is not None:
            Z = torch.addmm(self.bT, X, self.AT)
        else:
            Z = (self.A @ X.t()).t() + self.bT
        return (self.act(Z) if self.elementwise else self.act(Z.t()).t()), Z


class AdjointMap:
    """``F(v) = J(z)^T (A^T v + g)`` on rows (eq. G.3): returns ``(F(V), V A + G^T)``.

    For an entrywise map ``J(z)^T`` is the diagonal ``Psi = phi'(z)`` (eq. G.4), computed
    once: an iteration is then one matrix product and one entrywise product.

    Args:
        A: ``(n, n)`` state matrix.
        ZT: ``(m, n)`` batch-first forward pre-activations.
        GT: ``(m, n)`` batch-first incoming gradient.
        act: the activation ``phi``.
        psi: ``(m, n)`` precomputed ``phi'(Z)`` of an entrywise map, or ``None``.
        AT: ``A^T`` when already at hand, or ``None``.

    Examples:
        >>> A = 0.5 * torch.eye(2); ZT = torch.ones(3, 2); GT = torch.ones(3, 2)
        >>> F = AdjointMap(A, ZT, GT, idlkit.get_activation("relu"))     # relu active: J = I
        >>> FV, _ = F(torch.full((3, 2), 2.0))                           # v = A^T v + g at v = 2
        >>> FV.shape, FV.tolist() == torch.full((3, 2), 2.0).tolist()
        (torch.Size([3, 2]), True)
    """

    def __init__(self, A: Tensor, ZT: Tensor, GT: Tensor, act: Activation,
                 psi: Tensor | None = None, AT: Tensor | None = None) -> None:
        self.A, self.ZT, self.GT, self.act = A, ZT, GT, act
        if psi is None and elementwise(act):
            psi = act.derivative(ZT)  # type: ignore[attr-defined]
        self.psi = psi
        # A^T of a CSR A as a CSR tensor, built once per solve (O(nnz)): torch's product of
        # the transposed view ``A.t() @ V`` (a CSC operand) is 10-400x slower per iteration
        if AT is None and A.layout == torch.sparse_csr:
            AT = transpose_csr(A)
        self.AT = AT

    def restrict(self, rows: Tensor) -> AdjointMap:
        """The same map for the samples ``rows`` only.

        Args:
            rows: indices of the samples kept.

        Returns:
            The restricted :class:`AdjointMap`.
        """
        return AdjointMap(self.A, self.ZT[rows], self.GT[rows], self.act,
                          None if self.psi is None else self.psi[rows], self.AT)

    def at_zero(self) -> tuple[Tensor, Tensor]:
        """``(F(0), W)`` with ``W = G^T``: no matrix product."""
        W = self.GT.clone()
        if self.psi is not None:
            return self.psi * W, W
        return self.act.vjp(self.ZT.t(), W.t()).t(), W

    def __call__(self, V: Tensor) -> tuple[Tensor, Tensor]:
        if self.A.layout == torch.strided:
            W = torch.addmm(self.GT, V, self.A)
        elif self.AT is not None:
            W = (self.AT @ V.t()).t() + self.GT
        else:
            W = (self.A.t() @ V.t()).t() + self.GT
        if self.psi is not None:
            return self.psi * W, W
        return self.act.vjp(self.ZT.t(), W.t()).t(), W
