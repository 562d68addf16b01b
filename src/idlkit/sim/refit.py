"""After SIM: refit the output map on the model's own states, and evaluate against the teacher.

SIM (paper 002 Alg. 1) fits ``(A, B, b)`` so that the teacher's states satisfy
``Z ~ A X + B U + b`` and ``(C, D, d)`` so that ``Y_hat ~ C X + D U + d``, with ``X`` the
*teacher's* states. The fitted model, run on its own, settles on its own equilibrium
``X' = phi(A X' + B U + b)``, which differs from ``X`` wherever the state rows are matched
only approximately (relaxed objectives, states the teacher computes non-affinely: attention,
layer norm). Its output ``C X' + D U + d`` then drifts from ``Y_hat`` by ``C (X' - X)``.

:func:`regen_states` (torchidl's ``regen_states``) keeps ``(A, B, b)`` and refits
``(C, D, d)`` on ``X'``: the least-squares problem ``min ||Y_hat - X' C^T - U D^T - 1 d^T||_F^2
(+ ridge ||(C, D)||_F^2)``, i.e. eq. 2c with the model's own states in place of the teacher's.
The model's equilibrium does not depend on ``(C, D, d)``, so one solve suffices and the new
output error is the least-squares residual (never above the old one when ``ridge = 0``, as the
old ``(C, D, d)`` is a feasible point).

:func:`evaluate` measures a fitted model: accuracy or MSE against labels/targets, the output
error and agreement against the teacher, the relative state error ``||X' - X||_F / ||X||_F``
against the teacher's (scaled) states, and the sparsity figures of paper 002 §4.1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .._matrix import as_dense_array, count_nonzero, is_sparse, to_dense
from .._validation import check_choice, check_scalar
from ..errors import InputError, ShapeError
from ..model import ImplicitModel
from .hooks import _check_finite_rows
from .states import States

__all__ = ["RegenReport", "Evaluation", "regen_states", "evaluate"]

_TINY = 1e-300


@dataclass(frozen=True)
class RegenReport:
    """What :func:`regen_states` did.

    Attributes:
        m: samples used.
        output_error_before: ``||Y_model - Y_hat||_F / ||Y_hat||_F`` with the old ``(C, D, d)``
            (on the same samples).
        output_error_after: the same with the refitted ``(C, D, d)``.
        mse_before: the mean squared output error ``||.||_F^2 / (m q)`` before the refit.
        mse_after: the same after the refit.
        rank: numerical rank of ``F = (X', U[, 1])``.
        columns: columns of ``F`` (``n + p [+ 1]``). ``rank < columns`` (e.g. fewer samples than
            unknowns) means the unregularised fit interpolates the samples (minimum-norm
            solution) and may generalise poorly: use ``ridge > 0`` or ``support="keep"``.
        ridge: the ridge weight used.
        support: ``"dense"`` or ``"keep"`` (see :func:`regen_states`).
        bias: whether ``d`` was fitted.
        seconds: wall time (equilibrium solve and least squares).
    """

    m: int
    output_error_before: float
    output_error_after: float
    mse_before: float
    mse_after: float
    rank: int
    columns: int
    ridge: float
    bias: bool
    support: str
    seconds: float


@dataclass(frozen=True)
class Evaluation:
    """Figures of a fitted implicit model on inputs ``U`` (:func:`evaluate`).

    Attributes:
        m: samples.
        accuracy: fraction of samples whose predicted class (argmax of the output; ``output > 0``
            for one output) equals the label (None without integer labels).
        mse: mean squared error against float targets ``Y`` (None without them).
        teacher_accuracy: the teacher's accuracy on the same labels (None without both).
        agreement: fraction of samples where model and teacher predict the same class.
        output_error: ``||Y_model - Y_teacher||_F / ||Y_teacher||_F``.
        state_error: ``||X' - X||_F / ||X||_F``, the model's equilibrium against the teacher's
            (scaled) states (only with a :class:`~idlkit.sim.States` teacher).
        nnz: nonzero parameters of the model (A, B, C, D and the biases).
        nnz_A: nonzeros of ``A``.
        a_inf_norm: ``||A||_inf`` (float64).
        baseline_nnz: the teacher's nonzero parameters, ``||N||_0`` (None without a teacher).
        sparsity: paper 002 §4.1, ``(1 - nnz / baseline_nnz) * 100`` (negative: more parameters).
        seconds: wall time of the model's forward pass on ``U``.
    """

    m: int
    accuracy: float | None
    mse: float | None
    teacher_accuracy: float | None
    agreement: float | None
    output_error: float | None
    state_error: float | None
    nnz: int
    nnz_A: int
    a_inf_norm: float
    baseline_nnz: int | None
    sparsity: float | None
    seconds: float

    def summary(self) -> str:
        """A markdown table of the figures that are set."""
        rows = [(k, v) for k, v in (
            ("accuracy", self.accuracy), ("teacher accuracy", self.teacher_accuracy),
            ("agreement with teacher", self.agreement), ("MSE", self.mse),
            ("output error vs teacher", self.output_error), ("state error vs teacher", self.state_error),
            ("nnz", self.nnz), ("nnz(A)", self.nnz_A), ("||A||_inf", self.a_inf_norm),
            ("baseline nnz", self.baseline_nnz), ("sparsity %", self.sparsity),
            ("forward time (s)", self.seconds)) if v is not None]
        fmt = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in rows]
        return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in fmt)


def _check_model(model: object) -> ImplicitModel:
    if not isinstance(model, ImplicitModel):
        raise InputError(f"model must be an idlkit.ImplicitModel (e.g. from SIM.fit), got "
                         f"{type(model).__name__}")
    return model


def _inputs(model: ImplicitModel, U: object) -> Tensor:
    if not isinstance(U, Tensor) or not U.is_floating_point():
        raise InputError(f"U must be a floating torch.Tensor (m, *input_dims), got "
                         f"{getattr(U, 'dtype', type(U).__name__)}")
    if U.dim() < 2 or U.shape[0] == 0:
        raise ShapeError(f"U must be batch-first (m, *input_dims) with m >= 1, got shape {tuple(U.shape)}")
    Uf = U.detach().reshape(U.shape[0], -1)
    if Uf.shape[1] != model.in_features:
        raise ShapeError(f"U has {Uf.shape[1]} features per sample (shape {tuple(U.shape)}), the model "
                         f"expects in_features = {model.in_features}")
    _check_finite_rows("U", Uf)
    return Uf.to(dtype=model.A.dtype)


def _rel(E: Tensor, T: Tensor) -> float:
    return float(torch.linalg.norm(E.double()) / max(float(torch.linalg.norm(T.double())), _TINY))


def _a_inf(A: Tensor) -> float:
    if A.numel() == 0 or A.shape[0] == 0:
        return 0.0
    return float(to_dense(A.detach()).double().abs().sum(dim=1).max())


def regen_states(model: ImplicitModel, U: Tensor, Y_hat: Tensor, *, ridge: float = 0.0,
                 bias: bool | None = None, support: str = "dense") -> tuple[ImplicitModel, RegenReport]:
    """Refit ``(C, D, d)`` on the fitted model's own equilibrium states (module docstring).

    Args:
        model: a fitted :class:`~idlkit.ImplicitModel` (e.g. from :meth:`SIM.fit`); not modified.
        U: inputs, batch-first ``(m, *input_dims)`` flattening to ``(m, p)``.
        Y_hat: the teacher's outputs ``(m, q)`` (``States.Y_hat``).
        ridge: ``>= 0``; weight of ``||(C, D)||_F^2`` (``d`` is never penalised).
        bias: fit ``d``; default: when the model has biases.
        support: ``"dense"``: every entry of ``(C, D)`` is refitted (the least-squares solution
            is dense, so a sparse SIM output map loses its sparsity); ``"keep"``: each output
            row is refitted on the support of the model's own row of ``(C, D)`` (its nonzeros,
            plus ``d``), keeping nnz(C) + nnz(D) unchanged or smaller.

    Returns:
        ``(new_model, report)``: a new model with the same ``A, B, b``, activation, solver
        settings and well-posedness, and the refitted ``C, D, d`` (stored sparse when the
        model's ``C`` was); a :class:`RegenReport` with the output error before and after.

    Raises:
        InputError: a model that is not an ImplicitModel, non-float inputs.
        ShapeError: ``U``/``Y_hat`` whose shapes disagree with each other or the model.
        NonFiniteError: NaN/Inf in ``U``, ``Y_hat`` or the model's states (naming the rows).
        ConvergenceError: the model's equilibrium solve does not converge.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> U = torch.randn(40, 4)
        >>> model, _ = idlkit.sim.SIM(backend="serial").fit(net, U)
        >>> model2, rep = regen_states(model, U, net(U).detach())
        >>> model2(U).shape, rep.output_error_after <= rep.output_error_before + 1e-9
        (torch.Size([40, 2]), True)
    """
    t0 = time.perf_counter()
    model = _check_model(model)
    ridge = check_scalar("ridge", ridge, low=0.0, example=1e-6)
    check_choice("support", support, ("dense", "keep"))
    Uf = _inputs(model, U)
    if not isinstance(Y_hat, Tensor) or not Y_hat.is_floating_point():
        raise InputError(f"Y_hat must be the teacher's float outputs (m, q), got "
                         f"{getattr(Y_hat, 'dtype', type(Y_hat).__name__)}")
    Yh = Y_hat.detach().reshape(Y_hat.shape[0], -1) if Y_hat.dim() >= 1 else Y_hat
    if Yh.dim() != 2 or Yh.shape != (Uf.shape[0], model.out_features):
        raise ShapeError(f"Y_hat has shape {tuple(Y_hat.shape)}; expected (m, q) = "
                         f"({Uf.shape[0]}, {model.out_features}) for U with m = {Uf.shape[0]} samples")
    _check_finite_rows("Y_hat", Yh)
    fit_bias = (model.d is not None) if bias is None else bool(bias)
    with torch.no_grad():
        Xp = model.equilibrium(Uf).detach()
        Y_old = model(Uf).detach()
    _check_finite_rows("the model's equilibrium states X'", Xp)
    Xn, Un, Yn = (as_dense_array(t) for t in (Xp, Uf, Yh))
    m, n, p, q = Xn.shape[0], Xn.shape[1], Un.shape[1], Yn.shape[1]
    F = np.hstack([Xn, Un] + ([np.ones((m, 1))] if fit_bias else []))
    rank = int(np.linalg.matrix_rank(F))
    reg = np.full(F.shape[1], ridge * m)
    if fit_bias:
        reg[-1] = 0.0
    if support == "dense":
        W = _least_squares(F, Yn, reg)
    else:
        old = np.hstack([as_dense_array(model.C), as_dense_array(model.D)]) != 0
        W = np.zeros((q, F.shape[1]))
        for i in range(q):
            cols = np.flatnonzero(np.append(old[i], True) if fit_bias else old[i])
            if cols.size:
                W[i, cols] = _least_squares(F[:, cols], Yn[:, i:i + 1], reg[cols])[0]
    C, D = W[:, :n], W[:, n:n + p]
    d = W[:, -1] if fit_bias else None
    dt = model.A.dtype
    Ct = torch.from_numpy(np.ascontiguousarray(C)).to(dt)
    Dt = torch.from_numpy(np.ascontiguousarray(D)).to(dt)
    if is_sparse(model.C):
        Ct = Ct.to_sparse_csr()
    if is_sparse(model.D):
        Dt = Dt.to_sparse_csr()
    b = model.b.detach() if model.b is not None else (torch.zeros(n, dtype=dt) if fit_bias else None)
    dt_ = None if d is None else torch.from_numpy(d).to(dt)
    A, B = model.A.detach(), model.B.detach()
    new = ImplicitModel.from_matrices(A, B, Ct, Dt, b, dt_, activation=model.activation,
                                      wellposedness=model.wellposedness, kappa=model.kappa,
                                      **model.settings.config())
    Y_new = torch.from_numpy(F @ W.T)
    Yd = torch.from_numpy(Yn)
    denom = m * q
    report = RegenReport(
        m=m, output_error_before=_rel(Y_old - Yh, Yh), output_error_after=_rel(Y_new - Yd, Yd),
        mse_before=float(((Y_old.double() - Yd) ** 2).sum()) / denom,
        mse_after=float(((Y_new - Yd) ** 2).sum()) / denom, rank=rank, columns=int(F.shape[1]),
        ridge=ridge, bias=fit_bias, support=support, seconds=time.perf_counter() - t0)
    return new, report


def _least_squares(F: np.ndarray, Y: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """``argmin ||Y - F W^T||_F^2 + sum_j reg_j ||W_{:, j}||^2`` as ``W`` ``(q, d)``: numpy's
    minimum-norm least squares without regularisation, the normal equations with it."""
    if not reg.any():
        return np.linalg.lstsq(F, Y, rcond=None)[0].T
    return np.linalg.solve(F.T @ F + np.diag(reg), F.T @ Y).T


def _classes(Y: Tensor) -> Tensor:
    return Y.argmax(dim=1) if Y.shape[1] > 1 else (Y[:, 0] > 0).long()


def evaluate(model: ImplicitModel, U: Tensor, Y: Tensor | None = None,
             teacher: States | nn.Module | None = None) -> Evaluation:
    """Accuracy/MSE, agreement and state error against the teacher, nnz, ``||A||_inf``.

    Args:
        model: a fitted :class:`~idlkit.ImplicitModel`.
        U: inputs, batch-first ``(m, *input_dims)``.
        Y: integer class labels ``(m,)`` (gives ``accuracy``) or float targets ``(m, q)``
            (gives ``mse``), or None.
        teacher: the teacher's :class:`~idlkit.sim.States` *extracted on the same U* (gives the
            output error, agreement, state error and sparsity; the states' scaling is the
            model's, as SIM fits the scaled states), or the teacher network itself (output
            error, agreement, teacher accuracy and sparsity; no state error).

    Returns:
        A frozen :class:`Evaluation`.

    Raises:
        InputError: wrong types, labels out of range, States extracted on other inputs.
        ShapeError: shapes that disagree with each other or the model.
        NonFiniteError: NaN/Inf in the inputs, the model's states or outputs (naming the rows).

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
        >>> U = torch.randn(40, 4); y = net(U).argmax(1)               # labels the teacher gets right
        >>> model, _ = idlkit.sim.SIM(backend="serial").fit(net, U)
        >>> ev = evaluate(model, U, y, teacher=net)
        >>> ev.m, ev.teacher_accuracy, ev.accuracy == ev.agreement, ev.nnz_A <= 36
        (40, 1.0, True, True)
    """
    model = _check_model(model)
    Uf = _inputs(model, U)
    m = Uf.shape[0]
    t0 = time.perf_counter()
    with torch.no_grad():
        Yp, Xp = model.forward_with_state(Uf)
    secs = time.perf_counter() - t0
    _check_finite_rows("the model's equilibrium states X'", Xp)
    _check_finite_rows("the model's outputs", Yp)
    accuracy = mse = teacher_acc = agreement = out_err = state_err = sparsity = None
    base_nnz = None
    labels = None
    if Y is not None:
        if not isinstance(Y, Tensor):
            raise InputError(f"Y must be a torch.Tensor of labels (m,) or targets (m, q), got "
                             f"{type(Y).__name__}")
        if Y.shape[0] != m:
            raise ShapeError(f"Y has {Y.shape[0]} rows, U has m = {m}")
        if Y.is_floating_point():
            Yt = Y.detach().reshape(m, -1)
            if Yt.shape[1] != model.out_features:
                raise ShapeError(f"Y has shape {tuple(Y.shape)}; float targets must be "
                                 f"(m, {model.out_features})")
            _check_finite_rows("Y", Yt)
            mse = float(((Yp.double() - Yt.double()) ** 2).mean())
        else:
            if Y.dim() != 1:
                raise ShapeError(f"integer labels must have shape (m,), got {tuple(Y.shape)}")
            k = max(model.out_features, 2)
            if bool((Y < 0).any()) or bool((Y >= k).any()):
                raise InputError(f"labels must lie in [0, {k}) for a model with {model.out_features} outputs")
            labels = Y.detach().to(Yp.device)
            accuracy = float((_classes(Yp) == labels).double().mean())
    nnz = sum(count_nonzero(getattr(model, k)) for k in ("A", "B", "C", "D", "b", "d"))
    if teacher is not None:
        if isinstance(teacher, States):
            if teacher.m != m or teacher.n != model.hidden or teacher.Y_hat.shape[1] != model.out_features:
                raise ShapeError(f"teacher States have (m, n, q) = ({teacher.m}, {teacher.n}, "
                                 f"{teacher.Y_hat.shape[1]}), the model and U give ({m}, {model.hidden}, "
                                 f"{model.out_features})")
            if not torch.allclose(teacher.U.detach().double().cpu(), Uf.double().cpu(), rtol=1e-6, atol=1e-9):
                raise InputError("the teacher States were extracted on other inputs than U; pass the same U "
                                 "(e.g. U = states.U) or the teacher network")
            Yt = teacher.Y_hat.detach()
            state_err = _rel(Xp.double() - teacher.X.detach().double(), teacher.X.detach())
            base_nnz = int(teacher.baseline_nnz)
        elif isinstance(teacher, nn.Module):
            with torch.no_grad():
                dt = next((t.dtype for t in teacher.parameters() if t.is_floating_point()), Uf.dtype)
                Yt = teacher(U.detach().to(dt))
            if not isinstance(Yt, Tensor):
                raise InputError(f"the teacher must return one tensor, got {type(Yt).__name__}")
            Yt = Yt.detach().reshape(m, -1)
            if Yt.shape[1] != model.out_features:
                raise ShapeError(f"the teacher gives {Yt.shape[1]} outputs, the model {model.out_features}")
            base_nnz = sum(int(torch.count_nonzero(t.detach())) for t in teacher.parameters())
        else:
            raise InputError(f"teacher must be idlkit.sim.States or a torch.nn.Module, got "
                             f"{type(teacher).__name__}")
        _check_finite_rows("the teacher's outputs", Yt)
        out_err = _rel(Yp.double() - Yt.double(), Yt)
        agreement = float((_classes(Yp) == _classes(Yt)).double().mean())
        if labels is not None:
            teacher_acc = float((_classes(Yt) == labels).double().mean())
        sparsity = (1.0 - nnz / max(base_nnz, 1)) * 100.0
    return Evaluation(m=m, accuracy=accuracy, mse=mse, teacher_accuracy=teacher_acc, agreement=agreement,
                      output_error=out_err, state_error=state_err, nnz=nnz, nnz_A=count_nonzero(model.A),
                      a_inf_norm=_a_inf(model.A), baseline_nnz=base_nnz, sparsity=sparsity, seconds=secs)
