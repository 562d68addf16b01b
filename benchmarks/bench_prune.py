#!/usr/bin/env python
"""Forward time of pruned models: staged (explicit levels + implicit core) vs one ImplicitModel.

Paper 000 §5.2 cases (c)/(d): states with zero rows (columns) of ``A`` need no iteration.
``prune_states(model)`` (``split=True``) returns a :class:`~idlkit.compress.StagedImplicitModel`
that computes them explicitly around a smaller fixed point; ``split=False`` keeps them inside
one :class:`~idlkit.ImplicitModel`. Two models:

* ``mlp``: a converted ReLU MLP 784-100-50-10 with random weights in which 20 % of the hidden
  units are dead (zero incoming weights, negative bias: constant 0) and 10 % unread (zero
  outgoing weights); ``from_torch`` gives a strictly upper-triangular ``A`` (default solver
  ``triangular``). The staged model is fully explicit (no core).
* ``tail``: a random implicit model, ReLU, ``||A||_inf = 0.9``, with a dense core of
  ``n_core`` states (a cycle), a feed-forward "head" of ``n_tail`` states in 4 levels that the
  core reads, and a "tail" of ``n_tail`` states in 4 levels that read the core (a triangular
  tail); solver ``anderson``, tol 1e-6.

Rows: the original model (its solver), the unsplit pruned model (its solver; for ``mlp`` also
``anderson``, which iterates on all states), the staged pruned model. Median of ``--repeat``
timed forwards under ``torch.no_grad`` (after one warm-up), float32, batch ``--batch``; the
largest output difference to the original is reported.

Run from the repository root::

    .venv/bin/python benchmarks/bench_prune.py            # default (~1 min)
    .venv/bin/python benchmarks/bench_prune.py --quick    # smoke run (seconds)

Writes ``bench_prune.json`` / ``bench_prune.md`` (``bench_prune_quick.*`` with ``--quick``)
to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _common import atomic_write, config_of, cpu_model, git_commit

import idlkit as idl
from idlkit.compress import prune_states

HERE = Path(__file__).resolve().parent


def _mlp(widths: list[int], seed: int) -> tuple[idl.ImplicitModel, int]:
    """Converted ReLU MLP with dead (constant 0) and unread hidden units."""
    g = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for i, m in enumerate(lin[:-1]):
            w = widths[i + 1]
            dead = torch.randperm(w, generator=g)[: w // 5]
            m.weight[dead] = 0
            m.bias[dead] = -1.0
            unread = torch.randperm(w, generator=g)[: w // 10]
            lin[i + 1].weight[:, unread] = 0
    return idl.convert.from_torch(net, torch.zeros(1, widths[0])), sum(widths[1:-1])


def _tail(n_core: int, n_tail: int, p: int, q: int, seed: int) -> idl.ImplicitModel:
    """Dense core (a cycle), a 4-level head the core reads, a 4-level tail reading the core."""
    rng = np.random.default_rng(seed)
    n = n_core + 2 * n_tail
    A = np.zeros((n, n))
    head = np.arange(n_tail)
    core = np.arange(n_tail, n_tail + n_core)
    tail = np.arange(n_tail + n_core, n)
    A[np.ix_(core, core)] = rng.normal(size=(n_core, n_core))
    A[np.ix_(core, head)] = rng.normal(size=(n_core, n_tail)) * (rng.random((n_core, n_tail)) < 0.3)
    for part, src in ((head, np.array([], dtype=int)), (tail, core)):
        levels = np.array_split(part, 4)
        for k, lv in enumerate(levels):
            reads = np.concatenate([src, *levels[:k]]) if k or src.size else src
            if reads.size:
                shape = (lv.size, reads.size)
                A[np.ix_(lv, reads)] = rng.normal(size=shape) * (rng.random(shape) < 0.3)
    A *= 0.9 / np.abs(A).sum(axis=1).max()
    B = rng.normal(size=(n, p)) / np.sqrt(p)
    C = rng.normal(size=(q, n)) / np.sqrt(n)
    T = [torch.tensor(M, dtype=torch.float32) for M in (A, B, C, np.zeros((q, p)))]
    return idl.ImplicitModel.from_matrices(*T, torch.tensor(rng.normal(size=n) * 0.1, dtype=torch.float32),
                                           None, activation="relu", wellposedness="inf", kappa=0.95,
                                           solver="anderson", tol=1e-6)


def _time(model: torch.nn.Module, U: torch.Tensor, repeat: int) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        y = model(U)
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            model(U)
            ts.append(time.perf_counter() - t)
    return statistics.median(ts), y


def _rows(name: str, model: idl.ImplicitModel, U: torch.Tensor, repeat: int,
          anderson_unsplit: bool) -> list[dict]:
    t0, y0 = _time(model, U, repeat)
    plain, rep = prune_states(model, split=False)
    staged, _ = prune_states(model)
    cands = [("original", model), ("pruned, one ImplicitModel", plain)]
    if anderson_unsplit:
        alt, _ = prune_states(model, split=False)
        alt.set_solver(solver="anderson", tol=1e-6)
        cands.append(("pruned, one ImplicitModel (anderson)", alt))
    cands.append(("pruned, staged", staged))
    rows = []
    for label, m in cands:
        t, y = (t0, y0) if m is model else _time(m, U, repeat)
        n_iter = m.n_core if hasattr(m, "n_core") else m.hidden
        solver = (m.core if hasattr(m, "core") else m).settings.method
        rows.append({"model": name, "variant": label, "solver": solver,
                     "states": m.hidden, "iterated_states": n_iter,
                     "split": (f"{rep.n_pre} pre ({len(staged.pre)} levels) / {rep.n_core} core / "
                               f"{rep.n_post} post ({len(staged.post)} levels)") if m is staged else "",
                     "ms": 1e3 * t, "speedup": t0 / t, "max_abs_diff": float((y - y0).abs().max())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.repeat = 32, 3
    widths = [784, 100, 50, 10] if not args.quick else [64, 20, 10, 4]
    n_core, n_tail = (200, 400) if not args.quick else (20, 20)
    g = torch.Generator().manual_seed(args.seed)
    mlp, _ = _mlp(widths, args.seed)
    rows = _rows("mlp " + "-".join(map(str, widths)), mlp,
                 torch.randn(args.batch, widths[0], generator=g), args.repeat, True)
    tail = _tail(n_core, n_tail, 50, 10, args.seed)
    rows += _rows(f"tail (core {n_core}, head/tail {n_tail} each)", tail,
                  torch.randn(args.batch, 50, generator=g), args.repeat, False)
    stem = "bench_prune_quick" if args.quick else "bench_prune"
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
            "python": platform.python_version(), "torch": torch.__version__, "commit": git_commit(),
            "config": config_of(args)}
    atomic_write(args.out / f"{stem}.json", json.dumps({**meta, "rows": rows}, indent=2))
    lines = [f"# bench_prune{' (quick)' if args.quick else ''}", "",
             f"Forward time (median of {args.repeat}, torch.no_grad, float32, batch {args.batch}, "
             f"{args.threads} thread(s)) on {meta['cpu']}; torch {torch.__version__}; "
             f"commit {meta['commit']}.",
             "Speed-up is against the original model; max abs diff is the largest output difference "
             "to it.", "",
             "| model | variant | solver | states | iterated | split | ms | speed-up | max abs diff |",
             "|---|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['solver']} | {r['states']} | "
                     f"{r['iterated_states']} | {r['split']} | {r['ms']:.3f} | {r['speedup']:.2f} | "
                     f"{r['max_abs_diff']:.1e} |")
    md = "\n".join(lines) + "\n"
    atomic_write(args.out / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    main()
