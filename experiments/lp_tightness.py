"""LP output bounds before/after the issue-21 tightening (paper 000 §4.5, Thm 4.5).

Mean output interval width ``mean_j (upper_j - lower_j)`` of the LP relaxation of Thm 4.5 for
``y_j = C_j x + D_j u + d_j`` (one LP per bound over the relaxed set of
:class:`idlkit.robust.lp.LPProblem`), with the default state box ("LP default") and after
``lp_state_bounds(rounds=depth)`` ("LP tighten=depth"), plus IBP for reference, on:

* a converted random ReLU net 20-50-50-10 (torch default init, seed 0), ``u0 ~ U[0, 1]^20``,
  eps 0.01 and 0.1;
* a 64-64-32-10 ReLU net trained briefly (30 epochs of Adam) on scikit-learn's digits
  (``idlkit.datasets.load("digits")``, inputs / 16), eps 0.1;
* the LP time of a 784-100-50-10 net (random, one input) with ``tighten=depth``.

Averaged over ``--inputs`` nominal inputs (default 3). Works with the code before and after the
change (it only uses ``LPProblem.build``/``maximize`` and ``lp_state_bounds``), so running it on
both commits gives the before/after figures:

    PYTHONPATH=src .venv/bin/python experiments/lp_tightness.py [--inputs 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import numpy as np
import torch

import idlkit
import idlkit.robust as R
from idlkit.convert import from_torch
from idlkit.robust.lp import LPProblem


def mlp(widths: tuple[int, ...], seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=False):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).double()


def digits_net() -> tuple[torch.nn.Sequential, np.ndarray]:
    d = idlkit.datasets.load("digits")
    X = torch.as_tensor(np.asarray(d.x_train, dtype=np.float64) / 16.0)
    Y = torch.as_tensor(np.asarray(d.y_train), dtype=torch.long)
    net = mlp((64, 64, 32, 10), 0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        for i in range(0, X.shape[0], 128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(X[i:i + 128]), Y[i:i + 128]).backward()
            opt.step()
    Xt = torch.as_tensor(np.asarray(d.x_test, dtype=np.float64) / 16.0)
    acc = float((net(Xt).argmax(1).numpy() == d.y_test).mean())
    print(f"digits 64-64-32-10: test accuracy {acc:.3f}", flush=True)
    return net, np.asarray(d.x_test[:16], dtype=np.float64) / 16.0


def lp_output_width(model: torch.nn.Module, u0: np.ndarray, eps: float, tighten: int) -> tuple[float, int]:
    p = model.in_features
    sig = np.full(p, eps)
    kw: dict = {}
    n_lp = 0
    if tighten:
        sb = R.lp_state_bounds(model, torch.as_tensor(u0), eps, rounds=tighten)
        kw["x_bounds"] = (sb.lower.numpy(), sb.upper.numpy())
        n_lp += sb.n_lp
        if "z_bounds" in inspect.signature(LPProblem.build).parameters and sb.z_lower is not None:
            kw["z_bounds"] = (sb.z_lower.numpy(), sb.z_upper.numpy())
    prob = LPProblem.build(model, u0, sig, None, None, "hull", True, **kw)
    C = model.C.detach().to(torch.float64).to_dense().numpy()
    D = model.D.detach().to(torch.float64).to_dense().numpy()
    widths = []
    for j in range(C.shape[0]):
        hi = prob.maximize(C[j], D[j])[0]
        lo = -prob.maximize(-C[j], -D[j])[0]
        n_lp += 2
        widths.append(hi - lo)  # the bias d_j cancels
    return float(np.mean(widths)), n_lp


def depth_of(model: torch.nn.Module) -> int:
    from idlkit.robust.ibp import _depth
    return _depth(model.A, (1,) * model.hidden)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    rand = mlp((20, 50, 50, 10), 0)
    dig, Xd = digits_net()
    cases = [("random 20-50-50-10", rand, 0.01, rng.uniform(0, 1, (args.inputs, 20))),
             ("random 20-50-50-10", rand, 0.1, rng.uniform(0, 1, (args.inputs, 20))),
             ("digits 64-64-32-10", dig, 0.1, Xd[:args.inputs])]
    for name, net, eps, U in cases:
        model = from_torch(net, torch.zeros(1, net[0].in_features, dtype=torch.float64))
        dep = depth_of(model)
        res: dict = {"net": name, "eps": eps, "depth": dep}
        for label, t in (("lp_default", 0), ("lp_tighten_depth", dep)):
            ws, secs, nl = [], [], []
            for u0 in U:
                t0 = time.perf_counter()
                w, k = lp_output_width(model, u0, eps, t)
                secs.append(time.perf_counter() - t0)
                ws.append(w)
                nl.append(k)
            res[label] = float(np.mean(ws))
            res[label + "_seconds"] = float(np.mean(secs))
            res[label + "_n_lp"] = float(np.mean(nl))
        ib = R.interval_bounds(model, torch.as_tensor(U), eps)
        res["ibp"] = float((ib.y_upper - ib.y_lower).mean())
        print(json.dumps(res), flush=True)
        rows.append(res)
    big = mlp((784, 100, 50, 10), 1)
    model = from_torch(big, torch.zeros(1, 784, dtype=torch.float64))
    u0 = rng.uniform(0, 1, 784)
    t0 = time.perf_counter()
    w, k = lp_output_width(model, u0, 0.01, depth_of(model))
    big_row = {"net": "random 784-100-50-10", "eps": 0.01, "lp_tighten_depth": w, "n_lp": k,
               "seconds": time.perf_counter() - t0}
    print(json.dumps(big_row), flush=True)
    rows.append(big_row)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
