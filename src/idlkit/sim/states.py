"""State extraction for SIM: ``(Z, X, Y_hat)`` of a baseline, rescaled (paper 002 §3).

Convention: **batch-first**, as :func:`idlkit.convert.states`: ``Z, X`` are ``(m, n)``,
``U`` is ``(m, p)`` (flattened), ``Y_hat`` is ``(m, q)``. Paper 002 writes the transposes
(one column per data point, ``Z = A X + B U`` in eq. 2b); here the same equations read
``Z = X A^T + U B^T + b``. The state is stacked last layer on top, ``x = (x_L; ...; x_1)``
(paper 002 §3), in exactly the order of :func:`idlkit.convert.from_torch`'s state.

Rescaling (paper 002 §3, Thm 2.4). Let ``s = max(1, gamma * max_l ||W_l||_inf)`` where the
``W_l`` are the baseline's layer matrices, read off its exact implicit form ``(A, B, C)`` from
:func:`idlkit.convert.from_torch` (for a chain ``W_0 = B``, ``W_1 .. W_{L-1}`` are the
blocks of ``A``, ``W_L = C``; so ``max_l ||W_l||_inf = max(||A||_inf, ||B||_inf, ||C||_inf)``).
Dividing every weight by ``s`` (and the bias of depth-``d`` layers by ``s^d``) divides the
depth-``d`` states by ``s^d``: we compute this directly on the states, ``Z'_i = c_i Z_i``,
``X'_i = c_i X_i`` with ``c_i = s^{-d_i}``, where ``d_i`` is the longest-path depth of state
``i`` in the graph of ``A`` (``d_i = 1 + max{d_j : A_ij != 0}``, 1 for a state fed by the
input only). ``Y_hat`` is the baseline's output, unscaled (the output map absorbs the scale:
``C' = C diag(c)^{-1}``, unconstrained in SIM), so a SIM model fitted to the scaled states
predicts the baseline's own outputs.

**Feasibility (positively homogeneous phi: ReLU, LeakyReLU, identity, max pooling).**
Let ``(A, B, C, D, b, d)`` be the exact implicit form and ``Dc = diag(c)``. Then
``A' = Dc A Dc^{-1}``, ``B' = Dc B``, ``b' = Dc b``, ``C' = C Dc^{-1}``, ``D' = D``,
``d' = d`` match the scaled states exactly: ``Z' = Dc Z = Dc (A X + B U + b) = A' X' + B' U
+ b'``; ``X' = Dc phi(Z) = phi(Dc Z) = phi(Z')`` since ``phi`` is positively homogeneous and
``c`` is constant on each of its blocks (depths are computed per BLIP block, so a max-pool
window shares one factor); ``C' X' + D' U + d' = C X + D U + d = Y_hat``. For ``A_ij != 0``,
``d_i - d_j >= 1`` and ``s >= 1``, so ``|A'_ij| = s^{-(d_i - d_j)} |A_ij| <= |A_ij| / s`` and
``||A'||_inf <= ||A||_inf / s <= 1 / gamma < kappa`` whenever ``gamma > 1 / kappa`` (the
default ``gamma = 1.01 / kappa``). Hence problem (2) of paper 002 is strictly feasible. (The
clamp ``s >= 1`` only matters when all weights are small, where ``||A||_inf <= 1/gamma``
already holds unscaled; it avoids magnifying states, for which the bound above would fail
on skip connections with ``d_i - d_j >= 2``.)

**Non-homogeneous phi (tanh, sigmoid, softmax).** No linear rescaling of the states keeps
``X = phi(Z)`` (``tanh(c z) != c tanh(z)``), and Thm 2.4 does not apply: ``rescale=True``
raises :class:`~idlkit.errors.InputError`. With ``rescale=False`` the states are exact and
the converter's matrices still match them exactly (A strictly block upper triangular, so the
matched model is well-posed, paper 000 Thm 2.8), but ``||A||_inf <= kappa`` may fail.

**ImplicitModel baselines.** ``X`` is the fixed point, ``Z = X A^T + U B^T + b``. With
``rescale=True`` and ``||A||_inf >= kappa``, the states are scaled by ``c = 1 / v`` with
``v > 0`` a Perron vector of ``|A| + eps 11^T`` (Thm 2.4's proof): then
``||Dc A Dc^{-1}||_inf = max_i (|A| v)_i / v_i``, about ``lambda_pf(|A|)``; this needs a
positively homogeneous ``phi`` and ``lambda_pf(|A|) < kappa``, else a typed error is raised.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from .._matrix import as_matrix, to_dense
from .._validation import all_finite, check_choice, check_kappa, check_scalar
from ..activations import Activation, BlockMax, block_activations
from ..errors import InputError, NonFiniteError, ShapeError, WellPosednessError
from ..model import ImplicitModel

__all__ = ["States", "extract_states"]


@dataclass(frozen=True)
class States:
    """States of a baseline on inputs ``U`` (paper 002 §3), batch-first.

    Attributes:
        Z: pre-activation states ``(m, n)``, scaled: ``Z = Z_raw * scale``.
        X: post-activation states ``(m, n)``, ``X = phi(Z)``, scaled likewise.
        Y_hat: the baseline's outputs ``(m, q)`` (never scaled).
        U: the inputs, flattened to ``(m, p)``, in the states' dtype.
        scale: per-state factors ``c`` (``(n,)``, float64, ``c_i = s^{-d_i}``; ones without
            rescaling). The scaled implicit form is ``A' = diag(c) A diag(c)^{-1}``,
            ``B' = diag(c) B``, ``b' = c * b``, ``C' = C diag(c)^{-1}``.
        divisor: ``s`` the weights were divided by (1.0 without rescaling or for an
            ImplicitModel baseline).
        gamma, kappa: the rescaling parameters used (``gamma`` is None without rescaling).
        activation: ``phi`` on the stacked state (blockwise), so that ``X = phi(Z)``.
        baseline_nnz: nonzero parameters of the baseline, ``||N||_0`` in paper 002's
            sparsity ``(1 - ||M||_0 / ||N||_0) * 100`` (§4.1).
        depth: per-state longest-path depth ``d_i`` (layered baselines; None otherwise).
    """

    Z: Tensor
    X: Tensor
    Y_hat: Tensor
    U: Tensor
    scale: Tensor
    divisor: float
    gamma: float | None
    kappa: float
    activation: Activation
    baseline_nnz: int
    depth: Tensor | None = None

    @property
    def n(self) -> int:
        return self.X.shape[1]

    @property
    def m(self) -> int:
        return self.X.shape[0]


def _homogeneous(act: Activation, n: int) -> tuple[bool, list[tuple[int, Activation]]]:
    blocks = block_activations(act, n)
    return all(a.positively_homogeneous or isinstance(a, BlockMax) for _, a in blocks), blocks


def _net_dtype(net: nn.Module) -> torch.dtype:
    for t in list(net.parameters()) + list(net.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _net_device(net: nn.Module) -> torch.device:
    for t in list(net.parameters()) + list(net.buffers()):
        return t.device
    return torch.device("cpu")


def _inf_norm(M: Tensor) -> float:
    if M.numel() == 0:
        return 0.0
    M = to_dense(M.detach())
    return float(M.abs().sum(dim=1).max()) if M.shape[1] else 0.0


def _depths(A: Tensor, blocks: list[tuple[int, Activation]]) -> np.ndarray:
    """Longest-path depth of each state in the graph of the strictly upper triangular ``A``
    (state ``i`` depends on ``j > i``), constant on each BLIP block."""
    n = A.shape[0]
    M = sp.csr_array(as_matrix(A, dtype=None), copy=True)  # a private copy: pruned in place
    M.eliminate_zeros()
    depth = np.zeros(n, dtype=np.int64)
    ends = np.cumsum([s for s, _ in blocks])
    for k in range(len(blocks) - 1, -1, -1):
        r1 = int(ends[k])
        r0 = r1 - blocks[k][0]
        cols = M.indices[M.indptr[r0]:M.indptr[r1]]
        if cols.size and cols.min() < r1:
            raise InputError("the baseline's implicit form is not strictly block upper triangular; "
                             "pass rescale=False")  # pragma: no cover - converter guarantees it
        depth[r0:r1] = 1 + (int(depth[cols].max()) if cols.size else 0)
    return depth


def _check_kappa_gamma(kappa: float, gamma: float | None) -> float:
    kappa = check_kappa(kappa, high_inclusive=True, example=0.99, why="paper 002 uses 0.99")
    if gamma is None:
        return 1.01 / kappa
    # gamma * kappa > 1, so that ||A'||_inf <= 1/gamma < kappa
    return check_scalar("gamma", gamma, low=1.0 / kappa, low_inclusive=False, example=1.01 / kappa,
                        why=f"gamma * kappa > 1 with kappa={kappa:g} makes ||A'||_inf <= 1/gamma < "
                            f"kappa; leave gamma=None for 1.01 / kappa")


def _check_dtype(dtype: torch.dtype | None) -> None:
    check_choice("dtype", dtype, (None, torch.float32, torch.float64))


def _nnz(tensors: list[Tensor | None]) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        if t.layout == torch.sparse_csr:
            total += int(torch.count_nonzero(t.values()))
        else:
            total += int(torch.count_nonzero(t.detach()))
    return total


def _check_finite(**arrays: Tensor) -> None:
    for name, t in arrays.items():
        if not all_finite(t):
            raise NonFiniteError(f"{name} of the baseline contains NaN or Inf; check the network's "
                                 f"weights and the inputs (scale U, or use float64)")


def extract_states(baseline: nn.Module, U: Tensor, *, dtype: torch.dtype | None = None,
                   rescale: bool = True, kappa: float = 0.99, gamma: float | None = None) -> States:
    """``(Z, X, Y_hat)`` of a layered network or an :class:`~idlkit.ImplicitModel` (paper 002 §3).

    Args:
        baseline: a torch network traceable by :func:`idlkit.convert.from_torch` (biases,
            module or functional activations ``F.relu``/``torch.relu`` inside ``forward``,
            convolutions, pooling, ...; eval mode for batch norm/dropout), or an ImplicitModel
            (its states are the fixed point). It is never modified: states are computed under
            ``torch.no_grad()``, and a dtype change works on a deep copy.
        U: inputs, batch-first ``(m, *input_dims)`` (``(m, p)`` for an ImplicitModel).
        dtype: float32 or float64; default the baseline's parameter dtype.
        rescale: apply paper 002 §3's rescaling (see the module docstring for the proof of
            exact feasibility with ``||A'||_inf <= 1/gamma < kappa``).
        kappa: well-posedness bound of the later matching problem, in (0, 1].
        gamma: the paper's ``gamma``; must satisfy ``gamma * kappa > 1``; default ``1.01 / kappa``.

    Returns:
        :class:`States` (batch-first, state order of :func:`idlkit.convert.states`).

    Raises:
        ConfigurationError: kappa outside (0, 1], bad gamma or dtype.
        ShapeError: ``U`` of the wrong shape for the baseline.
        InputError: no activation (no state to match), or ``rescale=True`` with a
            non-positively-homogeneous activation.
        NonFiniteError: NaN/Inf in ``U`` or in the states or outputs.
        WellPosednessError: an ImplicitModel with ``lambda_pf(|A|) >= kappa`` and ``rescale=True``.
        ConversionError: a network the converter cannot trace.
    """
    _check_dtype(dtype)
    g = _check_kappa_gamma(kappa, gamma)
    if not isinstance(baseline, nn.Module):
        raise InputError(f"baseline must be a torch.nn.Module or an ImplicitModel, got "
                         f"{type(baseline).__name__}")
    if not isinstance(U, Tensor):
        raise InputError(f"U must be a torch.Tensor (m, *input_dims), got {type(U).__name__}")
    if not U.is_floating_point():
        raise InputError(f"U must be a floating tensor, got {U.dtype}; pass U.double() or U.float()")
    if U.dim() < 2 or U.shape[0] == 0:
        raise ShapeError(f"U must be batch-first (m, *input_dims) with m >= 1, got shape {tuple(U.shape)}; "
                         f"for a single input use U[None]")
    if not all_finite(U):
        raise NonFiniteError("U contains NaN or Inf; clean or impute the inputs first")
    net_dtype = _net_dtype(baseline)
    dt = dtype or net_dtype
    net = baseline if dt == net_dtype else copy.deepcopy(baseline).to(dt)
    U = U.detach().to(device=_net_device(net), dtype=dt)
    if isinstance(baseline, ImplicitModel):
        return _implicit(net, U, rescale, kappa, g)  # type: ignore[arg-type]
    return _layered(net, U, rescale, kappa, g)


def _layered(net: nn.Module, U: Tensor, rescale: bool, kappa: float, gamma: float) -> States:
    from .. import convert

    with torch.no_grad():
        try:
            Y = net(U)
        except RuntimeError as e:
            raise ShapeError(f"the baseline cannot run on U of shape {tuple(U.shape)} ({e}); U must be "
                             f"batch-first (m, *input_dims) as the network expects") from e
        if not isinstance(Y, Tensor):
            raise InputError(f"the baseline must return one tensor, got {type(Y).__name__}")
        Z, X = convert.states(net, U)
        if Z.shape[1] == 0:
            raise InputError("the baseline has no activation, so it has no hidden state to match (SIM "
                             "needs pre/post-activation states); fit its linear map directly instead")
        model = convert.from_torch(net, U[:1], sparse="auto")
    Y = Y.detach().reshape(U.shape[0], -1)
    Uf = U.reshape(U.shape[0], -1)
    _check_finite(Z=Z, X=X, Y_hat=Y)
    n = Z.shape[1]
    act = model.activation
    nnz = _nnz(list(net.parameters()))
    ones = torch.ones(n, dtype=torch.float64)
    if not rescale:
        return States(Z, X, Y, Uf, ones, 1.0, None, float(kappa), act, nnz)
    homog, blocks = _homogeneous(act, n)
    if not homog:
        raise InputError(f"rescale=True needs a positively homogeneous activation (ReLU, LeakyReLU, max "
                         f"pooling): phi = {act!r} is not, and no linear rescaling keeps X = phi(Z) "
                         f"(paper 002 Thm 2.4); pass rescale=False for the exact, unscaled states")
    w = max(_inf_norm(model.A), _inf_norm(model.B), _inf_norm(model.C))
    s = max(1.0, gamma * w)
    depth = _depths(model.A, blocks)
    scale = torch.from_numpy(np.exp(-depth * math.log(s)))
    c = scale.to(dtype=Z.dtype, device=Z.device)
    Zs, Xs = Z * c, X * c
    _check_finite(Z=Zs, X=Xs)
    return States(Zs, Xs, Y, Uf, scale, s, gamma, float(kappa), act, nnz, torch.from_numpy(depth))


def _perron(A: np.ndarray, iters: int = 2000, tol: float = 1e-13) -> np.ndarray:
    """A positive vector ``v`` with ``(|A| v)_i / v_i`` near ``lambda_pf(|A|)`` (power iteration on
    ``|A| + eps 11^T``, which is positive hence has a positive Perron vector)."""
    n = A.shape[0]
    M = np.abs(A) + 1e-12 * max(np.abs(A).max(), 1.0) / n
    v = np.ones(n)
    for _ in range(iters):
        w = M @ v
        w /= w.max()
        if np.abs(w - v).max() < tol:
            v = w
            break
        v = w
    return v


def _implicit(model: ImplicitModel, U: Tensor, rescale: bool, kappa: float, gamma: float) -> States:
    if U.dim() != 2 or U.shape[1] != model.in_features:
        raise ShapeError(f"U must have shape (m, {model.in_features}) for this ImplicitModel, got "
                         f"{tuple(U.shape)}")
    n = model.hidden
    if n == 0:
        raise InputError("the ImplicitModel has hidden = 0: no state to match; fit its linear map directly")
    with torch.no_grad():
        X = model.equilibrium(U).detach()
        A, B = to_dense(model.A), to_dense(model.B)
        Z = X @ A.t() + U @ B.t()
        if model.b is not None:
            Z = Z + model.b
        Y = model(U).detach()
    _check_finite(Z=Z, X=X, Y_hat=Y)
    nnz = _nnz([model.A, model.B, model.C, model.D, model.b, model.d])
    act = model.activation
    ones = torch.ones(n, dtype=torch.float64)
    norm = _inf_norm(A)
    if not rescale or norm < kappa:
        return States(Z, X, Y, U, ones, 1.0, gamma if rescale else None, float(kappa), act, nnz)
    homog, _ = _homogeneous(act, n)
    if not homog:
        raise InputError(f"||A||_inf = {norm:.4g} >= kappa = {kappa} and phi = {act!r} is not positively "
                         f"homogeneous, so the states cannot be rescaled (paper 002 Thm 2.4); pass "
                         f"rescale=False or a larger kappa")
    Ad = A.detach().cpu().double().numpy()
    v = _perron(Ad)
    achieved = float(((np.abs(Ad) @ v) / v).max())
    if not achieved < kappa:
        raise WellPosednessError(f"lambda_pf(|A|) ~= {achieved:.4g} >= kappa = {kappa}: no diagonal "
                                 f"rescaling of the states gives ||A'||_inf <= kappa; raise kappa (<= 1) "
                                 f"or pass rescale=False")
    scale = torch.from_numpy(1.0 / v)
    if not all(scale.isfinite()):
        raise NonFiniteError("the Perron rescaling overflowed (|A| nearly reducible); pass rescale=False")
    c = scale.to(dtype=Z.dtype, device=Z.device)
    return States(Z * c, X * c, Y, U, scale, 1.0, gamma, float(kappa), act, nnz)
