#!/usr/bin/env python
"""Well-posedness tooling and low-rank model benchmark.

Sections (``--sections``, default all):

* ``proj``: time of :func:`idlkit.wellposed.project_inf_ball` (target: n = 4000 in
  under 0.5 s, reported PASS/FAIL) and :func:`idlkit.wellposed.project_mu_set`, float32
  and float64, on ``A = randn`` (every row far outside the set) and, for the l_inf ball,
  on a matrix whose rows lie 5% outside it (the regime of a projected gradient step).
  A vectorised, row-chunked Michelot algorithm (``candidate``, defined here, not in the
  library) is timed alongside and checked against the library's result.
* ``pf``: :func:`idlkit.wellposed.pf_eigenvalue` time and accuracy against numpy's dense
  ``np.abs(np.linalg.eigvals(M)).max()`` on nonnegative ``M``, for the default path
  (exact eigenvalues for n <= 1024, power iteration above) and the power-iteration path
  forced at every size.
* ``lowrank``: forward time (inference, ``torch.no_grad``) of ``LowRankImplicitModel``
  (n = 4000, k = 50, batch 256, p = 784) against ``ImplicitModel`` with ``A = L R^T``, the
  outputs compared.

Run from the repository root::

    .venv/bin/python benchmarks/bench_wellposed.py            # default run (~2-3 min, 2 cores)
    .venv/bin/python benchmarks/bench_wellposed.py --quick    # smoke run (seconds)

Writes ``bench_wellposed.json`` and ``bench_wellposed.md`` (``bench_wellposed_quick.*``
with ``--quick``) to ``--out`` (default ``benchmarks/results``), atomically, and prints the
markdown. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _common import atomic_write, config_of, cpu_model, git_commit

import idlkit as idl
from idlkit import wellposed as wp
from idlkit.lowrank import LowRankImplicitModel

HERE = Path(__file__).resolve().parent
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SECTIONS = ("proj", "pf", "lowrank")
PROJ_TARGET_N, PROJ_TARGET_S = 4000, 0.5


# ----------------------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per cell after a warm-up (default 3; --quick: 2); median "
                         "reported")
    ap.add_argument("--proj-sizes", type=int, nargs="+", default=None,
                    help="n for the projections (default 100 1000 4000; --quick: 50 200)")
    ap.add_argument("--pf-sizes", type=int, nargs="+", default=None,
                    help="n for pf_eigenvalue (default 100 1000 2000; --quick: 50 1100)")
    ap.add_argument("--lr-n", type=int, default=None, help="low-rank state size (default 4000)")
    ap.add_argument("--lr-k", type=int, default=None, help="rank (default 50)")
    ap.add_argument("--lr-batch", type=int, default=None, help="batch (default 256)")
    ap.add_argument("--lr-p", type=int, default=784, help="input features (default 784)")
    ap.add_argument("--lr-q", type=int, default=10, help="outputs (default 10)")
    ap.add_argument("--lr-dtype", choices=sorted(DTYPES), default="float64")
    ap.add_argument("--lr-tol", type=float, default=1e-8,
                    help="solver tolerance of both models (default 1e-8)")
    ap.add_argument("--lr-pf", type=float, default=0.9,
                    help="lambda_pf(|R|^T |L|) of the random factors (default 0.9)")
    ap.add_argument("--kappa", type=float, default=0.95, help="projection radius (default 0.95)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    q = a.quick
    a.repeats = a.repeats or (2 if q else 3)
    a.proj_sizes = a.proj_sizes or ([50, 200] if q else [100, 1000, 4000])
    a.pf_sizes = a.pf_sizes or ([50, 1100] if q else [100, 1000, 2000])
    a.lr_n = a.lr_n or (300 if q else 4000)
    a.lr_k = a.lr_k or (10 if q else 50)
    a.lr_batch = a.lr_batch or (32 if q else 256)
    if a.repeats < 1 or a.threads < 1 or not 0 < a.kappa < 1 or not 0 < a.lr_pf < 1:
        ap.error("--repeats and --threads must be positive, --kappa and --lr-pf in (0, 1)")
    if not 1 <= a.lr_k <= a.lr_n:
        ap.error("need 1 <= --lr-k <= --lr-n")
    return a


def source_hash() -> str:
    root = Path(idl.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "torch": torch.__version__, "numpy": np.__version__,
        "idlkit": getattr(idl, "__version__", None), "idlkit_git_commit": git_commit(),
        "idlkit_source_sha256": source_hash(), "python": platform.python_version(),
        "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "usable_cpus": usable, "torch_num_threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Median / min wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "samples_s": ts}


def contention_probe(threads: int) -> dict:
    """Median time of a small multi-threaded op (sort of a 200 x 200 matrix and a 100 x 256
    GEMM) with ``threads`` and with 1 thread.

    On a machine shared with other busy processes, every multi-threaded kernel can wait
    for a descheduled worker thread (milliseconds per op): the multi-threaded small ops
    are then much slower than the single-threaded ones and every timing below is inflated.
    """
    g = torch.Generator().manual_seed(1)
    S = torch.randn(200, 200, generator=g)
    A, X = torch.randn(100, 100, generator=g), torch.randn(100, 256, generator=g)

    def run() -> float:
        return timeit(lambda: (torch.sort(S, dim=1), A @ X), 15, warmup=3)["median_s"]

    if threads == 1:
        return {"threads": 1}
    torch.set_num_threads(1)
    one = run()
    torch.set_num_threads(threads)
    many = run()
    return {"threads": threads, "small_ops_1thread_s": one, "small_ops_threads_s": many,
            "slowdown": many / one, "contended": many > 2.0 * one}


# ----------------------------------------------------------------------------- (a) projections


def _michelot_lam(W: torch.Tensor, r: float, max_iter: int = 1000) -> torch.Tensor:
    """Threshold ``lam`` of the l1-ball projection for rows ``W = |v|`` with ``sum W > r``.

    Michelot's algorithm (1986; see Condat 2016): ``lam_0 = (sum_j w_j - r) / n`` and
    ``lam_{t+1} = (sum_{w_j > lam_t} w_j - r) / #{w_j > lam_t}``; ``lam_t`` increases
    to the root of ``sum_j (w_j - lam)_+ = r`` and the active set shrinks until it is
    fixed (an unchanged count means an unchanged set), which ends the loop exactly.
    """
    n = W.shape[1]
    lam = (W.sum(dim=1) - r) / n
    prev = None
    for _ in range(max_iter):
        mask = W > lam[:, None]
        cnt = mask.sum(dim=1)
        lam = ((W * mask).sum(dim=1) - r) / cnt.to(W.dtype)
        if prev is not None and torch.equal(cnt, prev):
            break
        prev = cnt
    return lam


def candidate_project_inf_ball(A: torch.Tensor, kappa: float, chunk: int = 128) -> torch.Tensor:
    """Exact projection onto ``{||A||_inf <= kappa}`` without sorting (benchmark candidate).

    Rows outside the ball are processed ``chunk`` at a time (temporaries stay in cache)
    by :func:`_michelot_lam`; the result is ``sign(a) (|a| - lam)_+`` as in the sort-based
    algorithm, followed by the same feasibility shrink as the library (rows pulled
    inside by the rounding allowance of ``idlkit.wellposed._boundary_margin``).
    """
    absA = A.abs()
    sums = absA.sum(dim=1)
    rows = (sums > kappa).nonzero().squeeze(1)
    lam = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device)
    for s in range(0, rows.numel(), chunk):
        idx = rows[s:s + chunk]
        lam[idx] = _michelot_lam(absA[idx], kappa)
    out = absA.sub_(lam[:, None]).clamp_(min=0).mul_(torch.sign(A))
    if rows.numel():
        target = kappa * (1 - wp._boundary_margin(A.shape[1], A.dtype))
        s64 = out[rows].abs().sum(dim=1, dtype=torch.float64)
        shrink = torch.where(s64 > target, target / s64, torch.ones_like(s64))
        out[rows] *= shrink.to(A.dtype)[:, None]
    return out


def bench_projections(args: argparse.Namespace) -> list[dict]:
    out = []
    kappa = args.kappa
    for dname in ("float32", "float64"):
        dt = DTYPES[dname]
        for n in args.proj_sizes:
            g = torch.Generator().manual_seed(args.seed + n)
            far = torch.randn(n, n, generator=g, dtype=dt)
            # rows 5% outside the ball: one projected-gradient step away from feasibility
            near = far * (1.05 * kappa / far.abs().sum(dim=1, keepdim=True))
            cases = [("project_inf_ball", "randn", far, lambda M: wp.project_inf_ball(M, kappa)),
                     ("project_inf_ball", "5% outside", near,
                      lambda M: wp.project_inf_ball(M, kappa)),
                     ("candidate (Michelot, chunked)", "randn", far,
                      lambda M: candidate_project_inf_ball(M, kappa)),
                     ("candidate (Michelot, chunked)", "5% outside", near,
                      lambda M: candidate_project_inf_ball(M, kappa)),
                     ("project_mu_set", "randn", far, lambda M: wp.project_mu_set(M, kappa))]
            refs: dict[str, torch.Tensor] = {}
            for fname, case, M, fn in cases:
                t = timeit(lambda fn=fn, M=M: fn(M), args.repeats, warmup=1 if n < 2000 else 0)
                P = fn(M)
                rec = {"function": fname, "case": case, "dtype": dname, "n": n, **t}
                if fname == "project_mu_set":
                    rec["feasible_value"] = wp.mu_inf(P)
                else:
                    rec["feasible_value"] = wp.inf_norm(P)
                rec["feasible"] = rec["feasible_value"] <= kappa
                if fname == "project_inf_ball":
                    refs[case] = P
                    if n == PROJ_TARGET_N:
                        rec["target"] = "PASS" if t["median_s"] < PROJ_TARGET_S else "FAIL"
                elif fname.startswith("candidate"):
                    rec["max_abs_diff_vs_library"] = float((P - refs[case]).abs().max())
                    if n == PROJ_TARGET_N:
                        rec["target"] = "PASS" if t["median_s"] < PROJ_TARGET_S else "FAIL"
                out.append(rec)
                print(f"  proj {fname:30s} {case:10s} {dname} n={n:5d}: "
                      f"{1e3 * t['median_s']:9.1f} ms", flush=True)
    return out


# ----------------------------------------------------------------------------- (b) pf


def pf_matrices(n: int, seed: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed + n)
    dense = np.abs(g.standard_normal((n, n))) / n
    density = min(1.0, 10.0 / n)
    sparse = np.abs(g.standard_normal((n, n))) * (g.random((n, n)) < density)
    # (labels without '|': they go into markdown table cells)
    return {"abs(randn)/n, dense": dense, f"abs(randn), density {density:.3g}": sparse}


def bench_pf(args: argparse.Namespace) -> list[dict]:
    out = []
    for n in args.pf_sizes:
        for kind, M in pf_matrices(n, args.seed).items():
            reps_ref = 1 if n >= 1000 else args.repeats
            ref_val: list[float] = []
            tref = timeit(lambda M=M, acc=ref_val: acc.append(
                float(np.abs(np.linalg.eigvals(M)).max())), reps_ref, warmup=0)
            ref = ref_val[-1]
            paths = [("default", wp._EXACT_EIG_MAX_N)]
            if n <= wp._EXACT_EIG_MAX_N:
                paths.append(("power (forced)", 0))
            for path, limit in paths:
                saved = wp._EXACT_EIG_MAX_N
                wp._EXACT_EIG_MAX_N = limit  # benchmark-local switch of the code path
                try:
                    val = wp.pf_eigenvalue(M)
                    reps = reps_ref if (path == "default" and n <= saved) else args.repeats
                    t = timeit(lambda M=M: wp.pf_eigenvalue(M), reps, warmup=0)
                finally:
                    wp._EXACT_EIG_MAX_N = saved
                used = "eig" if n <= limit else "power"
                rel = (val - ref) / ref if ref > 0 else val - ref
                out.append({"n": n, "matrix": kind, "path": path, "method_used": used,
                            "value": val, "numpy_eigvals": ref, "rel_error": rel,
                            "upper_bound_ok": val >= ref * (1 - 1e-12),
                            "numpy_time_s": tref["median_s"], **t})
                print(f"  pf n={n:5d} {kind:28s} {path:15s}: {1e3 * t['median_s']:9.2f} ms "
                      f"(numpy {1e3 * tref['median_s']:.1f} ms), rel err {rel:+.2e}", flush=True)
    return out


# ----------------------------------------------------------------------------- (c) low rank


def bench_lowrank(args: argparse.Namespace) -> dict:
    dt = DTYPES[args.lr_dtype]
    n, k, m, p, q = args.lr_n, args.lr_k, args.lr_batch, args.lr_p, args.lr_q
    g = torch.Generator().manual_seed(args.seed)
    L = torch.randn(n, k, generator=g, dtype=torch.float64)
    R = torch.randn(n, k, generator=g, dtype=torch.float64)
    M = (R.abs().t() @ L.abs()).numpy()
    s = math.sqrt(args.lr_pf / float(np.abs(np.linalg.eigvals(M)).max()))
    L, R = (L * s).to(dt), (R * s).to(dt)
    B = (torch.rand(n, p, generator=g, dtype=torch.float64) * 2 - 1).to(dt) / math.sqrt(p)
    C = (torch.rand(q, n, generator=g, dtype=torch.float64) * 2 - 1).to(dt) / math.sqrt(n)
    D = (torch.rand(q, p, generator=g, dtype=torch.float64) * 2 - 1).to(dt) / math.sqrt(p)
    b = torch.zeros(n, dtype=dt)
    d = torch.zeros(q, dtype=dt)
    U = torch.randn(m, p, generator=g, dtype=torch.float64).to(dt)
    kw = {"activation": "relu", "tol": args.lr_tol, "max_iter": 2000}
    lr = LowRankImplicitModel.from_factors(L, R, B, C, D, b, d, wellposedness="pf",
                                           kappa=max(0.95, args.lr_pf), **kw)
    dense = lr.to_dense(wellposedness=None)
    rec: dict = {"n": n, "k": k, "batch": m, "p": p, "q": q, "dtype": args.lr_dtype,
                 "tol": args.lr_tol, "pf_lowrank": lr.certificate(dense=False).pf,
                 "inf_norm_A": wp.inf_norm(dense.A)}
    with torch.no_grad():
        for name, model in (("LowRankImplicitModel", lr), ("ImplicitModel (A = L R^T)", dense)):
            warm = 1 if name.startswith("LowRank") else 0
            reps = args.repeats if name.startswith("LowRank") else max(1, min(args.repeats, 2))
            t = timeit(lambda model=model: model(U), reps, warmup=warm)
            info = model.last_solve
            rec[name] = {**t, "iterations": info.iterations, "residual": info.residual,
                         "converged": info.converged, "fallbacks": info.fallbacks,
                         "ms_per_iteration": 1e3 * t["median_s"] / max(info.iterations, 1)}
            print(f"  lowrank {name:26s}: {1e3 * t['median_s']:9.1f} ms, {info.iterations} it",
                  flush=True)
        y_lr, y_d = lr(U), dense(U)
        x_lr, x_d = lr.equilibrium(U), dense.equilibrium(U)
    rec["max_abs_dy"] = float((y_lr - y_d).abs().max())
    rec["max_abs_dx"] = float((x_lr - x_d).abs().max())
    rec["max_abs_y"] = float(y_d.abs().max())
    rec["speedup"] = rec["ImplicitModel (A = L R^T)"]["median_s"] / rec["LowRankImplicitModel"][
        "median_s"]
    return rec


# ----------------------------------------------------------------------------- report


def markdown(res: dict) -> str:
    mach, cfg = res["machine"], res["config"]
    lines = [
        "# bench_wellposed: projections, PF eigenvalue, low-rank forward", "",
        f"{res['timestamp']}. torch {mach['torch']}, numpy {mach['numpy']}, "
        f"{mach['torch_num_threads']} torch threads ({mach['usable_cpus']} usable CPUs, "
        f"{mach['cpu']}), idlkit {mach['idlkit']} ({mach['idlkit_git_commit']}, source "
        f"sha256 {mach['idlkit_source_sha256']}). Load average start/end: "
        f"{_load(mach['loadavg_start'])} / {_load(mach.get('loadavg_end'))}. Times: median of "
        f"{cfg['repeats']} runs (fewer where noted). Total {res['elapsed_s']:.0f} s.", "",
    ]
    if res.get("proj"):
        lines += [
            f"## (a) Projections (kappa = {cfg['kappa']:g}; target: project_inf_ball at "
            f"n = {PROJ_TARGET_N} under {PROJ_TARGET_S:g} s)", "",
            "| function | A | dtype | n | median ms | min ms | value after (<= kappa) | "
            "max abs diff vs library | target |",
            "|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in res["proj"]:
            diff = r.get("max_abs_diff_vs_library")
            lines.append(
                f"| {r['function']} | {r['case']} | {r['dtype']} | {r['n']} | "
                f"{1e3 * r['median_s']:.1f} | {1e3 * r['min_s']:.1f} | "
                f"{r['feasible_value']:.9g}{'' if r['feasible'] else ' (INFEASIBLE)'} | "
                f"{'-' if diff is None else f'{diff:.1e}'} | {r.get('target', '-')} |")
        lines.append("")
    if res.get("pf"):
        lines += [
            "## (b) pf_eigenvalue vs numpy `np.abs(np.linalg.eigvals(M)).max()`", "",
            "| n | M | path | method | pf_eigenvalue ms | numpy eigvals ms | value | "
            "rel error | upper bound |",
            "|---:|---|---|---|---:|---:|---:|---:|---|",
        ]
        for r in res["pf"]:
            lines.append(
                f"| {r['n']} | {r['matrix']} | {r['path']} | {r['method_used']} | "
                f"{1e3 * r['median_s']:.2f} | {1e3 * r['numpy_time_s']:.1f} | {r['value']:.12g} | "
                f"{r['rel_error']:+.1e} | {'ok' if r['upper_bound_ok'] else 'BELOW'} |")
        lines.append("")
    lr = res.get("lowrank")
    if lr:
        lines += [
            f"## (c) Low-rank vs dense forward (n = {lr['n']}, k = {lr['k']}, batch "
            f"{lr['batch']}, p = {lr['p']}, q = {lr['q']}, {lr['dtype']}, relu, anderson, "
            f"tol {lr['tol']:g})", "",
            "| model | median ms | min ms | iterations | ms / iteration | residual | runs |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name in ("LowRankImplicitModel", "ImplicitModel (A = L R^T)"):
            r = lr[name]
            lines.append(f"| {name} | {1e3 * r['median_s']:.1f} | {1e3 * r['min_s']:.1f} | "
                         f"{r['iterations']} | {r['ms_per_iteration']:.2f} | "
                         f"{r['residual']:.1e} | {len(r['samples_s'])} |")
        lines += ["", f"Speed-up (dense / low-rank): {lr['speedup']:.1f}x. Same outputs: "
                  f"max |y_lowrank - y_dense| = {lr['max_abs_dy']:.1e} (max |y| = "
                  f"{lr['max_abs_y']:.2g}), max |x_lowrank - x_dense| = {lr['max_abs_dx']:.1e}. "
                  f"lambda_pf(|R|^T |L|) = {lr['pf_lowrank']:.3g}, ||L R^T||_inf = "
                  f"{lr['inf_norm_A']:.3g}.", ""]
    probes = [mach.get(k) or {} for k in ("contention_probe_start", "contention_probe_end")]
    if any(p.get("contended") for p in probes):
        slow = "/".join(f"{p.get('slowdown', float('nan')):.1f}" for p in probes)
        lines += [f"**Warning: the machine was shared with other busy processes** (small ops "
                  f"{slow}x slower with {cfg['threads']} threads than with 1 at start/end): the "
                  f"multi-threaded timings above are inflated by waits for descheduled worker "
                  f"threads. Re-run on an idle machine, or compare with `--threads 1`.", ""]
    lines += ["Notes:", ""] + [f"- {t}" for t in NOTES]
    return "\n".join(lines) + "\n"


def _load(v) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)


NOTES = [
    "Projections: `randn` has every row far outside the set (the sort-based algorithm's "
    "worst case, and many Michelot iterations); `5% outside` rescales each row to l1 norm "
    "1.05 kappa, the regime after a projected-gradient step. `value after` is "
    "`||P||_inf` (`mu_inf(P)` for project_mu_set), float64. The candidate is defined in this "
    "script, not in idlkit; `max abs diff` compares it with project_inf_ball on the same "
    "input. n = 4000 cells run without warm-up.",
    "pf_eigenvalue: `default` is the library's path (dense eigenvalues for n <= 1024, "
    "power iteration with the Collatz-Wielandt upper bound above); `power (forced)` lowers "
    "the module's size threshold inside this script to time the power path at small n. "
    "`upper bound ok`: the value is not below numpy's (relative slack 1e-12). numpy eigvals "
    "and the exact path are timed once for n >= 1000.",
    "Low rank: random Gaussian L, R scaled so that lambda_pf(|R|^T |L|) = --lr-pf; "
    "B, C, D uniform as nn.Linear; inference under torch.no_grad. The low-rank model solves "
    "the k-dimensional latent fixed point (tol on the latent residual), the dense model the "
    "n-dimensional one (tol on the state residual; wellposedness=None, so no per-call "
    "certificate). The dense model is timed min(repeats, 2) times without warm-up.",
    "Timings need an idle machine; the load average is recorded at start and end.",
]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits  # numpy's BLAS/LAPACK threads

        threadpool_limits(args.threads)
    except ImportError:  # pragma: no cover - optional
        pass
    t0 = time.perf_counter()
    probe = contention_probe(args.threads)
    if probe.get("contended"):
        print(f"warning: {args.threads} threads are {probe['slowdown']:.1f}x slower than 1 on small "
              f"ops: the machine is shared with busy processes, timings will be inflated",
              flush=True)
    res: dict = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "machine": {**machine_info(), "contention_probe_start": probe},
                 "config": config_of(args)}
    if "proj" in args.sections:
        print("(a) projections", flush=True)
        res["proj"] = bench_projections(args)
    if "pf" in args.sections:
        print("(b) pf_eigenvalue", flush=True)
        res["pf"] = bench_pf(args)
    if "lowrank" in args.sections:
        print("(c) low-rank forward", flush=True)
        res["lowrank"] = bench_lowrank(args)
    res["machine"]["contention_probe_end"] = contention_probe(args.threads)
    res["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    res["elapsed_s"] = time.perf_counter() - t0
    res["notes"] = NOTES
    md = markdown(res)
    stem = "bench_wellposed_quick" if args.quick else "bench_wellposed"
    atomic_write(args.out / f"{stem}.json", json.dumps(res, indent=1) + "\n")
    atomic_write(args.out / f"{stem}.md", md)
    print()
    print(md)
    return res


if __name__ == "__main__":
    main()
