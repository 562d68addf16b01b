#!/usr/bin/env python
"""ImplicitRNN training benchmark on the spiky time series (thesis §5.2, Table 5.3).

Time per training epoch of idlkit's ``ImplicitRNN`` (warm-started and cold-started
equilibria) against an LSTM of matched parameter count and torchidl's ``ImplicitRNN``
(same n and recurrent size), on the same one-step forecasting windows
(``idlkit.datasets.spiky_series(seed=0).windows(lookback)``, min-max scaled), the same
batch order, Adam (lr 1e-3), MSE. The models are timed in interleaved rounds (one epoch
of each model per round), so that a change in the machine's load hits all of them; the
table gives the median epoch time and its ratio to the LSTM's. The implicit models use
the same nominal fixed-point tolerance (``--tol``, both forward and backward), but not the
same stopping rule for the adjoint: idlkit stops at ``tol * ||dL/dx||_inf`` (relative),
torchidl at an absolute ``tol``, which for this loss's gradients (about 1e-5) stops its
Picard adjoint after 1-2 iterations (counted by instrumenting torchidl, 2,048 windows,
epochs 1-2) against about 8 for idlkit. The ``backward_tol 0.1`` row is idlkit at a
comparably loose adjoint.

Run from the repository root::

    .venv/bin/python benchmarks/bench_rnn.py              # 3 rounds, float32
    .venv/bin/python benchmarks/bench_rnn.py --quick      # smoke run

Writes ``bench_rnn.json`` and ``bench_rnn.md`` to ``--out`` (atomically) and prints the
markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from _common import atomic_write, cpu_model, git_commit, load_torchidl
from torch import Tensor, nn

import idlkit as idl
from idlkit import baselines as bl

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=16, help="implicit state size n")
    ap.add_argument("--recurrent", type=int, default=8, help="recurrent size r")
    ap.add_argument("--lookback", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--limit", type=int, default=None, help="use the first N windows")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-torchidl", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.limit = 1, 256
    return args


class _TorchIDL(nn.Module):
    def __init__(self, n: int, r: int, tol: float) -> None:
        super().__init__()
        self.net = _torchidl_rnn_class()(input_dim=1, output_dim=1, implicit_hidden_dim=n, hidden_dim=r,
                               tol=tol, grad_tol=tol)

    def forward(self, s: Tensor) -> Tensor:
        return self.net(s)


def _torchidl_rnn_class() -> type:
    """torchidl's ImplicitRNN, also when its package __init__ fails on a missing SIM
    dependency (see ``_common.load_torchidl``)."""
    tb, _, note = load_torchidl()
    if tb is None:
        raise ImportError(note)
    return importlib.import_module(tb.__package__ + ".implicit_rnn_model").ImplicitRNN


def models(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, Callable[[], nn.Module]]:
    n, r, tol = args.hidden, args.recurrent, args.tol

    def rnn(warm: bool, backward_tol: float | None = None) -> Callable[[], nn.Module]:
        return lambda: idl.ImplicitRNN(1, n, 1, recurrent_size=r, tol=tol, warm_start=warm,
                                       max_iter=2000, dtype=dtype, backward_tol=backward_tol)

    target = bl.count_parameters(rnn(True)())
    w = bl.matched_width(lambda w: bl.LSTMModel(1, w, 1), target, high=512)
    out = {"idlkit ImplicitRNN (warm start)": rnn(True),
           "idlkit ImplicitRNN (cold start)": rnn(False),
           "idlkit ImplicitRNN (warm, backward_tol 0.1)": rnn(True, 0.1),
           f"LSTM (hidden {w})": lambda: bl.LSTMModel(1, w, 1).to(dtype)}
    if not args.skip_torchidl:
        try:
            _torchidl_rnn_class()
            out["torchidl ImplicitRNN"] = lambda: _TorchIDL(n, r, tol).to(dtype)
        except ImportError as exc:
            print(f"torchidl row skipped: {exc}", file=sys.stderr)
    return out


def epoch(model: nn.Module, opt: torch.optim.Optimizer, X: Tensor, Y: Tensor, batch: int,
          perm: Tensor) -> tuple[float, float, float | None]:
    """One epoch: ``(seconds, mean train MSE, forward + backward solver iterations per time
    step)`` (the last from idlkit's SolveInfo; ``None`` for the other models)."""
    project = getattr(model, "project_", None)
    t0 = time.perf_counter()
    total, its, solves = 0.0, 0, 0
    for i in range(0, X.shape[0], batch):
        idx = perm[i:i + batch]
        loss = ((model(X[idx]).reshape(-1) - Y[idx].reshape(-1)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if project is not None:
            project()
        total += float(loss) * len(idx)
        if isinstance(model, idl.ImplicitRNN):
            its += model.last_solve.iterations + model.last_backward_solve.iterations
            solves += X.shape[1]
    return (time.perf_counter() - t0, total / X.shape[0], its / solves if solves else None)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    series = idl.datasets.spiky_series(seed=0, dtype=dtype)
    (X, Y), _ = series.windows(args.lookback)
    lo, hi = float(series.train.min()), float(series.train.max())
    X, Y = (X - lo) / (hi - lo), (Y - lo) / (hi - lo)
    if args.limit:
        X, Y = X[:args.limit], Y[:args.limit]
    builders = models(args, dtype)
    nets, opts = {}, {}
    for name, build in builders.items():
        torch.manual_seed(0)
        nets[name] = build()
        opts[name] = torch.optim.Adam(nets[name].parameters(), lr=1e-3)
    times: dict[str, list[float]] = {k: [] for k in nets}
    losses: dict[str, list[float]] = {k: [] for k in nets}
    iters: dict[str, list[float | None]] = {k: [] for k in nets}
    gen = torch.Generator().manual_seed(0)
    for rnd in range(args.rounds):
        perm = torch.randperm(X.shape[0], generator=gen)
        for name, net in nets.items():
            sec, loss, it = epoch(net, opts[name], X, Y, args.batch, perm)
            times[name].append(sec)
            losses[name].append(loss)
            iters[name].append(it)
            print(f"round {rnd + 1}: {name}: {sec:.2f} s, train MSE {loss:.4g}", flush=True)
    lstm = next(k for k in nets if k.startswith("LSTM"))
    ref = statistics.median(times[lstm])
    rows = [{"model": k, "params": bl.count_parameters(v),
             "epoch_s_median": statistics.median(times[k]), "epoch_s": times[k],
             "ratio_to_lstm": statistics.median(times[k]) / ref, "train_mse": losses[k],
             "iterations_per_step": iters[k]}
            for k, v in nets.items()]
    meta = {"argv": " ".join(sys.argv[1:]) or "defaults", "windows": int(X.shape[0]),
            "dtype": args.dtype, "threads": args.threads, "cpu": cpu_model(),
            "torch": torch.__version__, "python": platform.python_version(),
            "commit": git_commit(), "tol": args.tol, "batch": args.batch,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    md = ["# ImplicitRNN vs LSTM: time per training epoch (spiky series)", "",
          f"{meta['windows']} windows of {args.lookback} steps, batch {args.batch}, "
          f"{args.dtype}, {args.threads} thread(s), tol {args.tol:g}, Adam 1e-3; median of "
          f"{args.rounds} interleaved rounds; {meta['date']}, {meta['cpu']}.", "",
          "| model | params | s / epoch (per round) | x LSTM | train MSE per round | "
          "fwd + bwd iterations per step |",
          "|---|---:|---:|---:|---|---|"]
    md += [f"| {r['model']} | {r['params']} | {r['epoch_s_median']:.2f} "
           f"({', '.join(f'{v:.2f}' for v in r['epoch_s'])}) | {r['ratio_to_lstm']:.1f} | "
           f"{', '.join(f'{v:.4g}' for v in r['train_mse'])} | "
           + (", ".join(f"{v:.1f}" for v in r["iterations_per_step"])
              if r["iterations_per_step"][0] is not None else "n/a") + " |"
           for r in rows]
    out = Path(args.out)
    atomic_write(out / "bench_rnn.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    atomic_write(out / "bench_rnn.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
