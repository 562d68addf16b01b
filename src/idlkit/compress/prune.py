"""Exact dimension reduction of implicit models (paper 000 §5.1-5.2).

Write the state as ``x = (x_1, x_2)`` after a permutation (the model is permutation invariant).
§5.2 distinguishes four sparsity patterns of ``M = (A, B; C, D)``; with the biases of §3.1
(``x = phi(A x + B u + b)``, ``y = C x + D u + d``) they read:

(a) **zero rows of (A, B)**: ``x_2 = phi(b_2)`` is a constant. Substituting it,
    ``x_1 = phi(A_11 x_1 + B_1 u + b_1 + A_12 phi(b_2))`` and ``y = C_1 x_1 + D u + d +
    C_2 phi(b_2)``: the states are removed and their value folded into the biases
    (``phi(0)`` without bias: the paper's ``B_2 = 0``, which removes them when ``phi(0) = 0``).
(b) **zero columns of (A; C)**: nothing reads ``x_2``; the rule ``y = C_1 x_1 + D u + d``,
    ``x_1 = phi(A_11 x_1 + B_1 u + b_1)`` does not involve it: the states are removed.
(c) **zero rows of A only**: ``x_2 = phi(B_2 u + b_2)`` in closed form, computed before the
    fixed point of ``x_1``. It is a nonlinear function of ``u`` that the affine maps of a
    smaller implicit model cannot absorb. With ``split=True`` (default) these states, and
    iteratively those that read only them, are taken out of the fixed point: the result is a
    :class:`~idlkit.compress.StagedImplicitModel` (explicit pre levels, an implicit core on
    ``x_1`` with input ``[u; x_2]``, explicit post levels; :mod:`idlkit.compress.staged`).
    With ``split=False`` they are *kept* inside one :class:`~idlkit.ImplicitModel`, exactly as
    they are (a solver sees rows of ``A`` equal to zero). Either way they are listed in
    :attr:`PruneReport.closed_form` and the split in :attr:`PruneReport.staging`. Where
    ``phi`` is the identity on such a state (a ``Blockwise`` segment of ``Identity``),
    ``linear=True`` substitutes it exactly: ``B_1 += A_12 B_2``,
    ``b_1 += A_12 b_2``, ``D += C_2 B_2``, ``d += C_2 b_2``.
(d) **zero columns of A only**: ``x_2 = phi(A_21 x_1 + B_2 u + b_2)`` in one step after
    ``x_1``; split out (post levels) with ``split=True``, kept with ``split=False``, and
    listed in :attr:`PruneReport.one_step`; identity states are
    substituted with ``linear=True``: ``C_1 += C_2 A_21``, ``D += C_2 B_2``, ``d += C_2 b_2``.

Removing states can create new zero rows (a state that read only constants) or zero columns
(a state read only by unused states), so (a) and (b) are repeated until nothing changes (each
round is one vectorised pass over the patterns, ``O(nnz)``). The repeated column rule removes
every state with no path to the output *except* those on cycles of ``A`` that the output never
reads (``C_2 = 0``, ``A_12 = 0``, ``A_22`` not nilpotent): a final pass removes those too (reason
``"unobservable"``, a graph search). This extends §5.2 exactly: the kept states' equations do
not involve them, so the outputs are those of the original for every input (where the original
has a solution: for a well-posed model, always). The analogous rows-side closure (a cycle with
zero rows of ``B`` is a constant too) would need a fixed-point solve to fold its value, so it is
not done: such states are kept.

Exactness. Each step of (a), (b) and the substitutions maps the solution set of the
fixed-point equation one-to-one onto that of the reduced equation (the removed states are
explicit functions of the kept ones), for any input ``u``, so the outputs agree whether or not
the model is well-posed (the unobservable pass needs only that the original has a solution); they agree to
rounding (the folded biases sum the same terms in another order). Well-posedness is kept: the
new ``A`` is a principal submatrix of the old one, which can only lower ``||A||_inf``,
``mu_inf(A)`` and ``lambda_pf(|A|)`` and keeps strict (block) upper triangularity, so the
declared condition is re-declared and re-checked on the smaller model.

Block maps (SoftMax, BlockMax, Product, ``Blockwise`` segments of them) couple the states of a
block: a block is removed only when *all* its states are, so a partly zero block is kept.

Tolerance. With ``tol > 0`` every entry of ``A``, ``B``, ``C`` (of ``B``, ``D`` for
:func:`prune_inputs`) with ``|entry| <= tol`` is set to zero first; the result is then
*exactly* the reduced thresholded model. Its distance to the original is a perturbation of
the model matrices: the state error of the ``A`` part is bounded by Thm 5.1
(:func:`idlkit.robust.model_error_bound` with ``E = |A - A_tol|``); :attr:`PruneReport.max_dropped`
gives the largest entry dropped from each matrix.

Feature selection (§5.1, eq. 5.1): an input ``j`` whose column of ``(B; D)`` is zero plays no
role in the prediction; :func:`selected_features` lists the others with the group norms
``||(B; D) e_j||_alpha`` of the penalty (5.1), and :func:`prune_inputs` returns the model
that reads only them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import breadth_first_order
from torch import Tensor

from .._matrix import as_matrix, from_scipy_csr, is_sparse
from .._validation import check_bool, check_scalar
from ..activations import Identity, block_activations
from ..errors import ConfigurationError, NonFiniteError
from ..model import ImplicitModel
from .staged import StagedImplicitModel, Staging, stage_partition

__all__ = ["PruneReport", "FeatureSelection", "prune_states", "prune_inputs", "selected_features"]

Matrix = np.ndarray | sp.csr_array

REASONS = {
    "constant": "rows of (A, B) zero: x_i = phi(b_i), folded into b and d (§5.2, B_2 = 0)",
    "unused": "columns of (A; C) zero: x_i is read by nothing (§5.2, C_2 = 0)",
    "linear_closed_form": "identity map, zero row of A: x_i = B_i u + b_i substituted into B, b, D, d "
                          "(case (c), linear=True)",
    "linear_one_step": "identity map, zero column of A: x_i = A_i x + B_i u + b_i substituted into "
                       "C, D, d (case (d), linear=True)",
    "unobservable": "no path through A to the output: read only by states that are themselves "
                    "unobservable (a cycle; the closure of the column rule)",
}

#: Why a kept state goes to each part of the split (``split=True``; :class:`Staging`).
PARTS = {
    "pre": "explicit before the fixed point: its rows of A over the states not yet computed are "
           "zero (case (c), iterated level by level)",
    "core": "implicit: on a cycle of A or reading one that is read back (the fixed point of x_1)",
    "post": "explicit after the fixed point: no state left in the fixed point reads it (case (d), "
            "iterated level by level)",
}


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune_states` removed and what it kept (paper 000 §5.2).

    Attributes:
        n_before: state size of the original model.
        n_after: state size of the pruned model.
        kept: original indices of the kept states; state ``k`` of the pruned model is state
            ``kept[k]`` of the original (the order is kept).
        removed: original indices of the removed states, in the order they were removed.
        reasons: one per entry of ``removed``: ``"constant"`` (case (a): zero rows of
            ``(A, B)``, value ``phi(b_i)`` folded into the biases), ``"unused"`` (case (b):
            zero columns of ``(A; C)``), ``"linear_closed_form"`` / ``"linear_one_step"``
            (cases (c) / (d) of an identity state, ``linear=True``) or ``"unobservable"`` (on a
            cycle of ``A`` with no path to the output; last round), see :data:`REASONS`.
        rounds: the round (1, 2, ...) in which each removed state went: a state removed in a
            later round became prunable once earlier ones were gone (a cascade).
        closed_form: indices *in the pruned model* of the states with zero rows of ``A``
            (case (c)): ``x_i = phi(B_i u + b_i)``, computable before any iteration.
        one_step: indices in the pruned model of the other states with zero columns of ``A``
            (case (d)): computed in one step from the iterated states.
        nnz_before: nonzero count of each of ``A``, ``B``, ``C``, ``D`` before pruning.
        nnz_after: nonzero count of each of ``A``, ``B``, ``C``, ``D`` after pruning.
        tol: the threshold: entries of ``A``, ``B``, ``C`` with ``|entry| <= tol`` were zeroed.
        max_dropped: largest ``|entry|`` zeroed by ``tol`` in each of ``A``, ``B``, ``C``
            (0 when ``tol = 0``): a nonzero value means the pruned model is exact for the
            thresholded model only (bound the difference with Thm 5.1).
        bound: with ``prune_states(..., u=U)``, the certified
            :class:`~idlkit.compress.CompressionBound` of the thresholded model against the
            original on ``U`` (the pruned model's outputs equal the thresholded one's), else None.
        staging: the :class:`~idlkit.compress.Staging` of the kept states (indices in the
            pruned model, as :attr:`closed_form`): explicit pre levels, the implicit core, the
            explicit post levels (see :data:`PARTS` for why); computed for either ``split``.
        split: whether :func:`prune_states` returned the staged model (``split=True``) or one
            :class:`~idlkit.ImplicitModel`.
    """

    n_before: int
    n_after: int
    kept: tuple[int, ...]
    removed: tuple[int, ...]
    reasons: tuple[str, ...]
    rounds: tuple[int, ...]
    closed_form: tuple[int, ...]
    one_step: tuple[int, ...]
    nnz_before: dict[str, int]
    nnz_after: dict[str, int]
    tol: float
    max_dropped: dict[str, float]
    bound: object | None = None
    staging: Staging | None = None
    split: bool = False

    @property
    def n_pre(self) -> int:
        """Kept states computed explicitly before the fixed point (pre levels)."""
        return 0 if self.staging is None else self.staging.n_pre

    @property
    def n_core(self) -> int:
        """Kept states that need the fixed point once split (the core)."""
        return self.n_after if self.staging is None else self.staging.n_core

    @property
    def n_post(self) -> int:
        """Kept states computed explicitly after the fixed point (post levels)."""
        return 0 if self.staging is None else self.staging.n_post

    def part(self, i: int) -> str | None:
        """``"pre"``, ``"core"`` or ``"post"`` for state ``i`` of the *pruned* model
        (``None`` without a staging); :data:`PARTS` says why.

        Args:
            i: a state of the pruned model.

        Returns:
            ``"pre"``, ``"core"``, ``"post"`` or ``None``.
        """
        if self.staging is None:
            return None
        if i in self.staging.core:
            return "core"
        return "pre" if any(i in lv for lv in self.staging.pre) else "post"

    @property
    def n_iterated(self) -> int:
        """States of the pruned model that need the fixed-point iteration: neither
        :attr:`closed_form` nor :attr:`one_step` (the ``x_1`` of §5.2)."""
        return self.n_after - len(set(self.closed_form) | set(self.one_step))

    @property
    def exact(self) -> bool:
        """Whether the pruned model equals the original (no nonzero entry was dropped by ``tol``)."""
        return all(v == 0 for v in self.max_dropped.values())

    def reason(self, i: int) -> str | None:
        """Why original state ``i`` was removed (``None`` when it was kept).

        Args:
            i: a state of the original model.

        Returns:
            One of :data:`REASONS`, or ``None``.
        """
        for j, r in zip(self.removed, self.reasons, strict=True):
            if j == i:
                return r
        return None

    def __str__(self) -> str:
        count = {r: self.reasons.count(r) for r in REASONS}
        nnz0, nnz1 = sum(self.nnz_before.values()), sum(self.nnz_after.values())
        return (f"PruneReport(n {self.n_before} -> {self.n_after}: {count['constant']} constant, "
                f"{count['unused']} unused, {count['unobservable']} unobservable, "
                f"{count['linear_closed_form'] + count['linear_one_step']} substituted, in "
                f"{max(self.rounds, default=0)} round(s); "
                f"{len(self.closed_form)} closed-form, {len(self.one_step)} one-step, "
                f"{self.n_iterated} iterated; split {self.n_pre} pre / {self.n_core} core / "
                f"{self.n_post} post (returned {'staged' if self.split else 'one model'}); "
                f"nnz {nnz0} -> {nnz1}; tol={self.tol:g}, exact={self.exact})")


@dataclass(frozen=True)
class FeatureSelection:
    """The inputs a model reads (paper 000 §5.1, eq. 5.1).

    Attributes:
        selected: indices ``j`` whose column of ``(B; D)`` has an entry above ``tol``.
        dropped: the other inputs: they play no role in the prediction (after thresholding).
        norms: ``||(B; D) e_j||_alpha`` of every input ``j`` (the terms of the penalty 5.1), of
            the original matrices, float64.
        alpha: the norm of the groups.
        tol: entries with ``|entry| <= tol`` count as zero.
    """

    selected: tuple[int, ...]
    dropped: tuple[int, ...]
    norms: tuple[float, ...]
    alpha: float
    tol: float

    @property
    def p_before(self) -> int:
        return len(self.norms)

    @property
    def p_after(self) -> int:
        return len(self.selected)

    def index(self) -> Tensor:
        """``selected`` as a ``LongTensor``, to take the kept inputs: ``u[:, sel.index()]``."""
        return torch.tensor(self.selected, dtype=torch.long)


# ---------------------------------------------------------------------------- helpers


def _check_model(model: object, who: str) -> ImplicitModel:
    if not isinstance(model, ImplicitModel):
        if hasattr(model, "to_dense") and hasattr(model, "L"):
            fix = "convert it first with model.to_dense() (a LowRankImplicitModel keeps A = L R^T)"
        else:
            fix = "convert a torch network with idlkit.convert.from_torch(net, example_input)"
        raise ConfigurationError(f"{who} needs an idlkit.ImplicitModel, got {type(model).__name__}; "
                                 f"{fix}")
    return model


def _check_tol(tol: object) -> float:
    return float(check_scalar("tol", tol, low=0.0,  # type: ignore[arg-type]
                              why="entries with |entry| <= tol count as zero", example=1e-8))


def _threshold(name: str, M: Tensor, tol: float) -> tuple[Matrix, float]:
    """``M`` as float64 numpy/scipy CSR with the entries ``|m| <= tol`` set to zero (explicit
    zeros of a sparse matrix dropped), and the largest ``|m|`` dropped."""
    M64 = as_matrix(M.detach())
    data = M64.data if sp.issparse(M64) else M64
    if not np.isfinite(data).all():
        raise NonFiniteError(f"{name} has NaN or Inf entries: a pruned model of it would be "
                             f"meaningless; restore finite parameters first")
    small = np.abs(data) <= tol
    dropped = float(np.abs(data[small]).max()) if small.any() else 0.0
    if sp.issparse(M64):
        M64 = sp.csr_array((np.where(small, 0.0, data), M64.indices.copy(), M64.indptr.copy()),
                           shape=M64.shape)
        M64.eliminate_zeros()
    else:
        M64 = np.where(small, 0.0, M64)
    return M64, dropped


def _pattern(M: Matrix) -> sp.csr_array:
    """0/1 CSR pattern (float64, for counting by products) of a float64 matrix."""
    if sp.issparse(M):
        P = sp.csr_array((np.ones_like(M.data), M.indices, M.indptr), shape=M.shape)
        return P
    return sp.csr_array((M != 0).astype(np.float64))


def _nnz(M: Tensor | Matrix) -> int:
    if isinstance(M, Tensor):
        M = as_matrix(M.detach())
    return int(M.count_nonzero()) if sp.issparse(M) else int(np.count_nonzero(M))


def _take(M: Matrix, rows: np.ndarray | None, cols: np.ndarray | None) -> Matrix:
    if rows is not None:
        M = M[rows] if sp.issparse(M) else M[rows, :]
    if cols is not None:
        M = M[:, cols]
    return M


def _to_tensor(M: Matrix, like: Tensor) -> Tensor:
    """Back to a torch matrix of ``like``'s layout (sparse -> CSR), dtype and device; the
    values came from ``like``'s dtype, so the round trip is exact."""
    if is_sparse(like):
        return from_scipy_csr(sp.csr_array(M), like.dtype, like.device)
    return torch.from_numpy(np.ascontiguousarray(M)).to(dtype=like.dtype, device=like.device)


def _row_nonzero(M: Matrix) -> np.ndarray:
    """Whether each row of ``M`` has a nonzero entry (by value: explicit zeros do not count)."""
    if sp.issparse(M):
        M = sp.csr_array(M)
        return np.asarray(abs(M).sum(axis=1)).ravel() > 0
    return (np.asarray(M) != 0).any(axis=1)


def _same_kind(M: object, like: Matrix) -> Matrix:
    """``M`` as a scipy CSR array when ``like`` is sparse, else as a dense numpy array."""
    if sp.issparse(like):
        return sp.csr_array(M)
    return M.toarray() if sp.issparse(M) else np.asarray(M)


def _group_any(flags: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per block: whether any state of it has ``flags`` (blocks start at ``starts``)."""
    if not starts.size:
        return np.zeros(0, dtype=bool)
    return np.add.reduceat(flags.astype(np.int64), starts) > 0


def _rebuild(model: ImplicitModel, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
             b: Tensor | None, d: Tensor | None, activation: object) -> ImplicitModel:
    """An :class:`ImplicitModel` like ``model`` (well-posedness, solver settings, training
    mode, frozen parameters) with new matrices."""
    small = ImplicitModel.from_matrices(
        A, B, C, D, b, d, activation=activation, wellposedness=model.wellposedness,  # type: ignore[arg-type]
        kappa=model.kappa, **model.settings.config())
    small.settings = model.settings  # frozen: the very same settings (alpha included)
    for name in ("A", "B", "C", "D", "b", "d"):
        old, new = getattr(model, name), getattr(small, name)
        if isinstance(old, torch.nn.Parameter) and isinstance(new, torch.nn.Parameter):
            new.requires_grad_(old.requires_grad)
    return small.train(model.training)


# ---------------------------------------------------------------------------- states


def prune_states(model: ImplicitModel, tol: float = 0.0, *, split: bool = True,
                 linear: bool = False, u: Tensor | None = None, allow_empty: bool = False
                 ) -> tuple[StagedImplicitModel | ImplicitModel, PruneReport]:
    """Remove the states that paper 000 §5.2 shows are not needed; same outputs.

    Repeats, until nothing changes: remove the blocks of states whose rows of ``(A, B)`` are
    zero (constants ``phi(b_i)``, folded into the biases: ``b += A[:, i] phi(b_i)``,
    ``d += C[:, i] phi(b_i)``) and those whose columns of ``(A; C)`` are zero (unused); then
    the blocks with no path through ``A`` to the output (unobservable).
    States with zero rows (columns) of ``A`` only (cases (c), (d)), and iteratively those that
    read (are read by) only them, are taken out of the fixed point with ``split=True``: the
    result is a :class:`~idlkit.compress.StagedImplicitModel` whose core is the fixed point on
    the rest. See the module docstring for the derivation, block maps and ``tol``.

    Args:
        allow_empty: return the static affine map when every state goes (else raise).
        model: an :class:`~idlkit.ImplicitModel` (dense or sparse matrices, any activation).
        tol: entries of ``A``, ``B``, ``C`` with ``|entry| <= tol`` count as (and are set to)
            zero; ``0`` (default) prunes exactly.
        split: ``True`` (default): return the :class:`~idlkit.compress.StagedImplicitModel`
            (explicit pre levels, implicit core, explicit post levels; ``to_implicit()`` gives
            the single model back); ``False``: one :class:`~idlkit.ImplicitModel` with the
            closed-form and one-step states kept inside the fixed point.
        linear: also substitute the states whose map is the identity in cases (c) and (d)
            (then exactly: ``x_i = B_i u + b_i`` into ``B``, ``b`` and ``D``, ``d``;
            ``x_i = A_i x + B_i u + b_i`` into ``C``, ``D``, ``d``); this changes ``B``, ``C``,
            ``D`` (fill-in) but not ``A`` beyond the principal submatrix. Off by default: the
            kept blocks of ``A, B, C`` are then exactly the original's.
        u: inputs ``(batch, p)``: the report then carries the certified bound on how far the
            outputs move (:func:`~idlkit.compress.compression_bound`; zero up to rounding when
            ``tol = 0``), Thm 5.1 extended to ``B`` and ``C``.

    Returns:
        ``(small, report)``: with ``split=False`` an :class:`~idlkit.ImplicitModel` with
        ``report.n_after`` states,
        the same inputs and outputs, activation (restricted to the kept blocks), declared
        well-posedness, ``kappa`` and solver settings, matrices in the same layouts (a sparse
        matrix stays sparse), dtype and device; biases where the original had them or a fold
        made them nonzero. ``small(u)`` equals ``model(u)`` up to rounding and the solver
        tolerance when ``report.exact``. With ``split=True`` the
        :class:`~idlkit.compress.StagedImplicitModel` of that model (the same outputs and
        states). Pruning every state of a model that has some raises (the model is then the
        static affine map ``y = D u + d``, usually a sign that ``tol`` is too large or ``C``
        reads no state); ``allow_empty=True`` returns that map (``hidden = 0``).

    Raises:
        ConfigurationError: ``model`` is not an ImplicitModel; ``tol`` negative or not finite;
            ``split``, ``linear`` or ``allow_empty`` not a bool; every state would be removed
            (without ``allow_empty``).
        NonFiniteError: a matrix or bias has NaN or Inf entries.

    Examples:
        >>> A = torch.tensor([[0.0, 0.5], [0.0, 0.0]]); B = torch.tensor([[1.0], [0.0]])
        >>> m = ImplicitModel.from_matrices(A, B, torch.ones(1, 2), torch.zeros(1, 1),
        ...                                 b=torch.tensor([0.0, 2.0]))
        >>> small, report = prune_states(m, split=False)  # x_2 = relu(2) = 2 is a constant
        >>> small.hidden, report.removed, report.reasons, small.b.tolist(), small.d.tolist()
        (1, (1,), ('constant',), [1.0], [2.0])
    """
    model = _check_model(model, "prune_states")
    tol = _check_tol(tol)
    split = check_bool("split", split)
    linear = check_bool("linear", linear)
    allow_empty = check_bool("allow_empty", allow_empty)
    n, act = model.hidden, model.activation
    mats: dict[str, Matrix] = {}
    dropped: dict[str, float] = {}
    for name in ("A", "B", "C"):
        mats[name], dropped[name] = _threshold(name, getattr(model, name), tol)
    _threshold("D", model.D, 0.0)  # finiteness only: D is kept as it is
    dtype = model.A.dtype
    has_bias = model.b is not None
    b = model.b.detach().cpu().double().numpy().copy() if has_bias else np.zeros(n)
    d = model.d.detach().cpu().double().numpy().copy() if has_bias else np.zeros(model.out_features)
    if not (np.isfinite(b).all() and np.isfinite(d).all()):
        raise NonFiniteError("the biases b, d have NaN or Inf entries; restore finite parameters first")
    A, B, C = mats["A"], mats["B"], mats["C"]
    D = as_matrix(model.D.detach())
    PA = _pattern(A)
    PAT = sp.csr_array(PA.T)
    sizes = np.asarray(act.blocks(n).sizes, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])) if sizes.size else sizes
    block_of = np.repeat(np.arange(sizes.size), sizes)
    lin = np.zeros(n, dtype=bool)  # states whose map is the identity (substitutable)
    if linear and n:
        lin = np.concatenate([np.full(size, size == 1 and isinstance(a, Identity))
                              for size, a in block_activations(act, n)])

    active = np.ones(n, dtype=bool)
    removed: list[int] = []
    reasons: list[str] = []
    rounds: list[int] = []
    r = 0
    while active.any():
        b_rows = _row_nonzero(B)
        c_cols = _row_nonzero(C.T)
        live = active.astype(np.float64)
        a_rows, a_cols = PA @ live > 0, PAT @ live > 0  # rows / columns of A over the live states
        reads = a_rows | b_rows  # row of (A, B) over the live states is nonzero
        read = a_cols | c_cols  # column of (A; C) over the live states is nonzero
        alive = _group_any(active, starts)
        unused_g = alive & ~_group_any(read, starts)
        const_g = alive & ~_group_any(reads, starts) & ~unused_g
        unused, const = unused_g[block_of], const_g[block_of]
        closed = active & lin & ~a_rows & ~unused & ~const
        one_step = active & lin & ~a_cols & ~unused & ~const & ~closed
        if unused.any() or const.any():  # substitutions only when (a), (b) are done
            closed[:] = one_step[:] = False
        elif not (closed.any() or one_step.any()):
            break
        r += 1
        if const.any():
            with torch.no_grad():
                phi_b = act(torch.from_numpy(b).to(dtype).reshape(n, 1)).double().numpy().ravel()
            idx = np.flatnonzero(const)
            value = phi_b[idx]
            b = b + np.asarray(_take(A, None, idx) @ value).ravel()
            d = d + np.asarray(_take(C, None, idx) @ value).ravel()
        if closed.any():  # x_i = B_i u + b_i: into the rows that read it and into the output
            idx = np.flatnonzero(closed)
            Ai, Bi, Ci = _take(A, None, idx), _take(B, idx, None), _take(C, None, idx)
            B = _same_kind(B + Ai @ Bi, B)
            D = _same_kind(D + Ci @ Bi, D)
            b = b + np.asarray(Ai @ b[idx]).ravel()
            d = d + np.asarray(Ci @ b[idx]).ravel()
        if one_step.any():  # x_i = A_i x + B_i u + b_i, read by the output only; after the
            # closed-form ones of this round (folded into B_i, b_i above, dropped from A_i here)
            idx = np.flatnonzero(one_step)
            keep = sp.diags_array((active & ~closed).astype(np.float64))
            Ai = _take(A, idx, None) @ keep  # only the live states: the removed ones are folded
            Bi, Ci = _take(B, idx, None), _take(C, None, idx)
            C = _same_kind(C + Ci @ Ai, C)
            D = _same_kind(D + Ci @ Bi, D)
            d = d + np.asarray(Ci @ b[idx]).ravel()
        for flag, why in ((unused, "unused"), (const, "constant"), (closed, "linear_closed_form"),
                          (one_step, "linear_one_step")):
            idx = np.flatnonzero(flag)
            removed += idx.tolist()
            reasons += [why] * idx.size
            rounds += [r] * idx.size
        active &= ~(unused | const | closed | one_step)
    c_cols = _row_nonzero(C.T)

    # unobservable blocks: no path through A to the output (cycles the column rule cannot peel)
    if active.any():
        M = sp.csr_array((np.ones(n), (np.arange(n), block_of)), shape=(n, sizes.size))
        keep = sp.diags_array(active.astype(np.float64))
        G = sp.csr_array(M.T @ (keep @ PA @ keep) @ M)  # block I reads block J
        L = sizes.size
        seed = _group_any(active & c_cols, starts)
        src = sp.csr_array((np.ones(int(seed.sum())), (np.full(int(seed.sum()), L), np.flatnonzero(seed))),
                           shape=(L + 1, L + 1))
        G = sp.csr_array(sp.block_array([[G, None], [None, sp.csr_array((1, 1))]])) + src
        seen = np.zeros(L + 1, dtype=bool)
        seen[breadth_first_order(G, L, directed=True, return_predecessors=False)] = True
        dead = active & ~seen[:L][block_of]
        if dead.any():
            idx = np.flatnonzero(dead)
            removed += idx.tolist()
            reasons += ["unobservable"] * idx.size
            rounds += [r + 1] * idx.size
            active &= ~dead

    kept = np.flatnonzero(active)
    A1, B1, C1 = _take(A, kept, kept), _take(B, kept, None), _take(C, None, kept)
    b1, d1 = b[kept], d
    bias = has_bias or bool(np.any(b1 != 0) or np.any(d1 != 0))
    like = model.b if has_bias else model.A
    to_vec = (lambda v: torch.from_numpy(v).to(dtype=dtype, device=like.device)) if bias else None
    new_act = act if kept.size == n else act.restrict(torch.from_numpy(kept))
    D1 = model.D.detach() if not linear else _to_tensor(D, model.D)
    small = _rebuild(model, _to_tensor(A1, model.A), _to_tensor(B1, model.B),
                     _to_tensor(C1, model.C), D1,
                     to_vec(b1) if to_vec else None, to_vec(d1) if to_vec else None, new_act)

    # cases (c), (d) on the pruned A, block by block
    n1 = kept.size
    sizes1 = np.asarray(new_act.blocks(n1).sizes, dtype=np.int64)
    starts1 = np.concatenate(([0], np.cumsum(sizes1)[:-1])) if sizes1.size else sizes1
    block1 = np.repeat(np.arange(sizes1.size), sizes1)
    P1 = _pattern(A1)
    row_nz = _group_any(np.asarray(P1.sum(axis=1)).ravel() > 0, starts1)[block1]
    col_nz = _group_any(np.asarray(P1.sum(axis=0)).ravel() > 0, starts1)[block1]
    closed = np.flatnonzero(~row_nz)
    one_step = np.flatnonzero(~col_nz & row_nz)

    if n1 == 0 and n > 0 and not allow_empty:
        why = sorted(set(reasons))
        raise ConfigurationError(
            f"prune_states would remove all {n} states ({', '.join(why)}; tol={tol:g}): the model is "
            f"the static map y = D u + d. Fix: a smaller tol, check that C reads the states, or pass "
            f"allow_empty=True to get that map")
    names = ("A", "B", "C", "D")
    report = PruneReport(
        n_before=n, n_after=n1, kept=tuple(kept.tolist()), removed=tuple(removed),
        reasons=tuple(reasons), rounds=tuple(rounds), closed_form=tuple(closed.tolist()),
        one_step=tuple(one_step.tolist()),
        nnz_before={k: _nnz(getattr(model, k)) for k in names},
        nnz_after={k: _nnz(getattr(small, k)) for k in names},
        tol=tol, max_dropped=dropped,
        bound=None if u is None else _threshold_bound(model, mats, u),
        staging=stage_partition(small.A, small.activation), split=split)
    return (StagedImplicitModel(small, report.staging) if split else small), report


def _threshold_bound(model: ImplicitModel, mats: dict[str, Matrix], u: Tensor) -> object:
    """The certified bound of the same-size thresholded model (``mats``) against ``model``."""
    from .magnitude import compression_bound

    same = _rebuild(model, *(_to_tensor(mats[k], getattr(model, k).detach()) for k in ("A", "B", "C")),
                    model.D.detach(), None if model.b is None else model.b.detach(),
                    None if model.d is None else model.d.detach(), model.activation)
    return compression_bound(model, same, u)


# ---------------------------------------------------------------------------- inputs


def selected_features(model: ImplicitModel, tol: float = 0.0, alpha: float = 2.0) -> FeatureSelection:
    """The inputs whose column of ``(B; D)`` is nonzero (paper 000 §5.1, eq. 5.1).

    An input ``j`` with ``(B; D) e_j = 0`` does not enter the prediction ``y = C x + D u + d``,
    ``x = phi(A x + B u + b)``: it is not a feature of the model. The group-norm penalty (5.1)
    ``sum_j ||(B; D) e_j||_alpha`` (``alpha > 1``) trains such zero columns.

    Args:
        model: an :class:`~idlkit.ImplicitModel`.
        tol: entries with ``|entry| <= tol`` count as zero (default 0: exact).
        alpha: norm of the groups reported in :attr:`FeatureSelection.norms` (``>= 1`` or
            ``inf``; it does not change the selection).

    Examples:
        >>> m = ImplicitModel(3, 4, 2)
        >>> with torch.no_grad():
        ...     m.B[:, 1] = 0; m.D[:, 1] = 0
        >>> selected_features(m).selected
        (0, 2)
    """
    model = _check_model(model, "selected_features")
    tol = _check_tol(tol)
    if alpha != math.inf:
        alpha = float(check_scalar("alpha", alpha, low=1.0, example=2.0,  # type: ignore[arg-type]
                                   why="eq. 5.1 takes a norm (alpha >= 1, or inf) of each column"))
    (B, _), (D, _) = _threshold("B", model.B, 0.0), _threshold("D", model.D, 0.0)
    keep = np.zeros(model.in_features, dtype=bool)
    norms = np.zeros(model.in_features)
    for M in (B, D):
        Ms = sp.csr_array(M) if not sp.issparse(M) else M
        absM = abs(Ms)
        big = sp.csr_array(absM > tol) if absM.nnz else absM
        keep |= np.asarray(big.sum(axis=0)).ravel() > 0
        if alpha == math.inf:
            norms = np.maximum(norms, absM.max(axis=0).toarray().ravel() if absM.nnz else 0.0)
        else:
            norms += np.asarray(absM.power(alpha).sum(axis=0)).ravel()
    if alpha != math.inf:
        norms = norms ** (1.0 / alpha)
    return FeatureSelection(selected=tuple(np.flatnonzero(keep).tolist()),
                            dropped=tuple(np.flatnonzero(~keep).tolist()),
                            norms=tuple(norms.tolist()), alpha=alpha, tol=tol)


def prune_inputs(model: ImplicitModel, tol: float = 0.0,
                 alpha: float = 2.0) -> tuple[ImplicitModel, FeatureSelection]:
    """The model reading only its :func:`selected_features` (paper 000 §5.1).

    Entries of ``B`` and ``D`` with ``|entry| <= tol`` are set to zero and the zero columns
    of ``(B; D)`` removed; ``A``, ``C``, the biases, activation, well-posedness and solver
    settings are unchanged. For any ``u`` of the original's shape,
    ``small(u[:, sel.index()])`` equals ``model(u)`` (exactly the thresholded model's output
    when ``tol > 0``).

    Args:
        model: an :class:`~idlkit.ImplicitModel`.
        tol: entries of ``B`` and ``D`` with ``|entry| <= tol`` count as zero, ``>= 0``.
        alpha: the column norm of :func:`selected_features`.

    Returns:
        ``(small, selection)``: ``small.in_features = len(selection.selected)``.

    Raises:
        ConfigurationError: not an ImplicitModel; bad ``tol``; every input column is zero
            (the model is a constant: an ImplicitModel needs at least one input).

    Examples:
        >>> m = ImplicitModel(3, 4, 2)
        >>> with torch.no_grad():
        ...     m.B[:, 0] = 0; m.D[:, 0] = 0
        >>> small, sel = prune_inputs(m)
        >>> small.in_features, sel.selected
        (2, (1, 2))
    """
    sel = selected_features(model, tol, alpha)
    if not sel.selected:
        raise ConfigurationError(
            f"every column of (B; D) is zero at tol={sel.tol:g} (largest column norm "
            f"{max(sel.norms, default=0.0):.3g}): the model ignores its input and an ImplicitModel "
            f"needs at least one; lower tol")
    cols = np.asarray(sel.selected)
    (B, _), (D, _) = _threshold("B", model.B, sel.tol), _threshold("D", model.D, sel.tol)
    b = model.b.detach() if model.b is not None else None
    d = model.d.detach() if model.d is not None else None
    small = _rebuild(model, model.A.detach(), _to_tensor(_take(B, None, cols), model.B),
                     model.C.detach(), _to_tensor(_take(D, None, cols), model.D), b, d,
                     model.activation)
    return small, sel
