"""Composition of implicit models (paper 000 §2.4) and basic operations (§3.1).

Every function here builds the matrices ``(A, B, C, D, b, d)`` and the activation of
the composed rule from the *stored* matrices of its parts and returns a fresh
:class:`~idlkit.model.ImplicitModel` (through :meth:`ImplicitModel.from_matrices`).
The prediction rule of a model is exactly ``y = C x + D u + d``,
``x = phi(A x + B u + b)`` with the stored matrices (the shift of §3.1 used for maps
with ``phi(0) != 0`` is internal to the solver), so matrix algebra on the stored
matrices composes the rules exactly.

Conventions.

* The result holds **copies** of the parts' matrices: it is a snapshot, trained
  separately from its parts (gradients flow to the result's own parameters).
* dtype and device are those of the parts (which must agree).
* Solver settings are those of the first part that has a state (``hidden > 0``; the
  first part if none has): ``method``, ``tol``, ``max_iter``, ``alpha``, ... The
  ``triangular`` solver is kept only when every part with a state uses it *and* the
  composed ``A`` can be solved by back-substitution (strictly block upper triangular, or
  upper triangular with ``diag(A) < 1`` for ReLU-like maps, Remark 2.5); otherwise
  ``anderson`` replaces it.
* The declared ``wellposedness`` of the result is ``None`` (the parts' conditions,
  e.g. ``gamma ||A_i||_inf <= kappa``, do not translate into one bound on the composed
  ``A``, whose off-diagonal coupling blocks are unconstrained) except when every part
  with a state declares ``"triangular"`` and the composed ``A`` is strictly block
  upper triangular, which is then declared (and kept by ``project_``).

Well-posedness. Cascade, parallel and concatenation produce a block upper triangular
``A`` whose diagonal blocks are the parts' ``A_i``, with an activation acting blockwise
accordingly, so the result is well-posed iff the parts are (Thm 2.8/2.9). How to verify:

* ``idlkit.wellposed.check(result.A, result.activation).wellposed`` holds for every such
  composition of certified parts: its ``triangular`` entry
  (:func:`idlkit.wellposed.triangular_criterion`) splits ``A`` into the strongly
  connected components of the dependency graph of its activation blocks, i.e. block
  triangular form up to a permutation of whole blocks (Remark 2.6), and certifies each
  diagonal block (Thm 2.9); this also covers lower block triangular structures, e.g. a
  feedback loop open in one direction. Its ``pf`` entry is the max of the parts' PF
  values (the eigenvalues of a block triangular ``Gamma N(A)`` are those of its diagonal
  blocks). The ``inf`` and ``mu`` values of the composed ``A`` include the coupling
  blocks and may exceed 1.

A feedback connection is in general *not* well-posed (end of §2.4); :func:`feedback`
checks it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from . import wellposed as wp
from ._matrix import as_matrix, diagonal, from_scipy_csr, is_sparse, to_dense
from ._validation import check_positive, check_scalar
from .activations import (
    Activation,
    Blockwise,
    Centered,
    ComponentwiseActivation,
    get_activation,
    stack_activations,
)
from .errors import ConfigurationError, InputError, ShapeError, WellPosednessError
from .model import ImplicitModel

__all__ = [
    "cascade",
    "parallel",
    "concat",
    "feedback",
    "with_output_activation",
    "affine",
    "batch_norm",
]


# ----------------------------------------------------------------------------- helpers


@dataclass
class _Parts:
    """Detached matrices of one model; missing biases are zeros (``has_bias`` remembers)."""

    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor
    b: Tensor
    d: Tensor
    has_bias: bool
    n: int
    p: int
    q: int


# ----------------------------------------------------------------------------- sparse-aware algebra
# The connection formulas below are written once for dense and sparse parts: a model made
# from torch sparse matrices (e.g. by idlkit.convert) is composed without densifying; a
# block with a sparse part is assembled as a sparse (CSR) matrix, zero blocks are empty.


def _to_sp(M: Tensor) -> sp.csr_array:
    """``M`` as a scipy CSR array in its own dtype (sparse stays sparse)."""
    return sp.csr_array(as_matrix(M, dtype=None))


def _from_sp(S: sp.sparray, like: Tensor) -> Tensor:
    return from_scipy_csr(S, like.dtype, like.device)


def _mm(X: Tensor, Y: Tensor) -> Tensor:
    """``X @ Y`` for dense or sparse matrices (sparse when either is); ``Y`` may be a vector."""
    if not (is_sparse(X) or is_sparse(Y)):
        return X @ Y
    if Y.dim() == 1:
        return _mv(X, Y)
    return _from_sp(_to_sp(X) @ _to_sp(Y), X if is_sparse(X) else Y)


def _mv(X: Tensor, v: Tensor) -> Tensor:
    if is_sparse(X):
        return (X @ v[:, None]).squeeze(1)
    return X @ v


def _cat(parts: list[Tensor], dim: int) -> Tensor:
    """``torch.cat`` of 2-D blocks; sparse (CSR) when a block is."""
    if not any(is_sparse(M) for M in parts):
        return torch.cat(parts, dim=dim)
    like = next(M for M in parts if is_sparse(M))
    mats = [_to_sp(M) for M in parts]
    return _from_sp(sp.hstack(mats) if dim == 1 else sp.vstack(mats), like)


def _block_diag(*parts: Tensor) -> Tensor:
    if not any(is_sparse(M) for M in parts):
        return torch.block_diag(*parts)
    like = next(M for M in parts if is_sparse(M))
    return _from_sp(sp.block_diag([_to_sp(M) for M in parts], format="csr"), like)


def _zeros(like: Tensor, rows: int, cols: int, sparse: bool) -> Tensor:
    """A zero block: dense, or an empty CSR matrix when ``sparse``."""
    if not sparse:
        return like.new_zeros(rows, cols)
    return from_scipy_csr(sp.csr_array((rows, cols), dtype=np.float64), like.dtype, like.device)


def _any_sparse(*parts: object) -> bool:
    return any(is_sparse(getattr(P, k)) for P in parts for k in "ABCD")


def _parts(m: ImplicitModel) -> _Parts:
    A, B, C, D = (getattr(m, k).detach() for k in "ABCD")
    has_bias = m.b is not None
    b = m.b.detach() if m.b is not None else torch.zeros(m.hidden, dtype=A.dtype, device=A.device)
    d = m.d.detach() if m.d is not None else torch.zeros(m.out_features, dtype=A.dtype, device=A.device)
    return _Parts(A, B, C, D, b, d, has_bias, m.hidden, m.in_features, m.out_features)


def _check_models(*models: object) -> None:
    """All arguments are ImplicitModels of one floating dtype and one device."""
    checked: list[ImplicitModel] = []
    for i, m in enumerate(models, 1):
        if not isinstance(m, ImplicitModel):
            raise InputError(f"model {i} must be an idlkit.ImplicitModel, got {type(m).__name__}")
        checked.append(m)
    ref = checked[0].A
    for i, m in enumerate(checked[1:], 2):
        if m.A.dtype != ref.dtype:
            raise InputError(f"models have different dtypes: model 1 is {ref.dtype}, model {i} is "
                             f"{m.A.dtype}; convert one (model.to(dtype)) first")
        if m.A.device != ref.device:
            raise InputError(f"models live on different devices: model 1 on {ref.device}, model {i} "
                             f"on {m.A.device}; move one (model.to(device)) first")


def _settings_source(models: Sequence[ImplicitModel]) -> ImplicitModel:
    for m in models:
        if m.hidden > 0:
            return m
    return models[0]


def _triangular_solvable(A: Tensor, activation: Activation) -> bool:
    """Whether the ``triangular`` solver (back-substitution) applies to ``A`` (Thm 2.8, Remark 2.5).

    Mirrors :func:`idlkit.solve.triangular_levels`: strictly block upper triangular ``A``
    for the activation's blocks, or upper triangular with ``diag(A) slope_max < 1`` for a
    piecewise-linear positively homogeneous componentwise map.
    """
    n = A.shape[0]
    base = activation.base if isinstance(activation, Centered) else activation
    if (isinstance(base, ComponentwiseActivation) and base.positively_homogeneous
            and base.slope_min >= 0):
        return (wp.is_upper_triangular(A, strict=False)
                and bool((diagonal(A.detach()) * base.slope_max < 1).all()))
    return wp.is_upper_triangular(A, strict=True, sizes=activation.blocks(n).sizes)


def _build(models: Sequence[ImplicitModel], A: Tensor, B: Tensor, C: Tensor, D: Tensor,
           b: Tensor | None, d: Tensor | None, activation: Activation) -> ImplicitModel:
    """``ImplicitModel.from_matrices`` with the settings and declaration rules of the module."""
    src = _settings_source(models)
    s = src.settings
    stateful = [m for m in models if m.hidden > 0]
    n = A.shape[0]
    method = s.method
    if n > 0:
        all_tri = bool(stateful) and all(m.settings.method == "triangular" for m in stateful)
        if all_tri and _triangular_solvable(A, activation):
            method = "triangular"
        elif method == "triangular":
            method = "anderson"
    backward = s.backward_method
    if backward == "triangular" and method != "triangular":
        backward = None
    declared = None
    if (stateful and all(m.wellposedness == "triangular" for m in stateful)
            and wp.is_upper_triangular(A, strict=True, sizes=activation.blocks(n).sizes)):
        declared = "triangular"
    model = ImplicitModel.from_matrices(
        A, B, C, D, b, d, activation=activation, wellposedness=declared, kappa=src.kappa,
        solver=method, tol=s.tol, max_iter=s.max_iter, backward_solver=backward,
        backward_tol=s.backward_tol, backward_max_iter=s.backward_max_iter, alpha=s.alpha,
        anderson_m=s.anderson_m, on_nonconvergence=s.on_nonconvergence)
    # fields the constructor does not take (Anderson's beta) travel with the dataclass
    model.settings = dataclasses.replace(s, method=method, backward_method=backward)
    return model


def _bias(has: bool, *vectors: Tensor) -> Tensor | None:
    return torch.cat(vectors) if has else None


# ----------------------------------------------------------------------------- connections


def cascade(m1: ImplicitModel, m2: ImplicitModel) -> ImplicitModel:
    """Cascade connection ``u -> m2(m1(u))``, ``m1`` first (paper 000 §2.4, Fig. 3).

    With ``u_2 = y_1 = C_1 x_1 + D_1 u + d_1`` and the state stacked "last model on
    top", ``x = (x_2, x_1)``, ``phi(z_2, z_1) = (phi_2(z_2), phi_1(z_1))``::

        A = [[A_2, B_2 C_1], [0, A_1]]     B = [[B_2 D_1], [B_1]]
        C = [C_2, D_2 C_1]                 D = D_2 D_1
        b = (b_2 + B_2 d_1, b_1)           d = d_2 + D_2 d_1

    (the bias terms are ours: the paper's display has none; they follow from
    substituting ``u_2 = y_1``). ``A`` is block upper triangular, so the cascade is
    well-posed iff both parts are (Thm 2.9), and its PF value is the larger of the
    parts' (remark after Thm 2.9).

    Args:
        m1: the first model, ``p -> r``.
        m2: the second model, ``r -> q`` (its input is ``m1``'s output).

    Returns:
        An :class:`~idlkit.ImplicitModel` ``p -> q`` with ``m1.hidden + m2.hidden`` states.

    Raises:
        ShapeError: ``m1.out_features != m2.in_features``.
        InputError: the models' dtypes (or devices) differ, or an argument is not a model.

    Examples:
        >>> m1, m2 = idlkit.ImplicitModel(3, 4, 2), idlkit.ImplicitModel(2, 5, 1)
        >>> m = cascade(m1, m2)
        >>> u = torch.randn(6, 3)
        >>> m.hidden, m(u).shape, torch.allclose(m(u), m2(m1(u)), atol=1e-5)
        (9, torch.Size([6, 1]), True)
    """
    _check_models(m1, m2)
    if m1.out_features != m2.in_features:
        raise ShapeError(f"cascade needs m1.out_features == m2.in_features; got m1.out_features="
                         f"{m1.out_features}, m2.in_features={m2.in_features}")
    P1, P2 = _parts(m1), _parts(m2)
    sparse = _any_sparse(P1, P2)
    with torch.no_grad():
        A = _cat([_cat([P2.A, _mm(P2.B, P1.C)], dim=1),
                  _cat([_zeros(P1.A, P1.n, P2.n, sparse), P1.A], dim=1)], dim=0)
        B = _cat([_mm(P2.B, P1.D), P1.B], dim=0)
        C = _cat([P2.C, _mm(P2.D, P1.C)], dim=1)
        D = _mm(P2.D, P1.D)
        has = P1.has_bias or P2.has_bias
        b = _bias(has, P2.b + _mv(P2.B, P1.d), P1.b)
        d = P2.d + _mv(P2.D, P1.d) if has else None
    act = stack_activations([(P2.n, m2.activation), (P1.n, m1.activation)])
    return _build([m1, m2], A, B, C, D, b, d, act)


def parallel(m1: ImplicitModel, m2: ImplicitModel,
             weights: tuple[float, float] = (1.0, 1.0)) -> ImplicitModel:
    """Weighted parallel connection ``u -> w_1 m1(u) + w_2 m2(u)`` (paper 000 §2.4).

    Both parts read the same input. With ``x = (x_1, x_2)``::

        A = diag(A_1, A_2)      B = [[B_1], [B_2]]     b = (b_1, b_2)
        C = [w_1 C_1, w_2 C_2]  D = w_1 D_1 + w_2 D_2  d = w_1 d_1 + w_2 d_2

    ``A`` is block diagonal: well-posed iff both parts are (Thm 2.9).

    Args:
        m1: a model ``p -> q``.
        m2: a model ``p -> q``.
        weights: ``(w_1, w_2)``, the weights of the two outputs.

    Returns:
        An :class:`~idlkit.ImplicitModel` ``p -> q`` with ``m1.hidden + m2.hidden`` states.

    Raises:
        ShapeError: the input sizes or the output sizes differ.
        ConfigurationError: a weight is not a finite number.
        InputError: the models' dtypes (or devices) differ.

    Examples:
        >>> m1, m2 = idlkit.ImplicitModel(3, 4, 2), idlkit.ImplicitModel(3, 5, 2)
        >>> m = parallel(m1, m2, weights=(0.5, 2.0))
        >>> u = torch.randn(6, 3)
        >>> m(u).shape, torch.allclose(m(u), 0.5 * m1(u) + 2.0 * m2(u), atol=1e-5)
        (torch.Size([6, 2]), True)
    """
    _check_models(m1, m2)
    if not (isinstance(weights, Sequence) and len(weights) == 2):
        raise ConfigurationError(f"weights must be a pair (w1, w2), got {weights!r}")
    w1, w2 = (check_scalar(f"weights[{i}]", w, example=1.0) for i, w in enumerate(weights))
    if m1.in_features != m2.in_features:
        raise ShapeError(f"parallel needs equal input sizes; got m1.in_features={m1.in_features}, "
                         f"m2.in_features={m2.in_features}")
    if m1.out_features != m2.out_features:
        raise ShapeError(f"parallel needs equal output sizes; got m1.out_features={m1.out_features}, "
                         f"m2.out_features={m2.out_features}")
    P1, P2 = _parts(m1), _parts(m2)
    with torch.no_grad():
        A = _block_diag(P1.A, P2.A)
        B = _cat([P1.B, P2.B], dim=0)
        C = _cat([w1 * P1.C, w2 * P2.C], dim=1)
        D = (_from_sp(w1 * _to_sp(P1.D) + w2 * _to_sp(P2.D), P1.D) if is_sparse(P1.D) and is_sparse(P2.D)
             else w1 * to_dense(P1.D) + w2 * to_dense(P2.D))
        has = P1.has_bias or P2.has_bias
        b = _bias(has, P1.b, P2.b)
        d = w1 * P1.d + w2 * P2.d if has else None
    act = stack_activations([(P1.n, m1.activation), (P2.n, m2.activation)])
    return _build([m1, m2], A, B, C, D, b, d, act)


def concat(m1: ImplicitModel, m2: ImplicitModel) -> ImplicitModel:
    """Concatenation ``u -> (m1(u), m2(u))`` along the features (paper 000 §2.4).

    With ``x = (x_1, x_2)``: ``A = diag(A_1, A_2)``, ``B = [[B_1], [B_2]]``,
    ``C = diag(C_1, C_2)``, ``D = [[D_1], [D_2]]``, ``b = (b_1, b_2)``, ``d = (d_1, d_2)``.
    Well-posed iff both parts are (Thm 2.9).

    Args:
        m1: a model ``p -> q_1``.
        m2: a model ``p -> q_2`` (the same input).

    Returns:
        An :class:`~idlkit.ImplicitModel` ``p -> q_1 + q_2``, outputs of ``m1`` first.

    Raises:
        ShapeError: the input sizes differ.
        InputError: the models' dtypes (or devices) differ.

    Examples:
        >>> m1, m2 = idlkit.ImplicitModel(3, 4, 2), idlkit.ImplicitModel(3, 5, 1)
        >>> m = concat(m1, m2)
        >>> u = torch.randn(6, 3)
        >>> m(u).shape, torch.allclose(m(u), torch.cat([m1(u), m2(u)], dim=1), atol=1e-5)
        (torch.Size([6, 3]), True)
    """
    _check_models(m1, m2)
    if m1.in_features != m2.in_features:
        raise ShapeError(f"concat needs equal input sizes; got m1.in_features={m1.in_features}, "
                         f"m2.in_features={m2.in_features}")
    P1, P2 = _parts(m1), _parts(m2)
    with torch.no_grad():
        A = _block_diag(P1.A, P2.A)
        B = _cat([P1.B, P2.B], dim=0)
        C = _block_diag(P1.C, P2.C)
        D = _cat([P1.D, P2.D], dim=0)
        has = P1.has_bias or P2.has_bias
        b = _bias(has, P1.b, P2.b)
        d = _bias(has, P1.d, P2.d)
    act = stack_activations([(P1.n, m1.activation), (P2.n, m2.activation)])
    return _build([m1, m2], A, B, C, D, b, d, act)


def feedback(m1: ImplicitModel, m2: ImplicitModel, *, require_wellposed: bool = True) -> ImplicitModel:
    """Feedback connection ``u_1 = u + y_2``, ``u_2 = y_1``, output ``y = y_1`` (paper 000 §2.4, Fig. 4).

    ``m1`` maps ``p -> q`` and ``m2`` maps ``q -> p`` (the loop closes through ``m2``).
    The paper gives the matrices for ``D_1 = D_2 = 0`` only; the general case is
    derived here. The outputs form an algebraic loop::

        y_1 = C_1 x_1 + D_1 (u + y_2) + d_1,     y_2 = C_2 x_2 + D_2 y_1 + d_2,

    which has a unique solution for every ``(x, u)`` iff ``I - D_1 D_2`` is invertible.
    With ``M = (I - D_1 D_2)^{-1}``::

        y_1 = Cy_1 x_1 + Cy_2 x_2 + Dy u + dy,
        Cy_1 = M C_1,  Cy_2 = M D_1 C_2,  Dy = M D_1,  dy = M (d_1 + D_1 d_2),
        u_1 = u + y_2 = D_2 Cy_1 x_1 + (C_2 + D_2 Cy_2) x_2 + (I + D_2 Dy) u + d_2 + D_2 dy.

    Substituting in ``x_i = phi_i(A_i x_i + B_i u_i + b_i)`` gives, with ``x = (x_1, x_2)``
    and ``phi(z_1, z_2) = (phi_1(z_1), phi_2(z_2))``::

        A = [[A_1 + B_1 D_2 Cy_1, B_1 (C_2 + D_2 Cy_2)], [B_2 Cy_1, A_2 + B_2 Cy_2]]
        B = [[B_1 (I + D_2 Dy)], [B_2 Dy]]       b = (b_1 + B_1 (d_2 + D_2 dy), b_2 + B_2 dy)
        C = [Cy_1, Cy_2]                         D = Dy,   d = dy,

    which reduces for ``D_1 = D_2 = 0`` to the paper's
    ``A = [[A_1, B_1 C_2], [B_2 C_1, A_2]]``, ``B = [[B_1], [0]]``, ``C = [C_1, 0]``, ``D = 0``.

    The feedback of two well-posed models need not be well-posed (end of §2.4): the
    result's certificate (:func:`idlkit.wellposed.check`, whose ``triangular`` entry
    includes the block criterion of :func:`idlkit.wellposed.triangular_criterion`) is
    evaluated, and when none holds a
    :class:`WellPosednessError` with the numbers is raised (``require_wellposed=True``),
    or the model is returned unchecked (``False``; its solver may then fail to converge).

    Args:
        m1: the forward model ``p -> q``; its output is the result's.
        m2: the feedback model ``q -> p``, added to the input of ``m1``.
        require_wellposed: raise when no certificate holds for the result (else return it
            unchecked).

    Returns:
        An :class:`~idlkit.ImplicitModel` ``p -> q`` with ``m1.hidden + m2.hidden`` states.

    Raises:
        ShapeError: ``m2.in_features != m1.out_features`` or ``m2.out_features != m1.in_features``.
        WellPosednessError: ``I - D_1 D_2`` is singular (the algebraic loop is ill-posed),
            or no well-posedness certificate holds for the result.
        InputError: the models' dtypes (or devices) differ.

    Examples:
        >>> m1, m2 = idlkit.ImplicitModel(2, 3, 2, kappa=0.5), idlkit.ImplicitModel(2, 3, 2, kappa=0.5)
        >>> with torch.no_grad():
        ...     _ = m1.C.mul_(0.1), m2.C.mul_(0.1), m1.D.zero_(), m2.D.zero_()  # a small loop gain
        >>> m = feedback(m1, m2)
        >>> u = torch.randn(4, 2)
        >>> y = m(u)
        >>> y.shape, m.hidden
        (torch.Size([4, 2]), 6)
        >>> torch.allclose(y, m1(u + m2(y)), atol=1e-4)  # y = y_1 with u_1 = u + y_2, u_2 = y_1
        True
    """
    _check_models(m1, m2)
    if m2.in_features != m1.out_features or m2.out_features != m1.in_features:
        raise ShapeError(
            f"feedback needs m2: q -> p for m1: p -> q; got m1: {m1.in_features} -> {m1.out_features}, "
            f"m2: {m2.in_features} -> {m2.out_features} (m2.in_features must be {m1.out_features} "
            f"and m2.out_features must be {m1.in_features})")
    P1, P2 = _parts(m1), _parts(m2)
    # the loop couplings B_i (...) C_j are dense in general: sparse parts are densified here
    P1, P2 = (dataclasses.replace(P, **{k: to_dense(getattr(P, k)) for k in "ABCD"}) for P in (P1, P2))
    q, p = P1.q, P1.p
    with torch.no_grad():
        loop = torch.eye(q, dtype=P1.A.dtype, device=P1.A.device) - P1.D @ P2.D
        sv = torch.linalg.svdvals(loop.to(torch.float64))
        smax, smin = float(sv.max()), float(sv.min())
        eps = torch.finfo(P1.A.dtype).eps
        if not (smin > 4 * q * eps * max(smax, 1.0)):
            raise WellPosednessError(
                f"feedback: the algebraic loop y_1 = C_1 x_1 + D_1 (u + y_2) + d_1, y_2 = C_2 x_2 + "
                f"D_2 y_1 + d_2 is ill-posed: I - D_1 D_2 is singular (smallest singular value "
                f"{smin:.3g}, largest {smax:.3g}). Fix: change D_1 or D_2 so that 1 is not an "
                f"eigenvalue of D_1 D_2.")
        rhs = torch.cat([P1.C, P1.D @ P2.C, P1.D, (P1.d + P1.D @ P2.d)[:, None]], dim=1)
        sol = torch.linalg.solve(loop, rhs)
        n1, n2 = P1.n, P2.n
        Cy1, Cy2, Dy, dy = sol[:, :n1], sol[:, n1:n1 + n2], sol[:, n1 + n2:n1 + n2 + p], sol[:, -1]
        eye_p = torch.eye(p, dtype=P1.A.dtype, device=P1.A.device)
        A = torch.cat([torch.cat([P1.A + P1.B @ P2.D @ Cy1, P1.B @ (P2.C + P2.D @ Cy2)], dim=1),
                       torch.cat([P2.B @ Cy1, P2.A + P2.B @ Cy2], dim=1)], dim=0)
        B = torch.cat([P1.B @ (eye_p + P2.D @ Dy), P2.B @ Dy], dim=0)
        C = torch.cat([Cy1, Cy2], dim=1)
        D = Dy
        has = P1.has_bias or P2.has_bias
        b = _bias(has, P1.b + P1.B @ (P2.d + P2.D @ dy), P2.b + P2.B @ dy)
        d = dy if has else None
    act = stack_activations([(n1, m1.activation), (n2, m2.activation)])
    if require_wellposed and A.shape[0] > 0:
        rep = wp.check(A, act)
        if not rep.wellposed:
            raise WellPosednessError(
                f"the feedback connection is not certified well-posed (no sufficient condition "
                f"holds for its A of size {A.shape[0]}): ||A||_inf = {rep.inf_norm:.6g} (x gamma_inf "
                f"= {rep.gamma_inf:g}), lambda_pf = {rep.pf:.6g}, mu_inf = {rep.mu_inf:.6g}, "
                f"triangular = {rep.triangular}; every condition needs a value < 1. The loop "
                f"gain through B_1 C_2 and B_2 C_1 is too large. Fix: scale down C_2 or B_1 "
                f"(or pass require_wellposed=False to build it unchecked).")
    return _build([m1, m2], A, B, C, D, b, d, act)


# ----------------------------------------------------------------------------- §3.1 operations


def with_output_activation(m: ImplicitModel, phi_o: str | Activation) -> ImplicitModel:
    """Activation at the output, ``y = phi_o(C x + D u + d)`` (paper 000 §3.1, eq. 3.1).

    A new state ``z`` holds the output: with ``(z, x)`` and
    ``phi~(z, x) = (phi_o(z), phi(x))``::

        A~ = [[0, C], [0, A]]   B~ = [[D], [B]]   b~ = (d, b)
        C~ = [I, 0]             D~ = 0            d~ = 0

    ``A~`` is block upper triangular with diagonal blocks ``0`` and ``A``, so the rule is
    well-posed iff ``A`` is. ``phi_o`` is any activation name or instance acting on the
    ``q`` outputs; ``"softmax"`` is one SoftMax over all ``q`` outputs.

    Args:
        m: a model ``p -> q``.
        phi_o: the output activation (a name or an :class:`~idlkit.activations.Activation`).

    Returns:
        An :class:`~idlkit.ImplicitModel` ``p -> q`` whose output passes through ``phi_o``.

    Raises:
        ShapeError: ``phi_o`` is a :class:`Blockwise` map whose size is not ``q``.
        ConfigurationError: unknown activation name.

    Examples:
        >>> m = with_output_activation(idlkit.ImplicitModel(3, 4, 2), "sigmoid")
        >>> y = m(torch.randn(5, 3))
        >>> y.shape, bool(((y > 0) & (y < 1)).all())
        (torch.Size([5, 2]), True)
    """
    _check_models(m)
    act_o = get_activation(phi_o)
    P = _parts(m)
    q, n = P.q, P.n
    if isinstance(act_o, Blockwise) and act_o.size != q:
        raise ShapeError(f"output activation {act_o!r} covers {act_o.size} entries, the model has "
                         f"out_features={q}")
    act_o.blocks(q)  # validates block maps against q (e.g. SoftMax(block_size) must divide q)
    sparse = _any_sparse(P)
    with torch.no_grad():
        A = _cat([_cat([_zeros(P.A, q, q, sparse), P.C], dim=1),
                  _cat([_zeros(P.A, n, q, sparse), P.A], dim=1)], dim=0)
        B = _cat([P.D, P.B], dim=0)
        C = _cat([torch.eye(q, dtype=P.A.dtype, device=P.A.device), _zeros(P.A, q, n, sparse)], dim=1)
        D = P.D.new_zeros(q, P.p)
        b = _bias(P.has_bias, P.d, P.b)
    act = stack_activations([(q, act_o), (n, m.activation)])
    return _build([m], A, B, C, D, b, None, act)


def affine(W: Tensor, b: Tensor | None = None, **solver_kwargs: object) -> ImplicitModel:
    """The static affine rule ``y = W u + b`` as a model without state (``hidden = 0``, §3.1).

    A special case of the cascade connection where a system has no activation (§2.4);
    used for normalisation and test-time batch normalisation (:func:`batch_norm`).
    ``W`` is ``(q, p)``, ``b`` is ``(q,)``; dtype and device are ``W``'s.
    ``solver_kwargs`` go to the model (they only matter once it is composed).

    Args:
        W: ``(q, p)`` weight.
        b: ``(q,)`` bias, or ``None``.
        **solver_kwargs: settings of the model (:class:`~idlkit.ImplicitModel`).

    Returns:
        An :class:`~idlkit.ImplicitModel` ``p -> q`` with ``hidden = 0``.

    Raises:
        ShapeError: ``W`` is not 2-D or ``b`` is not ``(q,)``.
        InputError: ``W``/``b`` are not floating tensors of one dtype.

    Examples:
        >>> W, b = torch.tensor([[1.0, 2.0]]), torch.tensor([0.5])
        >>> m = affine(W, b)
        >>> y = m(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        >>> m.hidden, y.shape, y.tolist()
        (0, torch.Size([2, 1]), [[3.5], [0.5]])
    """
    if not isinstance(W, Tensor) or not W.is_floating_point():
        raise InputError(f"W must be a floating torch.Tensor, got "
                         f"{getattr(W, 'dtype', type(W).__name__)}")
    if W.dim() != 2 or W.shape[0] < 1 or W.shape[1] < 1:
        raise ShapeError(f"W must be a (q, p) matrix with q, p >= 1, got shape {tuple(W.shape)}")
    q, p = W.shape
    if b is not None:
        if not isinstance(b, Tensor) or not b.is_floating_point():
            raise InputError(f"b must be a floating torch.Tensor, got "
                             f"{getattr(b, 'dtype', type(b).__name__)}")
        if b.dtype != W.dtype:
            raise InputError(f"b has dtype {b.dtype}, W has {W.dtype}; convert one of them")
        if tuple(b.shape) != (q,):
            raise ShapeError(f"b has shape {tuple(b.shape)}, expected ({q},) for W of shape {(q, p)}")
    W = W.detach()
    z = W.new_zeros
    return ImplicitModel.from_matrices(z(0, 0), z(0, p), z(q, 0), W,
                                       None if b is None else z(0), None if b is None else b.detach(),
                                       activation="identity", **solver_kwargs)  # type: ignore[arg-type]


def batch_norm(running_mean: Tensor, running_var: Tensor, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5, **solver_kwargs: object) -> ImplicitModel:
    """Test-time batch normalisation as an affine model (paper 000 §3.1, "Batch normalization").

    The paper's ``[D, d] = diag(sigma)^{-1} [I, -u^]`` with ``sigma = sqrt(var + eps)``
    (as :class:`torch.nn.BatchNorm1d` in eval mode), followed by the optional learned
    scale and shift: ``y = weight * (u - mean) / sigma + bias``.

    Args:
        running_mean: ``(p,)`` running mean of the batch norm.
        running_var: ``(p,)`` running variance.
        weight: ``(p,)`` scale ``gamma`` (default ones).
        bias: ``(p,)`` shift ``beta`` (default zeros).
        eps: the batch norm's ``eps``.
        **solver_kwargs: settings of the model.

    Returns:
        The affine :class:`~idlkit.ImplicitModel` ``p -> p`` of the batch norm in eval mode.

    Examples:
        >>> bn = torch.nn.BatchNorm1d(3).eval()
        >>> _ = bn.running_mean.fill_(1.0), bn.running_var.fill_(4.0)
        >>> m = batch_norm(bn.running_mean, bn.running_var, bn.weight.detach(), bn.bias.detach(), bn.eps)
        >>> u = torch.randn(5, 3)
        >>> m(u).shape, torch.allclose(m(u), bn(u), atol=1e-6)
        (torch.Size([5, 3]), True)
    """
    for name, v in (("running_mean", running_mean), ("running_var", running_var)):
        if not isinstance(v, Tensor) or not v.is_floating_point() or v.dim() != 1:
            raise InputError(f"{name} must be a 1-D floating tensor, got "
                             f"{getattr(v, 'shape', type(v).__name__)}")
    p = running_mean.shape[0]
    if running_var.shape != (p,):
        raise ShapeError(f"running_var has shape {tuple(running_var.shape)}, running_mean ({p},)")
    eps = check_positive("eps", eps, allow_zero=True, example=1e-5)
    sigma = torch.sqrt(running_var.detach() + eps)
    if not bool((sigma > 0).all()):
        raise InputError("batch_norm needs running_var + eps > 0")
    scale = 1.0 / sigma
    if weight is not None:
        if tuple(weight.shape) != (p,):
            raise ShapeError(f"weight has shape {tuple(weight.shape)}, expected ({p},)")
        scale = scale * weight.detach()
    shift = -running_mean.detach() * scale
    if bias is not None:
        if tuple(bias.shape) != (p,):
            raise ShapeError(f"bias has shape {tuple(bias.shape)}, expected ({p},)")
        shift = shift + bias.detach()
    return affine(torch.diag(scale), shift, **solver_kwargs)


# ----------------------------------------------------------------------------- certificates
