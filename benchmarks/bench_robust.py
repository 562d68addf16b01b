#!/usr/bin/env python
"""Speed benchmark of idlkit.robust: sensitivity matrix, LP attack, SDP (paper 000 §4.3-4.6).

Parts (``--parts``, default all):

* ``sensitivity`` -- the sensitivity matrix (Thm 4.3).
* ``lp`` -- ``idl.robust.lp_attack`` (Thm 4.5, HiGHS) per sample on MNIST test images for a small
  trained ReLU feed-forward network 784-64-32-10 converted to an implicit model
  (``idlkit.convert.from_torch``, n = 96, triangular ``A``), objective ``||x - x0||_2^2``, on the
  box set (eq. 4.1) and the cardinality set (eq. 4.2, hull LP), inputs clipped to [0, 1]; with
  and without ``tighten`` (2 n per-unit LPs first). The network is trained once (2 epochs of
  Adam, about half a minute on one thread) and cached in ``~/.cache/idlkit/bench/``.
* ``sdp`` -- ``idl.robust.sdp_attack`` (eq. 4.19, cvxpy/Clarabel) for random ReLU models with
  n in {20, 50}, p = 10 (the SDP variable is (n + p + 1)^2), next to the LP bound on the same
  instance.

Sensitivity part: times ``idl.robust.sensitivity_matrix(model)`` -- float64, one certified linear solve with
``min(p, q)`` right-hand sides (float32 LU with float64 refinement for n >= 2000, plus the
Collatz-Wielandt hypothesis certificate) -- for a dense random ReLU model with
``lambda_pf(|A|) = 0.95``, ``p = 784``, ``q = 10`` and ``n`` in {100, 1000, 5000}
(target: n = 5000 under 2 s), and for a sparse strictly upper-triangular ``A`` (a converted
network's structure: one sparse triangular solve).

Run from the repository root::

    .venv/bin/python benchmarks/bench_robust.py                  # all parts
    .venv/bin/python benchmarks/bench_robust.py --parts sensitivity --quick
    .venv/bin/python benchmarks/bench_robust.py --parts lp sdp --samples 5

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


CACHE = Path.home() / ".cache" / "idlkit" / "bench"
MNIST_WIDTHS = (784, 64, 32, 10)


def mnist_ffn(epochs: int = 2, seed: int = 0) -> tuple[torch.nn.Module, float, dict]:
    """A small MNIST ReLU feed-forward network (``MNIST_WIDTHS``), trained once and cached.

    Returns ``(net (float64, eval), test accuracy, info)``. Plain torch: Adam (lr 1e-3), batch
    128, ``epochs`` epochs on the 60k training images (pixels in [0, 1]).
    """
    from idlkit.datasets import load

    ds = load("mnist", as_torch=True)
    layers: list[torch.nn.Module] = []
    for a, b in zip(MNIST_WIDTHS[:-1], MNIST_WIDTHS[1:], strict=True):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    path = CACHE / f"mnist_ffn_{'-'.join(map(str, MNIST_WIDTHS))}_e{epochs}_s{seed}.pt"
    info = {"weights": f"~/.cache/idlkit/bench/{path.name}", "epochs": epochs,
            "cached": path.exists()}
    if path.exists():
        net.load_state_dict(torch.load(path))
    else:
        torch.manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        X, Y = ds.x_train.float(), ds.y_train
        t0 = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(X.shape[0])
            for i in range(0, X.shape[0], 128):
                idx = perm[i:i + 128]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(X[idx]), Y[idx]).backward()
                opt.step()
        info["train_seconds"] = time.perf_counter() - t0
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    net = net.double().eval()
    with torch.no_grad():
        acc = float((net(ds.x_test.double()).argmax(1) == ds.y_test).double().mean())
    info["test_accuracy"] = acc
    return net, acc, {**info, "x_test": ds.x_test.double(), "y_test": ds.y_test}


def part_lp(args: argparse.Namespace) -> list[dict]:
    from idlkit.convert import from_torch

    net, acc, info = mnist_ffn()
    X = info.pop("x_test")
    model = from_torch(net, X[:1], sparse=False)
    print(f"lp: MNIST {'-'.join(map(str, MNIST_WIDTHS))} test accuracy {acc:.4f}, n = {model.hidden}",
          flush=True)
    rows = []
    cases = [("box", None, args.lp_sigma, False), ("card", args.lp_k, args.lp_card_sigma, False),
             ("box", None, args.lp_sigma, True), ("card", args.lp_k, args.lp_card_sigma, True)]
    for set_name, k, sigma, tighten in cases:
        times, bounds, values, n_lps = [], [], [], []
        m = 2 if args.quick else (args.tighten_samples if tighten else args.samples)
        for i in range(m):
            t = time.perf_counter()
            r = R.lp_attack(model, X[i], sigma, k, clip=(0.0, 1.0), tighten=tighten)
            times.append(time.perf_counter() - t)
            bounds.append(r.bound)
            values.append(r.value)
            n_lps.append(r.extra["n_lp"])
        rows.append({"part": "lp", "model": f"mnist-ffn-{'-'.join(map(str, MNIST_WIDTHS))}",
                     "test_accuracy": acc, "n": model.hidden, "p": model.in_features, "set": set_name,
                     "k": k, "sigma": sigma, "tighten": tighten, "samples": m,
                     "seconds_per_sample": statistics.median(times), "max_seconds": max(times),
                     "mean_bound": statistics.fmean(bounds), "mean_value": statistics.fmean(values),
                     "mean_n_lp": statistics.fmean(n_lps), "weights": info["weights"]})
        print(f"lp {set_name:4s} k={k} sigma={sigma} tighten={tighten}: "
              f"{statistics.median(times):.3f} s/sample (median of {m}), bound {statistics.fmean(bounds):.4g}"
              f", attack {statistics.fmean(values):.4g}", flush=True)
    return rows


def part_sdp(args: argparse.Namespace) -> list[dict]:
    rows = []
    for n in ([20] if args.quick else [20, 50]):
        torch.manual_seed(0)
        model = idl.ImplicitModel(10, n, 10, dtype=torch.float64, kappa=0.9, tol=1e-10, solver="picard",
                                  max_iter=10_000)
        u0 = torch.rand(10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        t = time.perf_counter()
        r = R.sdp_attack(model, u0, 0.1)
        sec = time.perf_counter() - t
        t = time.perf_counter()
        lp = R.lp_attack(model, u0, 0.1)
        lp_sec = time.perf_counter() - t
        rows.append({"part": "sdp", "n": n, "p": 10, "sigma": 0.1, "seconds": sec, "bound": r.bound,
                     "value_u": r.extra["value_u"], "value_rank1": r.extra["value_rank1"],
                     "rank1_ratio": r.extra["rank1_ratio"], "solver": r.extra["solver"],
                     "lp_seconds": lp_sec, "lp_bound": lp.bound, "lp_value": lp.value})
        print(f"sdp n={n}: {sec:.2f} s ({r.extra['solver']}), bound {r.bound:.4g} (LP {lp.bound:.4g}, "
              f"{lp_sec:.3f} s), attack {max(r.extra['value_u'], r.extra['value_rank1']):.4g}", flush=True)
    return rows


PARTS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {
    "sensitivity": part_sensitivity, "lp": part_lp, "sdp": part_sdp}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--p", type=int, default=784)
    ap.add_argument("--q", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=5, help="MNIST test images for the lp part")
    ap.add_argument("--tighten-samples", type=int, default=2,
                    help="images for the lp rows with tighten=True (2 n extra LPs each)")
    ap.add_argument("--lp-sigma", type=float, default=0.05, help="box radius of the lp part")
    ap.add_argument("--lp-card-sigma", type=float, default=0.3, help="radius for the cardinality set")
    ap.add_argument("--lp-k", type=int, default=20, help="k of the cardinality set (eq. 4.2)")
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
    lp = [r for r in rows if r["part"] == "lp"]
    if lp:
        r0 = lp[0]
        out += [f"## LP attack (Thm 4.5, HiGHS) per sample, MNIST {r0['model']} (test accuracy "
                f"{r0['test_accuracy']:.4f}, n = {r0['n']}, p = {r0['p']}), objective ||x - x0||^2, "
                f"clip [0, 1]", "",
                "| set | k | sigma | tighten | samples | s/sample (median) | max s | LPs | mean bound | "
                "mean attack value |", "|---|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['set']} | {r['k'] if r['k'] is not None else '-'} | {r['sigma']} | {r['tighten']} | "
                f"{r['samples']} | {r['seconds_per_sample']:.3f} | {r['max_seconds']:.3f} | "
                f"{r['mean_n_lp']:.0f} | {r['mean_bound']:.4g} | {r['mean_value']:.4g} |" for r in lp]
        out.append("")
    sdp = [r for r in rows if r["part"] == "sdp"]
    if sdp:
        out += ["## SDP relaxation (eq. 4.19, cvxpy) vs LP, random ReLU model, p = 10, sigma = 0.1", "",
                "| n | SDP seconds | solver | SDP bound | SDP attack (u / rank-1) | LP seconds | LP bound | "
                "LP attack |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['n']} | {r['seconds']:.2f} | {r['solver']} | {r['bound']:.4g} | "
                f"{r['value_u']:.4g} / {r['value_rank1']:.4g} | {r['lp_seconds']:.3f} | "
                f"{r['lp_bound']:.4g} | "
                f"{r['lp_value']:.4g} |" for r in sdp]
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
