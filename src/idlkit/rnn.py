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

from . import wellposed as wp
from ._validation import all_finite, check_int
from .activations import Activation
from .errors import ConfigurationError, InputError, NonFiniteError, ShapeError
from .function import SolveRecord
from .model import ImplicitModel
from .solve import SolveInfo

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
        activation, bias, wellposedness, kappa, solver, tol, max_iter, and keyword
            ``**cell_kwargs``: the cell's :class:`~idlkit.model.ImplicitModel` settings.
        device, dtype: as for :class:`torch.nn.RNN`.

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

    def run(self, s: Tensor, h0: Tensor | None = None, lengths: Tensor | None = None
            ) -> RNNOutput:
        """Run the recurrence over ``s`` (see the class docstring); returns :class:`RNNOutput`."""
        s, h0, lengths, unbatched = self._check_input(s, h0, lengths)
        batch, T, _ = s.shape
        h = s.new_zeros(batch, self.recurrent_size) if h0 is None else h0
        x: Tensor | None = None  # the last state, with autograd
        hs, records, valid = [], [], []
        # A is the same at every step and s was checked above: check A once, then take the
        # cell's unchecked step (a NaN in h or in the parameters still stops the solver)
        self.cell._check_wellposed()
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
        self._records, self._valid = records, (valid if lengths is not None else None)
        hidden = torch.stack(hs, dim=1)
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
        """The prediction: ``(batch, output_size)`` (``seq2one``) or ``(batch, T, output_size)``."""
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
