"""Well-posedness certificates and projections (paper 000 §2, App. H; paper 004).

A matrix ``A`` is well-posed for ``phi`` when ``x = phi(A x + b)`` has a unique
solution for every ``b`` (Def. 2.1). The sufficient conditions implemented here:

* ``pf``: ``lambda_pf(gamma |A|) < 1`` for componentwise maps (Thm 2.2) and
  ``lambda_pf(Gamma N(A)) < 1`` for BLIP maps (Thm 2.7, ``N`` of eq. 2.5);
* ``inf``: ``gamma_inf ||A||_inf < 1`` (Remark 2.4; the convex condition used in
  training), with ``gamma_inf`` the l_inf Lipschitz constant of ``phi``;
* ``mu``: ``gamma mu_inf(A) < 1`` for monotone componentwise maps with
  ``0 <= phi' <= gamma`` (paper 004: one-sided Lipschitz / contraction theory);
* ``triangular``: exact for (block) strictly upper-triangular ``A`` (Thm 2.8/2.9),
  and for upper-triangular ``A`` with ``diag(A) < 1`` and a piecewise-linear
  positively homogeneous map such as ReLU (Remark 2.5);
* ``l1``: ``||Gamma_1 |A| ||_1 < 1`` and ``sigma_max``: ``sigma_max(Gamma_2 A) < 1`` (paper 001
  §3.1, eq. 2: contractions in ``l_1`` and ``l_2``), for every activation with its
  ``l_1``/``l_2`` Lipschitz constants (:func:`lipschitz_weights`);
* ``lmi``: a diagonal ``S > 0`` with ``S - M^T S M > 0``, ``M = Gamma_2 A`` (paper 001 §3.2, the
  ``sigma_max`` condition refined by diagonal scaling), solved with cvxpy on request
  (:func:`diagonal_lmi`, ``check(..., lmi=True)``).

The matrix measures ``mu_1`` and ``mu_2`` (paper 004) are reported next to ``mu_inf``.

All certificates are computed in float64 on the CPU and report so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from ._matrix import as_dense_array, as_matrix, block_pattern_graph, is_sparse, row_min_col
from ._validation import check_choice, check_int, check_scalar
from ._validation import check_kappa as _check_kappa
from .activations import (
    Activation,
    ComponentwiseActivation,
    block_activations,
    get_activation,
    stack_activations,
)
from .errors import ConfigurationError, NonFiniteError, ShapeError, WellPosednessError

__all__ = [
    "inf_norm",
    "mu_inf",
    "mu_1",
    "mu_2",
    "pf_eigenvalue",
    "lipschitz_weights",
    "l1_condition",
    "sigma_max_condition",
    "diagonal_lmi",
    "DiagonalLMI",
    "blip_norm_matrix",
    "is_upper_triangular",
    "project_inf_ball",
    "project_mu_set",
    "project_triangular",
    "project_sparsity",
    "mu_parametrization",
    "MuInfParametrization",
    "rescale",
    "blip_condition",
    "triangular_criterion",
    "TriangularReport",
    "WellPosedness",
    "check",
    "require",
    "check_kappa",
]

_EXACT_EIG_MAX_N = 1024


def _square(A: np.ndarray, name: str = "A") -> np.ndarray:
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ShapeError(f"{name} must be a square (n, n) matrix, got shape {A.shape}")
    return A


def check_kappa(kappa: float, name: str = "kappa") -> float:
    """Validate a contraction margin: a finite number in the open interval (0, 1).

    The model-level form of :func:`idlkit._validation.check_kappa`; raises
    :class:`ConfigurationError` naming the value and the fix.

    Args:
        kappa: the margin to check.
        name: the parameter's name used in the error message.

    Returns:
        ``kappa`` as a float.

    Raises:
        ConfigurationError: ``kappa`` not a finite number in ``(0, 1)``.

    Examples:
        >>> check_kappa(0.95)
        0.95
        >>> check_kappa(1.0)
        Traceback (most recent call last):
            ...
        idlkit.errors.ConfigurationError: kappa must be a finite number in (0, 1), got 1.0; pass ...
    """
    return _check_kappa(kappa, name, high=1.0, high_inclusive=False,
                        why="well-posedness needs a contraction factor strictly below 1")


def _finite_matrix(A: object, name: str = "A") -> np.ndarray | sp.csr_array:
    """``A`` as :func:`as_matrix` gives it, refused with a typed error when it is not a numeric
    matrix or holds NaN/Inf (every certificate of a NaN matrix would be NaN or a LinAlgError)."""
    try:
        M = as_matrix(A)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"{name} must be a numeric matrix (tensor, array or scipy sparse), got "
                         f"{type(A).__name__}: {exc}") from exc
    vals = M.data if sp.issparse(M) else M
    if vals.size and not np.all(np.isfinite(vals)):
        raise NonFiniteError(f"{name} has NaN/Inf entries (a diverged training step?); no "
                             f"well-posedness certificate exists: repair {name} or load an earlier "
                             f"checkpoint")
    return M


def _finite_square(A: object) -> np.ndarray | sp.csr_array:
    """:func:`_finite_matrix`, refused with :class:`ShapeError` unless square."""
    M = _finite_matrix(A)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ShapeError(f"A must be a square (n, n) matrix, got shape {M.shape}")
    return M


def inf_norm(A: Tensor | np.ndarray) -> float:
    """``||A||_inf = max_i sum_j |A_ij|``, the max-row-sum norm (paper 000 §1.3), float64.

    Dense or sparse (torch sparse, scipy sparse) input; sparse stays sparse.

    Args:
        A: ``(n, m)`` matrix: dense or sparse tensor, NumPy or SciPy sparse array.

    Returns:
        ``||A||_inf`` as a Python float.

    Examples:
        >>> A = torch.tensor([[0.5, -0.25], [0.1, 0.2]])
        >>> round(inf_norm(A), 6)
        0.75
    """
    M = _finite_matrix(A)
    if M.shape[0] == 0 or M.shape[1] == 0:
        return 0.0
    return float(_row_abs_sums(M).max())


def _row_abs_sums(M: np.ndarray | sp.csr_array) -> np.ndarray:
    """``sum_j |M_ij|`` per row, float64; a sparse ``M`` by one segmented sum over its values."""
    if not sp.issparse(M):
        return np.abs(M).sum(axis=1)
    M = sp.csr_array(M)
    out = np.zeros(M.shape[0])
    nz = np.flatnonzero(np.diff(M.indptr))
    if nz.size:
        out[nz] = np.add.reduceat(np.abs(M.data), M.indptr[nz])
    return out


def mu_inf(A: Tensor | np.ndarray) -> float:
    """l_inf matrix measure ``mu_inf(A) = max_i (A_ii + sum_{j != i} |A_ij|)`` (paper 004), float64.

    Dense or sparse input.

    Args:
        A: ``(n, n)`` matrix: dense or sparse tensor, NumPy or SciPy sparse array.

    Returns:
        ``mu_inf(A)`` as a Python float (may be negative).

    Examples:
        >>> A = torch.tensor([[-1.0, 0.5], [0.25, 0.5]])
        >>> mu_inf(A), inf_norm(A)
        (0.75, 1.5)
    """
    M = _finite_square(A)
    if M.shape[0] == 0:
        return -math.inf
    d = np.asarray(M.diagonal())
    return float((d + _row_abs_sums(M) - np.abs(d)).max())


def mu_1(A: Tensor | np.ndarray) -> float:
    """l_1 matrix measure ``mu_1(A) = max_j (A_jj + sum_{i != j} |A_ij|)`` (paper 004), float64.

    The column form of :func:`mu_inf` (``mu_1(A) = mu_inf(A^T)``): the one-sided derivative
    ``lim_{h -> 0+} (||I + h A||_1 - 1) / h`` of the induced l_1 norm (max column sum). Dense or
    sparse input (never densified).

    Args:
        A: ``(n, n)`` matrix: dense or sparse tensor, NumPy or SciPy sparse array.

    Returns:
        ``mu_1(A)`` as a Python float (may be negative).

    Examples:
        >>> mu_1(np.array([[-2.0, 1.0], [0.5, 0.0]]))
        1.0
    """
    M = _finite_square(A)
    if M.shape[0] == 0:
        return -math.inf
    d = np.asarray(M.diagonal())
    return float((d + _row_abs_sums(M.T) - np.abs(d)).max())


def mu_2(A: Tensor | np.ndarray) -> float:
    """l_2 matrix measure ``mu_2(A) = lambda_max((A + A^T) / 2)`` (paper 004), float64.

    The one-sided derivative ``lim_{h -> 0+} (||I + h A||_2 - 1) / h`` of the spectral norm.
    Dense input, and sparse input up to ``n = 1024``: the symmetric eigenvalues (exact up to
    rounding). A larger sparse ``A`` (kept sparse) gets a Lanczos estimate (``eigsh``), which
    is not certified; :func:`check` reports ``nan`` for it instead.

    Args:
        A: ``(n, n)`` matrix: dense or sparse tensor, NumPy or SciPy sparse array.

    Returns:
        ``mu_2(A)`` as a Python float (an estimate for a sparse ``A`` with ``n > 1024``).

    Examples:
        >>> mu_2(np.array([[0.0, 1.0], [-1.0, 0.0]]))  # skew-symmetric: 0
        0.0
    """
    M = _finite_square(A)
    n = M.shape[0]
    if n == 0:
        return -math.inf
    if sp.issparse(M) and n > _EXACT_EIG_MAX_N:
        from scipy.sparse.linalg import eigsh

        H = sp.csr_array((M + M.T) * 0.5)
        return float(eigsh(H, k=1, which="LA", return_eigenvectors=False)[0])
    D = M.toarray() if sp.issparse(M) else M
    return float(np.linalg.eigvalsh((D + D.T) * 0.5)[-1])


def pf_eigenvalue(M: Tensor | np.ndarray, tol: float = 1e-10, max_iter: int = 10_000) -> float:
    """Perron-Frobenius eigenvalue (spectral radius) of a nonnegative matrix, float64.

    For ``n <= 1024`` the dense eigenvalues give it exactly (up to rounding). For
    larger ``M`` (dense, or sparse: torch or scipy, kept sparse) a power iteration
    on ``M + I`` (primitive whenever ``M`` is irreducible; the shift also handles
    reducible and periodic ``M``) is run, and the value returned is the
    Collatz-Wielandt *upper* bound ``max_i (M v)_i / v_i`` for the positive iterate
    ``v``, valid for every nonnegative ``M`` and every ``v > 0`` — a certified
    bound, never an underestimate. It stops when the lower and upper bounds meet
    or the upper bound stalls (reducible ``M``).

    Args:
        M: ``(n, n)`` nonnegative matrix (dense or sparse tensor, or array).
        tol: relative gap of the lower and upper bounds at which the power iteration stops.
        max_iter: power iterations at most (large ``M`` only).

    Returns:
        ``lambda_pf(M)`` (an upper bound for large ``M``) as a Python float.

    Raises:
        ShapeError: ``M`` is not square.
        NonFiniteError: NaN/Inf entries.
        ConfigurationError: a negative entry.

    Examples:
        >>> M = np.array([[0.5, 0.2], [0.1, 0.4]])
        >>> round(pf_eigenvalue(M), 6), round(float(max(abs(np.linalg.eigvals(M)))), 6)
        (0.6, 0.6)
    """
    A = as_matrix(M)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ShapeError(f"M must be a square (n, n) matrix, got shape {A.shape}")
    vals = A.data if sp.issparse(A) else A
    if vals.size and not np.all(np.isfinite(vals)):
        raise NonFiniteError("the matrix has NaN/Inf entries (a model's A or low-rank factors after a "
                             "diverged step?): no Perron-Frobenius certificate exists; repair the "
                             "weights or load an earlier checkpoint")
    if vals.size and vals.min() < 0:
        raise ConfigurationError(f"pf_eigenvalue needs a nonnegative matrix; min entry is "
                                 f"{vals.min():.3g} (pass abs(A) for the CONE certificate)")
    n = A.shape[0]
    if sp.issparse(A) and n <= _EXACT_EIG_MAX_N:
        A = A.toarray()
    n = A.shape[0]
    if n == 0:
        return 0.0
    if n <= _EXACT_EIG_MAX_N:
        return float(np.abs(np.linalg.eigvals(A)).max())
    v = np.ones(n)
    upper = math.inf
    history: list[float] = []
    for _ in range(max_iter):
        w = A @ v + v
        v_new = w / w.max()
        v_new = np.maximum(v_new, 1e-300)  # stay positive for the Collatz-Wielandt bound
        Av = A @ v_new
        ratio = Av / v_new
        up, low = float(ratio.max()), float(ratio.min())
        upper = min(upper, up)
        v = v_new
        history.append(upper)
        # stop when the bounds meet, or when the upper bound has stalled (a reducible M, e.g.
        # with a zero row, keeps the lower bound at 0 forever)
        if up - low <= tol * max(1.0, up):
            break
        if len(history) > 20 and history[-21] - upper <= tol * max(1.0, upper):
            break
    return upper


def _segment_matrix(sizes: tuple[int, ...]) -> np.ndarray:
    """``n x L`` 0/1 matrix mapping indices to their block."""
    n, L = sum(sizes), len(sizes)
    P = np.zeros((n, L))
    P[np.arange(n), np.repeat(np.arange(L), sizes)] = 1.0
    return P


def _block_reduce_max(M: np.ndarray, sizes: tuple[int, ...], axis: int) -> np.ndarray:
    """Max over the blocks of ``sizes`` along ``axis``."""
    starts = np.cumsum((0,) + sizes[:-1])
    return np.maximum.reduceat(M, starts, axis=axis)


def blip_norm_matrix(A: Tensor | np.ndarray, sizes: tuple[int, ...],
                     norms: tuple[float, ...], gammas: tuple[float, ...] | None = None) -> np.ndarray:
    """The ``L x L`` matrix ``N(A)_ij = ||A_ij||_{p_j -> p_i}`` of eq. 2.5, float64.

    With ``gammas`` (the blocks' Lipschitz constants) the rows are scaled, giving the
    matrix ``Gamma N(A)`` of Thm 2.7 (see :func:`blip_condition`).

    Exact for the pairs ``(p_j -> p_i)`` in ``{inf->inf, 1->1, 1->inf, 2->inf,
    1->2, 2->2}``. The pairs ``inf->1``, ``inf->2`` and ``2->1`` are NP-hard in
    general; for them a documented upper bound is used (sum of absolute entries;
    the l2 norm of the row l1 norms; the sum of the row l2 norms), which keeps the
    certificate of Thm 2.7 sufficient.

    A sparse ``A`` stays sparse and a scipy CSR matrix is returned: for scalar blocks
    ``Gamma |A|`` exactly; for larger blocks every ``N_ij`` is bounded by the sum of the
    absolute entries of ``A_ij`` (``||B x||_q <= ||B x||_1 <= sum |B_kl| ||x||_inf``), an
    upper bound for every pair of norms, so the certificate stays sufficient.

    Args:
        A: ``(n, n)`` matrix (dense or sparse tensor, or array).
        sizes: the block sizes ``n_l`` (summing to ``n``).
        norms: the block norms ``p_l`` (``1``, ``2`` or ``inf``), one per block.
        gammas: the blocks' Lipschitz constants to scale the rows with, or ``None``.

    Returns:
        ``(L, L)`` float64 array (SciPy CSR for a sparse ``A``).

    Raises:
        ShapeError: ``sizes`` that do not sum to ``n`` or lists of different lengths.

    Examples:
        >>> A = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -2.0], [0.5, 0.5, 0.0]])
        >>> N = blip_norm_matrix(A, sizes=(2, 1), norms=(2.0, 2.0))
        >>> N.shape, np.round(N, 4).tolist()
        ((2, 2), [[0.0, 2.2361], [0.7071, 0.0]])
    """
    if is_sparse(A):
        return _sparse_blip_norm_matrix(as_matrix(A), sizes, norms, gammas)
    M = _square(as_dense_array(A))
    n = M.shape[0]
    if sum(sizes) != n or len(sizes) != len(norms):
        raise ShapeError(f"partition {sizes} (with norms {norms}) does not cover a state of size {n}")
    for p in norms:
        check_choice("block norm", p, (1, 2, math.inf))
    if gammas is not None and len(gammas) != len(sizes):
        raise ShapeError(f"{len(gammas)} Lipschitz constants for {len(sizes)} blocks")
    scale = np.ones(len(sizes)) if gammas is None else np.asarray(gammas, dtype=np.float64)
    if all(s == 1 for s in sizes):
        return scale[:, None] * np.abs(M)
    absM, sq = np.abs(M), M * M
    P = _segment_matrix(sizes)
    rowsum_blk = absM @ P           # (n, L): l1 norm of each row restricted to column block
    rowl2_blk = np.sqrt(sq @ P)     # (n, L): l2 norm of each row restricted to column block
    colsum_blk = P.T @ absM         # (L, n)
    coll2_blk = np.sqrt(P.T @ sq)   # (L, n)
    maxabs = _block_reduce_max(_block_reduce_max(absM, sizes, 0), sizes, 1)
    cand = {
        (math.inf, math.inf): _block_reduce_max(rowsum_blk, sizes, 0),
        (1.0, 1.0): _block_reduce_max(colsum_blk, sizes, 1),
        (1.0, math.inf): maxabs,
        (2.0, math.inf): _block_reduce_max(rowl2_blk, sizes, 0),
        (1.0, 2.0): _block_reduce_max(coll2_blk, sizes, 1),
        (math.inf, 1.0): P.T @ rowsum_blk,                      # upper bound
        (math.inf, 2.0): np.sqrt(P.T @ (rowsum_blk ** 2)),      # upper bound
        (2.0, 1.0): P.T @ rowl2_blk,                            # upper bound
    }
    L = len(sizes)
    N = np.zeros((L, L))
    offs = np.cumsum((0,) + tuple(sizes))
    for i in range(L):
        for j in range(L):
            key = (float(norms[j]), float(norms[i]))  # p_j -> p_i
            if key == (2.0, 2.0):
                blk = M[offs[i]:offs[i + 1], offs[j]:offs[j + 1]]
                N[i, j] = np.linalg.norm(blk, 2) if blk.size else 0.0
            else:
                N[i, j] = cand[key][i, j]
    return scale[:, None] * N


def _sparse_blip_norm_matrix(M: sp.csr_array, sizes: tuple[int, ...], norms: tuple[float, ...],
                             gammas: tuple[float, ...] | None) -> sp.csr_array:
    n = M.shape[0]
    if M.shape[0] != M.shape[1]:
        raise ShapeError(f"A must be a square (n, n) matrix, got shape {M.shape}")
    if sum(sizes) != n or len(sizes) != len(norms):
        raise ShapeError(f"partition {sizes} (with norms {norms}) does not cover a state of size {n}")
    if gammas is not None and len(gammas) != len(sizes):
        raise ShapeError(f"{len(gammas)} Lipschitz constants for {len(sizes)} blocks")
    L = len(sizes)
    scale = np.ones(L) if gammas is None else np.asarray(gammas, dtype=np.float64)
    absM = abs(M)
    if L != n:
        P = sp.csr_array((np.ones(n), (np.arange(n), np.repeat(np.arange(L), sizes))), shape=(n, L))
        absM = sp.csr_array(P.T @ absM @ P)
    return sp.csr_array(sp.diags_array(scale) @ absM)


def blip_condition(A: Tensor | np.ndarray, activation: str | Activation) -> float:
    """``lambda_pf(Gamma N(A))`` for the activation's BLIP structure (Thm 2.7), float64.

    Below 1 certifies well-posedness. For componentwise maps it is
    ``lambda_pf(gamma |A|)`` (Thm 2.2).

    Args:
        A: ``(n, n)`` matrix (dense or sparse tensor, or array).
        activation: name or :class:`~idlkit.activations.Activation`.

    Returns:
        ``lambda_pf(Gamma N(A))`` as a Python float; below 1 certifies well-posedness.

    Examples:
        >>> act = idlkit.activations.BlockMax(2)  # two blocks of 2 states
        >>> A = 0.2 * torch.eye(4)
        >>> round(blip_condition(A, act), 6)
        0.2
    """
    act = get_activation(activation)
    M = as_matrix(A) if is_sparse(A) else _square(as_dense_array(A))
    bs = act.blocks(M.shape[0])
    return pf_eigenvalue(blip_norm_matrix(M, bs.sizes, bs.norms, bs.gammas))


def is_upper_triangular(A: Tensor | np.ndarray, strict: bool = False,
                        sizes: tuple[int, ...] | None = None) -> bool:
    """Whether ``A`` is (block) upper triangular; ``strict`` also asks for zero diagonal (blocks).

    A sparse ``A`` is decided on its pattern, in ``O(nnz)`` (never densified).

    Args:
        A: ``(n, n)`` matrix (dense or sparse tensor, or array).
        strict: also require zero diagonal (blocks).
        sizes: block sizes of the partition, or ``None`` for single entries.

    Returns:
        ``True`` when ``A`` is (strictly) block upper triangular.

    Examples:
        >>> A = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
        >>> is_upper_triangular(A, strict=True), is_upper_triangular(A.T)
        (True, False)
    """
    if is_sparse(A):
        G = block_pattern_graph(A, sizes)
        first = row_min_col(G)
        ar = np.arange(G.shape[0])
        return not bool(np.any(first <= ar if strict else first < ar))
    M = _square(as_dense_array(A))
    n = M.shape[0]
    if sizes is None or all(s == 1 for s in sizes):
        mask = np.tril(np.ones((n, n), dtype=bool), k=-1 if not strict else 0)
        return not bool(np.any(M[mask] != 0))
    blk = np.repeat(np.arange(len(sizes)), sizes)
    lower = blk[:, None] > blk[None, :] if not strict else blk[:, None] >= blk[None, :]
    return not bool(np.any(M[lower] != 0))


# ----------------------------------------------------------------------------- projections


def _boundary_margin(n: int, dtype: torch.dtype) -> float:
    """Relative distance inside the boundary at which a projection lands: the rounding of a
    float64 row sum (any summation order) plus a few ulps of ``dtype``."""
    return 16 * max(n, 1) * float(np.finfo(np.float64).eps) + 4 * torch.finfo(dtype).eps


def _threshold_sorted(c: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """From rows ``c`` sorted in decreasing order (the ``k`` largest entries): ``lam`` and
    whether it is exact, i.e. the condition ``c_j > s_j / j`` already fails at ``j = k``."""
    k = c.shape[1]
    cs = torch.cumsum(c, dim=1) - radius
    j = torch.arange(1, k + 1, dtype=c.dtype, device=c.device)
    cond = c * j > cs
    rho = (cond * j).amax(dim=1, keepdim=True)  # >= 1 since radius > 0
    return (cs.gather(1, rho.long() - 1) / rho).squeeze(1), ~cond[:, -1]


def _michelot(W: Tensor, radius: float, lam: Tensor, max_iter: int = 30, chunk: int = 128,
              offset: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Michelot's iteration ``lam <- (t + sum_{W > lam} W - r) / (#{W > lam} + e)``, i.e.
    Newton's method on the convex, decreasing, piecewise-linear
    ``h(lam) = t - e lam + sum_j (W_j - lam)_+ - r`` from a start with ``h >= 0``: it
    increases to the exact root and stops when the active set no longer shrinks. ``t = 0,
    e = 0`` for the l1 ball; ``t = offset`` (the diagonal entry) and ``e = 1`` for the
    mu_inf set. By chunks of rows so that each pass stays in cache. Returns ``(lam, exact)``."""
    lam = lam.clone()
    exact = torch.zeros_like(lam, dtype=torch.bool)
    extra = 0.0 if offset is None else 1.0
    for lo in range(0, W.shape[0], chunk):
        Wc, lc = W[lo:lo + chunk], lam[lo:lo + chunk]
        tc = 0.0 if offset is None else offset[lo:lo + chunk]
        count = torch.full_like(lc, float(W.shape[1]) + 1.0)  # nothing counted yet
        for _ in range(max_iter):
            active = Wc > lc[:, None]
            new_count = active.sum(dim=1).to(W.dtype)
            done = new_count == count
            if bool(done.all()):
                break
            lc = (tc + (Wc * active).sum(dim=1) - radius) / (new_count + extra)
            count = new_count
        lam[lo:lo + chunk], exact[lo:lo + chunk] = lc, done
    return lam, exact


_SORT_DIRECTLY = 1 << 16  # entries below which _l1_threshold sorts at once


def _l1_threshold(W: Tensor, radius: float) -> Tensor:
    """``lam >= 0`` with ``sum_j (W_ij - lam_i)_+ = radius`` for each row of ``W >= 0``
    (rows with ``sum_j W_ij > radius``).

    With ``c`` the row sorted in decreasing order and ``s_j = sum_{i<=j} c_i - r``,
    ``lam = s_rho / rho`` for ``rho`` the largest ``j`` with ``c_j > s_j / j`` (Duchi et
    al. 2008); the condition holds exactly for ``j <= rho``. Three exact shortcuts come
    before a full sort: every entry survives (``rho = n``: barely outside, as after a
    small gradient step) iff ``min_j W_ij > (sum_j W_ij - r) / n``; few survive (far
    outside) iff the condition fails within the 16 largest entries (``torch.topk``);
    otherwise Michelot's finite iteration usually settles in a few passes. Rows none of
    these settle are sorted. Small inputs (``m n <= _SORT_DIRECTLY``) are sorted at once.
    """
    m, n = W.shape
    if m * n <= _SORT_DIRECTLY:  # small: one sort costs less than the shortcuts' bookkeeping
        if W.device.type == "cpu":  # numpy sorts small rows ~4x faster than torch
            c = torch.from_numpy(-np.sort(-W.detach().numpy(), axis=1))
        else:
            c = torch.sort(W, dim=1, descending=True).values
        # float64 partial sums (as the row sums of the certificates); torch's cumsum along
        # rows is ~4x faster than numpy's here
        return _threshold_sorted(c.to(torch.float64), radius)[0].to(W.dtype)
    lam = (W.sum(dim=1) - radius) / n
    rows = (W.amin(dim=1) <= lam).nonzero().squeeze(1)
    if rows.numel() and n > 16:
        top = torch.topk(W[rows], 16, dim=1, sorted=True).values
        lam_top, exact = _threshold_sorted(top, radius)
        lam[rows[exact]] = lam_top[exact]
        rows = rows[~exact]
    if rows.numel():
        lam_m, exact = _michelot(W[rows], radius, lam[rows])
        lam[rows[exact]] = lam_m[exact]
        rows = rows[~exact]
    if rows.numel():
        c = torch.sort(W[rows], dim=1, descending=True).values
        lam[rows] = _threshold_sorted(c, radius)[0]
    return lam


def _project_rows_l1(V: Tensor, radius: float) -> Tensor:
    """Rows of ``V`` projected onto ``{a : ||a||_1 <= radius}`` (exact).

    The KKT conditions of ``min 1/2 ||a - v||^2 : ||a||_1 <= r`` give
    ``a = sign(v) (|v| - lam)_+`` with ``lam >= 0`` the root of
    ``sum_j (|v_j| - lam)_+ = r`` (paper 000 App. H); :func:`_l1_threshold` finds it
    exactly from the largest entries (at worst one sort, O(n log n) per row). Rows
    inside (summed in float64) are returned unchanged. Projected rows are pulled inside
    the sphere by the rounding allowance of :func:`_boundary_margin` (relative ~1e-13
    in float64), so that they are feasible whatever the summation order.
    """
    absV = V.abs()
    outside = absV.sum(dim=1, dtype=torch.float64) > radius  # float64, as the certificates
    if not bool(outside.any()):
        return V.clone()
    every = bool(outside.all())
    rows = None if every else outside.nonzero().squeeze(1)
    Vr, W = (V, absV) if every else (V[rows], absV[rows])
    lam = _l1_threshold(W, radius)[:, None]
    P = Vr - torch.clamp(Vr, -lam, lam)  # = sign(v) (|v| - lam)_+, soft thresholding
    # the projected rows lie on the sphere in exact arithmetic; after rounding they may sit a
    # few ulps outside, so pull them strictly inside by the rounding allowance
    target = radius * (1 - _boundary_margin(V.shape[1], V.dtype))
    psum = P.abs().sum(dim=1, keepdim=True, dtype=torch.float64)
    over = psum > target
    if bool(over.any()):
        P = P * torch.where(over, target / psum, torch.ones_like(psum)).to(V.dtype)
    if every:
        return P
    out = V.clone()
    out[rows] = P
    return out


def project_inf_ball(A: Tensor, kappa: float) -> Tensor:
    """Exact Euclidean projection of ``A`` onto ``{||A||_inf <= kappa}`` (paper 000 eq. 6.6, App. H).

    The problem separates over rows; each row is projected onto the l1 ball of
    radius ``kappa`` by the sort-based algorithm (:func:`_project_rows_l1`), which
    reaches the exact optimum of the bisection of App. H in ``O(n^2 log n)``.
    Rows already inside are returned unchanged. Works in ``A``'s dtype; a row that
    rounding leaves a few ulps above ``kappa`` is shrunk by a few ulps, so the
    result is feasible in its own precision (``||A||_inf <= kappa`` as computed).

    Args:
        A: ``(n, n)`` dense matrix.
        kappa: radius, ``> 0``.

    Returns:
        ``(n, n)`` tensor of ``A``'s dtype with ``||A||_inf <= kappa``.

    Raises:
        ShapeError: ``A`` is not a 2-D tensor.

    Examples:
        >>> A = torch.randn(4, 4)
        >>> P = project_inf_ball(A, 0.9)
        >>> P.shape, inf_norm(P) <= 0.9 + 1e-6
        (torch.Size([4, 4]), True)
    """
    if not isinstance(A, Tensor) or A.dim() != 2:
        raise ShapeError(f"project_inf_ball expects a 2-D tensor, got {getattr(A, 'shape', A)!r}")
    kappa = _check_kappa(kappa, high=None, why="it is the radius of the l_inf ball")
    _finite_matrix(A)
    return _project_rows_l1(A, kappa)


def project_mu_set(A: Tensor, gamma: float) -> Tensor:
    """Exact Euclidean projection of ``A`` onto ``{mu_inf(A) <= gamma}`` (paper 004).

    Derivation (ours; the slides state the set, not its projection). The set is
    an intersection of one constraint per row, ``a_ii + sum_{j != i} |a_ij| <= gamma``,
    so the projection separates over rows. For a row with diagonal entry ``t0``
    and off-diagonal part ``w0``, the KKT conditions of
    ``min 1/2 (t - t0)^2 + 1/2 ||w - w0||^2 : t + ||w||_1 <= gamma`` give, for a
    multiplier ``lam >= 0``, ``t = t0 - lam`` and ``w = sign(w0) (|w0| - lam)_+``,
    where ``h(lam) = t0 - lam + sum_j (|w0_j| - lam)_+ - gamma`` is strictly
    decreasing; ``lam = 0`` if ``h(0) <= 0``, else its root. With ``c`` the sorted
    ``|w0|`` (decreasing) and ``S_k`` its partial sums, the root on the piece with
    ``k`` active entries is ``lam_k = (t0 + S_k - gamma) / (k + 1)``, valid when
    ``c_{k+1} <= lam_k <= c_k`` (``c_0 = inf``, ``c_{n} = 0``); the valid ``k`` is
    the largest with ``c_k > lam_k`` (k = 0 always qualifies). ``gamma`` may be
    any real number (negative values ask for strict contraction of the flow).

    Args:
        A: ``(n, n)`` dense matrix.
        gamma: the bound on ``mu_inf``, a finite number (any sign).

    Returns:
        ``(n, n)`` tensor of ``A``'s dtype with ``mu_inf(A) <= gamma``.

    Raises:
        ShapeError: ``A`` is not square.
        ConfigurationError: a non-finite ``gamma``.

    Examples:
        >>> A = torch.randn(4, 4)
        >>> P = project_mu_set(A, 0.5)
        >>> P.shape, mu_inf(P) <= 0.5 + 1e-6
        (torch.Size([4, 4]), True)
    """
    if not isinstance(A, Tensor) or A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ShapeError(f"project_mu_set expects a square 2-D tensor, got "
                         f"{getattr(A, 'shape', A)!r}")
    g = check_scalar("gamma", gamma)
    _finite_matrix(A)
    n = A.shape[0]
    if n == 0:
        return A.clone()
    eye = torch.eye(n, dtype=torch.bool, device=A.device)
    t0 = torch.diagonal(A)
    W = A.masked_fill(eye, 0.0)
    absW = W.abs()
    h0 = t0 + absW.sum(dim=1) - g
    lam = torch.zeros_like(t0)
    rows = (h0 > 0).nonzero().squeeze(1)
    if rows.numel():
        # Michelot/Newton from lam = h0 / n (all entries active, h >= 0 there), exact
        lam_m, exact = _michelot(absW[rows], g, h0[rows] / n, offset=t0[rows])
        lam[rows] = lam_m
        rows = rows[~exact]
    if rows.numel():  # unsettled rows: the sort-based formula
        c, _ = torch.sort(absW[rows], dim=1, descending=True)
        c = c[:, : n - 1]
        tr = t0[rows]
        S = torch.cumsum(c, dim=1)
        k = torch.arange(1, c.shape[1] + 1, dtype=A.dtype, device=A.device)
        lam_k = (tr[:, None] + S - g) / (k + 1)              # pieces k = 1..n-1
        kbest = (c > lam_k).mul(k).amax(dim=1).long() if c.shape[1] else torch.zeros_like(rows)
        lam0 = tr - g                                         # piece k = 0
        lam[rows] = torch.where(
            kbest > 0,
            lam_k.gather(1, (kbest.clamp(min=1) - 1)[:, None]).squeeze(1) if c.shape[1] else lam0,
            lam0)
    lam = lam.clamp(min=0)
    out = torch.sign(W) * torch.clamp(absW - lam[:, None], min=0)
    t = t0 - lam
    # projected rows land on the boundary; move their diagonal inside by the rounding allowance
    # (the measure is linear in the diagonal entry, so this is exact up to one rounding)
    moved = h0 > 0
    offd = out.abs().sum(dim=1, dtype=torch.float64)
    size = t.abs().to(torch.float64) + offd + abs(g)
    target = g - _boundary_margin(n, A.dtype) * size
    excess = (t.to(torch.float64) + offd) - target
    t = torch.where(moved & (excess > 0), (t.to(torch.float64) - excess).to(A.dtype), t)
    return out + torch.diag_embed(t)


def project_triangular(A: Tensor, strict: bool = True,
                       sizes: tuple[int, ...] | None = None) -> Tensor:
    """Projection onto (strictly) upper (block) triangular matrices: zero the rest (Thm 2.8/2.9).

    With a block partition ``sizes`` (the activation's BLIP blocks), the blocks on
    and below the diagonal are zeroed (``strict``) or those below it.

    Args:
        A: ``(n, n)`` dense matrix.
        strict: zero the diagonal (blocks) too.
        sizes: block sizes of the partition, or ``None`` for single entries.

    Returns:
        ``(n, n)`` (strictly) block upper triangular tensor.

    Raises:
        ShapeError: ``A`` not square, or ``sizes`` that do not sum to ``n``.

    Examples:
        >>> A = torch.ones(3, 3)
        >>> project_triangular(A)
        tensor([[0., 1., 1.],
                [0., 0., 1.],
                [0., 0., 0.]])
        >>> project_triangular(A, strict=False).sum().item()
        6.0
    """
    if not isinstance(A, Tensor) or A.dim() != 2:
        raise ShapeError(f"project_triangular expects a 2-D tensor, got {getattr(A, 'shape', A)!r}")
    if sizes is None or all(s == 1 for s in sizes):
        return torch.triu(A, diagonal=1 if strict else 0)
    if sum(sizes) != A.shape[0]:
        raise ShapeError(f"block sizes {sizes} do not cover a matrix of size {A.shape[0]}")
    blk = torch.repeat_interleave(torch.arange(len(sizes), device=A.device),
                                  torch.as_tensor(sizes, device=A.device))
    keep = blk[:, None] < blk[None, :] if strict else blk[:, None] <= blk[None, :]
    return A * keep.to(A.dtype)


def project_sparsity(A: Tensor, mask: Tensor) -> Tensor:
    """Euclidean projection onto the matrices with the sparsity pattern ``mask``: ``A * mask``.

    ``mask`` is boolean (or 0/1) of ``A``'s shape; entries outside it are zeroed.

    Args:
        A: ``(n, m)`` matrix.
        mask: boolean (or 0/1) tensor of ``A``'s shape; ``True`` keeps the entry.

    Returns:
        ``A * mask``, ``A``'s shape and dtype.

    Raises:
        ShapeError: ``mask`` of another shape.
        ConfigurationError: a mask with values other than 0 and 1.

    Examples:
        >>> A = torch.ones(2, 3)
        >>> mask = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool)
        >>> project_sparsity(A, mask)
        tensor([[1., 0., 1.],
                [0., 1., 0.]])
    """
    if not isinstance(A, Tensor) or not isinstance(mask, Tensor) or mask.shape != A.shape:
        raise ShapeError(f"mask must be a tensor of A's shape {tuple(getattr(A, 'shape', ()))}, "
                         f"got {tuple(getattr(mask, 'shape', ())) or type(mask).__name__}")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ConfigurationError("mask must be boolean or hold only 0 and 1")
    return torch.where(mask.to(torch.bool), A, torch.zeros((), dtype=A.dtype, device=A.device))


def mu_parametrization(T: Tensor, gamma: float) -> Tensor:
    """``A = T - diag(|T| 1) + gamma I``, which has ``mu_inf(A) <= gamma`` for every ``T`` (paper 004).

    Row ``i`` of ``A`` has diagonal ``T_ii - sum_j |T_ij| + gamma`` and off-diagonal
    ``T_ij``, so ``mu_inf``'s row value is ``T_ii - |T_ii| + gamma <= gamma``, with
    equality exactly for rows with ``T_ii >= 0``. Every ``A`` with ``mu_inf(A) <= gamma``
    is reached (take ``T = A`` off the diagonal and ``T_ii`` to absorb the slack), so
    training ``T`` freely explores the whole set. Differentiable in ``T``.

    Args:
        T: ``(n, n)`` free parameter.
        gamma: the bound on ``mu_inf(A)``, finite.

    Returns:
        ``(n, n)`` tensor ``A`` with ``mu_inf(A) <= gamma``.

    Raises:
        ShapeError: ``T`` is not square.
        ConfigurationError: a non-finite ``gamma``.

    Examples:
        >>> T = torch.randn(5, 5)
        >>> A = mu_parametrization(T, 0.5)
        >>> A.shape, mu_inf(A) <= 0.5 + 1e-6
        (torch.Size([5, 5]), True)
    """
    if not isinstance(T, Tensor) or T.dim() != 2 or T.shape[0] != T.shape[1]:
        raise ShapeError(f"T must be a square 2-D tensor, got {getattr(T, 'shape', T)!r}")
    g = check_scalar("gamma", gamma)
    return T - torch.diag_embed(T.abs().sum(dim=1)) + g * torch.eye(
        T.shape[0], dtype=T.dtype, device=T.device)


class MuInfParametrization(torch.nn.Module):
    """:func:`mu_parametrization` as a module, for ``torch.nn.utils.parametrize``.

    ``parametrize.register_parametrization(model, "A", MuInfParametrization(0.9))``
    makes ``model.A`` satisfy ``mu_inf(A) <= 0.9`` after every optimizer step.
    (``right_inverse`` maps an ``A`` already in the set to a ``T`` producing it.)

    The module exists to keep a model well-posed (paper 004 trains with ``mu_inf(A) <= gamma``,
    "``gamma < 1`` is a hyperparameter"), so ``gamma`` must be a finite number below 1
    (negative values ask for a strictly contracting flow); ``gamma >= 1`` raises
    :class:`ConfigurationError`. For an activation with slopes up to ``L`` pass ``gamma < 1 / L``.
    :func:`mu_parametrization` itself describes the set for any ``gamma``.

    Args:
        gamma: the bound on ``mu_inf(A)``, finite and below 1.

    Raises:
        ConfigurationError: ``gamma >= 1`` or not finite.

    Examples:
        >>> from torch.nn.utils import parametrize
        >>> lin = torch.nn.Linear(4, 4, bias=False)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(project_mu_set(lin.weight, 0.5))  # a start inside the set
        >>> _ = parametrize.register_parametrization(lin, "weight", MuInfParametrization(0.5))
        >>> lin.weight.shape, mu_inf(lin.weight.detach()) <= 0.5 + 1e-6
        (torch.Size([4, 4]), True)
    """

    def __init__(self, gamma: float) -> None:
        super().__init__()
        self.gamma = float(check_scalar(
            "gamma", gamma, high=1.0, high_inclusive=False, example=0.95,
            why="mu_inf(A) <= gamma certifies well-posedness of x = phi(A x + B u + b) only "
                "for gamma < 1 (paper 004)"))

    def forward(self, T: Tensor) -> Tensor:
        """``A = T - diag(|T| 1) + gamma I`` (:func:`mu_parametrization`).

        Args:
            T: ``(n, n)`` free parameter.

        Returns:
            ``(n, n)`` ``A`` with ``mu_inf(A) <= gamma``.
        """
        return mu_parametrization(T, self.gamma)

    def right_inverse(self, A: Tensor) -> Tensor:
        """A ``T`` with ``forward(T) = A`` for an ``A`` in the set (off-diagonal ``T = A``).

        Args:
            A: ``(n, n)`` matrix with ``mu_inf(A) <= gamma``.

        Returns:
            ``(n, n)`` ``T`` with ``forward(T) = A``.

        Raises:
            WellPosednessError: ``mu_inf(A) > gamma``: no ``T`` produces it.
        """
        # T off-diagonal = A; on the diagonal t with t - |t| - r + gamma = a (r = off-row l1)
        # take t <= 0: 2 t = a + r - gamma, valid when a + r <= gamma (A in the set)
        n = A.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=A.device)
        r = A.masked_fill(eye, 0).abs().sum(dim=1)
        a = torch.diagonal(A)
        if bool((a + r > self.gamma + 1e-12 * (1 + abs(self.gamma) + r)).any()):
            raise WellPosednessError(f"right_inverse needs mu_inf(A) <= {self.gamma}; got "
                                     f"{float((a + r).max()):.6g}")
        t = (a + r - self.gamma) / 2
        return A.masked_fill(eye, 0) + torch.diag_embed(t)


def rescale(model: torch.nn.Module, method: str = "auto") -> torch.nn.Module:
    """Equivalent model with ``||A'||_inf < 1`` by diagonal scaling (paper 000 §2.5, paper 002 Thm 2.4).

    For a positively homogeneous CONE activation and ``w > 0``,
    ``W = diag(w)``, the state ``x' = W^-1 x`` solves
    ``x' = phi(W^-1 A W x' + W^-1 B u + W^-1 b)`` and ``y = C W x' + D u + d``: the
    prediction rule is unchanged. The Collatz-Wielandt formula (eq. 2.6) makes
    ``||W^-1 A W||_inf = max_i (|A| w)_i / w_i`` small:

    * ``method="pf"``: ``w`` the Perron-Frobenius eigenvector of ``|A|`` (needs
      ``w > 0``; gives exactly ``lambda_pf(|A|)``, the smallest possible);
    * ``method="neumann"``: ``w = (I - |A|)^-1 1``, so ``(|A| w)_i = w_i - 1`` and the
      norm is ``max_i 1 - 1/w_i < 1`` (works for reducible and nilpotent ``|A|``,
      e.g. the strictly triangular ``A`` of converted networks);
    * ``"auto"``: ``pf`` when the eigenvector is positive, else ``neumann``.

    (The paper writes ``S A S^-1`` with ``s`` "a PF eigenvector"; the scaling that
    attains the infimum is ``S = diag(v)^-1`` for the right eigenvector ``v``, as here.)
    Computed in float64 and cast to the model's dtype.

    Args:
        model: an :class:`~idlkit.ImplicitModel` with a positively homogeneous CONE activation.
        method: ``"auto"``, ``"pf"`` or ``"neumann"`` (see above).

    Returns:
        A new model with the same prediction and ``||A'||_inf < 1``.

    Raises:
        WellPosednessError: ``lambda_pf(|A|) >= 1`` (no diagonal scaling can help).
        ConfigurationError: the activation is not positively homogeneous and CONE.

    Examples:
        >>> A = torch.tensor([[0.0, 3.0], [0.0, 0.0]])
        >>> B, C, D = torch.ones(2, 1), torch.ones(1, 2), torch.zeros(1, 1)
        >>> model = idlkit.ImplicitModel.from_matrices(A, B, C, D, wellposedness=None)
        >>> small = rescale(model)
        >>> inf_norm(small.A) < 1
        True
        >>> u = torch.randn(3, 1)
        >>> small(u).shape, torch.allclose(small(u), model(u), atol=1e-5)
        (torch.Size([3, 1]), True)
    """
    check_choice("method", method, ("auto", "pf", "neumann"))
    act = model.activation
    base = getattr(act, "base", act)
    if not (isinstance(base, ComponentwiseActivation) and base.positively_homogeneous
            and base.is_cone and base.monotone):
        raise ConfigurationError(f"rescale needs a positively homogeneous CONE activation "
                                 f"(ReLU, LeakyReLU, identity), got {act!r}")
    M = as_dense_array(model.A)
    n = M.shape[0]
    absA = np.abs(M)
    lam = pf_eigenvalue(absA)
    if lam >= 1:
        raise WellPosednessError(f"rescale needs lambda_pf(|A|) < 1; it is {lam:.6g}, so no "
                                 f"diagonal scaling gives ||A'||_inf < 1")
    w = None
    if method in ("auto", "pf") and n:
        vals, vecs = np.linalg.eig(absA)
        v = np.real(vecs[:, np.argmax(np.abs(vals))])
        v = v * np.sign(v.sum()) if v.sum() != 0 else v
        if v.min() > 1e-9 * np.abs(v).max():
            w = v / v.max()
        elif method == "pf":
            raise WellPosednessError("the PF eigenvector of |A| is not positive (reducible |A|); "
                                     "use method='neumann'")
    if w is None:
        w = np.linalg.solve(np.eye(n) - absA, np.ones(n))
    dt, dev = model.A.dtype, model.A.device
    W = torch.as_tensor(w, dtype=torch.float64)
    f64 = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
    A2 = f64(model.A) * W[None, :] / W[:, None]
    B2 = f64(model.B) / W[:, None]
    C2 = f64(model.C) * W[None, :]
    b2 = None if model.b is None else f64(model.b) / W
    new_norm = inf_norm(A2)
    cast = lambda t: None if t is None else t.to(dev, dt)  # noqa: E731
    s = model.settings
    return type(model).from_matrices(
        cast(A2), cast(B2), cast(C2), cast(f64(model.D)), cast(b2),
        cast(None if model.d is None else f64(model.d)), activation=act,
        wellposedness="inf", kappa=min(max(new_norm * (1 + 1e-9), 1e-12), 1 - 1e-12),
        solver=s.method, tol=s.tol, max_iter=s.max_iter, anderson_m=s.anderson_m,
        on_nonconvergence=s.on_nonconvergence)


# ----------------------------------------------------------------------------- l_1, l_2 and LMI


def lipschitz_weights(activation: str | Activation, n: int, r: float) -> np.ndarray:
    """``(n,)`` per-state constants ``c`` with ``||phi_l(z) - phi_l(z')||_r <= c_l ||z_l - z'_l||_r``
    on every BLIP block ``l`` (each state carries its block's constant), float64.

    Block ``l`` is ``gamma_l``-Lipschitz in its own norm ``p_l``; the norm equivalences
    ``||v||_r <= m^{max(0, 1/r - 1/p)} ||v||_p`` on ``R^m`` give, in ``l_r``,
    ``c_l = gamma_l n_l^{|1/r - 1/p_l|}`` (``n_l`` the block size). For a componentwise map every
    block is a single state and ``c_i = gamma``, the scalar Lipschitz constant, whatever ``r``.
    (SoftMax blocks of size ``m``, 1-Lipschitz in ``l_1``, get ``sqrt(m)`` in ``l_2``: valid, loose.)

    Args:
        activation: name or :class:`~idlkit.activations.Activation`.
        n: number of states.
        r: the norm ``l_r`` (``1``, ``2`` or ``inf``) the constants are for.

    Returns:
        ``(n,)`` float64 array ``c``.

    Examples:
        >>> lipschitz_weights("relu", 3, 1.0).tolist()
        [1.0, 1.0, 1.0]
        >>> lipschitz_weights("sigmoid", 2, 2.0).tolist()
        [0.25, 0.25]
    """
    act = get_activation(activation)
    bs = act.blocks(n)
    c = [g * (s ** abs(1.0 / r - 1.0 / p) if s > 1 else 1.0)
         for s, p, g in zip(bs.sizes, bs.norms, bs.gammas, strict=True)]
    return np.repeat(np.asarray(c, dtype=np.float64), np.asarray(bs.sizes, dtype=np.int64))


def l1_condition(A: Tensor | np.ndarray, activation: str | Activation = "relu") -> float:
    """``||Gamma_1 |A| ||_1 = max_j sum_i c_i |A_ij|`` (paper 001 §3.1, eq. 2: ``||A||_{1,1} < 1``), float64.

    Below 1 certifies well-posedness for every activation (``c`` of :func:`lipschitz_weights`
    with ``r = 1``; ``gamma ||A||_1`` for a componentwise ``gamma``-Lipschitz map).

    Proof. With ``d = x - x'`` and ``z - z' = A d``, block by block
    ``||phi(z) - phi(z')||_1 = sum_l ||phi_l(z_l) - phi_l(z'_l)||_1 <= sum_i c_i |(A d)_i|
    <= sum_j (sum_i c_i |A_ij|) |d_j| <= ||Gamma_1 |A| ||_1 ||d||_1``: ``x -> phi(A x + b)`` is a
    strict contraction in ``l_1`` for every ``b``, so by Banach's theorem it has exactly one fixed
    point, the limit of the Picard iteration (paper 001 §3.1). Dense or sparse (kept sparse).
    For componentwise maps it never certifies more than ``pf`` (``lambda_pf <= ||.||_1``).

    Args:
        A: ``(n, n)`` matrix (dense or sparse tensor, or array).
        activation: name or :class:`~idlkit.activations.Activation`.

    Returns:
        ``||Gamma_1 |A| ||_1`` as a Python float; below 1 certifies well-posedness.

    Examples:
        >>> round(l1_condition(np.array([[0.2, 0.9], [0.3, -0.05]]), "relu"), 12)   # max column sum
        0.95
    """
    M = _finite_square(A)
    n = M.shape[0]
    if n == 0:
        return 0.0
    c = lipschitz_weights(activation, n, 1.0)
    absM = abs(M) if sp.issparse(M) else np.abs(M)
    return float(np.asarray(absM.T @ c).max())


def _sigma_max_dense(M: np.ndarray) -> float:
    """Largest singular value, float64, widened by the SVD's rounding (backward stable:
    ``|sigma - sigma_exact| <= O(n eps) ||M||_2``)."""
    if M.size == 0:
        return 0.0
    return float(np.linalg.norm(M, 2)) * (1 + _rounding_slack(M.shape[0]))


def sigma_max_condition(A: Tensor | np.ndarray, activation: str | Activation = "relu") -> float:
    """``sigma_max(Gamma_2 A)`` (paper 001 §3.1, eq. 2: ``||A||_{2,2} = sigma_max(A) < 1``), float64.

    Below 1 certifies well-posedness for every activation (``Gamma_2 = diag(c)``, ``c`` of
    :func:`lipschitz_weights` with ``r = 2``; ``gamma sigma_max(A)`` for a componentwise
    ``gamma``-Lipschitz map: ReLU, tanh, GELU, ... monotone or not).

    Proof. Per block ``||phi_l(z_l) - phi_l(z'_l)||_2 <= c_l ||(A d)_l||_2``, so
    ``||phi(A x + b) - phi(A x' + b)||_2 <= ||Gamma_2 A d||_2 <= sigma_max(Gamma_2 A) ||d||_2``: a
    strict contraction in ``l_2``; Banach's theorem gives one fixed point for every ``b``, reached
    by the Picard iteration.

    Exact singular values (widened by their rounding, so the value is an upper bound) for
    ``n <= 1024``; above, and for a sparse ``A`` above that size (never densified), the
    certified upper bound ``sqrt(||M||_1 ||M||_inf)`` (``M = Gamma_2 A``).

    Args:
        A: ``(n, n)`` matrix (dense or sparse tensor, or array).
        activation: name or :class:`~idlkit.activations.Activation`.

    Returns:
        An upper bound of ``sigma_max(Gamma_2 A)`` as a Python float; below 1 certifies
        well-posedness.

    Examples:
        >>> round(sigma_max_condition(0.5 * np.array([[1.0, 1.0], [-1.0, 1.0]]), "relu"), 6)
        0.707107
    """
    M = _finite_square(A)
    n = M.shape[0]
    if n == 0:
        return 0.0
    c = lipschitz_weights(activation, n, 2.0)
    if n <= _EXACT_EIG_MAX_N:
        D = M.toarray() if sp.issparse(M) else M
        return _sigma_max_dense(c[:, None] * D)
    G = sp.csr_array(sp.diags_array(c) @ M) if sp.issparse(M) else c[:, None] * M
    one = float(_row_abs_sums(G.T).max())
    inf = float(_row_abs_sums(G).max())
    return math.sqrt(one * inf) * (1 + _rounding_slack(n))


@dataclass(frozen=True)
class DiagonalLMI:
    """Result of :func:`diagonal_lmi` (float64).

    Attributes:
        scaling: ``(n,)`` the diagonal of ``S`` found (``max = 1``; constant on each BLIP block);
            ``None`` when the solver gave nothing.
        factor: ``||S^{1/2} M S^{-1/2}||_2`` for ``M = Gamma_2 A``, recomputed in float64 from
            ``scaling`` (exact singular values, widened by their rounding): the contraction
            factor of ``x -> phi(A x + b)`` in the norm ``||v||_S = sqrt(v^T S v)``; ``nan``
            without a scaling.
        holds: ``factor < 1``, i.e. ``S - M^T S M > 0`` checked again in float64.
        min_eig: the smallest eigenvalue of ``S - M^T S M`` (float64; positive when it holds).
        status: the solver's status (``"optimal"``, ...) or why nothing was solved.
    """

    scaling: np.ndarray | None
    factor: float
    holds: bool
    min_eig: float
    status: str


def diagonal_lmi(A: Tensor | np.ndarray, activation: str | Activation = "relu", *,
                 max_n: int = 40, solver: str | None = None) -> DiagonalLMI:
    """Find diagonal ``S > 0`` with ``S - (Gamma_2 A)^T S (Gamma_2 A) > 0`` (paper 001 §3.2), by cvxpy.

    Paper 001 §3.2 ("Invariance"): the largest-singular-value condition refined by diagonal
    scaling: ``A`` is well-posed if some diagonal ``S > 0`` has ``S - A^T S A > 0``, i.e.
    ``sigma_max(S^{1/2} A S^{-1/2}) < 1``. With the activation's ``l_2`` constants
    ``Gamma_2 = diag(c)`` (:func:`lipschitz_weights`), ``M = Gamma_2 A``, and ``S`` constant on
    each BLIP block, it holds for every activation:

    Proof. In the norm ``||v||_S^2 = sum_l s_l ||v_l||_2^2``,
    ``||phi(A x + b) - phi(A x' + b)||_S^2 <= sum_l s_l c_l^2 ||(A d)_l||_2^2 = d^T M^T S M d
    < d^T S d``: a strict contraction (factor ``||S^{1/2} M S^{-1/2}||_2 < 1``), so one fixed
    point for every ``b``, the limit of the Picard iteration. (For a positively homogeneous
    map this is the paper's argument: ``D A D^{-1}`` with ``D = S^{1/2}`` is well-posed together
    with ``A``; the norm argument needs no homogeneity.)

    What it generalises (for componentwise maps): ``S = I`` gives ``sigma_max(Gamma A) < 1``;
    and ``lambda_pf(gamma |A|) < 1`` implies feasibility: a Schur-stable nonnegative matrix
    ``N = gamma |A|`` has a diagonal ``S`` with ``N^T S N < S`` (positive systems), and
    ``x^T M^T S M x = ||S^{1/2} M x||^2 <= ||S^{1/2} N |x| ||^2 < |x|^T S |x| = x^T S x``. So
    the LMI certifies whatever ``inf``, ``l1``, ``pf`` and ``sigma_max`` certify, and more; it
    does not cover ``mu`` (``A = -2``: ``mu_inf < 0`` but ``|A| > 1``) nor the triangular
    criterion.

    Solved as ``max t : S - M^T S M >= t I, 0 <= s <= 1`` (Clarabel, then SCS; cvxpy is
    imported here), then re-checked in float64: ``holds`` is decided by the recomputed
    ``factor``, never by the solver's word. Dense ``A`` with ``n <= max_n`` only (the PSD
    variable is ``n x n``; an interior-point step factors a dense block of size ``n^2 / 2``,
    so the cost grows like ``n^6``: about 0.2 s at ``n = 20`` and 5-10 s at ``n = 50`` on one
    core); a larger or sparse ``A`` raises :class:`ConfigurationError`.

    Args:
        A: ``(n, n)`` dense matrix (tensor or array).
        activation: name or :class:`~idlkit.activations.Activation`.
        max_n: largest ``n`` accepted (an ``n x n`` SDP).
        solver: cvxpy solver name (``"CLARABEL"``, ``"SCS"``), or ``None`` for cvxpy's choice.

    Returns:
        :class:`DiagonalLMI` with the scaling ``S`` found (or the failure).

    Raises:
        ConfigurationError: a sparse ``A``, ``n > max_n``, or cvxpy missing.

    Examples:
        >>> r = diagonal_lmi(np.array([[0.5, 6.0], [-0.05, 0.5]]))  # ||A||_inf, pf, sigma_max > 1
        >>> r.holds, r.factor < 1
        (True, True)
    """
    act = get_activation(activation)
    if is_sparse(A):
        raise ConfigurationError("diagonal_lmi needs a dense A (its PSD variable is n x n); for a "
                                 "sparse A use the sparse certificates (check(A) reports them)")
    M = _square(as_dense_array(A))
    _finite_matrix(M)
    n = M.shape[0]
    max_n = check_int("max_n", max_n, 1)
    if n > max_n:
        raise ConfigurationError(f"diagonal_lmi: n = {n} exceeds max_n = {max_n} (an n x n SDP); "
                                 f"raise max_n or rely on the pf / sigma_max certificates")
    if solver is not None:
        check_choice("solver", solver, ("CLARABEL", "SCS"))
    if n == 0:
        return DiagonalLMI(np.ones(0), 0.0, True, math.inf, "empty")
    try:
        import cvxpy as cp
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ConfigurationError("diagonal_lmi needs cvxpy: pip install cvxpy clarabel") from exc
    bs = act.blocks(n)
    Mg = lipschitz_weights(act, n, 2.0)[:, None] * M
    P = _segment_matrix(bs.sizes)
    L = len(bs.sizes)
    w = cp.Variable(L)
    t = cp.Variable()
    # S - M^T S M = sum_l w_l (diag(P_l) - sum_{i in l} m_i m_i^T), m_i the rows of M: one
    # (n^2, L) coefficient matrix (cvxpy's own canonicalisation of M^T diag(s) M is far slower)
    K = np.empty((n * n, L))
    for lo, size, l in zip(np.cumsum((0,) + bs.sizes[:-1]), bs.sizes, range(L), strict=True):
        rows = Mg[lo:lo + size]
        blk = -(rows.T @ rows)
        blk[np.arange(lo, lo + size), np.arange(lo, lo + size)] += 1.0
        K[:, l] = blk.reshape(-1)
    Z = cp.Variable((n, n), PSD=True)  # (Clarabel solves this form ~2x faster than G >> t I)
    cons = [Z == cp.reshape(K @ w, (n, n), order="C") - t * np.eye(n), w >= 0, w <= 1]
    prob = cp.Problem(cp.Maximize(t), cons)
    status = "not solved"
    for name in [solver] if solver is not None else ["CLARABEL", "SCS"]:
        try:
            prob.solve(solver=name)
        except cp.error.SolverError as exc:
            status = f"{name}: {exc}"
            continue
        status = str(prob.status)
        if w.value is not None and prob.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            break
    if w.value is None:
        return DiagonalLMI(None, math.nan, False, math.nan, status)
    wv = np.asarray(w.value, dtype=np.float64).reshape(-1)
    wv = np.maximum(wv, 0.0)
    if wv.max() <= 0:
        return DiagonalLMI(None, math.nan, False, math.nan, status)
    wv = wv / wv.max()
    sv = P @ wv
    if sv.min() <= 0:  # a zero weight: no norm, nothing certified
        return DiagonalLMI(_frozen(sv), math.inf, False, -math.inf, status)
    r = np.sqrt(sv)
    factor = _sigma_max_dense(r[:, None] * Mg / r[None, :])
    min_eig = float(np.linalg.eigvalsh(np.diag(sv) - Mg.T @ (sv[:, None] * Mg))[0])
    return DiagonalLMI(_frozen(sv), factor, factor < 1, min_eig, status)


def _frozen(v: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(v, dtype=np.float64)
    v.flags.writeable = False
    return v


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class WellPosedness:
    """Well-posedness report of a matrix for an activation (all values float64).

    Attributes:
        inf_norm: ``||A||_inf``.
        gamma_inf: l_inf Lipschitz constant of the activation; ``inf`` holds when
            ``gamma_inf * inf_norm < 1``.
        pf: ``lambda_pf(gamma |A|)`` (CONE/componentwise, Thm 2.2) or
            ``lambda_pf(Gamma N(A))`` (BLIP, Thm 2.7).
        mu_inf: ``mu_inf(A)``; ``gamma * mu_inf(A) < 1`` certifies monotone
            componentwise maps (paper 004); ``nan`` when not applicable.
        triangular: the block triangular criterion (Thm 2.8/2.9 with Remark 2.6,
            :func:`triangular_criterion`): ``A`` permuted by whole activation blocks is block
            upper triangular with more than one diagonal block (or has no coupling at all), and
            every diagonal block is well-posed. Strictly triangular ``A`` (converted networks:
            nilpotent, ``pf = 0``) is the exact case; a trained ``A`` with decoupled states can
            pass too, its largest diagonal block certified by the other conditions.
        holds: which sufficient conditions hold, by name.
        margins: ``1 - value`` for each condition (positive when it holds).
        declared: the condition the model declares, if any.
        kappa: the bound of ``declared`` (``None``: none declared).
        dtype: always ``"float64"``.
        mu_1: ``mu_1(A)`` (max over columns), reported next to ``mu_inf``; no condition of its own.
        mu_2: ``mu_2(A) = lambda_max((A + A^T) / 2)``; no condition of its own (``nan`` for a
            sparse ``A`` above ``n = 1024``).
        l1: ``||Gamma_1 |A| ||_1`` (:func:`l1_condition`; ``gamma ||A||_1`` for componentwise
            maps); ``holds["l1"]`` when below 1 (paper 001 §3.1).
        sigma_max: ``sigma_max(Gamma_2 A)`` (:func:`sigma_max_condition`; an upper bound above
            ``n = 1024``); ``holds["sigma_max"]`` when below 1 (paper 001 §3.1).
        lmi: the contraction factor ``||S^{1/2} Gamma_2 A S^{-1/2}||_2`` of the diagonal
            scaling found by :func:`diagonal_lmi` (paper 001 §3.2), ``nan`` when not solved;
            ``holds["lmi"]`` when below 1 (entries present only when it was asked for).
        lmi_scaling: ``(n,)`` the diagonal of that ``S`` (the evidence), or ``None``.
        skipped: certificates not evaluated, with the reason (``{"lmi": "sparse A ..."}``).

    Examples:
        >>> wp = check(0.5 * torch.eye(3), "relu")
        >>> wp.wellposed, wp.inf_norm, wp.dtype
        (True, 0.5, 'float64')
    """

    inf_norm: float
    gamma_inf: float
    pf: float
    mu_inf: float
    triangular: bool
    holds: dict[str, bool] = field(default_factory=dict)
    margins: dict[str, float] = field(default_factory=dict)
    declared: str | None = None
    kappa: float | None = None
    dtype: str = "float64"
    mu_1: float = math.nan
    mu_2: float = math.nan
    l1: float = math.nan
    sigma_max: float = math.nan
    lmi: float = math.nan
    lmi_scaling: np.ndarray | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def wellposed(self) -> bool:
        """At least one sufficient condition holds."""
        return any(self.holds.values())

    @property
    def margin(self) -> float:
        """Margin of the declared condition (``kappa - value``), else the best margin."""
        if self.declared is not None and self.declared in self.margins:
            return self.margins[self.declared]
        return max(self.margins.values()) if self.margins else -math.inf

    def __str__(self) -> str:
        lines = [
            f"well-posedness certificate (float64): {'HOLDS' if self.wellposed else 'NOT CERTIFIED'}",
            f"  ||A||_inf         = {self.inf_norm:.6g}   (x gamma_inf={self.gamma_inf:g})",
            f"  lambda_pf         = {self.pf:.6g}",
            f"  mu_inf(A)         = {self.mu_inf:.6g}   mu_1 = {self.mu_1:.6g}   mu_2 = {self.mu_2:.6g}",
            f"  ||Gamma A||_1     = {self.l1:.6g}",
            f"  sigma_max(Gamma A)= {self.sigma_max:.6g}",
            f"  triangular        = {self.triangular}",
        ]
        if not math.isnan(self.lmi):
            lines.append(f"  LMI factor        = {self.lmi:.6g}   (diagonal scaling S found)")
        for k, ok in self.holds.items():
            lines.append(f"  [{'x' if ok else ' '}] {k:<12s} margin {self.margins[k]:+.4g}")
        for k, why in self.skipped.items():
            lines.append(f"  [-] {k:<12s} skipped: {why}")
        if self.declared is not None:
            lines.append(f"  declared: {self.declared}"
                         + (f" with kappa={self.kappa:g}" if self.kappa is not None else ""))
        return "\n".join(lines)


@dataclass(frozen=True)
class TriangularReport:
    """The block triangular criterion (Thm 2.8/2.9 with Remark 2.6).

    Attributes:
        triangular: ``A`` is block triangular up to a permutation of whole activation
            blocks, with at least two diagonal blocks (or ``n <= 1``, or ``A = 0``).
        wellposed: every diagonal block is well-posed (then so is ``A``).
        exact: the verdict is exact (every diagonal block is a scalar, decided by the
            rule of :func:`_scalar_wellposed`, or zero); otherwise larger blocks were
            certified by the sufficient conditions (``inf``, ``pf``, ``mu``).
        components: state indices of each diagonal block (the strongly connected
            components of the dependency graph of the activation's blocks).
        failing: the components found not well-posed / not certified.

    Examples:
        >>> rep = triangular_criterion(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        >>> rep.triangular, rep.wellposed, rep.components
        (True, True, ((0,), (1,)))
    """

    triangular: bool
    wellposed: bool
    exact: bool
    components: tuple[tuple[int, ...], ...]
    failing: tuple[tuple[int, ...], ...]


def _scalar_wellposed(a: float, act: Activation) -> bool | None:
    """Exact well-posedness of ``x = phi(a x + c)`` for every ``c`` (1 x 1 diagonal block).

    ``g(x) = x - phi(a x + c)`` has ``g' = 1 - a phi'``. For ``a <= 0`` and monotone
    ``phi`` it is strictly increasing and unbounded: unique root. For ``a > 0``:
    piecewise-linear maps (ReLU, LeakyReLU with slope in [0, 1]) need ``a slope_max < 1``
    (Remark 2.5: at ``a = 1`` ReLU has none or infinitely many solutions); the identity
    needs ``a != 1``; tanh and sigmoid need ``a sup phi' <= 1`` (``g' >= 0``, vanishing
    at one point only; beyond it ``g`` is non-monotone and three roots appear for
    some ``c``). In general: ``|a| gamma < 1`` (a contraction) or, for a monotone map,
    ``a slope_max < 1`` gives one root; ``a slope_max > 1`` makes ``g`` non-monotone on an
    interval, so some ``c`` gives two roots. ``None`` when no exact rule is known.
    """
    base = getattr(act, "base", act)
    if not isinstance(base, ComponentwiseActivation):
        return None
    if a == 0.0:
        return True
    if base.name == "identity":
        return a != 1.0
    if abs(a) * base.lipschitz < 1.0:  # a contraction (any map)
        return True
    if not base.monotone:
        return None
    if a < 0:
        return True
    if a * base.slope_max < 1.0:
        return True
    if a * base.slope_max > 1.0:
        # phi' > 1/a on an open interval (slope_max is a sup of a piecewise-continuous phi'),
        # so h(w) = w / a - phi(w) is continuous and not monotone: some level c / a of h has two
        # preimages, i.e. two solutions
        return False
    if base.positively_homogeneous:
        return False  # a slope_max = 1 on a half-line: none or infinitely many (Remark 2.5)
    if base.name in ("tanh", "sigmoid"):
        return True  # phi' = 1/a at one point only, and h is onto
    return None


def triangular_criterion(A: Tensor | np.ndarray, activation: str | Activation = "relu"
                         ) -> TriangularReport:
    """Well-posedness of ``A`` from the diagonal blocks of its block triangular form.

    The activation's BLIP blocks (single entries for componentwise maps) are the nodes
    of a graph with an edge ``I -> J`` when ``A_IJ != 0``. Ordering its strongly
    connected components topologically and permuting whole blocks accordingly (which
    preserves well-posedness, Remark 2.6) makes ``A`` block upper triangular with one
    diagonal block per component; by Thm 2.8/2.9 applied recursively, ``A`` is
    well-posed iff every diagonal block is, for the activation restricted to it. Scalar
    blocks are decided exactly (for ReLU and triangular ``A``: iff ``diag(A) < 1``,
    Remark 2.5), larger ones by the sufficient certificates (then ``exact`` is False).

    Args:
        A: ``(n, n)`` matrix (dense or sparse tensor, or array).
        activation: name or :class:`~idlkit.activations.Activation`.

    Returns:
        :class:`TriangularReport` (``holds``, ``exact``, the diagonal blocks).

    Examples:
        >>> A = torch.tensor([[0.5, 2.0], [0.0, 0.0]])
        >>> rep = triangular_criterion(A, "relu")
        >>> rep.triangular, rep.wellposed, rep.exact
        (True, True, True)
    """
    from scipy.sparse.csgraph import connected_components

    act = get_activation(activation)
    if is_sparse(A):
        return _sparse_triangular_criterion(as_matrix(A), act)[0]
    M = _square(as_dense_array(A))
    n = M.shape[0]
    if n == 0:
        return TriangularReport(True, True, True, (), ())
    blocks = block_activations(act, n)
    sizes = [size for size, _ in blocks]
    offs = np.concatenate(([0], np.cumsum(sizes)))
    G = block_pattern_graph(M, tuple(sizes))
    ncomp, labels = connected_components(G, directed=True, connection="strong")
    comps, failing, exact = [], [], True
    for lab in sorted(range(ncomp), key=lambda c: int(np.argmax(labels == c))):
        members = np.nonzero(labels == lab)[0]
        idx = np.concatenate([np.arange(offs[i], offs[i + 1]) for i in members])
        comps.append(tuple(int(i) for i in idx))
        blk = M[np.ix_(idx, idx)]
        if not blk.any():
            continue  # x = phi(c): always unique
        if len(idx) == 1:
            verdict = _scalar_wellposed(float(blk[0, 0]), blocks[members[0]][1])
            if verdict is not None:
                if not verdict:
                    failing.append(comps[-1])
                continue
        exact = False
        if ncomp == 1:
            break  # one irreducible block, not triangular: its certificates are check's own
        sub = stack_activations([blocks[i] for i in members])
        if not any(_norm_certificates(blk, sub)[4].values()):
            failing.append(comps[-1])
    triangular = ncomp > 1 or n == 1 or not M.any()
    if not triangular:  # one irreducible block: nothing beyond the plain certificates
        return TriangularReport(False, False, False, tuple(comps), tuple(comps))
    return TriangularReport(True, not failing, exact, tuple(comps), tuple(failing))


def _sparse_triangular_criterion(M: sp.csr_array, act: Activation) -> tuple[TriangularReport, bool]:
    """:func:`triangular_criterion` for a sparse ``M`` (float64 CSR), vectorised over the
    components; only components with a self-loop or several blocks are examined one by one
    (dense when small, by the sparse certificates otherwise). Also returns whether every
    component is a single block without self-loop, i.e. ``Gamma N(A)`` is nilpotent and
    ``lambda_pf = 0`` (strictly block triangular up to a permutation, Thm 2.8/2.9)."""
    from scipy.sparse.csgraph import connected_components

    n = M.shape[0]
    if M.shape[0] != M.shape[1]:
        raise ShapeError(f"A must be a square (n, n) matrix, got shape {M.shape}")
    if n == 0:
        return TriangularReport(True, True, True, (), ()), True
    blocks = block_activations(act, n)
    sizes = tuple(size for size, _ in blocks)
    L = len(sizes)
    offs = np.concatenate(([0], np.cumsum(sizes)))
    G = block_pattern_graph(M, sizes)
    ncomp, labels = connected_components(G, directed=True, connection="strong")
    first = np.full(ncomp, L, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(L))
    order = np.argsort(first, kind="stable")
    rank = np.empty(ncomp, dtype=np.int64)
    rank[order] = np.arange(ncomp)
    blk_sorted = np.argsort(rank[labels], kind="stable")  # blocks grouped by component, in order
    counts = np.bincount(rank[labels], minlength=ncomp)
    state_of_blk = [np.arange(offs[b], offs[b + 1]) for b in blk_sorted] if L != n else None
    states = np.concatenate(state_of_blk) if state_of_blk is not None else blk_sorted
    state_counts = np.add.reduceat(np.asarray(sizes)[blk_sorted], np.cumsum(counts) - counts)
    st, ends = states.tolist(), np.cumsum(state_counts).tolist()
    comps = tuple(tuple(st[a:b]) for a, b in zip([0] + ends[:-1], ends, strict=True))
    cstart = np.cumsum(counts) - counts
    self_loop = G.diagonal() != 0
    interesting = np.flatnonzero((counts > 1) | self_loop[blk_sorted[cstart]])
    diag = M.diagonal()
    failing, exact = [], True
    for c in interesting:
        members = blk_sorted[cstart[c]:cstart[c] + counts[c]]
        idx = np.asarray(comps[c])
        if len(idx) == 1:
            verdict = _scalar_wellposed(float(diag[idx[0]]), blocks[int(members[0])][1])
            if verdict is not None:
                if not verdict:
                    failing.append(comps[c])
                continue
        exact = False
        sub_act = stack_activations([blocks[int(i)] for i in members])
        sub = M[idx][:, idx]
        if len(idx) <= _EXACT_EIG_MAX_N:
            ok = any(_norm_certificates(sub.toarray(), sub_act)[4].values())
        else:
            bs = sub_act.blocks(len(idx))
            ok = (float(sub_act.lipschitz_inf) * inf_norm(sub) < 1
                  or pf_eigenvalue(blip_norm_matrix(sub, bs.sizes, bs.norms, bs.gammas)) < 1)
        if not ok:
            failing.append(comps[c])
    nilpotent = interesting.size == 0
    triangular = ncomp > 1 or n == 1 or M.count_nonzero() == 0
    if not triangular:
        return TriangularReport(False, False, False, comps, comps), False
    return TriangularReport(True, not failing, exact, comps, tuple(failing)), nilpotent


def _rounding_slack(n: int) -> float:
    """Relative rounding allowance of a float64 sum of ``n`` terms (and of a float32 cast)."""
    return 16 * max(n, 1) * float(np.finfo(np.float64).eps)


def _extra_certificates(M: np.ndarray | sp.csr_array, act: Activation, holds: dict[str, bool],
                        margins: dict[str, float]) -> dict[str, float]:
    """``l1`` and ``sigma_max`` (paper 001 §3.1) into ``holds``/``margins``; returns their values
    with ``mu_1`` and ``mu_2`` (``nan`` for a sparse ``M`` above ``n = 1024``)."""
    n = M.shape[0]
    l1 = l1_condition(M, act)
    sig = sigma_max_condition(M, act)
    holds["l1"], margins["l1"] = l1 < 1, 1 - l1
    holds["sigma_max"], margins["sigma_max"] = sig < 1, 1 - sig
    big_sparse = sp.issparse(M) and n > _EXACT_EIG_MAX_N
    return {"l1": l1, "sigma_max": sig, "mu_1": mu_1(M) if n else -math.inf,
            "mu_2": math.nan if big_sparse else (mu_2(M) if n else -math.inf)}


def _norm_certificates(M: np.ndarray, act: Activation
                       ) -> tuple[float, float, float, float, dict[str, bool], dict[str, float],
                                  dict[str, float]]:
    """The ``inf``, ``pf``, ``mu``, ``l1`` and ``sigma_max`` certificates of a dense float64
    matrix (no triangular, no LMI), and the values of :func:`_extra_certificates`."""
    bs = act.blocks(M.shape[0])
    gamma_inf = float(act.lipschitz_inf)
    nrm = inf_norm(M)
    pf = pf_eigenvalue(blip_norm_matrix(M, bs.sizes, bs.norms, bs.gammas))
    holds = {"inf": gamma_inf * nrm < 1, "pf": pf < 1}
    margins = {"inf": 1 - gamma_inf * nrm, "pf": 1 - pf}
    base = getattr(act, "base", act)
    mu = math.nan
    if isinstance(base, ComponentwiseActivation) and base.monotone:
        mu = mu_inf(M)
        holds["mu"] = base.lipschitz * mu < 1
        margins["mu"] = 1 - base.lipschitz * mu
    extra = _extra_certificates(M, act, holds, margins)
    return nrm, gamma_inf, pf, mu, holds, margins, extra


def _sparse_certificates(M: sp.csr_array, act: Activation) -> tuple:
    """:func:`_norm_certificates` plus the triangular report for a sparse ``M``, never densified:
    ``lambda_pf = 0`` exactly when the block dependency graph is acyclic without self-loops
    (Thm 2.8/2.9), else the sparse power-iteration bound of :func:`pf_eigenvalue`."""
    if M.shape[0] != M.shape[1]:
        raise ShapeError(f"A must be a square (n, n) matrix, got shape {M.shape}")
    tri_rep, nilpotent = _sparse_triangular_criterion(M, act)
    bs = act.blocks(M.shape[0])
    gamma_inf = float(act.lipschitz_inf)
    nrm = inf_norm(M)
    pf = 0.0 if nilpotent else pf_eigenvalue(blip_norm_matrix(M, bs.sizes, bs.norms, bs.gammas))
    holds = {"inf": gamma_inf * nrm < 1, "pf": pf < 1}
    margins = {"inf": 1 - gamma_inf * nrm, "pf": 1 - pf}
    base = getattr(act, "base", act)
    mu = math.nan
    if isinstance(base, ComponentwiseActivation) and base.monotone:
        mu = mu_inf(M) if M.shape[0] else -math.inf
        holds["mu"] = base.lipschitz * mu < 1
        margins["mu"] = 1 - base.lipschitz * mu
    extra = _extra_certificates(M, act, holds, margins)
    return nrm, gamma_inf, pf, mu, holds, margins, tri_rep, extra


def check(A: Tensor | np.ndarray, activation: str | Activation = "relu",
          declared: str | None = None, kappa: float | None = None, *, lmi: bool = False,
          lmi_max_n: int = 40) -> WellPosedness:
    """Evaluate every certificate for ``A`` and ``activation``; never raises on failure.

    The conditions (each sufficient; ``holds`` names those that hold): ``inf``, ``pf``, ``mu``,
    ``triangular`` (module docstring), ``l1`` and ``sigma_max`` (paper 001 §3.1,
    :func:`l1_condition`, :func:`sigma_max_condition`) and, when ``lmi=True``, ``lmi`` (paper 001
    §3.2, :func:`diagonal_lmi`). The LMI is off by default: ``check`` runs inside projections,
    composition and the triangular criterion, where an SDP per call (and importing cvxpy) would
    cost far more than the rest together. With ``lmi=True`` it is solved for a dense ``A`` with
    ``n <= lmi_max_n``; otherwise (sparse, too large, cvxpy missing, solver failure) it is
    recorded in ``skipped`` with the reason, and ``holds`` has no ``lmi`` entry.

    Args:
        lmi: also try the diagonal LMI of paper 001 §3.2 (an SDP, needs cvxpy).
        lmi_max_n: largest ``n`` for which the LMI is tried.
        A: the ``(n, n)`` model matrix (dense or sparse tensor, or array).
        activation: name or :class:`~idlkit.activations.Activation`.
        declared: the model's declared condition (``"inf"``, ``"pf"``, ``"mu"``,
            ``"triangular"``), reported with its margin against ``kappa``.
        kappa: the declared bound (margins are ``kappa - value`` for it). The declared
            condition holds when ``value <= kappa (1 + 16 n eps_64)``: the float64
            evaluation's own rounding, so that a matrix just projected onto the set
            (which lands on its boundary) is reported inside it.

    Examples:
        >>> rep = check(np.array([[0.5, 6.0], [-0.05, 0.5]]), "relu", lmi=True)
        >>> rep.holds["inf"], rep.holds["pf"], rep.holds["sigma_max"], rep.holds["lmi"]
        (False, False, False, True)
    """
    act = get_activation(activation)
    lmi_max_n = check_int("lmi_max_n", lmi_max_n, 1)
    if not isinstance(lmi, bool):
        raise ConfigurationError(f"lmi must be True or False, got {lmi!r}")
    _finite_matrix(A)
    skipped: dict[str, str] = {}
    lmi_rep = None
    if is_sparse(A):
        M = as_matrix(A)
        n = M.shape[0]
        nrm, gamma_inf, pf, mu, holds, margins, tri_rep, extra = _sparse_certificates(M, act)
        if math.isnan(extra["mu_2"]):
            skipped["mu_2"] = f"sparse A with n = {n} > {_EXACT_EIG_MAX_N}: no exact eigenvalues"
        if lmi:
            skipped["lmi"] = "sparse A: the LMI needs a dense n x n PSD variable"
    else:
        M = _square(as_dense_array(A))
        n = M.shape[0]
        nrm, gamma_inf, pf, mu, holds, margins, extra = _norm_certificates(M, act)
        tri_rep = triangular_criterion(M, act) if n else TriangularReport(True, True, True, (), ())
        if lmi and n > lmi_max_n:
            skipped["lmi"] = f"n = {n} > lmi_max_n = {lmi_max_n} (an n x n SDP); raise lmi_max_n"
        elif lmi:
            try:
                lmi_rep = diagonal_lmi(M, act, max_n=lmi_max_n)
            except ConfigurationError as exc:  # cvxpy missing
                skipped["lmi"] = str(exc)
            else:
                if lmi_rep.scaling is None:
                    skipped["lmi"] = f"the SDP solver returned no scaling ({lmi_rep.status})"
                    lmi_rep = None
                else:
                    holds["lmi"], margins["lmi"] = lmi_rep.holds, 1 - lmi_rep.factor
    base = getattr(act, "base", act)
    tri = tri_rep.triangular and tri_rep.wellposed
    holds["triangular"] = tri
    margins["triangular"] = 1.0 if tri else -1.0
    if declared is not None and kappa is not None and declared in margins:
        gamma = getattr(base, "lipschitz", math.nan)
        value = {"inf": gamma_inf * nrm, "pf": pf, "mu": gamma * mu}.get(declared)
        if value is not None and not math.isnan(value):
            margins[declared] = float(kappa) - value
            # the float64 value carries rounding of order n eps; a projection onto the set
            # lands on its boundary, so allow that much
            holds[declared] = value <= float(kappa) * (1 + _rounding_slack(n))
    return WellPosedness(inf_norm=nrm, gamma_inf=gamma_inf, pf=pf, mu_inf=mu, triangular=tri,
                         holds=holds, margins=margins, declared=declared, kappa=kappa,
                         mu_1=extra["mu_1"], mu_2=extra["mu_2"], l1=extra["l1"],
                         sigma_max=extra["sigma_max"],
                         lmi=math.nan if lmi_rep is None else lmi_rep.factor,
                         lmi_scaling=None if lmi_rep is None else lmi_rep.scaling, skipped=skipped)


def require(A: Tensor | np.ndarray, activation: str | Activation = "relu",
            condition: str | None = None, kappa: float | None = None) -> WellPosedness:
    """Like :func:`check`, but raise :class:`WellPosednessError` with the numbers when
    ``condition`` (or, if None, every certificate) fails.

    Args:
        A: the ``(n, n)`` model matrix (dense or sparse tensor, or array).
        activation: name or :class:`~idlkit.activations.Activation`.
        condition: the certificate that must hold (``"inf"``, ``"pf"``, ``"mu"``, ``"triangular"``,
            ...), or ``None`` for any of them.
        kappa: bound of the condition, or ``None`` for 1.

    Returns:
        The :class:`WellPosedness` report (as :func:`check`).

    Raises:
        WellPosednessError: the condition fails; the message has the numbers.

    Examples:
        >>> require(0.5 * torch.eye(3), "relu").holds["inf"]
        True
        >>> require(2.0 * torch.eye(3), "tanh")
        Traceback (most recent call last):
            ...
        idlkit.errors.WellPosednessError: A is not certified well-posed (any condition): ||A||_inf=2, ...
    """
    rep = check(A, activation, declared=condition, kappa=kappa)
    ok = rep.holds.get(condition, False) if condition is not None else rep.wellposed
    if not ok:
        raise WellPosednessError(
            f"A is not certified well-posed ({condition or 'any condition'}"
            f"{'' if kappa is None else f' <= {kappa:g}'}): ||A||_inf={rep.inf_norm:.6g}, "
            f"lambda_pf={rep.pf:.6g}, mu_inf={rep.mu_inf:.6g}, triangular={rep.triangular}. "
            f"Fix: project A (model.project_() or idlkit.wellposed.project_inf_ball) or rescale it."
        )
    return rep
