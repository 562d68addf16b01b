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

from _common import atomic_write, git_commit, has_backward_stop, load_torchidl

HERE = Path(__file__).resolve().parent

LIBS = ("idlkit", "idlkit-rel", "torchidl")
HIDDEN, BATCH, LR, KAPPA, TOL = 100, 100, 1e-3, 0.95, 1e-6
GRAD_TOL = TOL  # torchidl's absolute adjoint tolerance = idlkit's absolute backward_tol


def tolerance_notes(has_stop: bool) -> dict[str, str]:
    """The adjoint stopping rule of each library's run (the forward is absolute TOL for all)."""
    eq = (f"absolute adjoint tol {GRAD_TOL:g} (backward_stop='absolute', equal tolerance)"
          if has_stop else f"relative adjoint tol {TOL:g} * ||dL/dx||_inf: this idlkit has no "
          f"backward_stop, so NOT equal tolerance")
    return {"idlkit": eq,
            "idlkit-rel": f"relative adjoint tol {TOL:g} * ||dL/dx||_inf (idlkit's default rule)",
            "torchidl": f"absolute grad_tol {GRAD_TOL:g} (Picard)"}


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
    ap.add_argument("--libs", nargs="+", choices=LIBS, default=list(LIBS),
                    help="default: all; 'idlkit' = absolute adjoint tolerance equal to torchidl's "
                         "grad_tol, 'idlkit-rel' = idlkit's relative rule (skipped on a library "
                         "without backward_stop, where it is the same run as 'idlkit')")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 epoch on the first 1000 samples, results "
                         "bench_train_quick.*")
    ap.add_argument("--worker", choices=LIBS, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.limit = 1, min(args.limit, 1000)
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

    has_stop = has_backward_stop()
    torch.manual_seed(args.seed)
    # the initial matrices of every run: idlkit's initialisation from --seed
    init = idl.ImplicitModel(X.shape[1], HIDDEN, 10, activation="relu", kappa=KAPPA,
                             solver="anderson", tol=TOL)
    if args.worker in ("idlkit", "idlkit-rel"):
        stop = {}
        if has_stop:
            stop = ({"backward_stop": "absolute", "backward_tol": GRAD_TOL}
                    if args.worker == "idlkit" else {"backward_stop": "relative"})
        model = idl.ImplicitModel(X.shape[1], HIDDEN, 10, activation="relu", kappa=KAPPA,
                                  solver="anderson", tol=TOL, **stop)
        model.load_state_dict(init.state_dict())

        def log(rec: object) -> None:
            model.eval()
            acc = test_accuracy(model)
            model.train()
            epochs.append({"epoch": rec.epoch, "seconds": rec.seconds, "train_loss": rec.train_loss,
                           "test_accuracy": acc, "forward_iterations": rec.forward_iterations,
                           "backward_iterations": rec.backward_iterations})
            print(f"  {args.worker} epoch {rec.epoch}: {rec.seconds:.1f} s, loss {rec.train_loss:.4f}, "
                  f"test acc {acc:.4f}", file=sys.stderr, flush=True)

        trainer = idl.train.Trainer(optimizer="adam", lr=LR, epochs=args.epochs, batch_size=BATCH,
                                    seed=args.seed, log=log)
        with RssSampler() as sampler:
            trainer.fit(model, (X, y))
        note = (f"ImplicitModel(solver='anderson', tol={TOL:g}) + Trainer (projection after "
                f"every step); {tolerance_notes(has_stop)[args.worker]}")
    else:
        tb, _, note = load_torchidl()
        if tb is None:
            return {"error": note}
        model = tb.ImplicitModel(X.shape[1], 10, HIDDEN, bias=True, kappa=KAPPA, tol=TOL,
                                 grad_tol=GRAD_TOL, mitr=300, grad_mitr=300)
        # same initial matrices as idlkit: torchidl appends a row of ones to U, so its B is
        # [B b] and its D is [D d]; idlkit's initial A lies in the kappa ball, so torchidl's
        # in-forward rescaling leaves it unchanged
        with torch.no_grad():
            model.A.copy_(init.A)
            model.B.copy_(torch.cat([init.B, init.b[:, None]], dim=1))
            model.C.copy_(init.C)
            model.D.copy_(torch.cat([init.D, init.d[:, None]], dim=1))
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
        note += (f"; {tolerance_notes(has_stop)['torchidl']}; idlkit's initial matrices; "
                 f"{n_warn} non-convergence warnings")
    return {"epochs": epochs, "rss_before_training_mib": rss_data, "has_backward_stop": has_stop,
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
    cfg = res["config"]
    R = res["results"]
    libs = [lib for lib in LIBS if lib in R]
    t = R.get("torchidl", {})
    tn = tolerance_notes(res["machine"]["idlkit_has_backward_stop"])
    lines = [
        "# bench_train: idlkit vs torchidl, training on MNIST",
        "",
        f"{res['timestamp']}; {res['machine']['cpu']}, {cfg['threads']} torch threads, "
        f"torch {res['machine']['torch']}, torchidl {res['machine']['torchidl']}. "
        f"n = {HIDDEN}, batch {BATCH}, Adam lr {LR:g}, relu, kappa {KAPPA}, float32, "
        f"{cfg['train_samples']} training samples, same batch order, same initial matrices "
        f"(idlkit's initialisation from --seed, copied into torchidl as `B = [B b]`, "
        f"`D = [D d]`); test set 10000. "
        f"Load average (1 min) at start / end: {res['machine']['loadavg_start'][0]:.2f} / "
        f"{res['machine'].get('loadavg_end', [math.nan])[0]:.2f} on "
        f"{res['machine']['usable_cpus']} CPUs (other busy processes inflate every timing).",
        "",
        f"Tolerances. Forward, every run: absolute `||x - relu(A x + B u + b)||_inf <= {TOL:g}` "
        f"(torchidl `<`). Adjoint: " + "; ".join(f"`{lib}`: {tn[lib]}" for lib in libs) + ". "
        "`torchidl / X`: torchidl's epoch time over X's (> 1: idlkit faster).",
        "",
        "| epoch | " + " | ".join(f"{lib} s" for lib in libs) + " | "
        + " | ".join(f"torchidl / {lib}" for lib in libs if lib != "torchidl")
        + " | " + " | ".join(f"{lib} test acc" for lib in libs) + " | "
        + " | ".join(f"{lib} train loss" for lib in libs) + " | "
        + " | ".join(f"{lib} fwd/bwd it" for lib in libs if lib != "torchidl") + " |",
    ]
    others = [lib for lib in libs if lib != "torchidl"]
    ncol = 1 + 3 * len(libs) + 2 * len(others) - (0 if "torchidl" in libs else len(others))
    lines.append("|" + "---:|" * ncol)
    eps = {lib: R[lib].get("epochs", []) for lib in libs}
    te = t.get("epochs", [])
    for k in range(max((len(v) for v in eps.values()), default=0)):
        row = {lib: (eps[lib][k] if k < len(eps[lib]) else {}) for lib in libs}
        rb = te[k] if k < len(te) else {}
        cells = [fmt(row[lib].get("seconds"), ".1f") for lib in libs]
        if "torchidl" in libs:
            cells += [fmt(rb["seconds"] / row[lib]["seconds"] if rb and row[lib] else None, ".2f")
                      for lib in others]
        cells += [fmt(row[lib].get("test_accuracy"), ".4f") for lib in libs]
        cells += [fmt(row[lib].get("train_loss"), ".4f") for lib in libs]
        cells += [f"{row[lib]['forward_iterations']:.1f} / {row[lib]['backward_iterations']:.1f}"
                  if row[lib] else "-" for lib in others]
        lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")

    def mean(lib: str) -> float | None:
        ep = eps.get(lib) or []
        return sum(r["seconds"] for r in ep) / len(ep) if ep else None

    mt = mean("torchidl")
    cells = [fmt(mean(lib), ".1f") for lib in libs]
    if "torchidl" in libs:
        cells += [fmt(mt / mean(lib) if mt and mean(lib) else None, ".2f") for lib in others]
    lines.append("| mean | " + " | ".join(cells) + " |" + " |" * (ncol - 1 - len(cells)))
    lines += [
        "",
        "| | " + " | ".join(libs) + " |",
        "|---|" + "---:|" * len(libs),
        "| peak RSS of the process (MiB, ru_maxrss, incl. data loading) | "
        + " | ".join(fmt(R[lib].get("peak_rss_mib"), ".0f") for lib in libs) + " |",
        "| RSS before training (MiB, data loaded) | "
        + " | ".join(fmt(R[lib].get("rss_before_training_mib"), ".0f") for lib in libs) + " |",
        "| peak RSS during training (MiB, sampled every 20 ms) | "
        + " | ".join(fmt(R[lib].get("peak_rss_training_mib"), ".0f") for lib in libs) + " |",
        "",
    ]
    lines += [f"{lib}: {R[lib].get('note', R[lib].get('error', '-'))}.  " for lib in libs]
    lines.append("Epoch time is training only (test accuracy is measured after it, untimed). Each "
                 "library runs in its own process (peak RSS includes the interpreter, torch and "
                 "the data). The training differs in how A is kept well-posed: idlkit projects A "
                 "onto the ball after each step, torchidl rescales it inside every forward.")
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
                   "lr": LR, "kappa": KAPPA, "tol": TOL, "dtype": "float32",
                   "forward_tolerance": f"absolute {TOL:g}, every run",
                   "adjoint_tolerance": tolerance_notes(has_backward_stop()),
                   "quick": args.quick},
        "machine": {"torch": torch.__version__, "idlkit": getattr(idl, "__version__", None),
                    "torchidl": version("torchidl"), "python": platform.python_version(),
                    "cpu": cpu, "usable_cpus": len(os.sched_getaffinity(0)),
                    "loadavg_start": list(os.getloadavg()),
                    "idlkit_has_backward_stop": has_backward_stop()},
        "results": {},
    }
    # rounds alternate the libraries, so that a change of load hits both; each library's
    # reported run is its fastest round (the least disturbed), all rounds are listed
    libs = [lib for lib in LIBS if lib in args.libs]
    if "idlkit-rel" in libs and not has_backward_stop():
        libs.remove("idlkit-rel")  # the same run as 'idlkit' on this library
        print("idlkit-rel skipped: this idlkit has no backward_stop, so 'idlkit' already runs "
              "the relative rule", file=sys.stderr)
    runs: dict[str, list[dict]] = {lib: [] for lib in libs}
    for _ in range(args.rounds):
        for lib in libs:
            runs[lib].append(run_worker(lib, args))

    def mean_epoch(r: dict) -> float:
        ep = r.get("epochs", [])
        return sum(e["seconds"] for e in ep) / len(ep) if ep else math.inf

    for lib, rs in runs.items():
        res["results"][lib] = min(rs, key=mean_epoch)
    res["rounds"] = {lib: [mean_epoch(r) for r in rs] for lib, rs in runs.items()}
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    md = markdown(res)
    stem = "bench_train_quick" if args.quick else "bench_train"
    atomic_write(args.out / f"{stem}.json", json.dumps(res, indent=2) + "\n")
    atomic_write(args.out / f"{stem}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
