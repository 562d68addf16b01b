"""Rank compression of implicit models (paper 000 §5.3-5.4; paper 001 §6.3 "Rank sparsity").

:func:`low_rank` replaces ``A`` by a rank-``k`` factorisation ``L R^T`` and returns a
:class:`~idlkit.compress.LowRankImplicitModel` (the ``k``-dimensional latent fixed point of
§5.3) with a :class:`RankReport`. Two ways of choosing ``L R^T``:

``"svd"``: the truncated SVD of ``A`` (Eckart-Young: the best rank-``k`` approximation in the
    spectral and Frobenius norms), by :meth:`LowRankImplicitModel.from_dense`.

``"balanced"``: a low-rank approximation weighted by the Gramians of the linearised system
    ``x+ = gamma (A x + B u)``, ``y = C x`` (the fixed-point map read as a discrete-time
    system, as in balanced truncation, with the activation replaced by its largest slope
    ``gamma``: 1 for CONE maps such as ReLU and tanh, where this is ``x+ = A x + B u``; 1/4 for
    the sigmoid). With ``A_g = gamma A``, ``B_g = gamma B`` and ``rho(A_g) < 1`` the Stein
    (discrete Lyapunov) equations

        P = A_g P A_g^T + B_g B_g^T,      Q = A_g^T Q A_g + C^T C                          (1)

    have PSD solutions (scipy.linalg.solve_discrete_lyapunov). Classical balanced truncation
    changes the state coordinates (``x -> T x``) and keeps ``k`` balanced states; that is not
    allowed here: the activation acts entrywise on the *original* state, and ``T`` mixes
    entries, so ``phi(T x) != T phi(x)``. What we keep instead is the state (all ``n``
    entries, original coordinates, so ``B, C, D``, the biases and ``phi`` are unchanged) and
    replace only ``A``, using the Gramians as weights. With ``W_c = P + eps I``,
    ``W_o = Q + eps I`` (``eps = ridge * trace / n`` of each, so the weights are invertible
    when ``(A, B)`` or ``(A, C)`` is not controllable/observable) and their symmetric square
    roots ``S_c = W_c^{1/2}``, ``S_o = W_o^{1/2}``, we solve

        min_{rank X <= k} || S_o (A - X) S_c ||_2                                        (2)

    exactly (Eckart-Young on ``M = S_o A S_c``): ``X = S_o^{-1} M_k S_c^{-1}``, split as
    ``L = S_o^{-1} U_k Sigma_k^{1/2}``, ``R = S_c^{-1} V_k Sigma_k^{1/2}``. The singular values of
    ``M`` play the part of the Hankel singular values (``sqrt(eig(P A^T Q A))``-type
    quantities): directions of ``A`` that the inputs excite little or the outputs see little
    are dropped first. It is never worse than ``"svd"`` in the weighted norm (2) (tested),
    and usually worse in the plain spectral norm. At ``k = n`` nothing is truncated and both
    methods return the SVD split of ``A`` itself (so the outputs are those of the dense
    model to rounding). When ``rho(gamma A) >= 1`` the Gramians do not exist:
    :class:`~idlkit.errors.ConfigurationError`. Every model certified by the PF condition has
    ``rho(gamma A) <= lambda_pf(gamma |A|) < 1``, as has every ``"inf"``-certified one
    (``rho <= ||.||_inf``); a ``"mu"``-certified ``A`` may not.

Well-posedness: the result declares ``wellposedness="pf"``: ``lambda_pf(gamma |R|^T |L|) <=
kappa`` (< 1), the certificate of the low-rank class (see :mod:`idlkit.compress.lowrank`; it
implies the dense one for ``L R^T`` and can be more conservative). The certificate depends on
the split of ``L R^T`` into factors: at full rank the exact split ``L = A``, ``R = I`` (whose
certificate is the dense ``lambda_pf(gamma |A|)``) is used when the SVD split fails
(:attr:`RankReport.split`). When the truncation still fails it, ``repair=True`` rescales
``L, R`` by ``sqrt(kappa / value)`` each (``L R^T`` is then scaled by ``kappa / value``:
reported in :attr:`RankReport.rescaled`); ``repair=False`` raises
:class:`~idlkit.errors.WellPosednessError` naming the rank, the value and the fixes. A repair
adds its own error, so the error of the returned model need not decrease with the rank (the
truncation's does: :attr:`RankReport.truncation_error`).

Error: :attr:`RankReport.relative_error` is ``||A - L R^T||_2 / ||A||_2`` of the *returned*
factors (after any repair); with inputs ``u``, :attr:`RankReport.state_bound` is Thm 5.1
(:func:`idlkit.robust.model_error_bound` with ``E = |A - L R^T|``): an entrywise bound on the
change of the state ``|x(L R^T) - x(A)|`` for those inputs.

Training: :func:`nuclear_norm` is the convex surrogate of the rank (sum of singular values,
differentiable), and :func:`rank_step` its proximal step (singular-value soft-thresholding)
followed by a return to the model's well-posedness set; paper 001 §6.3 suggests encouraging
a low rank of ``A`` but gives no algorithm: this is the standard proximal-gradient one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

from .. import wellposed as wp
from .._validation import all_finite, check_bool, check_int, check_scalar
from ..errors import ConfigurationError, NonFiniteError, ShapeError, WellPosednessError
from ..model import ImplicitModel
from .lowrank import LowRankImplicitModel

__all__ = ["RankReport", "low_rank", "nuclear_norm", "rank_step", "singular_value_threshold",
           "RANK_METHODS"]

RANK_METHODS = ("svd", "balanced")


@dataclass(frozen=True)
class RankReport:
    """What :func:`low_rank` did to ``A`` (float64 numbers).

    Attributes:
        rank: ``k`` kept.
        method: ``"svd"`` or ``"balanced"``.
        singular_values: all singular values of ``A`` (decreasing).
        weighted_singular_values: singular values of ``S_o A S_c`` (the matrix truncated by
            ``"balanced"``, module doc (2)); ``None`` for ``"svd"``.
        relative_error: ``||A - L R^T||_2 / ||A||_2`` of the returned factors (0 for ``A = 0``).
        truncation_error: the same before any repair (for ``"svd"``: ``sigma_{k+1} / sigma_1``).
        weighted_error: ``||S_o (A - X) S_c||_2`` of the truncation ``X`` before any repair, in
            the weights of ``"balanced"`` (``None`` for ``"svd"``).
        certificate: ``lambda_pf(gamma |R|^T |L|)`` of the returned factors.
        certificate_before: the same before any repair.
        kappa: the bound the certificate must meet (``< 1``).
        repaired: the factors were rescaled onto ``kappa``.
        rescaled: the factor applied to ``L`` and to ``R`` (1.0 when not repaired).
        state_bound: Thm 5.1 bound ``(batch, n)`` on ``|x(L R^T) - x(A)|`` for the given ``u``
            (``None`` without ``u``, or when Thm 5.1 does not apply: see ``state_bound_note``).
        state_bound_note: why ``state_bound`` is ``None`` when ``u`` was given.
        split: how ``L R^T`` was split into factors: ``"sqrt"`` (``L = U_k Sigma_k^{1/2}``,
            ``R = V_k Sigma_k^{1/2}`` of the truncated SVD, weighted for ``"balanced"``) or
            ``"identity"`` (full rank only: ``L = A``, ``R = I``, chosen when the sqrt split
            fails the certificate and ``lambda_pf(gamma |A|) <= kappa``; exact, and its
            certificate is the dense PF one). Positive diagonal rescalings of a split leave the
            certificate unchanged, so no other diagonal choice can help.
    """

    rank: int
    method: str
    singular_values: tuple[float, ...]
    weighted_singular_values: tuple[float, ...] | None
    relative_error: float
    truncation_error: float
    weighted_error: float | None
    certificate: float
    certificate_before: float
    kappa: float
    repaired: bool
    rescaled: float
    state_bound: Tensor | None = None
    state_bound_note: str | None = None
    split: str = "sqrt"

    @property
    def max_state_bound(self) -> float | None:
        """``max |x(L R^T) - x(A)|`` bound over the batch and states (``None`` without a bound)."""
        return None if self.state_bound is None else float(self.state_bound.max())

    def __str__(self) -> str:
        lines = [f"rank-{self.rank} approximation of A ({self.method}): relative spectral error "
                 f"{self.relative_error:.4g}",
                 f"  certificate lambda_pf(gamma |R|^T |L|) = {self.certificate:.6g} "
                 f"(kappa {self.kappa:g})"
                 + (f", repaired from {self.certificate_before:.6g} by rescaling L, R by "
                    f"{self.rescaled:.6g}" if self.repaired else "")]
        if self.state_bound is not None:
            lines.append(f"  Thm 5.1: max |x(L R^T) - x(A)| <= {self.max_state_bound:.4g}")
        elif self.state_bound_note is not None:
            lines.append(f"  Thm 5.1: {self.state_bound_note}")
        return "\n".join(lines)


def _dense64(M: Tensor) -> np.ndarray:
    M = M.detach()
    if M.layout != torch.strided:
        M = M.to_dense()
    return M.to("cpu", torch.float64).numpy()


def _sqrt_psd(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric square root of an SPD matrix and its inverse (by ``eigh``)."""
    w, V = np.linalg.eigh((W + W.T) / 2)
    w = np.maximum(w, np.finfo(np.float64).tiny)
    s = np.sqrt(w)
    return (V * s) @ V.T, (V / s) @ V.T


def balanced_weights(A: np.ndarray, B: np.ndarray, C: np.ndarray, gamma: float = 1.0,
                     ridge: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """``(S_o, S_c)``: square roots of the regularised Gramians of module doc (1).

    ``W_c = P + eps_c I``, ``W_o = Q + eps_o I`` with ``eps = ridge * max(trace / n, tiny)``.
    Raises :class:`ConfigurationError` when ``rho(gamma A) >= 1`` (no Gramians).
    """
    n = A.shape[0]
    Ag, Bg = gamma * A, gamma * B
    rho = float(np.abs(np.linalg.eigvals(Ag)).max()) if n else 0.0
    if not rho < 1:
        raise ConfigurationError(
            f"method='balanced' needs the Gramians of x+ = gamma (A x + B u), y = C x, which "
            f"exist only for rho(gamma A) < 1; got rho(gamma A) = {rho:.6g} (gamma = {gamma:g}). "
            f"Use method='svd', or make A contractive first (declare wellposedness='pf' and "
            f"call model.project_())")
    P = scipy.linalg.solve_discrete_lyapunov(Ag, Bg @ Bg.T)
    Q = scipy.linalg.solve_discrete_lyapunov(Ag.T, C.T @ C)

    def reg(W: np.ndarray) -> np.ndarray:
        W = (W + W.T) / 2
        eps = ridge * max(float(np.trace(W)) / n, 1e-300)
        return W + eps * np.eye(n)

    S_o, _ = _sqrt_psd(reg(Q))
    S_c, _ = _sqrt_psd(reg(P))
    return S_o, S_c


def _check_model(model: object, who: str) -> ImplicitModel:
    if not isinstance(model, ImplicitModel):
        raise ConfigurationError(f"{who} expects an idlkit.ImplicitModel, got "
                                 f"{type(model).__name__}; convert a torch network first with "
                                 f"idlkit.convert.from_torch")
    if model.hidden == 0:
        raise ConfigurationError(f"{who} needs a model with hidden >= 1 (hidden = 0 is a static "
                                 f"affine map with no A)")
    return model


def low_rank(model: ImplicitModel, rank: int, method: str = "svd", repair: bool = True, *,
             u: Tensor | None = None, kappa: float | None = None, ridge: float = 1e-8,
             **solver_kwargs: object) -> tuple[LowRankImplicitModel, RankReport]:
    """Rank-``k`` compression of ``A``: a :class:`LowRankImplicitModel` with ``A ~ L R^T``.

    Args:
        model: a dense or sparse :class:`~idlkit.ImplicitModel` with a componentwise
            activation and ``hidden = n >= 1``.
        rank: ``k`` in ``[1, n]``.
        method: ``"svd"`` (truncated SVD) or ``"balanced"`` (Gramian-weighted truncation in
            the original state coordinates; module doc).
        repair: rescale ``L, R`` onto ``lambda_pf(gamma |R|^T |L|) <= kappa`` when the
            truncation fails it (reported), instead of raising.
        u: optional inputs ``(batch, p)``: the report then carries the Thm 5.1 bound on the
            state change.
        kappa: bound of the certificate (default: the model's ``kappa``).
        ridge: relative regularisation of the Gramians (``"balanced"`` only).
        solver_kwargs: solver settings of the result (default: the model's).

    Returns:
        ``(low_rank_model, report)``; the model declares ``wellposedness="pf"``.

    Raises:
        ConfigurationError: not an ImplicitModel, rank outside ``[1, n]``, unknown method,
            block activation, ``rho(A) >= 1`` with ``"balanced"``.
        NonFiniteError: NaN/Inf in ``A`` (or in ``B``, ``C`` for ``"balanced"``).
        WellPosednessError: ``repair=False`` and the certificate fails.

    Examples:
        >>> m = idlkit.ImplicitModel(3, 8, 2, wellposedness="pf", dtype=torch.float64)
        >>> small, rep = low_rank(m, 4)
        >>> small.rank, rep.relative_error <= 1
        (4, True)
    """
    model = _check_model(model, "low_rank")
    n = model.hidden
    rank = check_int("rank", rank, 1)
    if rank > n:
        raise ConfigurationError(f"rank must satisfy 1 <= rank <= hidden = {n}, got {rank}; "
                                 f"rank = {n} keeps A exactly")
    if method not in RANK_METHODS:
        raise ConfigurationError(f"method must be one of {list(RANK_METHODS)}, got {method!r}")
    repair = check_bool("repair", repair)
    kappa = model.kappa if kappa is None else wp.check_kappa(kappa)
    ridge = float(check_scalar("ridge", ridge, low=0.0, low_inclusive=False))
    A = _dense64(model.A)
    if not np.isfinite(A).all():
        raise NonFiniteError("the model's A has NaN/Inf entries: it has no low-rank approximation; "
                             "repair A or load an earlier checkpoint")
    # the truncated SVD (and the solver settings, B, C, D copies) from from_dense, unchecked:
    out = LowRankImplicitModel.from_dense(model, rank, wellposedness=None, kappa=kappa,
                                          **solver_kwargs)
    appr = out.approximation
    assert appr is not None
    sv = appr.singular_values
    wsv: tuple[float, ...] | None = None
    werr: float | None = None
    if method == "balanced":
        B, C = _dense64(model.B), _dense64(model.C)
        if not (np.isfinite(B).all() and np.isfinite(C).all()):
            raise NonFiniteError("B or C has NaN/Inf entries: the Gramians are undefined")
        S_o, S_c = balanced_weights(A, B, C, out.gamma, ridge)
        M = S_o @ A @ S_c
        U, S, Vt = np.linalg.svd(M)
        wsv = tuple(float(x) for x in S)
        if rank < n:
            sq = np.sqrt(S[:rank])
            L64 = np.linalg.solve(S_o, U[:, :rank] * sq)
            R64 = np.linalg.solve(S_c, Vt[:rank].T * sq)
            with torch.no_grad():
                out.L.copy_(torch.from_numpy(L64))
                out.R.copy_(torch.from_numpy(R64))
            out._wp_cache = None
        X = _dense64(out.dense_matrix())
        werr = float(np.linalg.norm(S_o @ (A - X) @ S_c, 2))
    norm_a = float(sv[0]) if sv else 0.0

    def rel_err() -> float:
        E = A - _dense64(out.dense_matrix())
        return float(np.linalg.norm(E, 2)) / norm_a if norm_a > 0 else float(np.abs(E).max())

    trunc_err = rel_err()
    before = out._pf_value()
    scale = 1.0
    slack = 1 + 1e-12 if out.L.dtype == torch.float64 else 1 + 1e-5
    split = "sqrt"
    if not before <= kappa * slack and rank == n:
        # at full rank L = A, R = I is exact too, and its certificate is the dense one,
        # lambda_pf(gamma |A|) <= lambda_pf(gamma |R|^T |L|) of any split (module doc of lowrank)
        if out.gamma * wp.pf_eigenvalue(np.abs(A)) <= kappa * slack:
            with torch.no_grad():
                out.L.copy_(torch.from_numpy(A))
                out.R.copy_(torch.eye(n, dtype=torch.float64))
            out._wp_cache = None
            split, before = "identity", out._pf_value()
    if not before <= kappa * slack:
        if not repair:
            raise WellPosednessError(
                f"the rank-{rank} {method} truncation of A violates the low-rank certificate: "
                f"lambda_pf(gamma |R|^T |L|) = {before:.6g} > kappa = {kappa:g} (relative "
                f"spectral error {trunc_err:.3g}). Fix: pass repair=True to rescale L, R onto "
                f"kappa (changes the model), a larger rank (rank = {n} keeps A), the other "
                f"method, or a larger kappa (< 1)")
        scale = math.sqrt(kappa / before)
        out.project_(kappa)
    out.wellposedness = "pf"
    out.kappa = kappa
    out._wp_cache = None
    after = out._pf_value()
    out._check_wellposed()
    # from_dense's record describes the plain SVD split: keep it (updated) for "svd" only
    out.approximation = (None if method == "balanced" else
                         dataclasses.replace(appr, pf=before, rescaled=scale))
    bound, note = None, None
    if u is not None:
        bound, note = _state_bound(model, A - _dense64(out.dense_matrix()), u)
    report = RankReport(rank=rank, method=method, singular_values=sv, weighted_singular_values=wsv,
                        relative_error=rel_err(), truncation_error=trunc_err, weighted_error=werr,
                        certificate=after, certificate_before=before, kappa=kappa,
                        repaired=scale != 1.0, rescaled=scale, state_bound=bound,
                        state_bound_note=note, split=split)
    return out, report


def _state_bound(model: ImplicitModel, E: np.ndarray, u: Tensor) -> tuple[Tensor | None, str | None]:
    from ..robust import model_error_bound  # robust imports model; imported late, on use

    try:
        return model_error_bound(model, torch.from_numpy(np.abs(E)), u), None
    except WellPosednessError as exc:
        return None, f"Thm 5.1 does not apply: {exc}"


def nuclear_norm(A: Tensor | nn.Module) -> Tensor:
    """Nuclear norm ``||A||_* = sum_i sigma_i(A)``, differentiable (a 0-d tensor).

    The convex envelope of ``rank`` on the spectral-norm ball: add ``lam * nuclear_norm(model)``
    to a training loss to encourage a low-rank ``A`` (paper 001 §6.3). Its gradient is
    ``U V^T`` (thin SVD) where ``A`` has distinct nonzero singular values; at a rank-deficient
    ``A`` the norm is not differentiable and autograd returns one subgradient. For an exact
    zero, prefer the proximal :func:`rank_step`.

    Args:
        A: an ``(n, n)`` (or ``(m, n)``) tensor, a model with a dense ``A`` parameter, or a
            :class:`LowRankImplicitModel` (the norm of ``L R^T``, differentiable in ``L, R``).

    Examples:
        >>> nuclear_norm(torch.diag(torch.tensor([3.0, -2.0])))
        tensor(5.)
    """
    if isinstance(A, LowRankImplicitModel):
        M: object = A.L @ A.R.t()
    else:
        M = A.A if isinstance(A, nn.Module) and hasattr(A, "A") else A
    if not isinstance(M, Tensor) or M.dim() != 2:
        raise ShapeError(f"nuclear_norm expects a 2-D tensor or a model with a matrix A, got "
                         f"{getattr(M, 'shape', type(M).__name__)}")
    if M.layout != torch.strided:
        raise ConfigurationError("nuclear_norm needs a dense A; a sparse (frozen) A is not trained")
    if not all_finite(M):
        raise NonFiniteError("nuclear_norm: the matrix has NaN/Inf entries (check the last step)")
    return torch.linalg.matrix_norm(M, ord="nuc")


def singular_value_threshold(A: Tensor, lam: float) -> Tensor:
    """The proximal operator of ``lam ||.||_*``: ``U diag(max(s - lam, 0)) V^T`` for the thin
    SVD ``A = U diag(s) V^T`` (singular-value soft-thresholding; paper 001 §6.3's rank
    sparsity), in float64; ``(m, n) -> (m, n)``. Every singular value ``<= lam`` becomes exactly
    zero, so the rank of the result is the number of ``s_i > lam``.

    Args:
        A: ``(m, n)`` matrix.
        lam: the threshold ``>= 0``.

    Returns:
        ``(m, n)`` float64 tensor of rank ``#{s_i > lam}``.

    Examples:
        >>> singular_value_threshold(torch.diag(torch.tensor([3.0, 0.5])), 1.0)
        tensor([[2., 0.],
                [0., 0.]], dtype=torch.float64)
    """
    U, S, Vh = torch.linalg.svd(A.detach().to(torch.float64), full_matrices=False)
    return (U * torch.clamp(S - float(lam), min=0.0)) @ Vh


def _numerical_rank(A: Tensor) -> int:
    S = torch.linalg.svdvals(A.detach().to(torch.float64))
    if S.numel() == 0 or float(S[0]) == 0.0:
        return 0
    tol = max(A.shape) * float(torch.finfo(A.dtype).eps) * float(S[0]) * 10
    return int((S > tol).sum())


def rank_step(model: ImplicitModel | LowRankImplicitModel, lam: float) -> int:
    """One proximal step of ``lam ||A||_*`` on ``model.A`` in place, then back to the
    well-posedness set; returns the new (numerical) rank of ``A``.

    ``A = U diag(s) V^T  ->  U diag(max(s - lam, 0)) V^T`` (singular-value soft-thresholding,
    the proximal operator of ``lam ||.||_*``; after a gradient step of size ``t`` pass
    ``lam = t * penalty``). Every singular value ``<= lam`` becomes exactly zero: the rank
    drops. Then the declared condition is restored: for ``"inf"``, ``"mu"`` and ``"pf"``
    (positively homogeneous values ``v(A)``) by the rescaling ``A <- A kappa / v(A)`` when
    ``v(A) > kappa``, which keeps the rank (the Euclidean projections of ``"inf"``/``"mu"``
    act row by row and would raise it again); for ``"triangular"`` by the model's own
    projection (zeroing the lower part; the rank may then change, and the returned value is
    measured after it); with ``None`` nothing is enforced. Shrinking singular values lowers
    ``||A||_2`` but can raise ``lambda_pf(|A|)`` and ``mu_inf(A)`` (examples in the tests), so
    the rescaling is sometimes needed.

    A :class:`LowRankImplicitModel` is thresholded in its factors: ``L R^T = Q_L (T_L T_R^T)
    Q_R^T`` (thin QRs), the ``k x k`` SVD of ``T_L T_R^T`` is soft-thresholded and split as
    ``L = Q_L U sqrt(s')``, ``R = Q_R V sqrt(s')`` (zero columns for the dropped values: the
    shapes stay ``(n, k)``, ``O(n k^2)``), then :meth:`LowRankImplicitModel.project_` rescales
    onto ``lambda_pf(gamma |R|^T |L|) <= kappa`` (which keeps the rank).

    Args:
        model: a dense :class:`~idlkit.ImplicitModel` (a sparse ``A`` is frozen) or a
            :class:`LowRankImplicitModel`.
        lam: threshold ``>= 0``.

    Returns:
        the rank of the new ``A`` (singular values above ``10 n eps sigma_1`` in its dtype).

    Examples:
        >>> m = idlkit.ImplicitModel(2, 6, 1, wellposedness="inf", dtype=torch.float64)
        >>> rank_step(m, 1e9)
        0
    """
    if isinstance(model, LowRankImplicitModel):
        return _rank_step_factors(model, float(check_scalar("lam", lam, low=0.0)))
    model = _check_model(model, "rank_step")
    lam = float(check_scalar("lam", lam, low=0.0))
    if model.sparse:
        raise ConfigurationError("rank_step needs a dense A: a sparse A is a frozen buffer; build the "
                                 "model dense to train its rank")
    A = model.A
    if not all_finite(A):
        raise NonFiniteError("A has NaN/Inf entries (the last optimizer step diverged): lower the "
                             "learning rate or restore a checkpoint")
    with torch.no_grad():
        A_new = singular_value_threshold(A, lam)
        kind, act, kappa = model.wellposedness, model.activation, model.kappa
        value = None
        if kind == "inf":
            value = float(act.lipschitz_inf) * float(A_new.abs().sum(dim=1).max())
        elif kind == "mu":
            value = float(act.lipschitz) * wp.mu_inf(A_new)  # type: ignore[attr-defined]
        elif kind == "pf":
            value = float(act.lipschitz) * wp.pf_eigenvalue(A_new.abs())  # type: ignore[attr-defined]
        if value is not None and value > kappa:
            A_new = A_new * (kappa / value * (1 - 8 * float(torch.finfo(A.dtype).eps)))
        A.copy_(A_new.to(A.dtype))
        if kind == "triangular":
            model.project_()
    return _numerical_rank(model.A)


def _rank_step_factors(model: LowRankImplicitModel, lam: float) -> int:
    """:func:`rank_step` on the factors of a low-rank model (see there)."""
    L, R = model.L, model.R
    if not (all_finite(L) and all_finite(R)):
        raise NonFiniteError("L or R has NaN/Inf entries (the last optimizer step diverged): lower "
                             "the learning rate or restore a checkpoint")
    with torch.no_grad():
        Ql, Tl = torch.linalg.qr(L.detach().to(torch.float64))
        Qr, Tr = torch.linalg.qr(R.detach().to(torch.float64))
        U, S, Vh = torch.linalg.svd(Tl @ Tr.t())
        S = torch.clamp(S - lam, min=0.0)
        sq = S.sqrt()
        L.copy_(((Ql @ U) * sq).to(L.dtype))
        R.copy_(((Qr @ Vh.t()) * sq).to(R.dtype))
        model._wp_cache = None
        model.project_()
    if float(S[0]) == 0.0:
        return 0
    tol = 10 * model.hidden * float(torch.finfo(L.dtype).eps) * float(S[0])
    return int((S > tol).sum())
