#!/usr/bin/env python
"""Robust training (paper 001 §5, ``idl.train.robust_fit``): certified accuracy and seconds.

Table 1 (digits, the library's stratified split, inputs in [0, 1]): one ReLU implicit model
(``n = --hidden``, ``kappa = 0.5``, float64) per method, same initialisation and epochs:
standard training (:class:`idl.train.Trainer`), ``robust_fit`` with ``counterpart``, ``recourse``,
``lp`` (first-order path) and ``adversarial`` (PGD). Columns: clean accuracy and certified accuracy
at ``sigma_u = --sigma`` on the training and test splits, by the library's Thm 4.1 box
(``robust.certified_accuracy(method="box")``) and by the interval certificate of robust_fit
(``train.training_certificate``, valid for any ReLU model), and training seconds.

Table 2 (solver timings): one cvxpy model block vs one first-order epoch on a digits subset
(``n = 8``, ``m = 60``), and one first-order epoch at MNIST size (60000 x 784, ``n = 100``) when
MNIST is available and not ``--quick``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_robust_fit.py            # a few minutes
    .venv/bin/python benchmarks/bench_robust_fit.py --quick    # seconds

Writes ``bench_robust_fit.json`` / ``.md`` (``_quick`` with ``--quick``) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
from _common import atomic_write, config_of, cpu_model, git_commit, idlkit_data_dir

import idlkit as idl

HERE = Path(__file__).resolve().parent
F64 = torch.float64


def _model(p: int, n: int, q: int, seed: int) -> idl.ImplicitModel:
    torch.manual_seed(seed)
    return idl.ImplicitModel(p, n, q, kappa=0.5, dtype=F64)


def _row(name: str, model: idl.ImplicitModel, data: dict, sigma: float, seconds: float) -> dict:
    out = {"method": name, "seconds": round(seconds, 2)}
    for split in ("train", "test"):
        U, Y = data[split]
        box = idl.robust.certified_accuracy(model, U, Y, sigma, method="box")
        cert = idl.train.training_certificate(model, U, Y, sigma)
        out[f"{split}_clean"] = round(box.accuracy, 4)
        out[f"{split}_box"] = round(box.certified, 4)
        out[f"{split}_interval"] = round(cert.certified, 4)
    return out


def table1(args: argparse.Namespace) -> list[dict]:
    ds = idl.datasets.load("digits", dtype="float64")
    data = {"train": (torch.tensor(ds.x_train, dtype=F64), torch.tensor(ds.y_train)),
            "test": (torch.tensor(ds.x_test, dtype=F64), torch.tensor(ds.y_test))}
    if args.quick:
        data = {k: (U[:200], Y[:200]) for k, (U, Y) in data.items()}
    U, Y = data["train"]
    p, q, n, ep, s = U.shape[1], 10, args.hidden, args.epochs, args.sigma
    rows = []
    m = _model(p, n, q, 0)
    t = time.perf_counter()
    idl.train.Trainer(epochs=ep, lr=1e-2, batch_size=64).fit(m, (U, Y))
    rows.append(_row("Trainer (standard)", m, data, s, time.perf_counter() - t))
    for method in ("counterpart", "recourse", "lp"):
        m = _model(p, n, q, 0)
        res = idl.train.robust_fit(m, (U, Y), s, method, solver="first_order", epochs=ep, batch_size=64,
                                   lr=1e-2)
        assert res.certificate_holds
        rows.append(_row(f"robust_fit {method}", m, data, s, res.seconds))
    m = _model(p, n, q, 0)
    res = idl.train.robust_fit(m, (U, Y), s, "adversarial", epochs=ep, batch_size=64, lr=1e-2)
    rows.append(_row("robust_fit adversarial (PGD)", m, data, s, res.seconds))
    return rows


def table2(args: argparse.Namespace) -> list[dict]:
    from idlkit.train import robust_convex as rc

    ds = idl.datasets.load("digits", dtype="float64")
    k, n = (20, 4) if args.quick else (60, 8)
    U, Y = torch.tensor(ds.x_train[:k], dtype=F64), torch.tensor(ds.y_train[:k])
    s = torch.full((64,), args.sigma, dtype=F64)
    rows = []
    m = _model(64, n, 10, 0)
    st = rc.interval_states(m, U, s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        rc.model_step_cvx(m, U, Y, s, st, kappa=0.5, weight_decay=1e-4, prox=1e-2)
    secs = round(time.perf_counter() - t, 3)
    rows.append({"what": f"cvxpy model block, digits m={k} n={n}", "seconds": secs})
    m = _model(64, n, 10, 0)
    res = idl.train.robust_fit(m, (U, Y), args.sigma, "counterpart", solver="first_order", epochs=1)
    secs = round(res.history[0].seconds, 3)
    rows.append({"what": f"first-order epoch, digits m={k} n={n}", "seconds": secs})
    if not args.quick and idlkit_data_dir():
        try:
            mn = idl.datasets.load("mnist", split="train", dtype="float64")
        except Exception as exc:  # noqa: BLE001 - the table says why the row is missing
            rows.append({"what": f"MNIST row skipped ({type(exc).__name__})", "seconds": float("nan")})
        else:
            U, Y = torch.tensor(mn.x_train, dtype=F64), torch.tensor(mn.y_train)
            m = _model(784, 100, 10, 0)
            res = idl.train.robust_fit(m, (U, Y), 0.01, "counterpart", solver="first_order", epochs=1,
                                       batch_size=256, lr=1e-2)
            rows.append({"what": "first-order epoch, MNIST 60000x784 n=100 (sigma 0.01)",
                         "seconds": round(res.history[0].seconds, 1),
                         "train_clean": round(res.history[0].clean_accuracy, 4),
                         "train_box": round(res.certified.certified, 4),
                         "train_interval": round(res.certificate.certified, 4)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sigma", type=float, default=0.03)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.hidden = 2, 8
    torch.set_num_threads(1)
    t1, t2 = table1(args), table2(args)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
            "cpu": cpu_model(), "python": platform.python_version(), "torch": torch.__version__,
            "config": config_of(args)}
    name = "bench_robust_fit" + ("_quick" if args.quick else "")
    atomic_write(args.out / f"{name}.json", json.dumps({"meta": meta, "certified": t1, "timings": t2},
                                                       indent=2, default=str))
    cols = ["method", "train_clean", "train_box", "train_interval", "test_clean", "test_box",
            "test_interval", "seconds"]
    lines = [f"# robust_fit on digits, sigma_u = {args.sigma} (n = {args.hidden}, {args.epochs} epochs)", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in t1]
    lines += ["", "# solver timings", "", "| what | seconds | details |", "|---|---|---|"]
    for r in t2:
        details = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("what", "seconds"))
        lines.append(f"| {r['what']} | {r['seconds']} | {details} |")
    lines += ["", f"commit {meta['commit']}, {meta['cpu']}, torch {meta['torch']}, {meta['date']}"]
    text = "\n".join(lines) + "\n"
    atomic_write(args.out / f"{name}.md", text)
    print(json.dumps({"certified": t1, "timings": t2}, default=str))
    print(text)


if __name__ == "__main__":
    main()
