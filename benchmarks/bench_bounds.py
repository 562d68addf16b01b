#!/usr/bin/env python
"""Certified output bounds of converted ReLU nets: mean interval widths and seconds per input.

Rows (issue 21): random 20-50-50-10 at eps 0.01 and 0.1, random 784-100-50-10 at eps 0.01, a
64-64-32-10 net trained a few seconds on digits (``idlkit.datasets.load("digits")``, inputs in
[0, 1]) at eps 0.1, all converted exactly by :func:`idlkit.convert.from_torch` (triangular ``A``),
float64; a general non-triangular ReLU implicit model (random ``A`` with ``||A||_inf = 0.9``);
optionally (``--resnet``) the CIFAR ResNet-20 conversion, IBP only (the dense linear bounds do not
fit its state size).

Columns: ``idl.robust.output_bounds`` with ``method`` = ``box`` (Thm 4.1-4.4), ``ibp``, ``lp``
(``lp_state_bounds`` defaults, then ``2 q`` output LPs; on the first ``--lp-inputs`` inputs only,
compared on those inputs in a separate table), ``crown``, ``alpha-crown`` (20 projected Adam steps
on all levels), ``best`` (no budget: box, IBP, CROWN, alpha-CROWN), ``best+lp`` (``best`` with
``time_budget = --best-budget`` seconds per input, which adds the LP on ReLU nets), ``crown-ibp``;
and an independent dense reference CROWN written here layer by layer (the ratio ``crown / ref``
must be 1). Widths are the mean of ``upper - lower`` over the inputs and outputs; times are
seconds per input (batched where the method batches).

Reference numbers (issue 21, auto_LiRPA 0.3 on *its own* random nets, so only ratios compare):
CROWN 0.00683 / 0.125 / 0.0832 / 56.7 and alpha-CROWN 0.00679 / 0.118 / 0.0822 / 50.9.

Run from the repository root::

    .venv/bin/python benchmarks/bench_bounds.py            # full run (a few minutes)
    .venv/bin/python benchmarks/bench_bounds.py --quick    # small inputs count, no LP on 784

Writes ``bench_bounds.json`` / ``bench_bounds.md`` (``_quick`` with ``--quick``) to ``--out``
(default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _common import atomic_write, config_of, cpu_model, git_commit
from torch import nn

import idlkit as idl

HERE = Path(__file__).resolve().parent
F64 = torch.float64
REF = {"20-50-50-10 eps 0.01": (0.00683, 0.00679), "20-50-50-10 eps 0.1": (0.125, 0.118),
       "784-100-50-10 eps 0.01": (0.0832, 0.0822), "digits 64-64-32-10 eps 0.1": (56.7, 50.9)}


def mlp(sizes: list[int], seed: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(F64)


def digits_net(epochs: int, seed: int) -> tuple[nn.Sequential, torch.Tensor, float]:
    """64-64-32-10 trained with Adam for ``epochs`` (a few seconds); returns the net, test inputs,
    test accuracy."""
    ds = idl.datasets.load("digits", as_torch=True)
    X, y = ds.x_train.to(F64), ds.y_train
    net = mlp([64, 64, 32, 10], seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        X, y = X[perm], y[perm]
        for i in range(0, len(X), 128):
            opt.zero_grad()
            nn.functional.cross_entropy(net(X[i:i + 128]), y[i:i + 128]).backward()
            opt.step()
    with torch.no_grad():
        acc = float((net(ds.x_test.to(F64)).argmax(1) == ds.y_test).double().mean())
    return net, ds.x_test.to(F64), acc


def ref_crown(net: nn.Sequential, u0: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent dense CROWN (Linear/ReLU), layer by layer, adaptive lower slope, chord upper."""
    Ws = [m.weight.detach().to(F64) for m in net if isinstance(m, nn.Linear)]
    bs = [m.bias.detach().to(F64) for m in net if isinstance(m, nn.Linear)]
    slopes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def bound(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for sign in (1.0, -1.0):
            lam, const = sign * Ws[k], sign * bs[k]
            for j in range(k - 1, -1, -1):
                dl, du, cu = slopes[j]
                pos, neg = lam.clamp(min=0), lam.clamp(max=0)
                const = const + pos @ cu
                lam = pos * du + neg * dl
                const = const + lam @ bs[j]
                lam = lam @ Ws[j]
            out.append(sign * (const + lam @ u0 + eps * lam.abs().sum(1)))
        return out[1], out[0]

    for k in range(len(Ws) - 1):
        l, h = bound(k)
        du = torch.where(h <= 0, 0.0, torch.where(l >= 0, 1.0, h / (h - l)))
        cu = torch.where((l < 0) & (h > 0), -l * h / (h - l), 0.0)
        dl = torch.where(h <= 0, 0.0, torch.where(l >= 0, 1.0, (h >= -l).to(F64)))
        slopes.append((dl, du, cu))
    return bound(len(Ws) - 1)


def measure(model: object, U: torch.Tensor, eps: float, methods: list[str], lp_inputs: int,
            budget: float = 0.0) -> dict:
    """Per method: mean width, seconds per input, the per-input mean widths. ``"best+lp"`` is
    ``method="best"`` with ``time_budget = budget`` seconds per input (adds the LP on ReLU nets)."""
    out: dict = {}
    for m in methods:
        X = U[:lp_inputs] if m == "lp" else U
        if m in ("lp", "best+lp") and lp_inputs == 0:
            out[m] = None
            continue
        t0 = time.perf_counter()
        if m == "best+lp":
            ob = idl.robust.output_bounds(model, X, eps, method="best", time_budget=budget * X.shape[0])
        else:
            ob = idl.robust.output_bounds(model, X, eps, method=m)
        sec = (time.perf_counter() - t0) / X.shape[0]
        out[m] = {"width": float(ob.width.mean()), "sec_per_input": sec, "method": ob.method,
                  "inputs": int(X.shape[0]), "per_input": ob.width.mean(1).tolist()}
    return out


def row_ff(name: str, net: nn.Sequential, U: torch.Tensor, eps: float, args: argparse.Namespace,
           lp_inputs: int, extra: dict | None = None) -> dict:
    model = idl.convert.from_torch(net, U[:1])
    res = measure(model, U, eps, ["box", "ibp", "lp", "crown", "alpha-crown", "best", "best+lp", "crown-ibp"],
                  lp_inputs, args.best_budget)
    row = {"row": name, "eps": eps, "inputs": int(U.shape[0]), "n": int(model.A.shape[0]), **res,
           "best_over_alpha": res["best"]["width"] / res["alpha-crown"]["width"]}
    if all(isinstance(m, nn.Linear | nn.ReLU) for m in net):  # the reference is for Linear/ReLU nets
        t0 = time.perf_counter()
        widths = [ref_crown(net, u, eps) for u in U]
        tref = (time.perf_counter() - t0) / U.shape[0]
        wref = float(np.mean([float((h - l).mean()) for l, h in widths]))
        row["ref_crown"] = {"width": wref, "sec_per_input": tref}
        row["crown_over_ref"] = res["crown"]["width"] / wref
    if res.get("lp"):  # LP ran on the first lp_inputs inputs only: compare there
        k = res["lp"]["inputs"]
        row["on_lp_inputs"] = {m: float(np.mean(res[m]["per_input"][:k]))
                               for m in ("lp", "crown", "alpha-crown", "best", "best+lp") if res.get(m)}
    if name in REF:
        c, a = REF[name]
        row["auto_lirpa_issue"] = {"crown": c, "alpha_crown": a, "alpha_over_crown": a / c}
    row["alpha_over_crown"] = res["alpha-crown"]["width"] / res["crown"]["width"]
    if extra:
        row.update(extra)
    return row


def row_general(args: argparse.Namespace) -> dict:
    g = torch.Generator().manual_seed(0)
    n, p, q = (30, 10, 5) if args.quick else (60, 20, 10)
    A = torch.randn(n, n, generator=g, dtype=F64)
    A = 0.9 * A / A.abs().sum(1).max()
    model = idl.ImplicitModel.from_matrices(A, torch.randn(n, p, generator=g, dtype=F64) / p ** 0.5,
                                            torch.randn(q, n, generator=g, dtype=F64),
                                            torch.randn(q, p, generator=g, dtype=F64),
                                            b=0.1 * torch.randn(n, generator=g, dtype=F64), activation="relu",
                                            tol=1e-12, solver="picard", max_iter=5000)
    U = torch.randn(args.inputs_general, p, generator=g, dtype=F64)
    eps = 0.1
    res = measure(model, U, eps, ["box", "lp", "crown", "alpha-crown", "best", "best+lp"],
                  args.inputs_general, args.best_budget)
    return {"row": f"general implicit ReLU n={n} p={p} q={q}, ||A||_inf=0.9", "eps": eps,
            "inputs": int(U.shape[0]), "n": n, **res, "ibp": None}


def row_resnet(args: argparse.Namespace) -> dict:
    """ResNet-20 (random weights, eval mode) converted exactly (sparse, n = 188416): IBP and
    CROWN-IBP (one backward pass on the sparse matrices) for one input; the dense linear bounds do
    not fit this n."""
    from idlkit.convert import resnet20

    torch.manual_seed(0)
    net = resnet20().eval().to(F64)
    u = torch.rand(1, 3, 32, 32, dtype=F64)
    t0 = time.perf_counter()
    model = idl.convert.from_torch(net, u)
    tconv = time.perf_counter() - t0
    eps = 1 / 255
    res, obs = {}, {}
    for m in ("ibp", "crown-ibp"):
        t0 = time.perf_counter()
        obs[m] = ob = idl.robust.output_bounds(model, u.reshape(1, -1), eps, method=m)
        res[m] = {"width": float(ob.width.mean()), "sec_per_input": time.perf_counter() - t0, "method": m,
                  "inputs": 1}
    with torch.no_grad():
        Y = net(u + eps * (2 * torch.rand(64, 3, 32, 32, dtype=F64) - 1))
    ok = all(bool(((Y >= ob.lower) & (Y <= ob.upper)).all()) for ob in obs.values())
    return {"row": "ResNet-20 (random weights) eps 1/255", "eps": eps, "inputs": 1,
            "n": int(model.A.shape[0]), "convert_s": tconv, **res, "64_samples_inside": ok,
            "note": "dense CROWN / alpha-CROWN do not fit n = 188416; CROWN-IBP runs on the sparse matrices"}


def markdown(meta: dict, rows: list[dict]) -> str:
    cols = ["box", "ibp", "lp", "crown", "alpha-crown", "best", "best+lp", "crown-ibp"]
    f = lambda r, c: "-" if r.get(c) is None else f"{r[c]['width']:.4g}"  # noqa: E731
    t = lambda r, c: "-" if r.get(c) is None else f"{r[c]['sec_per_input']:.3g}"  # noqa: E731
    out = [f"# bench_bounds ({'quick' if meta['quick'] else 'full'})", "",
           f"CPU: {meta['cpu']}, threads {meta['threads']}, torch {meta['torch']}, commit {meta['commit']}, "
           f"{meta['date']}", "",
           "Mean output interval width (float64, `idl.robust.output_bounds`); seconds per input in the "
           "second table. Triangular rows: converted `nn.Sequential` nets (ReLU unless named). LP: ReLU only "
           "(and not run on 784-100-50-10 with --quick).", "",
           "| row | n | " + " | ".join(cols) + " | ref CROWN | CROWN/ref | alpha/CROWN | best/alpha |",
           "|---|---|" + "---|" * (len(cols) + 4)]
    for r in rows:
        ref = r.get("ref_crown")
        refs = f"{ref['width']:.4g} | {r['crown_over_ref']:.12f}" if ref else "- | -"
        ratios = (f"{r['alpha_over_crown']:.4f} | {r['best_over_alpha']:.4f}" if "alpha_over_crown" in r
                  else "- | -")
        cells = " | ".join(f(r, c) for c in cols)
        out.append(f"| {r['row']} | {r['n']} | {cells} | {refs} | {ratios} |")
    out += ["", "| row | " + " | ".join(cols) + " | ref CROWN |", "|---|" + "---|" * (len(cols) + 1)]
    for r in rows:
        ref = r.get("ref_crown")
        out.append(f"| {r['row']} | " + " | ".join(t(r, c) for c in cols) + " | "
                   + (f"{ref['sec_per_input']:.3g} |" if ref else "- |"))
    sub = [r for r in rows if "on_lp_inputs" in r]
    if sub:
        out += ["", "On the inputs the LP column ran on (the first `--lp-inputs`), mean width:", "",
                "| row | LP | CROWN | alpha-CROWN | best | best+lp |", "|---|---|---|---|---|---|"]
        for r in sub:
            o = r["on_lp_inputs"]
            cells = " | ".join(f"{o[m]:.4g}" if m in o else "-"
                               for m in ("lp", "crown", "alpha-crown", "best", "best+lp"))
            out.append(f"| {r['row']} | {cells} |")
    if any("auto_lirpa" in r for r in rows):
        out += ["", "Side by side with auto_LiRPA on the same nets and inputs (ours float64, auto_LiRPA "
                "float32):", "",
                "| row | auto_LiRPA CROWN | ours CROWN | ours/auto_LiRPA | auto_LiRPA alpha-CROWN | "
                "ours alpha | ours/auto_LiRPA | s/input auto_LiRPA CROWN, alpha |",
                "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "auto_lirpa" not in r:
                continue
            a = r["auto_lirpa"]
            c, ca = r["crown"]["width"], a["crown"]["width"]
            al, aa = r["alpha-crown"]["width"], a["alpha-crown"]["width"]
            out.append(f"| {r['row']} | {ca:.6g} | {c:.6g} | {c / ca:.10f} | {aa:.6g} | {al:.6g} | "
                       f"{al / aa:.4f} | {a['crown']['sec_per_input']:.3g}, "
                       f"{a['alpha-crown']['sec_per_input']:.3g} |")
    out += ["", "auto_LiRPA 0.3 numbers quoted in issue 21 (their own random nets / training, so only the "
            "alpha/CROWN ratio is comparable):", "",
            "| row | CROWN | alpha-CROWN | alpha/CROWN |", "|---|---|---|---|"]
    for r in rows:
        if "auto_lirpa_issue" in r:
            a = r["auto_lirpa_issue"]
            out.append(f"| {r['row']} | {a['crown']} | {a['alpha_crown']} | {a['alpha_over_crown']:.4f} |")
    out += ["", meta.get("notes", ""), ""]
    return "\n".join(out)


def cases(args: argparse.Namespace) -> list[tuple[str, nn.Sequential, torch.Tensor, float, int, dict]]:
    """The feed-forward rows: ``(name, net, inputs, eps, lp_inputs, extra)``, deterministic (also
    rebuilt by ``bench_bounds_lirpa.py`` to run auto_LiRPA on the same nets and inputs)."""
    out = []
    g = torch.Generator().manual_seed(1)
    small = mlp([20, 50, 50, 10], seed=0)
    U = torch.randn(args.inputs, 20, generator=g, dtype=F64)
    for eps in (0.01, 0.1):
        out.append((f"20-50-50-10 eps {eps}", small, U, eps, args.lp_inputs, {}))
    big = mlp([784, 100, 50, 10], seed=0)
    Ub = torch.rand(args.inputs, 784, generator=g, dtype=F64)
    out.append(("784-100-50-10 eps 0.01", big, Ub, 0.01, 0 if args.quick else args.lp_inputs, {}))
    t0 = time.perf_counter()
    dnet, Xt, acc = digits_net(args.train_epochs, seed=0)
    t_train = time.perf_counter() - t0
    out.append(("digits 64-64-32-10 eps 0.1", dnet, Xt[:args.inputs], 0.1, args.lp_inputs,
                {"test_accuracy": acc, "train_seconds": t_train}))
    tanh = mlp([20, 50, 50, 10], seed=0, act=nn.Tanh)
    out.append(("tanh 20-50-50-10 eps 0.1", tanh, U, 0.1, 0, {}))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=20, help="inputs per row (CROWN, IBP, box, best)")
    ap.add_argument("--lp-inputs", type=int, default=3, help="inputs per row for the LP column")
    ap.add_argument("--inputs-general", type=int, default=3)
    ap.add_argument("--best-budget", type=float, default=3.0,
                    help="seconds per input of the best+lp column (best with a time_budget: adds the LP)")
    ap.add_argument("--train-epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resnet", action="store_true", help="add the ResNet-20 IBP row")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if args.quick:
        args.inputs, args.lp_inputs, args.inputs_general, args.train_epochs = 2, 1, 1, 5
        args.best_budget = 0.5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
            "python": platform.python_version(), "commit": git_commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
            "config": config_of(args),
            "notes": "auto_LiRPA was not run side by side (see the closing note of issue 21): the "
                     "reference CROWN column is an independent implementation in this script."}
    rows: list[dict] = []
    for name, net, U, eps, lp_inputs, extra in cases(args):
        rows.append(row_ff(name, net, U, eps, args, lp_inputs, extra))
    rows.append(row_general(args))
    if args.resnet:
        rows.append(row_resnet(args))
    stem = "bench_bounds_quick" if args.quick else "bench_bounds"
    lirpa = args.out / f"{stem}_lirpa.json"
    if lirpa.exists():  # written by bench_bounds_lirpa.py (auto_LiRPA in its own venv), same nets
        lr = {r["row"]: r for r in json.loads(lirpa.read_text())["rows"]}
        meta["lirpa"] = json.loads(lirpa.read_text())["meta"]
        meta["notes"] = ("auto_LiRPA columns: bench_bounds_lirpa.py on the same nets and inputs "
                         f"(auto_LiRPA {meta['lirpa'].get('auto_lirpa')}, see its meta).")
        for r in rows:
            if r["row"] in lr:
                r["auto_lirpa"] = lr[r["row"]]
    atomic_write(args.out / f"{stem}.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = markdown(meta, rows)
    atomic_write(args.out / f"{stem}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
