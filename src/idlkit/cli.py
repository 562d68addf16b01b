"""The ``idlkit`` command (typer). Nothing imports this module.

Every command validates its options' ranges before any work (typer ranges: a usage error, exit
2), checks its output path before training, and :func:`main` (the console script) turns any
:class:`~idlkit.errors.IdlError` or ``OSError`` into a one-line ``error: ...`` on stderr with exit
status 2: never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import typer

app = typer.Typer(help="idlkit: implicit deep learning.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def _main() -> None:
    """idlkit command line."""


def _error_line(msg: object) -> None:
    from rich.console import Console

    text = " ".join(line.strip() for line in str(msg).splitlines() if line.strip())
    Console(stderr=True).print(f"error: {text}", markup=False, highlight=False, soft_wrap=True)


def _fail(msg: object) -> NoReturn:
    """Print ``error: msg`` (one line) on stderr and exit with status 2."""
    _error_line(msg)
    raise typer.Exit(code=2)


def _check_out(path: Path, option: str = "--out") -> None:
    """Refuse an output file path that cannot be written, before any long work."""
    if path.is_dir():
        _fail(f"{option} {path} is a directory; pass a file path such as {path / 'model.safetensors'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        _fail(f"{option} {path}: {parent} is a file, not a folder; choose another path")
    import os

    if not os.access(parent, os.W_OK):
        _fail(f"{option} {path}: the folder {parent} is not writable; choose another path")


def main() -> None:
    """The console script: ``app`` with every IdlError / OSError as a one-line message (exit 2)."""
    from .errors import IdlError

    try:
        status = app(standalone_mode=False)  # returns the code of a typer.Exit raised inside
    except typer.Exit as exc:  # the status a command chose
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: an option out of range, a missing value
        _error_line(exc.format_message() + " (see --help)")
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        _error_line("interrupted")
        sys.exit(130)
    except (IdlError, OSError) as exc:
        cause = f" ({exc.__cause__})" if isinstance(exc.__cause__, OSError) else ""
        _error_line(f"{type(exc).__name__}: {exc}{cause}")
        sys.exit(2)
    sys.exit(status if isinstance(status, int) else 0)


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="folder of the saved models and "
                                  "certificates.json"),
         report: Path = typer.Option(Path("report"), help="folder of the HTML report "
                                     "(index.html and its PNG figures)"),
         hidden: int = typer.Option(64, min=1, help="state size n of the trained implicit model"),
         epochs: int = typer.Option(15, min=1, help="training epochs (implicit model and network)"),
         kappa: float = typer.Option(0.95, help="bound on ||A||_inf kept during training, in (0, 1)"),
         attack_samples: int = typer.Option(5, min=1, help="test digits attacked and drawn"),
         sim_samples: int = typer.Option(1000, min=10, help="training digits whose states SIM matches"),
         seed: int = typer.Option(0, min=0, help="random seed")) -> None:
    """The whole pipeline on scikit-learn's digits, into report/index.html.

    Trains an implicit model and a feed-forward network, converts the network, certifies every
    model (certificates.json), computes the sensitivity matrix and Lipschitz bounds, runs the
    sensitivity and LP attacks, fits a sparse SIM model and compresses.
    """
    from .demo import run_demo

    _check_kappa(kappa, open_top=True)
    _check_folder(out, "--out")
    _check_folder(report, "--report")
    run_demo(out_dir=out, report_dir=report, hidden=hidden, epochs=epochs, kappa=kappa, seed=seed,
             attack_samples=attack_samples, sim_samples=sim_samples)


def _check_folder(path: Path, option: str) -> None:
    """Refuse an output folder that is a file or cannot be created/written, before any work."""
    import os

    if path.exists() and not path.is_dir():
        _fail(f"{option} {path} is a file; pass a folder path")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        _fail(f"{option} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK):
        _fail(f"{option} {path}: the folder {parent} is not writable; choose another path")


def _check_kappa(kappa: float, *, open_top: bool) -> None:
    import math

    ok = math.isfinite(kappa) and 0 < kappa and (kappa < 1 if open_top else kappa <= 1)
    if not ok:
        _fail(f"--kappa must lie in (0, 1{')' if open_top else ']'} (the bound ||A||_inf <= kappa that "
              f"makes the model well-posed); got {kappa}")


@app.command()
def train(
    data: str = typer.Option(..., "--data", help="dataset name: digits, mnist, fashion_mnist, gtsrb, "
                             "newsgroups20 or cifar10 (files found via $IDLKIT_DATA)"),
    hidden: int = typer.Option(100, min=1, help="state size n (hidden features)"),
    epochs: int = typer.Option(10, min=1, help="training epochs"),
    batch_size: int = typer.Option(100, min=1, help="mini-batch size"),
    lr: float = typer.Option(1e-3, help="learning rate (> 0)"),
    optimizer: str = typer.Option("adam", help="optimizer: adam, sgd, adamw or rmsprop"),
    kappa: float = typer.Option(0.95, help="bound on ||A||_inf (well-posedness), in (0, 1)"),
    activation: str = typer.Option("relu", help="activation of the implicit layer"),
    solver: str = typer.Option("anderson", help="fixed-point solver (anderson, picard, ...)"),
    tol: float = typer.Option(1e-6, help="solver tolerance (> 0)"),
    seed: int = typer.Option(0, min=0, help="random seed (initialisation, validation split, batch order)"),
    val_fraction: float = typer.Option(0.1, help="fraction of the training set held out for "
                                       "validation (deterministic from --seed); 0 disables it"),
    patience: int | None = typer.Option(None, min=1, help="early stopping after this many epochs without a "
                                        "better validation loss (default: off)"),
    float64: bool = typer.Option(False, "--float64", help="train in double precision"),
    checkpoint: Path | None = typer.Option(None, help="trainer checkpoint file, written every epoch"),
    resume: bool = typer.Option(False, "--resume", help="continue from --checkpoint if it exists"),
    limit: int | None = typer.Option(None, help="use only the first N training samples (quick runs)"),
    out: Path = typer.Option(Path("model.safetensors"), help="where to save the trained model"),
) -> None:
    """Train an implicit model on a dataset, report train/val/test metrics and save it."""
    import math

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    fail = _fail

    if not 0 <= val_fraction < 1:
        fail(f"--val-fraction must lie in [0, 1), got {val_fraction}")
    if limit is not None and limit < 1:
        fail(f"--limit must be a positive integer, got {limit}")
    if not (math.isfinite(lr) and lr > 0):
        fail(f"--lr must be a positive number, got {lr}")
    if not (math.isfinite(tol) and tol > 0):
        fail(f"--tol must be a positive number, got {tol}")
    _check_kappa(kappa, open_top=True)
    _check_out(out)
    if checkpoint is not None:
        _check_out(checkpoint, "--checkpoint")

    import numpy as np
    import torch

    from . import datasets, io
    from .errors import IdlError
    from .model import ImplicitModel
    from .train import Trainer

    try:
        ds = datasets.load(data, seed=seed)
        x_all = torch.from_numpy(np.asarray(ds.x_train))
        y_all = torch.from_numpy(np.asarray(ds.y_train))
        if limit is not None:
            x_all, y_all = x_all[:limit], y_all[:limit]
        n_total = x_all.shape[0]
        n_val = int(round(val_fraction * n_total))
        if val_fraction > 0 and not 0 < n_val < n_total:
            fail(f"--val-fraction {val_fraction} leaves an empty split of {n_total} samples")
        perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
        val_idx, tr_idx = perm[:n_val], perm[n_val:]
        train_data = (x_all[tr_idx], y_all[tr_idx])
        val_data = (x_all[val_idx], y_all[val_idx]) if n_val > 0 else None
        test_data = (torch.from_numpy(np.asarray(ds.x_test)), torch.from_numpy(np.asarray(ds.y_test)))
        dtype = torch.float64 if float64 else torch.float32
        torch.manual_seed(seed)
        model = ImplicitModel(x_all.shape[1], hidden, ds.num_classes, activation=activation,
                              kappa=kappa, solver=solver, tol=tol, dtype=dtype)
        console.print(f"[bold]{ds.name}[/]: {len(tr_idx)} train, {n_val} validation, "
                      f"{test_data[0].shape[0]} test samples, {x_all.shape[1]} features, "
                      f"{ds.num_classes} classes; n = {hidden}, kappa = {kappa}, {solver}, "
                      f"{'float64' if float64 else 'float32'}", highlight=False)

        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            task = progress.add_task("epochs", total=epochs, stats="")

            def log(rec: object) -> None:
                acc = "" if math.isnan(rec.val_accuracy) else f"val acc {rec.val_accuracy:.4f} "
                progress.update(task, completed=rec.epoch,
                                stats=f"loss {rec.train_loss:.4f} {acc}"
                                      f"it fwd {rec.forward_iterations:.1f} bwd "
                                      f"{rec.backward_iterations:.1f} ({rec.seconds:.1f} s)")
                progress.console.print(
                    f"epoch {rec.epoch:>3}: train loss {rec.train_loss:.4f}, {acc}"
                    f"fwd/bwd iterations {rec.forward_iterations:.1f}/{rec.backward_iterations:.1f}, "
                    f"{rec.seconds:.1f} s", highlight=False)

            trainer = Trainer(optimizer=optimizer, lr=lr, epochs=epochs, batch_size=batch_size,
                              patience=patience, seed=seed, dtype=dtype, log=log)
            result = trainer.fit(model, train_data, val_data, checkpoint=checkpoint, resume=resume)
        test_loss, test_acc = trainer.evaluate(model, test_data)
        cert = model.certificate()
        saved = io.save(model, out)
    except IdlError as exc:
        fail(str(exc))

    hist = result.history
    last = hist[-1] if hist else None
    table = Table(title="training summary")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("epochs", f"{len(hist)}" + (f" (stopped early, best {result.best_epoch})"
                                                if result.stopped_early else ""))
    if last is not None:
        table.add_row("train loss (last epoch)", f"{last.train_loss:.4f}")
        table.add_row("val accuracy", "-" if math.isnan(last.val_accuracy) else f"{last.val_accuracy:.4f}")
        fwd = sum(r.forward_iterations for r in hist) / len(hist)
        bwd = sum(r.backward_iterations for r in hist) / len(hist)
        table.add_row("mean forward / backward iterations", f"{fwd:.1f} / {bwd:.1f}")
    table.add_row("test loss", f"{test_loss:.4f}")
    table.add_row("test accuracy", f"{test_acc:.4f}")
    table.add_row("training time", f"{result.seconds:.1f} s")
    holds = cert.inf_norm <= kappa * (1 + 1e-6)
    table.add_row("certificate ||A||_inf", f"{cert.inf_norm:.4f} (kappa {kappa}: "
                  f"{'holds' if holds else 'VIOLATED'}; well-posed: {'yes' if cert.wellposed else 'no'})")
    console.print(table)
    console.print(f"test accuracy: {test_acc:.4f}", highlight=False)
    console.print(f"model saved to {saved}", highlight=False)


@app.command()
def sim(
    data: str = typer.Option(..., "--data", help="dataset name: digits, mnist, fashion_mnist, gtsrb, "
                             "newsgroups, cifar10"),
    hidden: str = typer.Option("64,32,16", help="hidden sizes of the ReLU MLP teacher, comma separated"),
    epochs: int = typer.Option(5, min=1, help="teacher training epochs (Adam, lr 1e-3, batch 64)"),
    samples: int = typer.Option(2000, min=1, help="training samples whose states SIM matches"),
    objective: str = typer.Option("l1", help="exact, l1, perspective or lasso (paper 002 App. C)"),
    kappa: float = typer.Option(0.99, help="well-posedness bound ||A||_inf <= kappa, in (0, 1]"),
    beta: float | None = typer.Option(None, help="l1 weight (objective l1; teacher's units, per sample; "
                                      "default: scale-aware, 1.5e-4 x the median weight that zeroes a row)"),
    alpha: float | None = typer.Option(None, help="perspective weight (objective perspective; default: "
                                       "half the scale-aware l1 weight)"),
    lambda_state: float = typer.Option(0.1, help="state-matching weight lambda_1"),
    lambda_output: float = typer.Option(0.1, help="output-matching weight lambda_2"),
    backend: str = typer.Option("loky", help="loky, threading, ray, dask or serial"),
    n_jobs: int | None = typer.Option(None, min=1, help="workers (default: all cores)"),
    bias: bool = typer.Option(False, "--bias", help="teacher layers with biases"),
    seed: int = typer.Option(0, help="random seed"),
    out: Path = typer.Option(Path("sim_model.safetensors"), help="where to save the fitted model"),
) -> None:
    """Train an MLP teacher, fit an implicit model to its states with SIM, compare and save it."""
    from rich.console import Console

    console = Console()
    fail = _fail

    try:
        sizes = [int(h) for h in hidden.split(",") if h.strip()]
    except ValueError:
        fail(f"--hidden must be comma-separated integers such as 64,32,16; got {hidden!r}")
    if not sizes or min(sizes) < 1:
        fail(f"--hidden needs at least one positive size; got {hidden!r}")
    _check_kappa(kappa, open_top=False)
    _check_out(out)

    import numpy as np
    import torch
    from torch import nn

    from . import datasets, io
    from .baselines import fit_classifier
    from .errors import IdlError
    from .sim import SIM

    try:
        fitter = SIM(objective=objective, kappa=kappa, beta=beta, alpha=alpha, lambda_state=lambda_state,
                     lambda_output=lambda_output, backend=backend, n_jobs=n_jobs)
        ds = datasets.load(data, seed=seed)
        x = torch.as_tensor(np.asarray(ds.x_train), dtype=torch.float32).flatten(1)
        y = torch.as_tensor(np.asarray(ds.y_train)).long()
        xt = torch.as_tensor(np.asarray(ds.x_test), dtype=torch.float32).flatten(1)
        yt = torch.as_tensor(np.asarray(ds.y_test)).long()
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        width = x.shape[1]
        for h in sizes:
            layers += [nn.Linear(width, h, bias=bias), nn.ReLU()]
            width = h
        teacher = nn.Sequential(*layers, nn.Linear(width, ds.num_classes, bias=bias))
        fit_classifier(teacher, x, y, epochs=epochs, lr=1e-3, seed=seed)
        model, report = fitter.fit(teacher, x[:samples])
        with torch.no_grad():
            acc_t = float((teacher(xt).argmax(1) == yt).float().mean())
            acc_s = float((model(xt).argmax(1) == yt).float().mean())
        saved = io.save(model, out)
    except IdlError as exc:
        fail(str(exc))

    arch = "-".join(str(v) for v in [x.shape[1], *sizes, ds.num_classes])
    _print_quantities(f"SIM ({objective}) on {data}: teacher {arch}", [
        ("teacher test accuracy", f"{acc_t:.4f}"),
        ("SIM model test accuracy", f"{acc_s:.4f}"),
        ("nonzeros (teacher)", f"{report.nnz} ({report.baseline_nnz})"),
        ("sparsity (paper 002 §4.1)", f"{report.sparsity:.1f} %"),
        ("||A||_inf", f"{report.a_inf_norm:.4f} (kappa {kappa})"),
        ("state / output residual", f"{report.state_residual:.2e} / {report.output_residual:.2e}"),
        ("rows", f"{len(report.status)}, {len(report.fallback_rows)} by a fallback solver"),
        ("fit time", f"{report.seconds:.1f} s ({report.backend}, {report.n_jobs} jobs)")])
    console.print(f"model saved to {saved}", highlight=False)


@app.command()
def analyze(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="an implicit model saved with "
                                      "idlkit.save (a .safetensors file)"),
    data: str | None = typer.Option(None, "--data", help="dataset whose test split feeds the data "
                                    "sections (iterations, empirical Lipschitz, attacks): digits, "
                                    "mnist, fashion_mnist, gtsrb, newsgroups20 or cifar10 (files found "
                                    "via $IDLKIT_DATA); default: none, those sections say so"),
    out: Path = typer.Option(Path("report"), help="folder of the report (index.html and its PNGs)"),
    samples: int = typer.Option(200, min=1, help="test inputs used for the iteration histogram and "
                                "the empirical Lipschitz search"),
    attack_samples: int = typer.Option(5, min=1, help="test inputs attacked and drawn"),
    seed: int = typer.Option(0, min=0, help="random seed (data split, empirical Lipschitz search)"),
) -> None:
    """Write the HTML analysis report of a saved model: certificate, solver iterations, sparsity of
    A, sensitivity per class, certified vs empirical Lipschitz bounds, attacked inputs."""
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file; pass a folder such as {out.with_suffix('')}")
    if not model_path.is_file():
        _fail(f"MODEL {model_path} is not a file; pass a model saved with idlkit.save "
              f"(e.g. by idlkit train --out model.safetensors)")
    _check_out(out / "index.html")

    from .errors import IdlError
    from .report import write_report

    try:
        model = _saved_model(model_path)
        pair = None if data is None else _test_split(data, seed, model.in_features)
        result = write_report(model, out, data=pair, samples=samples, attack_samples=attack_samples,
                              seed=seed, title=f"idlkit analysis report: {model_path.name}")
    except IdlError as exc:
        _fail(str(exc))
    skipped = {k: v for k, v in result.sections.items() if v != "ok"}
    for name, why in skipped.items():
        typer.echo(f"section {name} not shown: {why}")
    typer.echo(f"report written to {result.path} ({len(result.figures)} figures, "
               f"{result.seconds:.1f} s)")


def _saved_model(model_path: Path) -> object:
    """The implicit model in ``model_path`` (written by ``idlkit.save``), or a one-line error."""
    if not model_path.is_file():
        _fail(f"MODEL {model_path} is not a file; pass a model saved with idlkit.save "
              f"(e.g. by idlkit train --out model.safetensors)")
    from . import io

    return io.load(model_path)


def _test_split(data: str, seed: int, in_features: int, samples: int | None = None) -> tuple:
    """The first ``samples`` (all: None) test inputs ``(m, p)`` and labels of ``data``, or a
    one-line error when ``p`` is not the model's ``in_features``."""
    import numpy as np
    import torch

    from . import datasets

    ds = datasets.load(data, split="test", seed=seed)
    U = torch.as_tensor(np.asarray(ds.x_test)).flatten(1)[:samples]
    if U.shape[1] != in_features:
        _fail(f"--data {data} has {U.shape[1]} features but the model takes {in_features}; "
              f"pass the dataset the model was trained on")
    return U, torch.as_tensor(np.asarray(ds.y_test))[:samples]


def _print_quantities(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table (quantity, value) on the console."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


@app.command()
def attack(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="an implicit model saved with "
                                      "idlkit.save (a .safetensors file)"),
    data: str = typer.Option(..., "--data", help="dataset whose test split is attacked: digits, mnist, "
                             "fashion_mnist, gtsrb, newsgroups20 or cifar10 (via $IDLKIT_DATA)"),
    method: str = typer.Option("sensitivity", help="attack: sensitivity, saliency, fgsm, pgd, jsma, lp "
                               "or inversion (idlkit.robust.ATTACKS)"),
    k: float | None = typer.Option(0.05, help="inputs the attack may change: a fraction in (0, 1] or, "
                                   "if >= 1, a count; none for every input (fgsm, pgd, inversion)"),
    epsilon: float | None = typer.Option(None, help="largest change of one input (>= 0); default: "
                                         "only the valid range of the data limits it"),
    samples: int = typer.Option(200, min=1, help="test inputs attacked (the first N)"),
    seed: int = typer.Option(0, min=0, help="random seed (data split)"),
) -> None:
    """Attack a saved model on test inputs and print the success rate (paper 000 §7.3, Table 1):
    only the inputs it classifies correctly are attacked; the valid range of the data is kept."""
    from .errors import IdlError
    from .robust import ATTACKS, Budget, success_rate

    if method not in ATTACKS:
        _fail(f"--method {method!r} is not an attack; choose from {sorted(ATTACKS)}")
    if k is not None and not (k > 0):
        _fail(f"--k must be > 0 (a fraction in (0, 1] or a count >= 1), got {k}")
    if epsilon is not None and not (epsilon >= 0):
        _fail(f"--epsilon must be >= 0, got {epsilon}")
    try:
        model = _saved_model(model_path)
        U, Y = _test_split(data, seed, model.in_features, samples)
        U = U.to(next(model.parameters()).dtype)
        count = None if k is None else (int(k) if k >= 1 else float(k))
        if method in ("fgsm", "pgd", "inversion"):
            count = None  # these move every input
        lo, hi = float(U.min()), float(U.max())
        budget = Budget(k=count, epsilon=epsilon, clip=(lo, hi))
        res = success_rate(model, method, U, Y, budget)
    except IdlError as exc:
        _fail(str(exc))
    _print_quantities(f"{method} attack on {model_path.name} ({data}, {U.shape[0]} test inputs)", [
        ("clean accuracy", f"{res.clean_accuracy:.4f}"),
        ("attacked (correct before)", f"{res.n_attacked}"),
        ("success rate", f"{res.rate:.4f} ({res.n_success} flipped)"),
        ("accuracy under attack", f"{res.clean_accuracy * (1 - res.rate):.4f}"),
        ("mean inputs changed", f"{res.mean_perturbed:.1f} of {U.shape[1]}"),
        ("budget", f"k={budget.k}, epsilon={budget.epsilon}, clip=({lo:g}, {hi:g})")])


@app.command()
def bench(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="an implicit model saved with "
                                      "idlkit.save (a .safetensors file)"),
    batch: int = typer.Option(256, min=1, help="inputs per call"),
    repeats: int = typer.Option(20, min=1, help="timed calls (the median is printed)"),
    float64: bool = typer.Option(False, "--float64", help="time the model in double precision"),
    seed: int = typer.Option(0, min=0, help="random seed of the inputs"),
) -> None:
    """Time a saved model: forward (equilibrium solve) and backward (implicit gradient) on random
    inputs, with the solver's iteration counts; the median of --repeats calls, one thread."""
    import statistics
    import time

    import torch
    from rich.console import Console
    from rich.table import Table

    from .errors import IdlError

    try:
        model = _saved_model(model_path)
        if float64:
            model = model.double()
        dtype = next(model.parameters()).dtype
        gen = torch.Generator().manual_seed(seed)
        U = torch.rand(batch, model.in_features, generator=gen, dtype=dtype)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            fwd, bwd = [], []
            for _ in range(repeats + 1):  # the first call warms up
                t0 = time.perf_counter()
                with torch.no_grad():
                    model(U)
                fwd.append(time.perf_counter() - t0)
                it_f = model.last_solve.iterations
                Ug = U.clone().requires_grad_(True)
                t0 = time.perf_counter()
                model(Ug).square().sum().backward()
                bwd.append(time.perf_counter() - t0)
                it_b = model.last_backward_solve.iterations if model.last_backward_solve else 0
        finally:
            torch.set_num_threads(threads)
    except IdlError as exc:
        _fail(str(exc))
    table = Table(title=f"{model_path.name}: n = {model.hidden}, batch {batch}, {str(dtype)[6:]}, 1 thread")
    table.add_column("pass")
    table.add_column("median (ms)", justify="right")
    table.add_column("iterations", justify="right")
    table.add_row("forward", f"{1e3 * statistics.median(fwd[1:]):.2f}", f"{it_f}")
    table.add_row("forward + backward", f"{1e3 * statistics.median(bwd[1:]):.2f}", f"{it_b}")
    Console().print(table)


if __name__ == "__main__":
    main()
