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

Data = tuple[Tensor, ...]  # per-row tensors of the active rows


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


def fista_rows(x0: Tensor, *, objective: Callable[[Tensor, Tensor | None, Data], Tensor],
               grad: Callable[[Tensor, Tensor | None, Data], Tensor],
               prox: Callable[[Tensor, Data], Tensor], step: float | Tensor, max_iter: int,
               data: Data = (), linear: Callable[[Tensor], Tensor] | None = None,
               check: Callable[[Tensor, Tensor | None, Tensor, Data, Tensor], Tensor] | None = None,
               check_every: int = 10, xtol: float | None = None,
               restart: str = "keep") -> FistaRows:
    """FISTA with per-row momentum restart on a batch of problems (module docstring).

    The rows still iterating are kept compacted (their iterates and their ``data`` are gathered
    once when the active set shrinks, not at every pass), so an iteration costs the callbacks
    and a few elementwise operations on the active rows.

    Args:
        x0: ``(rows, d)`` feasible starting points (``prox`` images).
        objective: ``(x, linear(x), data) -> F(x)`` per row, shape ``(k,)`` for the ``k`` active
            rows; ``data`` are the active rows of the ``data`` tensors.
        grad: ``(y, linear(y), data) -> grad f(y)``, ``(k, d)``.
        prox: ``(v, data) -> prox_{step h}(v)``, ``(k, d)`` (the callback knows its step).
        step: the gradient step ``1 / L``: a float or a tensor broadcastable against ``(k, d)``.
        max_iter: pass limit per row.
        data: per-row tensors (first dimension ``rows``) the callbacks need, e.g. the targets.
        linear: optional linear map whose image is carried along (module docstring).
        check: optional ``(x, linear(x), F(x), data, rows) -> stop`` (bool ``(k,)``, ``rows`` the
            batch indices of the active rows), evaluated at the start, every ``check_every``
            passes and at ``max_iter`` (e.g. a duality gap).
        xtol: stop a row when ``||x_{k+1} - x_k|| <= xtol (1 + ||x_{k+1}||)``.
        restart: ``"keep"`` or ``"undo"`` (module docstring).

    Returns:
        :class:`FistaRows`.
    """
    if restart not in ("keep", "undo"):
        raise ValueError(f"restart must be 'keep' or 'undo'; got {restart!r}")
    r = x0.shape[0]
    dev = x0.device
    X = x0.clone()  # the batch's final iterates, written when a row retires
    LX = linear(X) if linear is not None else None
    F = objective(X, LX, data)
    iters = torch.zeros(r, dtype=torch.int64, device=dev)
    stopped = torch.zeros(r, dtype=torch.bool, device=dev)
    act = torch.arange(r, device=dev)
    if check is not None:
        done = check(X, LX, F, data, act)
        stopped |= done
        act = act[~done]
    # compacted state of the active rows
    x, lx, f, dat = X[act], (None if LX is None else LX[act]), F[act], tuple(v[act] for v in data)
    xp, lxp = x.clone(), (None if lx is None else lx.clone())
    t = torch.ones(act.numel(), dtype=x.dtype, device=dev)

    k = 0

    def retire(keep: Tensor) -> None:
        nonlocal act, x, lx, f, dat, xp, lxp, t
        gone = act[~keep]
        iters[gone] = k
        X[gone] = x[~keep]
        F[gone] = f[~keep]
        if LX is not None and lx is not None:
            LX[gone] = lx[~keep]
        act, x, f, xp, t = act[keep], x[keep], f[keep], xp[keep], t[keep]
        dat = tuple(v[keep] for v in dat)
        if lx is not None and lxp is not None:
            lx, lxp = lx[keep], lxp[keep]

    while act.numel() and k < max_iter:
        k += 1
        tn = _next_t(t)
        mom = ((t - 1.0) / tn)[:, None]
        y = x + mom * (x - xp)
        ly = None if lx is None or lxp is None else lx + mom * (lx - lxp)
        xn = prox(y - step * grad(y, ly, dat), dat)
        lxn = linear(xn) if linear is not None else None
        fn = objective(xn, lxn, dat)
        worse = ~(fn <= f)  # NaN counts as worse
        t = torch.where(worse, torch.ones_like(tn), tn)
        if restart == "keep" or not bool(worse.any()):
            small = None
            if xtol is not None:
                small = (torch.linalg.vector_norm(xn - x, dim=1)
                         <= xtol * (1.0 + torch.linalg.vector_norm(xn, dim=1)))
            xp, x, f = x, xn, fn
            if lxn is not None:
                lxp, lx = lx, lxn
            if small is not None and bool(small.any()):
                stopped[act[small]] = True
                retire(~small)
        else:  # undo: rows that got worse stay at x_k and retry without momentum
            ok = ~worse[:, None]
            small = torch.zeros_like(worse)
            if xtol is not None:
                small = ~worse & (torch.linalg.vector_norm(xn - x, dim=1)
                                  <= xtol * (1.0 + torch.linalg.vector_norm(xn, dim=1)))
            xp = x
            x = torch.where(ok, xn, x)
            f = torch.where(worse, f, fn)
            if lx is not None and lxn is not None:
                lxp = lx
                lx = torch.where(ok, lxn, lx)
            end = (worse & (mom[:, 0] == 0)) | small  # a plain step that failed, or converged
            if bool(end.any()):
                stopped[act[end]] = True
                retire(~end)
        if check is not None and act.numel() and (k % check_every == 0 or k == max_iter):
            done = check(x, lx, f, dat, act)
            if bool(done.any()):
                stopped[act[done]] = True
                retire(~done)
    if act.numel():
        retire(torch.zeros_like(act, dtype=torch.bool))
    return FistaRows(x=X, lin=LX, f=F, iterations=iters, stopped=stopped)


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
        objective=lambda v, _l, _d: torch.tensor([obj(unpack(v))], dtype=ref.dtype, device=ref.device),
        grad=lambda v, _l, _d: pack(grad(unpack(v))),
        prox=lambda v, _d: pack(prox(unpack(v), steps)),
        step=flat_step, max_iter=max_iter, xtol=tol, restart="undo")
    return unpack(out.x)
