"""Parallel State-driven Implicit Modeling: ``SIM(...).fit(baseline, U)`` (paper 002 Alg. 1).

Given the states ``(Z, X, Y_hat)`` of a baseline (:func:`idlkit.sim.extract_states`), SIM fits
``(A, B, C, D)`` row by row (Alg. 1, lines 10-15): each row of ``(A, B)`` matches a row of
``Z`` from ``F = (X, U[, 1])`` under ``||a||_1 <= kappa`` (2d), each row of ``(C, D)`` a row of
``Y_hat`` without it (eqs. 8-9). The rows are independent, so they are solved in blocks on
joblib workers: ``backend="loky"`` (processes; the shared Gram matrix and factor of ``F`` are
memory-mapped read-only into every worker, written once, never pickled per task),
``"threading"``, ``"ray"`` (arrays ``ray.put`` once into the object store, as paper 002 App. B),
``"dask"`` (arrays scattered once to the workers) or ``"serial"``.

Objectives (the ``objective`` argument):

* ``"exact"``: basis pursuit with exact matching, ``min sum_j sigma_j |w_j|`` s.t. ``F w = t``,
  ``||a||_1 <= kappa`` (eqs. 6, 8-9), all rows of a block at once by
  :func:`idlkit.sim.exact.basis_pursuit_rows` (ADMM on the range / null-space form of
  ``F``, active-set polish, duality-gap certificates; HiGHS solves the rows it does not
  certify). With ``m > d`` samples ``F w = t`` is solvable only for ``t`` in ``range(F)``: rows
  whose relative residual outside it exceeds ``match_tol`` are infeasible, and so are rows
  whose solutions all break the budget; both raise :class:`~idlkit.errors.InfeasibleError`
  naming the rows. ``match_eps > 0`` relaxes the matching ("exact matching plus l1",
  basis-pursuit denoising): ``min sum_j sigma_j |w_j|`` s.t. ``||F w - t|| <= match_eps ||t||``,
  ``||a||_1 <= kappa`` (Clarabel solves the rows ADMM does not certify).
* ``"l1"``: ``beta ||w||_1 + lambda ||t - F w||^2`` (App. C, problem 11).
* ``"perspective"``: the perspective relaxation of ``||M||_0`` (eqs. 4-5, 10), see
  :mod:`idlkit.sim.penalized` for its closed form.
* ``"elastic_net"``: ``beta (l1_ratio ||w||_1 + (1 - l1_ratio)/2 ||w||^2) + lambda ||t - F w||^2``
  (torchidl's ``CVXSolver(elastic_net=True)`` penalty, scikit-learn's parametrisation).
* ``"lasso"``: the constrained LASSO P(kappa) of the thesis (ch. 3, eq. 3.4): ``min 1/2 ||t -
  F w||^2`` s.t. ``||(a, b)||_1 <= kappa`` (the whole row, which both sparsifies and certifies
  well-posedness); output rows by least squares, or under ``||(c, d)||_1 <= kappa_output``.

``solver="auto"`` uses the batched first-order engine: :func:`~idlkit.sim.penalized_rows`
(l1, perspective, elastic net), :func:`~idlkit.sim.constrained_lasso_batch` (its ``weight =
0`` case plus the inactive-row check and the exact bisection polish) and
:func:`~idlkit.sim.exact.basis_pursuit_rows` (exact). ``solver="cvxpy"`` solves the
relaxed objectives row by row with cvxpy (Clarabel, MOSEK with ``cvx_solvers=("MOSEK",)``). A
row the fast solver does not finish is retried with the next solver (FISTA -> Clarabel -> SCS;
ADMM -> HiGHS / Clarabel; batched P(kappa) -> bisection) and reported as such in
:class:`SIMReport`; a row no solver solves raises :class:`~idlkit.errors.SolverError`.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._matrix import as_dense_array
from .._validation import check_choice, check_int, check_kappa, check_positive, check_probability
from ..errors import ConfigurationError, InfeasibleError, InputError, SolverError
from ..model import ImplicitModel
from ._gram import gram_factor
from .cvx import Factor, factor, relaxed_row
from .exact import basis_pursuit_rows
from .lasso_batch import constrained_lasso_batch
from .penalized import penalized_rows
from .states import States, extract_states

__all__ = ["BACKENDS", "OBJECTIVES", "PENALTY_UNITS", "SIM", "SIMReport"]

#: ``SIM(sparse="auto")`` stores the fitted matrices as CSR at most at this density (fraction of
#: nonzero entries of ``[A B; C D]``): below the lowest CSR / dense crossover that
#: ``benchmarks/bench_sparse.py`` measured.
SPARSE_DENSITY = 0.05

OBJECTIVES = ("exact", "l1", "perspective", "elastic_net", "lasso")
PENALTY_UNITS = ("teacher", "rescaled", "standardized")
BACKENDS = ("loky", "threading", "ray", "dask", "serial")
_TINY = 1e-300


@dataclass(frozen=True)
class SIMReport:
    """What :meth:`SIM.fit` did, row by row (state rows ``0..n-1``, then output rows).

    Attributes:
        objective: the objective used.
        backend: the backend used.
        n_jobs: the number of workers used.
        kappa: the l_inf bound used.
        status: per row, ``"optimal"`` (certified by its solver), ``"inactive"`` (``"lasso"``: the
            budget does not bind, least squares), ``"fallback"`` (the fast solver did not
            certify it; solved by the next one), ``"inaccurate"`` (the last solver's solution is
            marked inaccurate).
        solver: per row, the solver whose solution was kept: ``"fista"`` (batched l1 /
            perspective / elastic net / P(kappa)), ``"lstsq"`` (least squares), ``"lasso-bisection"``
            (thesis Alg. 1, the P(kappa) polish), ``"admm"`` / ``"admm-polish"`` / ``"unique"``
            (batched basis pursuit: its ADMM point, its polished vertex, or the single solution
            of ``F w = t``), ``"highs"``, ``"clarabel"``, ``"scs"``, ``"mosek"``.
        residual: per row, ``||t - F w|| / max(||t||, tiny)`` (after pruning).
        state_residual: ``||Z - X A^T - U B^T - b||_F / ||Z||_F``.
        output_residual: the same for ``Y_hat``.
        a_inf_norm: achieved ``||A||_inf`` (<= kappa).
        nnz: nonzero parameters of the fitted model (A, B, C, D and the biases).
        baseline_nnz: the baseline's, ``||N||_0``.
        sparsity: paper 002 §4.1, ``(1 - nnz / baseline_nnz) * 100`` (negative: more parameters).
        seconds: wall time of the whole fit (factorisation, solves, assembly).
        solve_seconds: per row, the time its block spent per row (blocks are solved together).
        iterations: per row, iterations of the fast solver (0 for LP / cvxpy rows).
        shared: how the workers received the shared Gram matrix: ``"memmap"`` (loky: a
            read-only memory map, written once), ``"object-store"`` (ray.put once),
            ``"in-process"`` (serial, threading; dask scatters it once to each worker).
        fallback_rows: rows that needed a fallback solver.
        retried_rows: rows solved again because a parallel worker died before returning them
            (a ``RuntimeWarning`` names them too).
        validation: with ``fit(..., val=...)``, one entry per penalty weight tried (weight,
            held-out agreement with the baseline, nnz, sparsity).
        chosen_weight: the penalty weight kept after that validation; None without ``val``.
        penalty_weight: the l1 / perspective weight the fit used (``beta`` or ``alpha``, after the
            scale-aware default rule when they were None); None for the other objectives.
    """

    objective: str
    backend: str
    n_jobs: int
    kappa: float
    status: tuple[str, ...]
    solver: tuple[str, ...]
    residual: np.ndarray
    state_residual: float
    output_residual: float
    a_inf_norm: float
    nnz: int
    baseline_nnz: int
    sparsity: float
    seconds: float
    solve_seconds: np.ndarray
    iterations: np.ndarray
    shared: str
    fallback_rows: tuple[int, ...] = field(default=())
    retried_rows: tuple[int, ...] = field(default=())
    validation: tuple[dict, ...] | None = None
    chosen_weight: float | None = None
    penalty_weight: float | None = None

    def summary(self) -> str:
        """A markdown table of the headline figures."""
        counts: dict[str, int] = {}
        for s in self.status:
            counts[s] = counts.get(s, 0) + 1
        rows = [("objective", self.objective), ("backend", f"{self.backend} ({self.n_jobs} jobs)"),
                ("rows", f"{len(self.status)} " + str(counts)),
                ("||A||_inf", f"{self.a_inf_norm:.4f} (kappa {self.kappa})"),
                ("state residual", f"{self.state_residual:.3e}"),
                ("output residual", f"{self.output_residual:.3e}"),
                ("nonzeros", f"{self.nnz} (baseline {self.baseline_nnz})"),
                ("sparsity", f"{self.sparsity:.1f} %"), ("time", f"{self.seconds:.2f} s")]
        return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


@dataclass(frozen=True)
class _Job:
    """One block of rows for a worker: everything row-specific, small."""

    kind: str  # "penalized" | "lasso" | "exact" | "cvxpy"
    rows: np.ndarray
    C: np.ndarray  # F^T t per row
    tt: np.ndarray  # ||t||^2 per row
    Y: np.ndarray  # Q^T t per row (reduced target)
    resid: np.ndarray  # ||t - Q Q^T t|| per row
    lam: float
    weight: float
    penalty: str
    kappa: float | None
    constrained: np.ndarray
    free: np.ndarray
    W0: np.ndarray | None
    sigma: np.ndarray
    tol: float
    max_iter: int
    cvx_solvers: tuple[str, ...]
    l1_ratio: float = 0.5  # "elastic_net"
    match_tol: float = 1e-6  # "exact": range-residual tolerance
    match_eps: float = 0.0  # "exact": relative matching tolerance (0: exact matching)
    keep: np.ndarray | None = None  # columns of F the rows may read (None: all)


@dataclass(frozen=True)
class _BlockOut:
    rows: np.ndarray
    W: np.ndarray
    status: tuple[str, ...]
    solver: tuple[str, ...]
    seconds: np.ndarray
    iterations: np.ndarray
    shared: str  # how the Gram matrix reached the worker: "memmap", "object-store", "in-process"


def _resolve(x: Any) -> Any:
    """An array passed through Ray's object store arrives as an ObjectRef: fetch it."""
    if type(x).__name__ == "ObjectRef":
        import ray

        return ray.get(x)
    return x


def _cvx_rows(job: _Job, G: np.ndarray, R: np.ndarray | None, idx: Sequence[int],
              objective: str) -> list[tuple[np.ndarray | None, str, str]]:
    """Rows ``idx`` of the block by cvxpy, one at a time (the relaxed objectives: ``solver="cvxpy"``
    and the rows FISTA did not certify). Without the accurate factor of ``F`` (the fast path
    never builds it) one is formed from ``G`` (:func:`idlkit.sim._gram.gram_factor`)."""
    out = []
    pen = ~job.free
    Y, resid = job.Y, job.resid
    if R is None:
        R, Y, resid = gram_factor(G, job.C, job.tt)
    for i in idx:
        sol = relaxed_row(R, Y[i], float(resid[i]), objective=objective, lam=job.lam, weight=job.weight,
                          kappa=job.kappa, constrained=job.constrained, penalized=pen, sigma=job.sigma,
                          solvers=job.cvx_solvers, l1_ratio=job.l1_ratio)
        out.append((sol.w, sol.solver, sol.status))
    return out


def _solve_block(job: _Job, G: Any, R: Any) -> _BlockOut:
    """Solve one block of rows (runs on a worker) with the batched engine, then the fallbacks."""
    if job.keep is not None:  # a structured block: the same problem on the columns it may read
        keep = job.keep
        shared = "object-store" if type(G).__name__ == "ObjectRef" else (
            "memmap" if isinstance(G, np.memmap) else "in-process")
        sub = replace(job, keep=None, C=job.C[:, keep], constrained=job.constrained[keep],
                      free=job.free[keep], sigma=job.sigma[keep],
                      W0=None if job.W0 is None else job.W0[:, keep])
        # F_keep = Q R[:, keep]: the reduced targets Y and residuals of the full factor still hold
        R = _resolve(R)
        out = _solve_block(sub, np.ascontiguousarray(_resolve(G)[np.ix_(keep, keep)]),
                           None if R is None else np.ascontiguousarray(R[:, keep]))
        W = np.zeros((job.rows.size, job.C.shape[1]))
        W[:, keep] = out.W
        return replace(out, W=W, shared=shared)
    shared = "object-store" if type(G).__name__ == "ObjectRef" else (
        "memmap" if isinstance(G, np.memmap) else "in-process")
    G, R = _resolve(G), _resolve(R)
    iters = np.zeros(job.rows.size, dtype=np.int64)
    t0 = time.perf_counter()
    r = job.rows.size
    W = np.zeros((r, job.C.shape[1]))
    status = ["optimal"] * r
    solver = [""] * r
    retry: list[int] = []
    if job.kind == "penalized":  # problems 10-11 and the elastic net
        res = penalized_rows(G, job.C, job.tt, lam=job.lam, penalty=job.penalty, weight=job.weight,
                             kappa=job.kappa, constrained=job.constrained, free=job.free,
                             sigma=job.sigma, W0=job.W0, tol=job.tol, max_iter=job.max_iter,
                             l1_ratio=job.l1_ratio)
        W[:] = res.W
        iters[:] = res.iterations
        solver = ["fista"] * r
        retry = [i for i in range(r) if res.status[i] != "optimal"]
    elif job.kind == "lasso":  # P(kappa) (thesis eq. 3.4): inactive check, FISTA, bisection polish
        lr = constrained_lasso_batch(G, job.C, float(job.kappa), job.constrained,  # type: ignore[arg-type]
                                     tol=job.tol, max_iter=job.max_iter, W0=job.W0, zz=job.tt)
        W[:] = lr.W
        iters[:] = lr.iterations
        names = {"inactive": ("inactive", "lstsq"), "optimal": ("optimal", "fista"),
                 "fallback": ("fallback", "lasso-bisection")}
        for i, st in enumerate(lr.status):
            status[i], solver[i] = names.get(st, ("inaccurate", "lasso-bisection"))
    elif job.kind == "exact":  # eqs. 8-9: batched basis pursuit, HiGHS / Clarabel for the rest
        bp = basis_pursuit_rows(R, job.Y, job.resid, np.sqrt(job.tt), kappa=job.kappa,
                                constrained=job.constrained, free=job.free, sigma=job.sigma,
                                eps=job.match_eps, match_tol=job.match_tol, tol=job.tol,
                                max_iter=job.max_iter, fallback=True)
        W[:] = bp.W
        iters[:] = bp.iterations
        solver = list(bp.solver)
        for i, st in enumerate(bp.status):
            if st == "max_iter":
                raise SolverError(f"SIM row {int(job.rows[i])}: neither the batched basis-pursuit solver "
                                  f"nor its fallback ({bp.solver[i]}) returned a solution; check the "
                                  f"states' scale or use a relaxed objective (objective='l1')", status=st)
            status[i] = st
    else:  # "cvxpy": one row at a time
        retry = list(range(r))
    if retry:
        for i, (w, name, st) in zip(retry, _cvx_rows(job, G, R, retry, job.penalty), strict=True):
            if w is None:
                raise SolverError(f"SIM row {int(job.rows[i])}: no solver returned a solution "
                                  f"(tried {name}: {st}); check the states' scale or try "
                                  f"another objective", status=st)
            W[i] = w
            solver[i] = name
            if job.kind == "penalized":
                status[i] = "fallback" if st == "optimal" else "inaccurate"
            else:
                status[i] = "optimal" if st == "optimal" else "inaccurate"
    secs = np.full(r, (time.perf_counter() - t0) / max(r, 1))
    return _BlockOut(job.rows, W, tuple(status), tuple(solver), secs, iters, shared)


@dataclass(frozen=True)
class SIM:
    """State-driven implicit modeling (paper 002 Alg. 1; thesis ch. 3 for ``"lasso"``).

    Args:
        objective: ``"exact"``, ``"l1"``, ``"perspective"``, ``"elastic_net"`` or ``"lasso"``
            (module docstring).
        kappa: well-posedness bound ``||A||_inf <= kappa`` in (0, 1] (2d); for ``"lasso"`` the
            l1 budget of each whole row ``(a, b)``.
        lambda_state: ``lambda_1`` of problems 10-11.
        lambda_output: ``lambda_2`` of problems 10-11.
        beta: l1 weight (problem 11), in the units of ``penalty_units``, against the per-sample
            matching terms (``per_sample``). None (default): scale-aware,
            ``beta = penalty_ratio * median_i beta_max,i`` where
            ``beta_max,i = (2 lambda / m) max_j |F_j^T t_i| / (c_i sigma_j)`` is the weight at
            which row ``i``'s solution becomes zero (its optimality condition at ``w = 0``). A
            fixed number would not survive a change of units: the weight that zeroes a row was
            6.4 on Fashion-MNIST's teacher but 0.096 on a Transformer's hooked states, so one
            absolute default over-penalised the second 65-fold (``experiments/sim_newsgroups.py``).
            ``fit(..., val=...)`` picks the weight on held-out inputs instead; the weight used
            is ``SIMReport.penalty_weight``.
        alpha: perspective weight (problem 10), in the same units; None (default):
            ``beta / 2`` (the same weight on small coefficients).
        penalty_ratio: the factor of that rule, 1.5e-4: the measured choice on digits and
            Fashion-MNIST (``experiments/sim_implicit.py``; it gives beta = 5.0e-4 on the digits
            teacher, 9.5e-4 on Fashion-MNIST's, 1.4e-5 on the Transformer of
            ``experiments/sim_newsgroups.py``).
        l1_ratio: ``"elastic_net"`` only: the l1 share ``r`` of ``beta (r |w| + (1 - r)/2 w^2)``
            in [0, 1] (torchidl's ``l1_ratio``).
        kappa_output: ``"lasso"`` only: l1 budget of the output rows (None: least squares).
        backend: ``"loky"``, ``"threading"``, ``"ray"``, ``"dask"`` or ``"serial"``.
        n_jobs: workers (None: all cores; ignored by ``"serial"``).
        solver: ``"auto"`` (fast batched solvers) or ``"cvxpy"`` (``"l1"``, ``"perspective"``,
            ``"elastic_net"``).
        cvx_solvers: cvxpy solvers tried in order (fallbacks and ``solver="cvxpy"``).
        penalty_units: in which units the penalty ``sum |M_ij|`` of App. C is counted.
            ``"teacher"`` (default): in the baseline's own units, before the rescaling of §3.
            The rows are still solved on the rescaled states (so ``||a||_1 <= kappa`` certifies
            well-posedness), with the penalty rewritten exactly: state ``i`` was multiplied by
            ``c_i`` (:attr:`States.scale`), so with ``w = c_i diag(c_F)^-1 w_o`` (``c_F`` the
            column scales of ``F``, 1 for inputs) the row objective ``lam ||z_i - F_o w_o||^2 +
            beta ||w_o||_1`` equals ``c_i^-2 (lam ||t_i - F w||^2 + beta c_i sum_j c_F,j |w_j|)``:
            per-row weight ``beta c_i``, column weights ``c_F``. Matching a deep state through
            the previous layer then costs what the teacher's weights cost, and its residual
            counts as much as a first-layer state's. ``"rescaled"``: the paper's literal form on
            the rescaled states; the deep states are smaller by powers of the divisor, so their
            residuals count for little and fitting them from ``U`` (``A = 0``) is cheap: the
            models are implicit in form only. ``"standardized"``: column weights the RMS of the
            columns of ``F`` (glmnet's standardisation; overfits the states on small samples).
        standardize: ``True`` is ``penalty_units="standardized"`` (kept for old code).
        structure: ``"auto"`` (default): ``"layered"`` when the baseline's states have depths
            (a network the converter traces), else ``"free"``. ``"free"``: any state may read
            any state (the paper's full ``A``);
            ``"layered"``: a state reads only states of smaller depth (the teacher's layer order,
            :attr:`States.depth`), so ``A`` is strictly block triangular: well-posed for any
            weights (paper 000 Thm 2.8), solved in one sweep, and free of the feedback loops
            through which a full ``A`` near ``||A||_inf = kappa`` amplifies state errors by up to
            ``1 / (1 - kappa)``.
        per_sample: the matching terms ``lambda ||t - F w||^2`` are averaged over the ``m``
            samples (``lambda / m``, scikit-learn's Lasso convention), so a penalty weight means
            the same trade-off whatever the number of samples. Deviation from App. C, which sums:
            there a fixed ``beta`` weakens as ``m`` grows (measured: the default fit went from
            71 % to -5 % sparsity between 1k and 60k Fashion-MNIST samples).
        rank: return a :class:`~idlkit.LowRankImplicitModel` with ``A = L R^T`` of this rank
            (paper 000 §5.3): the fitted ``A`` truncated by SVD (balanced factors, rescaled onto
            ``lambda_pf(gamma |R|^T |L|) <= kappa`` when needed), then ``(B, b)`` re-fitted on
            their supports to the states with that ``A`` fixed, and ``(C, D, d)`` on the
            low-rank model's own equilibrium states (so the outputs follow the teacher's).
            ``nnz`` counts ``L`` and ``R`` in full. torchidl parity.
        refit: ``"l1"``/``"perspective"``: re-solve each row by least squares on the support the
            penalised fit selected (the relaxed lasso of Meinshausen 2007: the l1 penalty picks
            the nonzeros, then stops shrinking them), keeping the penalised row where the
            refitted ``a`` would leave ``||a||_1 <= kappa`` or is not better. A deviation from
            paper 002, which keeps the shrunk coefficients.
        tol: a row stops when its duality gap is at most ``tol * P(0)`` (``P(0)`` the objective
            at zero; scikit-learn's Lasso convention).
        max_iter: iterations of the batched solver (FISTA, ADMM) per row; rows it does not
            certify fall back to cvxpy / HiGHS / bisection.
        match_tol: ``"exact"``: relative residual of ``t`` outside the range of ``F`` above
            which exact matching is declared infeasible (``InfeasibleError`` naming the rows),
            and the allowance on a certified row's matching residual.
        match_eps: ``"exact"`` only: 0 (default) for exact matching; ``> 0`` relaxes it to
            ``||F w - t|| <= match_eps ||t||`` (basis-pursuit denoising, module docstring).
        prune_tol: entries whose contribution ``|w_j| ||F_j||`` is at most ``prune_tol`` times the
            row's largest are set to zero (interior point solutions are never exactly sparse);
            only shrinks ``||a||_1``.
        bias: fit the biases ``b, d`` (unpenalised). None: when the baseline has biases.
        sparse: store A, B, C, D as CSR (``True``, ``False``, or ``"auto"``: when at most
            :data:`SPARSE_DENSITY` (5 %) of the entries are nonzero); the fitted model then
            solves with the sparse A. ``benchmarks/bench_sparse.py`` puts the CSR / dense
            crossover at 11-21 % density for batches of 64-256 and 3-28 % for one input;
            above it CSR is slower (a 784-64-32-10 MNIST fit at ~27 % density: 920 ms sparse
            vs 78 ms dense on 10,000 images), so "auto" stays below the lowest crossover.
        gamma: rescaling factor of paper 002 §3 (None: ``1.01 / kappa``).
        block_rows: rows per task (None: the rows split evenly over the workers).
        dtype: dtype of the fitted model (None: the baseline's).

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> U = torch.randn(40, 4)
        >>> model, report = SIM(objective="l1", kappa=0.99, backend="serial").fit(net, U)
        >>> model.hidden, model(U).shape, report.a_inf_norm <= 0.99 + 1e-6
        (6, torch.Size([40, 2]), True)
        >>> (model(U) - net(U)).abs().max().item() < 0.05        # close to the teacher (l1 relaxes matching)
        True
    """

    objective: str = "l1"
    kappa: float = 0.99
    lambda_state: float = 0.1
    lambda_output: float = 0.1
    beta: float | None = None
    alpha: float | None = None
    penalty_ratio: float = 1.5e-4
    kappa_output: float | None = None
    l1_ratio: float = 0.5
    match_eps: float = 0.0
    backend: str = "loky"
    n_jobs: int | None = None
    solver: str = "auto"
    cvx_solvers: tuple[str, ...] = ("CLARABEL", "SCS")
    penalty_units: str = "teacher"
    structure: str = "auto"
    rank: int | None = None
    per_sample: bool = True
    refit: bool = True
    standardize: bool = False
    tol: float = 1e-4
    max_iter: int = 20_000
    match_tol: float = 1e-6
    prune_tol: float = 1e-8
    bias: bool | None = None
    sparse: bool | str = "auto"
    gamma: float | None = None
    block_rows: int | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("solver", self.solver, ("auto", "cvxpy"))
        if self.solver == "cvxpy" and self.objective not in ("l1", "perspective", "elastic_net"):
            raise ConfigurationError(f"solver='cvxpy' applies to objective 'l1', 'perspective' or "
                                     f"'elastic_net'; "
                                     f"{self.objective!r} has its own solver (use solver='auto')")
        check_kappa(self.kappa, high_inclusive=True, example=0.99,
                    why="well-posedness ||A||_inf <= kappa certifies a unique state")
        for name in ("lambda_state", "lambda_output", "penalty_ratio", "tol", "match_tol"):
            check_positive(name, getattr(self, name))
        for name in ("beta", "alpha"):
            check_positive(name, getattr(self, name), allow_none=True)
        check_positive("kappa_output", self.kappa_output, allow_none=True)
        check_probability("l1_ratio", self.l1_ratio, example=0.5)
        check_positive("match_eps", self.match_eps, allow_zero=True)
        check_probability("prune_tol", self.prune_tol, high_inclusive=False, example=1e-8)
        check_int("max_iter", self.max_iter, 1)
        for name in ("n_jobs", "block_rows"):
            check_int(name, getattr(self, name), 1, allow_none=True)
        check_choice("sparse", self.sparse, (True, False, "auto"))
        check_choice("penalty_units", self.penalty_units, PENALTY_UNITS)
        check_choice("structure", self.structure, ("auto", "free", "layered"))
        check_int("rank", self.rank, 1, allow_none=True)
        check_choice("dtype", self.dtype, (None, torch.float32, torch.float64))

    # ----------------------------------------------------------------------------- public API

    def fit(self, baseline: nn.Module, U: Tensor, *, init: ImplicitModel | None = None,
            val: Tensor | None = None, weights: Sequence[float] | None = None,
            val_tolerance: float = 0.01) -> tuple[ImplicitModel, SIMReport]:
        """Fit an implicit model to ``baseline``'s states on inputs ``U`` (Alg. 1).

        Args:
            baseline: a layered torch network or an :class:`~idlkit.ImplicitModel` (see
                :func:`~idlkit.sim.extract_states`).
            U: inputs, batch-first ``(m, *input_dims)``.
            init: warm start: a model fitted before on the same baseline (e.g. at a nearby
                ``beta``/``kappa``); its rows start the fast solvers.
            val: held-out inputs: the penalty weight (``beta`` for ``"l1"``, ``alpha`` for
                ``"perspective"``) is chosen on them from ``weights`` (default: the objective's
                weight times 0.1, 0.3, 1, 3, 10), each fit warm-started from the previous one.
                The rule: the sparsest model whose held-out agreement with the baseline (the
                fraction of equal argmax for several outputs, ``1 -`` the relative output
                error for one) is within ``val_tolerance`` of the best. The report's
                :attr:`SIMReport.validation` lists every candidate.
            weights: the grid of the ``val`` rule.
            val_tolerance: the tolerance of the ``val`` rule.

        Returns:
            ``(model, report)``: the fitted model (inputs flattened to ``(m, p)``) and a
            :class:`SIMReport`.
        """
        # rescaling (§3) for the well-posedness bound; for "lasso" kappa is the whole-row budget
        # (sparsity), and the states are rescaled as for the default bound 0.99
        wp_kappa = 0.99 if self.objective == "lasso" else self.kappa
        states = extract_states(baseline, U, dtype=torch.float64, kappa=wp_kappa, gamma=self.gamma)
        bias = self.bias if self.bias is not None else _has_bias(baseline)
        dtype = self.dtype or _param_dtype(baseline)
        if val is None:
            return self.fit_states(states, bias=bias, dtype=dtype, init=init)
        return self._fit_validated(baseline, states, val, weights, val_tolerance, bias, dtype, init)

    def _fit_validated(self, baseline: nn.Module, states: States, val: Tensor,
                       weights: Sequence[float] | None, val_tolerance: float, bias: bool,
                       dtype: torch.dtype, init: ImplicitModel | None) -> tuple[ImplicitModel, SIMReport]:
        """The penalty weight chosen on held-out inputs (see :meth:`fit`)."""
        if self.objective not in ("l1", "perspective", "elastic_net"):
            raise ConfigurationError(f"val= chooses the penalty weight of objective 'l1', "
                                     f"'perspective' or 'elastic_net'; {self.objective!r} has none")
        check_probability("val_tolerance", val_tolerance, example=0.01)
        if not isinstance(val, Tensor) or val.shape[0] == 0:
            raise InputError(f"val must be a non-empty batch of inputs like U, got "
                             f"{getattr(val, 'shape', type(val).__name__)}")
        field_name = "alpha" if self.objective == "perspective" else "beta"
        base = getattr(self, field_name)
        if base is None:
            base = self._auto_weights(states, bias)[0 if field_name == "beta" else 1]
        grid = sorted(float(check_positive("weights", w)) for w in (weights or [base * f for f in
                                                                                (0.1, 0.3, 1, 3, 10)]))
        with torch.no_grad():
            y_ref = baseline(val.to(states.X.dtype)).reshape(val.shape[0], -1).double()
        candidates, rows = [], []
        prev = init
        for w in grid:
            model, report = replace(self, **{field_name: w}).fit_states(states, bias=bias, dtype=dtype,
                                                                          init=prev)
            with torch.no_grad():
                y = model(val.reshape(val.shape[0], -1).to(model.A.dtype)).double()
            if y_ref.shape[1] > 1:
                score = float((y.argmax(1) == y_ref.argmax(1)).double().mean())
            else:
                score = 1.0 - float((y - y_ref).norm() / max(float(y_ref.norm()), _TINY))
            candidates.append((model, report))
            rows.append({field_name: w, "agreement": score, "nnz": report.nnz, "sparsity": report.sparsity})
            prev = model
        best = max(r["agreement"] for r in rows)
        ok = [i for i, r in enumerate(rows) if r["agreement"] >= best - val_tolerance]
        pick = min(ok, key=lambda i: rows[i]["nnz"])
        model, report = candidates[pick]
        return model, replace(report, validation=tuple(rows), chosen_weight=grid[pick])

    def fit_states(self, states: States, *, bias: bool | None = None, dtype: torch.dtype | None = None,
                   init: ImplicitModel | None = None) -> tuple[ImplicitModel, SIMReport]:
        """:meth:`fit` from states already extracted (``bias`` default: ``self.bias`` or False).

        Args:
            states: the :class:`~idlkit.sim.States` (from :func:`~idlkit.sim.extract_states` or
                :meth:`States.load`).
            bias: fit the biases ``b``, ``d``; None: ``self.bias`` or False.
            dtype: dtype of the returned model; None: the states' dtype.
            init: a model whose weights warm-start the row problems, or None.

        Returns:
            ``(model, report)``: the :class:`~idlkit.ImplicitModel` and its :class:`SIMReport`.

        Raises:
            InputError: states inconsistent with the settings.
            InfeasibleError: a row problem has no solution within the budget.
        """
        t_start = time.perf_counter()
        if not isinstance(states, States):
            raise InputError(f"states must be idlkit.sim.States (from extract_states); "
                             f"got {type(states).__name__}")
        penalized = self.objective in ("l1", "perspective", "elastic_net")
        if penalized and (self.beta is None or self.alpha is None):
            beta, alpha = self._auto_weights(states, bias)
            resolved = replace(self, beta=self.beta if self.beta is not None else beta,
                               alpha=self.alpha if self.alpha is not None else alpha)
            model, report = resolved.fit_states(states, bias=bias, dtype=dtype, init=init)
            return model, replace(report, seconds=time.perf_counter() - t_start)
        fit_bias = bool(bias if bias is not None else (self.bias or False))
        X, Uf, Z, Yh = _state_arrays(states)
        m, n = X.shape
        p, q = Uf.shape[1], Yh.shape[1]
        F = np.hstack([X, Uf] + ([np.ones((m, 1))] if fit_bias else []))
        d = F.shape[1]
        G = F.T @ F
        # an accurate factor of F (thin SVD) where rows are solved by LP / cvxpy; the fast
        # solvers work on G alone and build a factor from it for their rare fallback rows
        need_factor = self.objective == "exact" or self.solver == "cvxpy"
        fac = factor(F) if need_factor else None

        free = np.zeros(d, bool)
        if fit_bias:
            free[-1] = True
        sigma, row_scale = self._penalty_scales(states, np.diag(G), m, d, n, q)
        cons_state = np.zeros(d, bool)
        cons_state[: n if self.objective != "lasso" else n + p] = True
        W0 = _init_rows(init, n, p, q, fit_bias, states) if init is not None else None

        per = float(m) if self.per_sample else 1.0  # matching terms averaged over the samples
        jobs = []
        groups = self._state_groups(states, n, d)
        layered = any(keep is not None for _, keep in groups)
        for rows_g, keep in groups:
            jobs += self._jobs(Z[:, rows_g], fac, F, cons_state, free, sigma, lam=self.lambda_state / per,
                               kappa=self.kappa, rows=rows_g, W0=None if W0 is None else W0[0][rows_g],
                               row_scale=row_scale[rows_g], keep=keep)
        out_kappa = self.kappa_output if self.objective == "lasso" else None
        cons_out = np.zeros(d, bool)
        if self.objective == "lasso" and out_kappa is not None:
            cons_out[: n + p] = True
        lstsq_out = self.objective == "lasso" and out_kappa is None
        if not lstsq_out:
            jobs += self._jobs(Yh, fac, F, cons_out, free, sigma, lam=self.lambda_output / per,
                               kappa=out_kappa, rows=np.arange(n, n + q), W0=None if W0 is None else W0[1],
                               row_scale=row_scale[n:])
        n_jobs = 1 if self.backend == "serial" else (self.n_jobs or os.cpu_count() or 1)
        outs, retried = _run(jobs, G, None if fac is None else fac.R, self.backend, n_jobs)
        shared = ",".join(sorted({o.shared for o in outs})) or "in-process"
        if lstsq_out:  # thesis eq. 3.5 with l = 0: least squares on F itself (not its Gram matrix)
            t0 = time.perf_counter()
            Wo = np.linalg.lstsq(F, Yh, rcond=None)[0].T
            outs.append(_BlockOut(np.arange(n, n + q), Wo, ("optimal",) * q, ("lstsq",) * q,
                                  np.full(q, (time.perf_counter() - t0) / max(q, 1)),
                                  np.zeros(q, dtype=np.int64), "in-process"))

        W = np.zeros((n + q, d))
        status = [""] * (n + q)
        solver = [""] * (n + q)
        secs = np.zeros(n + q)
        iters = np.zeros(n + q, dtype=np.int64)
        for o in outs:
            W[o.rows] = o.W
            secs[o.rows] = o.seconds
            iters[o.rows] = o.iterations
            for k, i in enumerate(o.rows):
                status[i], solver[i] = o.status[k], o.solver[k]
        infeasible = [i for i in range(n + q) if status[i] == "infeasible"]
        if infeasible:
            raise InfeasibleError(
                f"exact matching is infeasible for rows {infeasible[:10]}"
                f"{'...' if len(infeasible) > 10 else ''} "
                f"(||a||_1 <= kappa = {self.kappa} cannot hold with F w = t); use a relaxed objective "
                f"(objective='l1', 'perspective' or 'lasso') or a larger kappa", status="infeasible")
        W = _prune(W, self.prune_tol, np.sqrt(np.maximum(np.diag(G), 0.0)))
        T = np.hstack([Z, Yh])
        if self.refit and self.objective in ("l1", "perspective", "elastic_net"):
            W = _refit_support(W, G, T.T @ F, n, free, self.kappa)
        W[:n, :n] = _cap_rows(W[:n, :n], self.kappa if self.objective != "lasso" else None)
        R = T - F @ W.T
        tn = np.sqrt(np.einsum("ij,ij->j", T, T))
        rn = np.sqrt(np.einsum("ij,ij->j", R, R))
        residual = rn / np.maximum(tn, _TINY)
        # a layered fit is strictly upper triangular (deeper states on top read shallower ones
        # below): one sweep by levels, exact
        model = _assemble(W, n, p, q, fit_bias, states, self.kappa, self.sparse, dtype or states.X.dtype,
                          layered=layered)
        nnz = int(np.count_nonzero(W))
        a_inf = float(np.max(np.sum(np.abs(W[:n, :n]), axis=1), initial=0.0))
        if self.rank is not None:
            model, nnz, a_inf = _low_rank(model, W, F, T, n, p, q, fit_bias, self.rank, self.kappa)
        report = SIMReport(
            objective=self.objective, backend=self.backend, n_jobs=n_jobs, kappa=self.kappa,
            status=tuple(status), solver=tuple(solver), residual=residual,
            state_residual=float(np.linalg.norm(rn[:n]) / max(np.linalg.norm(tn[:n]), _TINY)),
            output_residual=float(np.linalg.norm(rn[n:]) / max(np.linalg.norm(tn[n:]), _TINY)),
            a_inf_norm=a_inf, nnz=nnz, baseline_nnz=int(states.baseline_nnz),
            sparsity=(1.0 - nnz / max(states.baseline_nnz, 1)) * 100.0,
            seconds=time.perf_counter() - t_start, solve_seconds=secs, iterations=iters,
            shared=shared,
            fallback_rows=tuple(i for i in range(n + q) if status[i] == "fallback"),
            retried_rows=retried,
            penalty_weight=(self.alpha if self.objective == "perspective" else self.beta)
            if self.objective in ("l1", "perspective", "elastic_net") else None)
        return model, report

    # ------------------------------------------------------------------------------- helpers

    def _state_groups(self, states: States, n: int, d: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """State rows and the columns of ``F`` they may read: all (``structure="free"``), or one
        group per depth (``"layered"``) whose rows read no state of their own depth or deeper
        (inputs and the bias always). ``"auto"``: layered for the relaxed objectives of a
        baseline with depths; the exact and lasso objectives keep the paper's full ``A``."""
        layered = self.structure == "layered" or (
            self.structure == "auto" and states.depth is not None
            and self.objective in ("l1", "perspective", "elastic_net"))
        if not layered or n == 0:
            return [(np.arange(n), None)]
        if states.depth is None:
            raise ConfigurationError("structure='layered' needs a layered baseline (a network the "
                                     "converter traces, whose states have depths); use "
                                     "structure='free'")
        if self.objective not in ("l1", "perspective", "elastic_net"):
            raise ConfigurationError(f"structure='layered' applies to the relaxed objectives 'l1', "
                                     f"'perspective' and 'elastic_net'; {self.objective!r} fits the full "
                                     f"A (structure='free')")
        depth = states.depth.detach().cpu().numpy()
        groups = []
        for dep in np.unique(depth):
            keep = np.ones(d, bool)
            keep[:n][depth >= dep] = False
            groups.append((np.flatnonzero(depth == dep), np.flatnonzero(keep)))
        return groups

    def _auto_weights(self, states: States, bias: bool | None) -> tuple[float, float]:
        """The scale-aware default ``(beta, alpha)`` (see ``beta``): ``penalty_ratio`` times the
        median over the rows of the weight ``beta_max,i`` that makes row ``i``'s solution zero
        (with a free bias the exact threshold is on centred data; the uncentred one used here is
        a scale of the problem, the same rule for every baseline)."""
        fit_bias = bool(bias if bias is not None else (self.bias or False))
        X, Uf, Z, Yh = _state_arrays(states)
        m, n = X.shape
        q = Yh.shape[1]
        F = np.hstack([X, Uf])  # the free bias column has no penalty
        gdiag = np.r_[np.einsum("ij,ij->j", F, F), [float(m)] * fit_bias]
        sigma, row_scale = self._penalty_scales(states, gdiag, m, F.shape[1] + fit_bias, n, q)
        if fit_bias:  # the bias is free: its gradient plays no part in the zero test
            sigma = sigma[:-1]
        T = np.hstack([Z, Yh])
        per = m if self.per_sample else 1
        lam = np.r_[np.full(n, self.lambda_state), np.full(q, self.lambda_output)] / per
        grad0 = 2.0 * lam[:, None] * np.abs(T.T @ F) / sigma[None, :]
        bmax = grad0.max(axis=1) / row_scale
        bmax = bmax[bmax > 0]
        if bmax.size == 0:
            raise InputError("every state and output of the baseline is zero on these samples: nothing "
                             "to fit; check the inputs U")
        beta = self.penalty_ratio * float(np.median(bmax))
        return beta, beta / 2.0

    def _penalty_scales(self, states: States, gdiag: np.ndarray, m: int, d: int, n: int, q: int
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Column weights ``sigma`` of the penalty and per-row factors of its weight (see
        ``penalty_units``): teacher units ``(c_F, c_rows)``, the column RMS, or ones."""
        units = "standardized" if self.standardize else self.penalty_units
        rows = np.ones(n + q)
        if self.objective not in ("l1", "perspective", "elastic_net") and not self.standardize:
            units = "rescaled"  # basis pursuit / lasso: the paper's weights (no penalty weight to scale)
        if units == "standardized":
            return np.sqrt(gdiag / m), rows
        if units == "rescaled":
            return np.ones(d), rows
        c = states.scale.detach().cpu().double().numpy()
        sigma = np.ones(d)
        sigma[:n] = c
        rows[:n] = c
        return sigma, rows

    def _jobs(self, T: np.ndarray, fac: Factor | None, F: np.ndarray, constrained: np.ndarray,
              free: np.ndarray, sigma: np.ndarray, *, lam: float, kappa: float | None, rows: np.ndarray,
              W0: np.ndarray | None, row_scale: np.ndarray | None = None,
              keep: np.ndarray | None = None) -> list[_Job]:
        """Split the target rows ``T`` (``m x r``, one column per row) into worker blocks, rows
        of one penalty weight (``row_scale`` times the objective's weight) per block."""
        r = T.shape[1]
        if r == 0:
            return []
        if row_scale is not None and np.unique(row_scale).size > 1:
            jobs = []
            for val in np.unique(row_scale):
                sel = np.flatnonzero(row_scale == val)
                jobs += self._jobs(T[:, sel], fac, F, constrained, free, sigma, lam=lam, kappa=kappa,
                                   rows=rows[sel], W0=None if W0 is None else W0[sel],
                                   row_scale=row_scale[sel], keep=keep)
            return jobs
        factor_w = 1.0 if row_scale is None else float(row_scale[0])
        Tt = np.ascontiguousarray(T.T)
        C = Tt @ F
        tt = np.einsum("ij,ij->i", Tt, Tt)
        Y, resid = fac.project(Tt) if fac is not None else (np.zeros((r, 0)), np.zeros(r))
        if self.objective == "exact" and fac is not None:
            # range test of eqs. 8-9 before any solve (the engine repeats it per row)
            limit = self.match_eps if self.match_eps > 0 else self.match_tol
            rel = resid / np.maximum(np.sqrt(tt), _TINY)
            bad = np.flatnonzero((rel > limit) & (tt > 0))
            if bad.size:
                names = [int(rows[i]) for i in bad]
                raise InfeasibleError(
                    f"exact matching F w = t is infeasible for {bad.size} of {r} rows {names[:10]}"
                    f"{'...' if bad.size > 10 else ''}: their targets lie outside range(F) (largest "
                    f"relative residual {float(rel[bad].max()):.2e} > {limit:g}; F has rank "
                    f"{fac.R.shape[0]} for {T.shape[0]} samples and {F.shape[1]} unknowns). Use a "
                    f"relaxed objective (objective='l1', 'perspective' or 'lasso'), match_eps >= "
                    f"{float(rel[bad].max()):.1e}, fewer samples, or float64 states", status="infeasible")
        kind = {"exact": "exact", "lasso": "lasso"}.get(self.objective,
                                                          "cvxpy" if self.solver == "cvxpy" else "penalized")
        n_workers = 1 if self.backend == "serial" else (self.n_jobs or os.cpu_count() or 1)
        size = self.block_rows or max(1, math.ceil(r / n_workers))
        jobs = []
        for start in range(0, r, size):
            sl = slice(start, min(r, start + size))
            jobs.append(_Job(
                kind=kind, rows=rows[sl], C=C[sl], tt=tt[sl], Y=Y[sl], resid=resid[sl], lam=lam,
                weight=((self.alpha if self.objective == "perspective" else self.beta) or 0.0) * factor_w,
                penalty=self.objective if self.objective in ("perspective", "elastic_net") else "l1",
                kappa=kappa, constrained=constrained, free=free,
                W0=None if W0 is None else W0[sl], sigma=sigma, tol=self.tol, max_iter=self.max_iter,
                cvx_solvers=tuple(self.cvx_solvers), l1_ratio=self.l1_ratio, match_tol=self.match_tol,
                match_eps=self.match_eps, keep=keep))
        return jobs


def _state_arrays(states: States) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X, U, Z, Y_hat)`` as float64 numpy arrays, refused when any holds NaN/Inf."""
    out = tuple(getattr(states, k).detach().cpu().double().numpy() for k in ("X", "U", "Z", "Y_hat"))
    for name, arr in zip(("X", "U", "Z", "Y_hat"), out, strict=True):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"states.{name} contains NaN or Inf; check the baseline and the inputs")
    return out  # type: ignore[return-value]


#: Exceptions by which the parallel backends report a worker process that died (killed, out of
#: memory, crashed in native code): loky / concurrent.futures, Ray, dask.distributed.
_WORKER_DEATH = frozenset({"TerminatedWorkerError", "BrokenProcessPool", "WorkerCrashedError",
                           "RayActorError", "NodeDiedError", "KilledWorker"})


def _is_worker_death(exc: BaseException) -> bool:
    return any(c.__name__ in _WORKER_DEATH for c in type(exc).__mro__)


def _run(jobs: list[_Job], G: np.ndarray, R: np.ndarray, backend: str, n_jobs: int,
         solve: Callable[[_Job, Any, Any], _BlockOut] | None = None
         ) -> tuple[list[_BlockOut], tuple[int, ...]]:
    """Solve the blocks on ``backend`` (see the module docstring for how data is shared); returns
    the blocks' results in order and the rows that were retried.

    A worker that dies (``_WORKER_DEATH``) never loses rows silently: the blocks without a result
    are solved again on a fresh pool, and, if a worker dies again, in this process; a
    ``RuntimeWarning`` names the rows each time. Any other exception propagates."""
    solve = solve or _solve_block
    if backend == "serial" or len(jobs) <= 1 and backend in ("loky", "threading"):
        return [solve(j, G, R) for j in jobs], ()
    results: dict[int, _BlockOut] = {}
    pending = list(range(len(jobs)))
    retried: list[int] = []
    for attempt in ("a fresh pool", "this process"):
        try:
            for k, out in zip(pending, _dispatch([jobs[k] for k in pending], G, R, backend, n_jobs, solve),
                              strict=False):
                results[k] = out
            break
        except Exception as exc:  # noqa: BLE001 -- re-raised unless a worker died
            if not _is_worker_death(exc):
                raise
            pending = [k for k in pending if k not in results]
            rows = [int(i) for k in pending for i in jobs[k].rows]
            retried += rows
            warnings.warn(f"SIM: a {backend} worker died ({type(exc).__name__}: {str(exc)[:200]}) before "
                          f"rows {rows[:10]}{'...' if len(rows) > 10 else ''} ({len(rows)} rows) were "
                          f"solved; solving them again in {attempt}", RuntimeWarning, stacklevel=3)
            if attempt == "this process":
                break
    for k in pending:
        if k not in results:
            results[k] = solve(jobs[k], G, R)
    return [results[k] for k in range(len(jobs))], tuple(sorted(set(retried)))


def _dispatch(jobs: list[_Job], G: np.ndarray, R: np.ndarray, backend: str, n_jobs: int,
              solve: Callable[[_Job, Any, Any], _BlockOut]) -> Iterator[_BlockOut]:
    """The blocks' results, in order, from a pool of ``backend`` (set up and torn down here)."""
    from joblib import Parallel, delayed, parallel_config

    if backend in ("loky", "threading"):
        # loky memory-maps arrays above 1 MB (G, R) once per call; workers read them in place
        yield from Parallel(n_jobs=n_jobs, backend=backend, mmap_mode="r", return_as="generator")(
            delayed(solve)(j, G, R) for j in jobs)
        return
    if backend == "ray":
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError as e:
            raise ConfigurationError("backend='ray' needs Ray: pip install 'ray[default]' (or use "
                                     "backend='loky')") from e
        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=n_jobs, include_dashboard=False, log_to_driver=False)
        try:
            register_ray()
            Gr, Rr = ray.put(G), ray.put(R)  # once into the object store (paper 002 App. B)
            with parallel_config(backend="ray", n_jobs=n_jobs):
                # (Ray's joblib backend returns lists only: a worker death loses the whole call)
                yield from Parallel()(delayed(solve)(j, Gr, Rr) for j in jobs)
        finally:
            if started:
                ray.shutdown()
        return
    # dask
    try:
        import distributed
    except ImportError as e:
        raise ConfigurationError("backend='dask' needs dask.distributed: pip install 'dask[distributed]' "
                                 "(or use backend='loky')") from e
    client, own = _dask_client(distributed, n_jobs)
    try:
        with parallel_config(backend="dask", client=client):
            # G and R are scattered once to the workers (joblib's dask backend scatters large args)
            yield from Parallel()(delayed(solve)(j, G, R) for j in jobs)
    finally:
        if own:
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()


def _dask_client(distributed: Any, n_jobs: int) -> tuple[Any, bool]:
    """The current dask client, or a local cluster of ``n_jobs`` single-threaded workers."""
    try:
        return distributed.Client.current(), False
    except ValueError:
        cluster = distributed.LocalCluster(n_workers=n_jobs, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        return distributed.Client(cluster), True


def _lstsq_support(F: np.ndarray, T: np.ndarray, W: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Each row ``i`` of ``W`` re-solved by least squares ``F_S w_S = T[:, i]`` on its support ``S``
    (the nonzeros of ``W[i]``, plus the columns ``extra``)."""
    out = np.zeros_like(W)
    for i in range(W.shape[0]):
        S = np.flatnonzero((W[i] != 0) | extra)
        if S.size:
            out[i, S] = np.linalg.lstsq(F[:, S], T[:, i], rcond=None)[0]
    return out


def _low_rank(model: ImplicitModel, W: np.ndarray, F: np.ndarray, T: np.ndarray, n: int, p: int, q: int,
              bias: bool, rank: int, kappa: float) -> tuple[nn.Module, int, float]:
    """``SIM(rank=k)``: the fitted model with ``A`` of rank ``k`` (see :class:`SIM`); returns the
    low-rank model, its nonzero count and ``||L R^T||_inf``."""
    from ..lowrank import LowRankImplicitModel

    if rank > n:
        raise ConfigurationError(f"rank must be in [1, n] with n = {n} fitted states, got {rank}")
    dense = model.A.to_dense() if model.A.layout != torch.strided else model.A
    model = ImplicitModel.from_matrices(dense, *(M.to_dense() if M.layout != torch.strided else M
                                                  for M in (model.B, model.C, model.D)),
                                        model.b, model.d, activation=model.activation, wellposedness=None)
    low = LowRankImplicitModel.from_dense(model, rank, wellposedness="pf", kappa=kappa, project=True)
    L, R = low.L.detach().double().numpy(), low.R.detach().double().numpy()
    Ak = L @ R.T
    X, Uf = F[:, :n], F[:, n:n + p]
    rest = F[:, n:]  # inputs (and the bias column)
    free = np.zeros(rest.shape[1], bool)
    free[p:] = True
    WB = _lstsq_support(rest, T[:, :n] - X @ Ak.T, W[:n, n:], free)
    with torch.no_grad():
        Xl = low.equilibrium(torch.from_numpy(Uf).to(low.L.dtype)).double().numpy()
    Fl = np.hstack([Xl, rest])
    WC = _lstsq_support(Fl, T[:, n:], W[n:], np.r_[np.zeros(n, bool), free])
    dt = low.L.dtype
    t = lambda M: torch.from_numpy(np.ascontiguousarray(M)).to(dt)  # noqa: E731
    out = LowRankImplicitModel.from_factors(
        t(L), t(R), t(WB[:, :p]), t(WC[:, :n]), t(WC[:, n:n + p]),
        t(WB[:, p]) if bias else None, t(WC[:, n + p]) if bias else None,
        activation=model.activation, wellposedness="pf", kappa=max(kappa, low._pf_value()))
    nnz = 2 * n * rank + int(np.count_nonzero(WB)) + int(np.count_nonzero(WC))
    return out, nnz, float(np.abs(Ak).sum(axis=1).max(initial=0.0))


def _refit_support(W: np.ndarray, G: np.ndarray, CT: np.ndarray, n: int, free: np.ndarray,
                   kappa: float) -> np.ndarray:
    """Least squares of each row on its support (and the free coordinates): ``G_SS w_S = c_S``,
    kept when the state rows still satisfy ``||a||_1 <= kappa`` and the residual
    ``w^T G w - 2 c^T w`` (``||t - F w||^2`` up to ``||t||^2``) does not grow."""
    out = W.copy()
    for i in range(W.shape[0]):
        S = np.flatnonzero((W[i] != 0) | free)
        if S.size == 0:
            continue
        GS, cS = G[np.ix_(S, S)], CT[i, S]
        try:
            w = np.linalg.lstsq(GS, cS, rcond=None)[0]
        except np.linalg.LinAlgError:
            continue
        if i < n and float(np.abs(w[S < n]).sum()) > kappa:
            continue
        old = W[i, S]
        if w @ GS @ w - 2 * cS @ w <= old @ GS @ old - 2 * cS @ old:
            out[i] = 0.0
            out[i, S] = w
    return out


def _prune(W: np.ndarray, tol: float, colnorm: np.ndarray) -> np.ndarray:
    """Zero the entries whose contribution ``|w_j| ||F_j||`` is at most ``tol`` times the row's
    largest (the columns of ``F`` differ in scale by powers of the rescaling divisor, so raw
    magnitudes would not compare)."""
    if tol <= 0:
        return W
    contrib = np.abs(W) * colnorm[None, :]
    big = np.max(contrib, axis=1, keepdims=True)
    return np.where(contrib <= tol * big, 0.0, W)


def _cap_rows(A: np.ndarray, kappa: float | None) -> np.ndarray:
    """Guard ``||a||_1 <= kappa`` against round-off of the solvers (scale the rare offender)."""
    if kappa is None:
        return A
    s = np.sum(np.abs(A), axis=1)
    f = np.where(s > kappa, kappa / np.maximum(s, _TINY) * (1 - 1e-12), 1.0)
    return A * f[:, None]


def _float32_rows_ok(A32: np.ndarray, kappa: float) -> np.ndarray:
    """Rescale float32 rows whose l1 norm exceeds ``kappa`` after rounding."""
    s = np.sum(np.abs(A32.astype(np.float64)), axis=1)
    bad = s > kappa
    if bad.any():
        A32 = A32.copy()
        A32[bad] *= np.float32(1 - 1e-6) * (kappa / s[bad]).astype(np.float32)[:, None]
    return A32


def _assemble(W: np.ndarray, n: int, p: int, q: int, bias: bool, states: States, kappa: float,
              sparse: bool | str, dtype: torch.dtype, layered: bool = False) -> ImplicitModel:
    """The fitted :class:`ImplicitModel` from the stacked rows ``W = [(A B b); (C D d)]``.

    Declared well-posedness: ``"triangular"`` for a layered fit (strictly upper triangular A,
    Thm 2.8, any activation, solved in one sweep), else ``"inf"`` when ``gamma ||A||_inf < 1``
    certifies it (Thm 2.2 with the activation's l_inf constant ``gamma``: GELU's 1.129, SiLU's
    1.100 count), else none (the model's solver still runs; the certificate reports)."""
    A, B = W[:n, :n], W[:n, n:n + p]
    C, D = W[n:, :n], W[n:, n:n + p]
    b = W[:n, -1] if bias else None
    dv = W[n:, -1] if bias else None
    npdt = np.float32 if dtype == torch.float32 else np.float64
    A = A.astype(npdt)
    a_norm = float(np.max(np.sum(np.abs(A.astype(np.float64)), axis=1), initial=0.0))
    if npdt == np.float32:
        A = _float32_rows_ok(A, kappa if a_norm <= kappa * (1 + 1e-6) else a_norm)
    a_norm = float(np.max(np.sum(np.abs(A.astype(np.float64)), axis=1), initial=0.0))
    dense_nnz = np.count_nonzero(W)
    use_sparse = sparse is True or (sparse == "auto" and dense_nnz <= SPARSE_DENSITY * W.size)

    def tens(M: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(M.astype(npdt)))
        if not use_sparse:
            return t
        with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice
            warnings.simplefilter("ignore", UserWarning)
            return t.to_sparse_csr()

    gamma = float(states.activation.lipschitz_inf)
    ga = gamma * a_norm
    wp = "triangular" if layered else ("inf" if ga < 1.0 else None)
    model_kappa = min(max(kappa, ga, 1e-12), 1.0 - 1e-12)
    return ImplicitModel.from_matrices(
        tens(A), tens(B), tens(C), tens(D),
        None if b is None else torch.from_numpy(b.astype(npdt)),
        None if dv is None else torch.from_numpy(dv.astype(npdt)),
        activation=states.activation, wellposedness=wp, kappa=model_kappa,
        solver="triangular" if layered else "anderson",
        max_iter=max(500, int(np.ceil(30.0 / max(1.0 - ga, 1e-3)))))  # Picard rate gamma ||A||_inf


def _init_rows(init: ImplicitModel, n: int, p: int, q: int, bias: bool,
               states: States) -> tuple[np.ndarray, np.ndarray]:
    """Warm-start rows ``(A B [b])`` and ``(C D [d])`` from a model fitted before."""
    if not isinstance(init, ImplicitModel):
        raise InputError(f"init must be an ImplicitModel fitted by SIM; got {type(init).__name__}")
    if (init.hidden, init.in_features, init.out_features) != (n, p, q):
        raise InputError(f"init has (n, p, q) = {(init.hidden, init.in_features, init.out_features)}; "
                         f"the states need {(n, p, q)}")

    def dense(M: Tensor) -> np.ndarray:
        return as_dense_array(M)

    top = [dense(init.A), dense(init.B)]
    bot = [dense(init.C), dense(init.D)]
    if bias:
        bb = getattr(init, "b", None)
        dd = getattr(init, "d", None)
        top.append(np.zeros((n, 1)) if bb is None else dense(bb).reshape(n, 1))
        bot.append(np.zeros((q, 1)) if dd is None else dense(dd).reshape(q, 1))
    return np.hstack(top), np.hstack(bot)


def _has_bias(baseline: nn.Module) -> bool:
    """Whether the baseline has a nonzero bias (then SIM fits ``b`` and ``d``)."""
    if isinstance(baseline, ImplicitModel):
        return any(getattr(baseline, k, None) is not None and bool(torch.any(getattr(baseline, k) != 0))
                   for k in ("b", "d"))
    return any(name.endswith("bias") and bool(torch.any(prm != 0))
               for name, prm in baseline.named_parameters()) or any(
        name.endswith("bias") or name.endswith("running_mean") for name, _ in baseline.named_buffers())


def _param_dtype(baseline: nn.Module) -> torch.dtype:
    for prm in baseline.parameters():
        if prm.is_floating_point():
            return prm.dtype
    return torch.float32
