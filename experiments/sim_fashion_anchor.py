"""torchidl's SIM anchor on Fashion-MNIST (paper 002 §4, App. C Tables 2-3): ``CVXSolver`` defaults.

The issue's anchor: "torchidl's ``CVXSolver`` with its defaults (kappa = 0.99) on 2,000
Fashion-MNIST samples and a bias-free 784-64-32-16-10 teacher at 86.3 % reaches 70.7 % test
accuracy with 92,934 nonzeros (76 % more than the teacher's 52,896) in 469 s". Paper 002
(§4.2) fits SIM to the states of the 784x64x32x16x10 network ``N_fc`` on 500-2,000
Fashion-MNIST training samples (App. C, Tables 2-3), with kappa = 0.99.

Steps:

1. Fashion-MNIST from ``$IDLKIT_DATA/fashion_mnist.npz`` (``_compare.load_image_data``,
   ``norm="none"``): inputs flattened to 784 and divided by 255, so in [0, 1]; no further
   standardisation (torchidl's ``SIM(standardize=False)`` default).
2. Teacher: bias-free ReLU MLP ``Linear(784, 64) ReLU Linear(64, 32) ReLU Linear(32, 16) ReLU
   Linear(16, 10)`` (all ``bias=False``), Adam (lr 1e-3, batch 64, as paper 002 §4.2's
   ``N_fc``), seed 0, ``--epochs`` epochs on the 60,000 training images. 52,896 weights.
3. States of the first ``--samples`` training images with
   ``idlkit.sim.extract_states(teacher, U, dtype=torch.float64)`` (paper 002 §3 rescaling,
   kappa 0.99), saved for the idlkit SIM fit that will be compared with torchidl's.
4. torchidl 0.0.4: ``SIM(activation_fn=F.relu, kappa=0.99)`` trained with
   ``CVXSolver(num_processes=2)`` (all other options its defaults: lambda_y = lambda_z = 1e-6,
   ``0.5 ||z - [X^T U^T] [a; b]||^2 + lambda ||(a, b)||_1`` per row, ``||a||_1 <= kappa``,
   Clarabel since MOSEK is absent, entries ``|w| <= 1e-6`` zeroed). torchidl extracts its
   own states with forward hooks on the ReLU modules, **without** paper 002 §3's rescaling
   (raw pre/post-activations, float32, feature-first, same state order as idlkit's: last
   layer first); that pipeline is the anchor. Test
   accuracy as torchidl's ``SIM.evaluate`` computes it (``fixpoint_iteration`` with its
   defaults, then ``argmax(C X + D U)``) on the 10,000 test images, fed the same [0, 1]
   inputs; :func:`torchidl_fixpoint` replays that iteration with ``B U`` formed once (torchidl
   recomputes it at every step, far too slow here; ``SIM.evaluate`` also reads a
   torchvision-style ``dataset.data``, the raw uint8 pixels for torchvision's FashionMNIST).

Cache (``experiments/results/cache/``, written atomically; the teacher is reused unless
``--retrain``, the states are rewritten at every run, deterministic given the teacher):

* ``fashion_teacher_784_64_32_16_10.pt``: ``{"state_dict", "sizes", "epochs", "lr", "batch",
  "seed", "test_accuracy", "nnz", "norm"}``; rebuild with :func:`teacher_net` and
  ``load_state_dict``. Input: flattened pixels / 255.
* ``fashion_states_<samples>.npz``: idlkit's states (batch-first, float64, rows = the first
  ``samples`` training images in file order): ``Z (m, 112)``, ``X (m, 112)`` (scaled, state
  order ``(x_3; x_2; x_1)`` = 16, 32, 64: last layer first), ``Y_hat (m, 10)`` (teacher
  outputs, unscaled), ``U (m, 784)`` (inputs in [0, 1]), ``scale (112,)`` (per-state
  factors ``c_i = divisor^{-d_i}``, so raw states are ``Z / scale``), ``divisor ()``
  (``s``), ``y (m,)`` (labels), ``kappa ()``, ``gamma ()``, ``baseline_nnz ()``. The test
  set is not stored (reload it with ``_compare.load_image_data``).
* ``torchidl_sim_fashion_<samples>.npz``: torchidl's fit, dense float64 ``A (112, 112)``,
  ``B (112, 784)``, ``C (10, 112)``, ``D (10, 784)`` in torchidl's convention (feature-first,
  unscaled states: ``z = A x + B u``, ``y = C x + D u``) and ``seconds`` (its wall time);
  ``--reuse-torchidl`` re-evaluates it without solving again.

    .venv/bin/python experiments/sim_fashion_anchor.py                  # 16 min on 2 shared cores (load 4-7)
    .venv/bin/python experiments/sim_fashion_anchor.py --skip-torchidl  # teacher + states only

Writes ``experiments/results/sim_fashion_anchor.{json,md}`` (``--name``).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _compare import HERE, ROOT, load_image_data, log, machine, write_results
from threadpoolctl import threadpool_limits
from torch import nn

from idlkit.sim import extract_states

SIZES = [784, 64, 32, 16, 10]
CACHE = HERE / "results" / "cache"
TEACHER_FILE = "fashion_teacher_784_64_32_16_10.pt"
ANCHOR = {"teacher_accuracy": 0.863, "teacher_nnz": 52896, "torchidl_accuracy": 0.707,
          "torchidl_nnz": 92934, "torchidl_seconds": 469.0, "samples": 2000, "kappa": 0.99}


def states_file(samples: int) -> str:
    return f"fashion_states_{samples}.npz"


def teacher_net(sizes: list[int] = SIZES) -> nn.Sequential:
    """Bias-free ReLU MLP with ``nn.ReLU`` modules (torchidl hooks need activation modules)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b, bias=False), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def accuracy(net: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(X).argmax(1) == y).double().mean())


def nnz(tensors: list[torch.Tensor]) -> int:
    return sum(int(torch.count_nonzero(t.detach())) for t in tensors)


def atomic_save(path: Path, save) -> None:
    """``save(fh)`` into a temporary file next to ``path``, then ``os.replace``."""
    buf = io.BytesIO()
    save(buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def get_teacher(data: dict, args: argparse.Namespace) -> tuple[nn.Sequential, dict]:
    """The cached teacher, or train one with Adam (seeded, batch order from a seeded generator)."""
    path = Path(args.cache) / TEACHER_FILE
    net = teacher_net()
    if path.exists() and not args.retrain:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(blob["state_dict"])
        info = {k: v for k, v in blob.items() if k != "state_dict"}
        log(f"teacher: loaded {path} (test accuracy {info['test_accuracy']:.4f})")
        return net.eval(), {**info, "cache": str(path), "from_cache": True}
    torch.manual_seed(args.seed)
    net = teacher_net()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    X, y = data["X"], data["y"]
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        for idx in torch.randperm(X.shape[0], generator=gen).split(args.batch):
            opt.zero_grad()
            F.cross_entropy(net(X[idx]), y[idx]).backward()
            opt.step()
        net.eval()
        acc = accuracy(net, data["Xt"], data["yt"])
        log(f"teacher: epoch {epoch + 1}/{args.epochs} test accuracy {acc:.4f}")
    info = {"sizes": SIZES, "epochs": args.epochs, "lr": args.lr, "batch": args.batch, "seed": args.seed,
            "norm": "pixels / 255 (in [0, 1])", "train_seconds": time.perf_counter() - t0,
            "test_accuracy": accuracy(net, data["Xt"], data["yt"]), "nnz": nnz(list(net.parameters()))}
    atomic_save(path, lambda fh: torch.save({"state_dict": net.state_dict(), **info}, fh))
    log(f"teacher: saved {path}")
    return net.eval(), {**info, "cache": str(path), "from_cache": False}


def save_states(net: nn.Module, data: dict, args: argparse.Namespace) -> dict:
    """idlkit's (rescaled, float64) states of the first ``samples`` training images, to the cache."""
    U, y = data["X"][:args.samples], data["y"][:args.samples]
    st = extract_states(net, U, dtype=torch.float64, kappa=args.kappa)
    path = Path(args.cache) / states_file(args.samples)
    arrays = {"Z": st.Z, "X": st.X, "Y_hat": st.Y_hat, "U": st.U, "scale": st.scale}
    arrays = {k: v.numpy() for k, v in arrays.items()}
    atomic_save(path, lambda fh: np.savez_compressed(
        fh, **arrays, divisor=np.float64(st.divisor), y=y.numpy(), kappa=np.float64(st.kappa),
        gamma=np.float64(st.gamma), baseline_nnz=np.int64(st.baseline_nnz)))
    log(f"states: saved {path} (m={st.m}, n={st.n}, divisor s={st.divisor:.4g})")
    return {"path": str(path), "m": st.m, "n": st.n, "divisor": st.divisor, "gamma": st.gamma,
            "kappa": st.kappa, "baseline_nnz": st.baseline_nnz,
            "scale_by_layer": sorted({float(c) for c in st.scale}, reverse=True)}


def sparse_stats(mats: dict) -> dict:
    """Nonzeros of A, B, C, D (``|w| > 0`` as torchidl counts them, and ``|w| > 1e-6``)."""
    out = {"shapes": {k: list(m.shape) for k, m in mats.items()}}
    out["nnz_by_matrix"] = {k: int(np.count_nonzero(m)) for k, m in mats.items()}
    out["nnz"] = sum(out["nnz_by_matrix"].values())
    out["nnz_1e-6"] = sum(int((np.abs(m) > 1e-6).sum()) for m in mats.values())
    out["dense_size"] = sum(int(np.prod(m.shape)) for m in mats.values())
    out["A_inf_norm"] = float(np.abs(mats["A"]).sum(1).max())
    return out


def torchidl_fixpoint(A: np.ndarray, B: np.ndarray, U: np.ndarray, *, atol: float = 1e-6,
                      max_iter: int = 50000, patience: int = 1000) -> tuple[np.ndarray, dict]:
    """``torchidl.sim.utils.fixpoint_iteration`` (its defaults), with ``B U`` formed once.

    Same float32 Picard iteration ``X <- relu(A X + B U)`` from ``X = 0``, same stop: the
    matrix inf-norm of ``X_{k+1} - X_k`` (its largest row sum over the whole batch) below
    ``atol``, or ``patience`` iterations without a new minimum, or ``max_iter``. torchidl
    recomputes the sparse ``B U`` (112 x 784 by 784 x 10,000) at every iteration, which makes
    its ``SIM.evaluate`` impractically slow on 2 cores; the iterates are the same up to rounding.
    """
    A_t = torch.from_numpy(A).float()
    BU = torch.from_numpy(B).float() @ torch.from_numpy(U).float()
    nxt = torch.relu(BU)  # A @ 0 + B U
    best, wait, it, reason = np.inf, patience, 0, "max_iter"
    while True:
        X = nxt
        nxt = torch.relu(A_t @ X + BU)
        diff = float(torch.linalg.matrix_norm(nxt - X, ord=np.inf))
        if diff < atol:
            reason = "converged"
            break
        if diff >= best:
            if wait <= 0:
                reason = "patience"
                break
            wait -= 1
        else:
            best, wait = diff, patience
        if it >= max_iter:
            break
        it += 1
    return nxt.numpy(), {"iterations": it, "stop": reason, "last_difference": diff}


def compare_states(raw: dict, path: Path) -> dict:
    """torchidl's raw (feature-first, float32) states against idlkit's cached ones, unscaled."""
    with np.load(path) as z:
        Z, X, Y, U = z["Z"] / z["scale"], z["X"] / z["scale"], z["Y_hat"], z["U"]
    ours = {"Z": Z, "X": X, "Y": Y, "U": U}
    return {k: float(np.abs(raw[k].T - v).max() / max(np.abs(v).max(), 1e-300)) for k, v in ours.items()}


def torchidl_weights(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in "ABCD"}


def run_torchidl(net: nn.Module, data: dict, args: argparse.Namespace) -> dict:
    """torchidl's own pipeline: hook-extracted states, ``CVXSolver`` defaults, its fixed point."""
    import torchidl
    from torchidl.sim import SIM
    from torchidl.sim.solvers import CVXSolver

    m = args.samples
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data["X"][:m], data["y"][:m]),
                                         batch_size=m, shuffle=False)
    sim = SIM(activation_fn=F.relu, kappa=args.kappa, device="cpu", dtype=torch.float32)
    solver = CVXSolver(num_processes=args.processes)
    raw = sim.get_states(net, loader)  # the states train() extracts (deterministic)
    path = Path(args.cache) / f"torchidl_sim_fashion_{m}.npz"
    res = {"version": getattr(torchidl, "__version__", "0.0.4"), "weights": str(path),
           "states_vs_idlkit_max_rel_diff": compare_states(raw, Path(args.cache) / states_file(m)),
           "solver": {k: getattr(solver, k) for k in ("num_row", "batch_size", "processes", "lambda_y",
                                                      "lambda_z", "regularized", "well_pose", "tol")}}
    if args.reuse_torchidl and path.exists():
        W = torchidl_weights(path)
        res["seconds"] = float(np.load(path)["seconds"])
        log(f"torchidl: reusing the fit in {path} (its time {res['seconds']:.1f} s)")
    else:
        log(f"torchidl: CVXSolver(num_processes={args.processes}) on {m} samples, kappa={args.kappa} ...")
        t0 = time.perf_counter()
        sim.train(solver, net, loader)
        res["seconds"] = time.perf_counter() - t0
        log(f"torchidl: trained in {res['seconds']:.1f} s")
        W = {k: sim.weights[k].toarray() for k in "ABCD"}  # scipy CSR, float64
        atomic_save(path, lambda fh: np.savez_compressed(fh, **W, seconds=np.float64(res["seconds"])))
    res.update(sparse_stats(W))
    Ut = data["Xt"].T.numpy()  # what SIM.evaluate feeds: dataset.data.flatten(1).T
    t0 = time.perf_counter()
    Xt, res["test_fixpoint"] = torchidl_fixpoint(W["A"], W["B"], Ut)
    pred = (W["C"] @ Xt + W["D"] @ Ut).argmax(0)
    res["test_fixpoint"]["seconds"] = time.perf_counter() - t0
    res["test_accuracy"] = float((pred == data["yt"].numpy()).mean())
    with torch.no_grad():
        res["test_agreement_with_teacher"] = float((pred == net(data["Xt"]).argmax(1).numpy()).mean())
    log(f"torchidl: test accuracy {res['test_accuracy']:.4f} ({res['test_fixpoint']})")
    X, U, Z, Y = raw["X"], raw["U"], raw["Z"], raw["Y"]
    res["train_state_rel_residual"] = float(np.linalg.norm(Z - W["A"] @ X - W["B"] @ U) / np.linalg.norm(Z))
    res["train_output_rel_residual"] = float(np.linalg.norm(Y - W["C"] @ X - W["D"] @ U) / np.linalg.norm(Y))
    res["raw_states"] = {"dtype": str(X.dtype), "shape_Z": list(Z.shape), "max_abs_Z": float(np.abs(Z).max()),
                         "teacher_layer_inf_norms": [float(p.detach().abs().sum(1).max())
                                                     for p in net.parameters()]}
    return res


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def markdown(res: dict) -> str:
    t, a, ti = res["teacher"], ANCHOR, res.get("torchidl") or {}
    sparsity = (lambda k: (1 - k / t["nnz"]) * 100)  # noqa: E731
    rows = [("teacher test accuracy", pct(t["test_accuracy"]), pct(a["teacher_accuracy"])),
            ("teacher nonzeros", f"{t['nnz']:,}", f"{a['teacher_nnz']:,}")]
    if ti.get("nnz") is not None:
        by = ti["nnz_by_matrix"]
        rows += [("torchidl SIM test accuracy", pct(ti["test_accuracy"]), pct(a["torchidl_accuracy"])),
                 ("torchidl nonzeros (A, B, C, D; \\|w\\| > 0)", f"{ti['nnz']:,}", f"{a['torchidl_nnz']:,}"),
                 ("torchidl nonzeros, \\|w\\| > 1e-6", f"{ti['nnz_1e-6']:,}", "-"),
                 ("nonzeros of A / B / C / D", " / ".join(f"{by[k]:,}" for k in "ABCD"), "-"),
                 ("sparsity (1 - nnz / teacher nnz) x 100", f"{sparsity(ti['nnz']):.1f} %",
                  f"{sparsity(a['torchidl_nnz']):.1f} %"),
                 ("torchidl time (wall, s; 2 shared cores, see below)", f"{ti['seconds']:.0f}",
                  f"{a['torchidl_seconds']:.0f}"),
                 ("torchidl \\|\\|A\\|\\|_inf", f"{ti['A_inf_norm']:.4f}", "-"),
                 ("torchidl test agreement with teacher", pct(ti["test_agreement_with_teacher"]), "-"),
                 ("torchidl rel. state residual (train)", f"{ti['train_state_rel_residual']:.3g}", "-"),
                 ("torchidl rel. output residual (train)", f"{ti['train_output_rel_residual']:.3g}", "-")]
    elif ti.get("error"):
        rows.append(("torchidl", f"error: {ti['error']}", ""))
    mc = res["machine"]
    lines = ["# torchidl SIM anchor on Fashion-MNIST (paper 002 §4, App. C Tables 2-3)", "",
             f"{res['samples']:,} training samples, kappa = {res['kappa']}, bias-free 784-64-32-16-10 ReLU "
             f"teacher ({t['epochs']} epochs Adam lr {t['lr']}, batch {t['batch']}, seed {t['seed']}); "
             f"inputs: pixels / 255 in [0, 1]; torchidl {ti.get('version', '0.0.4')} `CVXSolver` defaults "
             f"with num_processes = {res['processes']} (Clarabel; MOSEK absent).", "",
             "| quantity | measured | issue's anchor |", "|---|---|---|"]
    lines += [f"| {q} | {v} | {r} |" for q, v, r in rows]
    lines += ["", f"Machine: {mc['cpu']}, {mc['usable_cpus']} usable CPUs shared with other jobs (load "
              f"average {mc['loadavg_start'][0]:.2f} at start, {mc['loadavg_end'][0]:.2f} at end), so the "
              f"wall time overstates the solver's cost; torch {mc['torch']}.", ""]
    if ti.get("nnz") is not None:
        fp, hidden = ti["test_fixpoint"], ti["raw_states"]["teacher_layer_inf_norms"][1:-1]
        hidden_norm, norms = max(hidden), ", ".join(f"{v:.2f}" for v in hidden)
        lines += [f"Test fixed point (torchidl's `fixpoint_iteration` rule, `B U` formed once): "
                  f"{fp['iterations']} iterations, stop = {fp['stop']}, {fp['seconds']:.1f} s.", "",
                  "torchidl extracts its own states (forward hooks on the ReLU modules, float32, "
                  "feature-first) **without** paper 002 §3's rescaling: they equal idlkit's states "
                  "divided by `scale` up to float32 rounding (max rel. diff of Z "
                  f"{ti['states_vs_idlkit_max_rel_diff']['Z']:.1e}). The teacher's own A has "
                  f"||A||_inf = {hidden_norm:.2f} > kappa (hidden layers' inf-norms {norms}), so on the "
                  f"unscaled states the constraint ||A||_inf <= {res['kappa']} forces the state residual "
                  "above (B fills in: it is almost dense), and the accuracy drops.", ""]
    lines += [f"idlkit's rescaled states: `{rel(res['states']['path'])}` (divisor s = "
              f"{res['states']['divisor']:.4g}); teacher: `{rel(t['cache'])}`"
              + (f"; torchidl's fit: `{rel(ti['weights'])}`." if ti.get("weights") else "."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2000, help="training images for SIM (default 2000)")
    ap.add_argument("--retrain", action="store_true", help="retrain the teacher even when cached")
    ap.add_argument("--skip-torchidl", action="store_true", help="teacher and states only")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    ap.add_argument("--reuse-torchidl", action="store_true",
                    help="evaluate the cached torchidl fit instead of solving again (its time is the cached "
                         "solve's; the load average is this run's)")
    ap.add_argument("--processes", type=int, default=2, help="CVXSolver num_processes (default 2)")
    ap.add_argument("--kappa", type=float, default=0.99)
    ap.add_argument("--epochs", type=int, default=6, help="teacher epochs (default 6)")
    ap.add_argument("--lr", type=float, default=1e-3, help="teacher Adam lr (default 1e-3)")
    ap.add_argument("--batch", type=int, default=64, help="teacher batch (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=str(CACHE), help=f"cache folder (default {CACHE})")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", default="sim_fashion_anchor")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):  # inherited by CVXSolver's forked workers
        data = load_image_data("fashion_mnist", limit=None, val=0, norm="none")
        res = {"samples": args.samples, "kappa": args.kappa, "processes": args.processes,
               "anchor": ANCHOR, "machine": machine(), "data": data["source"]}
        net, res["teacher"] = get_teacher(data, args)
        res["teacher"]["test_accuracy"] = accuracy(net, data["Xt"], data["yt"])
        res["teacher"]["nnz"] = nnz(list(net.parameters()))
        log(f"teacher: test accuracy {res['teacher']['test_accuracy']:.4f}, nnz {res['teacher']['nnz']:,}")
        res["states"] = save_states(net, data, args)
        if not args.skip_torchidl:
            try:
                res["torchidl"] = run_torchidl(net, data, args)
            except ImportError as e:
                res["torchidl"] = {"error": f"torchidl not importable: {e}"}
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    md = markdown(res)
    write_results(Path(args.out), args.name, res, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
