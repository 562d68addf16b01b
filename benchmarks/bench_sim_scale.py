#!/usr/bin/env python
"""SIM at scale: fit time vs the number of samples, and serial vs loky vs Ray (paper 002 Fig. 5).

Teacher: the bias-free ``784-64-32-16-10`` ReLU network on Fashion-MNIST cached by
``experiments/sim_fashion_anchor.py`` (86.4 % test accuracy). The fit is the default ``SIM()``
(l1, scale-aware beta in the teacher's units, layered A, relaxed-lasso refit; ``loky`` with 2 jobs).

1. **Samples.** For ``m`` in ``--sizes`` (default 1k, 5k, 20k, 60k training images): the state
   extraction, the Gram matrix ``G = F^T F`` (``F`` is ``m x 906``: the only step that reads all
   samples), the row solves (on ``G``: ``(n + q) x d x d`` work per iteration, independent of ``m``)
   and the assembly are timed separately (``SIMReport.seconds`` is the whole ``fit_states``); test
   accuracy on the 10,000 test images, sparsity and nnz(A) alongside.
2. **Backends** (paper 002 Fig. 5: multiprocessing and Ray speed-ups): the same fit on
   ``--backend-samples`` images with ``serial``, ``loky`` (2 processes, the Gram matrix
   memory-mapped once), ``ray`` (a local cluster of 2 CPUs, arrays put once in the object store;
   skipped without Ray) and ``dask`` (a local cluster; skipped without dask.distributed), best of
   ``--rounds``; speed-up = serial / backend. The machine has 2 cores, so 2x is the ceiling.

    .venv/bin/python benchmarks/bench_sim_scale.py            # ~5 min on 2 shared cores
    .venv/bin/python benchmarks/bench_sim_scale.py --quick    # smoke: one small size, serial + loky

Writes ``bench_sim_scale.json`` / ``.md`` (``_quick`` with ``--quick``) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _common import atomic_write, config_of, cpu_model, git_commit, idlkit_data_dir, loadavg_1min
from threadpoolctl import threadpool_limits

from idlkit.datasets import load
from idlkit.sim import SIM, extract_states

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEACHER = ROOT / "experiments" / "results" / "cache" / "fashion_teacher_784_64_32_16_10.pt"


def teacher() -> torch.nn.Sequential:
    if not TEACHER.exists():
        sys.exit(f"no cached teacher at {TEACHER.relative_to(ROOT)}: run "
                 f"experiments/sim_fashion_anchor.py --skip-torchidl first")
    blob = torch.load(TEACHER, map_location="cpu", weights_only=True)
    sizes = (784, 64, 32, 16, 10)
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [torch.nn.Linear(a, b, bias=False), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    net.load_state_dict(blob["state_dict"])
    return net.double().eval()


def accuracy(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == y).double().mean())


def by_samples(net: torch.nn.Module, ds: object, sizes: list[int], n_test: int, tol: float) -> list[dict]:
    Xt, yt = ds.x_test[:n_test].double(), ds.y_test[:n_test]
    rows = []
    for m in sizes:
        U = ds.x_train[:m].double()
        t = time.perf_counter()
        st = extract_states(net, U, dtype=torch.float64)
        t_states = time.perf_counter() - t
        F = np.hstack([st.X.numpy(), st.U.numpy()])
        t = time.perf_counter()
        F.T @ F
        t_gram = time.perf_counter() - t  # measured apart: fit_states forms it again
        del F
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, rep = SIM(backend="loky", n_jobs=2, tol=tol).fit_states(st, bias=False)
        A = model.A.to_dense() if model.A.layout != torch.strided else model.A
        row = {"samples": m, "states_s": t_states, "gram_s": t_gram, "fit_s": rep.seconds,
               "solve_s_rows": float(rep.solve_seconds.sum()), "accuracy": accuracy(model, Xt, yt),
               "sparsity": rep.sparsity, "nnz": rep.nnz, "nnz_A": int((A != 0).sum()),
               "a_inf": rep.a_inf_norm, "state_residual": rep.state_residual}
        rows.append(row)
        print(f"m = {m:6d}: states {t_states:.2f} s, Gram {t_gram:.2f} s, fit {rep.seconds:.2f} s, "
              f"acc {row['accuracy']:.4f}, sparsity {rep.sparsity:.1f} %, nnz(A) {row['nnz_A']}", flush=True)
    return rows


def by_backend(net: torch.nn.Module, ds: object, m: int, rounds: int, backends: list[str],
               tol: float) -> list[dict]:
    st = extract_states(net, ds.x_train[:m].double(), dtype=torch.float64)
    rows = []
    for be in backends:
        times, note = [], ""
        ctx = None
        try:
            if be == "ray":
                import ray

                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR")
                ctx = ray
            for _ in range(rounds):
                with threadpool_limits(1), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _, rep = SIM(backend=be, n_jobs=None if be == "serial" else 2, tol=tol).fit_states(
                        st, bias=False)
                times.append(rep.seconds)
        except ImportError as exc:
            note = f"skipped: {exc.name or exc} not installed"
        finally:
            if ctx is not None:
                ctx.shutdown()
        row = {"backend": be, "best_s": min(times) if times else None,
               "median_s": float(np.median(times)) if times else None, "note": note}
        rows.append(row)
        print(f"{be:9s}: {row['best_s'] if times else note}", flush=True)
    serial = next(r["best_s"] for r in rows if r["backend"] == "serial")
    for r in rows:
        r["speedup"] = serial / r["best_s"] if r["best_s"] else None
    return rows


def markdown(res: dict) -> str:
    c = res["config"]
    lines = [f"# bench_sim_scale ({res['date']})", "",
             f"CPU: {res['cpu']} (2 usable cores, shared), torch {res['torch']}, commit {res['commit']}. "
             f"Default `SIM()` (l1, scale-aware beta in teacher units, layered A, refit; "
             f"tol {c.get('tol', 1e-4):g}), "
             f"Fashion-MNIST teacher 784-64-32-16-10 (86.4 %), test accuracy on {c['test']} test images.", "",
             "## Fit time vs samples", "",
             "`fit` = `SIMReport.seconds` (the whole `fit_states`: F, G = F^T F, the row solves on G, "
             "the refit on G, assembly, residuals on F); `Gram` = `F^T F` alone; `states` = the teacher's "
             "forward and the rescaling.", "",
             "| samples | states (s) | Gram (s) | fit (s) | test acc. (%) | sparsity (%) | nnz | nnz(A) | "
             "\\|\\|A\\|\\|_inf | state residual |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["samples"]:
        lines.append(f"| {r['samples']:,} | {r['states_s']:.2f} | {r['gram_s']:.2f} | {r['fit_s']:.2f} | "
                     f"{100 * r['accuracy']:.1f} | {r['sparsity']:.1f} | {r['nnz']:,} | {r['nnz_A']:,} | "
                     f"{r['a_inf']:.3g} | {r['state_residual']:.3g} |")
    lines += ["", f"## Backends (paper 002 Fig. 5), {c['backend_samples']} samples, best of {c['rounds']}",
              "",
              "| backend | best (s) | median (s) | speed-up vs serial | note |", "|---|---|---|---|---|"]
    for r in res["backends"]:
        best = f"{r['best_s']:.2f}" if r["best_s"] else "-"
        med = f"{r['median_s']:.2f}" if r["median_s"] else "-"
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        lines.append(f"| {r['backend']} | {best} | {med} | {sp} | {r['note']} |")
    lines += ["", f"Load average (1 min) at start {res['load_start']}, at end {res['load_end']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000, 60000])
    ap.add_argument("--backend-samples", type=int, default=2000)
    ap.add_argument("--backends", nargs="+", default=["serial", "loky", "ray", "dask"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--tol", type=float, default=SIM().tol, help="SIM's certificate tolerance")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if args.quick:  # a smoke run of every step: small sizes, a loose tolerance (0.1: 58k FISTA
        # iterations over the rows instead of 136k at 1e-2, ~30 % of each of the 3 fits)
        args.sizes, args.backend_samples, args.backends, args.rounds, args.test, args.tol = [200], 200, \
            ["serial", "loky"], 1, 200, 1e-1
    idlkit_data_dir()
    torch.set_num_threads(1)
    load_start = loadavg_1min()
    net, ds = teacher(), load("fashion_mnist", as_torch=True)
    res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
           "torch": torch.__version__, "commit": git_commit(), "config": config_of(args),
           "load_start": load_start}
    res["samples"] = by_samples(net, ds, args.sizes, args.test, args.tol)
    res["backends"] = by_backend(net, ds, args.backend_samples, args.rounds, args.backends, args.tol)
    res["load_end"] = loadavg_1min()
    name = "bench_sim_scale" + ("_quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / f"{name}.json", json.dumps(res, indent=2) + "\n")
    atomic_write(args.out / f"{name}.md", markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
