#!/usr/bin/env python
"""Benchmark of ``idlkit.convert.from_torch`` (paper 000 §3, Fig. 7; recurrent layers §3.5-3.6).

For an MLP 784-300-100-10, a small CNN (conv-BN-ReLU-maxpool x2, linear) and the
CIFAR ResNet-20 (32x32x3 inputs), all float32 in eval mode with random weights:
conversion time, state size ``n``, nonzeros of ``A, B, C, D``, bytes of the stored
sparse matrices and the peak resident memory added by the conversion (each network is
converted in a fresh forked process, so ``ru_maxrss`` measures that conversion alone),
the exactness ``max |model(u) - net(u)|`` (float32 on the benchmark batch; for ResNet-20
also a float64 conversion on a batch of 2), the first forward (which builds the cached
level plan of the ``triangular`` solver), the steady forward time of the converted model
against the network itself with their ratio, and the time of ``model.certificate()``.

Recurrent section: an ``nn.LSTM`` and an ``nn.GRU`` (input 32, hidden 128, one layer,
``batch_first``, a linear head on the last output) over 50 steps, batch 64, converted from one
example sequence (unrolled over its 50 steps, the gates as Product blocks, §3.5-3.6), in
float32 and in float64: conversion time (goal < 5 s), the converted model's steady forward
time against the network's own (torch's fused LSTM/GRU kernel) with the ratio (goal within
10x), the exactness on the batch, and where the model's forward time goes (the top operators
of ``torch.profiler`` over a few forwards, as shares of its total).

Run from the repository root::

    .venv/bin/python benchmarks/bench_convert.py            # full run (~3 minutes)
    .venv/bin/python benchmarks/bench_convert.py --quick    # MLP, CNN and small recurrent nets
    .venv/bin/python benchmarks/bench_convert.py --only recurrent   # the LSTM/GRU rows only

Writes ``bench_convert.json`` / ``bench_convert.md`` (``_quick`` with ``--quick``,
``bench_convert_recurrent`` / ``bench_convert_feedforward`` with ``--only``) and, when
matplotlib is installed, ``resnet20_spy.png`` (the pattern of A, as Fig. 7) to ``--out``
(default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from _common import atomic_write, config_of, cpu_model, git_commit
from torch import nn

from idlkit.convert import from_torch, resnet20

HERE = Path(__file__).resolve().parent


def mlp() -> tuple[nn.Module, tuple[int, ...]]:
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10)), (784,)


def small_cnn() -> tuple[nn.Module, tuple[int, ...]]:
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(16 * 7 * 7, 10))
    return net, (1, 28, 28)


def resnet() -> tuple[nn.Module, tuple[int, ...]]:
    return resnet20(), (3, 32, 32)


NETWORKS = {"mlp-784-300-100-10": mlp, "cnn-small-28x28": small_cnn, "resnet20-32x32x3": resnet}


class Recurrent(nn.Module):
    """``nn.LSTM``/``nn.GRU`` (batch-first, one layer) and a linear head on the last output."""

    def __init__(self, kind: str, inp: int, hidden: int) -> None:
        super().__init__()
        self.rnn = getattr(nn, kind)(inp, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _profile_shares(fn, runs: int = 3, top: int = 6) -> list[dict]:  # noqa: ANN001
    """The operators taking most of ``fn``'s self CPU time under ``torch.profiler``."""
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(runs):
            fn()
    rows = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()]
    total = sum(r[1] for r in rows) or 1.0
    rows.sort(key=lambda r: -r[1])
    return [{"op": k, "share": t / total, "calls_per_forward": c / runs} for k, t, c in rows[:top]]


def measure_recurrent(kind: str, dtype_name: str, batch: int, steps: int, inp: int, hidden: int,
                      repeats: int, queue: mp.Queue) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    net = Recurrent(kind, inp, hidden).to(dtype).eval()
    u = torch.randn(batch, steps, inp, dtype=dtype)
    t = time.perf_counter()
    model = from_torch(net, u[:1])
    t_convert = time.perf_counter() - t
    t = time.perf_counter()
    model = from_torch(net, u[:1])  # again, warm: without the process's first-use costs
    t_convert_warm = time.perf_counter() - t
    nnz = {k: int(getattr(model, k)._nnz()) if getattr(model, k).layout != torch.strided
           else int(getattr(model, k).count_nonzero()) for k in "ABCD"}
    with torch.no_grad():
        y_net = net(u)
        t = time.perf_counter()
        y = model(u)
        t_first = time.perf_counter() - t
        err = float((y - y_net).abs().max())
        t_net = _best(lambda: net(u), repeats)
        t_model = _best(lambda: model(u), repeats)
        shares = _profile_shares(lambda: model(u))
    cert = model.certificate()
    queue.put({
        "network": f"{kind.lower()}-h{hidden}-T{steps}", "kind": kind, "dtype": dtype_name, "steps": steps,
        "input": inp, "hidden": hidden, "batch": batch, "state_size": model.hidden, "sparse": model.sparse,
        "nnz": nnz, "nnz_total": sum(nnz.values()), "levels": model.last_solve.iterations,
        "convert_s": t_convert, "convert_warm_s": t_convert_warm, "max_abs_error": err,
        "output_scale": float(y_net.abs().max()),
        "triangular_certificate": bool(cert.holds["triangular"]), "first_forward_s": t_first,
        "forward_net_s": t_net, "forward_model_s": t_model, "forward_ratio": t_model / t_net,
        "profile_top_ops": shares,
    })


def _best(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(name: str, batch: int, repeats: int, spy_path: str | None, queue: mp.Queue,
            check64: bool = False) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net, shape = NETWORKS[name]()
    net = net.float().eval()
    u = torch.randn(batch, *shape)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    model = from_torch(net, u[:1])
    t_convert = time.perf_counter() - t
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    nnz, stored = {}, 0
    for k in "ABCD":
        M = getattr(model, k)
        if M.layout != torch.strided:
            nnz[k] = int(M._nnz())
            stored += sum(t.numel() * t.element_size()
                          for t in (M.values(), M.col_indices(), M.crow_indices()))
        else:
            nnz[k] = int(M.count_nonzero())
            stored += M.numel() * M.element_size()
    with torch.no_grad():
        y_net = net(u).reshape(batch, -1)
        t = time.perf_counter()
        y = model(u)
        t_first = time.perf_counter() - t
        err = float((y - y_net).abs().max())
        t_net = _best(lambda: net(u), repeats)
        t_model = _best(lambda: model(u), repeats)
    t = time.perf_counter()
    cert = model.certificate()
    t_cert = time.perf_counter() - t
    if spy_path is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            from idlkit.plot import spy

            ax = spy(model)
            ax.figure.savefig(spy_path, dpi=150)
        except ImportError:
            pass
    row = {"state_size": model.hidden, "sparse": model.sparse, "levels": model.last_solve.iterations}
    err64 = None
    if check64:  # exactness in float64 too (batch 2), on a fresh conversion
        del model
        net64 = net.double()
        u64 = torch.randn(2, *shape, dtype=torch.float64)
        m64 = from_torch(net64, u64[:1])
        with torch.no_grad():
            err64 = float((m64(u64) - net64(u64).reshape(2, -1)).abs().max())
        del m64
    queue.put({
        "network": name, "input": list(shape), "state_size": row["state_size"], "sparse": row["sparse"],
        "convert_s": t_convert, "nnz": nnz, "nnz_total": sum(nnz.values()),
        "stored_MiB": stored / 2**20, "peak_rss_added_MiB": (rss1 - rss0) / 1024,
        "rss_bytes_per_nnz": (rss1 - rss0) * 1024 / max(sum(nnz.values()), 1),
        "max_abs_error_f32": err, "max_abs_error_f64_batch2": err64,
        "output_scale": float(y_net.abs().max()), "first_forward_s": t_first, "certificate_s": t_cert,
        "triangular_certificate": bool(cert.holds["triangular"]), "levels": row["levels"],
        "batch": batch, "forward_net_s": t_net, "forward_model_s": t_model,
        "forward_ratio": t_model / t_net,
    })


GOAL_CONVERT_S, GOAL_RATIO = 5.0, 10.0


def markdown(result: dict) -> str:
    lines = [f"# bench_convert ({result['date']})", "",
             f"CPU: {result['machine']['cpu']} (torch threads 1), torch {result['machine']['torch']}, "
             f"commit {result['machine']['commit']}, random weights, eval mode.", ""]
    if result["rows"]:
        lines += _markdown_feedforward(result)
    if result.get("recurrent_rows"):
        lines += _markdown_recurrent(result)
    return "\n".join(lines) + "\n"


def _markdown_recurrent(result: dict) -> list[str]:
    rows = result["recurrent_rows"]
    lines = ["## recurrent layers (paper 000 §3.5-3.6)", "",
             "One-layer batch-first `nn.LSTM` / `nn.GRU` and a linear head on the last output, converted "
             "from one example sequence: unrolled over its steps, every gate product a Product state "
             "pair (LSTM: (sigmoid, tanh) on (i, g), (sigmoid, identity on [-B, B]) on (f, c), (sigmoid, "
             "tanh) on (o, c); GRU: (sigmoid, identity) on (r, W_hn h + b_hn), (sigmoid, tanh) on "
             "(-z, n), (sigmoid, identity) on (z, h), and h as an identity state). Goals: convert < "
             f"{GOAL_CONVERT_S:g} s, model forward within {GOAL_RATIO:g}x of the network's.", "",
             "| network | dtype | steps | batch | state n | nnz(A,B,C,D) | levels | convert (s) | "
             "convert again (s) | max abs err | net fwd (ms) | model 1st fwd (ms) | model fwd (ms) | "
             "ratio | goals |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok_c = r["convert_s"] < GOAL_CONVERT_S
        ok_r = r["forward_ratio"] <= GOAL_RATIO
        lines.append(
            f"| {r['network']} | {r['dtype']} | {r['steps']} | {r['batch']} | {r['state_size']} | "
            f"{r['nnz_total']:,} | {r['levels']} | {r['convert_s']:.2f} | {r['convert_warm_s']:.2f} | "
            f"{r['max_abs_error']:.1e} | "
            f"{1e3 * r['forward_net_s']:.2f} | {1e3 * r['first_forward_s']:.1f} | "
            f"{1e3 * r['forward_model_s']:.1f} | {r['forward_ratio']:.1f}x | "
            f"convert {'PASS' if ok_c else 'MISS'}, ratio {'PASS' if ok_r else 'MISS'} |")
    lines += ["", "convert = the first conversion in a fresh process (the goal's figure; it includes "
              "one-time costs such as torch.fx's first trace), convert again = a second one in the same "
              "process.", "",
              "Where the converted model's forward time goes (self CPU time of the top operators under "
              "`torch.profiler`, share of the total, calls per forward):", ""]
    for r in rows:
        ops = ", ".join(f"{o['op']} {100 * o['share']:.0f}% ({o['calls_per_forward']:.0f})"
                        for o in r["profile_top_ops"])
        lines.append(f"- {r['network']} {r['dtype']}: {ops}")
    lines += ["", "`aten::addmm` is the per-level sparse CSR x dense product of the `triangular` solve "
              "(one per level: two levels per step for the LSTM, three for the GRU) plus `B u`; "
              "`ImplicitFunction` is the solver's Python loop over the levels; `aten::tanh`/"
              "`aten::sigmoid`/`aten::mul`/`aten::cat`/`aten::copy_`/`aten::fill_` apply each level's "
              "Product pairs and store its states; `aten::sub`/`aten::abs` are the solve's final residual "
              "check `||phi(z) - x||_inf` over the whole state. torch's own LSTM/GRU runs one fused "
              "dense GEMM per step.", ""]
    return lines


def _markdown_feedforward(result: dict) -> list[str]:
    lines = ["| network | state n | nnz(A,B,C,D) | convert (s) | stored MiB | peak RSS added MiB | "
             "RSS B/nnz | max abs err f32 | max abs err f64 (batch 2) | levels | batch | net fwd (ms) | "
             "model 1st fwd (ms) | model fwd (ms) | ratio | certificate (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['network']} | {r['state_size']} | {r['nnz_total']:,} | {r['convert_s']:.2f} | "
            f"{r['stored_MiB']:.1f} | {r['peak_rss_added_MiB']:.0f} | {r['rss_bytes_per_nnz']:.0f} | "
            f"{r['max_abs_error_f32']:.1e} | "
            + ("-" if r["max_abs_error_f64_batch2"] is None else f"{r['max_abs_error_f64_batch2']:.1e}")
            + f" | {r['levels']} | {r['batch']} | {1e3 * r['forward_net_s']:.2f} | "
            f"{1e3 * r['first_forward_s']:.1f} | {1e3 * r['forward_model_s']:.1f} | "
            f"{r['forward_ratio']:.1f}x | {r['certificate_s']:.2f} |")
    lines += ["", "ratio = converted-model forward / network forward (same batch, best of the repeats). "
              "The model's forward is the `triangular` solve plus the output map, on int32 CSR matrices: "
              "one sparse-dense product per level with the per-level row blocks of A cached on the "
              "model's A (the first forward builds them: `model 1st fwd`). The certificate decides "
              "triangularity on the pattern (lambda_pf = 0) and computes ||A||_inf and mu_inf on the "
              "sparse matrix.", "",
              "Before the cached plan and the CSR assembly (commit 2f958f1, same machine): ResNet-20 "
              "convert 11.19 s, peak RSS added 3376 MiB (95 B/nnz), model fwd 4465.7 ms (257x), "
              "certificate ~9 s; MLP 17x, small CNN 23x. This table is float32.", ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="MLP and CNN, and recurrent nets of hidden 16 over 6 steps (smoke test)")
    ap.add_argument("--only", choices=["all", "feedforward", "recurrent"], default="all")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rnn-batch", type=int, default=64)
    ap.add_argument("--rnn-steps", type=int, default=50)
    ap.add_argument("--rnn-input", type=int, default=32)
    ap.add_argument("--rnn-hidden", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20, help="forward timings: best of this many")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if args.quick:
        args.rnn_steps, args.rnn_hidden, args.rnn_batch, args.repeats = 6, 16, 8, 3
    names = [] if args.only == "recurrent" else list(NETWORKS)[:2] if args.quick else list(NETWORKS)
    ctx = mp.get_context("fork")
    rows = []
    for name in names:
        big = name.startswith("resnet")
        spy = str(args.out / "resnet20_spy.png") if big else None
        args.out.mkdir(parents=True, exist_ok=True)
        q: mp.Queue = ctx.Queue()
        proc = ctx.Process(target=measure, args=(name, args.batch, 5 if big else args.repeats, spy, q, big))
        proc.start()
        row = q.get()
        proc.join()
        print(json.dumps(row))
        rows.append(row)
    recurrent = []
    if args.only != "feedforward":
        for kind in ("LSTM", "GRU"):
            for dtype in ("float32", "float64"):
                q = ctx.Queue()
                proc = ctx.Process(target=measure_recurrent, args=(
                    kind, dtype, args.rnn_batch, args.rnn_steps, args.rnn_input, args.rnn_hidden,
                    args.repeats, q))
                proc.start()
                row = q.get()
                proc.join()
                print(json.dumps(row))
                recurrent.append(row)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_model(), "python": platform.python_version(),
                          "torch": torch.__version__, "commit": git_commit()},
              "config": config_of(args), "rows": rows, "recurrent_rows": recurrent}
    stem = "bench_convert" + ("" if args.only == "all" else f"_{args.only}")
    stem += "_quick" if args.quick else ""
    atomic_write(args.out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    atomic_write(args.out / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    main()
