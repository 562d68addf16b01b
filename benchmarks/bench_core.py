#!/usr/bin/env python
"""Speed benchmark of idlkit's core implicit model against torchidl.

Three sections (``--sections compare scaling targets``, default all):

- **compare**: forward + backward (implicit gradients) of ``y = C x + D u``,
  ``x = relu(A x + B u)`` for idlkit's ``ImplicitModel`` (``solver="picard"``, picard with
  a picard adjoint, ``solver="anderson"``, the default) and torchidl's ``ImplicitModel``,
  all holding the same ``A, B, C, D`` and fed the same data and loss, on a hard
  well-posed model: ``A >= 0`` with every row summing to ``kappa`` (so
  ``||A||_inf = kappa``, Picard contracts at a rate close to ``kappa``), in float32 and
  float64. Every idlkit method runs with the adjoint stopped at the *absolute* tolerance
  torchidl's ``grad_tol`` uses (equal tolerance) and, as extra rows, with idlkit's
  relative rule (``[rel bwd]``).
- **scaling**: idlkit's default model (Anderson) and torchidl beside it for
  n = 100 ... 4000 and batch 16 ... 1024 at kappa 0.95: time of forward + backward, the
  bytes the autograd graph keeps for backward (``saved_tensors_hooks``; App. G claims
  O(n^2 + n batch), no solver iterate stored) and the peak RSS rise of forward + backward.
- **targets**: the rows of issue 14's table with their goals (PASS/MISS).

Run from the repository root::

    .venv/bin/python benchmarks/bench_core.py            # full run (~30 min on 2 cores)
    .venv/bin/python benchmarks/bench_core.py --quick    # smoke run (< 1 min)

Writes ``bench_core.json`` and ``bench_core.md`` (``bench_core_quick.*`` with
``--quick``) to ``--out`` (default ``benchmarks/results``) and prints the tables.
See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import types
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import (
    atomic_write,
    cpu_model,
    git_commit,
    has_backward_stop,
    idlkit_data_dir,
    load_torchidl,
    loadavg_1min,
)

import idlkit as idl

HERE = Path(__file__).resolve().parent
DTYPES = {"float32": torch.float32, "float64": torch.float64}
IDL_METHODS = ("idlkit-picard", "idlkit-picard-bwdpicard", "idlkit-anderson")
METHODS = (*IDL_METHODS, "torchidl")
DEFAULT_METHODS = METHODS
STOPS = ("absolute", "relative")
SECTIONS = ("compare", "scaling", "targets")
REFERENCE = "idlkit-anderson"  # the idlkit default, denominator of the torchidl ratio
HAS_STOP = has_backward_stop()  # the library takes backward_stop="absolute" (issue 14)


# ----------------------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                    help="default: all (compare scaling targets)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="compare: hidden sizes n (default 100 300 1000; --quick: 50)")
    ap.add_argument("--kappas", type=float, nargs="+", default=None,
                    help="compare: row sums of A (default 0.5 0.95 0.99; --quick: 0.95)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per cell after one warm-up (default 5; --quick: 2)")
    ap.add_argument("--batch", type=int, default=None,
                    help="compare: batch size (default 256; --quick: 32)")
    ap.add_argument("--p", type=int, default=784, help="input features (default 784)")
    ap.add_argument("--q", type=int, default=10, help="output features / classes (default 10)")
    ap.add_argument("--tol", type=float, default=1e-6,
                    help="forward tolerance, both libraries (default 1e-6): absolute l_inf "
                         "residual; also idlkit's *relative* adjoint tolerance of the "
                         "[rel bwd] rows")
    ap.add_argument("--grad-tol", type=float, default=None,
                    help="absolute adjoint tolerance (default: --tol): torchidl's grad_tol and "
                         "idlkit's backward_tol with backward_stop='absolute' (equal tolerance)")
    ap.add_argument("--stops", nargs="+", choices=STOPS, default=list(STOPS),
                    help="compare: idlkit adjoint stopping rules to run (default both; "
                         "'absolute' = equal tolerance with torchidl, 'relative' = idlkit's "
                         "default rule, rows labelled [rel bwd])")
    ap.add_argument("--max-iter", type=int, default=2000,
                    help="iteration cap, forward and backward, every method (default 2000)")
    ap.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None,
                    help="compare and scaling dtypes (default float32 float64)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="shorthand for --dtypes with one dtype")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for compare and scaling (default: the CPUs this "
                         "process may use)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS),
                    help="compare: default all; 'idlkit-picard-bwdpicard' is idlkit picard with "
                         "a picard adjoint solve, the same algorithm as torchidl")
    ap.add_argument("--cell-budget", type=float, default=20.0,
                    help="seconds (default 20): when the warm-up of a method takes longer than "
                         "this / repeats, fewer timed runs are made (at least 1; 0 when the "
                         "warm-up alone is longer than the budget, and the warm-up is reported)")
    ap.add_argument("--scaling-sizes", type=int, nargs="+", default=None,
                    help="scaling: n (default 100 300 1000 2000 4000; --quick: 50 100)")
    ap.add_argument("--scaling-batches", type=int, nargs="+", default=None,
                    help="scaling: batch sizes (default 16 64 256 1024; --quick: 16 64)")
    ap.add_argument("--scaling-kappa", type=float, default=0.95, help="scaling: kappa (0.95)")
    ap.add_argument("--scaling-budget", type=float, default=None,
                    help="scaling: seconds per library and cell (default 15; --quick: 3); a cell "
                         "whose predicted time (the last finished cell's, scaled by "
                         "(n^2 + n p) batch) exceeds it is skipped and marked")
    ap.add_argument("--scaling-total", type=float, default=None,
                    help="scaling: seconds for the whole section (default 780; --quick: 6); "
                         "cells after it are skipped and marked")
    ap.add_argument("--target-threads", type=int, default=2,
                    help="targets: torch threads (default 2, as the issue's table)")
    ap.add_argument("--tiny-steps", type=int, default=None,
                    help="targets: timed training steps of the tiny model (default 2000; "
                         "--quick: 200)")
    ap.add_argument("--mnist-steps", type=int, default=None,
                    help="targets: MNIST training steps per library, in blocks of 100 "
                         "alternating between the libraries (default 300; --quick: 10)")
    ap.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    ap.add_argument("--out", type=Path, default=HERE / "results",
                    help="output directory (default benchmarks/results)")
    args = ap.parse_args(argv)
    quick = args.quick
    if args.dtypes is None:
        args.dtypes = [args.dtype] if args.dtype else ["float32", "float64"]
    if args.grad_tol is None:
        args.grad_tol = args.tol
    if args.sizes is None:
        args.sizes = [50] if quick else [100, 300, 1000]
    if args.kappas is None:
        args.kappas = [0.95] if quick else [0.5, 0.95, 0.99]
    if args.repeats is None:
        args.repeats = 2 if quick else 5
    if args.batch is None:
        args.batch = 32 if quick else 256
    if args.scaling_sizes is None:
        args.scaling_sizes = [50, 100] if quick else [100, 300, 1000, 2000, 4000]
    if args.scaling_batches is None:
        args.scaling_batches = [16, 64] if quick else [16, 64, 256, 1024]
    if args.scaling_budget is None:
        args.scaling_budget = 3.0 if quick else 15.0
    if args.scaling_total is None:
        args.scaling_total = 6.0 if quick else 780.0
    if args.tiny_steps is None:
        args.tiny_steps = 200 if quick else 2000
    if args.mnist_steps is None:
        args.mnist_steps = 10 if quick else 300
    for k in [*args.kappas, args.scaling_kappa]:
        if not 0 < k < 1:
            ap.error(f"kappa must lie in (0, 1), got {k}")
    if args.repeats < 1 or args.batch < 1 or min(args.sizes) < 1:
        ap.error("--repeats, --batch and --sizes must be positive")
    if args.tol <= 0 or args.grad_tol <= 0:
        ap.error("--tol and --grad-tol must be positive")
    return args


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def idlkit_source_hash() -> str | None:
    """sha256 (first 12 hex digits) of idlkit's imported source files: identifies the code
    measured when the working tree differs from the commit."""
    import hashlib

    root = Path(idl.__file__).resolve().parent
    h = hashlib.sha256()
    files = sorted(root.rglob("*.py"))
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12] if files else None


def machine_info(torchidl_note: str) -> dict:
    par = torch.__config__.parallel_info().splitlines()
    backend = next((ln.split(":", 1)[1].strip() for ln in par if "parallel backend" in ln), None)

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "torch": torch.__version__,
        "idlkit": getattr(idl, "__version__", None),
        "idlkit_git_commit": git_commit(),
        "idlkit_source_sha256": idlkit_source_hash(),
        "idlkit_has_backward_stop": HAS_STOP,
        "torchidl": version("torchidl"),
        "torchidl_import": torchidl_note,
        "numpy": version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "parallel_backend": backend,
        "mkl": torch.backends.mkl.is_available(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ----------------------------------------------------------------------------- torchidl


class CountingTol:
    """A tolerance that counts how often torchidl's solver loop compares against it.

    torchidl's loops test ``if err < tol`` once per iteration and return neither
    the count nor anything else that gives it; a tensor's ``<`` against this
    object falls back to ``CountingTol.__gt__``, which counts and compares. The
    timed code is torchidl's own.
    """

    def __init__(self, value: float) -> None:
        self.value = float(value)
        self.count = 0

    def __gt__(self, err: object) -> bool:
        self.count += 1
        return bool(err < self.value)

    def __repr__(self) -> str:
        return f"{self.value:g}"


def torchidl_function(tf: types.ModuleType) -> type:
    """A fresh subclass of ``ImplicitFunctionInf`` that records each solve's result.

    A fresh class per model because torchidl keeps mitr/tol/kappa as class
    attributes (``set_parameters`` is a classmethod).
    """
    base = tf.ImplicitFunctionInf

    class Recorded(base):  # type: ignore[misc, valid-type]
        forward_record: dict | None = None
        backward_record: dict | None = None

        @classmethod
        def inn_pred(cls, A, Z, X, mitr, tol):  # noqa: N802 - torchidl's name
            tol.count = 0
            X, err, status = base.inn_pred.__func__(cls, A, Z, X, mitr, tol)
            cls.forward_record = _tidl_record(err, status, tol, mitr)
            return X, err, status

        @staticmethod
        def inn_pred_grad(AT, Z, DPhi, mitr, tol):
            tol.count = 0
            V, err, status = base.inn_pred_grad(AT, Z, DPhi, mitr, tol)
            Recorded.backward_record = _tidl_record(err, status, tol, mitr)
            return V, err, status

    return Recorded


def _tidl_record(err: object, status: str, tol: CountingTol, mitr: int) -> dict:
    converged = status == "converged"
    evaluations = tol.count
    # torchidl returns the iterate *before* the last evaluation when converged, so the
    # number of updates of the returned iterate is evaluations - 1 (idlkit's convention)
    return {"iterations": evaluations - 1 if converged else evaluations,
            "residual": float(err), "converged": converged, "status": status,
            "evaluations": evaluations, "max_iter": mitr, "tol": tol.value}


# ----------------------------------------------------------------------------- problem


def make_problem(n: int, kappa: float, batch: int, p: int, q: int, dtype: str, seed: int
                 ) -> dict:
    """Same A, B, C, D, u, labels for every method (generated in float64, then cast)."""
    seed = seed * 1_000_003 + n * 1009 + round(kappa * 10_000)
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    A = torch.rand(n, n, generator=g, dtype=f64)
    A = A / A.sum(dim=1, keepdim=True) * kappa  # A >= 0, every row sums to kappa
    B = torch.randn(n, p, generator=g, dtype=f64) / math.sqrt(p)  # (B u)_i ~ N(0, 1)
    C = torch.randn(q, n, generator=g, dtype=f64) / math.sqrt(n)
    D = torch.randn(q, p, generator=g, dtype=f64) / math.sqrt(p)
    u = torch.randn(batch, p, generator=g, dtype=f64)
    labels = torch.randint(0, q, (batch,), generator=g)
    dt = DTYPES[dtype]
    prob = {k: v.to(dt) for k, v in dict(A=A, B=B, C=C, D=D, u=u).items()}
    prob["labels"] = labels
    prob["seed"] = seed
    prob["dtype"] = dtype
    prob["inf_norm_A"] = float(prob["A"].abs().sum(dim=1).max())
    return prob


def stop_kwargs(stop: str, grad_tol: float) -> dict:
    """idlkit keyword arguments of an adjoint stopping rule (none on a library without
    ``backward_stop``: its only rule is the relative one; see :func:`calibrate_absolute`)."""
    if not HAS_STOP:
        return {}
    if stop == "absolute":
        return {"backward_stop": "absolute", "backward_tol": grad_tol}
    return {"backward_stop": "relative"}


def stop_name(stop: str) -> str:
    return "absolute (emulated)" if stop == "absolute" and not HAS_STOP else stop


def calibrate_absolute(model, grad_tol: float) -> float | None:
    """Emulate ``backward_stop="absolute"`` on a library without it, for a fixed batch.

    The relative rule stops at ``backward_tol * ||dL/dx||_inf``; the last backward solve's
    ``SolveInfo.tol`` gives that absolute value, hence ``||dL/dx||_inf``. Setting
    ``backward_tol = grad_tol / ||dL/dx||_inf`` then stops the next solves (same batch,
    same parameters, so the same ``dL/dx``) at the absolute ``grad_tol``. Returns
    ``||dL/dx||_inf``. Only for fixed-batch timings (not for training loops).
    """
    s = model.last_backward_solve
    rel = model.settings.backward_tol or model.settings.tol
    if s is None or not s.tol or not rel:
        return None
    gnorm = float(s.tol) / float(rel)
    model.settings = dataclasses.replace(model.settings, backward_tol=grad_tol / gnorm)
    return gnorm


def build(method: str, stop: str, prob: dict, kappa: float, cfg: types.SimpleNamespace, tidl):
    """``(model, solve_info_fn, calibrate)``; ``solve_info_fn()`` describes the last
    forward/backward; ``calibrate`` is the absolute adjoint tolerance to emulate (or None).
    """
    dt = DTYPES[prob["dtype"]]
    n, p, q = prob["A"].shape[0], prob["B"].shape[1], prob["C"].shape[0]
    calibrate = None
    if method.startswith("idlkit"):
        kw = stop_kwargs(stop, cfg.grad_tol)
        if method == "idlkit-picard-bwdpicard":
            kw["backward_solver"] = "picard"
        if stop == "absolute" and not HAS_STOP:
            calibrate = cfg.grad_tol
        model = idl.ImplicitModel(p, n, q, activation="relu", bias=False, wellposedness="inf",
                                  kappa=kappa, solver=method.split("-")[1], tol=cfg.tol,
                                  max_iter=cfg.max_iter, on_nonconvergence="ignore", dtype=dt,
                                  **kw)

        def info() -> dict:
            return {"forward": _idl_record(model.last_solve),
                    "backward": _idl_record(model.last_backward_solve)}
    else:
        tb, tf = tidl
        fn = torchidl_function(tf)
        # torchidl rescales A when ||A||_inf > its kappa: give it exactly ||A||_inf
        # (computed as torchidl does) so that it keeps A unchanged
        kap = max(kappa, float(torch.linalg.matrix_norm(prob["A"], ord=float("inf"))))
        model = tb.ImplicitModel(input_dim=p, output_dim=q, hidden_dim=n, f=fn, no_D=False,
                                 bias=False, mitr=cfg.max_iter, grad_mitr=cfg.max_iter,
                                 tol=CountingTol(cfg.tol), grad_tol=CountingTol(cfg.grad_tol),
                                 kappa=kap).to(dt)

        def info() -> dict:
            return {"forward": fn.forward_record, "backward": fn.backward_record}
    with torch.no_grad():
        for name in ("A", "B", "C", "D"):
            getattr(model, name).copy_(prob[name])
    return model, info, calibrate


def _idl_record(s) -> dict | None:
    if s is None:
        return None
    rec = {"iterations": int(s.iterations), "residual": float(s.residual),
           "converged": bool(s.converged), "fallbacks": int(getattr(s, "fallbacks", 0)),
           "method": s.method, "tol": float(s.tol)}
    per = getattr(s, "per_sample_iterations", None)
    if per is not None and len(per):
        rec["per_sample_iterations_max"] = int(max(per))
        rec["per_sample_iterations_mean"] = float(sum(int(v) for v in per) / len(per))
    return rec


# ----------------------------------------------------------------------------- timing


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def rss_reset() -> int | None:
    """Reset the process's RSS high-water mark (Linux ``/proc/self/clear_refs``, 5) and
    return the current RSS (KiB); ``None`` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return None
    return _rss_kib("VmRSS")


class SavedBytes:
    """Bytes of the tensors the autograd graph keeps for backward.

    ``torch.autograd.graph.saved_tensors_hooks`` sees every tensor an op or a custom
    ``autograd.Function`` saves (``save_for_backward``); tensors a custom Function stores
    as plain ``ctx`` attributes are found by walking the graph. Storages are counted once
    (views share them); parameters and the input are reported apart.
    """

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}
        self.ctx_storages: dict[int, int] = {}

    def _add(self, t: torch.Tensor, into: dict[int, int]) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse, ...
            return
        into[st.data_ptr()] = max(into.get(st.data_ptr(), 0), st.nbytes())

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        self._add(t, self.storages)
        return t

    def scan(self, root) -> None:
        todo, seen = [root], set()
        while todo:
            node = todo.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            for v in getattr(node, "__dict__", {}).values():
                vals = v if isinstance(v, (list, tuple)) else (
                    list(v.values()) if isinstance(v, dict) else
                    list(getattr(v, "__dict__", {}).values()) if not isinstance(v, torch.Tensor)
                    else [v])
                for t in vals:
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() \
                            not in self.storages:
                        self._add(t, self.ctx_storages)
            todo.extend(f for f, _ in getattr(node, "next_functions", ()))

    def summary(self, model, u: torch.Tensor, n: int, batch: int) -> dict:
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        a_ptr = model.A.untyped_storage().data_ptr()
        inp = u.untyped_storage().data_ptr()
        allb = {**self.storages, **self.ctx_storages}
        par = sum(v for k, v in allb.items() if k in params)
        a_bytes = allb.get(a_ptr, 0)
        ib = sum(v for k, v in allb.items() if k == inp)
        rest = sum(allb.values()) - par - ib
        item = u.element_size()
        return {"kept_bytes": sum(allb.values()), "kept_param_bytes": par, "kept_input_bytes": ib,
                "kept_other_bytes": rest, "kept_ctx_attr_bytes": sum(self.ctx_storages.values()),
                "kept_other_over_n_batch": rest / (n * batch * item),
                "kept_A_bytes": a_bytes,
                "kept_A_other_over_n2_3nbatch": (a_bytes + rest) / ((n * n + 3 * n * batch) * item)}


def run_once(model, prob: dict, measure: bool = False
             ) -> tuple[float, float, torch.Tensor, dict | None]:
    """One forward + backward: ``(fwd s, bwd s, y, memory)``; with ``measure`` the memory
    kept for backward and the RSS rise are recorded (outside the timed spans)."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    saved = SavedBytes() if measure else None
    base = rss_reset() if measure else None
    hooks = (torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t) if saved
             else contextlib.nullcontext())
    t0 = time.perf_counter()
    with hooks:
        y = model(prob["u"])
        loss = F.cross_entropy(y, prob["labels"])
    t1 = time.perf_counter()
    if saved is not None:
        saved.scan(loss.grad_fn)
        t1b = time.perf_counter()
    else:
        t1b = t1
    loss.backward()
    t2 = time.perf_counter()
    mem = None
    if saved is not None:
        n, batch = prob["A"].shape[0], prob["u"].shape[0]
        mem = saved.summary(model, prob["u"], n, batch)
        hwm = _rss_kib("VmHWM")
        mem["peak_rss_rise_bytes"] = None if base is None or hwm is None else \
            max(hwm - base, 0) * 1024
    return t1 - t0, t2 - t1b, y.detach(), mem


def time_gemm(n: int, batch: int, dtype: torch.dtype, rounds: int = 7, k: int | None = None
              ) -> float:
    """Median seconds of one ``A @ X``, ``A`` (n, k), ``X`` (k, batch), ``k = n`` by default."""
    k = n if k is None else k
    g = torch.Generator().manual_seed(1)
    A = torch.rand(n, k, generator=g, dtype=dtype)
    X = torch.randn(k, batch, generator=g, dtype=dtype)
    for _ in range(3):
        A @ X
    t0 = time.perf_counter()
    A @ X
    once = max(time.perf_counter() - t0, 1e-7)
    reps = max(3, min(2000, int(0.03 / once)))  # ~30 ms per round
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            A @ X
        samples.append((time.perf_counter() - t0) / reps)
    return statistics.median(samples)


def contention_probe(threads: int, dtype: torch.dtype) -> dict:
    """Time a small GEMM with ``threads`` and with 1 thread.

    On a machine shared with other busy processes, every multi-threaded kernel can
    wait for a descheduled worker thread (milliseconds per op); this shows up as the
    multi-threaded small GEMM being much slower than the single-threaded one.
    """
    if threads == 1:
        return {"threads": 1}
    torch.set_num_threads(1)
    one = time_gemm(100, 256, dtype, rounds=5)
    torch.set_num_threads(threads)
    many = time_gemm(100, 256, dtype, rounds=5)
    return {"threads": threads, "gemm100_1thread_s": one, f"gemm100_{threads}threads_s": many,
            "slowdown": many / one, "contended": many > 2.0 * one}


def bench_method(model, info, calibrate: float | None, prob: dict, repeats: int,
                 budget: float, measure: bool = False) -> dict:
    """Warm-up (with the memory measurement when ``measure``), then up to ``repeats`` timed
    runs within ``budget`` seconds; median times, solve records, outputs and gradients."""
    rec: dict = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-convergence is read from the records
            if calibrate is not None:
                run_once(model, prob)
                rec["dL_dx_inf_norm"] = calibrate_absolute(model, calibrate)
            fw, bw, y, mem = run_once(model, prob, measure=measure)  # warm-up
            rec["warmup_s"] = fw + bw
            if mem is not None:
                rec["memory"] = mem
            per = (repeats and budget / repeats)
            timed = 0 if fw + bw > budget else (
                repeats if fw + bw <= per else max(1, int(budget // (fw + bw))))
            samples = [(fw, bw)] if timed == 0 else []
            for _ in range(timed):
                fw, bw, y, _ = run_once(model, prob)
                samples.append((fw, bw))
    except Exception as exc:  # report, do not crash the whole run
        rec["error"] = f"{type(exc).__name__}: {exc}"
        return rec
    rec["timed_runs"] = timed
    rec["samples_s"] = [[round(a, 6), round(b, 6)] for a, b in samples]
    rec["fwd_s"] = statistics.median(a for a, _ in samples)
    rec["bwd_s"] = statistics.median(b for _, b in samples)
    rec["total_s"] = statistics.median(a + b for a, b in samples)
    rec.update(info())
    rec["_y"] = y
    rec["_grads"] = {k: getattr(model, k).grad.detach().clone() for k in ("A", "B", "C", "D")}
    return rec


def label(method: str, stop: str) -> str:
    return method if method == "torchidl" or stop == "absolute" else f"{method} [rel bwd]"


def run_cell(prob: dict, kappa: float, methods: list[str], stops: list[str],
             cfg: types.SimpleNamespace, tidl, repeats: int, budget: float,
             measure: bool = False, log: str = "") -> list[dict]:
    """Every (method, stop) row of one problem; idlkit rows first."""
    recs = []
    for method in methods:
        for stop in (stops if method.startswith("idlkit") else ["absolute"]):
            try:
                model, info, cal = build(method, stop, prob, kappa, cfg, tidl)
            except Exception as exc:  # report, do not crash the whole run
                r = {"error": f"{type(exc).__name__}: {exc}"}
            else:
                r = bench_method(model, info, cal, prob, repeats, budget, measure)
                del model
            r.update(method=method, label=label(method, stop),
                     backward_stop=stop_name(stop) if method.startswith("idlkit") else "absolute",
                     backward_tol=(cfg.grad_tol if stop == "absolute" or method == "torchidl"
                                   else cfg.tol))
            recs.append(r)
            fwd, bwd = r.get("forward"), r.get("backward")
            msg = r.get("error") or (
                f"fwd {fmt_ms(r['fwd_s'])} ms ({fmt_it(fwd)} it, res {fmt_res(fwd)}"
                f"{_fb(fwd)}), bwd {fmt_ms(r['bwd_s'])} ms ({fmt_it(bwd)} it, res "
                f"{fmt_res(bwd)}{_fb(bwd)}), runs {r['timed_runs']}")
            print(f"  {log} {r['label']:<30} {msg}", flush=True)
    compare(recs)
    return recs


def compare(recs: list[dict]) -> None:
    """Max |y - y_ref| and relative gradient differences against the reference method."""
    ok = [r for r in recs if "_y" in r]
    ref = next((r for r in ok if r["label"] == "torchidl"), None) or \
        next((r for r in ok if r["label"] == REFERENCE), None)
    for r in ok:
        if ref is None:
            continue
        r["compared_to"] = ref["label"]
        r["max_abs_dy"] = float((r["_y"] - ref["_y"]).abs().max())
        r["rel_dgrad"] = {k: float((r["_grads"][k] - ref["_grads"][k]).abs().max()
                                   / ref["_grads"][k].abs().max().clamp(min=1e-300))
                          for k in ("A", "B", "C", "D")}
    for r in ok:
        del r["_y"], r["_grads"]


# ----------------------------------------------------------------------------- sections


def section_start() -> dict:
    return {"loadavg_1min_start": loadavg_1min(), "t0": time.perf_counter()}


def section_end(sec: dict) -> dict:
    sec["loadavg_1min_end"] = loadavg_1min()
    sec["wall_s"] = round(time.perf_counter() - sec.pop("t0"), 1)
    return sec


def cfg_for(args: argparse.Namespace) -> types.SimpleNamespace:
    return types.SimpleNamespace(tol=args.tol, grad_tol=args.grad_tol, max_iter=args.max_iter)


def section_compare(args: argparse.Namespace, tidl, methods: list[str]) -> dict:
    sec = section_start()
    sec["tables"] = []
    cfg = cfg_for(args)
    for dn in args.dtypes:
        cells = []
        for n in args.sizes:
            gemm = time_gemm(n, args.batch, DTYPES[dn])
            gemm_bu = time_gemm(n, args.batch, DTYPES[dn], k=args.p)
            for kappa in args.kappas:
                prob = make_problem(n, kappa, args.batch, args.p, args.q, dn, args.seed)
                recs = run_cell(prob, kappa, methods, args.stops, cfg, tidl, args.repeats,
                                args.cell_budget, log=f"{dn} n={n:<5} kappa={kappa:<5g}")
                cells.append({"n": n, "kappa": kappa, "seed": prob["seed"],
                              "inf_norm_A": prob["inf_norm_A"], "gemm_s": gemm,
                              "gemm_Bu_s": gemm_bu, "methods": recs})
        summary = []
        for c in cells:
            recs = {r["label"]: r for r in c["methods"] if "total_s" in r}
            if "torchidl" in recs:
                row = {"n": c["n"], "kappa": c["kappa"]}
                for lab in (REFERENCE, label(REFERENCE, "relative")):
                    if lab in recs:
                        row[lab] = recs["torchidl"]["total_s"] / recs[lab]["total_s"]
                summary.append(row)
        sec["tables"].append({"dtype": dn, "cells": cells, "summary": summary})
    return section_end(sec)


def _work(n: int, batch: int, p: int) -> float:
    return float(n * n + n * p) * batch


def section_scaling(args: argparse.Namespace, tidl) -> dict:
    """idlkit's default model (Anderson, absolute adjoint tolerance = torchidl's grad_tol)
    and torchidl on an (n, batch) grid, with per-cell and whole-section time budgets."""
    sec = section_start()
    cfg = cfg_for(args)
    libs = [("idlkit-anderson", "absolute")] + ([("torchidl", "absolute")] if tidl[0] else [])
    sec.update(kappa=args.scaling_kappa, budget_s=args.scaling_budget,
               total_budget_s=args.scaling_total, sizes=args.scaling_sizes,
               batches=args.scaling_batches, cells=[])
    t0 = time.perf_counter()
    kappa = args.scaling_kappa
    for dn in args.dtypes:
        last: dict[str, tuple[float, float]] = {}  # lib -> (work, seconds of one fwd+bwd)
        for n in args.scaling_sizes:
            for batch in args.scaling_batches:
                prob = None
                cell = {"dtype": dn, "n": n, "batch": batch, "rows": []}
                work = _work(n, batch, args.p)
                for method, stop in libs:
                    pred = last[method][1] * work / last[method][0] if method in last else None
                    skip = None
                    if time.perf_counter() - t0 > args.scaling_total:
                        skip = f"section budget of {args.scaling_total:g} s spent"
                    elif pred is not None and pred > args.scaling_budget:
                        skip = f"predicted {pred:.3g} s > {args.scaling_budget:g} s budget"
                    if skip:
                        cell["rows"].append({"method": method, "label": label(method, stop),
                                             "skipped": skip})
                        print(f"  scaling {dn} n={n:<5} batch={batch:<5} {method:<16} "
                              f"skipped: {skip}", flush=True)
                        continue
                    if prob is None:
                        prob = make_problem(n, kappa, batch, args.p, args.q, dn, args.seed)
                    r = run_cell(prob, kappa, [method], [stop], cfg, tidl,
                                 min(args.repeats, 3), args.scaling_budget, measure=True,
                                 log=f"scaling {dn} n={n:<5} batch={batch:<5}")[0]
                    if "total_s" in r:
                        last[method] = (work, r["total_s"])
                    for k in ("samples_s",):
                        r.pop(k, None)
                    cell["rows"].append(r)
                sec["cells"].append(cell)
    return section_end(sec)


# ------------------------------------------------------------------ targets


def fresh_torchidl_function(tf: types.ModuleType) -> type:
    """A plain subclass of torchidl's ``ImplicitFunctionInf`` per model: torchidl keeps
    tol/mitr/kappa as class attributes, so two models sharing the class share them."""
    return type("ImplicitFunctionInfOwn", (tf.ImplicitFunctionInf,), {})


def torchidl_like(model, tidl, tol: float, grad_tol: float, max_iter: int):
    """torchidl's ImplicitModel with bias holding idlkit ``model``'s A, B, b, C, D, d.

    torchidl appends a row of ones to U, so its ``B`` is ``[B b]`` and its ``D`` is
    ``[D d]`` (``implicit_base_model.py``); kappa = idlkit's (idlkit's initial A lies in
    the ball, so torchidl's in-forward projection leaves it unchanged).
    """
    tb, tf = tidl
    p, n, q = model.in_features, model.hidden, model.out_features
    tm = tb.ImplicitModel(input_dim=p, output_dim=q, hidden_dim=n,
                          f=fresh_torchidl_function(tf), no_D=False, bias=True, mitr=max_iter,
                          grad_mitr=max_iter, tol=tol, grad_tol=grad_tol, kappa=model.kappa)
    tm = tm.to(model.A.dtype)
    with torch.no_grad():
        tm.A.copy_(model.A)
        tm.B.copy_(torch.cat([model.B, model.b[:, None]], dim=1))
        tm.C.copy_(model.C)
        tm.D.copy_(torch.cat([model.D, model.d[:, None]], dim=1))
    return tm


def _train_block(model, opt, batches, start: int, steps: int, times: list[float]) -> float:
    """``steps`` training steps (forward, loss, backward, optimizer step, and for idlkit
    the projection hooked on the step); appends each step's seconds; returns the mean loss."""
    total = 0.0
    for i in range(steps):
        u, y = batches(start + i)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(u), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        total += float(loss.detach())
    return total / max(steps, 1)


def idl_training_models(p: int, n: int, q: int, tol: float, grad_tol: float, seed: int,
                        tidl, max_iter: int = 500) -> dict:
    """{label: (model, optimizer, tolerance note)}: idlkit at equal tolerance, idlkit with
    its relative rule (extra) and torchidl from idlkit's initial matrices."""
    out = {}
    torch.manual_seed(seed)
    base = idl.ImplicitModel(p, n, q, activation="relu", kappa=0.95, tol=tol,
                             max_iter=max_iter, on_nonconvergence="warn")
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    for stop in ("absolute", "relative"):
        m = idl.ImplicitModel(p, n, q, activation="relu", kappa=0.95, tol=tol,
                              max_iter=max_iter, on_nonconvergence="warn",
                              **stop_kwargs(stop, grad_tol))
        m.load_state_dict(state)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        m.attach_projection(opt)
        if stop == "absolute" and not HAS_STOP:
            note = (f"relative adjoint tol {tol:g} * ||dL/dx||_inf: this idlkit has no "
                    f"backward_stop, so NOT equal tolerance")
        elif stop == "absolute":
            note = f"absolute adjoint tol {grad_tol:g} (equal tolerance)"
        else:
            note = f"relative adjoint tol {tol:g} * ||dL/dx||_inf (idlkit's default rule)"
        if stop == "relative" and not HAS_STOP:
            continue  # the same model as the row above on this library
        out[label("idlkit-anderson", stop)] = (m, opt, note)
    if tidl[0] is not None:
        tm = torchidl_like(base, tidl, tol, grad_tol, max_iter)
        out["torchidl"] = (tm, torch.optim.Adam(tm.parameters(), lr=1e-3),
                           f"absolute grad_tol {grad_tol:g}, Picard; same initial matrices")
    return out


def _interleaved(models: dict, batches, blocks: int, block_steps: int, warmup: int) -> dict:
    """Train every model on the same batches, alternating blocks of ``block_steps``."""
    res = {k: {"step_s": [], "block_s": [], "block_loss": [], "warnings": 0} for k in models}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for m, opt, _ in models.values():  # warm-up (untimed, not counted)
            _train_block(m, opt, batches, 0, warmup, [])
        pos = warmup
        for _ in range(blocks):
            for k, (m, opt, _) in models.items():
                n0 = len(caught)
                times: list[float] = []
                t0 = time.perf_counter()
                loss = _train_block(m, opt, batches, pos, block_steps, times)
                res[k]["block_s"].append(time.perf_counter() - t0)
                res[k]["step_s"] += times
                res[k]["block_loss"].append(loss)
                res[k]["warnings"] += len(caught) - n0
            pos += block_steps
    return res


def target_tiny(args: argparse.Namespace, tidl) -> dict:
    p, n, q, batch = 20, 10, 5, 5
    g = torch.Generator().manual_seed(args.seed)
    pool = [(torch.randn(batch, p, generator=g), torch.randint(0, q, (batch,), generator=g))
            for _ in range(64)]
    models = idl_training_models(p, n, q, args.tol, args.grad_tol, args.seed, tidl)
    block = max(args.tiny_steps // 4, 1)
    res = _interleaved(models, lambda i: pool[i % len(pool)], 4, block, warmup=50)
    rows = []
    for k, r in res.items():
        rows.append({"label": k, "note": models[k][2], "median_step_s": statistics.median(
            r["step_s"]), "steps": len(r["step_s"]), "final_block_loss": r["block_loss"][-1],
            "nonconvergence_warnings": r["warnings"]})
    return {"config": {"p": p, "n": n, "q": q, "batch": batch, "steps": 4 * block,
                       "tol": args.tol, "grad_tol": args.grad_tol,
            "optimizer": "Adam lr 1e-3 (+ idlkit projection via attach_projection)"},
            "rows": rows}


def target_mnist(args: argparse.Namespace, tidl) -> dict:
    idlkit_data_dir()
    try:
        ds = idl.datasets.load("mnist", split="train")
    except Exception as exc:  # no data: report, do not crash
        return {"error": f"MNIST not available: {type(exc).__name__}: {exc}"}
    limit = 5000 if args.quick else None  # quick: the first 5000 samples
    X = torch.from_numpy(ds.x_train[:limit]).float()
    Y = torch.from_numpy(ds.y_train[:limit]).long()
    del ds
    batch, block = 100, min(100, args.mnist_steps)
    blocks = max(args.mnist_steps // block, 1)
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(args.seed))

    def batches(i: int):
        j = (i * batch) % (X.shape[0] - batch + 1)
        idx = perm[j:j + batch]
        return X[idx], Y[idx]

    models = idl_training_models(X.shape[1], 100, 10, args.tol, args.grad_tol, args.seed, tidl)
    res = _interleaved(models, batches, blocks, block, warmup=5)
    rows = []
    for k, r in res.items():
        rows.append({"label": k, "note": models[k][2],
                     "s_per_100_steps": statistics.median(r["block_s"]) * 100 / block,
                     "block_s": r["block_s"], "steps": len(r["step_s"]),
                     "final_block_loss": r["block_loss"][-1], "block_loss": r["block_loss"],
                     "nonconvergence_warnings": r["warnings"]})
    return {"config": {"n": 100, "batch": batch, "steps": blocks * block, "block": block,
                       "tol": args.tol, "grad_tol": args.grad_tol, "kappa": 0.95,
                       "optimizer": "Adam lr 1e-3 (+ idlkit projection via attach_projection)",
                       "data": "MNIST train, one torch.randperm (seed --seed), same for all"},
            "rows": rows}


def section_targets(args: argparse.Namespace, tidl) -> dict:
    sec = section_start()
    old = torch.get_num_threads()
    torch.set_num_threads(args.target_threads)
    sec["threads"] = args.target_threads
    cfg = cfg_for(args)
    # (a) + (b): hard fixed point, fwd + bwd; per-iteration cost over one GEMM
    n, batch, dn = (100, 64, "float32") if args.quick else (300, 256, "float32")
    prob = make_problem(n, 0.95, batch, args.p, args.q, dn, args.seed)
    methods = ["idlkit-picard", "idlkit-anderson"] + (["torchidl"] if tidl[0] else [])
    recs = run_cell(prob, 0.95, methods, ["absolute", "relative"], cfg, tidl, args.repeats,
                    args.cell_budget, log=f"targets {dn} n={n} batch={batch}")
    gemm = time_gemm(n, batch, DTYPES[dn])
    gemm_bu = time_gemm(n, batch, DTYPES[dn], k=args.p)
    sec["hard"] = {"n": n, "batch": batch, "dtype": dn, "kappa": 0.95, "gemm_s": gemm,
                   "gemm_Bu_s": gemm_bu, "methods": recs}
    print("  targets: tiny model training steps ...", flush=True)
    sec["tiny"] = target_tiny(args, tidl)
    print("  targets: MNIST training ...", flush=True)
    sec["mnist"] = target_mnist(args, tidl)
    torch.set_num_threads(old)
    sec["goals"] = target_goals(sec)
    for g in sec["goals"]:
        print(f"  target {g['row']}: {g['value']} (goal {g['goal']}): {g['verdict']}", flush=True)
    return section_end(sec)


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


def target_goals(sec: dict) -> list[dict]:
    goals = []
    h = sec["hard"]
    recs = {r["label"]: r for r in h["methods"] if "total_s" in r}
    t = recs.get("torchidl")
    for lab in (REFERENCE, label(REFERENCE, "relative")):
        r = recs.get(lab)
        ratio = t["total_s"] / r["total_s"] if t and r else None
        goals.append({"row": f"(a) hard fixed point n={h['n']}, kappa 0.95, batch {h['batch']}, "
                             f"{h['dtype']}, fwd+bwd, torchidl / {lab}",
                      "value": "-" if ratio is None else f"{ratio:.2f}x "
                      f"({fmt_ms(t['total_s'])} / {fmt_ms(r['total_s'])} ms)",
                      "goal": ">= 3x", "verdict": _verdict(None if ratio is None else ratio >= 3),
                      "ratio": ratio, "equal_tolerance": lab == REFERENCE})
    c = {"gemm_s": h["gemm_s"], "gemm_Bu_s": h["gemm_Bu_s"]}
    for lab in ("idlkit-picard", REFERENCE):
        r = recs.get(lab)
        v = per_iteration_over_gemm(r, c) if r and r.get("forward") else None
        goals.append({"row": f"(b) forward time per iteration / one A @ X GEMM, {lab}, "
                             f"n={h['n']}, batch {h['batch']}, {h['dtype']}",
                      "value": "-" if v is None else f"{v:.2f}", "goal": "<= 1.5",
                      "verdict": _verdict(None if v is None else v <= 1.5), "ratio": v})
    tiny = {r["label"]: r for r in sec["tiny"]["rows"]}
    ti = tiny.get("torchidl")
    for lab in (REFERENCE, label(REFERENCE, "relative")):
        r = tiny.get(lab)
        if r is None:
            continue
        v = r["median_step_s"]
        ratio = ti["median_step_s"] / v if ti else None
        goals.append({"row": f"(c) tiny model (n=10, p=20, batch 5) one training step, {lab}",
                      "value": f"{1e3 * v:.3f} ms" + (f" (torchidl {1e3 * ti['median_step_s']:.3f}"
                                                       f" ms, ratio {ratio:.2f})" if ti else ""),
                      "goal": "<= 1 ms", "verdict": _verdict(v <= 1e-3), "ratio": ratio,
                      "note": r["note"]})
    mn = sec["mnist"]
    if "rows" in mn:
        rows = {r["label"]: r for r in mn["rows"]}
        tm = rows.get("torchidl")
        for lab in (REFERENCE, label(REFERENCE, "relative")):
            r = rows.get(lab)
            if r is None:
                continue
            ratio = tm["s_per_100_steps"] / r["s_per_100_steps"] if tm else None
            goals.append({"row": f"(d) MNIST n=100, batch 100, s per 100 training steps, {lab}",
                          "value": f"{r['s_per_100_steps']:.2f} s" + (
                              f" (torchidl {tm['s_per_100_steps']:.2f} s, ratio {ratio:.2f})"
                              if tm else ""),
                          "goal": ">= 1.5x torchidl (issue 14)",
                          "verdict": _verdict(None if ratio is None else ratio >= 1.5),
                          "ratio": ratio, "note": r["note"]})
    return goals


def fmt_ms(s: float | None) -> str:
    if s is None:
        return "-"
    ms = 1e3 * s
    return f"{ms:.3g}" if ms < 100 else f"{ms:,.0f}"


def fmt_it(solve: dict | None) -> str:
    if not solve:
        return "-"
    it = str(solve["iterations"])
    return it if solve["converged"] else f"{it} (NC)"


def _fb(solve: dict | None) -> str:
    return f", {solve['fallbacks']} fallbacks" if solve and solve.get("fallbacks") else ""


def fmt_res(solve: dict | None) -> str:
    if not solve:
        return "-"
    tol = f" ({solve['tol']:.2g})" if solve.get("tol") is not None else ""
    return f"{solve['residual']:.2g}{tol}"


def _load(v) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)


def _l1(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _probe(p: dict | None) -> str:
    if not p or "slowdown" not in p:
        return "-"
    return f"{p['slowdown']:.1f}x" + (" (CONTENDED)" if p.get("contended") else "")


def tolerance_text(cfg: dict) -> str:
    stop = ("`backward_stop='absolute'`" if cfg["idlkit_has_backward_stop"] else
            "emulated on this idlkit, which has no `backward_stop`: the relative tolerance "
            "is set to grad_tol / ||dL/dx||_inf measured on the fixed batch (training "
            "targets cannot emulate it and say so)")
    return (f"Tolerances. Forward, both libraries: absolute, `max_j ||x_j - relu(A x_j + B u_j)"
            f"||_inf <= {cfg['tol']:g}` (torchidl `<`). Adjoint: torchidl absolute "
            f"`grad_tol = {cfg['grad_tol']:g}`; idlkit rows without a suffix absolute "
            f"`backward_tol = {cfg['grad_tol']:g}` ({stop}), i.e. equal tolerance; idlkit rows "
            f"`[rel bwd]`: idlkit's relative rule, `backward_tol = {cfg['tol']:g}` times "
            f"`||dL/dx||_inf` (~1e-3 for a batch-mean loss, so a much tighter absolute "
            f"tolerance). Ratio column: torchidl time / row time (> 1: idlkit faster).")


def md_compare(sec: dict, cfg: dict) -> list[str]:
    lines = ["## compare: idlkit vs torchidl, forward + backward", "",
             f"Load average (1 min) at start / end of the section: "
             f"{_l1(sec['loadavg_1min_start'])} / {_l1(sec['loadavg_1min_end'])}. "
             f"Problem: `x = relu(A x + B u)`, `y = C x + D u`, batch {cfg['batch']}, "
             f"p = {cfg['p']}, q = {cfg['q']}; `A >= 0` with every row summing to kappa; cross "
             f"entropy against random labels; max_iter {cfg['max_iter']}. Times: median of the "
             f"timed runs after one warm-up (`runs`; `0*` = only the warm-up, longer than the "
             f"{cfg['cell_budget']:g} s cell budget). " + tolerance_text(cfg), ""]
    for tab in sec["tables"]:
        cells = tab["cells"]
        lines += [f"### {tab['dtype']}", "",
                  "| n | kappa | method | fwd ms | bwd ms | fwd+bwd ms | fwd it | bwd it | "
                  "fwd resid (tol) | bwd resid (tol) | AA fallbacks | fwd ms/it / GEMM | "
                  "max abs dy | rel d grad | torchidl / this | runs |",
                  "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in cells:
            recs = {r["label"]: r for r in c["methods"]}
            tidl = recs.get("torchidl", {}).get("total_s")
            for r in c["methods"]:
                head = f"| {c['n']} | {c['kappa']:g} | {r['label']} |"
                if "error" in r:
                    lines.append(head + f" error: {r['error'][:120]} |" + " |" * 12)
                    continue
                fwd, bwd = r.get("forward"), r.get("backward")
                per = "-"
                if fwd and c.get("gemm_s"):
                    v = per_iteration_over_gemm(r, c)
                    per = f"{v:.2f}" if r["method"].startswith("idlkit") else f"({v:.2f})"
                ratio = "-"
                if tidl and r["method"] != "torchidl":
                    ratio = f"{tidl / r['total_s']:.2f}"
                same = "max_abs_dy" not in r or r["label"] == r.get("compared_to")
                dy = "-" if same else f"{r['max_abs_dy']:.1e}"
                dg = "-" if same else f"{max(r['rel_dgrad'].values()):.1e}"
                runs = str(r["timed_runs"]) if r["timed_runs"] else "0*"
                fb = "/".join(str(s["fallbacks"]) if s and s.get("method") == "anderson" else "-"
                              for s in (fwd, bwd))
                lines.append(f"{head} {fmt_ms(r['fwd_s'])} | {fmt_ms(r['bwd_s'])} | "
                             f"{fmt_ms(r['total_s'])} | {fmt_it(fwd)} | {fmt_it(bwd)} | "
                             f"{fmt_res(fwd)} | {fmt_res(bwd)} | {fb} | {per} | {dy} | {dg} | "
                             f"{ratio} | {runs} |")
        lines += ["", "GEMMs, median time of one product: `A @ X` ((n, n) times (n, batch)), "
                  "the per-iteration product, and `B @ U` ((n, p) times (p, batch)), done once "
                  "per forward:", "", "| n | A @ X ms | B @ U ms |", "|---:|---:|---:|"]
        seen = set()
        for c in cells:
            if c["n"] not in seen and c.get("gemm_s"):
                seen.add(c["n"])
                lines.append(f"| {c['n']} | {1e3 * c['gemm_s']:.3g} | "
                             f"{1e3 * c.get('gemm_Bu_s', float('nan')):.3g} |")
        summ = tab["summary"]
        if summ:
            for lab in (REFERENCE, label(REFERENCE, "relative")):
                if not any(lab in s for s in summ):
                    continue
                lines += ["", f"{tab['dtype']}: torchidl fwd+bwd time / `{lab}` fwd+bwd time "
                          "(> 1: idlkit faster):", "", "| n | " +
                          " | ".join(f"kappa {k:g}" for k in cfg["kappas"]) + " |",
                          "|---:|" + "---:|" * len(cfg["kappas"])]
                for n in cfg["sizes"]:
                    row = [next((s.get(lab) for s in summ if s["n"] == n and s["kappa"] == k),
                                None) for k in cfg["kappas"]]
                    lines.append(f"| {n} | " + " | ".join("-" if v is None else f"{v:.2f}"
                                                            for v in row) + " |")
        lines.append("")
    return lines


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.3g}"


def md_scaling(sec: dict, cfg: dict) -> list[str]:
    lines = ["## scaling: cost and memory of idlkit's default model vs n and batch", "",
             f"kappa {sec['kappa']:g} (hard A as in compare), p = {cfg['p']}, q = {cfg['q']}; "
             f"idlkit `ImplicitModel` default solver (Anderson) with the equal-tolerance adjoint "
             f"(absolute {cfg['grad_tol']:g}); torchidl beside it. Per-cell budget "
             f"{sec['budget_s']:g} s per library (a cell whose predicted time, the last "
             f"finished cell's scaled by `(n^2 + n p) batch`, exceeds it is skipped), section "
             f"budget {sec['total_budget_s']:g} s. Load average (1 min) at start / end: "
             f"{_l1(sec['loadavg_1min_start'])} / {_l1(sec['loadavg_1min_end'])}. "
             + tolerance_text(cfg), "",
             "`kept`: bytes of the tensors the autograd graph keeps for backward "
             "(`saved_tensors_hooks` plus tensors stored on custom-Function ctx; each storage "
             "once), measured on the warm-up run. `kept other / (n b s)`: kept bytes outside "
             "the parameters and the input, over one `n x batch` state (s = itemsize). App. G "
             "claims O(n^2 + n batch), i.e. no solver iterate stored: `kept (A + other) / "
             "((n^2 + 3 n b) s)` (everything but B, C, D and the input, which any model keeps) "
             "should stay at about 1 or below and `kept other / (n b s)` a small constant "
             "(idlkit: X and Z; the loss adds "
             "q-sized tensors). `RSS rise`: peak resident memory of that forward + backward "
             "above the RSS before it (`/proc/self/clear_refs` + `VmHWM`; 0 when freed memory "
             "was reused).", ""]
    for dn in cfg["dtypes"]:
        cells = [c for c in sec["cells"] if c["dtype"] == dn]
        if not cells:
            continue
        lines += [f"### {dn}", "",
                  "| n | batch | idlkit fwd+bwd ms | torchidl fwd+bwd ms | torchidl / idlkit | "
                  "idlkit it f/b | torchidl it f/b | idlkit kept MiB | idlkit kept other / "
                  "(n b s) | idlkit kept (A + other) / ((n^2+3nb) s) | idlkit RSS rise MiB | torchidl kept "
                  "MiB | torchidl kept other / (n b s) | torchidl RSS rise MiB |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in cells:
            rows = {r["method"]: r for r in c["rows"]}
            a, t = rows.get("idlkit-anderson", {}), rows.get("torchidl", {})

            def tm(r: dict) -> str:
                if "skipped" in r:
                    return "skipped"
                if "error" in r:
                    return "error"
                if not r:
                    return "-"
                return fmt_ms(r["total_s"]) + ("*" if not r["timed_runs"] else "")

            def its(r: dict) -> str:
                if "forward" not in r:
                    return "-"
                return f"{fmt_it(r['forward'])}/{fmt_it(r['backward'])}"

            am, tmem = a.get("memory") or {}, t.get("memory") or {}
            ratio = (f"{t['total_s'] / a['total_s']:.2f}" if "total_s" in a and "total_s" in t
                     else "-")
            lines.append(
                f"| {c['n']} | {c['batch']} | {tm(a)} | {tm(t)} | {ratio} | {its(a)} | {its(t)} "
                f"| {_mib(am.get('kept_bytes'))} | "
                f"{am.get('kept_other_over_n_batch', math.nan):.2f} | "
                f"{am.get('kept_A_other_over_n2_3nbatch', math.nan):.2f} | "
                f"{_mib(am.get('peak_rss_rise_bytes'))} | {_mib(tmem.get('kept_bytes'))} | "
                f"{tmem.get('kept_other_over_n_batch', math.nan):.2f} | "
                f"{_mib(tmem.get('peak_rss_rise_bytes'))} |")
        skipped = [f"n={c['n']} batch={c['batch']} {r['method']}: {r['skipped']}"
                   for c in cells for r in c["rows"] if "skipped" in r]
        if skipped:
            lines += ["", "Skipped: " + "; ".join(skipped) + "."]
        lines.append("")
    lines += ["`*`: only the warm-up run (it took longer than the budget).", ""]
    return lines


def md_targets(sec: dict, cfg: dict) -> list[str]:
    h = sec["hard"]
    lines = ["## targets: issue 14's table", "",
             f"{sec['threads']} torch threads. Load average (1 min) at start / end: "
             f"{_l1(sec['loadavg_1min_start'])} / {_l1(sec['loadavg_1min_end'])}. "
             + tolerance_text(cfg) + (" QUICK RUN: (a)/(b) at a smaller n and batch, fewer "
                                     "steps; not the target configuration."
                                     if cfg["quick"] else ""), "",
             "| row | value | goal | verdict |", "|---|---|---|---|"]
    lines += [f"| {g['row']} | {g['value']} | {g['goal']} | {g['verdict']} |"
              for g in sec["goals"]]
    lines += ["", f"(a), (b) detail: n = {h['n']}, kappa 0.95, batch {h['batch']}, {h['dtype']}; "
              f"one `A @ X` {1e3 * h['gemm_s']:.3g} ms, one `B @ U` {1e3 * h['gemm_Bu_s']:.3g} ms.",
              "", "| method | fwd ms | bwd ms | fwd+bwd ms | fwd it | bwd it | fwd resid (tol) | "
              "bwd resid (tol) | fwd ms/it / GEMM | torchidl / this |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    recs = {r["label"]: r for r in h["methods"]}
    tt = recs.get("torchidl", {}).get("total_s")
    for r in h["methods"]:
        if "error" in r:
            lines.append(f"| {r['label']} | error: {r['error'][:120]} |" + " |" * 8)
            continue
        per = per_iteration_over_gemm(r, h)
        lines.append(f"| {r['label']} | {fmt_ms(r['fwd_s'])} | {fmt_ms(r['bwd_s'])} | "
                     f"{fmt_ms(r['total_s'])} | {fmt_it(r['forward'])} | {fmt_it(r['backward'])} "
                     f"| {fmt_res(r['forward'])} | {fmt_res(r['backward'])} | {per:.2f} | "
                     + (f"{tt / r['total_s']:.2f}" if tt and r["method"] != "torchidl" else "-")
                     + " |")
    tc = sec["tiny"]["config"]
    lines += ["", f"(c) detail: `ImplicitModel({tc['p']}, {tc['n']}, {tc['q']})` (relu, bias, "
              f"Anderson, kappa 0.95), batch {tc['batch']}, {tc['optimizer']}, cross entropy "
              f"on 64 random batches cycled; steps alternate in 4 blocks between the models; "
              f"median of {tc['steps']} steps after 50 warm-up steps. torchidl holds idlkit's "
              f"initial matrices.", "",
              "| model | median ms / step | torchidl / this | mean loss of the last block | "
              "non-convergence warnings | adjoint tolerance |", "|---|---:|---:|---:|---:|---|"]
    rows = {r["label"]: r for r in sec["tiny"]["rows"]}
    ti = rows.get("torchidl", {}).get("median_step_s")
    for r in sec["tiny"]["rows"]:
        lines.append(f"| {r['label']} | {1e3 * r['median_step_s']:.3f} | "
                     + (f"{ti / r['median_step_s']:.2f}" if ti and r["label"] != "torchidl"
                        else "-")
                     + f" | {r['final_block_loss']:.4f} | {r['nonconvergence_warnings']} | "
                     f"{r['note']} |")
    mn = sec["mnist"]
    if "error" in mn:
        lines += ["", f"(d): {mn['error']}"]
    else:
        mc = mn["config"]
        lines += ["", f"(d) detail: MNIST, n = {mc['n']}, batch {mc['batch']}, kappa "
                  f"{mc['kappa']}, float32, {mc['optimizer']}; {mc['data']}; every model starts "
                  f"from the same matrices (torchidl's `B = [B b]`, `D = [D d]`); "
                  f"{mc['steps']} steps in blocks of {mc['block']} alternating between the "
                  f"models after 5 warm-up steps; median block time scaled to 100 steps.", "",
                  "| model | s / 100 steps (blocks) | torchidl / this | mean loss per block | "
                  "non-convergence warnings | adjoint tolerance |",
                  "|---|---:|---:|---|---:|---|"]
        rows = {r["label"]: r for r in mn["rows"]}
        tm = rows.get("torchidl", {}).get("s_per_100_steps")
        for r in mn["rows"]:
            lines.append(f"| {r['label']} | {r['s_per_100_steps']:.2f} ("
                         + ", ".join(f"{v:.2f}" for v in r["block_s"]) + ") | "
                         + (f"{tm / r['s_per_100_steps']:.2f}" if tm and r["label"] != "torchidl"
                            else "-")
                         + " | " + ", ".join(f"{v:.4f}" for v in r["block_loss"])
                         + f" | {r['nonconvergence_warnings']} | {r['note']} |")
    lines.append("")
    return lines


def markdown(result: dict) -> str:
    cfg, mach = result["config"], result["machine"]
    lines = [
        "# bench_core: idlkit vs torchidl",
        "",
        f"{result['timestamp']}. torch {mach['torch']}, {mach['torch_num_threads']} threads "
        f"({mach['usable_cpus']} usable CPUs, {mach['cpu']}), idlkit {mach['idlkit']} "
        f"({mach['idlkit_git_commit']}, source sha256 {mach['idlkit_source_sha256']}; "
        f"backward_stop {'available' if mach['idlkit_has_backward_stop'] else 'NOT available'}"
        f"), torchidl {mach['torchidl']}. Load average at start/end: "
        f"{_load(mach['loadavg_start'])} / {_load(mach.get('loadavg_end'))}. Contention probe "
        f"({mach['torch_num_threads']}-thread vs 1-thread n=100 GEMM) at start / end: "
        f"{_probe(mach.get('contention_probe_start'))} / "
        f"{_probe(mach.get('contention_probe_end'))}. Sections: {', '.join(cfg['sections'])}.",
        "",
    ]
    secs = result["sections"]
    if "compare" in secs:
        lines += md_compare(secs["compare"], cfg)
    if "scaling" in secs:
        lines += md_scaling(secs["scaling"], cfg)
    if "targets" in secs:
        lines += md_targets(secs["targets"], cfg)
    lines += ["Notes:", ""] + [f"- {t}" for t in result["notes"]]
    return "\n".join(lines) + "\n"


def per_iteration_over_gemm(r: dict, c: dict) -> float:
    """(forward time - one ``B u`` product) / forward iterations / one ``A @ X`` product."""
    it = max(r["forward"]["iterations"], 1)
    return max(r["fwd_s"] - c.get("gemm_Bu_s", 0.0), 0.0) / it / c["gemm_s"]


NOTES = [
    "`it`: updates of the iterate (idlkit's convention; a Picard solve evaluates the map "
    "it + 1 times). `(NC)`: stopped at max_iter without reaching tol.",
    "`resid (tol)`: the absolute residual `max_j ||F(x_j) - x_j||_inf` over the batch at the "
    "returned iterate, as each library computes it, and in parentheses the absolute tolerance "
    "the solve stopped on (idlkit: `SolveInfo.tol`). Both libraries stop on this max-abs "
    "residual (idlkit `<= tol`, per sample; torchidl `< tol` over the whole batch: its "
    "`torch.norm(X_new - X, inf)` of a matrix is the max abs entry). The forward tolerance "
    "is --tol for both. The adjoint tolerance is --grad-tol, absolute, for torchidl and "
    "for the idlkit rows without a suffix (equal tolerance); `[rel bwd]` rows use idlkit's "
    "relative rule (--tol times `||dL/dx||_inf`, ~1e-3 for a batch-mean loss).",
    "idlkit's adjoint (backward) solve is Anderson by default, also for `solver='picard'`; "
    "torchidl's forward and backward solves are both plain Picard. idlkit-picard-bwdpicard "
    "(idlkit picard with `backward_solver='picard'`) is the like-for-like row.",
    "`fwd ms/it / GEMM`: (forward time - one `B @ U` product) / forward iterations / one "
    "`A @ X` product; 1 is the floor "
    "for a solver doing one product per iteration, the rest is per-iteration overhead "
    "(Anderson mixing, residual checks, safeguard re-evaluations). In parentheses for torchidl. "
    "idlkit records each sample's own convergence and, where that saves work (many samples "
    "times n^2 large enough to pay for the copies), drops converged samples from later "
    "iterations, so its cost per iteration can fall below one full-batch GEMM; torchidl "
    "iterates the whole batch until the slowest sample converges.",
    "`AA fallbacks`: forward/backward Anderson steps rejected by idlkit's safeguard and "
    "replaced by a plain step (column-steps, out of iterations x batch).",
    "`max abs dy`: max |y - y_ref| over the batch, ref = torchidl (idlkit-anderson if torchidl "
    "is absent); both solutions are within tol of the fixed point, so differences up to about "
    "`||C||_inf tol / (1 - kappa)` are expected. `rel d grad`: max over A, B, C, D of "
    "`max|grad - grad_ref| / max|grad_ref|`. A Picard iterate with residual tol is up to "
    "`tol / (1 - kappa)` away from the fixed point (1e-4 at kappa = 0.99), enough to flip the "
    "ReLU pattern of a few units, which changes the gradients by more than the outputs.",
    "torchidl is given `kappa = ||A||_inf` so that its `ImplicitFunctionInf` projection "
    "leaves A unchanged; its iteration counts are read by counting its own `err < tol` tests "
    "(see `CountingTol`).",
]


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or usable_cpus()
    torch.set_num_threads(threads)
    tb, tf, note = load_torchidl()
    methods = [m for m in METHODS if m in args.methods]  # idlkit rows first
    if tb is None:
        print(f"NOTE: {note}; running the idlkit rows only.", flush=True)
        if "torchidl" in methods:
            methods.remove("torchidl")
    else:
        print(f"torchidl: {note}", flush=True)
    tidl = (tb, tf)
    mach = machine_info(note)
    print(f"torch {mach['torch']}, {mach['torch_num_threads']} threads, {mach['cpu']}, "
          f"{' '.join(args.dtypes)}, tol {args.tol:g}, grad_tol {args.grad_tol:g}, max_iter "
          f"{args.max_iter}, backward_stop {'available' if HAS_STOP else 'NOT available (emulated)'}",
          flush=True)
    probe = contention_probe(threads, DTYPES[args.dtypes[0]])
    mach["contention_probe_start"] = probe
    if probe.get("contended"):
        print(f"WARNING: a {threads}-thread GEMM (n=100) is {probe['slowdown']:.0f}x slower than "
              f"a 1-thread one: other processes are using the CPUs and multi-threaded times "
              f"will be inflated. Rerun on an idle machine (or with --threads 1).", flush=True)
    t_start = time.perf_counter()
    sections: dict = {}
    if "compare" in args.sections:
        sections["compare"] = section_compare(args, tidl, methods)
    if "scaling" in args.sections:
        sections["scaling"] = section_scaling(args, tidl)
    if "targets" in args.sections:
        sections["targets"] = section_targets(args, tidl)
        torch.set_num_threads(threads)
    mach["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    mach["contention_probe_end"] = contention_probe(threads, DTYPES[args.dtypes[0]])
    notes = list(NOTES)
    if not HAS_STOP:
        notes.insert(0, "This idlkit has no `backward_stop`: the equal-tolerance idlkit rows of "
                        "compare, scaling and targets (a)/(b) emulate the absolute adjoint "
                        "tolerance (see `calibrate_absolute`); the training targets (c)/(d) "
                        "cannot, and run idlkit's relative rule (their tolerance column says so).")
    if tb is None:
        notes.insert(0, f"torchidl rows missing: {note}.")
    elif not note.startswith("import torchidl"):
        notes.append(f"torchidl import: {note}.")
    if threads != usable_cpus():
        notes.append(f"Run with --threads {threads} ({usable_cpus()} usable CPUs).")
    contended = [mach[k].get("slowdown") for k in ("contention_probe_start",
                                                      "contention_probe_end")
                 if mach[k].get("contended")]
    if contended:
        notes.append(f"CONTENDED RUN: a {threads}-thread n=100 GEMM was "
                     f"{max(contended):.0f}x slower than a 1-thread one at the start or end of "
                     f"the run (other processes on the CPUs): absolute times are inflated.")
    elif mach["loadavg_start"] and max(mach["loadavg_start"][0],
                                       (mach["loadavg_end"] or [0])[0]) > threads + 0.5:
        notes.append("The load average exceeded the thread count during the run (other "
                     "processes): absolute times are noisy; ratios within a cell are more "
                     "reliable.")
    result = {
        "benchmark": "bench_core",
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "argv": " ".join(sys.argv[1:] if argv is None else argv) or "defaults",
        "config": {"sections": args.sections, "sizes": args.sizes, "kappas": args.kappas,
                   "repeats": args.repeats, "batch": args.batch, "p": args.p, "q": args.q,
                   "tol": args.tol, "grad_tol": args.grad_tol, "stops": args.stops,
                   "forward_tolerance": "absolute, both libraries",
                   "torchidl_adjoint_tolerance": f"absolute grad_tol {args.grad_tol:g}",
                   "idlkit_adjoint_tolerance": {
                       "absolute": f"absolute {args.grad_tol:g} ("
                                   + ("backward_stop='absolute'" if HAS_STOP else
                                      "emulated for fixed batches; training targets relative")
                                   + ")",
                       "relative": f"relative {args.tol:g} * ||dL/dx||_inf ([rel bwd] rows)"},
                   "idlkit_has_backward_stop": HAS_STOP,
                   "max_iter": args.max_iter, "dtypes": args.dtypes, "methods": methods,
                   "cell_budget": args.cell_budget, "seed": args.seed, "quick": args.quick,
                   "threads": threads, "target_threads": args.target_threads,
                   "scaling": {"sizes": args.scaling_sizes, "batches": args.scaling_batches,
                               "kappa": args.scaling_kappa, "budget_s": args.scaling_budget,
                               "total_s": args.scaling_total},
                   "tiny_steps": args.tiny_steps, "mnist_steps": args.mnist_steps,
                   "activation": "relu", "loss": "cross_entropy(random labels)",
                   "A": "rand(n, n), rows rescaled to sum to kappa",
                   "B": "randn(n, p) / sqrt(p)", "C": "randn(q, n) / sqrt(n)",
                   "D": "randn(q, p) / sqrt(p)", "u": "randn(batch, p)"},
        "machine": mach,
        "sections": sections,
        "notes": notes,
    }
    md = markdown(result)
    stem = "bench_core_quick" if args.quick else "bench_core"
    atomic_write(args.out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    atomic_write(args.out / f"{stem}.md", md)
    print()
    print(md)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')} "
          f"({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
