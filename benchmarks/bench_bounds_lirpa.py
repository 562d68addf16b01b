#!/usr/bin/env python
"""auto_LiRPA on the feed-forward rows of ``bench_bounds.py`` (same nets, same inputs), for the
side-by-side columns of ``bench_bounds.md``. Runs in a separate environment that has auto_LiRPA
(it is not an idlkit dependency), e.g.::

    python -m venv /tmp/lirpa && /tmp/lirpa/bin/pip install --no-deps auto_LiRPA
    PYTHONPATH=<shim>:<idlkit venv site-packages>:src /tmp/lirpa/bin/python benchmarks/bench_bounds_lirpa.py

auto_LiRPA 0.3 needs small shims under torch 2.13 / numpy 2 (``numpy.lib.arraysetops.isin``,
``torch.onnx.symbolic_helper._set_opset_version`` as a no-op, ``torch._C.Node.__getitem__`` by
attribute kind, and stand-ins for ``appdirs``/``tqdm``); they change no arithmetic. Methods:
``compute_bounds(method="CROWN")`` and ``method="alpha-CROWN"`` with auto_LiRPA's defaults, in
float32 (its alpha-CROWN fails on float64 modules: a dtype mismatch inside ``_get_optimized_bounds``)
and with ``sparse_features_alpha=False, sparse_spec_alpha=False`` (with them 0.3 stops on an
assertion in ``_backward_relaxation`` on these nets; the bound is the same, only memory differs).
Writes ``bench_bounds_lirpa.json`` (``_quick`` with ``--quick``) next to the other results.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from datetime import datetime, timezone

import torch
from _common import atomic_write, cpu_model, git_commit
from bench_bounds import cases, parse_args


def main(argv: list[str] | None = None) -> int:
    import auto_LiRPA
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name, net, U, eps, _, _ in cases(args):
        net, U = net.float(), U.float()  # auto_LiRPA 0.3's alpha-CROWN fails in float64 (a dtype bug)
        # sparse alphas off: with them 0.3 trips an assertion on layers without unstable units
        bm = BoundedModule(net, U[:1], device="cpu",
                           bound_opts={"sparse_features_alpha": False, "sparse_spec_alpha": False})
        row = {"row": name}
        for method, key in (("CROWN", "crown"), ("alpha-CROWN", "alpha-crown")):
            t0 = time.perf_counter()
            lb, ub = bm.compute_bounds(x=(BoundedTensor(U, PerturbationLpNorm(norm=float("inf"), eps=eps)),),
                                       method=method)
            sec = (time.perf_counter() - t0) / U.shape[0]
            row[key] = {"width": float((ub - lb).detach().mean()), "sec_per_input": sec}
        rows.append(row)
        print(row, flush=True)
    meta = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
            "auto_lirpa": getattr(auto_LiRPA, "__version__", "?"), "python": platform.python_version(),
            "commit": git_commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "quick": args.quick}
    stem = "bench_bounds_quick" if args.quick else "bench_bounds"
    atomic_write(args.out / f"{stem}_lirpa.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
