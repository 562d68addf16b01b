"""The implicit model ``y = C x + D u + d``, ``x = phi(A x + B u + b)`` (paper 000 eq. 1.1, §3.1).

User-facing tensors are batch-first (``u``: ``(batch, p)``, output ``(batch, q)``,
state ``(batch, n)``); the transposition to the papers' column convention
happens in :meth:`ImplicitModel._pre_activation` and :meth:`ImplicitModel.equilibrium`
only.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor, nn

from . import wellposed as wp
from ._matrix import (
    block_pattern_graph,
    csr_int32,
    entry_in,
    is_sparse,
    row_min_col,
    sparse_key,
    store_sparse,
)
from ._validation import (
    all_finite,
    check_allocation,
    check_bool,
    check_float_dtype,
    check_float_tensor,
    check_int,
)
from .activations import Activation, Centered, get_activation
from .errors import ConfigurationError, InputError, NonFiniteError, ShapeError, WellPosednessError
from .function import SolveRecord, equilibrium
from .solve import SolveInfo, SolverSettings
from .solve import triangular as _tri

__all__ = ["ImplicitModel", "ImplicitBase", "WELLPOSEDNESS", "batch_input"]

WELLPOSEDNESS = ("inf", "pf", "mu", "triangular", None)
_RTOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-12}


def batch_input(u: Tensor, in_features: int, dtype: torch.dtype,
                device: torch.device | None = None) -> tuple[Tensor, bool]:
    """Validate a model input; returns ``(U, squeezed)`` with ``U`` of shape ``(batch, p)``.

    Accepts ``(p,)`` (a single sample: ``squeezed`` is True), ``(batch, p)`` and
    ``(batch, *dims)`` with ``prod(dims) = p`` (images, flattened). Anything else, a
    non-floating tensor or a dtype other than the model's raises a typed error naming
    the expected shape or the conversion to apply.

    Args:
        u: the input tensor.
        in_features: ``p``, the model's number of inputs.
        dtype: the model's dtype (``u`` must have it).
        device: the model's device, or ``None`` to skip that check.

    Returns:
        ``(U, squeezed)``: ``U`` of shape ``(batch, p)`` and whether ``u`` was 1-D.

    Raises:
        InputError: not a floating tensor, or another dtype than ``dtype``.
        ShapeError: a shape that is neither ``(p,)``, ``(batch, p)`` nor ``(batch, *dims)``
            with ``prod(dims) = p``.

    Examples:
        >>> U, squeezed = batch_input(torch.ones(3), 3, torch.float32)
        >>> U.shape, squeezed
        (torch.Size([1, 3]), True)
        >>> batch_input(torch.ones(2, 4), 3, torch.float32)
        Traceback (most recent call last):
            ...
        idlkit.errors.ShapeError: expected input of shape (batch, 3), (3,) or (batch, *dims) ...
    """
    if not isinstance(u, Tensor):
        raise InputError(f"input must be a torch.Tensor, got {type(u).__name__}")
    if not u.is_floating_point():
        raise InputError(f"input must be a floating tensor, got dtype {u.dtype}; convert "
                         f"with u.to({dtype})")
    if u.dtype != dtype:
        raise InputError(f"input dtype {u.dtype} differs from the model's {dtype}; convert "
                         f"the input (u.to({dtype})) or the model (model.to({u.dtype}))")
    if device is not None and u.device != device:
        raise InputError(f"input is on {u.device}, the model on {device}; move one of them "
                         f"(u.to('{device}') or model.to('{u.device}'))")
    p = in_features
    if u.dim() == 1 and u.shape[0] == p:
        return u.unsqueeze(0), True
    if u.dim() == 2 and u.shape[1] == p:
        return u, False
    if u.dim() >= 3 and math.prod(u.shape[1:]) == p:
        return u.reshape(u.shape[0], p), False
    raise ShapeError(f"expected input of shape (batch, {p}), ({p},) or (batch, *dims) with "
                     f"prod(dims) = {p}; got {tuple(u.shape)}")


def _apply(M: Tensor, X: Tensor) -> Tensor:
    """``X M^T`` for batch-first ``X``; a sparse ``M`` is applied as ``(M X^T)^T``."""
    return (M @ X.t()).t() if is_sparse(M) else X @ M.t()


def output_map(X: Tensor, U: Tensor, C: Tensor, D: Tensor, d: Tensor | None) -> Tensor:
    """The prediction equation ``y = C x + D u + d`` (eq. 1.1a, §3.1) on batch-first ``X, U``.

    ``C`` and ``D`` may be torch sparse tensors.
    """
    Y = _apply(C, X) + _apply(D, U)
    return Y if d is None else Y + d


def _sparse_lower_entry(A: Tensor, sizes: tuple[int, ...]) -> tuple[int, int, float] | None:
    """First nonzero of a sparse ``A`` on or below the block diagonal of ``sizes``, else None.

    Decided on the pattern (Thm 2.8/2.9: strictly block upper triangular), vectorised: the
    smallest column block of each row block is compared with the row block, in ``O(nnz)``.
    """
    G = block_pattern_graph(A.detach(), tuple(sizes))
    first = row_min_col(G)
    bad = np.flatnonzero(first <= np.arange(len(sizes)))
    if not bad.size:
        return None
    I = int(bad[0])
    i, j = entry_in(A.detach(), tuple(sizes), I, int(first[I]))
    S = csr_int32(A.detach())
    crow = S.crow_indices()
    s, e = int(crow[i]), int(crow[i + 1])
    hit = (S.col_indices()[s:e] == j).nonzero()
    v = float(S.values()[s + int(hit[0])]) if hit.numel() else 0.0
    return i, j, v


def copy_matrices_(model: nn.Module, mats: dict[str, Tensor], b: Tensor | None,
                   d: Tensor | None) -> None:
    """Copy ``mats`` (name -> tensor) into the model's parameters of those names, and the
    biases when the model has them (a missing one is zero), without autograd."""
    with torch.no_grad():
        for k, M in mats.items():
            getattr(model, k).copy_(M)
        if model.b is not None:
            model.b.copy_(b if b is not None else torch.zeros_like(model.b))
            model.d.copy_(d if d is not None else torch.zeros_like(model.d))


class SolveReports:
    """``last_solve`` / ``last_backward_solve`` of a model that keeps a ``_record``."""

    _record: SolveRecord

    @property
    def last_solve(self) -> SolveInfo | None:
        """:class:`~idlkit.solve.SolveInfo` of the last forward solve."""
        return self._record.forward

    @property
    def last_backward_solve(self) -> SolveInfo | None:
        """:class:`~idlkit.solve.SolveInfo` of the last adjoint (backward) solve."""
        return self._record.backward


class ImplicitBase(SolveReports, nn.Module):
    """What every implicit model shares: frozen solver settings, solve reports, the
    projected-gradient hook and the well-posedness protocol.

    :class:`ImplicitModel`, :class:`~idlkit.compress.LowRankImplicitModel` and (through its
    cell) :class:`~idlkit.rnn.ImplicitRNN` build their :class:`~idlkit.solve.SolverSettings`
    here from the constructor's solver arguments, so that the arguments, their validation
    (registered solver names, tolerances, budgets) and the adjoint's stopping rule are one
    code path. Subclasses implement :meth:`project_`, :meth:`certificate` and
    ``_check_wellposed``.

    Examples:
        >>> model = ImplicitModel(3, 5, 2)
        >>> isinstance(model, ImplicitBase), model.settings.method
        (True, 'anderson')
    """

    settings: SolverSettings
    kappa: float

    def _init_solver(self, *, solver: str = "anderson", tol: float = 1e-6, max_iter: int = 500,
                     backward_solver: str | None = None, backward_tol: float | None = None,
                     backward_max_iter: int | None = None, alpha: float | None = None,
                     anderson_m: int = 5, on_nonconvergence: str = "raise",
                     backward_stop: str = "relative", per_sample: bool | None = None,
                     check_every: int | None = None) -> None:
        """Build and validate ``self.settings``; reset the solve reports."""
        self.settings = SolverSettings(
            method=solver, tol=tol, max_iter=max_iter, alpha=alpha, anderson_m=anderson_m,
            on_nonconvergence=on_nonconvergence, backward_method=backward_solver,
            backward_tol=backward_tol, backward_max_iter=backward_max_iter,
            backward_stop=backward_stop, per_sample=per_sample, check_every=check_every)
        self._validate_settings()
        self._record = SolveRecord()

    def _validate_settings(self) -> None:
        self.settings.validate()

    def set_solver(self, **changes: object) -> ImplicitBase:
        """Change solver settings in place, validated (names as in the constructor:
        ``solver``, ``tol``, ``backward_stop``, ...); returns ``self``.

        Examples:
            >>> model = ImplicitModel(4, 8, 2).set_solver(solver="picard", tol=1e-8)
        """
        names = {"solver": "method", "backward_solver": "backward_method"}
        old = self.settings
        self.settings = old.replace(**{names.get(k, k): v for k, v in changes.items()})
        try:
            self._validate_settings()
        except Exception:
            self.settings = old
            raise
        return self

    def project_(self) -> ImplicitBase:  # pragma: no cover - abstract
        raise NotImplementedError

    def certificate(self) -> object:  # pragma: no cover - abstract
        raise NotImplementedError

    def attach_projection(self, optimizer: torch.optim.Optimizer) -> object:
        """Call :meth:`project_` after every ``optimizer.step()`` (projected gradient, problem 6.4).

        Returns the hook handle (``handle.remove()`` detaches it).

        Args:
            optimizer: the :class:`torch.optim.Optimizer` stepping this model's parameters.

        Returns:
            The hook handle (``handle.remove()`` detaches it).
        """
        def hook(*_: object) -> None:
            self.project_()

        return optimizer.register_step_post_hook(hook)


class ImplicitModel(ImplicitBase):
    """Implicit model with enforced well-posedness and implicit gradients.

    Args:
        in_features: input size ``p``.
        hidden: state size ``n`` (0 gives the static affine map ``y = D u + d``).
        out_features: output size ``q``.
        activation: name (``"relu"``, ``"leaky_relu"``, ``"tanh"``, ``"sigmoid"``,
            ``"identity"``, ``"softmax"``, ``"blockmax"``) or an
            :class:`~idlkit.activations.Activation` (e.g. ``Blockwise``).
        bias: learn biases ``b`` (``(n,)``) and ``d`` (``(q,)``) (paper 000 §3.1).
        wellposedness: the enforced condition: ``"inf"`` (``gamma ||A||_inf <= kappa``,
            exact Euclidean projection), ``"mu"`` (``gamma mu_inf(A) <= kappa``, exact
            projection, paper 004), ``"pf"`` (``lambda_pf(gamma |A|) <= kappa``, by
            rescaling: the PF set is not convex), ``"triangular"`` (strictly upper
            triangular A, Thm 2.8) or ``None`` (unchecked: the solver must converge).
        kappa: bound of the condition, in (0, 1).
        solver: forward solver, one of ``picard``, ``averaged``, ``anderson``, ``triangular``.
        tol: stopping rule of the forward (and by default backward) solve.
        max_iter: iteration budget of the forward (and by default backward) solve.
        backward_solver: adjoint solver (default: ``anderson``, or ``triangular`` with a
            triangular forward solver).
        backward_tol: adjoint stopping rule, relative to ``||dL/dx||_inf`` unless
            ``backward_stop="absolute"`` (default: ``tol``).
        backward_max_iter: adjoint iteration budget (default: ``max_iter``).
        backward_stop: the adjoint's stopping rule, ``"relative"`` (default: residual at most
            ``backward_tol * ||dL/dx||_inf``) or ``"absolute"`` (at most ``backward_tol``, as
            torchidl's ``grad_tol``); see :mod:`idlkit.solve.settings`.
        per_sample: ``True``: record each sample's depth in ``last_solve`` and retire
            converged samples; ``False``: lean whole-batch solves; ``None`` (default): lean
            where retirement cannot pay (small ``batch x n``), see :mod:`idlkit.solve.lean`.
        check_every: residual reads every this many iterations in lean solves (default 1
            on the CPU, 8 on an accelerator, where each read synchronises the device).
        alpha: averaged step (default chosen from A, see :func:`idlkit.solve.default_alpha`).
        anderson_m: Anderson memory.
        on_nonconvergence: ``"raise"`` (default :class:`~idlkit.errors.ConvergenceError`),
            ``"warn"`` or ``"ignore"``.
        device: as for :class:`torch.nn.Linear`.
        dtype: as for :class:`torch.nn.Linear`.

    Attributes:
        A: ``(n, n)`` state matrix.
            A model made by :meth:`from_matrices` from torch *sparse* matrices (as
            :func:`idlkit.convert.from_torch` makes) keeps each sparse matrix sparse, as a
            frozen *buffer* (not a parameter: it receives no gradient; gradients still
            flow to the input and to dense parameters such as the biases). Forward,
            backward, the ``triangular`` solver and :meth:`certificate` (``triangular``)
            accept it without densifying. The ``triangular`` solver caches its level plan
            (paper 000 Thm 2.8-2.9: levels and per-level row blocks of ``A`` and ``A^T``) in
            the model's own :class:`~idlkit.solve.PlanCache`; it is rebuilt when ``A`` is
            replaced or edited in place (a dense ``A`` is re-checked every call).
        B: ``(n, p)`` input matrix (sparse as ``A``).
        C: ``(q, n)`` output matrix (sparse as ``A``).
        D: ``(q, p)`` feed-through matrix (sparse as ``A``).
        b: ``(n,)`` state bias, ``None`` without bias.
        d: ``(q,)`` output bias, ``None`` without bias.
        last_solve: :class:`~idlkit.solve.SolveInfo` of the last forward solve.
        last_backward_solve: :class:`SolveInfo` of the last adjoint solve.

    Examples:
        >>> model = ImplicitModel(in_features=3, hidden=5, out_features=2, kappa=0.9)
        >>> u = torch.randn(4, 3)
        >>> model(u).shape, model.equilibrium(u).shape
        (torch.Size([4, 2]), torch.Size([4, 5]))
        >>> bool(model.last_solve.converged), model.certificate().wellposed
        (True, True)
    """

    def __init__(self, in_features: int, hidden: int, out_features: int,
                 activation: str | Activation = "relu", bias: bool = True,
                 wellposedness: str | None = "inf", kappa: float = 0.95,
                 solver: str = "anderson", tol: float = 1e-6, max_iter: int = 500, *,
                 backward_solver: str | None = None, backward_tol: float | None = None,
                 backward_max_iter: int | None = None, alpha: float | None = None,
                 anderson_m: int = 5, on_nonconvergence: str = "raise",
                 backward_stop: str = "relative", per_sample: bool | None = None,
                 check_every: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 _allocate: bool = True) -> None:
        super().__init__()
        in_features = check_int("in_features", in_features, 1)
        hidden = check_int("hidden", hidden, 0)
        out_features = check_int("out_features", out_features, 1)
        bias = check_bool("bias", bias)
        dtype = check_float_dtype("dtype", dtype)
        if _allocate:
            check_allocation(f"ImplicitModel(hidden={hidden})",
                             hidden * (hidden + in_features) + out_features * (hidden + in_features), dtype)
        if wellposedness not in WELLPOSEDNESS:
            raise ConfigurationError(f"wellposedness must be one of {list(WELLPOSEDNESS)}, got "
                                     f"{wellposedness!r}")
        self.kappa = wp.check_kappa(kappa)
        self.activation = get_activation(activation)
        self.activation.blocks(hidden)  # validates block partitions against n
        self.wellposedness = wellposedness
        self._init_solver(solver=solver, tol=tol, max_iter=max_iter, alpha=alpha,
                          anderson_m=anderson_m, on_nonconvergence=on_nonconvergence,
                          backward_solver=backward_solver, backward_tol=backward_tol,
                          backward_max_iter=backward_max_iter, backward_stop=backward_stop,
                          per_sample=per_sample, check_every=check_every)
        self._plans = _tri.PlanCache()  # the triangular solver's plan of this model's A
        self.in_features, self.hidden, self.out_features = in_features, hidden, out_features

        def empty(*shape: int) -> Tensor:
            return torch.empty(*shape, device=device, dtype=dtype)

        self._wp_cache: tuple[tuple, str | None] | None = None
        self._setup_cache: tuple | None = None  # see _solve_setup
        self._lower_cache: tuple[tuple, tuple[int, int, float] | None] | None = None
        if not _allocate:  # from_matrices with sparse matrices fills them in
            return
        self.A = nn.Parameter(empty(hidden, hidden))
        self.B = nn.Parameter(empty(hidden, in_features))
        self.C = nn.Parameter(empty(out_features, hidden))
        self.D = nn.Parameter(empty(out_features, in_features))
        if bias:
            self.b = nn.Parameter(empty(hidden))
            self.d = nn.Parameter(empty(out_features))
        else:
            self.register_parameter("b", None)
            self.register_parameter("d", None)
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up

    def _validate_settings(self) -> None:
        self.settings.validate()
        if self.wellposedness == "mu" and not getattr(self.activation, "monotone", False):
            raise ConfigurationError(
                f"wellposedness='mu' needs a monotone componentwise activation (phi' >= 0), got "
                f"{self.activation!r}; use 'inf' or 'pf'")

    def reset_parameters(self) -> None:
        """Initialise as :class:`torch.nn.Linear` does, then make ``A`` satisfy its condition."""
        with torch.no_grad():
            n, p = self.hidden, self.in_features
            for W, fan_in in ((self.B, p), (self.C, n), (self.D, p)):
                bound = 1.0 / math.sqrt(max(fan_in, 1))
                W.uniform_(-bound, bound)
            self.A.uniform_(-1.0 / math.sqrt(max(n, 1)), 1.0 / math.sqrt(max(n, 1)))
            if self.b is not None:
                self.b.uniform_(-1.0 / math.sqrt(p), 1.0 / math.sqrt(p))
                self.d.uniform_(-1.0 / math.sqrt(max(n, 1)), 1.0 / math.sqrt(max(n, 1)))
            if self.wellposedness in ("pf", "mu", None):
                # ||A||_inf <= kappa / gamma implies every other certificate
                limit = self.kappa / self.activation.lipschitz_inf
                self.A.mul_(min(1.0, limit / max(wp.inf_norm(self.A), 1e-300)))
            self.project_()

    @classmethod
    def from_matrices(cls, A: Tensor, B: Tensor, C: Tensor, D: Tensor, b: Tensor | None = None,
                      d: Tensor | None = None, *, activation: str | Activation = "relu",
                      wellposedness: str | None = None, kappa: float = 0.95,
                      **solver_kwargs: object) -> ImplicitModel:
        """Model holding copies of the given matrices (dtype and device of ``A``).

        Shapes: ``A (n, n)``, ``B (n, p)``, ``C (q, n)``, ``D (q, p)``, ``b (n,)``, ``d (q,)``;
        with one bias given the other is zero. ``n = 0`` (empty ``A``) gives the static
        affine map ``y = D u + d``. Torch sparse matrices (COO/CSR/CSC) stay sparse: they are
        stored (coalesced, as CSR with int32 indices when they fit; a sorted CSR input is
        taken without a COO round trip) as frozen buffers, dense ones as parameters; no dense
        ``(n, n)`` matrix is ever allocated. The declared ``wellposedness`` must already hold:
        a violation raises :class:`WellPosednessError` (nothing is projected silently).
        ``solver_kwargs`` are the constructor's solver settings (``solver``, ``tol``, ...).

        Args:
            A: ``(n, n)`` state matrix, dense or torch sparse (COO/CSR/CSC).
            B: ``(n, p)`` input matrix.
            C: ``(q, n)`` output matrix.
            D: ``(q, p)`` feed-through matrix.
            b: ``(n,)`` state bias, or ``None``.
            d: ``(q,)`` output bias, or ``None``.
            activation: name or :class:`~idlkit.activations.Activation`, as in the constructor.
            wellposedness: the condition that must hold and is enforced from now on (``"inf"``,
                ``"mu"``, ``"pf"``, ``"triangular"``), or ``None`` for none.
            kappa: bound of the condition, in (0, 1).
            **solver_kwargs: the constructor's solver settings (``solver``, ``tol``, ``max_iter``, ...).

        Returns:
            A new :class:`ImplicitModel` with ``n``, ``p``, ``q`` read from the matrices.

        Raises:
            ShapeError: matrices or biases of inconsistent shapes.
            InputError: a non-floating or non-finite matrix, or mixed dtypes/devices.
            WellPosednessError: the declared ``wellposedness`` does not hold for ``A``.
        """
        mats = {"A": A, "B": B, "C": C, "D": D}
        for k, M in mats.items():
            if not isinstance(M, Tensor) or M.dim() != 2:
                raise ShapeError(f"{k} must be a 2-D tensor, got {getattr(M, 'shape', type(M))}")
            check_float_tensor(k, M)
        for k, v in (("b", b), ("d", d)):
            if v is not None:
                check_float_tensor(k, v)
        for k, v in (*mats.items(), ("b", b), ("d", d)):
            if v is not None and v.device != A.device:
                raise InputError(f"{k} is on {v.device} but A on {A.device}; move the matrices to one "
                                 f"device (e.g. {k}.to('{A.device}'))")
        n, p, q = A.shape[0], B.shape[1], C.shape[0]
        expected = {"A": (n, n), "B": (n, p), "C": (q, n), "D": (q, p)}
        for k, M in mats.items():
            if tuple(M.shape) != expected[k]:
                raise ShapeError(f"{k} has shape {tuple(M.shape)}, expected {expected[k]} for "
                                 f"n={n}, p={p}, q={q}")
        for k, v, size in (("b", b, n), ("d", d, q)):
            if v is not None and tuple(v.shape) != (size,):
                raise ShapeError(f"{k} has shape {tuple(v.shape)}, expected ({size},)")
        bias = b is not None or d is not None
        if any(is_sparse(M) for M in mats.values()):
            return cls._from_sparse(mats, b, d, bias, activation=activation,
                                    wellposedness=wellposedness, kappa=kappa, **solver_kwargs)
        model = cls(p, n, q, activation=activation, bias=bias, wellposedness=wellposedness,
                    kappa=kappa, dtype=A.dtype, device=A.device, **solver_kwargs)  # type: ignore[arg-type]
        copy_matrices_(model, mats, b, d)
        model._check_wellposed()
        return model

    @classmethod
    def _from_sparse(cls, mats: dict[str, Tensor], b: Tensor | None, d: Tensor | None, bias: bool,
                     **kwargs: object) -> ImplicitModel:
        """:meth:`from_matrices` with at least one sparse matrix (see there)."""
        A = mats["A"]
        n, p, q = A.shape[0], mats["B"].shape[1], mats["C"].shape[0]
        model = cls(p, n, q, bias=bias, dtype=A.dtype, device=A.device, _allocate=False,
                    **kwargs)  # type: ignore[arg-type]
        for k, M in mats.items():
            M = M.detach().to(A.dtype)
            if is_sparse(M):
                model.register_buffer(k, store_sparse(M))
            else:
                setattr(model, k, nn.Parameter(M.clone()))
        if bias:
            model.b = nn.Parameter((b if b is not None else torch.zeros(n)).detach().to(A).clone())
            model.d = nn.Parameter((d if d is not None else torch.zeros(q)).detach().to(A).clone())
        else:
            model.register_parameter("b", None)
            model.register_parameter("d", None)
        model._check_wellposed()
        return model

    @property
    def sparse(self) -> bool:
        """Whether ``A`` is stored as a torch sparse tensor (a frozen buffer)."""
        return is_sparse(self.A)

    # ------------------------------------------------------------------ well-posedness

    def project_(self) -> ImplicitModel:
        """Enforce the declared well-posedness set on ``A`` in place (call after each step).

        ``inf``: exact Euclidean projection onto ``{||A||_inf <= kappa / gamma_inf}``
        (row-wise l1-ball projection, paper 000 App. H). ``mu``: exact projection onto
        ``{mu_inf(A) <= kappa / gamma}``. ``pf``: ``A <- A kappa / lambda_pf`` when
        ``gamma lambda_pf(|A|) > kappa`` (a rescaling: the PF set is not convex).
        ``triangular``: zero the diagonal and below. A sparse ``A`` is frozen: it is only
        checked (:class:`WellPosednessError` when the condition fails).
        """
        if self.sparse:
            self._check_wellposed()
            return self
        if not all_finite(self.A):
            raise NonFiniteError("A has NaN/Inf entries (the last optimizer step diverged): there is "
                                 "nothing to project; lower the learning rate or restore a checkpoint")
        with torch.no_grad():
            A, act, kind = self.A, self.activation, self.wellposedness
            if kind == "inf":
                radius = self.kappa / act.lipschitz_inf
                # inside already (the usual case after a small optimizer step): one row-sum
                # check, the criterion of the projection itself (float64 row sums)
                if self.hidden and float(A.abs().sum(dim=1, dtype=torch.float64).max()) > radius:
                    A.copy_(wp.project_inf_ball(A, radius))
            elif kind == "mu":
                gamma = self.kappa / act.lipschitz  # type: ignore[attr-defined]
                if self.hidden and wp.mu_inf(A) > gamma:
                    A.copy_(wp.project_mu_set(A, gamma))
            elif kind == "triangular":
                A.copy_(wp.project_triangular(A, strict=True, sizes=act.blocks(self.hidden).sizes))
            elif kind == "pf":
                pf = self._pf_value()
                if pf > self.kappa:
                    A.mul_(self.kappa / pf)
        return self

    def _pf_value(self) -> float:
        """``lambda_pf(Gamma N(A))`` alone (float64): the projection's test, without the other
        certificates of :func:`~idlkit.wellposed.check` (a sparse A keeps check's exact 0 for
        an acyclic block graph)."""
        if self.sparse:
            return wp.check(self.A, self.activation).pf
        return wp.blip_condition(self.A, self.activation)

    def certificate(self) -> wp.WellPosedness:
        """Float64 report: ``||A||_inf``, ``lambda_pf``, ``mu_inf``, triangularity, margins.

        For a sparse ``A`` nothing is densified: ``||A||_inf`` and ``mu_inf`` are computed
        on the sparse matrix; strict (block) upper triangularity is checked on its pattern,
        and when it holds ``lambda_pf = 0`` exactly (``Gamma N(A)`` is then strictly upper
        triangular, Thm 2.7-2.9); otherwise ``pf`` is reported as ``nan`` (not evaluated).
        """
        if self.sparse:
            return self._sparse_certificate()
        return wp.check(self.A, self.activation, declared=self.wellposedness, kappa=self.kappa)

    def _sparse_certificate(self) -> wp.WellPosedness:
        A, act = self.A, self.activation
        gamma_inf = float(act.lipschitz_inf)
        nrm, mu = wp.inf_norm(A), wp.mu_inf(A) if self.hidden else -math.inf
        tri = self._sparse_lower() is None
        pf = 0.0 if tri else math.nan
        holds = {"inf": gamma_inf * nrm < 1, "pf": tri, "triangular": tri}
        margins = {"inf": 1 - gamma_inf * nrm, "pf": 1.0 if tri else -math.inf,
                   "triangular": 1.0 if tri else -1.0}
        base = getattr(act, "base", act)
        if getattr(base, "monotone", False):
            holds["mu"] = base.lipschitz * mu < 1
            margins["mu"] = 1 - base.lipschitz * mu
        else:
            mu = math.nan
        declared, kappa = self.wellposedness, self.kappa
        if declared in ("inf", "mu", "pf"):
            value = {"inf": gamma_inf * nrm, "pf": pf,
                     "mu": getattr(base, "lipschitz", math.nan) * mu}[declared]
            margins[declared] = kappa - value
            holds[declared] = value <= kappa * (1 + 16 * max(self.hidden, 1) * 2.3e-16)
        return wp.WellPosedness(inf_norm=nrm, gamma_inf=gamma_inf, pf=pf, mu_inf=mu,
                                triangular=tri, holds=holds, margins=margins, declared=declared,
                                kappa=kappa)

    def _sparse_lower(self) -> tuple[int, int, float] | None:
        """:func:`_sparse_lower_entry` of the frozen sparse ``A``, cached under its storages,
        versions and the activation blocks (it is evaluated on every forward)."""
        sizes = self.activation.blocks(self.hidden).sizes
        key = (sparse_key(self.A), sizes) if self.A.layout == torch.sparse_csr else None
        cache = getattr(self, "_lower_cache", None)
        if key is not None and cache is not None and cache[0] == key:
            return cache[1]
        res = _sparse_lower_entry(self.A, sizes)
        self._lower_cache = (key, res) if key is not None else None
        return res

    def _check_wellposed(self) -> None:
        """Raise :class:`WellPosednessError` if ``A`` violates the declared condition.

        ``inf``, ``mu`` and ``triangular`` cost O(n^2) and are evaluated on every call.
        The PF eigenvalue is cached under a fingerprint of ``A``'s values (sum and sum of
        squares, which also catch edits through ``A.data`` that leave ``_version`` alone).
        """
        kind = self.wellposedness
        if kind is None or self.hidden == 0:
            return
        if kind == "pf":
            A = self.A.detach()
            key = (A.dtype, A.device, A.shape, float(A.sum()), float((A * A).sum()))
            if self._wp_cache is not None and self._wp_cache[0] == key:
                msg = self._wp_cache[1]
            else:
                msg = self._violation(kind)
                self._wp_cache = (key, msg)
        else:
            msg = self._violation(kind)
        if msg is not None:
            raise WellPosednessError(msg)

    def _violation(self, kind: str) -> str | None:
        A, act = self.A.detach(), self.activation
        slack = 1 + _RTOL.get(A.dtype, 1e-5)
        fix = "call model.project_() after the optimizer step (or model.attach_projection(opt))"
        if self.sparse:
            if kind == "triangular":
                bad = self._sparse_lower()
                if bad is None:
                    return None
                i, j, v = bad
                return (f"wellposedness='triangular' needs strictly (block) upper-triangular A; "
                        f"A[{i}, {j}] = {v:.6g} (sparse A is frozen: rebuild it)")
            rep = self._sparse_certificate()
            if rep.holds.get(kind, False):
                return None
            return (f"sparse A violates wellposedness={kind!r} (certificate: {rep.margins}); "
                    f"sparse A is frozen: use wellposedness='triangular' or rebuild A")
        if kind == "triangular":
            lower = A - wp.project_triangular(A, strict=True, sizes=act.blocks(self.hidden).sizes)
            if bool(lower.ne(0).any()):
                i, j = (lower.ne(0).nonzero()[0]).tolist()
                return (f"wellposedness='triangular' needs strictly (block) upper-triangular A; "
                        f"A[{i}, {j}] = {float(A[i, j]):.6g}. Fix: {fix}")
            return None
        if kind == "inf":
            value = act.lipschitz_inf * float(A.abs().sum(dim=1).max())
            label = "gamma_inf * ||A||_inf"
        elif kind == "mu":
            value = act.lipschitz * wp.mu_inf(A)  # type: ignore[attr-defined]
            label = "gamma * mu_inf(A)"
        else:
            value = self._pf_value()
            label = "lambda_pf"
        if value > self.kappa * slack:
            return (f"A violates wellposedness={kind!r}: {label} = {value:.6g} > kappa = "
                    f"{self.kappa:g}. Fix: {fix}")
        return None

    # ------------------------------------------------------------------ forward

    def _as_batch(self, u: Tensor) -> tuple[Tensor, bool]:
        return batch_input(u, self.in_features, self.A.dtype, self.A.device)

    def _solve_activation(self) -> tuple[Activation, Tensor | None]:
        """The activation the solver sees and ``phi(0)`` when it is shifted (§3.1)."""
        act = self._solve_setup()[0]
        if act is self.activation or not isinstance(act, Centered):
            return act, None  # phi(0) = 0 already (a user's Centered map included)
        return act, act.offset(self.hidden, self.A)

    def _solve_setup(self) -> tuple[Activation, SolverSettings]:
        """The centred activation (§3.1) and the settings the solver sees, cached for the
        activation and settings objects (both immutable; replacing either rebuilds it).

        With ``wellposedness="inf"`` and ``kappa / gamma_inf < 1`` the model guarantees
        ``||A||_inf < 1`` on every forward (checked there), so the default Anderson and
        adjoint step is 1 (:meth:`~idlkit.solve.registry.Anderson.default_step`): it is
        fixed here instead of re-measuring ``||A||_inf`` on every solve.
        """
        key = (self.activation, self.settings, self.hidden)
        cache = self._setup_cache
        if (cache is not None and cache[0][0] is key[0] and cache[0][1] is key[1]
                and cache[0][2] == key[2]):
            return cache[1], cache[2]
        act = self.activation.centered(self.hidden)
        settings = self.settings
        if (settings.alpha is None and self.wellposedness == "inf"
                and self.kappa / self.activation.lipschitz_inf < 1):
            settings = dataclasses.replace(settings, alpha=1.0)
        self._setup_cache = (key, act, settings)
        return act, settings

    def _pre_activation(self, U: Tensor, offset: Tensor | None) -> Tensor:
        """``B u + b`` in column convention ``(n, batch)``, plus ``A phi(0)`` when shifted.

        Computed batch-first (one ``addmm`` for a dense ``B``) and returned as the column
        view: the solvers iterate batch-first, so they take its transpose without a copy."""
        if self.b is not None and not is_sparse(self.B):
            Zb = torch.addmm(self.b, U, self.B.t())
        else:
            Zb = _apply(self.B, U)
            if self.b is not None:
                Zb = Zb + self.b
        if offset is not None:
            Zb = Zb + (self.A @ offset).t()
        return Zb.t()

    def _state(self, U: Tensor, x0: Tensor | None) -> Tensor:
        """Equilibrium in column convention ``(n, batch)``, with autograd."""
        self._check_wellposed()
        if not all_finite(U):
            raise NonFiniteError("input u contains NaN or Inf")
        return self._solve(U, x0)

    def _step(self, U: Tensor, x0: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(y, x)`` batch-first for an input ``U (batch, p)`` the caller has validated, with
        well-posedness checked by the caller for the current ``A`` (the per-step path of
        :class:`~idlkit.rnn.ImplicitRNN`, which checks once per sequence)."""
        X = self._solve(U, x0).t()
        return output_map(X, U, self.C, self.D, self.d), X

    def _solve(self, U: Tensor, x0: Tensor | None) -> Tensor:
        """:meth:`_state` without the checks of ``A`` and ``U``."""
        if self.hidden == 0:  # static affine map: nothing to solve
            m = U.shape[0]
            self._record = SolveRecord(SolveInfo(
                "none", 0, 0.0, True, torch.zeros(m, dtype=torch.long, device=U.device),
                U.new_zeros(m), self.settings.tol))
            return U.new_zeros(0, m)
        act, offset = self._solve_activation()
        Zc = self._pre_activation(U, offset)
        x0c = None
        if x0 is not None:
            x0 = x0.reshape(1, -1) if x0.dim() == 1 else x0
            if x0.shape != (U.shape[0], self.hidden):
                raise ShapeError(f"warm start x0 must have shape ({U.shape[0]}, {self.hidden}), "
                                 f"got {tuple(x0.shape)}")
            x0c = x0.detach().t() - (0 if offset is None else offset)
        X, record = equilibrium(self.A, Zc, act, self._solve_setup()[1], x0c, self._plans)
        self._record = record
        return X if offset is None else X + offset

    def equilibrium(self, u: Tensor, x0: Tensor | None = None) -> Tensor:
        """The state ``x`` solving ``x = phi(A x + B u + b)``, shape ``(batch, n)``.

        ``x0`` (``(batch, n)``) warm-starts the solver.

        Args:
            u: ``(batch, p)``, ``(p,)`` or ``(batch, *dims)`` input of the model's dtype.
            x0: ``(batch, n)`` warm start of the solver, or ``None`` (zeros).

        Returns:
            ``(batch, n)`` states (``(n,)`` for a 1-D input).

        Raises:
            ShapeError: ``u`` or ``x0`` of the wrong shape.
            InputError: a non-floating ``u`` or one of another dtype.
            NonFiniteError: NaN/Inf in ``u``.
            WellPosednessError: ``A`` violates the declared condition.
            ConvergenceError: the solver did not converge (with ``on_nonconvergence="raise"``).
        """
        U, squeeze = self._as_batch(u)
        X = self._state(U, x0).t()
        return X.squeeze(0) if squeeze else X

    def forward(self, u: Tensor, x0: Tensor | None = None) -> Tensor:
        """Prediction ``y = C x + D u + d``, shape ``(batch, q)`` (``(q,)`` for a 1-D input).

        Args:
            u: ``(batch, p)``, ``(p,)`` or ``(batch, *dims)`` input of the model's dtype.
            x0: ``(batch, n)`` warm start of the solver, or ``None`` (zeros).

        Returns:
            ``(batch, q)`` predictions (``(q,)`` for a 1-D input).

        Raises:
            ShapeError: ``u`` or ``x0`` of the wrong shape.
            InputError: a non-floating ``u`` or one of another dtype.
            NonFiniteError: NaN/Inf in ``u``.
            WellPosednessError: ``A`` violates the declared condition.
            ConvergenceError: the solver did not converge (with ``on_nonconvergence="raise"``).
        """
        U, squeeze = self._as_batch(u)
        Y = output_map(self._state(U, x0).t(), U, self.C, self.D, self.d)
        return Y.squeeze(0) if squeeze else Y

    def forward_with_state(self, u: Tensor, x0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(y, x)`` from one solve: the prediction and the equilibrium state it came from.

        For a caller that warm-starts the next solve from this one's state (as
        :class:`~idlkit.rnn.ImplicitRNN` does from one time step to the next).

        Args:
            u: ``(batch, p)``, ``(p,)`` or ``(batch, *dims)`` input of the model's dtype.
            x0: ``(batch, n)`` warm start of the solver, or ``None`` (zeros).

        Returns:
            ``(y, x)``: ``(batch, q)`` predictions and ``(batch, n)`` states (1-D for a 1-D input).

        Raises:
            ShapeError: ``u`` or ``x0`` of the wrong shape.
            WellPosednessError: ``A`` violates the declared condition.
            ConvergenceError: the solver did not converge (with ``on_nonconvergence="raise"``).
        """
        U, squeeze = self._as_batch(u)
        X = self._state(U, x0).t()
        Y = output_map(X, U, self.C, self.D, self.d)
        return (Y.squeeze(0), X.squeeze(0)) if squeeze else (Y, X)

    # ------------------------------------------------------------------ reports

    def config(self) -> dict:
        """JSON-serialisable constructor arguments (used by :mod:`idlkit.io`)."""
        return {
            "in_features": self.in_features, "hidden": self.hidden,
            "out_features": self.out_features, "activation": self.activation.config(),
            "bias": self.b is not None, "wellposedness": self.wellposedness,
            "kappa": self.kappa, **self.settings.config(),
        }

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, hidden={self.hidden}, "
                f"out_features={self.out_features}, activation={self.activation!r}, "
                f"bias={self.b is not None}, wellposedness={self.wellposedness!r}, "
                f"kappa={self.kappa:g}, solver={self.settings.method!r}, tol={self.settings.tol:g}")
