"""Robust training by convex relaxations (paper 001 §5): ``robust_fit``.

``robust_fit(model, (U, Y), sigma_u, method)`` trains a ReLU :class:`~idlkit.ImplicitModel` in
place for the input set ``{u : |u - u_hat| <= sigma_u}`` around every training input (eq. 16)
and returns a frozen :class:`RobustFitResult`. The methods (:data:`ROBUST_METHODS`):

* ``"counterpart"`` (§5.3, eq. 18): interval states that satisfy the robust counterpart of the
  LP relaxation for every input of the set, and the worst-case cross entropy over them
  (:mod:`idlkit.train.robust_convex` derives both, and why eq. 18 as printed needs the lower
  state and the sign split of ``A`` to be a certificate).
* ``"lp"`` (§5.2, eq. 17): the same relaxation at the nominal inputs only (``sigma = 0`` inside
  training: the interval collapses to the equilibrium, the loss to the nominal cross entropy).
  The non-robust member of the family: ``sigma_u`` is used for the reported certificate only.
* ``"recourse"`` (§5.4): the states are affine in the perturbation, ``x(u) in [lo, hi] + R (u -
  u_hat)``, with ``R`` trained in the state block; §5.4's ``|A R - R + B| sigma`` and ``|C R|``
  terms appear in the constraints and in the loss.
* ``"adversarial"``: training on attacks (:func:`idlkit.train.adversarial.adversarial_fit`, FGSM /
  PGD / LP attack), the baseline every certified method is compared with.

**Alternating convex blocks** (§5.4, "each step is convex"). With the states fixed, the model
block ``(A, B, b, C, D, d)`` is a convex program (an exponential-cone program: log-sum-exp of
convex margins, ``||A||_inf <= kappa``), solved by cvxpy/Clarabel; with the model fixed, the
state block is convex too, and for the counterpart its minimiser is the fixed point of a monotone
interval map (computed exactly; the cvxpy LP is its test reference). ``solver="first_order"``
(MNIST size) minimises the *same* objective ``J(theta) = W(theta, states*(theta))`` by projected
Adam steps on mini-batches: the state block solved exactly by the fixed-point iteration, the
model block replaced by gradient steps through it (``K`` unrolled sweeps from the detached fixed
point: a truncated Neumann series of the implicit gradient, error ``||A||_inf^K``), then the
exact projection of ``A`` onto ``||A||_inf <= kappa``
(:func:`idlkit.wellposed.project_inf_ball`). ``"auto"`` picks cvxpy when the model block has at
most 1500 variables (``n (n + p) + q (n + p)``) and ``m <= 200``: the exponential cones (``m q``
of them) couple every sample to all of ``B`` and ``D``, so Clarabel's factorisations are dense in
those; measured: 12 s per model block at ``n = 8, p = 64, q = 10, m = 60`` (digits), well under a
second at ``n = 5, p = 4, q = 3, m = 30``. Above that the first-order path runs.

**Certificates, checked.** After training, the interval certificate is recomputed from the
trained model alone (fixed point in float64, widened by its residual and *verified* to be mapped
into itself: ``TrainingCertificate.holds``), its margins give the fraction of training samples
it certifies, and the library's own bound (:func:`idlkit.robust.certified_accuracy`,
``certify_method``, default Thm 4.1's box) gives :attr:`RobustFitResult.certified`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import wellposed as wp
from .._validation import check_choice, check_int, check_positive
from ..activations import ReLU
from ..errors import ConfigurationError, InfeasibleError, InputError, ShapeError
from .robust_convex import (
    IntervalStates,
    constraint_violation,
    interval_states,
    interval_step,
    margin_bounds,
    model_step_cvx,
    state_step_cvx,
    worst_case_cross_entropy,
)
from .trainer import _as_tensors

__all__ = ["ROBUST_METHODS", "RobustRecord", "TrainingCertificate", "RobustFitResult", "robust_fit",
           "training_certificate"]

ROBUST_METHODS = ("counterpart", "lp", "recourse", "adversarial")
SOLVERS = ("auto", "cvxpy", "first_order")
_F64 = torch.float64
_CVX_MAX_VARS, _CVX_MAX_M = 1500, 200  # model-block variables, samples (see robust_fit: seconds per block)


@dataclass(frozen=True)
class RobustRecord:
    """One iteration (alternating block pair, or epoch of the first-order / adversarial path).

    Attributes:
        iteration: 1-based.
        objective: mean training objective (robust loss + penalties; for ``"adversarial"`` the
            trainer's loss on attacked inputs).
        robust_loss: mean worst-case cross entropy bound over the set (``nan`` for
            ``"adversarial"``).
        clean_accuracy: training accuracy at the nominal inputs (``nan`` when not measured).
        seconds: time of the iteration.

    Examples:
        >>> rec = RobustRecord(iteration=1, objective=0.71, robust_loss=0.69, clean_accuracy=0.9,
        ...                    seconds=0.01)
        >>> rec.iteration, rec.robust_loss <= rec.objective          # one entry of RobustFitResult.history
        (1, True)
    """

    iteration: int
    objective: float
    robust_loss: float
    clean_accuracy: float
    seconds: float


@dataclass(frozen=True)
class TrainingCertificate:
    """The interval certificate (:mod:`.robust_convex`) recomputed on the trained model.

    Attributes:
        kind: ``"interval"`` (counterpart, lp, adversarial: ``R = 0``) or ``"recourse"``.
        sigma_u: ``(p,)`` radius it was checked at.
        holds: every training sample's interval was verified to be mapped into itself (so it
            contains every equilibrium of the set).
        violation: largest constraint violation of the verified states (``<= 0`` when it holds).
        certified: fraction of training samples whose margins bounds are all negative (each
            is then correctly classified for every input of the set).
        certified_mask: ``(m,)`` bool, which training samples are certified.
        worst_case_loss: mean worst-case cross-entropy bound on the training set.
    """

    kind: str
    sigma_u: Tensor
    holds: bool
    violation: float
    certified: float
    certified_mask: Tensor
    worst_case_loss: float


@dataclass(frozen=True)
class RobustFitResult:
    """Result of :func:`robust_fit`.

    Attributes:
        method: the method used.
        solver: ``"cvxpy"``, ``"first_order"`` or ``"adversarial"``.
        sigma_u: ``(p,)`` float64 radius trained for (eq. 16).
        history: per-iteration :class:`RobustRecord`.
        certified: :class:`idlkit.robust.CertifiedAccuracy` of the trained model on the
            training data by the library's bound (``certify_method``).
        certificate: the training certificate re-checked on the trained model
            (:class:`TrainingCertificate`).
        recourse: ``(n, p)`` recourse matrix ``R`` (``"recourse"``), else ``None``.
        seconds: wall time of the training (certificates excluded).
    """

    method: str
    solver: str
    sigma_u: Tensor
    history: tuple[RobustRecord, ...]
    certified: object
    certificate: TrainingCertificate
    recourse: Tensor | None
    seconds: float

    @property
    def certificate_holds(self) -> bool:
        """Whether the training certificate holds on the training set (measured)."""
        return self.certificate.holds


# ----------------------------------------------------------------------------- checks


def _sigma(sigma_u: object, p: int) -> Tensor:
    if isinstance(sigma_u, bool):
        raise InputError(f"sigma_u must be a number or a (p,) tensor, got {sigma_u!r}")
    try:
        s = torch.as_tensor(np.asarray(sigma_u, dtype=np.float64) if not isinstance(sigma_u, Tensor)
                            else sigma_u.detach().cpu(), dtype=_F64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"sigma_u must be a number or a ({p},) tensor, got {sigma_u!r}") from exc
    if s.dim() == 0:
        s = s.expand(p).clone()
    if s.shape != (p,):
        raise ShapeError(f"sigma_u must be a scalar or have shape ({p},) (one radius per input), got "
                         f"{tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        bad = s[~torch.isfinite(s) | (s < 0)][0].item()
        raise InputError(f"sigma_u must be finite and >= 0 (eq. 16: |u - u_hat| <= sigma_u), got an "
                         f"entry {bad}; pass e.g. sigma_u=0.1")
    return s


def _data(model: object, data: object) -> tuple[Tensor, Tensor]:
    U, Y = _as_tensors(data, "data")
    p, q = model.in_features, model.out_features  # type: ignore[attr-defined]
    if U.dim() != 2 or U.shape[1] != p:
        raise ShapeError(f"U must have shape (m, {p}) (batch-first, p = model.in_features), got "
                         f"{tuple(U.shape)}")
    if Y.dim() != 1 or Y.shape[0] != U.shape[0] or Y.is_floating_point():
        raise ShapeError(f"Y must be ({U.shape[0]},) integer class labels, got {tuple(Y.shape)} {Y.dtype}")
    if U.shape[0] == 0:
        raise InputError("no training samples (U has 0 rows)")
    if not U.is_floating_point() or not bool(torch.isfinite(U).all()):
        raise InputError("U must be a floating tensor without NaN/Inf")
    if int(Y.min()) < 0 or int(Y.max()) >= q:
        raise InputError(f"labels must lie in [0, {q}) (the model has {q} outputs), got "
                         f"{int(Y.min())} .. {int(Y.max())}")
    return U.detach().to("cpu", _F64), Y.detach().cpu().long()


def _check_model(model: object, method: str) -> float:
    """The l_inf radius kappa enforced on ``A`` (the model's own)."""
    if not all(isinstance(getattr(model, k, None), Tensor) for k in "ABCD") or not hasattr(model, "kappa"):
        raise ConfigurationError(f"robust_fit trains an idlkit.ImplicitModel, got {type(model).__name__}")
    if getattr(model, "sparse", False) or any(getattr(model, k).layout != torch.strided for k in "ABCD"):
        raise ConfigurationError("robust_fit needs dense matrices (a sparse model's matrices are frozen "
                                 "buffers); build the model with ImplicitModel(...) or from dense matrices")
    if method != "adversarial" and not isinstance(model.activation, ReLU):  # type: ignore[attr-defined]
        raise ConfigurationError(
            f"method {method!r} relaxes the ReLU (paper 001 §5.2: x >= 0, x >= A x + B u); the model's "
            f"activation is {model.activation!r}. Supported activations: ['relu']; use "  # type: ignore[attr-defined]
            f"method='adversarial' for other activations")
    if getattr(model, "wellposedness", None) == "triangular":
        raise ConfigurationError("robust_fit enforces ||A||_inf <= kappa after every model step; a model "
                                 "declared wellposedness='triangular' would lose its structure. Use "
                                 "wellposedness='inf' (or 'pf'/'mu', which ||A||_inf <= kappa implies)")
    return float(model.kappa)  # type: ignore[attr-defined]


def _write(model: object, A: Tensor, B: Tensor, b: Tensor, C: Tensor, D: Tensor, d: Tensor,
           kappa: float) -> None:
    with torch.no_grad():
        for name, val in (("A", A), ("B", B), ("C", C), ("D", D), ("b", b), ("d", d)):
            P = getattr(model, name)
            if P is not None:
                P.copy_(val.to(P.dtype))
        _enforce(model, kappa)


def _enforce(model: object, kappa: float) -> None:
    """``||A||_inf <= kappa`` for the matrix as stored (float64 row sums of the model's dtype): the
    exact projection, onto a radius a few ulps of the model's dtype inside ``kappa`` so that the
    rounding of a float32 copy cannot leave it outside."""
    A = model.A  # type: ignore[attr-defined]
    if not A.shape[0]:
        return
    with torch.no_grad():
        if float(A.detach().to(_F64).abs().sum(1).max()) > kappa:
            eps = torch.finfo(A.dtype).eps
            radius = kappa * (1 - 4 * eps * (A.shape[0] + 1))
            A.copy_(wp.project_inf_ball(A.detach().to(_F64), radius).to(A.dtype))


def _accuracy(model: object, U: Tensor, Y: Tensor) -> float:
    with torch.no_grad():
        P = model(U.to(model.A.dtype)).argmax(1)  # type: ignore[attr-defined, operator]
    return float((P.cpu() == Y).double().mean())


def _mats64(model: object) -> list[Tensor]:
    out = []
    for k in ("A", "B", "b", "C", "D", "d"):
        v = getattr(model, k, None)
        if v is None:
            v = torch.zeros(model.A.shape[0] if k == "b" else model.C.shape[0], dtype=_F64)  # type: ignore[attr-defined]
        out.append(v.detach().to("cpu", _F64).clone())
    return out


def _widen(st: IntervalStates, by: float) -> IntervalStates:
    return IntervalStates(st.lo - by, st.hi + by, st.R, st.iterations, st.residual)


def _check_state_bound(st: IntervalStates, state_bound: float | None, sigma: Tensor) -> None:
    if state_bound is None:
        return
    over = st.hi > state_bound
    if bool(over.any()):
        samples = torch.unique(over.nonzero()[:, 0])[:10].tolist()
        units = torch.unique(over.nonzero()[:, 1])[:10].tolist()
        raise InfeasibleError(
            f"the robust counterpart is infeasible with states bounded by state_bound={state_bound:g}: "
            f"its smallest feasible upper state exceeds the bound (max {float(st.hi.max()):.4g}) at state "
            f"rows {units} for samples {samples} ({int(over.any(1).sum())} samples in all) at sigma_u "
            f"max {float(sigma.max()):.4g}. Fix: a smaller sigma_u, a larger state_bound, or a model "
            f"with smaller |B| (the radius enters as |B| sigma_u)", status="infeasible")


# ----------------------------------------------------------------------------- certificate


def training_certificate(model: object, U: Tensor, Y: Tensor, sigma_u: object, R: Tensor | None = None
                         ) -> TrainingCertificate:
    """The interval certificate of ``model`` on ``(U, Y)`` at ``sigma_u`` (with recourse ``R``),
    computed from the model alone and verified (module docstring of :mod:`.robust_convex`).

    The fixed point is computed in float64, widened by ``2 residual / (1 - ||A||_inf)`` plus a
    relative ``1e-9`` and then *checked* to satisfy every robust counterpart constraint with a slack
    above the rounding error of the check: the check, not the iteration, is the proof. Margin
    bounds then certify samples with ``max_{j != t} M_j < 0`` (strictly, beyond a ``1e-9``
    relative slack).

    Args:
        model: an :class:`~idlkit.ImplicitModel` with ``||A||_inf < 1``.
        U: ``(m, p)`` inputs.
        Y: ``(m,)`` integer labels.
        sigma_u: input radius, scalar or ``(p,)``.
        R: recourse matrix of the robust counterpart, or ``None``.

    Returns:
        :class:`TrainingCertificate` with the certified samples.

    Raises:
        ConfigurationError: ``||A||_inf >= 1``.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> U, Y = torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
        >>> cert = training_certificate(model, U, Y, 0.1)
        >>> cert.holds
        True
    """
    kappa = _check_model(model, "counterpart")
    U, Y = _data(model, (U, Y))
    s = _sigma(sigma_u, U.shape[1])
    A = model.A.detach().to(_F64)  # type: ignore[attr-defined]
    a = float(A.abs().sum(1).max()) if A.shape[0] else 0.0
    if a >= 1:
        raise ConfigurationError(f"the interval certificate needs ||A||_inf < 1, got {a:.6g} (kappa "
                                 f"{kappa:g}); call model.project_() or idlkit.wellposed.rescale(model)")
    st = interval_states(model, U, s, R, tol=1e-13)
    scale = 1.0 + (float(st.hi.abs().max()) + float(st.lo.abs().max()) if st.hi.numel() else 0.0)
    pad = 2 * st.residual / (1 - a) + 1e-9 * scale
    st = _widen(st, pad)
    worst, per = constraint_violation(model, U, s, st)
    # the check itself is rounded: demand a slack above its float64 error (sums of n + p + 2
    # terms of at most this magnitude each)
    A64, B64, b64, C, D, d = _mats64(model)
    n, eps = A64.shape[0], float(torch.finfo(_F64).eps)
    if n:
        big = torch.maximum(st.lo.abs(), st.hi.abs())
        mag = (big @ A64.abs().T + U.abs() @ B64.abs().T + b64.abs()).amax(1) + big.amax(1)
        mag = mag + 2 * float((st.R.abs() @ s).max())
    else:
        mag = torch.zeros(U.shape[0], dtype=_F64)
    rounding = 8 * (n + U.shape[1] + 2) * eps * (1 + mag)
    ok = per <= -rounding if n else torch.ones(U.shape[0], dtype=torch.bool)  # n = 0: no state
    M = margin_bounds(C, D, d, st.R, s, U, Y, st.lo, st.hi)
    wc = float(worst_case_cross_entropy(M).mean())
    off = M.clone()
    off.scatter_(1, Y[:, None], -math.inf)
    slack = 1e-9 * (1 + M.abs().amax(1))
    mask = (off.amax(1) < -slack) & ok if M.shape[1] > 1 else ok.clone()
    kind = "interval" if R is None or not bool(R.any()) else "recourse"
    return TrainingCertificate(kind, s, bool(ok.all()), worst, float(mask.double().mean()), mask, wc)


# ----------------------------------------------------------------------------- training paths


def _objective(model: object, U: Tensor, Y: Tensor, s: Tensor, R: Tensor | None, wd: float, l1: float
               ) -> tuple[float, float, IntervalStates]:
    st = interval_states(model, U, s, R)
    _, B, _, C, D, d = _mats64(model)
    M = margin_bounds(C, D, d, st.R, s, U, Y, st.lo, st.hi)
    loss = float(worst_case_cross_entropy(M).mean())
    pen = wd / 2 * float((B ** 2).sum() + (C ** 2).sum() + (D ** 2).sum())
    pen += l1 * float(B.abs().sum() + C.abs().sum() + D.abs().sum())
    return loss + pen, loss, st


def _fit_cvxpy(model: object, U: Tensor, Y: Tensor, s: Tensor, kappa: float, *, recourse: bool,
               iterations: int, wd: float, l1: float, prox: float, tol: float, state_bound: float | None
               ) -> tuple[list[RobustRecord], Tensor | None]:
    has_bias = getattr(model, "b", None) is not None
    R = torch.zeros(model.A.shape[0], U.shape[1], dtype=_F64) if recourse else None  # type: ignore[attr-defined]
    _, _, st = _objective(model, U, Y, s, R, wd, l1)
    _check_state_bound(st, state_bound, s)
    history: list[RobustRecord] = []
    prev = math.inf
    for it in range(1, iterations + 1):
        t0 = time.perf_counter()
        step = model_step_cvx(model, U, Y, s, _widen(st, 1e-9), kappa=kappa, weight_decay=wd, l1=l1,
                              prox=prox, has_bias=has_bias)
        _write(model, step.A, step.B, step.b, step.C, step.D, step.d, kappa)
        if recourse:
            st_r, _ = state_step_cvx(model, U, Y, s, recourse=True, R0=st.R, state_bound=state_bound)
            R = st_r.R
        obj, loss, st = _objective(model, U, Y, s, R, wd, l1)
        history.append(RobustRecord(it, obj, loss, _accuracy(model, U, Y), time.perf_counter() - t0))
        if abs(prev - obj) <= tol * max(1.0, abs(obj)):
            break
        prev = obj
    return history, R


def _fit_first_order(model: object, U: Tensor, Y: Tensor, s: Tensor, kappa: float, *, recourse: bool,
                     epochs: int, lr: float, batch_size: int, wd: float, l1: float, seed: int,
                     ramp: int, state_bound: float | None) -> tuple[list[RobustRecord], Tensor | None]:
    A, B, b, C, D, d = (t.requires_grad_(True) for t in _mats64(model))
    has_bias = getattr(model, "b", None) is not None
    params = [A, B, C, D] + ([b, d] if has_bias else [])
    R = torch.zeros(A.shape[0], U.shape[1], dtype=_F64, requires_grad=recourse)
    if recourse:
        params.append(R)
    _check_state_bound(interval_states(model, U, s, R.detach() if recourse else None), state_bound, s)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    m = U.shape[0]
    history: list[RobustRecord] = []
    for ep in range(1, epochs + 1):
        t0 = time.perf_counter()
        se = s * min(1.0, ep / ramp) if ramp else s
        perm = torch.randperm(m, generator=gen)
        for i in range(0, m, batch_size):
            idx = perm[i:i + batch_size]
            Ub, Yb = U[idx], Y[idx]
            a = float(A.detach().abs().sum(1).max()) if A.shape[0] else 0.0
            K = min(60, max(2, math.ceil(math.log(1e-4) / math.log(max(a, 1e-3))))) if a > 0 else 1
            with torch.no_grad():
                lo = torch.zeros(len(idx), A.shape[0], dtype=_F64)
                hi = lo.clone()
                for _ in range(4 * K):
                    lo2, hi2 = interval_step(A, B, b, R, se, Ub, lo, hi)
                    done = float(torch.maximum((lo2 - lo).abs().max(), (hi2 - hi).abs().max())) <= 1e-10 \
                        if lo.numel() else True
                    lo, hi = lo2, hi2
                    if done:
                        break
            for _ in range(K):  # differentiable sweeps from the (detached) fixed point
                lo, hi = interval_step(A, B, b, R, se, Ub, lo, hi)
            M = margin_bounds(C, D, d, R, se, Ub, Yb, lo, hi)
            obj = worst_case_cross_entropy(M).mean()
            if wd:
                obj = obj + wd / 2 * ((B ** 2).sum() + (C ** 2).sum() + (D ** 2).sum())
            if l1:
                obj = obj + l1 * (B.abs().sum() + C.abs().sum() + D.abs().sum())
            opt.zero_grad(set_to_none=True)
            obj.backward()
            opt.step()
            with torch.no_grad():
                if A.shape[0] and float(A.abs().sum(1).max()) > kappa:
                    A.copy_(wp.project_inf_ball(A, kappa))
        _write(model, A.detach(), B.detach(), b.detach(), C.detach(), D.detach(), d.detach(), kappa)
        with torch.no_grad():
            A.copy_(model.A.detach().to(_F64))  # type: ignore[attr-defined]
        obj, loss, _ = _objective(model, U, Y, s, R.detach() if recourse else None, wd, l1)
        history.append(RobustRecord(ep, obj, loss, _accuracy(model, U, Y), time.perf_counter() - t0))
    return history, (R.detach().clone() if recourse else None)


def _fit_adversarial(model: object, U: Tensor, Y: Tensor, s: Tensor, options: dict
                     ) -> list[RobustRecord]:
    from .adversarial import adversarial_fit  # built on its own branch; imported lazily

    if not bool((s == s[0]).all()):
        raise ConfigurationError("method 'adversarial' attacks an l_inf ball: sigma_u must be one number "
                                 f"(got radii from {float(s.min()):g} to {float(s.max()):g}); pass a scalar "
                                 "or rescale the inputs")
    res = adversarial_fit(model, U.to(model.A.dtype), Y, float(s[0]), **options)  # type: ignore[attr-defined]
    hist = [RobustRecord(int(e.epoch), float(e.train_loss), math.nan, float(e.val_accuracy), float(e.seconds))
            for e in res.history]
    if hist:  # the clean training accuracy of the result, measured once at the end
        last = hist[-1]
        hist[-1] = RobustRecord(last.iteration, last.objective, last.robust_loss, _accuracy(model, U, Y),
                                last.seconds)
    return hist


def robust_fit(model: object, data: object, sigma_u: object, method: str = "counterpart", *,
               solver: str = "auto", iterations: int = 10, epochs: int = 20, lr: float = 1e-2,
               batch_size: int = 128, weight_decay: float = 1e-4, l1: float = 0.0, prox: float = 1e-2,
               tol: float = 1e-4, ramp: int = 0, seed: int = 0, state_bound: float | None = None,
               certify_method: str = "box", **options: object) -> RobustFitResult:
    """Train ``model`` in place for the input set ``|u - u_hat| <= sigma_u`` (paper 001 §5).

    Args:
        model: a dense ReLU :class:`~idlkit.ImplicitModel` (any activation for ``"adversarial"``);
            ``||A||_inf <= model.kappa`` is enforced after every model step.
        data: ``(U, Y)``: ``U (m, p)`` inputs, ``Y (m,)`` integer labels (cross entropy).
        sigma_u: radius, scalar or ``(p,)``, finite and ``>= 0`` (eq. 16).
        method: one of :data:`ROBUST_METHODS` (module docstring).
        solver: ``"auto"``, ``"cvxpy"`` (alternating convex blocks) or ``"first_order"``.
        iterations: alternating block pairs (cvxpy).
        tol: relative stopping change of the objective (cvxpy).
        prox: proximal weight of the model block (cvxpy).
        epochs: epochs of the first-order path (Adam, mini-batches).
        lr: Adam's step size.
        batch_size: mini-batch size.
        seed: seed of the mini-batch order.
        ramp: epochs of linearly growing radius.
        weight_decay: ``wd/2 ||(B, C, D)||_F^2``, ``>= 0``.
        l1: ``l1 ||(B, C, D)||_1``, ``>= 0``.
        state_bound: optional bound ``hi <= state_bound`` on the states; a counterpart that no
            bounded state satisfies raises :class:`~idlkit.errors.InfeasibleError` naming the rows.
        certify_method: bound method of :func:`idlkit.robust.certified_accuracy` for ``certified``.
        options: ``"adversarial"`` only: passed to ``adversarial_fit`` (``attack``, ``steps``,
            ``mix``, ``clip``, Trainer settings); ``epochs``, ``lr``, ``batch_size`` and ``seed`` are
            this function's own. ``sigma_u`` must then be one number (an ``l_inf`` ball).

    Shapes: ``U (m, p)``, ``Y (m,)``; the result's ``recourse`` is ``(n, p)``.

    Examples:
        >>> model = idlkit.ImplicitModel(4, 6, 3, kappa=0.5, dtype=torch.float64)
        >>> U = torch.randn(30, 4, dtype=torch.float64); Y = U[:, :3].argmax(1)
        >>> res = robust_fit(model, (U, Y), 0.05, "counterpart", iterations=2)
        >>> res.certificate_holds
        True
    """
    check_choice("method", method, ROBUST_METHODS)
    check_choice("solver", solver, SOLVERS)
    kappa = _check_model(model, method)
    U, Y = _data(model, data)
    s = _sigma(sigma_u, U.shape[1])
    wd = check_positive("weight_decay", weight_decay, allow_zero=True, example=1e-4)
    l1 = check_positive("l1", l1, allow_zero=True, example=1e-4)
    prox = check_positive("prox", prox, allow_zero=True, example=1e-2)
    tol = check_positive("tol", tol, allow_zero=True, example=1e-4)
    lr = check_positive("lr", lr, example=1e-2)
    iterations = check_int("iterations", iterations, 1)
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    ramp = check_int("ramp", ramp, 0)
    if state_bound is not None:
        state_bound = check_positive("state_bound", state_bound, example=10.0)
    from ..robust import BOUND_METHODS, certified_accuracy

    check_choice("certify_method", certify_method, BOUND_METHODS)
    if options and method != "adversarial":
        raise ConfigurationError(f"unknown options {sorted(options)} for method {method!r} (extra options "
                                 f"go to adversarial_fit only)")
    # well-posedness first: the fixed points below need ||A||_inf < 1
    if method != "adversarial":
        _enforce(model, kappa)
    t0 = time.perf_counter()
    R = None
    if method == "adversarial":
        used = "adversarial"
        opts = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, **options}
        history = _fit_adversarial(model, U, Y, s, opts)
    else:
        s_train = torch.zeros_like(s) if method == "lp" else s
        recourse = method == "recourse"
        n, m = model.A.shape[0], U.shape[0]  # type: ignore[attr-defined]
        p, q = U.shape[1], model.C.shape[0]  # type: ignore[attr-defined]
        small = n * (n + p) + q * (n + p) <= _CVX_MAX_VARS and m <= _CVX_MAX_M
        used = solver if solver != "auto" else ("cvxpy" if small else "first_order")
        if used == "cvxpy":
            history, R = _fit_cvxpy(model, U, Y, s_train, kappa, recourse=recourse, iterations=iterations,
                                    wd=wd, l1=l1, prox=prox, tol=tol, state_bound=state_bound)
        else:
            history, R = _fit_first_order(model, U, Y, s_train, kappa, recourse=recourse, epochs=epochs,
                                          lr=lr, batch_size=batch_size, wd=wd, l1=l1, seed=seed, ramp=ramp,
                                          state_bound=state_bound)
    seconds = time.perf_counter() - t0
    relu = isinstance(model.activation, ReLU)  # type: ignore[attr-defined]
    if relu:
        cert = training_certificate(model, U, Y, s, R)
    else:  # adversarial training of a non-ReLU model: no interval certificate to measure
        cert = TrainingCertificate("none", s, False, math.nan, math.nan,
                                   torch.zeros(U.shape[0], dtype=torch.bool), math.nan)
    certified = certified_accuracy(model, U.to(model.A.dtype), Y, s.to(model.A.dtype),  # type: ignore[attr-defined]
                                   method=certify_method)
    return RobustFitResult(method, used, s, tuple(history), certified, cert, R, seconds)
