#!/usr/bin/env python
"""Benchmark of ``idlkit.convert.from_torch`` (paper 000 §3, Fig. 7).

For an MLP 784-300-100-10, a small CNN (conv-BN-ReLU-maxpool x2, linear) and the
CIFAR ResNet-20 (32x32x3 inputs), all float32 in eval mode with random weights:
conversion time, state size ``n``, nonzeros of ``A, B, C, D``, bytes of the stored
sparse matrices and the peak resident memory added by the conversion (each network is
converted in a fresh forked process, so ``ru_maxrss`` measures that conversion alone),
the exactness ``max |model(u) - net(u)|``, and the forward time of the converted model
(``triangular`` solver) against the network itself, with their ratio.

Run from the repository root::

    .venv/bin/python benchmarks/bench_convert.py            # full run (~2 minutes)
    .venv/bin/python benchmarks/bench_convert.py --quick    # MLP and CNN only

Writes ``bench_convert.json`` / ``bench_convert.md`` (``_quick`` with ``--quick``) and,
when matplotlib is installed, ``resnet20_spy.png`` (the pattern of A, as Fig. 7) to
``--out`` (default ``benchmarks/results``).
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
from _common import atomic_write, cpu_model, git_commit
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


def _best(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(name: str, batch: int, repeats: int, spy_path: str | None, queue: mp.Queue) -> None:
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
            stored += M.values().numel() * M.element_size() + M.col_indices().numel() * 8 \
                + M.crow_indices().numel() * 8
        else:
            nnz[k] = int(M.count_nonzero())
            stored += M.numel() * M.element_size()
    with torch.no_grad():
        y_net = net(u).reshape(batch, -1)
        y = model(u)
        err = float((y - y_net).abs().max())
        t_net = _best(lambda: net(u), repeats)
        t_model = _best(lambda: model(u), repeats)
    cert = model.certificate()
    if spy_path is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            from idlkit.plot import spy

            ax = spy(model)
            ax.figure.savefig(spy_path, dpi=150)
        except ImportError:
            pass
    queue.put({
        "network": name, "input": list(shape), "state_size": model.hidden, "sparse": model.sparse,
        "convert_s": t_convert, "nnz": nnz, "nnz_total": sum(nnz.values()),
        "stored_MiB": stored / 2**20, "peak_rss_added_MiB": (rss1 - rss0) / 1024,
        "rss_bytes_per_nnz": (rss1 - rss0) * 1024 / max(sum(nnz.values()), 1),
        "max_abs_error_f32": err, "output_scale": float(y_net.abs().max()),
        "triangular_certificate": bool(cert.holds["triangular"]), "levels": model.last_solve.iterations,
        "batch": batch, "forward_net_s": t_net, "forward_model_s": t_model,
        "forward_ratio": t_model / t_net,
    })


def markdown(result: dict) -> str:
    lines = [f"# bench_convert ({result['date']})", "",
             f"CPU: {result['machine']['cpu']} (torch threads 1), torch {result['machine']['torch']}, "
             f"commit {result['machine']['commit']}, float32, random weights, eval mode.", "",
             "| network | state n | nnz(A,B,C,D) | convert (s) | stored MiB | peak RSS added MiB | "
             "RSS B/nnz | max abs err | levels | batch | net fwd (ms) | model fwd (ms) | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['network']} | {r['state_size']} | {r['nnz_total']:,} | {r['convert_s']:.2f} | "
            f"{r['stored_MiB']:.1f} | {r['peak_rss_added_MiB']:.0f} | {r['rss_bytes_per_nnz']:.0f} | "
            f"{r['max_abs_error_f32']:.1e} | {r['levels']} | {r['batch']} | {1e3 * r['forward_net_s']:.2f} | "
            f"{1e3 * r['forward_model_s']:.1f} | {r['forward_ratio']:.0f}x |")
    lines += ["", "ratio = converted-model forward / network forward (same batch, best of the repeats). "
              "The model's forward is the `triangular` solve (level sets of A recomputed on every call) "
              "plus the output map, on sparse CSR matrices."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="MLP and CNN only")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    names = list(NETWORKS)[:2] if args.quick else list(NETWORKS)
    ctx = mp.get_context("fork")
    rows = []
    for name in names:
        big = name.startswith("resnet")
        spy = str(args.out / "resnet20_spy.png") if big else None
        args.out.mkdir(parents=True, exist_ok=True)
        q: mp.Queue = ctx.Queue()
        proc = ctx.Process(target=measure, args=(name, args.batch, 1 if big else 20, spy, q))
        proc.start()
        row = q.get()
        proc.join()
        print(json.dumps(row))
        rows.append(row)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_model(), "python": platform.python_version(),
                          "torch": torch.__version__, "commit": git_commit()},
              "rows": rows}
    stem = "bench_convert_quick" if args.quick else "bench_convert"
    atomic_write(args.out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    atomic_write(args.out / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    main()
