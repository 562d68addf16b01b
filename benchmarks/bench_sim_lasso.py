#!/usr/bin/env python
"""Speed benchmark of the batched constrained LASSO for SIM rows (thesis ch. 3, eq. 3.4, Alg. 2).

Problem (issue 7's ``lasso`` objective): ``d`` unknowns per row, ``rows`` rows sharing the Gram
matrix ``G = F^T F / m`` of a random Gaussian design ``F`` (m x d), ``c_i = F^T z_i / m`` with
random ``z_i``; ``||w_S||_1 <= kappa`` on the first ``rows`` coordinates (the A-part).

Solvers: ``idlkit.sim.lasso_batch.constrained_lasso_batch`` (all rows at once, FISTA),
``idlkit.sim.lasso.constrained_lasso_rows`` (exact bisection, serial) and cvxpy + Clarabel
(``0.5 sum_squares(F w / sqrt(m)) - c^T w`` s.t. ``norm1(w_S) <= kappa``, ONE cvxpy problem PER
ROW, parameters ``c`` and ``kappa`` so the problem is compiled once). The two reference solvers are
run on the first ``--ref-rows`` rows only and their time is extrapolated linearly to all rows
(stated in the table); objective gaps are measured on those rows.

Run from the repository root::

    .venv/bin/python benchmarks/bench_sim_lasso.py            # d=900, rows=112, m=1000
    .venv/bin/python benchmarks/bench_sim_lasso.py --quick    # smoke run

Writes ``bench_sim_lasso.json`` / ``.md`` (``_quick`` with ``--quick``) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from _common import atomic_write, config_of, cpu_model, git_commit

from idlkit.sim.lasso import constrained_lasso_rows
from idlkit.sim.lasso_batch import constrained_lasso_batch

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=900)
    ap.add_argument("--rows", type=int, default=112)
    ap.add_argument("--m", type=int, default=1000)
    ap.add_argument("--kappa", type=float, default=0.99)
    ap.add_argument("--ref-rows", type=int, default=8, help="rows solved by the reference solvers")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the batched solver (best)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    if a.quick:
        a.d, a.rows, a.m, a.ref_rows, a.repeats = 120, 20, 150, 4, 1
    return a


def _cvxpy_rows(F: np.ndarray, C: np.ndarray, kappa: float, S: np.ndarray) -> tuple[np.ndarray, float]:
    import cvxpy as cp

    m, d = F.shape
    w = cp.Variable(d)
    c = cp.Parameter(d)
    prob = cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(F @ w / np.sqrt(m)) - c @ w), [cp.norm1(w[S]) <= kappa]
    )
    W = np.zeros_like(C)
    t0 = time.perf_counter()
    for i in range(C.shape[0]):
        c.value = C[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        W[i] = w.value
    return W, time.perf_counter() - t0


def _obj(G: np.ndarray, C: np.ndarray, W: np.ndarray) -> np.ndarray:
    return 0.5 * np.einsum("ij,ij->i", W @ G, W) - np.einsum("ij,ij->i", C, W)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    rng = np.random.default_rng(a.seed)
    F = rng.standard_normal((a.m, a.d))
    G = F.T @ F / a.m
    G = 0.5 * (G + G.T)
    Z = rng.standard_normal((a.rows, a.m))
    C = Z @ F / a.m
    mask = np.zeros(a.d, bool)
    mask[: a.rows] = True
    S = np.flatnonzero(mask)
    k = min(a.ref_rows, a.rows)

    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        res = constrained_lasso_batch(G, C, a.kappa, mask)
        times.append(time.perf_counter() - t0)
    t_batch = min(times)

    t0 = time.perf_counter()
    ref = constrained_lasso_rows(G, C[:k], a.kappa, mask)
    t_bis = (time.perf_counter() - t0) * a.rows / k

    Wc, t_c = _cvxpy_rows(F, C[:k], a.kappa, S)
    t_cvx = t_c * a.rows / k
    f_cvx = _obj(G, C[:k], Wc)
    l1_cvx = np.sum(np.abs(Wc[:, S]), axis=1)

    f_b = res.objective[:k]
    scale = np.maximum(np.abs(ref.objective), 1e-300)
    out = {
        "benchmark": "bench_sim_lasso",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "config": config_of(a),
        "batch": {
            "time_s": t_batch,
            "times_s": times,
            "status_counts": {s: res.status.count(s) for s in sorted(set(res.status))},
            "max_iterations": int(res.iterations.max()),
            "max_gap": float(np.nanmax(res.gap)),
            "max_kkt": float(res.kkt.max()),
            "max_l1_minus_kappa": float(np.max(res.l1 - a.kappa)),
        },
        "bisection": {
            "time_s_extrapolated": t_bis,
            "rows_timed": k,
            "status_counts": {s: ref.status.count(s) for s in sorted(set(ref.status))},
            "max_rel_obj_gap_batch_minus_bisection": float(np.max((f_b - ref.objective) / scale)),
        },
        "cvxpy_clarabel_per_row": {
            "time_s_extrapolated": t_cvx,
            "rows_timed": k,
            "max_rel_obj_gap_cvxpy_minus_batch": float(np.max((f_cvx - f_b) / np.abs(f_b))),
            "max_l1_minus_kappa": float(np.max(l1_cvx - a.kappa)),
        },
        "ratios": {"bisection_over_batch": t_bis / t_batch, "cvxpy_over_batch": t_cvx / t_batch},
    }
    b, bi, cv = out["batch"], out["bisection"], out["cvxpy_clarabel_per_row"]
    md = [
        f"# bench_sim_lasso ({'quick' if a.quick else 'full'})",
        "",
        f"d = {a.d}, rows = {a.rows}, m = {a.m}, kappa = {a.kappa} on the first {a.rows} coordinates; "
        f"{out['cpu']}, commit {out['commit']}. Reference solvers timed on {k} rows, extrapolated "
        f"linearly to {a.rows}; cvxpy = one Clarabel problem per row (parametrised, compiled once).",
        "",
        "| solver | time for all rows (s) | vs batch | objective gap (rel.) | max l1 - kappa |",
        "|---|---:|---:|---:|---:|",
        f"| lasso_batch (FISTA, all rows) | {t_batch:.3f} | 1.0x | - | {b['max_l1_minus_kappa']:.1e} |",
        f"| lasso.constrained_lasso_rows (bisection) | {t_bis:.2f} | {t_bis / t_batch:.1f}x | "
        f"batch - bisection <= {bi['max_rel_obj_gap_batch_minus_bisection']:.1e} | - |",
        f"| cvxpy + Clarabel (per row) | {t_cvx:.2f} | {t_cvx / t_batch:.1f}x | "
        f"cvxpy - batch <= {cv['max_rel_obj_gap_cvxpy_minus_batch']:.1e} | {cv['max_l1_minus_kappa']:.1e} |",
        "",
        f"Batch: status {b['status_counts']}, max iterations {b['max_iterations']}, max duality gap "
        f"{b['max_gap']:.1e}, max KKT violation {b['max_kkt']:.1e}. Bisection status {bi['status_counts']}.",
        "",
    ]
    stem = "bench_sim_lasso_quick" if a.quick else "bench_sim_lasso"
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write(a.out / f"{stem}.json", json.dumps(out, indent=2) + "\n")
    atomic_write(a.out / f"{stem}.md", "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
