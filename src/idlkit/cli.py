"""The ``idlkit`` command (typer). Nothing imports this module.

Every command validates its options' ranges before any work (typer ranges: a usage error, exit
2), checks its output path before training, and :func:`main` (the console script) turns any
:class:`~idlkit.errors.IdlError` or ``OSError`` into a one-line ``error: ...`` on stderr with exit
status 2: never a traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer

app = typer.Typer(help="idlkit: implicit deep learning.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def _main() -> None:
    """idlkit command line."""


def _error_line(msg: object) -> None:
    from rich.console import Console

    text = " ".join(line.strip() for line in str(msg).splitlines() if line.strip())
    Console(stderr=True).print(f"error: {text}", markup=False, highlight=False, emoji=False,
                               soft_wrap=True)


def _fail(msg: object) -> NoReturn:
    """Print ``error: msg`` (one line) on stderr and exit with status 2."""
    _error_line(msg)
    raise typer.Exit(code=2)


def _check_out(path: Path, option: str = "--out") -> None:
    """Refuse an output file path that cannot be written, before any long work."""
    if path.is_dir():
        _fail(f"{option} {path} is a directory; pass a file path such as {path / 'model.safetensors'}")
    _check_writable(path.parent, path, option)


def _check_folder(path: Path, option: str) -> None:
    """Refuse an output folder that is a file or cannot be created/written, before any work."""
    if path.exists() and not path.is_dir():
        _fail(f"{option} {path} is a file; pass a folder path")
    _check_writable(path, path, option)


def _check_writable(folder: Path, path: Path, option: str) -> None:
    """``folder`` (created later if missing) can be written: its nearest existing ancestor is a
    writable folder."""
    import os

    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        _fail(f"{option} {path}: {folder} is a file, not a folder; choose another path")
    if not os.access(folder, os.W_OK):
        _fail(f"{option} {path}: the folder {folder} is not writable; choose another path")


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


def _as_options(message: str, names: tuple[str, ...]) -> str:
    """``message`` with each library parameter name in ``names`` written as its ``--option``."""
    import re

    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    return pattern.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)


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
    seed: int = typer.Option(0, min=0, help="random seed"),
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
    except IdlError as exc:  # name the option the user typed, not SIM's parameter
        fail(_as_options(str(exc), ("objective", "kappa", "beta", "alpha", "lambda_state",
                                    "lambda_output", "backend", "n_jobs")))
    try:
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


_MODEL_HELP = ("an implicit model saved with idlkit.save (a .safetensors file), or with --factory "
               "the weights of a torch network: its state_dict saved with torch.save or "
               "safetensors.torch.save_file, or a training checkpoint dict holding it under "
               "state_dict / model_state_dict / model (names may carry DataParallel's module. prefix)")


@dataclass(frozen=True)
class _NetworkSource:
    """How MODEL becomes a torch network: the ``--factory``, ``--factory-kwargs``,
    ``--input-shape`` and ``--check-tol`` options of analyze, attack and bench."""

    factory: str | None = None
    factory_kwargs: str | None = None
    input_shape: str | None = None
    check_tol: float = 1e-4


def _factory_option() -> Any:
    return typer.Option(None, "--factory", help="MODEL is the weights (a state_dict) of a torch "
                        "network: module:function or path/to/file.py:function, a callable that "
                        "returns the nn.Module (converted by idlkit.convert.from_torch); the weights "
                        "are saved with torch.save(net.state_dict(), PATH) or safetensors")


def _factory_kwargs_option() -> Any:
    return typer.Option(None, "--factory-kwargs", help="keyword arguments of --factory, a JSON "
                        "object such as '{\"hidden\": 64}'")


def _input_shape_option(needed: str) -> Any:
    return typer.Option(None, "--input-shape", help="shape of one input of the torch network "
                        f"(--factory), comma separated: C,H,W or D; {needed}")


def _check_tol_option() -> Any:
    return typer.Option(1e-4, "--check-tol", help="largest difference max |model(u) - net(u)| "
                        "allowed between the converted model and the torch network (--factory), "
                        "relative to max(1, max |net(u)|); > 0")


@app.command()
def analyze(
    model_path: Path = typer.Argument(..., metavar="MODEL", help=_MODEL_HELP),
    data: str | None = typer.Option(None, "--data", help="dataset whose test split feeds the data "
                                    "sections (iterations, empirical Lipschitz, attacks): digits, "
                                    "mnist, fashion_mnist, gtsrb, newsgroups20 or cifar10 (files found "
                                    "via $IDLKIT_DATA); default: none, those sections say so"),
    out: Path = typer.Option(Path("report"), help="folder of the report (index.html and its PNGs)"),
    samples: int = typer.Option(200, min=1, help="test inputs used for the iteration histogram and "
                                "the empirical Lipschitz search"),
    attack_samples: int = typer.Option(5, min=1, help="test inputs attacked and drawn (also the "
                                       "inputs of the certified output bounds)"),
    attacks: str = typer.Option("sensitivity", help="attacks drawn, comma separated: sensitivity, "
                                "saliency, fgsm, pgd, jsma, lp (the LP relaxation attack, ReLU models; "
                                "seconds per input for large models) or inversion"),
    attack_k: float = typer.Option(0.05, help="fraction of the inputs an attack may change, in (0, 1]"),
    bound_epsilon: float = typer.Option(0.02, help="radius of the l_inf ball of the certified output "
                                        "bounds (> 0, in the data's units)"),
    seed: int = typer.Option(0, min=0, help="random seed (data split, empirical Lipschitz search)"),
    factory: str | None = _factory_option(),
    factory_kwargs: str | None = _factory_kwargs_option(),
    input_shape: str | None = _input_shape_option("default: the shape of --data's inputs"),
    check_tol: float = _check_tol_option(),
) -> None:
    """Write the HTML analysis report of a saved model (implicit, or a torch network).

    Certificate, solver iterations per sample, sparsity of A, sensitivity per class, certified vs
    empirical Lipschitz and output bounds, attacked inputs, accuracy vs sparsity. MODEL is an
    implicit model, or with --factory a torch network, converted exactly first (paper 000 §3).
    """
    import math

    from .robust import ATTACKS

    methods = tuple(m.strip() for m in attacks.split(",") if m.strip())
    unknown = [m for m in methods if m not in ATTACKS]
    if unknown or not methods:
        _fail(f"--attacks {attacks!r}: unknown {unknown or 'empty list'}; choose from "
              f"{', '.join(sorted(ATTACKS))}, comma separated")
    if not (math.isfinite(attack_k) and 0 < attack_k <= 1):
        _fail(f"--attack-k must lie in (0, 1] (a fraction of the inputs), got {attack_k}")
    if not (math.isfinite(bound_epsilon) and bound_epsilon > 0):
        _fail(f"--bound-epsilon must be a positive radius, got {bound_epsilon}")
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file; pass a folder such as {out.with_suffix('')}")
    _check_model_file(model_path)
    _check_out(out / "index.html")

    from .errors import IdlError
    from .report import write_report

    try:
        net = _NetworkSource(factory, factory_kwargs, input_shape, check_tol)
        model = _saved_model(model_path, net, data=data, seed=seed)
        pair = None if data is None else _test_split(data, seed, model.in_features)
        result = write_report(model, out, data=pair, samples=samples, attack_samples=attack_samples,
                              attack_methods=methods, attack_k=attack_k, bound_epsilon=bound_epsilon,
                              seed=seed, title=f"idlkit analysis report: {model_path.name}")
    except IdlError as exc:
        _fail(str(exc))
    skipped = {k: v for k, v in result.sections.items() if v != "ok"}
    for name, why in skipped.items():
        typer.echo(f"section {name} not shown: {why}")
    typer.echo(f"report written to {result.path} ({len(result.figures)} figures, "
               f"{result.seconds:.1f} s)")


def _saved_model(model_path: Path, net: _NetworkSource | None = None, *, data: str | None = None,
                 seed: int = 0, data_option: bool = True) -> Any:
    """The implicit model in MODEL, for ``analyze``, ``attack`` and ``bench`` alike.

    Without ``--factory``: a model written by :func:`idlkit.save`. With it: the weights of a
    torch network (a ``state_dict`` saved with ``torch.save``, read with ``weights_only=True``,
    or with ``safetensors.torch.save_file``) are loaded into the ``nn.Module`` that the factory
    returns, the network is converted by :func:`idlkit.convert.from_torch` (paper 000 §3: an
    exactly equivalent implicit model, its input the flattened network input) on one input of
    ``--input-shape``, else of ``--data``'s own shape ``(C, H, W)`` or flat, whichever the network
    runs on, and the conversion is checked against the network's own outputs on 16 inputs (8
    test inputs and 8 uniform in their range; without data 8 uniform in [0, 1) and 8 standard
    normal): the largest difference is printed, and above ``--check-tol`` times
    ``max(1, max |net(u)|)`` it is an error. No pickled object other than tensors is ever loaded.
    Failures are :class:`~idlkit.errors.IdlError` with a one-line message.
    """
    import math

    _check_model_file(model_path)
    from . import io
    from .errors import ConfigurationError

    net = net or _NetworkSource()
    if not (math.isfinite(net.check_tol) and net.check_tol > 0):
        raise ConfigurationError(f"--check-tol must be a positive number, got {net.check_tol}")
    kind = _weights_format(model_path)
    if net.factory is None:
        for given, value in (("--factory-kwargs", net.factory_kwargs), ("--input-shape", net.input_shape)):
            if value is not None:
                raise ConfigurationError(f"{given} applies to a torch network only; pass --factory "
                                         f"module:function with it, or drop {given}")
        if kind == "torch":
            raise io.CheckpointError(
                f"MODEL {model_path} is a torch.save (pickle) file, not an idlkit model; for the "
                f"weights of a torch network pass --factory module:function (or "
                f"path/to/file.py:function) that builds it, the weights saved as a state_dict with "
                f"torch.save(net.state_dict(), PATH): idlkit never unpickles whole modules")
        if kind == "safetensors":
            raise io.CheckpointError(
                f"MODEL {model_path} is a safetensors file without an idlkit model header (the "
                f"weights of a torch network?); pass --factory module:function (or "
                f"path/to/file.py:function) that builds the network, or a model saved by idlkit.save")
        return _quietly(io.load, model_path)
    if kind == "idlkit":
        raise ConfigurationError(f"MODEL {model_path} is an idlkit model (saved by idlkit.save), not "
                                 f"the weights of a torch network; drop --factory")
    shape = None if net.input_shape is None else _parse_shape(net.input_shape)
    module = _network(net.factory, net.factory_kwargs)
    _load_weights(module, model_path, kind)
    return _quietly(_converted, module, model_path, net, shape, data, seed, data_option)


def _quietly(fn: Any, *args: object) -> Any:
    """``fn(*args)`` without torch's one-time "Sparse CSR tensor support is in beta" warning
    (sparse models, n >= SPARSE_AUTO_THRESHOLD), which would be a stray stderr line."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return fn(*args)


def _check_model_file(model_path: Path) -> None:
    if not model_path.is_file():
        _fail(f"MODEL {model_path} is not a file; pass a model saved with idlkit.save "
              f"(e.g. by idlkit train --out model.safetensors), or the weights of a torch network "
              f"with --factory")


def _weights_format(path: Path) -> str:
    """``"torch"`` (a ``torch.save`` zip or legacy pickle), ``"idlkit"`` (a safetensors file
    with an idlkit header), ``"safetensors"`` (another safetensors file) or ``"unknown"``, from
    the first bytes and the safetensors JSON header only."""
    import json

    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
                return "torch"
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            if not 0 < n <= min(size - 8, 100 << 20):
                return "unknown"
            header = json.loads(fh.read(n))
    except (OSError, ValueError):
        return "unknown"
    if not isinstance(header, dict):
        return "unknown"
    meta = header.get("__metadata__")
    return "idlkit" if isinstance(meta, dict) and "idlkit" in meta else "safetensors"


def _parse_shape(text: str) -> tuple[int, ...]:
    """``"1,28,28"`` -> ``(1, 28, 28)``; anything else a ConfigurationError."""
    from .errors import ConfigurationError

    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigurationError(f"--input-shape must be positive integers separated by commas, "
                                 f"such as 1,28,28 or 784; got {text!r}")
    return shape


def _network(factory: str, kwargs_json: str | None) -> Any:
    """The ``nn.Module`` returned by the callable ``factory`` (``module:function`` or
    ``path/to/file.py:function``, the function possibly a dotted attribute) called with the
    JSON object ``kwargs_json``."""
    import importlib
    import importlib.util
    import json

    from torch import nn

    from .errors import ConfigurationError

    def bad(msg: str) -> ConfigurationError:
        return ConfigurationError(f"--factory {factory}: {msg}")

    target, _, attr = factory.rpartition(":")
    if not target or not attr:
        raise ConfigurationError(f"--factory must be module:function or path/to/file.py:function, "
                                 f"got {factory!r}")
    kwargs: dict = {}
    if kwargs_json is not None:
        try:
            kwargs = json.loads(kwargs_json)
        except ValueError as exc:
            raise ConfigurationError(f"--factory-kwargs is not valid JSON ({exc}); pass an object "
                                     f"such as '{{\"hidden\": 64}}'") from exc
        if not isinstance(kwargs, dict):
            raise ConfigurationError(f"--factory-kwargs must be a JSON object such as "
                                     f"'{{\"hidden\": 64}}', got {kwargs_json!r}")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    try:
        if is_file:
            path = Path(target)
            if not path.is_file():
                raise bad(f"{path} is not a file")
            name = f"_idlkit_factory_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise bad(f"{path} cannot be imported as a Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # as an import does (dataclasses, pickling look it up)
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
        else:
            added = str(Path.cwd()) not in sys.path and "" not in sys.path
            if added:  # as `python -m` does: modules in the working folder import
                sys.path.insert(0, str(Path.cwd()))
            try:
                module = importlib.import_module(target)
            finally:
                if added:
                    sys.path.remove(str(Path.cwd()))
    except ConfigurationError:
        raise
    except ModuleNotFoundError as exc:
        raise bad(f"no module named {exc.name!r} (install it, put it on PYTHONPATH, or pass a "
                  f"file: path/to/file.py:function)") from exc
    except (Exception, SystemExit) as exc:  # the user's module itself fails on import
        raise bad(f"importing {target} failed: {type(exc).__name__}: {exc}") from exc
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise bad(f"{target} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise bad(f"{attr} is of type {type(fn).__name__}, not callable; name a function or class "
                  f"that returns the nn.Module")
    try:
        net = fn(**kwargs)
    except Exception as exc:
        raise bad(f"calling {attr}(**{kwargs}) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise bad(f"{attr} returned an object of type {type(net).__name__}, not a torch.nn.Module; "
                  f"the factory must build and return the network")
    return net


#: where training scripts commonly keep the weights inside a checkpoint dictionary
_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def _unwrap_state_dict(state: Any) -> Any:
    """The weights of a training checkpoint: ``{"state_dict": {...}, "epoch": ...}`` (or one of
    :data:`_STATE_KEYS`) gives the inner dictionary, and names that all start with ``module.``
    (``DataParallel`` / ``DistributedDataParallel``) lose that prefix. Anything else is returned
    as it is (and refused by the caller when it is not names -> tensors)."""
    import torch

    def tensors(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())

    if isinstance(state, dict) and not tensors(state):
        inner = [state[k] for k in _STATE_KEYS if tensors(state.get(k))]
        if len(inner) == 1:
            state = inner[0]
    if tensors(state) and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_weights(net: Any, path: Path, kind: str) -> None:
    """Load the ``state_dict`` in ``path`` into ``net`` (strict: same keys, same shapes, finite)."""
    import pickle

    import torch

    from .io import CheckpointError

    try:
        if kind == "torch":
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            state = load_file(path)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"MODEL {path} holds pickled objects other than tensors (a whole module saved with "
            f"torch.save(net)?), which idlkit does not unpickle; save the weights with "
            f"torch.save(net.state_dict(), PATH) and pass that file") from exc
    except Exception as exc:  # torch / safetensors raise RuntimeError, EOFError, SafetensorError...
        what = "a torch.save file" if kind == "torch" else "a safetensors file"
        raise CheckpointError(f"MODEL {path} cannot be read as {what} (truncated or corrupted?): "
                              f"{type(exc).__name__}: {exc}") from exc
    state = _unwrap_state_dict(state)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        keys = list(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"MODEL {path} is not a state_dict (names -> tensors), nor a "
                              f"checkpoint holding one under {'/'.join(_STATE_KEYS)}: found {keys}; "
                              f"save torch.save(net.state_dict(), PATH)")
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the network"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} " + ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6
                                                        else "")
                 for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                      ("shapes differ:", shapes)) if items]
        raise CheckpointError(f"MODEL {path} does not match the network of --factory: "
                              f"{'; '.join(parts)}; pass the factory (and --factory-kwargs) that "
                              f"built the saved network")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"MODEL {path}: NaN/Inf in the weights {bad[:6]}; save a finite network")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"MODEL {path}: loading the state_dict failed: {exc}") from exc


def _converted(net: Any, path: Path, src: _NetworkSource, shape: tuple[int, ...] | None,
               data: str | None, seed: int, data_option: bool) -> Any:
    """``from_torch(net, example)`` checked against ``net`` on a few inputs (see _saved_model)."""
    import math

    import numpy as np
    import torch

    from . import datasets
    from .convert import from_torch
    from .errors import ConfigurationError, ConversionError, IdlError

    net.eval()
    floats = [t.dtype for t in (*net.parameters(), *net.buffers()) if t.is_floating_point()]
    dtype = floats[0] if floats else torch.get_default_dtype()
    gen = torch.Generator().manual_seed(seed)
    m = 8
    if data is not None:
        ds = datasets.load(data, split="test", seed=seed, flatten=False)
        X = torch.as_tensor(np.asarray(ds.x_test[:m]), dtype=dtype)
        lo, hi = float(X.min()), float(X.max())
        X = torch.cat([X, lo + (hi - lo) * torch.rand(X.shape, generator=gen, dtype=dtype)])
        p = X[0].numel()
        if shape is not None:
            if math.prod(shape) != p:
                raise ConfigurationError(f"--input-shape {','.join(map(str, shape))} has "
                                         f"{math.prod(shape)} entries but --data {data} inputs have "
                                         f"{p}; drop --input-shape or fix it")
            candidates = [shape]
        else:  # the data's own shape, then flat: the first the network runs on
            candidates = list(dict.fromkeys([tuple(X.shape[1:]), (p,)]))
    elif shape is not None:
        candidates = [shape]
        X = torch.cat([torch.rand((m, *shape), generator=gen, dtype=dtype),
                       torch.randn((m, *shape), generator=gen, dtype=dtype)])
    else:
        raise ConfigurationError("a torch network (--factory) needs the shape of its input: pass "
                                 "--input-shape (such as 1,28,28 or 784)" +
                                 (" or --data NAME" if data_option else ""))
    failure = ""
    for cand in candidates:
        try:
            with torch.no_grad():
                out = net(X[:1].reshape(1, *cand))
            if isinstance(out, torch.Tensor) and out.dim() >= 1 and out.shape[0] == 1:
                shape = cand
                break
            failure = (f"it returns {type(out).__name__} {tuple(getattr(out, 'shape', ()))}, not one "
                       f"tensor (batch, ...)")
        except Exception as exc:  # the network's own error on a wrong shape
            failure = f"{type(exc).__name__}: {exc}"
    else:
        tried = " nor ".join(str(c) for c in candidates)
        raise ConversionError(f"the network of --factory {src.factory} does not run on inputs of shape "
                              f"{tried} ({failure}); pass --input-shape of its input")
    X = X.reshape(X.shape[0], *shape)
    try:
        model = from_torch(net, X[:1])
    except IdlError:
        raise
    except Exception as exc:  # the converter's contract is ConversionError; keep it one line
        raise ConversionError(f"from_torch failed on the network: {type(exc).__name__}: {exc}") from exc
    try:
        with torch.no_grad():
            ref = net(X).reshape(X.shape[0], -1)
            got = model(X.flatten(1))
    except IdlError:
        raise
    except Exception as exc:
        raise ConversionError(f"the network fails on a batch of {X.shape[0]} inputs of shape {shape}: "
                              f"{type(exc).__name__}: {exc}") from exc
    if got.shape != ref.shape:
        raise ConversionError(f"the converted model returns {tuple(got.shape)} but the network "
                              f"{tuple(ref.shape)} on a batch of {X.shape[0]}: its forward depends on "
                              f"the batch size, which the converter cannot express")
    diff = float((got - ref).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    where = "test inputs of --data and random inputs in their range" if data else "random inputs"
    if not diff <= src.check_tol * scale:
        raise ConversionError(f"the converted model differs from the network of --factory "
                              f"{src.factory}: max |model(u) - net(u)| = {diff:.3g} > --check-tol "
                              f"{src.check_tol:g} x {scale:.3g} on {X.shape[0]} {where}: its forward "
                              f"may depend on the batch size or be random, or --check-tol is below "
                              f"the rounding of {str(X.dtype)[6:]}")
    typer.echo(f"{path.name}: {type(net).__name__} from --factory {src.factory}, input shape "
               f"{','.join(map(str, shape))}, converted by idlkit.convert.from_torch to n = "
               f"{model.hidden} states; max |model(u) - net(u)| = {diff:.2e} on {X.shape[0]} {where} "
               f"(tolerance {src.check_tol:g} x {scale:.3g})")
    return model


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
    model_path: Path = typer.Argument(..., metavar="MODEL", help=_MODEL_HELP),
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
    factory: str | None = _factory_option(),
    factory_kwargs: str | None = _factory_kwargs_option(),
    input_shape: str | None = _input_shape_option("default: the shape of --data's inputs"),
    check_tol: float = _check_tol_option(),
) -> None:
    """Attack a saved model on test inputs and print the success rate (paper 000 §7.3, Table 1).

    Only the inputs it classifies correctly are attacked; the valid range of the data is kept.
    MODEL is an implicit model, or with --factory a torch network, converted exactly first.
    """
    from .errors import IdlError
    from .robust import ATTACKS, Budget, success_rate

    if method not in ATTACKS:
        _fail(f"--method {method!r} is not an attack; choose from {sorted(ATTACKS)}")
    if k is not None and not (k > 0):
        _fail(f"--k must be > 0 (a fraction in (0, 1] or a count >= 1), got {k}")
    if epsilon is not None and not (epsilon >= 0):
        _fail(f"--epsilon must be >= 0, got {epsilon}")
    try:
        net = _NetworkSource(factory, factory_kwargs, input_shape, check_tol)
        model = _saved_model(model_path, net, data=data, seed=seed)
        U, Y = _test_split(data, seed, model.in_features, samples)
        U = U.to(model.A.dtype)
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
    model_path: Path = typer.Argument(..., metavar="MODEL", help=_MODEL_HELP),
    batch: int = typer.Option(256, min=1, help="inputs per call"),
    repeats: int = typer.Option(20, min=1, help="timed calls (the median is printed)"),
    float64: bool = typer.Option(False, "--float64", help="time the model in double precision"),
    seed: int = typer.Option(0, min=0, help="random seed of the inputs"),
    factory: str | None = _factory_option(),
    factory_kwargs: str | None = _factory_kwargs_option(),
    input_shape: str | None = _input_shape_option("required with --factory"),
    check_tol: float = _check_tol_option(),
) -> None:
    """Time a saved model: forward (equilibrium solve) and backward (implicit gradient).

    Random inputs, with the solver's iteration counts; the median of --repeats calls, one thread.
    MODEL is an implicit model, or with --factory a torch network, converted exactly first.
    """
    import statistics
    import time

    import torch
    from rich.console import Console
    from rich.table import Table

    from .errors import IdlError

    try:
        net = _NetworkSource(factory, factory_kwargs, input_shape, check_tol)
        model = _saved_model(model_path, net, seed=seed, data_option=False)
        if float64:
            model = model.double()
        dtype = model.A.dtype
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
