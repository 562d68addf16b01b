#!/usr/bin/env python
"""Training benchmark on MNIST: time per epoch of idlkit against torchidl.

Both libraries train an implicit model ``x = relu(A x + B u)``, ``y = C x + D u`` with
n = 100 hidden states, cross-entropy, Adam (lr 1e-3), batch 100, kappa = 0.95, tolerance
1e-6, float32, on the same MNIST training samples in the same batch order (one
``torch.randperm`` per epoch from a generator seeded with ``--seed``, exactly as
``idlkit.train.Trainer`` draws it). idlkit: ``ImplicitModel`` (default Anderson solver) +
``Trainer`` (projected gradient onto ``||A||_inf <= kappa``). torchidl: its
``ImplicitModel`` (Picard forward and backward, ``A`` rescaled into the ball inside the
forward) with a plain training loop. Each library runs in its own subprocess, so that
the peak resident memory (``ru_maxrss``) of one does not mix with the other's. The test
accuracy is measured after every epoch (not timed).

Run from the repository root::

    .venv/bin/python benchmarks/bench_train.py                # 2 epochs on all 60000 samples
    .venv/bin/python benchmarks/bench_train.py --limit 5000   # quick run

Writes ``bench_train.json`` and ``bench_train.md`` to ``--out`` (atomically) and prints
the markdown table.
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
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from _common import atomic_write, git_commit, load_torchidl

HERE = Path(__file__).resolve().parent
_SHARED = HERE.parent.parent / "shared" / "datasets"
if "IDLKIT_DATA" not in os.environ:
    for _cand in (HERE.parent / "shared" / "datasets", _SHARED, Path("/work/shared/datasets")):
        if _cand.is_dir():
            os.environ["IDLKIT_DATA"] = str(_cand)
            break

LIBS = ("idlkit", "torchidl")
HIDDEN, BATCH, LR, KAPPA, TOL = 100, 100, 1e-3, 0.95, 1e-6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    ap.add_argument("--limit", type=int, default=60000,
                    help="training samples: the first N of MNIST's 60000 (default all)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the batch order (default 0)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the libraries alternately this many times; report each one's fastest "
                         "round (default 1)")
    ap.add_argument("--out", type=Path, default=HERE / "results",
                    help="output directory (default benchmarks/results)")
    ap.add_argument("--libs", nargs="+", choices=LIBS, default=list(LIBS), help="default: both")
    ap.add_argument("--worker", choices=LIBS, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.limit < 1 or args.threads < 1 or args.rounds < 1:
        ap.error("--epochs, --limit, --threads and --rounds must be positive")
    return args


# ----------------------------------------------------------------------------- torchidl


# ----------------------------------------------------------------------------- worker


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    """Resident set size now (Linux ``/proc/self/statm``; ``nan`` elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return math.nan


class RssSampler:
    """Highest resident set size seen by a background thread (every 20 ms) while active."""

    def __init__(self) -> None:
        import threading

        self.peak = current_rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, current_rss_mib())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mib())


def worker(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    import idlkit as idl

    torch.set_num_threads(args.threads)
    ds = idl.datasets.load("mnist")
    X = torch.from_numpy(ds.x_train[:args.limit]).float()
    y = torch.from_numpy(ds.y_train[:args.limit]).long()
    Xt = torch.from_numpy(ds.x_test).float()
    yt = torch.from_numpy(ds.y_test).long()
    del ds
    gc.collect()
    rss_data = current_rss_mib()
    epochs: list[dict] = []
    note = ""

    def test_accuracy(model: torch.nn.Module) -> float:
        correct = 0
        with torch.no_grad():
            for i in range(0, Xt.shape[0], 1000):
                correct += int((model(Xt[i:i + 1000]).argmax(1) == yt[i:i + 1000]).sum())
        return correct / Xt.shape[0]

    torch.manual_seed(args.seed)
    if args.worker == "idlkit":
        model = idl.ImplicitModel(X.shape[1], HIDDEN, 10, activation="relu", kappa=KAPPA,
                                  solver="anderson", tol=TOL)

        def log(rec: object) -> None:
            model.eval()
            acc = test_accuracy(model)
            model.train()
            epochs.append({"epoch": rec.epoch, "seconds": rec.seconds, "train_loss": rec.train_loss,
                           "test_accuracy": acc, "forward_iterations": rec.forward_iterations,
                           "backward_iterations": rec.backward_iterations})
            print(f"  idlkit epoch {rec.epoch}: {rec.seconds:.1f} s, loss {rec.train_loss:.4f}, "
                  f"test acc {acc:.4f}", file=sys.stderr, flush=True)

        trainer = idl.train.Trainer(optimizer="adam", lr=LR, epochs=args.epochs, batch_size=BATCH,
                                    seed=args.seed, log=log)
        with RssSampler() as sampler:
            trainer.fit(model, (X, y))
        note = "ImplicitModel(solver='anderson', tol=1e-6) + Trainer (projection after every step)"
    else:
        tb, _, note = load_torchidl()
        if tb is None:
            return {"error": note}
        model = tb.ImplicitModel(X.shape[1], 10, HIDDEN, bias=True, kappa=KAPPA, tol=TOL,
                                 grad_tol=TOL, mitr=300, grad_mitr=300)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        gen = torch.Generator().manual_seed(args.seed)  # the Trainer's batch order
        n_warn = 0
        sampler = RssSampler().__enter__()
        for epoch in range(1, args.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            perm = torch.randperm(X.shape[0], generator=gen)
            total = 0.0
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for i in range(0, X.shape[0], BATCH):
                    idx = perm[i:i + BATCH]
                    loss = F.cross_entropy(model(X[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
            seconds = time.perf_counter() - t0
            n_warn += len(caught)
            model.eval()
            acc = test_accuracy(model)
            epochs.append({"epoch": epoch, "seconds": seconds, "train_loss": total / X.shape[0],
                           "test_accuracy": acc, "nonconvergence_warnings": len(caught)})
            print(f"  torchidl epoch {epoch}: {seconds:.1f} s, loss {total / X.shape[0]:.4f}, "
                  f"test acc {acc:.4f}", file=sys.stderr, flush=True)
        sampler.__exit__()
        note += f"; {n_warn} non-convergence warnings"
    return {"epochs": epochs, "rss_before_training_mib": rss_data,
            "peak_rss_training_mib": sampler.peak, "peak_rss_mib": maxrss_mib(),
            "note": note, "torch_threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- driver


def run_worker(lib: str, args: argparse.Namespace) -> dict:
    fd, tmp = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", lib, "--result", tmp,
           "--epochs", str(args.epochs), "--limit", str(args.limit), "--threads", str(args.threads),
           "--seed", str(args.seed)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"running {lib} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            return {"error": f"worker exited with code {proc.returncode}"}
        res = json.loads(Path(tmp).read_text())
    finally:
        os.unlink(tmp)
    res["wall_seconds"] = time.perf_counter() - t0
    return res


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown(res: dict) -> str:
    a, b = res["results"].get("idlkit", {}), res["results"].get("torchidl", {})
    cfg = res["config"]
    lines = [
        "# bench_train: idlkit vs torchidl, training on MNIST",
        "",
        f"{res['timestamp']}; {res['machine']['cpu']}, {cfg['threads']} torch threads, "
        f"torch {res['machine']['torch']}, torchidl {res['machine']['torchidl']}. "
        f"n = {HIDDEN}, batch {BATCH}, Adam lr {LR:g}, relu, kappa {KAPPA}, tol {TOL:g}, float32, "
        f"{cfg['train_samples']} training samples, same batch order; test set 10000. "
        f"Load average (1 min) at start / end: {res['machine']['loadavg_start'][0]:.2f} / "
        f"{res['machine'].get('loadavg_end', [math.nan])[0]:.2f} on "
        f"{res['machine']['usable_cpus']} CPUs (other busy processes inflate every timing).",
        "",
        "| epoch | idlkit s | torchidl s | torchidl / idlkit | idlkit test acc | torchidl test acc "
        "| idlkit fwd/bwd it |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ea, eb = a.get("epochs", []), b.get("epochs", [])
    for k in range(max(len(ea), len(eb))):
        ra = ea[k] if k < len(ea) else {}
        rb = eb[k] if k < len(eb) else {}
        ratio = rb["seconds"] / ra["seconds"] if ra and rb else None
        it = (f"{ra['forward_iterations']:.1f} / {ra['backward_iterations']:.1f}" if ra else "-")
        lines.append(f"| {k + 1} | {fmt(ra.get('seconds'), '.1f')} | {fmt(rb.get('seconds'), '.1f')} | "
                     f"{fmt(ratio, '.2f')} | {fmt(ra.get('test_accuracy'), '.4f')} | "
                     f"{fmt(rb.get('test_accuracy'), '.4f')} | {it} |")
    ma = sum(r["seconds"] for r in ea) / len(ea) if ea else None
    mb = sum(r["seconds"] for r in eb) / len(eb) if eb else None
    lines += [
        f"| mean | {fmt(ma, '.1f')} | {fmt(mb, '.1f')} | "
        f"{fmt(mb / ma if ma and mb else None, '.2f')} | | | |",
        "",
        "| | idlkit | torchidl |",
        "|---|---:|---:|",
        f"| peak RSS of the process (MiB, ru_maxrss, incl. data loading) | "
        f"{fmt(a.get('peak_rss_mib'), '.0f')} | "
        f"{fmt(b.get('peak_rss_mib'), '.0f')} |",
        f"| RSS before training (MiB, data loaded) | {fmt(a.get('rss_before_training_mib'), '.0f')} | "
        f"{fmt(b.get('rss_before_training_mib'), '.0f')} |",
        f"| peak RSS during training (MiB, sampled every 20 ms) | "
        f"{fmt(a.get('peak_rss_training_mib'), '.0f')} | {fmt(b.get('peak_rss_training_mib'), '.0f')} |",
        "",
        f"idlkit: {a.get('note', a.get('error', '-'))}.  ",
        f"torchidl: {b.get('note', b.get('error', '-'))}.  ",
        "Epoch time is training only (test accuracy is measured after it, untimed). Each library "
        "runs in its own process (peak RSS includes the interpreter, torch and the data). The "
        "initialisations differ (each library's own); the batch order is the same.",
    ]
    rounds = res.get("rounds", {})
    if any(len(v) > 1 for v in rounds.values()):
        lines.append("Rounds (libraries alternated; the table shows each one's fastest): mean s/epoch "
                     + "; ".join(f"{lib} " + ", ".join(f"{t:.2f}" for t in ts)
                                 for lib, ts in rounds.items()) + ".")
    lines.append(f"Commit {res.get('commit') or '-'}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        res = worker(args)
        Path(args.result).write_text(json.dumps(res))
        return 0
    import torch

    import idlkit as idl

    try:
        n_train = min(args.limit, idl.datasets.load("mnist", split="train").y_train.shape[0])
    except idl.IdlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.lower().startswith("model name")),
                       cpu)
    except OSError:
        pass
    res = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "config": {"epochs": args.epochs, "limit": args.limit, "train_samples": n_train,
                   "threads": args.threads, "seed": args.seed, "hidden": HIDDEN, "batch": BATCH,
                   "lr": LR, "kappa": KAPPA, "tol": TOL, "dtype": "float32"},
        "machine": {"torch": torch.__version__, "idlkit": getattr(idl, "__version__", None),
                    "torchidl": version("torchidl"), "python": platform.python_version(),
                    "cpu": cpu, "usable_cpus": len(os.sched_getaffinity(0)),
                    "loadavg_start": list(os.getloadavg())},
        "results": {},
    }
    # rounds alternate the libraries, so that a change of load hits both; each library's
    # reported run is its fastest round (the least disturbed), all rounds are listed
    runs: dict[str, list[dict]] = {lib: [] for lib in args.libs}
    for _ in range(args.rounds):
        for lib in args.libs:
            runs[lib].append(run_worker(lib, args))

    def mean_epoch(r: dict) -> float:
        ep = r.get("epochs", [])
        return sum(e["seconds"] for e in ep) / len(ep) if ep else math.inf

    for lib, rs in runs.items():
        res["results"][lib] = min(rs, key=mean_epoch)
    res["rounds"] = {lib: [mean_epoch(r) for r in rs] for lib, rs in runs.items()}
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    md = markdown(res)
    atomic_write(args.out / "bench_train.json", json.dumps(res, indent=2) + "\n")
    atomic_write(args.out / "bench_train.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
