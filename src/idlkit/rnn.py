"""ImplicitRNN: an implicit block in place of the recurrent cell (thesis, paper 003, §5.2).

For a sequence ``(s_1, ..., s_T)`` the implicit RNN runs, for ``i = 1..T``,

    u_i = (s_i, h_{i-1}),   x_i = phi(A x_i + B u_i + b),   h_i = C x_i + D u_i + d

with ``h_0 = 0`` (thesis §5.2, Fig. 5.1: the linear cell of a vanilla RNN replaced by
the implicit prediction rule, "not distinguishing between the output and the recurrent
hidden state"). A linear head maps ``h_T`` (sequence-to-one) or every ``h_i``
(sequence-to-sequence) to the output, as torchidl's ``ImplicitRNN`` does.

Each step is one equilibrium of the same :class:`~idlkit.model.ImplicitModel` (the
*cell*): its well-posedness is checked on every step, its solve is warm-started from the
previous step's state ``x_{i-1}`` (the thesis starts from ``x_0 = 0``; a warm start changes
the answer by at most the solver tolerance), and its gradient is the implicit one
(paper 000 App. G) at every step; autograd chains the steps through ``h`` (implicit
differentiation through time, with O(n^2 + T n m) memory: no solver iterate is kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import wellposed as wp
from ._validation import all_finite, check_int
from .activations import Activation
from .errors import ConfigurationError, InputError, NonFiniteError, ShapeError
from .function import SolveRecord
from .model import ImplicitModel, output_map
from .solve import PlanCache, SolveInfo, SolverSettings
from .solve.api import solve_adjoint, solve_forward

__all__ = ["ImplicitRNN", "RNNOutput", "MODES", "aggregate_solves"]

MODES = ("seq2one", "seq2seq")


@dataclass(frozen=True)
class RNNOutput:
    """What :meth:`ImplicitRNN.run` returns.

    Attributes:
        output: ``(batch, output_size)`` for ``seq2one``, ``(batch, T, output_size)`` for
            ``seq2seq`` (zero past a sequence's length).
        hidden: ``(batch, T, recurrent_size)``, the recurrent states ``h_1..h_T`` (a
            sequence's last state is repeated past its length).
        final: ``(batch, recurrent_size)``, ``h`` at each sequence's last step.
        state: ``(batch, n)``, the equilibrium ``x`` at each sequence's last step.

    Examples:
        >>> rnn = ImplicitRNN(input_size=2, hidden=6, output_size=1)
        >>> out = rnn.run(torch.randn(4, 5, 2))
        >>> isinstance(out, RNNOutput), out.output.shape, out.final.shape
        (True, torch.Size([4, 1]), torch.Size([4, 1]))
    """

    output: Tensor
    hidden: Tensor
    final: Tensor
    state: Tensor


def aggregate_solves(infos: list[SolveInfo], valid: list[Tensor] | None = None) -> SolveInfo:
    """One :class:`SolveInfo` for a sequence of per-step solves.

    ``iterations`` and ``per_sample_iterations`` add up over the steps (the depth the
    sequence cost, thesis §5.4); ``residual``/``per_sample_residual`` are the worst step's;
    ``converged`` holds when every step converged. ``valid[i]`` (bool ``(batch,)``) masks the
    steps past a sequence's length out of the per-sample counts.

    Args:
        infos: one :class:`SolveInfo` per time step, at least one.
        valid: per step a bool ``(batch,)`` mask of the sequences still running, or ``None``.

    Returns:
        The combined :class:`SolveInfo`.

    Raises:
        InputError: an empty ``infos``.

    Examples:
        >>> A = 0.5 * torch.eye(2, dtype=torch.float64)
        >>> b = torch.ones(2, 3, dtype=torch.float64)
        >>> infos = [idlkit.fixed_point(A, b, "relu")[1] for _ in range(3)]   # three steps
        >>> agg = aggregate_solves(infos)
        >>> agg.iterations == sum(i.iterations for i in infos), bool(agg.converged)
        (True, True)
    """
    if not infos:
        raise InputError("aggregate_solves needs at least one SolveInfo")
    per_it = torch.zeros_like(infos[0].per_sample_iterations)
    per_res = torch.zeros_like(infos[0].per_sample_residual)
    for i, info in enumerate(infos):
        its, res = info.per_sample_iterations, info.per_sample_residual
        if valid is not None:
            its, res = its * valid[i], res * valid[i]
        per_it = per_it + its
        per_res = torch.maximum(per_res, res)
    return SolveInfo(
        method=f"{infos[0].method} x {len(infos)} steps",
        iterations=sum(i.iterations for i in infos),
        residual=max(i.residual for i in infos),
        converged=all(i.converged for i in infos),
        per_sample_iterations=per_it, per_sample_residual=per_res, tol=infos[0].tol,
        fallbacks=sum(i.fallbacks for i in infos))


@dataclass
class _RecurrenceSpec:
    """The non-tensor arguments of :class:`_Recurrence`: the cell's (centred) activation,
    the settings its solver sees, its triangular plan cache, the warm start, the lengths
    and one :class:`SolveRecord` per step (filled by forward and backward)."""

    act: Activation
    settings: SolverSettings
    plans: PlanCache
    warm_start: bool
    lengths: Tensor | None
    records: list[SolveRecord]


class _Recurrence(torch.autograd.Function):
    """The ImplicitRNN recurrence over a whole sequence as one autograd node.

    Forward, for ``i = 1..T`` (no autograd graph): ``u_i = (s_i, h_{i-1})``, the
    equilibrium ``x_i = phi(A x_i + B u_i + b)`` by the cell's solver (warm-started from
    ``x_{i-1}``), ``y_i = C x_i + D u_i + d`` and ``h_i = y_i`` (kept at its last value past a
    sequence's length). Saved: ``u_i``, ``x_i`` and ``z_i = A x_i + B u_i + b`` per step,
    ``O(T m (n + p + r))``, no solver iterate.

    Backward, for ``i = T..1``, with ``g_i`` the gradient reaching ``h_i`` (from the output
    and from step ``i + 1``): ``dL/dy_i = g_i`` (where the sequence is live), the state
    gradient ``G_i = C^T dL/dy_i`` (plus the gradient of the returned final state), the
    adjoint equilibrium ``V_i = J(z_i)^T (A^T V_i + G_i)`` (paper 000 eq. G.3-G.4) by the
    cell's adjoint solver and stopping rule, then ``dL/dA += V_i x_i^T``, ``dL/dB += V_i
    u_i^T``, ``dL/db += V_i 1``, ``dL/dC += dL/dy_i x_i^T``, ``dL/dD += dL/dy_i u_i^T``,
    ``dL/du_i = D^T dL/dy_i + B^T V_i``, whose last ``r`` entries flow to ``h_{i-1}``. This is
    the chain rule of the step-by-step graph, written out: the per-step autograd nodes
    (concatenation, masks, output map, one implicit function per step) cost more than the
    solves on small cells.
    """

    @staticmethod
    def forward(ctx, s: Tensor, h0: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,  # type: ignore[override]
                b: Tensor, d: Tensor, spec: _RecurrenceSpec) -> tuple[Tensor, Tensor]:
        batch, T, _ = s.shape
        method, opts = spec.settings.method, spec.settings.forward_options
        h, x_keep, x_prev = h0, None, None
        Us, Xs, Zs, hs = [], [], [], []
        for i in range(T):
            U = torch.cat((s[:, i], h), dim=1)
            Zb = torch.addmm(b, U, B.t()) if b.numel() else U @ B.t()
            x0 = x_prev.t() if (spec.warm_start and x_prev is not None) else None
            X, Z, info = solve_forward(A, Zb.t(), spec.act, method, opts, x0, spec.plans)
            spec.records[i].forward = info
            Xb = X.t()
            y = output_map(Xb, U, C, D, d if d.numel() else None)
            if spec.lengths is not None:
                live = (spec.lengths > i)[:, None]
                h = torch.where(live, y, h)
                x_keep = Xb if x_keep is None else torch.where(live, Xb, x_keep)
            else:
                h, x_keep = y, Xb
            x_prev = Xb
            Us.append(U)
            Xs.append(X)
            Zs.append(Z)
            hs.append(h)
        ctx.spec = spec
        ctx.save_for_backward(A, B, C, D, torch.stack(Us), torch.stack(Xs), torch.stack(Zs))
        ctx.sizes = (s.shape[2], b.numel() > 0, d.numel() > 0)
        assert x_keep is not None
        return torch.stack(hs, dim=1), x_keep

    @staticmethod
    @once_differentiable
    def backward(ctx, g_hidden: Tensor, g_x: Tensor):  # type: ignore[override]
        A, B, C, D, Us, Xs, Zs = ctx.saved_tensors
        spec: _RecurrenceSpec = ctx.spec
        p, has_b, has_d = ctx.sizes
        s_ = spec.settings
        method = s_.adjoint_method
        T = Us.shape[0]
        gA, gB, gC, gD = (torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C),
                          torch.zeros_like(D))
        gb = B.new_zeros(B.shape[0]) if has_b else None
        gd = C.new_zeros(C.shape[0]) if has_d else None
        g_s = g_hidden.new_zeros(g_hidden.shape[0], T, p)
        gh = torch.zeros_like(g_hidden[:, 0])
        gx = g_x
        for i in range(T - 1, -1, -1):
            g_ht = g_hidden[:, i] + gh
            if spec.lengths is not None:
                live = (spec.lengths > i)[:, None]
                g_y, gh = torch.where(live, g_ht, 0.0), torch.where(live, 0.0, g_ht)
                g_xi, gx = torch.where(live, gx, 0.0), torch.where(live, 0.0, gx)
            else:
                g_y, gh, g_xi, gx = g_ht, torch.zeros_like(g_ht), gx, torch.zeros_like(gx)
            U, X, Z = Us[i], Xs[i], Zs[i]  # (m, p + r), (n, m), (n, m)
            gC.addmm_(g_y.t(), X.t())
            gD.addmm_(g_y.t(), U)
            if gd is not None:
                gd += g_y.sum(dim=0)
            G = torch.addmm(g_xi, g_y, C)  # dL/dx_i, batch-first (m, n)
            V, info = solve_adjoint(A, Z, G.t(), spec.act, method, s_.adjoint_options(G), None,
                                    spec.plans)
            spec.records[i].backward = info
            gA.addmm_(V, X.t())
            gB.addmm_(V, U)
            if gb is not None:
                gb += V.sum(dim=1)
            gU = torch.addmm(g_y @ D, V.t(), B)  # dL/du_i (m, p + r)
            g_s[:, i] = gU[:, :p]
            gh = gh + gU[:, p:]
        zero = g_hidden.new_zeros(0)
        return (g_s, gh, gA, gB, gC, gD, gb if gb is not None else zero,
                gd if gd is not None else zero, None)


class ImplicitRNN(nn.Module):
    """Recurrent network whose cell is an implicit model (thesis §5.2, Fig. 5.1).

    Args:
        input_size: features ``p`` of each sequence element ``s_i``.
        hidden: state size ``n`` of the implicit cell.
        output_size: outputs of the linear head; ``None`` returns ``h`` itself (the
            thesis's form ``h_i = y_hat_i``, then ``recurrent_size`` is the output size).
        recurrent_size: size ``r`` of ``h`` (default ``output_size``, or ``hidden`` when
            there is no head). The cell maps ``p + r`` inputs to ``r`` outputs.
        mode: ``"seq2one"`` (head on ``h_T``) or ``"seq2seq"`` (head on every ``h_i``).
        warm_start: start each step's solve from the previous step's state.
        activation: the cell's activation (as for :class:`~idlkit.model.ImplicitModel`).
        bias: the cell's biases (as for :class:`~idlkit.model.ImplicitModel`).
        wellposedness: the cell's condition (as for :class:`~idlkit.model.ImplicitModel`).
        kappa: the cell's bound (as for :class:`~idlkit.model.ImplicitModel`).
        solver: the cell's solver (as for :class:`~idlkit.model.ImplicitModel`).
        tol: the cell's stopping rule (as for :class:`~idlkit.model.ImplicitModel`).
        max_iter: the cell's iteration budget (as for :class:`~idlkit.model.ImplicitModel`).
        **cell_kwargs: further :class:`~idlkit.model.ImplicitModel` settings of the cell.
        device: as for :class:`torch.nn.RNN`.
        dtype: as for :class:`torch.nn.RNN`.

    Input ``s`` is batch-first ``(batch, T, p)``, or ``(T, p)`` for one sequence (as
    :class:`torch.nn.RNN`); ``lengths`` (``(batch,)``, each in ``[1, T]``) runs padded
    sequences of different lengths in one batch.

    Attributes:
        cell: the :class:`ImplicitModel` of one step.
        head: the ``nn.Linear`` head, or ``None``.
        last_solve: :class:`SolveInfo` of the last forward pass, summed over its steps
            (``per_sample_iterations``: the depth each sequence needed, §5.4).
        last_step_solves: the per-step forward :class:`SolveInfo` tuple.
        last_backward_solve: the adjoint solves of the last backward, summed over steps.

    Examples:
        >>> rnn = ImplicitRNN(input_size=2, hidden=6, output_size=1)
        >>> s = torch.randn(4, 5, 2)                         # (batch, T, p)
        >>> rnn(s).shape
        torch.Size([4, 1])
        >>> ImplicitRNN(2, 6, 1, mode="seq2seq")(s).shape
        torch.Size([4, 5, 1])
    """

    def __init__(self, input_size: int, hidden: int, output_size: int | None = None, *,
                 recurrent_size: int | None = None, mode: str = "seq2one",
                 warm_start: bool = True, activation: str | Activation = "relu",
                 bias: bool = True, wellposedness: str | None = "inf", kappa: float = 0.95,
                 solver: str = "anderson", tol: float = 1e-6, max_iter: int = 500,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 **cell_kwargs: object) -> None:
        super().__init__()
        input_size = check_int("input_size", input_size, 1)
        hidden = check_int("hidden", hidden, 1)
        if output_size is not None:
            output_size = check_int("output_size", output_size, 1)
        if recurrent_size is None:
            recurrent_size = output_size if output_size is not None else hidden
        recurrent_size = check_int("recurrent_size", recurrent_size, 1)
        if mode not in MODES:
            raise ConfigurationError(f"mode must be one of {list(MODES)}, got {mode!r}")
        self.input_size, self.hidden, self.output_size = input_size, hidden, output_size
        self.recurrent_size, self.mode, self.warm_start = recurrent_size, mode, bool(warm_start)
        self.cell = ImplicitModel(input_size + recurrent_size, hidden, recurrent_size,
                                  activation=activation, bias=bias,
                                  wellposedness=wellposedness, kappa=kappa, solver=solver,
                                  tol=tol, max_iter=max_iter, device=device, dtype=dtype,
                                  **cell_kwargs)  # type: ignore[arg-type]
        self.head = (nn.Linear(recurrent_size, output_size, device=device, dtype=dtype)
                     if output_size is not None else None)
        self._records: list[SolveRecord] = []
        self._valid: list[Tensor] | None = None

    # ------------------------------------------------------------------ reports

    @property
    def last_step_solves(self) -> tuple[SolveInfo, ...]:
        return tuple(r.forward for r in self._records if r.forward is not None)

    @property
    def last_solve(self) -> SolveInfo | None:
        infos = list(self.last_step_solves)
        return aggregate_solves(infos, self._valid) if infos else None

    @property
    def last_backward_solve(self) -> SolveInfo | None:
        infos = [r.backward for r in self._records if r.backward is not None]
        return aggregate_solves(infos) if infos else None

    def project_(self) -> ImplicitRNN:
        """Enforce the cell's well-posedness set in place (after an optimizer step)."""
        self.cell.project_()
        return self

    def certificate(self) -> wp.WellPosedness:
        """The cell's well-posedness report (float64); it holds for every step."""
        return self.cell.certificate()

    # ------------------------------------------------------------------ forward

    def _check_input(self, s: Tensor, h0: Tensor | None, lengths: Tensor | None
                     ) -> tuple[Tensor, Tensor | None, Tensor | None, bool]:
        if not isinstance(s, Tensor):
            raise InputError(f"sequence must be a torch.Tensor, got {type(s).__name__}")
        unbatched = s.dim() == 2
        if unbatched:
            s = s.unsqueeze(0)
        if s.dim() != 3:
            raise ShapeError(f"expected a sequence of shape (batch, T, {self.input_size}) or "
                             f"(T, {self.input_size}); got {tuple(s.shape)}")
        batch, T, p = s.shape
        if p != self.input_size:
            raise ShapeError(f"sequence elements have {p} features but input_size = "
                             f"{self.input_size}; got shape {tuple(s.shape)}")
        if batch == 0 or T == 0:
            raise InputError(f"empty sequence batch: shape {tuple(s.shape)} (batch and length "
                             f"must be >= 1)")
        dtype = self.cell.A.dtype
        if not s.is_floating_point() or s.dtype != dtype:
            raise InputError(f"sequence dtype {s.dtype} differs from the model's {dtype}; "
                             f"convert with s.to({dtype})")
        if not all_finite(s):
            bad = (~torch.isfinite(s)).nonzero()[0].tolist()
            where = f"(sample {bad[0]}, step {bad[1]})" if not unbatched else f"(step {bad[1]})"
            raise NonFiniteError(f"sequence contains NaN or Inf at {where}; clean or mask it")
        if h0 is not None:
            h0 = h0.unsqueeze(0) if (unbatched and h0.dim() == 1) else h0
            if tuple(h0.shape) != (batch, self.recurrent_size):
                raise ShapeError(f"h0 must have shape ({batch}, {self.recurrent_size}), got "
                                 f"{tuple(h0.shape)}")
            if h0.dtype != dtype:
                raise InputError(f"h0 has dtype {h0.dtype}, the model {dtype}; convert with h0.to({dtype})")
            if not all_finite(h0):
                raise NonFiniteError("h0 contains NaN or Inf")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=s.device)
            if lengths.is_floating_point() or lengths.shape != (batch,):
                raise ShapeError(f"lengths must be an integer tensor of shape ({batch},), got "
                                 f"{lengths.dtype} {tuple(lengths.shape)}")
            if bool((lengths < 1).any()) or bool((lengths > T).any()):
                raise InputError(f"every length must be in [1, {T}]; got min "
                                 f"{int(lengths.min())}, max {int(lengths.max())} (an empty "
                                 f"sequence has no prediction: drop it)")
        return s, h0, lengths, unbatched

    def _stepwise(self, s: Tensor, h: Tensor, lengths: Tensor | None
                  ) -> tuple[Tensor, Tensor, Tensor, list[SolveRecord], list[Tensor]]:
        """The recurrence one cell call per step, chained by autograd (any activation,
        including maps with ``phi(0) != 0``, whose shifted solve the cell handles)."""
        T = s.shape[1]
        x: Tensor | None = None  # the last state, with autograd
        hs, records, valid = [], [], []
        for i in range(T):
            y, x_new = self.cell._step(
                torch.cat((s[:, i], h), dim=1),
                x.detach() if (self.warm_start and x is not None) else None)
            records.append(self.cell._record)
            if lengths is not None:
                live = (lengths > i)
                valid.append(live)
                keep = live[:, None]
                h = torch.where(keep, y, h)
                x_new = x_new if x is None else torch.where(keep, x_new, x)
            else:
                h = y
            x = x_new
            hs.append(h)
        assert x is not None
        return torch.stack(hs, dim=1), h, x, records, valid

    def _fused(self, s: Tensor, h0: Tensor, lengths: Tensor | None, act: Activation
               ) -> tuple[Tensor, Tensor, list[SolveRecord], list[Tensor]]:
        """The whole recurrence as one autograd node (:class:`_Recurrence`)."""
        cell = self.cell
        T = s.shape[1]
        records = [SolveRecord() for _ in range(T)]
        valid = [lengths > i for i in range(T)] if lengths is not None else []
        zero = s.new_zeros(0)
        hidden, x = _Recurrence.apply(
            s, h0, cell.A, cell.B, cell.C, cell.D,
            cell.b if cell.b is not None else zero, cell.d if cell.d is not None else zero,
            _RecurrenceSpec(act, cell._solve_setup()[1], cell._plans, self.warm_start,
                            lengths, records))
        return hidden, x, records, valid


    def run(self, s: Tensor, h0: Tensor | None = None, lengths: Tensor | None = None
            ) -> RNNOutput:
        """Run the recurrence over ``s`` (see the class docstring); returns :class:`RNNOutput`.

        Args:
            s: ``(batch, T, input_size)`` sequences (or one ``(T, input_size)`` sequence).
            h0: ``(batch, recurrent_size)`` initial hidden state, or ``None`` (zeros).
            lengths: ``(batch,)`` integer lengths in ``[1, T]`` of padded sequences, or ``None``.

        Returns:
            :class:`RNNOutput` with the prediction, the hidden states and the solve statistics.

        Raises:
            ShapeError: ``s``, ``h0`` or ``lengths`` of the wrong shape.
            InputError: an empty batch, another dtype than the model's, or a length out of range.
            NonFiniteError: NaN/Inf in ``s`` or ``h0``.
        """
        s, h0, lengths, unbatched = self._check_input(s, h0, lengths)
        batch, T, _ = s.shape
        h = s.new_zeros(batch, self.recurrent_size) if h0 is None else h0
        # A is the same at every step and s was checked above: check A once
        self.cell._check_wellposed()
        act, offset = self.cell._solve_activation()
        if offset is None:  # phi(0) = 0: the fused recurrence (one autograd node)
            hidden, x, records, valid = self._fused(s, h, lengths, act)
            h = hidden[:, -1]
        else:
            hidden, h, x, records, valid = self._stepwise(s, h, lengths)
        self._records, self._valid = records, (valid if lengths is not None else None)
        if self.mode == "seq2one":
            out = h if self.head is None else self.head(h)
        else:
            out = hidden if self.head is None else self.head(hidden)
            if lengths is not None:
                mask = torch.arange(T, device=s.device)[None, :] < lengths[:, None]
                out = out * mask[..., None].to(out.dtype)
        assert x is not None
        result = RNNOutput(out, hidden, h, x)
        if unbatched:
            result = RNNOutput(out.squeeze(0), hidden.squeeze(0), h.squeeze(0), x.squeeze(0))
        return result

    def forward(self, s: Tensor, h0: Tensor | None = None, lengths: Tensor | None = None
                ) -> Tensor:
        """The prediction: ``(batch, output_size)`` (``seq2one``) or ``(batch, T, output_size)``.

        Args:
            s: ``(batch, T, input_size)`` sequences (or one ``(T, input_size)`` sequence).
            h0: ``(batch, recurrent_size)`` initial hidden state, or ``None`` (zeros).
            lengths: ``(batch,)`` integer lengths in ``[1, T]`` of padded sequences, or ``None``.

        Returns:
            ``(batch, output_size)`` (``seq2one``) or ``(batch, T, output_size)``.

        Raises:
            ShapeError: ``s``, ``h0`` or ``lengths`` of the wrong shape.
            InputError: an empty batch, another dtype than the model's, or a length out of range.
        """
        return self.run(s, h0, lengths).output

    def config(self) -> dict:
        """JSON-serialisable constructor arguments (used by :mod:`idlkit.io`)."""
        cell = {k: v for k, v in self.cell.config().items()
                if k not in ("in_features", "hidden", "out_features")}
        return {"input_size": self.input_size, "hidden": self.hidden,
                "output_size": self.output_size, "recurrent_size": self.recurrent_size,
                "mode": self.mode, "warm_start": self.warm_start, **cell}

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, hidden={self.hidden}, "
                f"recurrent_size={self.recurrent_size}, output_size={self.output_size}, "
                f"mode={self.mode!r}, warm_start={self.warm_start}")
