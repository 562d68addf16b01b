"""Benchmark: LP attack per sample (Thm 4.5) and SDP relaxation (eq. 4.19) timings.

Random well-posed ReLU models stand in for the MNIST model (same input size p = 784) until the
trained model is wired in. Usage: ``python benchmarks/bench_robust_lp.py [--quick]``; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from idlkit.model import ImplicitModel
from idlkit.robust import lp_attack, sdp_attack


def _model(n: int, p: int, seed: int = 0) -> ImplicitModel:
    torch.manual_seed(seed)
    return ImplicitModel(p, n, 10, dtype=torch.float64, kappa=0.9, tol=1e-10, solver="picard",
                         max_iter=10_000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"lp": [], "sdp": []}
    for n in ([100] if args.quick else [100, 500]):
        m = _model(n, 784)
        u0 = torch.rand(784, dtype=torch.float64)
        for k in (None, 40):
            t = time.perf_counter()
            r = lp_attack(m, u0, 0.1, k, clip=(0.0, 1.0))
            out["lp"].append({"n": n, "p": 784, "k": k, "seconds": time.perf_counter() - t,
                              "bound": r.bound, "value": r.value, "n_lp": r.extra["n_lp"]})
    for n in (20, 50):
        m = _model(n, 10)
        u0 = torch.rand(10, dtype=torch.float64)
        t = time.perf_counter()
        r = sdp_attack(m, u0, 0.1)
        out["sdp"].append({"n": n, "p": 10, "seconds": time.perf_counter() - t, "bound": r.bound,
                           "value_u": r.extra["value_u"], "value_rank1": r.extra["value_rank1"],
                           "solver": r.extra["solver"]})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
