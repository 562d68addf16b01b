"""Accelerated proximal gradient (FISTA) over a batch of independent problems, shared by the
batched SIM row solvers (:mod:`idlkit.sim.penalized`) and the Fenchel block-coordinate descent
(:mod:`idlkit.train.fenchel`).

Each row ``i`` of ``x`` (``(rows, d)``) is its own problem ``min f_i(x_i) + h_i(x_i)`` with
``f_i`` smooth and ``h_i`` prox-friendly; the rows share the step rule and iterate together
(one batched product per iteration) but keep their own momentum, restart and stopping. The
scheme is Beck & Teboulle's FISTA: ``t_1 = 1``, ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``,

    y_k = x_k + (t_k - 1) / t_{k+1} (x_k - x_{k-1}),    x_{k+1} = prox_{s h}(y_k - s grad f(y_k)),

with adaptive restart on the objective (O'Donoghue & Candes): when ``F(x_{k+1}) > F(x_k)`` the
momentum of that row is reset (``t = 1``). Two restart flavours:

* ``restart="keep"``: the new point is kept and only the momentum is reset (the SIM solvers,
  whose rows stop on a duality-gap certificate evaluated by ``check``).
* ``restart="undo"``: the new point is rejected (the row stays at ``x_k``) and the step is
  retried without momentum; a plain step that still increases the objective ends the row
  (with a valid ``1 / L`` step it cannot, up to rounding), so the returned point is never
  worse than the start (Fenchel BCD's block solves).

``linear`` (optional) is a linear map ``x -> x M`` whose image is carried along: the image of
the extrapolated point is the same combination of the stored images, so a smooth part
``1/2 x^T H x - b^T x`` costs one product ``x_{k+1} H`` per iteration (used for the objective
*and* the next gradient) instead of two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FistaRows", "fista_rows"]

Rows = Tensor  # an index tensor of the rows still iterating


@dataclass(frozen=True)
class FistaRows:
    """Result of :func:`fista_rows` (row ``i`` of each tensor is problem ``i``).

    Attributes:
        x: ``(rows, d)`` final iterates.
        lin: their images under ``linear`` (None without it).
        f: objective ``F(x_i)`` per row.
        iterations: passes per row (restarted passes included).
        stopped: per row, True when ``check`` or ``xtol`` stopped it (or, with
            ``restart="undo"``, a plain step failed to decrease ``F``); False when it ran
            out of iterations.
    """

    x: Tensor
    lin: Tensor | None
    f: Tensor
    iterations: Tensor
    stopped: Tensor


def _next_t(t: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))


def fista_rows(x0: Tensor, *, objective: Callable[[Tensor, Tensor | None, Rows], Tensor],
               grad: Callable[[Tensor, Tensor | None, Rows], Tensor],
               prox: Callable[[Tensor, Rows], Tensor], step: float | Tensor, max_iter: int,
               linear: Callable[[Tensor], Tensor] | None = None,
               check: Callable[[Tensor, Tensor | None, Tensor, Rows], Tensor] | None = None,
               check_every: int = 10, xtol: float | None = None,
               restart: str = "keep") -> FistaRows:
    """FISTA with per-row momentum restart on a batch of problems (module docstring).

    Args:
        x0: ``(rows, d)`` feasible starting points (``prox`` images).
        objective: ``(x, linear(x), rows) -> F(x)`` per row, shape ``(k,)`` for the ``k``
            rows ``rows`` (an index tensor into the batch; slice row data with it).
        grad: ``(y, linear(y), rows) -> grad f(y)``, ``(k, d)``.
        prox: ``(v, rows) -> prox_{step h}(v)``, ``(k, d)`` (the callback knows its step).
        step: the gradient step ``1 / L``: a float, or a tensor broadcastable against
            ``(k, d)``; a tensor whose first dimension is ``rows`` is sliced per row.
        max_iter: pass limit per row.
        linear: optional linear map whose image is carried along (module docstring).
        check: optional ``(x, linear(x), F(x), rows) -> stop`` (bool ``(k,)``), evaluated at
            the start, every ``check_every`` passes and at ``max_iter`` (e.g. a duality gap).
        xtol: stop a row when ``||x_{k+1} - x_k|| <= xtol (1 + ||x_{k+1}||)``.
        restart: ``"keep"`` or ``"undo"`` (module docstring).

    Returns:
        :class:`FistaRows`.
    """
    if restart not in ("keep", "undo"):
        raise ValueError(f"restart must be 'keep' or 'undo'; got {restart!r}")
    r = x0.shape[0]
    dev = x0.device
    x = x0.clone()
    lx = linear(x) if linear is not None else None
    every = torch.arange(r, device=dev)
    f = objective(x, lx, every)
    xp, lxp = x.clone(), (None if lx is None else lx.clone())
    t = torch.ones(r, dtype=x.dtype, device=dev)
    iters = torch.zeros(r, dtype=torch.int64, device=dev)
    stopped = torch.zeros(r, dtype=torch.bool, device=dev)
    per_row_step = isinstance(step, Tensor) and step.dim() > 0 and step.shape[0] == r and r > 1
    act = every
    if check is not None:
        done = check(x, lx, f, every)
        stopped |= done
        act = every[~done]
    k = 0
    while act.numel() and k < max_iter:
        k += 1
        ta = t[act]
        tn = _next_t(ta)
        mom = ((ta - 1.0) / tn)[:, None]
        xa = x[act]
        y = xa + mom * (xa - xp[act])
        ly = None
        if lx is not None and lxp is not None:
            lxa = lx[act]
            ly = lxa + mom * (lxa - lxp[act])
        s = step[act] if per_row_step else step  # type: ignore[index]
        xn = prox(y - s * grad(y, ly, act), act)
        lxn = linear(xn) if linear is not None else None
        fn = objective(xn, lxn, act)
        worse = ~(fn <= f[act])  # NaN counts as worse
        iters[act] = k
        if restart == "keep":
            accept = torch.ones_like(worse)
            tn = torch.where(worse, torch.ones_like(tn), tn)
        else:
            plain = ta == 1.0
            accept = ~worse
            stopped[act[worse & plain]] = True
            tn = torch.where(worse, torch.ones_like(tn), tn)
        acc = act[accept]
        if acc.numel():
            xa_acc = xa[accept]
            xp[acc] = xa_acc
            x[acc] = xn[accept]
            if lx is not None and lxp is not None and lxn is not None:
                lxp[acc] = lx[acc]
                lx[acc] = lxn[accept]
            f[acc] = fn[accept]
        rej = act[~accept]
        if rej.numel():  # undo: stay at x_k, next step without momentum
            xp[rej] = x[rej]
            if lx is not None and lxp is not None:
                lxp[rej] = lx[rej]
        t[act] = tn
        keep = ~stopped[act]
        if xtol is not None and acc.numel():
            diff = torch.linalg.vector_norm(xn[accept] - xa_acc, dim=1)
            size = torch.linalg.vector_norm(xn[accept], dim=1)
            small = diff <= xtol * (1.0 + size)
            stopped[acc[small]] = True
            keep = ~stopped[act]
        act = act[keep]
        if check is not None and act.numel() and (k % check_every == 0 or k == max_iter):
            done = check(x[act], None if lx is None else lx[act], f[act], act)
            stopped[act[done]] = True
            act = act[~done]
    return FistaRows(x=x, lin=lx, f=f, iterations=iters, stopped=stopped)


def scalar_fista(x0: list[Tensor], obj: Callable[[list[Tensor]], float],
                 grad: Callable[[list[Tensor]], list[Tensor]],
                 prox: Callable[[list[Tensor], list[Tensor | float]], list[Tensor]],
                 steps: list[Tensor | float], max_iter: int, tol: float) -> list[Tensor]:
    """One problem whose variable is a list of tensors (a block of Fenchel BCD), through
    :func:`fista_rows` as a single row with ``restart="undo"`` and ``xtol=tol``: never returns
    a point worse than ``x0``.

    ``steps`` are ``1 / L`` per tensor (a float or a tensor broadcastable to it, e.g. one step
    per row of a row-separable block); ``prox(v, steps)`` gets them back unchanged.
    """
    shapes = [v.shape for v in x0]
    sizes = [math.prod(s) for s in shapes]

    def unpack(flat: Tensor) -> list[Tensor]:
        return [c.reshape(s) for c, s in zip(torch.split(flat[0], sizes), shapes, strict=True)]

    def pack(parts: list[Tensor]) -> Tensor:
        return torch.cat([p.reshape(-1) for p in parts])[None, :]

    flat_step = pack([torch.as_tensor(s, dtype=v.dtype, device=v.device).expand(v.shape)
                      for s, v in zip(steps, x0, strict=True)])
    ref = x0[0]
    out = fista_rows(
        pack(x0),
        objective=lambda v, _l, _i: torch.tensor([obj(unpack(v))], dtype=ref.dtype, device=ref.device),
        grad=lambda v, _l, _i: pack(grad(unpack(v))),
        prox=lambda v, _i: pack(prox(unpack(v), steps)),
        step=flat_step, max_iter=max_iter, xtol=tol, restart="undo")
    return unpack(out.x)
