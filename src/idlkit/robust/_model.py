"""Float64 views of a model for the bounds: matrices, BLIP norm matrices, input checks.

The norm matrices of paper 000 §4.2-4.3: ``Gamma N(A)`` (eq. 2.5, via
:func:`idlkit.wellposed.blip_norm_matrix`), ``Gamma N(B)`` (eq. 4.6: ``N(B)_li = ||B_li||_{p_l}``)
and ``N(C)`` (Thm 4.4: ``N(C)_il = ||C_il||_{p_l^*}``, the dual norm). For a componentwise map
they are ``gamma |A|``, ``gamma |B|`` and ``|C|`` (Thm 4.1, 4.3, with ``gamma = 1`` for a CONE
map; a ``gamma``-Lipschitz map gives the same bounds with ``gamma`` in front, which is Thm 4.2
with blocks of size 1).

The ``gamma_l`` are those of the activation's :class:`~idlkit.activations.BlockStructure`:
``max |phi'|`` for a componentwise map (greater than 1 for GELU 1.129, SiLU 1.100, Mish 1.088,
Hardswish 1.5, SELU 1.758, ELU with ``alpha > 1``: those maps are not CONE and the formulas carry
``gamma`` in front), ``max(c_2 gamma_1, c_1 gamma_2)`` in ``l_1`` for a
:class:`~idlkit.activations.Product` pair (§2.4). Only Lipschitz continuity enters Thm 4.1-4.4:
non-monotone maps (the valley maps) and shifted ones (``phi(0) != 0``, §3.1: softplus,
hardsigmoid, logsigmoid, sigmoid products; differences ``x - x0`` do not see the shift) are covered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .. import wellposed as wp
from .._matrix import as_matrix
from .._validation import check_scalar
from ..activations import Activation, BlockStructure, Blockwise, Centered, ComponentwiseActivation
from ..errors import ConfigurationError, InputError, NonFiniteError, ShapeError

__all__ = ["ModelData", "model_data", "componentwise_maps", "float64_copy", "as_sigma", "check_k",
           "as_batch64", "top_k_sum"]

Mat = np.ndarray | sp.csr_array
_DENSE_BLIP_MAX_N = 4096  # largest block normed dense (exactly)
_MAX_SPARSE_BLOCKS = 200_000  # most nonzero blocks normed one by one


@dataclass(frozen=True)
class ModelData:
    """Float64 matrices of a model (dense numpy or scipy CSR) and its activation's blocks."""

    A: Mat
    B: Mat
    C: Mat
    D: Mat
    activation: Activation
    blocks: BlockStructure
    componentwise: bool
    """Every segment of the activation is componentwise (a ``Blockwise`` of componentwise maps
    counts, with a ``gamma`` per state); see :func:`componentwise_maps`."""

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def p(self) -> int:
        return self.B.shape[1]

    @property
    def q(self) -> int:
        return self.C.shape[0]


def _get(model: object, name: str) -> Tensor:
    M = getattr(model, name, None)
    if not isinstance(M, Tensor):
        raise ConfigurationError(f"expected an idlkit ImplicitModel (with matrices A, B, C, D); "
                                 f"{type(model).__name__} has no tensor {name!r}")
    return M


def base_activation(act: Activation) -> Activation:
    return act.base if isinstance(act, Centered) else act


def componentwise_maps(act: Activation) -> list[ComponentwiseActivation] | None:
    """The componentwise maps the activation is made of (``Centered`` unwrapped: a shift changes
    no slope), one per ``Blockwise`` segment; ``None`` when a segment is a block map (SoftMax,
    BlockMax, Product), i.e. the theorems for componentwise maps do not apply."""
    base = base_activation(act)
    segs = [a for _, a in base.segments] if isinstance(base, Blockwise) else [base]
    out = []
    for a in segs:
        a = base_activation(a)
        if not isinstance(a, ComponentwiseActivation):
            return None
        out.append(a)
    return out


def model_data(model: object) -> ModelData:
    """The model's ``A, B, C, D`` in float64 (sparse stays sparse) and its BLIP structure."""
    A, B, C, D = (as_matrix(_get(model, k)) for k in "ABCD")
    act = model.activation  # type: ignore[attr-defined]
    blocks = act.blocks(A.shape[0])
    comp = componentwise_maps(act) is not None
    return ModelData(A, B, C, D, act, blocks, comp)


def _sparse_memo(obj: object, seen: set[int], memo: dict[int, object]) -> None:
    """Clones of the non-strided (sparse) tensors reachable from ``obj`` through containers and
    instance dicts, keyed by ``id`` as :func:`copy.deepcopy`'s memo: torch cannot deep-copy a
    sparse CSR tensor (it has no storage), but :meth:`Tensor.clone` copies it."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        if obj.layout != torch.strided:
            memo[id(obj)] = obj.detach().clone()
        return
    if isinstance(obj, dict):
        items: object = obj.values()
    elif isinstance(obj, list | tuple | set | frozenset):
        items = obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = vars(obj).values()
    else:
        return
    for v in items:  # type: ignore[attr-defined]
        _sparse_memo(v, seen, memo)


def float64_copy(model: object) -> object:
    """A float64 deep copy of a model (the model itself is not touched, not even its
    ``last_solve``), sparse matrices and solver caches included."""
    import copy

    memo: dict[int, object] = {}
    _sparse_memo(model, set(), memo)
    memo[id(memo)] = [model]  # deepcopy's keep-alive convention
    return copy.deepcopy(model, memo).to(torch.float64)  # type: ignore[attr-defined]


def _abs(M: Mat) -> Mat:
    return abs(M) if sp.issparse(M) else np.abs(M)


def _row_block_norms(M: Mat, blocks: BlockStructure, dual: bool) -> Mat:
    """``(L, m)``: the ``p_l`` norm (``p_l^*`` with ``dual``) of each column of ``M`` (``(n, m)``)
    restricted to each row block ``l``."""
    sizes = blocks.sizes
    if all(s == 1 for s in sizes):
        return _abs(M)
    norms = [(1.0 / (1.0 - 1.0 / p) if p not in (1.0, math.inf) else (math.inf if p == 1 else 1.0))
             if dual else p for p in blocks.norms]
    L, m = len(sizes), M.shape[1]
    offs = np.concatenate(([0], np.cumsum(sizes)))
    Md = M.toarray() if sp.issparse(M) else M
    out = np.zeros((L, m))
    absM = np.abs(Md)
    for p_ in set(norms):
        idx = np.array([i for i, pl in enumerate(norms) if pl == p_])
        if p_ == 1:
            red = np.add.reduceat(absM, offs[:-1], axis=0) if Md.shape[0] else out
        elif p_ == 2:
            red = np.sqrt(np.add.reduceat(Md * Md, offs[:-1], axis=0)) if Md.shape[0] else out
        else:
            red = np.maximum.reduceat(absM, offs[:-1], axis=0) if Md.shape[0] else out
        out[idx] = red[idx]
    return sp.csr_array(out) if sp.issparse(M) else out


def _sparse_block_norms(A: sp.csr_array, bs: BlockStructure) -> Mat:
    """``Gamma N(A)`` (eq. 2.5) of a sparse ``A`` with non-scalar blocks, block by block: every
    nonzero block ``A_IJ`` is extracted alone (dense, ``s_I x s_J``) and normed exactly as
    :func:`idlkit.wellposed.blip_norm_matrix` does for a dense matrix; ``A`` itself is never
    densified. Blocks larger than ``_DENSE_BLIP_MAX_N`` on a side, or more than
    ``_MAX_SPARSE_BLOCKS`` nonzero blocks, fall back to that function's sparse bound (sums of
    absolute entries; valid, looser)."""
    from .._matrix import block_pattern_graph

    sizes, norms = bs.sizes, bs.norms
    G = sp.coo_array(block_pattern_graph(A, sizes))
    if G.nnz > _MAX_SPARSE_BLOCKS or max(sizes) > _DENSE_BLIP_MAX_N:
        return wp.blip_norm_matrix(A, sizes, norms, bs.gammas)
    offs = np.concatenate(([0], np.cumsum(sizes)))
    L = len(sizes)
    vals = np.zeros(G.nnz)
    for t, (i, j) in enumerate(zip(G.row, G.col, strict=True)):
        blk = A[offs[i]:offs[i + 1]][:, offs[j]:offs[j + 1]].toarray()
        if i == j:
            vals[t] = wp.blip_norm_matrix(blk, (sizes[i],), (norms[i],))[0, 0]
        else:  # [[0, A_ij], [0, 0]] with blocks (s_i, s_j): its N[0, 1] = ||A_ij||_{p_j -> p_i}
            si, sj = sizes[i], sizes[j]
            M = np.zeros((si + sj, si + sj))
            M[:si, si:] = blk
            vals[t] = wp.blip_norm_matrix(M, (si, sj), (norms[i], norms[j]))[0, 1]
    gam = np.asarray(bs.gammas, dtype=np.float64)
    return sp.csr_array((gam[G.row] * vals, (G.row, G.col)), shape=(L, L))


def norm_matrices(d: ModelData) -> tuple[Mat, Mat, Mat, Mat]:
    """``(Gamma N(A), Gamma N(B), N(C), |D|)`` (eq. 2.5, 4.6, Thm 4.4), float64."""
    bs = d.blocks
    gam = np.asarray(bs.gammas, dtype=np.float64)
    if d.n == 0:
        return np.zeros((0, 0)), np.zeros((0, d.p)), np.zeros((d.q, 0)), _abs(d.D)
    A = d.A
    if sp.issparse(A) and any(s_ > 1 for s_ in bs.sizes):
        NA = _sparse_block_norms(A, bs)
    else:
        NA = wp.blip_norm_matrix(A, bs.sizes, bs.norms, bs.gammas)
    NB = _row_block_norms(d.B, bs, dual=False)
    NB = sp.csr_array(sp.diags_array(gam) @ NB) if sp.issparse(NB) else gam[:, None] * NB
    NC = _row_block_norms(d.C.T.tocsr() if sp.issparse(d.C) else d.C.T, bs, dual=True)
    NC = NC.T.tocsr() if sp.issparse(NC) else np.ascontiguousarray(NC.T)
    return NA, NB, NC, _abs(d.D)


def dense(M: Mat) -> np.ndarray:
    return M.toarray() if sp.issparse(M) else np.asarray(M)


def as_sigma(sigma: object, p: int, name: str = "sigma_u") -> np.ndarray:
    """A radius: scalar or ``(p,)``, finite and ``>= 0``; returned as a float64 ``(p,)`` array."""
    if isinstance(sigma, Tensor):
        s = sigma.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            s = np.asarray(sigma, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} must be a number or a ({p},) array, got {sigma!r}") from exc
    if s.ndim == 0:
        s = np.full(p, float(s))
    if s.shape != (p,):
        raise ShapeError(f"{name} must be a scalar or have shape ({p},), got {s.shape}")
    if not np.isfinite(s).all():
        raise NonFiniteError(f"{name} contains NaN or Inf (first at index "
                             f"{int(np.flatnonzero(~np.isfinite(s))[0])})")
    if (s < 0).any():
        i = int(np.argmin(s))
        raise InputError(f"{name} must be >= 0 (a radius); {name}[{i}] = {s[i]:.6g}. Fix: pass "
                         f"abs({name})")
    return s


def check_k(k: int | None, p: int) -> int | None:
    """Cardinality ``k`` of eq. 4.2: ``None`` (box set) or an integer in ``[1, p]``."""
    if k is None:
        return None
    return check_scalar("k", k, kind=int, low=1, high=p,  # type: ignore[return-value]
                        why="the number of perturbed inputs of eq. 4.2; None for the box set")


def as_batch64(u: object, p: int, name: str = "u") -> np.ndarray:
    """Batch-first float64 ``(batch, p)`` copy of an input (``(p,)`` accepted)."""
    if isinstance(u, Tensor):
        a = u.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            a = np.asarray(u, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} must be numbers (a tensor or array of shape (batch, {p})), got "
                             f"{type(u).__name__} {str(u)[:40]!r}; pass a float tensor") from exc
    if a.ndim == 1 and a.shape[0] == p:
        a = a[None]
    elif a.ndim >= 2 and math.prod(a.shape[1:]) == p:
        a = a.reshape(a.shape[0], p)
    else:
        raise ShapeError(f"{name} must have shape (batch, {p}) or ({p},), got {a.shape}")
    if not np.isfinite(a).all():
        raise NonFiniteError(f"{name} contains NaN or Inf")
    return a


def top_k_sum(W: np.ndarray, k: int) -> np.ndarray:
    """``s_k`` of each row of a nonnegative ``W`` (sum of its ``k`` largest entries, eq. 4.4)."""
    if k >= W.shape[1]:
        return W.sum(axis=1)
    part = np.partition(W, W.shape[1] - k, axis=1)[:, W.shape[1] - k:]
    return part.sum(axis=1)
