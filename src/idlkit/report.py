"""A self-contained HTML analysis report of an implicit model (issue 20).

:func:`write_report` writes ``out_dir/index.html`` (inline CSS, no scripts, no network) and its
PNG figures **next to it**, referenced by relative file names (``spy.png``, ...), so the folder
can be moved or zipped as a whole. Each section is optional: a section whose inputs are missing
(no data, no training history, inputs that are not square images, a hypothesis that fails)
says why in the page instead of failing, and so does a section where the model itself fails
(a :class:`~idlkit.errors.ConvergenceError` of an ill-posed model, ...). The sections:

``certificate``  the float64 well-posedness report :meth:`ImplicitModel.certificate` (paper 000
                 Thm 2.2/2.7, paper 004) as a table;
``iterations``   forward solver iterations per sample (``SolveInfo.per_sample_iterations`` of a
                 solve with ``per_sample=True``) as a histogram;
``sparsity``     the pattern of ``A`` (:func:`idlkit.plot.spy`, paper 000 Fig. 7);
``sensitivity``  rows of ``S = |C|(I-|A|)^-1|B| + |D|`` (Thm 4.3) per class, as images when the
                 input is a square picture (:func:`idlkit.plot.sensitivity_heatmaps`);
``lipschitz``    the certified l_inf Lipschitz bounds (eq. 4.8, paper 004,
                 :func:`idlkit.robust.lipschitz_bounds`) next to the empirical lower bound
                 found by gradient ascent (:func:`idlkit.robust.empirical_lipschitz`);
``attacks``      the sensitivity-matrix attack (paper 000 §7.3.1) on a few test inputs:
                 clean / adversarial / changed pixels (:func:`idlkit.plot.attack_images`);
``bounds``       certified output intervals around a few test inputs for an l_inf ball of radius
                 ``bound_epsilon`` (Thm 4.1 box and CROWN, :func:`idlkit.robust.output_bounds`)
                 next to the range of outputs reached by sampled vertices of the ball;
``compression``  accuracy against the fraction of zero weights after magnitude pruning
                 (:func:`idlkit.compress.magnitude_prune`, no fine-tuning) and the exact state
                 pruning (:func:`idlkit.compress.prune_states`);
``training``     training loss, validation loss and accuracy per epoch of a
                 :class:`~idlkit.train.TrainResult` (or of several, by name).

Callers add their own sections (text and figures) with ``extra=`` (:class:`ReportSection`), as
``idlkit demo`` does for its model comparison.

Every file is written atomically (a temporary then ``os.replace``); the figures are rendered in
memory first and ``index.html`` is written last, so a failure leaves no partial page.
matplotlib (Agg backend) is imported lazily.
"""

from __future__ import annotations

import html
import io as _bytesio
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigurationError, IdlError, InputError, ShapeError
from .io import _atomic_write

__all__ = ["SECTIONS", "ReportResult", "ReportSection", "write_report"]

SECTIONS: tuple[str, ...] = ("certificate", "training", "iterations", "sparsity", "sensitivity",
                             "lipschitz", "bounds", "attacks", "compression")

#: the sparsity levels of the ``compression`` section (fraction of zero weights)
PRUNE_LEVELS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class ReportSection:
    """A section supplied by the caller (``write_report(..., extra=...)``).

    Attributes:
        id: the section's anchor, lowercase letters, digits, ``-`` or ``_``; must not repeat a
            built-in section's name.
        title: its heading (plain text, escaped).
        html: its body, trusted HTML (escape any text you put in it with :func:`html.escape`).
        figures: ``{file name: PNG bytes}``; each is written next to ``index.html`` and shown
            after the body, in order. Names end in ``.png`` and contain no ``/``.
        first: place the section before the built-in ones (default: after them).

    >>> ReportSection("notes", "Notes", "<p>trained on digits</p>").id
    'notes'
    """

    id: str
    title: str
    html: str
    figures: dict[str, bytes] = field(default_factory=dict)
    first: bool = False


@dataclass(frozen=True)
class ReportResult:
    """Result of :func:`write_report`.

    Attributes:
        path: the written ``index.html``.
        figures: the PNG files written next to it, in page order.
        seconds: wall time of the whole report.
        sections: ``{section: "ok" or the reason it was skipped}``, for every requested section.
        section_seconds: ``{section: wall time}`` of each built-in section.
        values: ``{key: value}`` of every number the page shows in a table (the cells'
            ``data-key`` / ``data-value``, e.g. ``"attack.success": "1 of 5"``), as text.
    """

    path: Path
    figures: tuple[Path, ...]
    seconds: float
    sections: dict[str, str] = field(default_factory=dict)
    section_seconds: dict[str, float] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)


class _Skip(Exception):
    """A section that cannot apply to these inputs (its message goes into the page)."""


def _png(fig: Any) -> bytes:
    buf = _bytesio.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _figure(*args: Any, **kw: Any) -> Any:
    from matplotlib.figure import Figure

    return Figure(*args, **kw)


def _num(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return html.escape(str(v))


_VALUE = re.compile(r'data-key="([^"]+)" data-value="([^"]*)"')


def _row(key: str, label: str, value: object) -> str:
    raw = repr(float(value)) if isinstance(value, float) else html.escape(str(value))
    return (f'<tr><th>{html.escape(label)}</th><td data-key="{html.escape(key)}" '
            f'data-value="{raw}">{_num(value)}</td></tr>')


def _image_shape(p: int) -> tuple[int, ...] | None:
    """``(H, W)`` for a square gray picture, ``(3, H, W)`` for a square RGB one, else ``None``."""
    for c in (1, 3):
        if p % c == 0:
            h = math.isqrt(p // c)
            if h > 1 and h * h * c == p:
                return (h, h) if c == 1 else (3, h, h)
    return None


def _check_data(model: Any, data: object) -> tuple[Tensor, Tensor] | None:
    if data is None:
        return None
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise InputError(f"data must be a pair (U, Y) of arrays or tensors, got {type(data).__name__}; "
                         f"pass data=(U, Y) or data=None")
    U = torch.as_tensor(np.asarray(data[0]) if not isinstance(data[0], Tensor) else data[0])
    Y = torch.as_tensor(np.asarray(data[1]) if not isinstance(data[1], Tensor) else data[1])
    if U.dim() != 2 or U.shape[1] != model.in_features or U.shape[0] == 0:
        raise ShapeError(f"data U must have shape (N, {model.in_features}) with N >= 1 (the model's "
                         f"inputs), got {tuple(U.shape)}; flatten the inputs first")
    if Y.shape[0] != U.shape[0]:
        raise ShapeError(f"data: {U.shape[0]} inputs but {Y.shape[0]} targets")
    if not U.is_floating_point() or not bool(torch.isfinite(U).all()):
        raise InputError("data U must be finite floating-point values; clean the data first")
    return U.to(model.A.dtype), Y


def write_report(model: Any, out_dir: str | Path, *, data: object = None, history: Any = None,
                 sections: Sequence[str] = SECTIONS, samples: int = 200, attack_samples: int = 5,
                 attack_k: float = 0.05, attack_methods: Sequence[str] = ("sensitivity",),
                 bound_epsilon: float = 0.02, seed: int = 0, title: str | None = None,
                 extra: Sequence[ReportSection] = (),
                 progress: Callable[[str], object] | None = None) -> ReportResult:
    """Write the HTML analysis report of ``model`` into ``out_dir`` (see the module docstring).

    Args:
        model: an :class:`~idlkit.ImplicitModel` (anything with ``A, B, C, D``, ``certificate()``
            and the batch-first forward).
        out_dir: the folder; created if missing. ``index.html`` and the PNGs are replaced.
        data: ``(U, Y)``, ``U (N, p)`` test inputs and ``Y (N,)`` class labels (or ``None``:
            the data sections say they need data).
        history: a :class:`~idlkit.train.TrainResult` (or its ``history`` tuple) for the curves,
            or ``{name: TrainResult}`` to draw several trainings side by side.
        sections: which of :data:`SECTIONS` to include, in page order.
        samples: inputs used for the iteration histogram, the empirical Lipschitz search and
            the accuracy of the pruned models.
        attack_samples: test inputs attacked and drawn, and inputs of the ``bounds`` section.
        attack_k: the fraction of inputs an attack may change (values are clipped to the data's
            range).
        attack_methods: names in :data:`idlkit.robust.ATTACKS` run on the same inputs, one
            figure each (``"lp"``: the LP-relaxation attack of paper 000 §7.3.2, ReLU models).
        bound_epsilon: radius of the l_inf ball of the ``bounds`` section (> 0).
        seed: random source of the empirical Lipschitz search and the sampled vertices.
        title: the page title (default ``"idlkit analysis report"``).
        extra: caller sections (:class:`ReportSection`) appended after the built-in ones.
        progress: called with each section's name before it is built (a progress bar).

    Returns:
        :class:`ReportResult`.

    >>> import idlkit as idl, tempfile
    >>> m = idl.ImplicitModel(4, 6, 2)
    >>> r = write_report(m, tempfile.mkdtemp(), sections=("certificate", "sparsity"))
    >>> r.path.name, [f.name for f in r.figures], r.sections["certificate"]
    ('index.html', ['spy.png'], 'ok')
    """
    t0 = time.perf_counter()
    if not all(isinstance(getattr(model, m, None), Tensor) for m in "ABCD") or not hasattr(
            model, "certificate"):
        raise InputError(f"write_report needs an implicit model (A, B, C, D and certificate()), got "
                         f"{type(model).__name__}; convert a torch network first with "
                         f"idlkit.convert.from_torch")
    if isinstance(sections, str):
        sections = (sections,)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ConfigurationError(f"unknown report sections {unknown!r}; choose from {list(SECTIONS)}")
    from ._validation import check_int, check_positive, check_probability

    samples = check_int("samples", samples, 1)
    attack_samples = check_int("attack_samples", attack_samples, 1)
    attack_k = check_probability("attack_k", attack_k, low_inclusive=False)
    bound_epsilon = check_positive("bound_epsilon", bound_epsilon, example=0.02)
    attack_methods = _check_methods(attack_methods)
    extra = _check_extra(extra)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"out_dir {out} is a file; pass a folder path such as {out.with_suffix('')}")
    U_Y = _check_data(model, data)
    ctx = {"model": model, "data": U_Y, "history": _check_history(history), "samples": samples,
           "attack_samples": attack_samples, "attack_k": attack_k, "seed": seed,
           "attack_methods": attack_methods, "bound_epsilon": bound_epsilon}
    parts: list[str] = []
    pngs: dict[str, bytes] = {}
    status: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name in sections:
        if progress is not None:
            progress(name)
        t_section = time.perf_counter()
        try:
            body, figs = _BUILDERS[name](ctx)
            status[name] = "ok"
        except _Skip as exc:
            body, figs = f'<p class="skip">Not shown: {html.escape(str(exc))}</p>', {}
            status[name] = str(exc)
        except IdlError as exc:  # the model itself fails here (no convergence, no certificate)
            why = f"could not be computed: {type(exc).__name__}: {exc}"
            body, figs = f'<p class="skip">Not shown: {html.escape(why)}</p>', {}
            status[name] = why
        timings[name] = time.perf_counter() - t_section
        for fname, fig_bytes in figs.items():
            caption = ""
            if isinstance(fig_bytes, tuple):  # (PNG, caption)
                fig_bytes, caption = fig_bytes
                caption = f"<figcaption>{html.escape(caption)}</figcaption>"
            pngs[fname] = fig_bytes
            body += (f'<figure><img src="{fname}" alt="{html.escape(name)} figure">{caption}'
                     f'</figure>')
        parts.append(f'<section id="{name}"><h2>{_TITLES[name]}</h2>{body}</section>')
    head = []
    for sec in extra:
        pngs.update(sec.figures)
        figs_html = "".join(f'<figure><img src="{f}" alt="{html.escape(sec.id)} figure"></figure>'
                            for f in sec.figures)
        (head if sec.first else parts).append(
            f'<section id="{sec.id}"><h2>{html.escape(sec.title)}</h2>{sec.html}{figs_html}</section>')
        status[sec.id] = "ok"
    parts = head + parts

    if U_Y is not None and "certificate" in sections:  # accuracy next to the certificate
        parts.insert(0, _accuracy(model, U_Y))
    page = _page(title or "idlkit analysis report", model, parts)
    written = []
    for fname, data_png in pngs.items():  # figures first, the page last: no page without figures
        _atomic_write(out / fname, data_png)
        written.append(out / fname)
    path = out / "index.html"
    _atomic_write(path, page.encode("utf-8"))
    values = {html.unescape(k): html.unescape(v) for k, v in _VALUE.findall(page)}
    return ReportResult(path=path, figures=tuple(written), seconds=time.perf_counter() - t0,
                        sections=status, section_seconds=timings, values=values)


_TITLES = {"certificate": "Well-posedness certificate", "iterations": "Solver iterations per sample",
           "sparsity": "Sparsity pattern of A", "sensitivity": "Sensitivity per class",
           "lipschitz": "Lipschitz bounds: certified vs empirical", "attacks": "Attacked inputs",
           "training": "Training curves", "bounds": "Output bounds: certified vs empirical",
           "compression": "Accuracy vs sparsity"}


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    from .robust import ATTACKS

    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    bad = [m for m in methods if m not in ATTACKS]
    if bad or not methods:
        raise ConfigurationError(f"unknown attack_methods {bad or list(methods)!r}; choose one or more "
                                 f"of {sorted(ATTACKS)}")
    return methods


def _check_extra(extra: Sequence[ReportSection]) -> tuple[ReportSection, ...]:
    extra = tuple(extra)
    seen: set[str] = set(SECTIONS) | {"accuracy"}
    names: set[str] = set()
    for sec in extra:
        if not isinstance(sec, ReportSection):
            raise InputError(f"extra must hold ReportSection objects, got {type(sec).__name__}")
        if not re.fullmatch(r"[a-z0-9_-]+", sec.id) or sec.id in seen:
            raise ConfigurationError(f"extra section id {sec.id!r} must be new (not one of {sorted(seen)}) "
                                     f"and use only a-z, 0-9, '-' and '_'")
        seen.add(sec.id)
        for f in sec.figures:
            builtin = f.startswith((*SECTIONS, "spy"))  # the built-in sections' file names
            if not re.fullmatch(r"[A-Za-z0-9_.-]+\.png", f) or f in names or builtin:
                raise ConfigurationError(f"figure name {f!r} of section {sec.id!r} must be a new file "
                                         f"name ending in .png, without '/', not starting with a "
                                         f"built-in section's name (e.g. {sec.id + '_1.png'!r})")
            names.add(f)
    return extra


def _check_history(history: Any) -> dict[str, tuple] | None:
    """``{name: epoch records}`` from a TrainResult, a tuple of records or a mapping of either."""
    if history is None:
        return None
    if isinstance(history, Mapping):
        items = list(history.items())
    else:
        items = [("", history)]
    out = {}
    for name, h in items:
        recs = tuple(getattr(h, "history", h))
        if not all(hasattr(r, "train_loss") and hasattr(r, "epoch") for r in recs):
            raise InputError(f"history {name or ''!s} must be a TrainResult or its epoch records, got "
                             f"{type(h).__name__}")
        out[str(name)] = recs
    return out

_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .6em;
text-align:left}td{font-family:monospace}img{max-width:100%;height:auto}
.skip{color:#a33;font-style:italic}figure{margin:.5em 0}figcaption{font-size:.9em;color:#555}"""


def _page(title: str, model: Any, parts: list[str]) -> str:
    from . import __version__

    desc = (f"{type(model).__name__}: p = {model.in_features} inputs, n = {model.A.shape[0]} states, "
            f"q = {model.out_features} outputs, activation {getattr(model, 'activation', '?')}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(desc)}; idlkit {__version__}.</p>"
            + "".join(parts) + "</body></html>\n")


def _accuracy(model: Any, data: tuple[Tensor, Tensor]) -> str:
    """A one-row table: the accuracy of ``argmax model(U)`` on the given labels."""
    U, Y = data
    if Y.dim() != 1 or Y.is_floating_point():
        return ""
    try:
        with torch.no_grad():
            acc = float((model(U).argmax(1) == Y.to(U.device)).double().mean())
    except IdlError as exc:
        return f'<p class="skip">Accuracy not computed: {html.escape(str(exc))}</p>'
    return ('<section id="accuracy"><h2>Accuracy</h2><table>' + _row(
        "accuracy", f"accuracy on the {U.shape[0]} given samples", acc) + "</table></section>")


def _need_data(ctx: dict) -> tuple[Tensor, Tensor]:
    if ctx["data"] is None:
        raise _Skip("needs data: pass data=(U, Y) (idlkit analyze --data NAME)")
    return ctx["data"]


def _certificate(ctx: dict) -> tuple[str, dict]:
    c = ctx["model"].certificate()
    rows = [_row("inf_norm", "||A||_inf", c.inf_norm), _row("gamma_inf", "gamma_inf (activation)",
            c.gamma_inf), _row("pf", "lambda_pf (Thm 2.2/2.7)", c.pf), _row("mu_inf", "mu_inf(A)",
            c.mu_inf), _row("triangular", "block triangular criterion (Thm 2.8/2.9)", c.triangular),
            _row("wellposed", "well-posed", bool(c.wellposed))]
    if c.declared is not None:
        rows.append(_row("declared", "declared condition", f"{c.declared} (kappa {c.kappa})"))
    for k in sorted(c.holds):
        rows.append(_row(f"holds.{k}", f"condition {k} holds", bool(c.holds[k])))
    for k in sorted(c.margins):
        rows.append(_row(f"margin.{k}", f"margin {k}", float(c.margins[k])))
    return "<table>" + "".join(rows) + "</table><p>All values in float64.</p>", {}


def _iterations(ctx: dict) -> tuple[str, dict]:
    U, _ = _need_data(ctx)
    model = ctx["model"]
    U = U[: ctx["samples"]]
    old = model.settings
    try:
        model.set_solver(per_sample=True)
        with torch.no_grad():
            model(U)
        info = model.last_solve
    finally:
        model.settings = old
    if info is None or not info.per_sample:
        raise _Skip(f"the {getattr(info, 'method', '?')} solver does not measure iterations per sample")
    it = info.per_sample_iterations.cpu().numpy()
    fig = _figure(figsize=(6, 3.2))
    ax = fig.subplots()
    ax.hist(it, bins=np.arange(it.min(), it.max() + 2) - 0.5, color="tab:blue")
    ax.set_xlabel("forward iterations")
    ax.set_ylabel("samples")
    ax.set_title(f"{info.method}, tol {info.tol:g}, {it.size} samples", fontsize=9)
    table = ("<table>" + _row("iter.min", "min", int(it.min())) + _row("iter.mean", "mean",
             float(it.mean())) + _row("iter.max", "max", int(it.max())) + "</table>")
    return table, {"iterations.png": _png(fig)}


def _sparsity(ctx: dict) -> tuple[str, dict]:
    from .plot import spy

    fig = _figure(figsize=(5, 5))
    spy(ctx["model"], fig.subplots())
    return "", {"spy.png": _png(fig)}


def _sensitivity(ctx: dict) -> tuple[str, dict]:
    from .plot import sensitivity_heatmaps
    from .robust import sensitivity_matrix

    model = ctx["model"]
    try:
        S = sensitivity_matrix(model)
    except IdlError as exc:  # a hypothesis of Thm 4.3 fails (e.g. rho(|A|) >= 1)
        raise _Skip(f"the sensitivity matrix does not apply: {exc}") from exc
    shape = _image_shape(model.in_features)
    if shape is not None:
        fig = sensitivity_heatmaps(model, shape, S=S, fig=_figure())
        fig.set_size_inches(2.2 * min(5, S.shape[0]), 2.4 * -(-S.shape[0] // 5))
        note = ""
    else:
        fig = _figure(figsize=(7, 3))
        ax = fig.subplots()
        im = ax.imshow(S.numpy(), aspect="auto", cmap="inferno", interpolation="nearest")
        fig.colorbar(im, ax=ax)
        ax.set_xlabel("input")
        ax.set_ylabel("output")
        note = "<p>The inputs are not square images: the matrix is drawn as it is.</p>"
    return note + "<table>" + _row("sens.max", "max S", float(S.max())) + "</table>", {
        "sensitivity.png": _png(fig)}


def _lipschitz(ctx: dict) -> tuple[str, dict]:
    from .robust import empirical_lipschitz, lipschitz_bounds

    model = ctx["model"]
    cert = lipschitz_bounds(model)
    rows = [_row("lip.inf", "certified, eq. 4.8", cert.inf), _row("lip.mu", "certified, mu_inf "
            "(paper 004)", cert.mu), _row("lip.sensitivity", "certified, ||S||_inf", cert.sensitivity),
            _row("lip.best", "certified, best", cert.best)]
    labels, vals = ["eq. 4.8", "mu_inf", "||S||_inf"], [cert.inf, cert.mu, cert.sensitivity]
    note = "<p>No data: the empirical lower bound is not shown.</p>"
    if ctx["data"] is not None:
        U, _ = ctx["data"]
        g = torch.Generator().manual_seed(int(ctx["seed"]))
        try:
            emp = empirical_lipschitz(model, U[: ctx["samples"]], pairs=min(32, U.shape[0]), steps=10,
                                      generator=g).value
            note = ""
        except IdlError as exc:  # the model does not solve (ill-posed): certified rows still shown
            emp = math.nan
            note = (f'<p class="skip">Empirical lower bound not computed: '
                    f'{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</p>')
        rows.append(_row("lip.empirical", "empirical lower bound (gradient ascent)", emp))
        labels.append("empirical")
        vals.append(emp)
    fig = _figure(figsize=(6, 3.2))
    ax = fig.subplots()
    shown = [(lab, v) for lab, v in zip(labels, vals, strict=True) if math.isfinite(v) and v > 0]
    if not shown:
        raise _Skip("no certified bound applies (the model is not certified well-posed) and no "
                    "empirical value was found")
    ax.bar([s[0] for s in shown], [s[1] for s in shown],
           color=["tab:orange" if s[0] == "empirical" else "tab:blue" for s in shown])
    ax.set_yscale("log")
    ax.set_ylabel("l_inf Lipschitz constant")
    return note + "<table>" + "".join(rows) + "</table>", {"lipschitz.png": _png(fig)}


def _attacks(ctx: dict) -> tuple[str, dict]:
    from .plot import attack_images
    from .robust import Budget, attack

    U, Y = _need_data(ctx)
    model = ctx["model"]
    if Y.dim() != 1 or Y.is_floating_point():
        raise _Skip("the attack needs integer class labels Y (N,)")
    shape = _image_shape(model.in_features)
    if shape is None:
        raise _Skip(f"the {model.in_features} inputs are not a square image")
    m = min(ctx["attack_samples"], U.shape[0])
    u, y = U[:m], Y[:m].long()
    lo, hi = float(U.min()), float(U.max())
    budget = Budget(k=float(ctx["attack_k"]), clip=(lo, hi))
    # the LP attack works on a box (eq. 4.1): the whole data range is the same set as ``clip``
    box_budget = Budget(k=float(ctx["attack_k"]), epsilon=hi - lo, clip=(lo, hi))
    with torch.no_grad():
        clean_pred = model(u).argmax(1)
    rows = [_row("attack.k", "fraction of inputs changed at most", float(ctx["attack_k"]))]
    figs, notes = {}, []
    for method in ctx["attack_methods"]:
        key = "attack.success" if method == "sensitivity" else f"attack.{method}.success"
        try:
            res = attack(model, u, y, box_budget if method == "lp" else budget, method=method)
        except IdlError as exc:  # e.g. the LP attack on a model that is not ReLU
            notes.append(f'<p class="skip">The {html.escape(method)} attack does not apply: '
                         f'{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</p>')
            continue
        with torch.no_grad():
            adv_pred = model(res.u_adv).argmax(1)
        fig = attack_images(u, res.u_adv, shape, labels=y, clean_predictions=clean_pred,
                            predictions=adv_pred, vmin=lo, vmax=hi,
                            fig=_figure(figsize=(1.9 * m, 6.3)))
        changed = int((adv_pred != clean_pred).sum())
        rows.append(_row(key, f"{method} attack: predictions changed", f"{changed} of {m}"))
        figs["attacks.png" if method == "sensitivity" else f"attacks_{method}.png"] = (
            _png(fig), f"The {method} attack: clean inputs (top), attacked (middle), changed "
                       f"inputs in red (bottom); {changed} of {m} predictions changed.")
    if not figs:
        raise _Skip("no attack applies to this model: " + " ".join(re.sub("<[^>]+>", "", n)
                                                                   for n in notes))
    return "".join(notes) + "<table>" + "".join(rows) + "</table>", figs


def _bounds(ctx: dict) -> tuple[str, dict]:
    from .robust import output_bounds

    U, _ = _need_data(ctx)
    model = ctx["model"]
    m, eps = min(ctx["attack_samples"], U.shape[0]), float(ctx["bound_epsilon"])
    u = U[:m].double()
    lo_clip, hi_clip = float(U.min()), float(U.max())
    widths, violations = {}, 0
    g = torch.Generator().manual_seed(int(ctx["seed"]))
    vertices = 256  # sampled corners of the ball: where the outputs of a ReLU model move most
    signs = torch.randint(0, 2, (vertices, m, u.shape[1]), generator=g, dtype=torch.float64) * 2 - 1
    w = (u + eps * signs).clamp(lo_clip, hi_clip).reshape(-1, u.shape[1])
    with torch.no_grad():
        y = model(w.to(model.A.dtype)).double().reshape(vertices, m, -1)
        y0 = model(u.to(model.A.dtype)).double()
    y = torch.cat([y, y0[None]], 0)
    emp_lo, emp_hi = y.amin(0), y.amax(0)
    widths["empirical"] = (emp_hi - emp_lo).mean(0)
    rows = []
    for method in ("box", "crown"):
        try:
            ob = output_bounds(model, u, eps, method=method, clip=(lo_clip, hi_clip))
        except IdlError as exc:
            rows.append(_row(f"bounds.{method}.width", f"{method}: not computed", f"{type(exc).__name__}"))
            continue
        lower, upper = torch.as_tensor(ob.lower), torch.as_tensor(ob.upper)
        tol = 1e-6 * (1 + upper.abs().max())
        violations += int(((emp_lo < lower - tol) | (emp_hi > upper + tol)).sum())
        widths[method] = (upper - lower).mean(0)
        rows.append(_row(f"bounds.{method}.width", f"{method}: mean width of the certified interval",
                         float(widths[method].mean())))
    if len(widths) == 1:
        raise _Skip("no certified bound applies to this model")
    rows.append(_row("bounds.empirical.width", f"sampled: mean width over {vertices} vertices",
                     float(widths["empirical"].mean())))
    rows.append(_row("bounds.violations", "sampled outputs outside a certified interval", violations))
    fig = _figure(figsize=(7, 3.2))
    ax = fig.subplots()
    q = y.shape[-1]
    bar = 0.8 / len(widths)
    colors = {"box": "tab:blue", "crown": "tab:purple", "empirical": "tab:orange"}
    for i, (name, wdt) in enumerate(widths.items()):
        label = {"box": "certified, Thm 4.1 box", "crown": "certified, CROWN"}.get(name, "sampled")
        ax.bar(np.arange(q) + (i - (len(widths) - 1) / 2) * bar, wdt.clamp_min(1e-12).numpy(), bar,
               label=label, color=colors[name])
    ax.set_yscale("log")
    ax.set_xticks(np.arange(q))
    ax.set_xlabel("output")
    ax.set_ylabel("interval width (mean)")
    ax.set_title(f"l_inf ball of radius {eps:g} around {m} inputs", fontsize=9)
    ax.legend(fontsize=8)
    note = (f"<p>Every certified interval must contain every sampled output; the width ratio "
            f"shows how tight the certificate is (radius {eps:g}, inputs clipped to "
            f"[{lo_clip:g}, {hi_clip:g}]).</p>")
    return note + "<table>" + "".join(rows) + "</table>", {"bounds.png": _png(fig)}


def _compression(ctx: dict) -> tuple[str, dict]:
    from .compress import magnitude_prune, prune_states

    U, Y = _need_data(ctx)
    model = ctx["model"]
    if Y.dim() != 1 or Y.is_floating_point():
        raise _Skip("accuracy needs integer class labels Y (N,)")
    u, y = U[: max(ctx["samples"], 1)], Y[: max(ctx["samples"], 1)].long()
    rows, xs, accs = [], [], []
    for level in PRUNE_LEVELS:
        try:
            pruned = model if level == 0 else magnitude_prune(model, level)[0]
            with torch.no_grad():
                acc = float((pruned(u).argmax(1) == y).double().mean())
        except IdlError as exc:  # the pruned model may lose convergence: say so, keep going
            rows.append(_row(f"prune.{level:g}", f"accuracy at {level:.0%} zero weights",
                             f"not computed ({type(exc).__name__})"))
            continue
        xs.append(level)
        accs.append(acc)
        rows.append(_row(f"prune.{level:g}", f"accuracy at {level:.0%} zero weights", acc))
    try:
        staged, rep = prune_states(model)
        rows.append(_row("prune_states.n", "states after exact state pruning (prune_states)",
                         f"{rep.n_after} of {rep.n_before}"))
    except IdlError as exc:
        rows.append(_row("prune_states.n", "exact state pruning", f"not applied: {exc}"))
    if not xs:
        raise _Skip("no pruned model could be evaluated")
    fig = _figure(figsize=(6, 3.2))
    ax = fig.subplots()
    ax.plot([100 * x for x in xs], accs, marker="o")
    ax.set_xlabel("zero weights in A, B, C, D (%)")
    ax.set_ylabel(f"accuracy ({u.shape[0]} samples)")
    ax.set_title("magnitude pruning, no fine-tuning", fontsize=9)
    return "<table>" + "".join(rows) + "</table>", {"compression.png": _png(fig)}


def _training(ctx: dict) -> tuple[str, dict]:
    hists = ctx["history"]
    if not hists or not any(hists.values()):
        raise _Skip("needs a training history: pass history=TrainResult")
    fig = _figure(figsize=(8, 3.2))
    a1, a2 = fig.subplots(1, 2)
    rows = []
    for name, hist in hists.items():
        if not hist:
            continue
        tag = f"{name}: " if name else ""
        key = f"train.{name}." if name else "train."
        ep = [r.epoch for r in hist]
        a1.plot(ep, [r.train_loss for r in hist], marker="o", label=f"{tag}train loss")
        if any(math.isfinite(r.val_loss) for r in hist):
            a1.plot(ep, [r.val_loss for r in hist], marker="o", ls="--", label=f"{tag}validation loss")
        a2.plot(ep, [r.val_accuracy for r in hist], marker="o", label=name or None)
        rows += [_row(key + "epochs", f"{tag}epochs", len(hist)),
                 _row(key + "last_loss", f"{tag}last train loss", float(hist[-1].train_loss))]
    a1.set_xlabel("epoch")
    a1.legend(fontsize=8)
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation accuracy")
    if len(hists) > 1:
        a2.legend(fontsize=8)
    return "<table>" + "".join(rows) + "</table>", {"training.png": _png(fig)}


_BUILDERS = {"certificate": _certificate, "iterations": _iterations, "sparsity": _sparsity,
             "sensitivity": _sensitivity, "lipschitz": _lipschitz, "attacks": _attacks,
             "training": _training, "bounds": _bounds, "compression": _compression}
