#!/usr/bin/env python
"""Sparse inference: the density below which a pruned model's CSR solve beats the dense one.

For n in ``--sizes`` (1000 4000), float32 and float64, a sweep of densities of ``A``
(``--densities``, default 0.1 % ... 30 %) and inference batch sizes (``--batches`` 1 64
256), the same model is built twice with :meth:`idlkit.ImplicitModel.from_matrices`: once
with ``A`` an int32 CSR tensor (a frozen buffer, never densified) and once with the same
``A`` dense, ``p = 784``, ``q = 10``, ReLU, the same solver on both sides (``--solver``,
default picard, absolute tolerance ``--tol`` 1e-6, adjoint the same solver with the
absolute rule at the same tolerance). ``A`` has a uniformly random pattern with
``round(density n^2)`` nonzeros, signed uniform values, every row rescaled so that
``||A||_inf = --kappa`` (0.95): well-posed (paper 000 Thm 2.2) and a pruned-model stand-in.

* **forward**: ``model(u)`` under ``torch.no_grad`` (the equilibrium solve + output map);
* **backward**: ``loss.backward()`` of the mean cross entropy (random labels) after a forward
  with autograd: the implicit adjoint solve and the gradients of ``B, C, D``. ``A`` gets no
  gradient on either side (the CSR ``A`` is a frozen buffer; the dense ``A`` is frozen to
  match, otherwise its ``n x n`` gradient would be timed on one side only).

Every cell reports median times (after one warm-up; ``--repeats``, fewer when one run takes
more than ``--cell-budget`` seconds), the ratio dense / CSR (> 1: CSR faster), the forward and
adjoint iteration counts of both sides (same iterate sequence: they must be equal) and the
largest output and gradient differences. The crossover density per (n, dtype, direction,
batch) is read off the sweep: the largest swept density where CSR still wins and the
smallest where it loses, with the log-interpolated density where the ratio crosses 1.
Once CSR is more than ``--stop-ratio`` (3) times slower in both directions at some density,
the denser cells of that (n, dtype, batch) are skipped (marked), to bound the run time.

**triangular** section (``--sections triangular``): a pruned feed-forward network as an
implicit model (strictly upper block-triangular ``A``, ``--tri-layers`` equal layers, only
the blocks "layer l -> layer l+1" nonzero, pruned to the given density inside these blocks,
``B`` feeding the first layer only), solved by idlkit's ``triangular`` solver (one
back-substitution level per layer, paper 000 Thm 2.8) with the CSR and with the dense ``A``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_sparse.py            # the committed tables (~15 min, 1 thread)
    .venv/bin/python benchmarks/bench_sparse.py --quick    # smoke run (seconds)

Writes ``results/bench_sparse.{json,md}`` (``bench_sparse_quick.*`` with ``--quick``; ``--out``
changes the directory) atomically and prints the markdown. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _common import atomic_write, config_of, cpu_model, git_commit, loadavg_1min

import idlkit as idl

HERE = Path(__file__).resolve().parent
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SECTIONS = ("general", "triangular")
DIRECTIONS = ("forward", "backward")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="n (default 1000 4000)")
    ap.add_argument("--densities", type=float, nargs="+", default=None,
                    help="fractions of nonzeros of A (default 0.001 0.003 0.01 0.03 0.1 0.3)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 64 256")
    ap.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float32", "float64"])
    ap.add_argument("--solver", default="picard", help="forward and adjoint solver (default picard)")
    ap.add_argument("--tol", type=float, default=1e-6, help="absolute forward and adjoint tolerance")
    ap.add_argument("--kappa", type=float, default=0.95, help="||A||_inf after row scaling")
    ap.add_argument("--p", type=int, default=784)
    ap.add_argument("--q", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=None, help="timed runs (default 3; --quick 1)")
    ap.add_argument("--cell-budget", type=float, default=2.0,
                    help="seconds: a run longer than this is repeated once only")
    ap.add_argument("--stop-ratio", type=float, default=3.0,
                    help="skip denser cells once CSR is this many times slower in both directions")
    ap.add_argument("--skip-cells", nargs="*", default=None, metavar="N:BATCH",
                    help="(n, batch) cells not run (default 4000:256: the dense side alone takes "
                         "minutes per density on one shared core)")
    ap.add_argument("--tri-layers", type=int, default=4, help="layers of the triangular section")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    ap.add_argument("--tag", default="", help="suffix of the output file names (e.g. _batch1)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes = a.sizes or [200]
        a.densities = a.densities or [0.01, 0.3]
        a.batches = a.batches or [1, 16]
        a.repeats = a.repeats or 1
        a.p = min(a.p, 64)
    a.sizes = a.sizes or [1000, 4000]
    a.densities = sorted(a.densities or [0.001, 0.003, 0.01, 0.03, 0.1, 0.3])
    a.batches = a.batches or [1, 64, 256]
    a.repeats = a.repeats or 3
    a.skip_cells = ["4000:256"] if a.skip_cells is None else a.skip_cells
    try:
        a.skip = {tuple(int(v) for v in c.split(":")) for c in a.skip_cells}
    except ValueError:
        ap.error("--skip-cells takes N:BATCH pairs, e.g. 4000:256")
    if not 0 < a.kappa < 1 or a.repeats < 1 or a.threads < 1 or a.tri_layers < 2:
        ap.error("--kappa in (0, 1), --repeats and --threads >= 1, --tri-layers >= 2")
    if not all(0 < d <= 1 for d in a.densities):
        ap.error("--densities must lie in (0, 1]")
    return a


# ----------------------------------------------------------------------------- models


def random_pattern(rows: int, cols: int, density: float, g: torch.Generator) -> torch.Tensor:
    """Flat indices of ``round(density rows cols)`` distinct uniformly random entries (>= 1)."""
    total = rows * cols
    k = max(1, round(density * total))
    if k > total // 4:  # dense-ish: one random permutation
        return torch.randperm(total, generator=g)[:k]
    idx = torch.unique(torch.randint(total, (int(k * 1.2) + 16,), generator=g))
    while idx.numel() < k:
        idx = torch.unique(torch.cat([idx, torch.randint(total, (k,), generator=g)]))
    return idx[torch.randperm(idx.numel(), generator=g)[:k]]


def scale_rows(A: torch.Tensor, kappa: float) -> torch.Tensor:
    """Rows rescaled to ``||A_i||_1 = kappa`` (empty rows stay 0): ``||A||_inf = kappa``."""
    s = A.abs().sum(dim=1, keepdim=True)
    return torch.where(s > 0, A * (kappa / s.clamp(min=1e-300)), A)


def general_A(n: int, density: float, kappa: float, g: torch.Generator) -> torch.Tensor:
    idx = random_pattern(n, n, density, g)
    A = torch.zeros(n * n, dtype=torch.float64)
    A[idx] = torch.rand(idx.numel(), generator=g, dtype=torch.float64) * 2 - 1
    return scale_rows(A.reshape(n, n), kappa)


def triangular_A(n: int, layers: int, density: float, g: torch.Generator) -> tuple[torch.Tensor, int]:
    """Strictly upper block-triangular ``A`` of a ``layers``-layer feed-forward net (state order
    ``x = (x_L; ...; x_1)``: layer ``l + 1`` reads layer ``l``, the block right of the
    diagonal), each weight block pruned to ``density``, values ``U(-1, 1) / sqrt(fan-in
    density)``; returns ``A`` and the width of a layer."""
    w = n // layers
    A = torch.zeros(n, n, dtype=torch.float64)
    for k in range(layers - 1):  # block row k (layer L - k) reads block row k + 1
        idx = random_pattern(w, w, density, g)
        blk = torch.zeros(w * w, dtype=torch.float64)
        blk[idx] = (torch.rand(idx.numel(), generator=g, dtype=torch.float64) * 2 - 1)
        A[k * w:(k + 1) * w, (k + 1) * w:(k + 2) * w] = blk.reshape(w, w) / math.sqrt(max(density * w, 1))
    return A, w


def build_pair(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor, dt: torch.dtype,
               args: argparse.Namespace, triangular: bool) -> dict[str, idl.ImplicitModel]:
    kw: dict = {"activation": "relu", "tol": args.tol, "max_iter": 5000,
                "backward_tol": args.tol, "backward_stop": "absolute"}
    if triangular:
        kw.update(wellposedness="triangular", solver="triangular", backward_solver="triangular")
    else:
        kw.update(wellposedness="inf", kappa=min(0.999, args.kappa + 1e-6), solver=args.solver,
                  backward_solver=args.solver)
    Ad = A.to(dt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        sparse = idl.ImplicitModel.from_matrices(Ad.to_sparse_csr(), B.to(dt), C.to(dt), D.to(dt), **kw)
    dense = idl.ImplicitModel.from_matrices(Ad, B.to(dt), C.to(dt), D.to(dt), **kw)
    dense.A.requires_grad_(False)  # the CSR A is a frozen buffer: no A gradient on either side
    assert sparse.A.layout == torch.sparse_csr and sparse.A.crow_indices().dtype == torch.int32
    return {"csr": sparse, "dense": dense}


# ----------------------------------------------------------------------------- timing


def timed(fn: Callable[[], float], repeats: int, budget: float) -> dict:
    """One warm-up, then ``repeats`` runs (1 when the warm-up took over ``budget`` s); ``fn``
    returns its own measured seconds. Median and min."""
    first = fn()
    reps = repeats if first <= budget else 1
    ts = []
    for _ in range(reps):
        gc.collect()
        ts.append(fn())
    return {"median_s": statistics.median(ts), "min_s": min(ts), "samples_s": ts, "warmup_s": first}


def forward_once(model: idl.ImplicitModel, U: torch.Tensor) -> float:
    with torch.no_grad():
        t0 = time.perf_counter()
        model(U)
        return time.perf_counter() - t0


def backward_once(model: idl.ImplicitModel, U: torch.Tensor, labels: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(U), labels)
    t0 = time.perf_counter()
    loss.backward()
    return time.perf_counter() - t0


def iterations(info: object) -> int | None:
    return None if info is None else int(info.iterations)


def bench_cell(models: dict[str, idl.ImplicitModel], U: torch.Tensor, labels: torch.Tensor,
               args: argparse.Namespace, skip: bool) -> dict:
    rec: dict = {}
    if skip:
        return {"skipped": True}
    for side, model in models.items():
        f = timed(lambda model=model: forward_once(model, U), args.repeats, args.cell_budget)
        f["iterations"] = iterations(model.last_solve)
        b = timed(lambda model=model: backward_once(model, U, labels), args.repeats, args.cell_budget)
        b["iterations"] = iterations(model.last_backward_solve)
        b["forward_iterations"] = iterations(model.last_solve)
        rec[side] = {"forward": f, "backward": b}
    # same iterate sequence: outputs and gradients agree to rounding
    outs, grads = {}, {}
    for side, model in models.items():
        model.zero_grad(set_to_none=True)
        y = model(U)
        torch.nn.functional.cross_entropy(y, labels).backward()
        outs[side] = y.detach()
        grads[side] = torch.cat([model.B.grad.reshape(-1), model.C.grad.reshape(-1)])
    rec["max_abs_dy"] = float((outs["csr"] - outs["dense"]).abs().max())
    rec["max_abs_y"] = float(outs["dense"].abs().max())
    rec["max_abs_dgrad"] = float((grads["csr"] - grads["dense"]).abs().max())
    rec["max_abs_grad"] = float(grads["dense"].abs().max())
    for d in DIRECTIONS:
        rec[f"ratio_{d}"] = rec["dense"][d]["median_s"] / rec["csr"][d]["median_s"]
        rec[f"same_iterations_{d}"] = rec["dense"][d]["iterations"] == rec["csr"][d]["iterations"]
    return rec


def crossover(points: list[tuple[float, float]]) -> dict:
    """From ``(density, dense / csr ratio)`` in increasing density: where CSR stops winning."""
    pts = [(d, r) for d, r in points if r is not None]
    if not pts:
        return {"verdict": "no data"}
    wins = [d for d, r in pts if r > 1]
    if not wins:
        return {"verdict": "CSR never wins", "below": None, "above": pts[0][0], "density": None}
    if len(wins) == len(pts):
        return {"verdict": "CSR wins at every density tested", "below": pts[-1][0], "above": None,
                "density": None}
    for (d0, r0), (d1, r1) in zip(pts, pts[1:], strict=False):
        if r0 > 1 >= r1:
            # log-linear interpolation of log(ratio) in log(density)
            t = math.log(r0) / (math.log(r0) - math.log(r1)) if r0 != r1 else 0.5
            dens = math.exp(math.log(d0) + t * (math.log(d1) - math.log(d0)))
            extra = "" if wins[-1] == d0 else " (not monotone: CSR also wins at a denser point)"
            return {"verdict": f"crossover{extra}", "below": d0, "above": d1, "density": dens}
    return {"verdict": "CSR loses at low density, wins at high (not monotone)", "below": wins[-1],
            "above": None, "density": None}


# ----------------------------------------------------------------------------- sections


def run_section(args: argparse.Namespace, triangular: bool) -> dict:
    name = "triangular" if triangular else "general"
    cells: list[dict] = []
    for n in args.sizes:
        g = torch.Generator().manual_seed(args.seed + n)
        p, q = args.p, args.q
        B = (torch.rand(n, p, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(p)
        C = torch.randn(q, n, generator=g, dtype=torch.float64) / math.sqrt(n)
        D = torch.zeros(q, p, dtype=torch.float64)
        Us = {m: torch.randn(m, p, generator=g, dtype=torch.float64) for m in args.batches}
        labels = {m: torch.randint(q, (m,), generator=g) for m in args.batches}
        for dtn in args.dtypes:
            dt = DTYPES[dtn]
            stopped = {m: False for m in args.batches}
            for dens in args.densities:
                ga = torch.Generator().manual_seed(args.seed + 7919 * n + round(1e6 * dens))
                if triangular:
                    A, w = triangular_A(n, args.tri_layers, dens, ga)
                    Bt = B.clone()
                    Bt[: n - w] = 0  # the inputs feed the first layer (the last block) only
                    models = build_pair(A, Bt, C, D, dt, args, True)
                else:
                    A = general_A(n, dens, args.kappa, ga)
                    models = build_pair(A, B, C, D, dt, args, False)
                nnz = int((A != 0).sum())
                for m in args.batches:
                    t0 = time.perf_counter()
                    if (n, m) in args.skip:
                        cells.append({"n": n, "dtype": dtn, "density": dens, "nnz": nnz, "batch": m,
                                      "skipped": True, "reason": "--skip-cells"})
                        continue
                    rec = bench_cell(models, Us[m].to(dt), labels[m], args, stopped[m])
                    rec.update(n=n, dtype=dtn, density=dens, nnz=nnz, actual_density=nnz / n ** 2,
                               batch=m, inf_norm_A=float(A.abs().sum(1).max()),
                               seconds=time.perf_counter() - t0)
                    cells.append(rec)
                    if rec.get("skipped"):
                        print(f"  {name} n={n} {dtn} density={dens:g} batch={m}: skipped", flush=True)
                        continue
                    print(f"  {name} n={n} {dtn} density={dens:g} batch={m}: "
                          f"fwd dense/csr {rec['ratio_forward']:.2f} "
                          f"({1e3 * rec['dense']['forward']['median_s']:.1f} / "
                          f"{1e3 * rec['csr']['forward']['median_s']:.1f} ms, "
                          f"{rec['csr']['forward']['iterations']} it), bwd {rec['ratio_backward']:.2f}, "
                          f"max|dy| {rec['max_abs_dy']:.1e}", flush=True)
                    if max(rec["ratio_forward"], rec["ratio_backward"]) < 1 / args.stop_ratio:
                        stopped[m] = True
                del models
    xs = []
    for n in args.sizes:
        for dtn in args.dtypes:
            for d in DIRECTIONS:
                for m in args.batches:
                    pts = [(c["density"], c.get(f"ratio_{d}")) for c in cells
                           if (c["n"], c["dtype"], c["batch"]) == (n, dtn, m)]
                    xs.append({"n": n, "dtype": dtn, "direction": d, "batch": m, **crossover(pts)})
    return {"cells": cells, "crossovers": xs}


# ----------------------------------------------------------------------------- report


def machine_info(threads: int) -> dict:
    return {"torch": torch.__version__, "numpy": np.__version__, "idlkit_git_commit": git_commit(),
            "python": platform.python_version(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_num_threads": threads, "loadavg_start": loadavg_1min()}


def _pct(d: float | None) -> str:
    return "-" if d is None else f"{100 * d:.3g} %"


def markdown(res: dict) -> str:
    cfg, mach = res["config"], res["machine"]
    lines = [
        "# bench_sparse: CSR vs dense A, forward and backward of the same implicit model", "",
        f"{res['timestamp']}. torch {mach['torch']}, {mach['torch_num_threads']} thread(s), "
        f"{mach['cpu']} ({mach['cpu_count']} CPUs), idlkit {mach['idlkit_git_commit']}. Load "
        f"average (1 min) start/end: {mach['loadavg_start']} / {mach.get('loadavg_end')}. "
        f"p = {cfg['p']}, q = {cfg['q']}, ReLU, solver {cfg['solver']} forward and adjoint "
        f"(general A), absolute tolerance {cfg['tol']:g} both ways; ||A||_inf = {cfg['kappa']:g}. "
        f"Times: median of up to {cfg['repeats']} runs after a warm-up (1 run when a run takes "
        f"over {cfg['cell_budget']:g} s). Ratio = dense time / CSR time (> 1: CSR faster). "
        f"Total {res['elapsed_s']:.0f} s.", "",
    ]
    for sec in SECTIONS:
        data = res.get(sec)
        if not data:
            continue
        title = ("general A (random pattern)" if sec == "general" else
                 f"triangular A (pruned {cfg['tri_layers']}-layer feed-forward, solver triangular; "
                 f"density inside the weight blocks)")
        lines += [f"## Crossover density: {title}", "",
                  "| n | dtype | direction | batch | verdict | CSR wins up to | CSR loses from | "
                  "crossover (log-interp.) |",
                  "|---:|---|---|---:|---|---:|---:|---:|"]
        for x in data["crossovers"]:
            lines.append(f"| {x['n']} | {x['dtype']} | {x['direction']} | {x['batch']} | {x['verdict']} | "
                         f"{_pct(x.get('below'))} | {_pct(x.get('above'))} | {_pct(x.get('density'))} |")
        lines += ["", f"### Cells: {title}", "",
                  "| n | dtype | density | nnz | batch | fwd dense ms | fwd CSR ms | fwd ratio | "
                  "fwd it (dense/CSR) | bwd dense ms | bwd CSR ms | bwd ratio | bwd it (dense/CSR) | "
                  "max abs dy | max abs dgrad |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|"]
        for c in data["cells"]:
            head = f"| {c['n']} | {c['dtype']} | {_pct(c['density'])} | {c['nnz']} | {c['batch']} |"
            if c.get("skipped"):
                why = ("not run (--skip-cells)" if c.get("reason") else
                       "skipped: CSR already > stop-ratio slower at a lower density")
                lines.append(head + f" {why} |" + " |" * 9)
                continue
            dn, cs = c["dense"], c["csr"]
            lines.append(
                head + f" {1e3 * dn['forward']['median_s']:.2f} | {1e3 * cs['forward']['median_s']:.2f} | "
                f"{c['ratio_forward']:.2f} | {dn['forward']['iterations']}/{cs['forward']['iterations']} | "
                f"{1e3 * dn['backward']['median_s']:.2f} | {1e3 * cs['backward']['median_s']:.2f} | "
                f"{c['ratio_backward']:.2f} | "
                f"{dn['backward']['iterations']}/{cs['backward']['iterations']} | "
                f"{c['max_abs_dy']:.1e} | {c['max_abs_dgrad']:.1e} |")
        lines.append("")
    lines += ["Notes:", ""] + [f"- {t}" for t in NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    "Both models are `ImplicitModel.from_matrices` of the same matrices; the CSR one holds A as "
    "an int32 CSR frozen buffer, the dense one as a frozen parameter. B, C, D are dense on both "
    "sides (the B u and C x products cost the same on both sides and dilute the ratio at small n).",
    "Forward = `model(u)` under no_grad; backward = `loss.backward()` only (the implicit adjoint "
    "solve and the B, C, D gradients), after an untimed forward with autograd. The iteration "
    "columns give the forward iterations (dense/CSR) and the adjoint iterations (dense/CSR); "
    "`max abs dy` and `max abs dgrad` compare the outputs and the B, C gradients of the two "
    "sides (equal iterate sequences up to rounding).",
    "Crossover: `CSR wins up to` is the densest swept density with ratio > 1 below the first "
    "loss; `crossover` interpolates log(ratio) linearly in log(density) between the two swept "
    "points. Densities beyond a cell where CSR was over `--stop-ratio` times slower in both "
    "directions are skipped.",
    "Triangular: only the blocks layer l -> l + 1 are nonzero, so the overall density of A is "
    "(layers - 1) / layers^2 of the in-block density; the triangular solver is one level "
    "product per layer on both sides (no iteration count: 'it' are the levels).",
    "Single-thread timings on a machine shared with other jobs: the load average is recorded; "
    "ratios are more stable than absolute times.",
]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res: dict = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "machine": machine_info(args.threads),
                 "config": {k: v for k, v in config_of(args).items() if k != "skip"}}
    for sec in SECTIONS:
        if sec in args.sections:
            print(f"section {sec}", flush=True)
            res[sec] = run_section(args, triangular=sec == "triangular")
    res["machine"]["loadavg_end"] = loadavg_1min()
    res["elapsed_s"] = time.perf_counter() - t0
    res["notes"] = NOTES
    md = markdown(res)
    stem = ("bench_sparse_quick" if args.quick else "bench_sparse") + args.tag
    atomic_write(args.out / f"{stem}.json", json.dumps(res, indent=1) + "\n")
    atomic_write(args.out / f"{stem}.md", md)
    print()
    print(md)
    return res


if __name__ == "__main__":
    main()
