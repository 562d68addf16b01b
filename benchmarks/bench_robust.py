#!/usr/bin/env python
"""Speed benchmark of idlkit.robust: the sensitivity matrix (paper 000 Thm 4.3).

Times ``idl.robust.sensitivity_matrix(model)`` -- float64, one certified linear solve with
``min(p, q)`` right-hand sides (float32 LU with float64 refinement for n >= 2000, plus the
Collatz-Wielandt hypothesis certificate) -- for a dense random ReLU model with
``lambda_pf(|A|) = 0.95``, ``p = 784``, ``q = 10`` and ``n`` in {100, 1000, 5000}
(target: n = 5000 under 2 s), and for a sparse strictly upper-triangular ``A`` (a converted
network's structure: one sparse triangular solve).

Run from the repository root::

    .venv/bin/python benchmarks/bench_robust.py                  # all parts
    .venv/bin/python benchmarks/bench_robust.py --parts sensitivity --quick

Writes ``bench_robust.json`` and ``bench_robust.md`` (``bench_robust_quick.*`` with ``--quick``)
to ``--out`` (default ``benchmarks/results``). Sections are registered in ``PARTS``: a new part
is a function ``(args) -> list[dict]`` of rows with a ``part`` key.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _common import atomic_write, cpu_model, git_commit

import idlkit as idl
import idlkit.robust as R

HERE = Path(__file__).resolve().parent


def _dense_model(n: int, p: int, q: int, seed: int = 0) -> idl.ImplicitModel:
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(n, n, generator=g, dtype=torch.float64) / n
    A *= 0.95 / idl.wellposed.pf_eigenvalue(A) if n <= 1024 else 0.95 / float(A.sum(1).max())
    A *= torch.sign(torch.randn(n, n, generator=g, dtype=torch.float64))
    B = torch.randn(n, p, generator=g, dtype=torch.float64) / p ** 0.5
    C = torch.randn(q, n, generator=g, dtype=torch.float64) / n ** 0.5
    D = torch.randn(q, p, generator=g, dtype=torch.float64) / p ** 0.5
    return idl.ImplicitModel.from_matrices(A, B, C, D, wellposedness=None)


def _sparse_tri_model(n: int, p: int, q: int, density: float = 0.01, seed: int = 0) -> idl.ImplicitModel:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64) * (torch.rand(n, n, generator=g) < density)
    A = torch.triu(A, 1) / (density * n) ** 0.5
    B = torch.randn(n, p, generator=g, dtype=torch.float64) * (torch.rand(n, p, generator=g) < 0.05)
    C = torch.randn(q, n, generator=g, dtype=torch.float64) / n ** 0.5
    D = torch.zeros(q, p, dtype=torch.float64)
    return idl.ImplicitModel.from_matrices(A.to_sparse_csr(), B.to_sparse_csr(), C, D,
                                           wellposedness="triangular", solver="triangular")


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), times


def part_sensitivity(args: argparse.Namespace) -> list[dict]:
    rows = []
    sizes = args.sizes or ([50, 200] if args.quick else [100, 1000, 5000])
    for kind in ("dense", "sparse-triangular"):
        for n in sizes:
            model = (_dense_model if kind == "dense" else _sparse_tri_model)(n, args.p, args.q)
            res = R.sensitivity(model)  # warm-up, and the certificate reported
            best, times = _time(lambda m=model: R.sensitivity_matrix(m), args.repeats)
            rows.append({"part": "sensitivity", "kind": kind, "n": n, "p": args.p, "q": args.q,
                         "seconds": best, "median_seconds": statistics.median(times),
                         "method": res.certificate.method, "pf_upper": res.certificate.pf_upper,
                         "correction": res.certificate.correction,
                         "S_inf_norm": float(res.S.sum(1).max())})
            print(f"sensitivity {kind:18s} n={n:5d}: {best:.3f} s ({res.certificate.method}, "
                  f"lambda_pf <= {res.certificate.pf_upper:.4f})", flush=True)
    return rows


PARTS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {"sensitivity": part_sensitivity}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--p", type=int, default=784)
    ap.add_argument("--q", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    return ap.parse_args(argv)


def markdown(meta: dict, rows: list[dict]) -> str:
    out = [f"# bench_robust{' (quick)' if meta['quick'] else ''}", "",
           f"{meta['cpu']}, {meta['threads']} thread(s), torch {meta['torch']}, commit {meta['commit']}, "
           f"{meta['date']}", ""]
    sens = [r for r in rows if r["part"] == "sensitivity"]
    if sens:
        out += ["## Sensitivity matrix (Thm 4.3), float64, certified", "",
                "| A | n | p | q | seconds (best) | median | method | lambda_pf <= |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['kind']} | {r['n']} | {r['p']} | {r['q']} | {r['seconds']:.3f} | "
                f"{r['median_seconds']:.3f} | {r['method']} | {r['pf_upper']:.4f} |" for r in sens]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    meta = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "commit": git_commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
            "parts": args.parts}
    rows: list[dict] = []
    for part in args.parts:
        rows += PARTS[part](args)
    stem = "bench_robust_quick" if args.quick else "bench_robust"
    atomic_write(args.out / f"{stem}.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = markdown(meta, rows)
    atomic_write(args.out / f"{stem}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
