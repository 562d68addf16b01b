"""Magnitude pruning, the baseline every structured compression is measured against, with a
certified bound on what it changes (paper 000 §5.4, Thm 5.1 extended to every matrix).

:func:`magnitude_prune` removes the smallest-magnitude parameters: unstructured, the entries of
the chosen matrices (a global threshold over them, so that a fraction ``sparsity`` of their
nonzeros goes); structured, whole states, those whose outgoing weights ``||(A; C) e_i||_1`` are
smallest: their columns of ``A`` and ``C`` are zeroed, which makes them unused, and
:func:`~idlkit.compress.prune_states` then removes them (and anything that only fed them) exactly.
Zeroing entries never increases ``|A|`` entrywise, so every well-posedness certificate of the
model (``||A||_inf``, ``lambda_pf(|A|)``, triangularity) still holds; the model is re-projected
all the same (``project_``), and optionally fine-tuned with the pruned entries held at zero.

Certified error (:func:`compression_bound`). For the same input ``u``, the equilibria ``x0`` of
the original ``(A0, B0, b0)`` and ``x`` of the compressed ``(A, B, b)`` (same state size, a
componentwise ``gamma``-Lipschitz map, ``Gamma = diag(gamma)``) satisfy

    |x - x0| <= Gamma |A (x - x0) + (A - A0) x0 + (B - B0) u + (b - b0)|
             <= Gamma |A| |x - x0| + Gamma r,     r = |A - A0| |x0| + |B - B0| |u| + |b - b0|,

so, when ``lambda_pf(Gamma |A|) < 1`` (``(I - Gamma |A|)^-1 >= 0``),

    |x - x0| <= delta = (I - Gamma |A|)^-1 Gamma r,
    |y - y0| <= |C| delta + |C - C0| |x0| + |D - D0| |u| + |d - d0|.

This is Thm 5.1's argument (``model_error_bound``) with the compressed ``|A|`` in place of
``|A0| + E`` (tighter, and certified by the compressed model's own PF condition) and the
changes of ``B, b, C, D, d`` added. A structured prune is bounded through the same-size model
with the pruned columns zeroed, whose outputs equal the smaller model's exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .._matrix import as_dense_array, as_matrix, from_scipy_csr, is_sparse
from .._validation import check_int, check_probability, check_scalar
from ..activations import ComponentwiseActivation
from ..errors import ConfigurationError, ShapeError, WellPosednessError
from ..model import ImplicitModel
from ..wellposed import pf_eigenvalue
from .prune import PruneReport, _check_model, _nnz, _rebuild, prune_states

__all__ = ["MagnitudePruneReport", "CompressionBound", "magnitude_prune", "compression_bound"]

_MATRICES = ("A", "B", "C", "D")


@dataclass(frozen=True)
class CompressionBound:
    """Certified bounds on how far a compressed model moves from the original (module docstring).

    Attributes:
        state: ``(batch, n)`` bound on ``|x - x0|`` (the original's state coordinates).
        output: ``(batch, q)`` bound on ``|y - y0|``.
        pf: ``lambda_pf(Gamma |A|)`` of the compressed matrix (< 1: the certificate).
    """

    state: Tensor
    output: Tensor
    pf: float


@dataclass(frozen=True)
class MagnitudePruneReport:
    """What :func:`magnitude_prune` removed.

    Attributes:
        sparsity: the fraction asked for.
        achieved: the fraction removed (of the chosen matrices' nonzeros, or of the states when
            ``structured``).
        structured: states (True) or entries (False).
        matrices: the matrices pruned (unstructured).
        threshold: the largest magnitude removed (an entry's, or a state's score).
        nnz_before: nonzeros of ``A, B, C, D`` together, before pruning.
        nnz_after: nonzeros of ``A, B, C, D`` together, after pruning.
        n_before: state size before pruning.
        n_after: state size after pruning.
        removed_states: original indices of the states removed (structured, with the cascade).
        fine_tune_epochs: epochs of masked fine-tuning (0: none).
        prune: the :class:`PruneReport` of the exact state removal (structured), else None.
        bound: :class:`CompressionBound` on the inputs ``u`` given, else None.
    """

    sparsity: float
    achieved: float
    structured: bool
    matrices: tuple[str, ...]
    threshold: float
    nnz_before: int
    nnz_after: int
    n_before: int
    n_after: int
    removed_states: tuple[int, ...]
    fine_tune_epochs: int
    prune: PruneReport | None
    bound: CompressionBound | None


def _gammas(model: ImplicitModel) -> np.ndarray:
    act = model.activation
    if not isinstance(act, ComponentwiseActivation):
        raise ConfigurationError(
            f"the compression bound (Thm 5.1) needs a componentwise activation, got {act!r}; for "
            f"SoftMax / BlockMax / Product blocks bound each model with idlkit.robust.state_box_bound")
    return np.full(model.hidden, float(act.lipschitz))


def _abs_diff(M: Tensor, M0: Tensor) -> np.ndarray | sp.csr_array:
    a, a0 = as_matrix(M.detach()), as_matrix(M0.detach())
    if a.shape != a0.shape:
        raise ShapeError(f"the compressed matrix has shape {a.shape}, the original {a0.shape}: compare "
                         f"models of one state size (for removed states, the model with their columns "
                         f"zeroed)")
    if sp.issparse(a) and sp.issparse(a0):
        return abs(sp.csr_array(a) - sp.csr_array(a0))
    return np.abs(as_dense_array(a) - as_dense_array(a0))


def _vec(v: Tensor | None, size: int) -> np.ndarray:
    return np.zeros(size) if v is None else v.detach().cpu().double().numpy()


def compression_bound(original: ImplicitModel, compressed: ImplicitModel, u: Tensor) -> CompressionBound:
    """Certified ``|x - x0|`` and ``|y - y0|`` between two models of one state size on inputs
    ``u`` ``(batch, p)`` (module docstring), float64, rounded outward.

    Args:
        original: the reference :class:`~idlkit.ImplicitModel` (states ``x0``, outputs ``y0``).
        compressed: a model with the same ``n``, ``p``, ``q``.
        u: ``(batch, p)`` inputs.

    Returns:
        :class:`CompressionBound` with ``(batch, n)`` and ``(batch, q)`` float64 radii.

    Raises:
        ShapeError: models of different sizes or ``u`` of the wrong shape.
        WellPosednessError: the bound's contraction hypothesis fails.

    Examples:
        >>> _ = torch.manual_seed(0); m = ImplicitModel(3, 5, 2, dtype=torch.float64)
        >>> small, rep = magnitude_prune(m, 0.5, u=torch.rand(4, 3, dtype=torch.float64))
        >>> bool((rep.bound.output >= 0).all())
        True
    """
    _check_model(original, "compression_bound")
    _check_model(compressed, "compression_bound")
    if (compressed.hidden, compressed.in_features, compressed.out_features) != (
            original.hidden, original.in_features, original.out_features):
        raise ShapeError(f"compression_bound compares models of one size; got (n, p, q) = "
                         f"{(original.hidden, original.in_features, original.out_features)} and "
                         f"{(compressed.hidden, compressed.in_features, compressed.out_features)}")
    gam = _gammas(compressed)
    U = u.detach().cpu().double()
    U = U.reshape(U.shape[0], -1) if U.dim() > 1 else U[None]
    X0 = _equilibrium64(original, U)
    absA = abs(as_matrix(compressed.A.detach()))
    GA = sp.csr_array(sp.diags_array(gam) @ sp.csr_array(absA)) if sp.issparse(absA) else gam[:, None] * absA
    pf = pf_eigenvalue(GA) if compressed.hidden else 0.0
    if not pf < 1:
        raise WellPosednessError(f"the compression bound needs lambda_pf(gamma |A|) < 1 for the compressed "
                                 f"model; it is {pf:.6g}: project it (model.project_()) first")
    eA, eB, eC, eD = (_abs_diff(getattr(compressed, k), getattr(original, k)) for k in _MATRICES)
    n, q = compressed.hidden, compressed.out_features
    Ua = np.abs(U.numpy())
    r = (eA @ np.abs(X0).T).T + (eB @ Ua.T).T + np.abs(_vec(compressed.b, n) - _vec(original.b, n))
    K = sp.identity(n, format="csc") - sp.csc_array(GA) if sp.issparse(GA) else np.eye(n) - GA
    rhs = (gam[:, None] * r.T)
    if n:
        delta = sp.linalg.spsolve(K, rhs) if sp.issparse(K) else np.linalg.solve(K, rhs)
        delta = np.maximum(np.asarray(delta).reshape(n, -1), 0.0).T
    else:
        delta = np.zeros((U.shape[0], 0))
    absC = abs(as_matrix(compressed.C.detach()))
    dy = ((absC @ delta.T).T + (eC @ np.abs(X0).T).T + (eD @ Ua.T).T
          + np.abs(_vec(compressed.d, q) - _vec(original.d, q)))
    widen = 1.0 + 64 * (n + compressed.in_features + 1) * np.finfo(np.float64).eps
    up = lambda M: torch.from_numpy(np.nextafter(np.asarray(M) * widen, np.inf))  # noqa: E731
    return CompressionBound(state=up(delta), output=up(dy), pf=float(pf))


def _equilibrium64(model: ImplicitModel, U: Tensor) -> np.ndarray:
    """The model's state in float64 at a tight tolerance (the bound's nominal ``x0``; its solver
    error, ~1e-11, is far below the bound's outward rounding)."""
    m = _rebuild(model, *(getattr(model, k).detach().double() for k in _MATRICES),
                 None if model.b is None else model.b.detach().double(),
                 None if model.d is None else model.d.detach().double(), model.activation)
    m.settings = m.settings.replace(tol=1e-11, max_iter=max(m.settings.max_iter, 20_000))
    with torch.no_grad():
        return m.equilibrium(U.to(m.A.device)).cpu().double().numpy()


def _thresholded(M: Tensor, thr: float | None, keep_cols: np.ndarray | None) -> Tensor:
    """``M`` (same layout, dtype, device) with the entries ``|m| <= thr`` and the columns outside
    ``keep_cols`` set to zero; a sparse matrix is filtered on its values (never densified)."""
    M = M.detach()
    if is_sparse(M):
        S = sp.csr_array(as_matrix(M, dtype=None))
        data = S.data.copy()
        if thr is not None:
            data[np.abs(data) <= thr] = 0.0
        if keep_cols is not None:
            data[~keep_cols[S.indices]] = 0.0
        S = sp.csr_array((data, S.indices.copy(), S.indptr.copy()), shape=S.shape)
        S.eliminate_zeros()
        return from_scipy_csr(S, M.dtype, M.device)
    out = M.clone()
    if thr is not None:
        out[out.abs() <= thr] = 0.0
    if keep_cols is not None:
        out[:, torch.from_numpy(~keep_cols).to(out.device)] = 0.0
    return out


def _values(M: Tensor) -> np.ndarray:
    """``|entries|`` of ``M`` (the stored values of a sparse matrix), float64."""
    a = as_matrix(M.detach())
    return np.abs(a.data if sp.issparse(a) else np.asarray(a).ravel())


def _col_abs_sums(M: Tensor) -> np.ndarray:
    a = as_matrix(M.detach())
    return np.asarray(abs(a).sum(axis=0)).ravel() if sp.issparse(a) else np.abs(a).sum(axis=0)


def _with(model: ImplicitModel, mats: dict[str, Tensor]) -> ImplicitModel:
    return _rebuild(model, *(mats.get(k, getattr(model, k).detach()) for k in _MATRICES),
                    None if model.b is None else model.b.detach(),
                    None if model.d is None else model.d.detach(), model.activation)


def magnitude_prune(model: ImplicitModel, sparsity: float, *, structured: bool = False,
                    matrices: tuple[str, ...] = _MATRICES, u: Tensor | None = None,
                    fine_tune: tuple[Tensor, Tensor] | None = None, epochs: int = 3, lr: float = 1e-3,
                    loss: str = "cross_entropy") -> tuple[ImplicitModel, MagnitudePruneReport]:
    """Prune the smallest weights (module docstring); returns ``(pruned model, report)``.

    Args:
        epochs: fine-tuning epochs.
        lr: Adam learning rate of the fine-tuning.
        loss: the fine-tuning loss, ``"cross_entropy"`` or ``"squared_error"``.
        model: a dense or sparse :class:`~idlkit.ImplicitModel` (not modified).
        sparsity: the fraction in ``[0, 1)`` of the chosen matrices' nonzeros (or, ``structured``,
            of the states) to remove.
        structured: remove whole states (by ``||(A; C) e_i||_1``) instead of entries.
        matrices: which of ``"A", "B", "C", "D"`` unstructured pruning thresholds (together).
        u: inputs ``(batch, p)``: the report then carries the certified :class:`CompressionBound`
            of the pruned (and fine-tuned) model against ``model`` on them.
        fine_tune: ``(U, Y)`` to fine-tune on for ``epochs`` (Adam, ``lr``, ``loss``, projected)
            with the pruned entries held at zero (masked gradients).

    Examples:
        >>> _ = torch.manual_seed(0); m = ImplicitModel(4, 6, 2)
        >>> small, rep = magnitude_prune(m, 0.5)
        >>> rep.achieved >= 0.5, rep.nnz_after < rep.nnz_before
        (True, True)
    """
    model = _check_model(model, "magnitude_prune")
    s = float(check_probability("sparsity", sparsity, high_inclusive=False, example=0.5))
    if not isinstance(structured, bool):
        raise ConfigurationError(f"structured must be True or False, got {structured!r}")
    if not isinstance(matrices, tuple | list) or not matrices or any(k not in _MATRICES for k in matrices):
        raise ConfigurationError(f"matrices must be a non-empty subset of {_MATRICES}, got {matrices!r}")
    check_int("epochs", epochs, 1)
    check_scalar("lr", lr, low=0.0, low_inclusive=False, example=1e-3)
    for k in _MATRICES:
        M = getattr(model, k)
        vals = M.detach().values() if is_sparse(M) else M.detach()
        if vals.numel() and not bool(torch.isfinite(vals).all()):
            from ..errors import NonFiniteError

            raise NonFiniteError(f"{k} has NaN or Inf entries; restore finite parameters before pruning")
    nnz_before = sum(_nnz(getattr(model, k)) for k in _MATRICES)
    n = model.hidden
    removed: tuple[int, ...] = ()
    prune_rep = None
    if structured:
        score = _col_abs_sums(model.A) + _col_abs_sums(model.C)
        k_rm = min(n, math.ceil(s * n - 1e-9)) if n else 0
        order = np.argsort(score, kind="stable")[:k_rm]
        threshold = float(score[order].max()) if k_rm else 0.0
        keep_cols = np.ones(n, dtype=bool)
        keep_cols[order] = False
        masked = _with(model, {k: _thresholded(getattr(model, k), None, keep_cols) for k in ("A", "C")})
    else:
        entries = np.concatenate([_values(getattr(model, k)) for k in matrices])
        nz = np.sort(entries[entries > 0])
        k_rm = math.ceil(s * nz.size - 1e-9)
        threshold = float(nz[k_rm - 1]) if k_rm else -1.0
        masked = _with(model, {k: _thresholded(getattr(model, k), threshold, None) for k in matrices})
        threshold = max(threshold, 0.0)
    tuned = 0
    if fine_tune is not None:
        masked = _fine_tune(masked, fine_tune, epochs, lr, loss)
        tuned = epochs
    if not masked.sparse:
        masked.project_()
    bound = compression_bound(model, masked, u) if u is not None else None
    small = masked
    if structured:
        small, prune_rep = prune_states(masked, split=False)
        removed = tuple(int(i) for i in prune_rep.removed)
    nnz_after = sum(_nnz(getattr(small, k)) for k in _MATRICES)
    if structured:
        achieved = (n - small.hidden) / n if n else 0.0
    else:
        before = sum(_nnz(getattr(model, k)) for k in matrices)
        after = sum(_nnz(getattr(masked, k)) for k in matrices)
        achieved = 1.0 - after / before if before else 0.0
    report = MagnitudePruneReport(
        sparsity=s, achieved=float(achieved), structured=structured, matrices=tuple(matrices),
        threshold=threshold, nnz_before=nnz_before, nnz_after=nnz_after, n_before=n,
        n_after=small.hidden, removed_states=removed, fine_tune_epochs=tuned, prune=prune_rep, bound=bound)
    return small, report


def _fine_tune(model: ImplicitModel, data: tuple[Tensor, Tensor], epochs: int, lr: float,
               loss: str) -> ImplicitModel:
    """Train ``model`` in place with its zero entries held at zero (their gradients masked: Adam
    then never moves them, its moments staying zero), projected after every step."""
    from ..train import Trainer

    if model.sparse:
        raise ConfigurationError("fine-tuning trains dense parameters; the model's matrices are sparse "
                                 "(frozen CSR buffers): convert with from_matrices(A.to_dense(), ...) first")
    hooks = []
    for k in _MATRICES:
        P = getattr(model, k)
        if isinstance(P, torch.nn.Parameter) and P.requires_grad:
            mask = (P.detach() != 0).to(P.dtype)
            hooks.append(P.register_hook(lambda g, m=mask: g * m))
    try:
        Trainer(epochs=epochs, lr=lr, loss=loss, project=True).fit(model, data)
    finally:
        for h in hooks:
            h.remove()
    return model
