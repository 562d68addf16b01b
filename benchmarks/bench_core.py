#!/usr/bin/env python
"""Speed benchmark of idlkit's core implicit model against torchidl.

Times forward + backward (implicit gradients) of ``y = C x + D u``,
``x = relu(A x + B u)`` for idlkit's ``ImplicitModel`` with ``solver="picard"``
and ``solver="anderson"`` (the default) and for torchidl's ``ImplicitModel``, all
holding the same ``A, B, C, D`` and fed the same data and loss, on a hard
well-posed model: ``A >= 0`` with every row summing to ``kappa`` (so
``||A||_inf = kappa``, Picard contracts at a rate close to ``kappa``).

Run from the repository root::

    .venv/bin/python benchmarks/bench_core.py            # full run (a few minutes)
    .venv/bin/python benchmarks/bench_core.py --quick    # smoke run (seconds)

Writes ``bench_core.json`` and ``bench_core.md`` (``bench_core_quick.*`` with
``--quick``) to ``--out`` (default ``benchmarks/results``) and prints the table.
See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import types
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import atomic_write, cpu_model, git_commit, load_torchidl

import idlkit as idl

HERE = Path(__file__).resolve().parent
DTYPES = {"float32": torch.float32, "float64": torch.float64}
METHODS = ("idlkit-picard", "idlkit-picard-bwdpicard", "idlkit-anderson", "torchidl")
DEFAULT_METHODS = METHODS
REFERENCE = "idlkit-anderson"  # the idlkit default, denominator of the torchidl ratio


# ----------------------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="hidden sizes n (default 100 300 1000; --quick: 20 50)")
    ap.add_argument("--kappas", type=float, nargs="+", default=None,
                    help="row sums of A (default 0.5 0.95 0.99; --quick: 0.5 0.95)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per cell after one warm-up (default 5; --quick: 2)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 256; --quick: 32)")
    ap.add_argument("--p", type=int, default=784, help="input features (default 784)")
    ap.add_argument("--q", type=int, default=10, help="output features / classes (default 10)")
    ap.add_argument("--tol", type=float, default=1e-6,
                    help="solver tolerance (default 1e-6): absolute l_inf residual of the forward "
                         "solve; idlkit scales it for the adjoint solve (see --torchidl-grad-tol)")
    ap.add_argument("--max-iter", type=int, default=2000,
                    help="iteration cap, forward and backward, every method (default 2000)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float64",
                    help="default float64: at kappa=0.99 the state reaches ~10, where the float32 "
                         "spacing (~1e-6) equals the tolerance, so float32 iteration counts are "
                         "set by rounding")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: the CPUs this process may use)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS),
                    help="default: all; 'idlkit-picard-bwdpicard' is idlkit picard with a picard "
                         "adjoint solve, the same algorithm as torchidl")
    ap.add_argument("--torchidl-grad-tol", choices=["match", "tol"], default="match",
                    help="torchidl's absolute adjoint tolerance: 'match' = the absolute tolerance "
                         "idlkit's adjoint solve used in the same cell (SolveInfo.tol; idlkit "
                         "scales --tol by ||dL/dx||_inf; the default), 'tol' = --tol")
    ap.add_argument("--cell-budget", type=float, default=20.0,
                    help="seconds (default 20): when the warm-up of a method takes longer than "
                         "this / repeats, fewer timed runs are made (at least 1; 0 when the "
                         "warm-up alone is longer than the budget, and the warm-up is reported)")
    ap.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    ap.add_argument("--out", type=Path, default=HERE / "results",
                    help="output directory (default benchmarks/results)")
    args = ap.parse_args(argv)
    quick = args.quick
    if args.sizes is None:
        args.sizes = [20, 50] if quick else [100, 300, 1000]
    if args.kappas is None:
        args.kappas = [0.5, 0.95] if quick else [0.5, 0.95, 0.99]
    if args.repeats is None:
        args.repeats = 2 if quick else 5
    if args.batch is None:
        args.batch = 32 if quick else 256
    for k in args.kappas:
        if not 0 < k < 1:
            ap.error(f"kappa must lie in (0, 1), got {k}")
    if args.repeats < 1 or args.batch < 1 or min(args.sizes) < 1:
        ap.error("--repeats, --batch and --sizes must be positive")
    return args


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def idlkit_source_hash() -> str | None:
    """sha256 (first 12 hex digits) of idlkit's imported source files: identifies the code
    measured when the working tree differs from the commit."""
    import hashlib

    root = Path(idl.__file__).resolve().parent
    h = hashlib.sha256()
    files = sorted(root.rglob("*.py"))
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12] if files else None


def machine_info(args: argparse.Namespace, torchidl_note: str) -> dict:
    par = torch.__config__.parallel_info().splitlines()
    backend = next((ln.split(":", 1)[1].strip() for ln in par if "parallel backend" in ln), None)

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "torch": torch.__version__,
        "idlkit": getattr(idl, "__version__", None),
        "idlkit_git_commit": git_commit(),
        "idlkit_source_sha256": idlkit_source_hash(),
        "torchidl": version("torchidl"),
        "torchidl_import": torchidl_note,
        "numpy": version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "parallel_backend": backend,
        "mkl": torch.backends.mkl.is_available(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ----------------------------------------------------------------------------- torchidl


class CountingTol:
    """A tolerance that counts how often torchidl's solver loop compares against it.

    torchidl's loops test ``if err < tol`` once per iteration and return neither
    the count nor anything else that gives it; a tensor's ``<`` against this
    object falls back to ``CountingTol.__gt__``, which counts and compares. The
    timed code is torchidl's own.
    """

    def __init__(self, value: float) -> None:
        self.value = float(value)
        self.count = 0

    def __gt__(self, err: object) -> bool:
        self.count += 1
        return bool(err < self.value)

    def __repr__(self) -> str:
        return f"{self.value:g}"


def torchidl_function(tf: types.ModuleType) -> type:
    """A fresh subclass of ``ImplicitFunctionInf`` that records each solve's result.

    A fresh class per model because torchidl keeps mitr/tol/kappa as class
    attributes (``set_parameters`` is a classmethod).
    """
    base = tf.ImplicitFunctionInf

    class Recorded(base):  # type: ignore[misc, valid-type]
        forward_record: dict | None = None
        backward_record: dict | None = None

        @classmethod
        def inn_pred(cls, A, Z, X, mitr, tol):  # noqa: N802 - torchidl's name
            tol.count = 0
            X, err, status = base.inn_pred.__func__(cls, A, Z, X, mitr, tol)
            cls.forward_record = _tidl_record(err, status, tol, mitr)
            return X, err, status

        @staticmethod
        def inn_pred_grad(AT, Z, DPhi, mitr, tol):
            tol.count = 0
            V, err, status = base.inn_pred_grad(AT, Z, DPhi, mitr, tol)
            Recorded.backward_record = _tidl_record(err, status, tol, mitr)
            return V, err, status

    return Recorded


def _tidl_record(err: object, status: str, tol: CountingTol, mitr: int) -> dict:
    converged = status == "converged"
    evaluations = tol.count
    # torchidl returns the iterate *before* the last evaluation when converged, so the
    # number of updates of the returned iterate is evaluations - 1 (idlkit's convention)
    return {"iterations": evaluations - 1 if converged else evaluations,
            "residual": float(err), "converged": converged, "status": status,
            "evaluations": evaluations, "max_iter": mitr, "tol": tol.value}


# ----------------------------------------------------------------------------- problem


def make_problem(n: int, kappa: float, args: argparse.Namespace) -> dict:
    """Same A, B, C, D, u, labels for every method (generated in float64, then cast)."""
    seed = args.seed * 1_000_003 + n * 1009 + round(kappa * 10_000)
    g = torch.Generator().manual_seed(seed)
    p, q, m = args.p, args.q, args.batch
    f64 = torch.float64
    A = torch.rand(n, n, generator=g, dtype=f64)
    A = A / A.sum(dim=1, keepdim=True) * kappa  # A >= 0, every row sums to kappa
    B = torch.randn(n, p, generator=g, dtype=f64) / math.sqrt(p)  # (B u)_i ~ N(0, 1)
    C = torch.randn(q, n, generator=g, dtype=f64) / math.sqrt(n)
    D = torch.randn(q, p, generator=g, dtype=f64) / math.sqrt(p)
    u = torch.randn(m, p, generator=g, dtype=f64)
    labels = torch.randint(0, q, (m,), generator=g)
    dt = DTYPES[args.dtype]
    prob = {k: v.to(dt) for k, v in dict(A=A, B=B, C=C, D=D, u=u).items()}
    prob["labels"] = labels
    prob["seed"] = seed
    prob["inf_norm_A"] = float(prob["A"].abs().sum(dim=1).max())
    return prob


def build(method: str, prob: dict, n: int, kappa: float, args: argparse.Namespace, tidl,
          grad_tol: float | None = None):
    """``(model, solve_info_fn)``; ``solve_info_fn()`` describes the last forward/backward.

    ``grad_tol``: torchidl's absolute adjoint tolerance (default ``args.tol``).
    """
    dt = DTYPES[args.dtype]
    p, q = args.p, args.q
    if method.startswith("idlkit"):
        kw = {}
        if method == "idlkit-picard-bwdpicard":
            kw["backward_solver"] = "picard"
        model = idl.ImplicitModel(p, n, q, activation="relu", bias=False, wellposedness="inf",
                                  kappa=kappa, solver=method.split("-")[1], tol=args.tol,
                                  max_iter=args.max_iter, on_nonconvergence="ignore", dtype=dt,
                                  **kw)

        def info() -> dict:
            return {"forward": _idl_record(model.last_solve),
                    "backward": _idl_record(model.last_backward_solve)}
    else:
        tb, tf = tidl
        fn = torchidl_function(tf)
        # torchidl rescales A when ||A||_inf > its kappa: give it exactly ||A||_inf
        # (computed as torchidl does) so that it keeps A unchanged
        kap = max(kappa, float(torch.linalg.matrix_norm(prob["A"], ord=float("inf"))))
        model = tb.ImplicitModel(input_dim=p, output_dim=q, hidden_dim=n, f=fn, no_D=False,
                                 bias=False, mitr=args.max_iter, grad_mitr=args.max_iter,
                                 tol=CountingTol(args.tol),
                                 grad_tol=CountingTol(args.tol if grad_tol is None else grad_tol),
                                 kappa=kap).to(dt)

        def info() -> dict:
            return {"forward": fn.forward_record, "backward": fn.backward_record}
    with torch.no_grad():
        for name in ("A", "B", "C", "D"):
            getattr(model, name).copy_(prob[name])
    return model, info


def _idl_record(s) -> dict | None:
    if s is None:
        return None
    return {"iterations": int(s.iterations), "residual": float(s.residual),
            "converged": bool(s.converged), "fallbacks": int(getattr(s, "fallbacks", 0)),
            "method": s.method, "tol": float(s.tol)}


# ----------------------------------------------------------------------------- timing


def run_once(model, prob: dict) -> tuple[float, float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    gc.collect()
    t0 = time.perf_counter()
    y = model(prob["u"])
    loss = F.cross_entropy(y, prob["labels"])
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, y.detach()


def time_gemm(n: int, batch: int, dtype: torch.dtype, rounds: int = 7, k: int | None = None
              ) -> float:
    """Median seconds of one ``A @ X``, ``A`` (n, k), ``X`` (k, batch), ``k = n`` by default."""
    k = n if k is None else k
    g = torch.Generator().manual_seed(1)
    A = torch.rand(n, k, generator=g, dtype=dtype)
    X = torch.randn(k, batch, generator=g, dtype=dtype)
    for _ in range(3):
        A @ X
    t0 = time.perf_counter()
    A @ X
    once = max(time.perf_counter() - t0, 1e-7)
    reps = max(3, min(2000, int(0.03 / once)))  # ~30 ms per round
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            A @ X
        samples.append((time.perf_counter() - t0) / reps)
    return statistics.median(samples)


def contention_probe(threads: int, dtype: torch.dtype) -> dict:
    """Time a small GEMM with ``threads`` and with 1 thread.

    On a machine shared with other busy processes, every multi-threaded kernel can
    wait for a descheduled worker thread (milliseconds per op); this shows up as the
    multi-threaded small GEMM being much slower than the single-threaded one.
    """
    if threads == 1:
        return {"threads": 1}
    torch.set_num_threads(1)
    one = time_gemm(100, 256, dtype, rounds=5)
    torch.set_num_threads(threads)
    many = time_gemm(100, 256, dtype, rounds=5)
    return {"threads": threads, "gemm100_1thread_s": one, f"gemm100_{threads}threads_s": many,
            "slowdown": many / one, "contended": many > 2.0 * one}


def bench_method(method: str, prob: dict, n: int, kappa: float, args: argparse.Namespace,
                 tidl, grad_tol: float | None = None) -> dict:
    rec: dict = {"method": method}
    try:
        model, info = build(method, prob, n, kappa, args, tidl, grad_tol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-convergence is read from the records
            fw, bw, y = run_once(model, prob)  # warm-up
            rec["warmup_s"] = fw + bw
            per = (args.repeats and args.cell_budget / args.repeats)
            timed = 0 if fw + bw > args.cell_budget else (
                args.repeats if fw + bw <= per else max(1, int(args.cell_budget // (fw + bw))))
            samples = [(fw, bw)] if timed == 0 else []
            for _ in range(timed):
                fw, bw, y = run_once(model, prob)
                samples.append((fw, bw))
    except Exception as exc:  # report, do not crash the whole run
        rec["error"] = f"{type(exc).__name__}: {exc}"
        return rec
    rec["timed_runs"] = timed
    rec["samples_s"] = [[round(a, 6), round(b, 6)] for a, b in samples]
    rec["fwd_s"] = statistics.median(a for a, _ in samples)
    rec["bwd_s"] = statistics.median(b for _, b in samples)
    rec["total_s"] = statistics.median(a + b for a, b in samples)
    rec.update(info())
    rec["_y"] = y
    rec["_grads"] = {k: getattr(model, k).grad.detach().clone() for k in ("A", "B", "C", "D")}
    return rec


def compare(recs: list[dict]) -> None:
    """Max |y - y_ref| and relative gradient differences against the reference method."""
    ok = [r for r in recs if "_y" in r]
    ref = next((r for r in ok if r["method"] == "torchidl"), None) or \
        next((r for r in ok if r["method"] == REFERENCE), None)
    for r in ok:
        if ref is None:
            continue
        r["compared_to"] = ref["method"]
        r["max_abs_dy"] = float((r["_y"] - ref["_y"]).abs().max())
        r["rel_dgrad"] = {k: float((r["_grads"][k] - ref["_grads"][k]).abs().max()
                                   / ref["_grads"][k].abs().max().clamp(min=1e-300))
                          for k in ("A", "B", "C", "D")}
    for r in ok:
        del r["_y"], r["_grads"]


# ----------------------------------------------------------------------------- report


def fmt_ms(s: float | None) -> str:
    if s is None:
        return "-"
    ms = 1e3 * s
    return f"{ms:.3g}" if ms < 100 else f"{ms:,.0f}"


def fmt_it(solve: dict | None) -> str:
    if not solve:
        return "-"
    it = str(solve["iterations"])
    return it if solve["converged"] else f"{it} (NC)"


def _fb(solve: dict | None) -> str:
    return f", {solve['fallbacks']} fallbacks" if solve and solve.get("fallbacks") else ""


def fmt_res(solve: dict | None) -> str:
    if not solve:
        return "-"
    tol = f" ({solve['tol']:.2g})" if solve.get("tol") is not None else ""
    return f"{solve['residual']:.2g}{tol}"


def markdown(result: dict) -> str:
    cfg, mach, cells = result["config"], result["machine"], result["cells"]
    lines = [
        "# bench_core: idlkit vs torchidl, forward + backward",
        "",
        f"{result['timestamp']}. torch {mach['torch']}, {mach['torch_num_threads']} threads "
        f"({mach['usable_cpus']} usable CPUs, {mach['cpu']}), idlkit {mach['idlkit']} "
        f"({mach['idlkit_git_commit']}, source sha256 {mach['idlkit_source_sha256']}), "
        f"torchidl {mach['torchidl']}. Load average at start/end: "
        f"{_load(mach['loadavg_start'])} / {_load(mach.get('loadavg_end'))}.",
        "",
        f"Problem: `x = relu(A x + B u)`, `y = C x + D u`, batch {cfg['batch']}, p = {cfg['p']}, "
        f"q = {cfg['q']}, {cfg['dtype']}; `A >= 0` with every row summing to kappa; cross "
        f"entropy against random labels. tol {cfg['tol']:g} (forward: absolute; backward: see "
        f"`resid (tol)` and the notes), max_iter {cfg['max_iter']}. Times: median of the timed "
        f"runs after one warm-up "
        f"(`runs` column; `0*` = only the warm-up, which took longer than the "
        f"{cfg['cell_budget']:g} s cell budget).",
        "",
        "| n | kappa | method | fwd ms | bwd ms | fwd+bwd ms | fwd it | bwd it | fwd resid (tol) | "
        "bwd resid (tol) | AA fallbacks | fwd ms/it / GEMM | max abs dy | rel d grad | torchidl / this "
        "| runs |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        recs = {r["method"]: r for r in c["methods"]}
        tidl = recs.get("torchidl", {}).get("total_s")
        for r in c["methods"]:
            head = f"| {c['n']} | {c['kappa']:g} | {r['method']} |"
            if "error" in r:
                lines.append(head + f" error: {r['error'][:120]} |" + " |" * 12)
                continue
            fwd, bwd = r.get("forward"), r.get("backward")
            per = "-"
            if fwd and c.get("gemm_s"):
                v = per_iteration_over_gemm(r, c)
                per = f"{v:.2f}" if r["method"].startswith("idlkit") else f"({v:.2f})"
            ratio = "-"
            if tidl and r["method"] != "torchidl":
                ratio = f"{tidl / r['total_s']:.2f}"
            same = "max_abs_dy" not in r or r["method"] == r.get("compared_to")
            dy = "-" if same else f"{r['max_abs_dy']:.1e}"
            dg = "-" if same else f"{max(r['rel_dgrad'].values()):.1e}"
            runs = str(r["timed_runs"]) if r["timed_runs"] else "0*"
            fb = "/".join(str(s["fallbacks"]) if s and s.get("method") == "anderson" else "-"
                          for s in (fwd, bwd))
            lines.append(f"{head} {fmt_ms(r['fwd_s'])} | {fmt_ms(r['bwd_s'])} | "
                         f"{fmt_ms(r['total_s'])} | {fmt_it(fwd)} | {fmt_it(bwd)} | "
                         f"{fmt_res(fwd)} | {fmt_res(bwd)} | {fb} | {per} | {dy} | {dg} | {ratio} | "
                         f"{runs} |")
    lines += ["", "GEMMs, median time of one product: `A @ X` ((n, n) times (n, batch)), "
              "the per-iteration product, and `B @ U` ((n, p) times (p, batch)), done once "
              "per forward:", "", "| n | A @ X ms | B @ U ms |", "|---:|---:|---:|"]
    seen = set()
    for c in cells:
        if c["n"] not in seen and c.get("gemm_s"):
            seen.add(c["n"])
            lines.append(f"| {c['n']} | {1e3 * c['gemm_s']:.3g} | "
                         f"{1e3 * c.get('gemm_Bu_s', float('nan')):.3g} |")
    summ = result.get("summary", [])
    if summ:
        lines += ["", f"torchidl fwd+bwd time / {REFERENCE} (idlkit default) fwd+bwd time "
                  "(> 1: idlkit faster):", "", "| n | " +
                  " | ".join(f"kappa {k:g}" for k in cfg["kappas"]) + " |",
                  "|---:|" + "---:|" * len(cfg["kappas"])]
        for n in cfg["sizes"]:
            row = [next((s["torchidl_over_default"] for s in summ
                         if s["n"] == n and s["kappa"] == k), None) for k in cfg["kappas"]]
            lines.append(f"| {n} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in row)
                         + " |")
    lines += ["", "Notes:", ""] + [f"- {t}" for t in result["notes"]]
    return "\n".join(lines) + "\n"


def per_iteration_over_gemm(r: dict, c: dict) -> float:
    """(forward time - one ``B u`` product) / forward iterations / one ``A @ X`` product."""
    it = max(r["forward"]["iterations"], 1)
    return max(r["fwd_s"] - c.get("gemm_Bu_s", 0.0), 0.0) / it / c["gemm_s"]


def _load(v) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)


NOTES = [
    "`it`: updates of the iterate (idlkit's convention; a Picard solve evaluates the map "
    "it + 1 times). `(NC)`: stopped at max_iter without reaching tol.",
    "`resid (tol)`: the absolute residual `max_j ||F(x_j) - x_j||_inf` over the batch at the "
    "returned iterate, as each library computes it, and in parentheses the absolute tolerance "
    "the solve stopped on (idlkit: `SolveInfo.tol`). Both libraries stop on this max-abs "
    "residual (idlkit `<= tol`, per sample; torchidl `< tol` over the whole batch: its "
    "`torch.norm(X_new - X, inf)` of a matrix is the max abs entry). The forward tolerance "
    "is --tol for both. idlkit's adjoint tolerance is --tol times `||dL/dx||_inf` (relative "
    "to the incoming gradient; ~1e-3 for a batch-mean loss), torchidl's is absolute: with "
    "`--torchidl-grad-tol match` (default) torchidl is given the absolute value idlkit used "
    "in the same cell, so both backward solves stop at the same accuracy.",
    "idlkit's adjoint (backward) solve is Anderson by default, also for `solver='picard'`; "
    "torchidl's forward and backward solves are both plain Picard. idlkit-picard-bwdpicard "
    "(idlkit picard with `backward_solver='picard'`) is the like-for-like row.",
    "`fwd ms/it / GEMM`: (forward time - one `B @ U` product) / forward iterations / one "
    "`A @ X` product; 1 is the floor "
    "for a solver doing one product per iteration, the rest is per-iteration overhead "
    "(Anderson mixing, residual checks, safeguard re-evaluations). In parentheses for torchidl. "
    "idlkit records each sample's own convergence and, where that saves work (many samples "
    "times n^2 large enough to pay for the copies), drops converged samples from later "
    "iterations, so its cost per iteration can fall below one full-batch GEMM; torchidl "
    "iterates the whole batch until the slowest sample converges.",
    "`AA fallbacks`: forward/backward Anderson steps rejected by idlkit's safeguard and "
    "replaced by a plain step (column-steps, out of iterations x batch).",
    "`max abs dy`: max |y - y_ref| over the batch, ref = torchidl (idlkit-anderson if torchidl "
    "is absent); both solutions are within tol of the fixed point, so differences up to about "
    "`||C||_inf tol / (1 - kappa)` are expected. `rel d grad`: max over A, B, C, D of "
    "`max|grad - grad_ref| / max|grad_ref|`. A Picard iterate with residual tol is up to "
    "`tol / (1 - kappa)` away from the fixed point (1e-4 at kappa = 0.99), enough to flip the "
    "ReLU pattern of a few units, which changes the gradients by more than the outputs.",
    "torchidl is given `kappa = ||A||_inf` so that its `ImplicitFunctionInf` projection "
    "leaves A unchanged; its iteration counts are read by counting its own `err < tol` tests "
    "(see `CountingTol`).",
]


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or usable_cpus()
    torch.set_num_threads(threads)
    tb, tf, note = load_torchidl()
    methods = [m for m in METHODS if m in args.methods]  # idlkit rows first (see --torchidl-grad-tol)
    if tb is None and "torchidl" in methods:
        print(f"NOTE: {note}; running the idlkit rows only.", flush=True)
        methods.remove("torchidl")
    elif tb is not None:
        print(f"torchidl: {note}", flush=True)
    mach = machine_info(args, note)
    print(f"torch {mach['torch']}, {mach['torch_num_threads']} threads, {mach['cpu']}, "
          f"{args.dtype}, tol {args.tol:g}, max_iter {args.max_iter}", flush=True)
    probe = contention_probe(threads, DTYPES[args.dtype])
    mach["contention_probe_start"] = probe
    if probe.get("contended"):
        print(f"WARNING: a {threads}-thread GEMM (n=100) is {probe['slowdown']:.0f}x slower than "
              f"a 1-thread one: other processes are using the CPUs and multi-threaded times "
              f"will be inflated. Rerun on an idle machine (or with --threads 1).", flush=True)
    t_start = time.perf_counter()
    cells = []
    for n in args.sizes:
        gemm = time_gemm(n, args.batch, DTYPES[args.dtype])
        gemm_bu = time_gemm(n, args.batch, DTYPES[args.dtype], k=args.p)
        for kappa in args.kappas:
            prob = make_problem(n, kappa, args)
            recs = []
            matched: float | None = None  # idlkit's absolute adjoint tolerance in this cell
            for method in methods:
                gt = matched if method == "torchidl" and args.torchidl_grad_tol == "match" \
                    else None
                r = bench_method(method, prob, n, kappa, args, (tb, tf), gt)
                if method.startswith("idlkit") and r.get("backward") and matched is None:
                    matched = r["backward"]["tol"]
                recs.append(r)
                fwd, bwd = r.get("forward"), r.get("backward")
                msg = r.get("error") or (
                    f"fwd {fmt_ms(r['fwd_s'])} ms ({fmt_it(fwd)} it, res {fmt_res(fwd)}"
                    f"{_fb(fwd)}), bwd {fmt_ms(r['bwd_s'])} ms ({fmt_it(bwd)} it, res "
                    f"{fmt_res(bwd)}{_fb(bwd)}), runs {r['timed_runs']}")
                print(f"  n={n:<5} kappa={kappa:<5g} {method:<24} {msg}", flush=True)
            compare(recs)
            cells.append({"n": n, "kappa": kappa, "seed": prob["seed"],
                          "inf_norm_A": prob["inf_norm_A"], "gemm_s": gemm, "gemm_Bu_s": gemm_bu,
                          "methods": recs})
    mach["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    mach["contention_probe_end"] = contention_probe(threads, DTYPES[args.dtype])
    summary = []
    for c in cells:
        recs = {r["method"]: r for r in c["methods"] if "total_s" in r}
        if "torchidl" in recs and REFERENCE in recs:
            summary.append({"n": c["n"], "kappa": c["kappa"],
                            "torchidl_over_default": recs["torchidl"]["total_s"]
                            / recs[REFERENCE]["total_s"]})
    notes = list(NOTES)
    if tb is None:
        notes.insert(0, f"torchidl rows missing: {note}.")
    elif not note.startswith("import torchidl"):
        notes.append(f"torchidl import: {note}.")
    if threads != usable_cpus():
        notes.append(f"Run with --threads {threads} ({usable_cpus()} usable CPUs).")
    contended = [mach[k].get("slowdown") for k in ("contention_probe_start",
                                                      "contention_probe_end")
                 if mach[k].get("contended")]
    if contended:
        notes.append(f"CONTENDED RUN: a {threads}-thread n=100 GEMM was "
                     f"{max(contended):.0f}x slower than a 1-thread one at the start or end of "
                     f"the run (other processes on the CPUs): absolute times are inflated.")
    elif mach["loadavg_start"] and max(mach["loadavg_start"][0],
                                       (mach["loadavg_end"] or [0])[0]) > threads + 0.5:
        notes.append("The load average exceeded the thread count during the run (other "
                     "processes): absolute times are noisy; ratios within a cell are more "
                     "reliable.")
    result = {
        "benchmark": "bench_core",
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "config": {"sizes": args.sizes, "kappas": args.kappas, "repeats": args.repeats,
                   "batch": args.batch, "p": args.p, "q": args.q, "tol": args.tol,
                   "max_iter": args.max_iter, "dtype": args.dtype, "methods": methods,
                   "cell_budget": args.cell_budget, "seed": args.seed, "quick": args.quick,
                   "activation": "relu", "loss": "cross_entropy(random labels)",
                   "A": "rand(n, n), rows rescaled to sum to kappa",
                   "B": "randn(n, p) / sqrt(p)", "C": "randn(q, n) / sqrt(n)",
                   "D": "randn(q, p) / sqrt(p)", "u": "randn(batch, p)"},
        "machine": mach,
        "cells": cells,
        "summary": summary,
        "notes": notes,
    }
    md = markdown(result)
    stem = "bench_core_quick" if args.quick else "bench_core"
    atomic_write(args.out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    atomic_write(args.out / f"{stem}.md", md)
    print()
    print(md)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')} "
          f"({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
