"""Shared pieces of the §7.2 experiment scripts (paper 000): data, the three trainers, output.

Every model sees the same preprocessed tensors and the same batch order: one
``torch.randperm`` per epoch from a ``torch.Generator`` seeded with the run's seed, exactly
as :class:`idlkit.train.Trainer` draws it. Training time (``train_seconds``) counts the
optimisation steps only; the test accuracy after every epoch is measured outside it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import idlkit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent



# ----------------------------------------------------------------------------- output


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.lower().startswith("model name")),
                       cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = commit and commit + ("+dirty(src)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
            "git_commit": commit,
            "usable_cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "loadavg_start": list(os.getloadavg())}


def write_results(out: Path, name: str, payload: dict, md: str) -> None:
    payload["machine"]["loadavg_end"] = list(os.getloadavg())
    atomic_write(out / f"{name}.json", json.dumps(payload, indent=2) + "\n")
    atomic_write(out / f"{name}.md", md)


def mean_std(xs: list[float], spec: str = ".4f") -> str:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return "-"
    if len(xs) == 1:
        return format(xs[0], spec)
    return f"{format(float(np.mean(xs)), spec)} ± {format(float(np.std(xs)), spec)}"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data


def load_image_data(name: str, *, limit: int | None, val: int, norm: str,
                    test_limit: int | None = None) -> dict:
    """``idlkit.datasets.load(name)`` flattened, in [0, 1], then normalised with train statistics.

    ``val > 0`` holds out the last ``val`` training samples as a validation set (the
    test set is then still reported, but choices should be made on validation).
    ``limit`` keeps the first ``limit`` training samples (after the hold-out).
    ``norm``: ``none`` ([0, 1] pixels), ``global`` (one mean and std over all pixels of
    the training set), ``pixel`` (per-feature mean and std of the training set, std floored
    at 1e-2), ``image`` (each image to mean 0, std 1: contrast normalisation) or ``minmax``
    (each image stretched to [0, 1]).
    """
    ds = idlkit.datasets.load(name)
    X, y = ds.x_train.astype(np.float32), ds.y_train.astype(np.int64)
    Xt, yt = ds.x_test[:test_limit].astype(np.float32), ds.y_test[:test_limit].astype(np.int64)
    Xv = yv = None
    if val > 0:
        rng = np.random.default_rng(12345)  # fixed, independent of the run seeds
        perm = rng.permutation(X.shape[0])
        X, y, Xv, yv = X[perm[val:]], y[perm[val:]], X[perm[:val]], y[perm[:val]]
    if limit is not None:
        X, y = X[:limit], y[:limit]
    if norm == "global":
        mu, sd = float(X.mean()), float(X.std())
        f = (lambda a: (a - mu) / sd)  # noqa: E731
    elif norm == "pixel":
        mu, sd = X.mean(0), np.maximum(X.std(0), 1e-2)
        f = (lambda a: (a - mu) / sd)  # noqa: E731
    elif norm == "image":  # per-image standardisation (contrast normalisation), no train statistics
        def f(a: np.ndarray) -> np.ndarray:
            return (a - a.mean(1, keepdims=True)) / np.maximum(a.std(1, keepdims=True), 1e-2)
    elif norm == "minmax":  # each image stretched to [0, 1]
        def f(a: np.ndarray) -> np.ndarray:
            lo, hi = a.min(1, keepdims=True), a.max(1, keepdims=True)
            return (a - lo) / np.maximum(hi - lo, 1e-2)
    elif norm == "none":
        f = (lambda a: a)  # noqa: E731
    else:
        raise ValueError(f"unknown norm {norm!r}")

    def t(a: np.ndarray | None, lab: bool = False) -> torch.Tensor | None:
        if a is None:
            return None
        return torch.from_numpy(np.ascontiguousarray(a if lab else f(a).astype(np.float32)))

    return {"X": t(X), "y": t(y, True), "Xv": t(Xv), "yv": t(yv, True), "Xt": t(Xt), "yt": t(yt, True),
            "num_classes": ds.num_classes, "source": ds.source}


def accuracy(model: torch.nn.Module, X: torch.Tensor | None, y: torch.Tensor | None,
             chunk: int = 1000) -> float:
    if X is None:
        return math.nan
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, X.shape[0], chunk):
            correct += int((model(X[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum())
    model.train(was)
    return correct / X.shape[0]


def _summary(curve: list[dict], train_seconds: float, wall: float, extra: dict) -> dict:
    best = max(curve, key=lambda r: (r["val_accuracy"] if not math.isnan(r["val_accuracy"])
                                      else r["test_accuracy"]))
    return {"curve": curve, "final_test_accuracy": curve[-1]["test_accuracy"],
            "best_test_accuracy": max(r["test_accuracy"] for r in curve),
            "final_val_accuracy": curve[-1]["val_accuracy"],
            "best_val_accuracy": max(r["val_accuracy"] for r in curve),
            "test_accuracy_at_best_val": best["test_accuracy"],
            "train_seconds": train_seconds, "wall_seconds": wall, **extra}


# ----------------------------------------------------------------------------- trainers


def train_idlkit(data: dict, *, hidden: int, epochs: int, batch: int, lr: float, kappa: float,
                 schedule: str, seed: int, tol: float, solver: str = "anderson",
                 weight_decay: float = 0.0, dtype: torch.dtype = torch.float32,
                 verbose: bool = True) -> dict:
    """idlkit ``ImplicitModel`` (ReLU, ``||A||_inf <= kappa``) + ``Trainer`` (Adam, projected)."""
    X, y = data["X"].to(dtype), data["y"]
    Xv = None if data["Xv"] is None else data["Xv"].to(dtype)
    Xt = data["Xt"].to(dtype)
    torch.manual_seed(seed)
    model = idlkit.ImplicitModel(X.shape[1], hidden, data["num_classes"], "relu", kappa=kappa,
                                 solver=solver, tol=tol, dtype=dtype, on_nonconvergence="warn")
    curve: list[dict] = []
    t_wall = time.perf_counter()

    def on_epoch(rec: object) -> None:
        r = {"epoch": rec.epoch, "seconds": rec.seconds, "train_loss": rec.train_loss,
             "val_accuracy": accuracy(model, Xv, data["yv"]),
             "test_accuracy": accuracy(model, Xt, data["yt"]),
             "forward_iterations": rec.forward_iterations, "backward_iterations": rec.backward_iterations}
        curve.append(r)
        if verbose:
            log(f"  idlkit    ep {rec.epoch:3d}: {rec.seconds:6.1f} s loss {rec.train_loss:.4f} "
                f"val {r['val_accuracy']:.4f} test {r['test_accuracy']:.4f} "
                f"it {rec.forward_iterations:.1f}/{rec.backward_iterations:.1f}")

    trainer = idlkit.train.Trainer(optimizer="adam", lr=lr, epochs=epochs, batch_size=batch,
                                   schedule=schedule, seed=seed, weight_decay=weight_decay, log=on_epoch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, (X, y))
    return _summary(curve, sum(r["seconds"] for r in curve), time.perf_counter() - t_wall,
                    {"inf_norm_A": idlkit.wellposed.inf_norm(model.A),
                     "nonconvergence_warnings": len(caught)})


def _loop(model: torch.nn.Module, data: dict, *, opt: torch.optim.Optimizer,
          sched: torch.optim.lr_scheduler.LRScheduler | None, epochs: int, batch: int, seed: int,
          label: str, verbose: bool) -> tuple[list[dict], float, int]:
    """Plain training loop with the Trainer's batch order; returns (curve, wall, warnings)."""
    X, y = data["X"], data["y"]
    gen = torch.Generator().manual_seed(seed)
    curve: list[dict] = []
    n_warn = 0
    t_wall = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(X.shape[0], generator=gen)
        total = 0.0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(0, X.shape[0], batch):
                idx = perm[i:i + batch]
                loss = F.cross_entropy(model(X[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
        if sched is not None:
            sched.step()
        seconds = time.perf_counter() - t0
        n_warn += len(caught)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchidl's non-convergence warnings at evaluation
            r = {"epoch": epoch, "seconds": seconds, "train_loss": total / X.shape[0],
                 "val_accuracy": accuracy(model, data["Xv"], data["yv"]),
                 "test_accuracy": accuracy(model, data["Xt"], data["yt"])}
        curve.append(r)
        if verbose:
            log(f"  {label:9s} ep {epoch:3d}: {seconds:6.1f} s loss {r['train_loss']:.4f} "
                f"val {r['val_accuracy']:.4f} test {r['test_accuracy']:.4f}")
    return curve, time.perf_counter() - t_wall, n_warn


def mlp(sizes: list[int]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def train_network(data: dict, *, sizes: list[int], epochs: int, batch: int, lr: float, schedule: str,
                  seed: int, verbose: bool = True) -> dict:
    """A ReLU MLP (PyTorch default init) trained with Adam."""
    torch.manual_seed(seed)
    net = mlp(sizes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) if schedule == "cosine" else None
    curve, wall, _ = _loop(net, data, opt=opt, sched=sched, epochs=epochs, batch=batch, seed=seed,
                           label="network", verbose=verbose)
    return _summary(curve, sum(r["seconds"] for r in curve), wall, {"lr": lr})


def train_torchidl(data: dict, *, hidden: int, epochs: int, batch: int, lr: float, kappa: float,
                   tol: float, seed: int, schedule: str = "constant", verbose: bool = True) -> dict:
    """torchidl 0.0.4's ``ImplicitModel`` (its own init, Picard solves, bias) + Adam."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _common import load_torchidl  # benchmarks/_common.py
    finally:
        sys.path.pop(0)
    tb, _, note = load_torchidl()
    if tb is None:
        return {"error": note}
    torch.manual_seed(seed)
    model = tb.ImplicitModel(data["X"].shape[1], data["num_classes"], hidden, bias=True, kappa=kappa,
                             tol=tol, grad_tol=tol, mitr=300, grad_mitr=300)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) if schedule == "cosine" else None
    curve, wall, n_warn = _loop(model, data, opt=opt, sched=sched, epochs=epochs, batch=batch, seed=seed,
                                label="torchidl", verbose=verbose)
    return _summary(curve, sum(r["seconds"] for r in curve), wall,
                    {"nonconvergence_warnings": n_warn, "loader": note})


# ----------------------------------------------------------------------------- image experiments


def add_image_args(ap: object, *, hidden: int, epochs: int, lr: float, nn_lrs: list[float],
                   kappa: float, schedule: str, norm: str, tol: float) -> None:
    ap.add_argument("--epochs", type=int, default=epochs, help=f"epochs of every model (default {epochs})")
    ap.add_argument("--seeds", type=int, default=1, help="runs with seeds 0..N-1 (default 1)")
    ap.add_argument("--limit", type=int, default=None, help="keep the first N training samples")
    ap.add_argument("--val", type=int, default=0,
                    help="hold out N training samples (fixed random subset) for validation (default 0)")
    ap.add_argument("--test-limit", type=int, default=None,
                    help="evaluate on the first N test samples only (quick checks)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=hidden, help=f"implicit n (default {hidden})")
    ap.add_argument("--lr", type=float, default=lr, help=f"idlkit Adam lr (default {lr:g})")
    ap.add_argument("--kappa", type=float, default=kappa, help=f"idlkit ||A||_inf bound (default {kappa})")
    ap.add_argument("--schedule", default=schedule, choices=("constant", "cosine", "step"),
                    help=f"lr schedule of idlkit and the network (default {schedule})")
    ap.add_argument("--tol", type=float, default=tol, help=f"idlkit solver tolerance (default {tol:g})")
    ap.add_argument("--nn-lrs", type=float, nargs="+", default=nn_lrs,
                    help="network Adam lr grid; several values are searched on a validation "
                         "hold-out (see --nn-search-val)")
    ap.add_argument("--nn-search-val", type=int, default=10000,
                    help="validation samples held out of the training set for the network lr search")
    ap.add_argument("--torchidl-lr", type=float, default=1e-3)
    ap.add_argument("--torchidl-kappa", type=float, default=0.95)
    ap.add_argument("--torchidl-tol", type=float, default=1e-6)
    ap.add_argument("--torchidl-schedule", default="constant", choices=("constant", "cosine"),
                    help="torchidl's lr schedule (default constant, the issue's setting)")
    ap.add_argument("--norm", default=norm, choices=("none", "global", "pixel", "image", "minmax"),
                    help=f"input normalisation, the same for all models (default {norm})")
    ap.add_argument("--models", nargs="+", default=["idlkit", "network", "torchidl"],
                    choices=("idlkit", "network", "torchidl"))
    ap.add_argument("--skip-torchidl", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--name", dest="out_name", default=None,
                    help="stem of the result files (default: the script's name)")
    ap.add_argument("--quiet", action="store_true")


def search_network_lr(name: str, args: object, sizes: list[int]) -> tuple[float, dict]:
    """Grid search of the network's Adam lr on a hold-out of the training set (best val accuracy)."""
    if len(args.nn_lrs) == 1:
        return args.nn_lrs[0], {}
    n_val = args.nn_search_val if args.limit is None else min(args.nn_search_val, args.limit // 5)
    limit = None if args.limit is None else max(args.limit - n_val, 1)
    data = load_image_data(name, limit=limit, val=n_val, norm=args.norm, test_limit=args.test_limit)
    args.nn_search_val = n_val
    scores = {}
    for lr in args.nn_lrs:
        r = train_network(data, sizes=sizes, epochs=args.epochs, batch=args.batch, lr=lr,
                          schedule=args.schedule, seed=0, verbose=False)
        scores[lr] = r["best_val_accuracy"]
        log(f"  network lr {lr:g}: best val accuracy {scores[lr]:.4f}")
    return max(scores, key=scores.get), {str(k): v for k, v in scores.items()}


def run_image(name: str, args: object, sizes: list[int], paper: dict, title: str) -> int:
    torch.set_num_threads(args.threads)
    models = [m for m in args.models if not (m == "torchidl" and args.skip_torchidl)]
    try:
        data = load_image_data(name, limit=args.limit, val=args.val, norm=args.norm,
                               test_limit=args.test_limit)
    except idlkit.IdlError as exc:
        log(f"error: {exc}")
        return 2
    res: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                 "machine": machine(), "paper": paper, "source": data["source"],
                 "train_samples": int(data["X"].shape[0]), "test_samples": int(data["Xt"].shape[0]),
                 "val_samples": 0 if data["Xv"] is None else int(data["Xv"].shape[0]), "runs": {}}
    nn_lr = args.nn_lrs[0]
    if "network" in models and len(args.nn_lrs) > 1:
        log("network lr search ...")
        nn_lr, res["network_lr_search"] = search_network_lr(name, args, sizes)
    res["network_lr"] = nn_lr
    for m in models:
        res["runs"][m] = []
        for seed in range(args.seeds):
            log(f"{m}, seed {seed} ...")
            if m == "idlkit":
                r = train_idlkit(data, hidden=args.hidden, epochs=args.epochs, batch=args.batch, lr=args.lr,
                                 kappa=args.kappa, schedule=args.schedule, seed=seed, tol=args.tol,
                                 verbose=not args.quiet)
            elif m == "network":
                r = train_network(data, sizes=sizes, epochs=args.epochs, batch=args.batch, lr=nn_lr,
                                  schedule=args.schedule, seed=seed, verbose=not args.quiet)
            else:
                r = train_torchidl(data, hidden=args.hidden, epochs=args.epochs, batch=args.batch,
                                   lr=args.torchidl_lr, kappa=args.torchidl_kappa, tol=args.torchidl_tol,
                                   schedule=args.torchidl_schedule, seed=seed, verbose=not args.quiet)
            res["runs"][m].append(r)
            if "error" in r:
                log(f"  {m}: {r['error']}")
                break
    md = image_markdown(res, sizes, title)
    stem = Path(sys.argv[0]).stem if args.out_name is None else args.out_name
    write_results(args.out, stem, res, md)
    print(md)
    return 0


def image_markdown(res: dict, sizes: list[int], title: str) -> str:
    cfg = res["config"]
    labels = {"idlkit": f"implicit n={cfg['hidden']} (idlkit)",
              "network": "network " + "-".join(map(str, sizes)),
              "torchidl": f"implicit n={cfg['hidden']} (torchidl 0.0.4)"}
    paper = res["paper"]
    split = (f"{res['train_samples']} train / {res['val_samples']} validation (held out of the "
             f"training set) / {res['test_samples']} test" if res["val_samples"]
             else f"{res['train_samples']} train / {res['test_samples']} test")
    m = res["machine"]
    lines = [
        f"# {title}",
        "",
        f"{m['timestamp']}; {m['cpu']}, {cfg['threads']} torch thread(s), torch {m['torch']}; load "
        f"average (1 min) at start {m['loadavg_start'][0]:.2f} on {m['usable_cpus']} CPUs shared with "
        f"other work (timings are indicative). {split}; input normalisation `{cfg['norm']}` (the same "
        f"for every model); batch {cfg['batch']}, {cfg['epochs']} epochs, same batch order for all "
        f"models; {cfg['seeds']} seed(s) (mean ± std over seeds).",
        "",
        f"- idlkit: ReLU, `||A||_inf <= {cfg['kappa']}` (projection after every step), Adam lr "
        f"{cfg['lr']:g}, {cfg['schedule']} schedule, solver tol {cfg['tol']:g}, idlkit's default init.",
        f"- network: Adam, lr {res.get('network_lr', '-'):g} "
        + (f"(grid {cfg['nn_lrs']} searched on a {cfg['nn_search_val']}-sample hold-out of the training "
           f"set: {res.get('network_lr_search')})" if res.get("network_lr_search") else "(fixed)")
        + f", {cfg['schedule']} schedule, PyTorch default init.",
        f"- torchidl: its `ImplicitModel` with bias, kappa {cfg['torchidl_kappa']}, tol "
        f"{cfg['torchidl_tol']:g}, Adam lr {cfg['torchidl_lr']:g}, "
        f"{cfg.get('torchidl_schedule', 'constant')} schedule (the issue's setting: 1e-3, constant).",
        "",
        "| model | best test acc (paper's metric) | final test acc | paper | train time (s) | "
        "s / epoch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    if res["val_samples"]:
        lines[-2:] = ["| model | best test acc (paper's metric) | final test acc | test acc at best val "
                      "| paper | train time (s) | s / epoch |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key, runs in res["runs"].items():
        runs = [r for r in runs if "error" not in r]
        if not runs:
            lines.append(f"| {labels[key]} | error: {res['runs'][key][0].get('error')} | | | | |")
            continue
        best = mean_std([r["best_test_accuracy"] for r in runs])
        final = mean_std([r["final_test_accuracy"] for r in runs])
        secs = [r["train_seconds"] for r in runs]
        per = [r["train_seconds"] / len(r["curve"]) for r in runs]
        cells = [labels[key], best, final]
        if res["val_samples"]:
            cells.append(mean_std([r["test_accuracy_at_best_val"] for r in runs]))
        cells += [str(paper.get(key, "-")), mean_std(secs, ".0f"), mean_std(per, ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Best test accuracy = the highest test accuracy over the epochs (the paper's "
              "\"average best accuracy\"); final = after the last epoch. Train time counts the "
              "optimisation steps only (the per-epoch evaluation is excluded)."]
    notes = []
    for key, runs in res["runs"].items():
        w = sum(r.get("nonconvergence_warnings", 0) for r in runs)
        if w:
            notes.append(f"{key}: {w} non-convergence warnings")
    if notes:
        lines.append("Solver: " + "; ".join(notes) + ".")
    return "\n".join(lines) + "\n"
