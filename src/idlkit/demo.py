"""``idlkit demo`` (``make demo``): the library's whole pipeline on scikit-learn's digits.

:func:`run_demo` runs, with a progress bar on every step, and on the bundled 8x8 digits (1,437
training / 360 test images, so it needs no download):

1. **train** an :class:`~idlkit.ImplicitModel` with projected gradient (paper 000 §6.4:
   :class:`~idlkit.train.Trainer`, exact projection onto ``||A||_inf <= kappa`` after each step)
   and a ReLU network 64-64-32-10 of about the same size, from the same data;
2. **convert** the network to its exact implicit form (:func:`idlkit.convert.from_torch`, paper
   000 §3: strictly block-triangular ``A``) and check it gives the network's outputs;
3. **certify** every model (:meth:`~idlkit.ImplicitModel.certificate`, float64: ``||A||_inf``,
   ``lambda_pf(|A|)``, ``mu_inf(A)``, triangularity) and save the certificates as JSON;
4. **robustness**: the sensitivity matrix (Thm 4.3), the certified Lipschitz bounds (eq. 4.8,
   paper 004's mu_inf bound, ``||S||_inf``) next to an empirical lower bound, certified output
   intervals next to sampled outputs, and the sensitivity and LP attacks (§7.3) on a few test
   digits;
5. **SIM** (paper 002): a sparse implicit model fitted, row by row and convexly, to the
   network's states (:class:`idlkit.sim.SIM`, l1 objective);
6. **compress** (paper 000 §5): exact state pruning of the SIM model
   (:func:`idlkit.compress.prune_states`) and magnitude pruning of the trained implicit model at
   several sparsities, each fine-tuned for one epoch (:func:`idlkit.compress.magnitude_prune`);
7. **report**: ``report/index.html`` (:func:`idlkit.report.write_report`: the trained model's
   certificate, training curves of both trainings, solver iterations per sample, sensitivity
   heat maps, sparsity pattern of ``A``, certified vs empirical bounds, attacked digits,
   accuracy vs sparsity) with the comparison of every model of the pipeline.

The models go to ``out_dir`` (safetensors, reloaded and checked), the certificates to
``out_dir/certificates.json``. Every file is written atomically. The models are small, so torch
runs them on one intra-op thread during the demo (restored afterwards; the SIM row solvers use
two worker processes): on a 2-core machine two threads per matrix product of this size were 7x
slower when the other core was busy. The whole run takes about 25 s on two idle cores (the run
prints the seconds of every step). Training is deterministic for a given ``seed``; the SIM row
solvers run in two worker processes and may differ in the last digits between runs, which can
move SIM's nonzero count by one or two.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._matrix import count_nonzero
from .io import _atomic_write, load, save
from .model import ImplicitModel

__all__ = ["DemoResult", "PipelineModel", "run_demo"]

#: the sparsities (fraction of zero weights) of the magnitude-pruned models
DEMO_SPARSITIES: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class PipelineModel:
    """One model of the demo's pipeline, as the report's comparison table shows it.

    Attributes:
        name: what it is (``"implicit (trained)"``, ``"network, converted"``, ...).
        accuracy: test accuracy on the 360 test digits.
        states: the state size ``n`` (hidden units for the network).
        nonzeros: nonzero weights (``A, B, C, D`` and the biases; the network's weights).
        certified: the well-posedness conditions that hold (``"inf"``, ``"pf"``, ``"mu"``,
            ``"triangular"``, ...; empty for the network itself).
        path: where it was saved (``None`` for models that are not saved).

    Examples:
        >>> m = PipelineModel("network 64-64-32-10", 0.95, 96, 6570, ())
        >>> m.name, m.certified, m.path is None
        ('network 64-64-32-10', (), True)
    """

    name: str
    accuracy: float
    states: int
    nonzeros: int
    certified: tuple[str, ...]
    path: Path | None = None


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` measured and wrote.

    Attributes:
        models: every model of the pipeline (:class:`PipelineModel`), in order.
        conversion_error: ``max |net(u) - converted(u)|`` over the test digits.
        attacks: ``{method: predictions changed}`` out of ``attack_samples`` test digits.
        lipschitz: ``{"certified": best certified l_inf bound, "empirical": lower bound}``.
        report: the written ``index.html``.
        certificates: the JSON file of the certificates.
        seconds: ``{step: wall seconds}`` and ``"total"``.
    """

    models: tuple[PipelineModel, ...]
    conversion_error: float
    attacks: dict[str, int]
    lipschitz: dict[str, float]
    report: Path
    certificates: Path
    seconds: dict[str, float]

    @property
    def test_accuracy(self) -> float:
        """Test accuracy of the trained implicit model (the first model)."""
        return self.models[0].accuracy


class _Steps:
    """The progress display: one bar for the pipeline and one for the current step (rich)."""

    def __init__(self, total: int, show: bool) -> None:
        self.show = show
        self.seconds: dict[str, float] = {}
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description:<34}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
            self.bar.start()
            self.pipeline = self.bar.add_task("[bold]idlkit demo", total=total)

    @contextmanager
    def step(self, name: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        """A step with its own bar; yields ``advance(description=None)``."""
        t0 = time.perf_counter()
        task = self.bar.add_task(f"  {name}", total=total) if self.show else None

        def advance(description: str | None = None) -> None:
            if task is not None:
                kw = {"description": f"  {name}: {description}"} if description else {}
                self.bar.update(task, advance=1, **kw)

        try:
            yield advance
        finally:
            self.seconds[name] = time.perf_counter() - t0
            if task is not None:
                self.bar.update(task, description=f"  {name}", total=total or 1,
                                completed=total or 1)
                self.bar.advance(self.pipeline)

    def print(self, text: str) -> None:
        if self.show:
            self.bar.console.print(text, highlight=False, markup=False)

    def stop(self) -> None:
        if self.show:
            self.bar.stop()


def _accuracy(model: nn.Module, U: Tensor, Y: Tensor) -> float:
    with torch.no_grad():
        return float((model(U).argmax(1) == Y).double().mean())


def _nonzeros(model: nn.Module) -> int:
    """Nonzero weights: ``A, B, C, D, b, d`` of an implicit model (sparse matrices are not
    parameters), every parameter of a network."""
    if isinstance(model, ImplicitModel):
        return sum(count_nonzero(getattr(model, k)) for k in ("A", "B", "C", "D", "b", "d"))
    return sum(count_nonzero(p) for p in model.parameters())


def _certified(model: ImplicitModel) -> tuple[str, ...]:
    return tuple(sorted(k for k, ok in model.certificate().holds.items() if ok))


def _network(p: int, q: int) -> nn.Sequential:
    """The feed-forward ReLU network 64-64-32-10 (about the implicit model's parameter count)."""
    return nn.Sequential(nn.Linear(p, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, q))


def _certificate_record(model: ImplicitModel) -> dict[str, Any]:
    c = model.certificate()
    num = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731 (JSON)
    return {"wellposed": bool(c.wellposed), "declared": c.declared, "kappa": c.kappa,
            "inf_norm": num(c.inf_norm), "lambda_pf": num(c.pf), "mu_inf": num(c.mu_inf),
            "triangular": bool(c.triangular), "holds": {k: bool(v) for k, v in c.holds.items()},
            "margins": {k: num(float(v)) for k, v in c.margins.items()}}


def run_demo(out_dir: str | Path = "runs/demo", report_dir: str | Path = "report", *,
             hidden: int = 64, epochs: int = 15, kappa: float = 0.95, seed: int = 0,
             attack_samples: int = 5, sim_samples: int = 1000, log: bool = True) -> DemoResult:
    """Run the whole pipeline of the module docstring and write its report.

    Args:
        out_dir: folder of the saved models and ``certificates.json`` (created if missing).
        report_dir: folder of ``index.html`` and its PNG figures.
        hidden: state size ``n`` of the trained implicit model.
        epochs: training epochs of the implicit model and of the network.
        kappa: the bound ``||A||_inf <= kappa`` kept during training, in ``(0, 1)``.
        seed: the random seed (initialisation, validation split, batch order, samplings).
        attack_samples: test digits attacked and drawn.
        sim_samples: training digits whose states SIM matches.
        log: print progress bars and the figures (``False``: silent).

    Returns:
        :class:`DemoResult`.

    Raises:
        ConfigurationError: an option out of range (named in the message, with the fix).
    """
    from . import compress, datasets, robust
    from ._validation import check_int, check_probability
    from .convert import from_torch
    from .report import SECTIONS, write_report
    from .sim import SIM
    from .train import Trainer

    hidden = check_int("hidden", hidden, 1)
    epochs = check_int("epochs", epochs, 1)
    attack_samples = check_int("attack_samples", attack_samples, 1)
    sim_samples = check_int("sim_samples", sim_samples, 10)
    kappa = check_probability("kappa", kappa, low_inclusive=False, high_inclusive=False)
    out, t_start = Path(out_dir), time.perf_counter()
    steps = _Steps(total=8, show=log)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = datasets.load("digits", as_torch=True, seed=seed)
        U, Y, Ut, Yt = ds.x_train, ds.y_train, ds.x_test, ds.y_test
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(U.shape[0], generator=g)
        val, tr = perm[: U.shape[0] // 10], perm[U.shape[0] // 10:]
        steps.print(f"idlkit demo: digits, {len(tr)} training / {len(val)} validation / "
                    f"{Ut.shape[0]} test images of 8x8 pixels")

        # 1. training: the implicit model and the feed-forward network
        torch.manual_seed(seed)
        model = ImplicitModel(U.shape[1], hidden, ds.num_classes, activation="relu", bias=True,
                              wellposedness="inf", kappa=kappa, solver="anderson", tol=1e-6)
        net = _network(U.shape[1], ds.num_classes)
        histories = {}
        with steps.step("train the implicit model", epochs) as advance:
            histories["implicit"] = Trainer(epochs=epochs, lr=5e-3, batch_size=64, seed=seed,
                                            log=lambda r: advance(f"loss {r.train_loss:.3f}")).fit(
                model, (U[tr], Y[tr]), (U[val], Y[val]))
        with steps.step("train the network", epochs) as advance:
            histories["network"] = Trainer(epochs=epochs, lr=5e-3, batch_size=64, seed=seed,
                                           project=False,
                                           log=lambda r: advance(f"loss {r.train_loss:.3f}")).fit(
                net, (U[tr], Y[tr]), (U[val], Y[val]))
        net.eval()

        # 2. conversion, 3. certificates
        with steps.step("convert and certify", 4) as advance:
            converted = from_torch(net, Ut[:1])
            with torch.no_grad():
                conversion_error = float((converted(Ut) - net(Ut)).abs().max())
            advance("converted")
            paths = {"implicit": save(model, out / "implicit.safetensors"),
                     "converted": save(converted, out / "converted.safetensors")}
            for name, path in paths.items():  # the saved files give the same predictions
                reloaded, original = load(path), (model if name == "implicit" else converted)
                with torch.no_grad():
                    if not torch.equal(reloaded(Ut), original(Ut)):
                        raise RuntimeError(f"{path} does not reload to the same predictions")
            advance("saved")
            certificates = {"implicit (trained)": _certificate_record(model),
                            "network, converted": _certificate_record(converted)}
            advance("certified")

        # 4. robustness of the trained implicit model and of the converted network
        with steps.step("sensitivity and Lipschitz", 3) as advance:
            lip = {name: robust.lipschitz_bounds(m) for name, m in
                   (("implicit", model), ("converted", converted))}
            advance("certified bounds")
            empirical = {name: robust.empirical_lipschitz(
                m, Ut[:200], pairs=32, steps=10, generator=torch.Generator().manual_seed(seed)).value
                for name, m in (("implicit", model), ("converted", converted))}
            advance("empirical bounds")
            sens = robust.sensitivity_matrix(model)
            advance("sensitivity matrix")

        # 5. SIM from the network's states
        with steps.step("SIM fit (paper 002)", 2) as advance:
            sim_model, sim_report = SIM(objective="l1", n_jobs=2).fit(net, U[tr][:sim_samples])
            advance("fitted")
            paths["sim"] = save(sim_model, out / "sim.safetensors")
            certificates["SIM (l1)"] = _certificate_record(sim_model)
            advance("saved")

        # 6. compression
        with steps.step("compress", 1 + len(DEMO_SPARSITIES)) as advance:
            staged, prune_report = compress.prune_states(sim_model)
            advance("prune_states")
            pruned = {}
            for s in DEMO_SPARSITIES:
                torch.manual_seed(seed)
                pm, _ = compress.magnitude_prune(model, s, fine_tune=(U[tr], Y[tr]), epochs=1)
                pruned[s] = pm
                advance(f"{s:.0%} zero weights")
        _atomic_write(out / "certificates.json",
                      json.dumps(certificates, indent=2, sort_keys=True).encode("utf-8"))

        models = [
            PipelineModel("implicit (trained)", _accuracy(model, Ut, Yt), hidden, _nonzeros(model),
                          _certified(model), paths["implicit"]),
            PipelineModel("network 64-64-32-10", _accuracy(net, Ut, Yt), 64 + 32, _nonzeros(net), ()),
            PipelineModel("network, converted", _accuracy(converted, Ut, Yt), converted.A.shape[0],
                          _nonzeros(converted), _certified(converted), paths["converted"]),
            PipelineModel("SIM (l1) from the network", _accuracy(sim_model, Ut, Yt),
                          sim_model.A.shape[0], _nonzeros(sim_model), _certified(sim_model),
                          paths["sim"]),
            PipelineModel("SIM, states pruned (staged)", _accuracy(staged, Ut, Yt),
                          prune_report.n_after, sum(prune_report.nnz_after.values()), ()),
        ] + [PipelineModel(f"implicit, {s:.0%} magnitude-pruned", _accuracy(pm, Ut, Yt),
                           pm.A.shape[0], _nonzeros(pm), _certified(pm))
             for s, pm in pruned.items()]

        # 7. the report
        methods = ("sensitivity", "lp")
        with steps.step("write the report", len(SECTIONS)) as advance:
            extra = (_pipeline_section(models, conversion_error, prune_report, sim_report),
                     _lipschitz_section(lip, empirical),
                     _sparsity_section(models))
            rep = write_report(model, report_dir, data=(Ut, Yt), history=histories,
                               attack_samples=attack_samples, attack_methods=methods, seed=seed,
                               title="idlkit demo: the pipeline on digits", extra=extra,
                               progress=lambda name: advance(name))
        attacks = {}
        for m in methods:
            key = "attack.success" if m == "sensitivity" else f"attack.{m}.success"
            attacks[m] = int(rep.values[key].split(" of ")[0]) if key in rep.values else -1
    finally:
        torch.set_num_threads(threads)
        steps.stop()
    seconds = dict(steps.seconds, total=time.perf_counter() - t_start)
    result = DemoResult(models=tuple(models), conversion_error=conversion_error, attacks=attacks,
                        lipschitz={"certified": lip["implicit"].best,
                                   "empirical": empirical["implicit"]},
                        report=rep.path, certificates=out / "certificates.json", seconds=seconds)
    if log:
        _print_summary(result, rep, sens, model.certificate())
    return result


def _pipeline_section(models: list[PipelineModel], conversion_error: float, prune_report: Any,
                      sim_report: Any) -> Any:
    import html

    from .report import ReportSection

    rows = "".join(
        f'<tr><td>{html.escape(m.name)}</td><td data-key="pipeline.{i}.accuracy" '
        f'data-value="{m.accuracy!r}">{m.accuracy:.4f}</td><td>{m.states}</td>'
        f'<td data-key="pipeline.{i}.nonzeros" data-value="{m.nonzeros}">{m.nonzeros}</td>'
        f'<td>{html.escape(", ".join(m.certified) or "-")}</td>'
        f'<td>{html.escape(m.path.name) if m.path else "-"}</td></tr>' for i, m in enumerate(models))
    body = (
        "<p>Every model of the pipeline on the 360 test digits. <em>certified</em> lists the "
        "well-posedness conditions that hold in float64 (inf: ||A||_inf &lt; 1, pf: "
        "lambda_pf(|A|) &lt; 1, mu: mu_inf(A) &lt; 1, l1: ||A||_1 &lt; 1, sigma_max: "
        "sigma_max(A) &lt; 1, triangular: A is block triangular up to a permutation and each "
        "diagonal block is well-posed, Thm 2.8/2.9; the converted network's A is strictly "
        "triangular, solved exactly in one pass).</p>"
        "<table><tr><th>model</th><th>test accuracy</th><th>states</th><th>nonzero weights</th>"
        f"<th>certified</th><th>saved as</th></tr>{rows}</table>"
        f'<p>Conversion of the network: max |network - converted| over the test digits = '
        f'<span data-key="pipeline.conversion_error" data-value="{conversion_error!r}">'
        f'{conversion_error:.3g}</span>. SIM (paper 002) fitted {sim_report.nnz} nonzeros against '
        f'the network\'s {sim_report.baseline_nnz} ({sim_report.sparsity:.1f} % sparser) in '
        f'{sim_report.seconds:.1f} s; prune_states: {html.escape(str(prune_report))}.</p>')
    return ReportSection("pipeline", "The pipeline: every model compared", body, first=True)


def _lipschitz_section(lip: dict, empirical: dict) -> Any:
    import html

    from .report import ReportSection, _figure, _png

    fig = _figure(figsize=(7, 3.2))
    ax = fig.subplots()
    labels = ["eq. 4.8", "mu_inf", "||S||_inf", "empirical"]
    import numpy as np

    for i, name in enumerate(("implicit", "converted")):
        b = lip[name]
        vals = [b.inf, b.mu, b.sensitivity, empirical[name]]
        vals = [v if math.isfinite(v) and v > 0 else 0.0 for v in vals]
        ax.bar(np.arange(4) + (i - 0.5) * 0.38, vals, 0.38,
               label={"implicit": "implicit (trained)", "converted": "network, converted"}[name])
    ax.set_xticks(np.arange(4))
    ax.set_xticklabels(labels)
    ax.set_yscale("log")
    ax.set_ylabel("l_inf Lipschitz constant")
    ax.legend(fontsize=8)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{lip[name].inf:.4g}</td><td>{lip[name].mu:.4g}</td>"
        f"<td>{lip[name].sensitivity:.4g}</td><td>{empirical[name]:.4g}</td></tr>"
        for name in ("implicit", "converted"))
    body = ("<p>Certified upper bounds (a missing bar: the bound's hypothesis fails, e.g. "
            "||A||_inf &gt;= 1 for the converted network) against the lower bound found by "
            "gradient ascent over pairs of test digits. Every certified bound must lie above the "
            "empirical one.</p><table><tr><th>model</th><th>eq. 4.8</th><th>mu_inf</th>"
            f"<th>||S||_inf</th><th>empirical</th></tr>{rows}</table>")
    return ReportSection("lipschitz-models", "Lipschitz bounds of both models", body,
                         {"models_lipschitz.png": _png(fig)})


def _sparsity_section(models: list[PipelineModel]) -> Any:
    from .report import ReportSection, _figure, _png

    fig = _figure(figsize=(7, 3.6))
    ax = fig.subplots()
    base = models[0].nonzeros
    pruned = [m for m in models if "magnitude-pruned" in m.name]
    ax.plot([100 * (1 - m.nonzeros / base) for m in [models[0], *pruned]],
            [m.accuracy for m in [models[0], *pruned]], marker="o",
            label="implicit, magnitude-pruned + 1 epoch")
    for m in models[1:]:
        if m in pruned:
            continue
        ax.scatter([100 * (1 - m.nonzeros / base)], [m.accuracy], s=40, zorder=3, label=m.name)
    ax.set_xlabel("fewer nonzero weights than the trained implicit model (%)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    body = ("<p>Test accuracy against the number of nonzero weights, relative to the trained "
            "implicit model: magnitude pruning with one epoch of masked fine-tuning "
            "(idlkit.compress.magnitude_prune), the network and its implicit form, the SIM fit and "
            "its state-pruned form (exact: same outputs).</p>")
    return ReportSection("accuracy-sparsity", "Accuracy vs sparsity across the pipeline", body,
                         {"pipeline_sparsity.png": _png(fig)})


def _print_summary(res: DemoResult, rep: Any, sens: Tensor, certificate: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(markup=False, highlight=False)  # certificates print '[x]' literally
    table = Table(title="idlkit demo: every model on the 360 test digits")
    for col in ("model", "test acc.", "states", "nonzeros", "certified"):
        table.add_column(col)
    for m in res.models:
        table.add_row(m.name, f"{m.accuracy:.4f}", str(m.states), str(m.nonzeros),
                      ", ".join(m.certified) or "-")
    console.print(table)
    console.print(f"the trained implicit model's {certificate}")
    console.print(f"conversion: max |network - implicit form| = {res.conversion_error:.2e}; "
                  f"sensitivity matrix S {tuple(sens.shape)}, max {float(sens.max()):.3g}")
    console.print(f"Lipschitz (l_inf), implicit model: certified {res.lipschitz['certified']:.4g}, "
                  f"empirical lower bound {res.lipschitz['empirical']:.4g}")
    console.print("attacks on the first test digits (predictions changed): " + ", ".join(
        f"{k} {v}" for k, v in res.attacks.items()))
    console.print(f"certificates: {res.certificates}")
    console.print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items()))
    console.print(f"report: {rep.path} ({len(rep.figures)} figures); open it in a browser")
