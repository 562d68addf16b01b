"""Every public function and class of idlkit shows a ``>>>`` example in its docstring (issue 20).

The public names are the ``__all__`` of every module of the package, sub-packages included
(``idlkit``, ``idlkit.robust``, ``idlkit.robust.attacks``, ...), except the private modules (a
dotted name with a part that starts with ``_``: ``idlkit._matrix``, ``idlkit.sim._gram``), whose
``__all__`` only serves the package itself and which the API reference does not render. A name
re-exported by several modules is one object, counted once under the module that defines it.
Modules (``idlkit.robust`` in ``idlkit.__all__``) and constants (``__version__``, ``SECTIONS``)
are not functions or classes and are not checked.

An object has an example when its docstring (for a class: the class's or its ``__init__``'s)
contains ``>>>``. Whether the example is right is :mod:`tests.test_doctests`' business: it runs
them all.

Exempt, by rule or by name (:data:`EXEMPT`), each with its reason:

* exceptions and warnings (subclasses of ``BaseException``): they are raised by the library, not
  called by the user; the functions that raise them say so under ``Raises:``;
* frozen result dataclasses that the library only returns and a user never builds: their fields
  are shown by the example of the function that returns them, named in the reason.

:data:`PENDING` lists the names whose example is not written yet, with why; it may only shrink:
an entry that has gained an example, or that is no longer public, fails the test until removed.

The same public docstrings are checked for Google-style parameter lists (mkdocstrings renders one
table row per ``name: description`` line of ``Args``/``Attributes``/``Raises``): no grouped names
(``lr, momentum: ...``) and no second entry crammed after a ``;`` (:data:`STYLE_PENDING` lists
the exceptions, in files other branches are editing).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re

import idlkit

#: result dataclasses that are only returned: name -> the public function (or class) whose example
#: returns one (checked by :func:`test_exempt_results_are_shown_by_an_example`)
EXEMPT: dict[str, str] = {
    "idlkit.compress.architecture.ShrinkReport":
        "idlkit.compress.architecture.shrink",
    "idlkit.compress.lowrank.LowRankCertificate":
        "idlkit.compress.lowrank.LowRankImplicitModel",
    "idlkit.compress.magnitude.CompressionBound":
        "idlkit.compress.magnitude.compression_bound",
    "idlkit.compress.magnitude.MagnitudePruneReport":
        "idlkit.compress.magnitude.magnitude_prune",
    "idlkit.compress.prune.FeatureSelection":
        "idlkit.compress.prune.selected_features",
    "idlkit.compress.prune.PruneReport":
        "idlkit.compress.prune.prune_states",
    "idlkit.compress.rank.RankReport":
        "idlkit.compress.rank.low_rank",
    "idlkit.compress.staged.Staging":
        "idlkit.compress.staged.stage_partition",
    "idlkit.robust.attacks.SuccessRate":
        "idlkit.robust.attacks.success_rate",
    "idlkit.robust.bounds.BoxBounds":
        "idlkit.robust.bounds.box_bounds",
    "idlkit.robust.bounds.StateBound":
        "idlkit.robust.bounds.state_bound",
    "idlkit.robust.certified.CertifiedAccuracy":
        "idlkit.robust.certified.certified_accuracy",
    "idlkit.robust.certify.OutputBounds":
        "idlkit.robust.certify.output_bounds",
    "idlkit.robust.certify.StateBounds":
        "idlkit.robust.certify.state_bounds",
    "idlkit.robust.empirical.EmpiricalLipschitz":
        "idlkit.robust.empirical.empirical_lipschitz",
    "idlkit.robust.ibp.BoundComparison":
        "idlkit.robust.ibp.compare_bounds",
    "idlkit.robust.ibp.IntervalBounds":
        "idlkit.robust.ibp.interval_bounds",
    "idlkit.robust.linear.LinearBounds":
        "idlkit.robust.linear.linear_bounds",
    "idlkit.robust.linear.Relaxation":
        "idlkit.robust.linear.relax",
    "idlkit.robust.lipschitz.LipschitzBounds":
        "idlkit.robust.lipschitz.lipschitz_bounds",
    "idlkit.robust.lp.LPStateBounds":
        "idlkit.robust.lp.lp_state_bounds",
    "idlkit.robust.result.AttackResult":
        "idlkit.robust.attacks.fgsm_attack",
    "idlkit.robust.sensitivity.Sensitivity":
        "idlkit.robust.sensitivity.sensitivity",
    "idlkit.robust.worst_case.WorstCaseLoss":
        "idlkit.robust.worst_case.worst_case_loss",
    "idlkit.sim.exact.BasisPursuitResult":
        "idlkit.sim.exact.basis_pursuit_rows",
    "idlkit.sim.fit.SIMReport":
        "idlkit.sim.fit.SIM",
    "idlkit.sim.hooks.HookedStates":
        "idlkit.sim.hooks.hook_states",
    "idlkit.sim.hooks.StateLayer":
        "idlkit.sim.hooks.hook_states",
    "idlkit.sim.lasso.ConstrainedLassoResult":
        "idlkit.sim.lasso.constrained_lasso",
    "idlkit.sim.lasso.ConstrainedLassoRowsResult":
        "idlkit.sim.lasso.constrained_lasso_rows",
    "idlkit.sim.lasso.LassoCDResult":
        "idlkit.sim.lasso.lasso_cd",
    "idlkit.sim.lasso_batch.BatchLassoResult":
        "idlkit.sim.lasso_batch.constrained_lasso_batch",
    "idlkit.sim.penalized.PenalizedResult":
        "idlkit.sim.penalized.penalized_rows",
    "idlkit.sim.refit.Evaluation":
        "idlkit.sim.refit.evaluate",
    "idlkit.sim.refit.RegenReport":
        "idlkit.sim.refit.regen_states",
    "idlkit.sim.states.States":
        "idlkit.sim.states.extract_states",
    "idlkit.train.alternating.AlternatingResult":
        "idlkit.train.alternating.alternating_fit",
    "idlkit.train.fenchel.FenchelBCDResult":
        "idlkit.train.fenchel.fenchel_bcd",
    "idlkit.train.fenchel.FenchelSweep":
        "idlkit.train.fenchel.fenchel_bcd",
    "idlkit.train.fenchel.LayeredBCDResult":
        "idlkit.train.fenchel.layered_bcd",
    "idlkit.train.frank_wolfe.FWRecord":
        "idlkit.train.frank_wolfe.frank_wolfe",
    "idlkit.train.frank_wolfe.FWResult":
        "idlkit.train.frank_wolfe.frank_wolfe",
    "idlkit.train.robust.RobustFitResult":
        "idlkit.train.robust.robust_fit",
    "idlkit.train.robust.TrainingCertificate":
        "idlkit.train.robust.robust_fit",
    "idlkit.train.trainer.EpochRecord":
        "idlkit.train.trainer.Trainer",
    "idlkit.train.trainer.TrainResult":
        "idlkit.train.trainer.Trainer",
    "idlkit.wellposed.DiagonalLMI":
        "idlkit.wellposed.diagonal_lmi",
    "idlkit.report.ReportResult":
        "idlkit.report.write_report",
}

#: public names without an example yet: name -> why
PENDING: dict[str, str] = {}

#: whole-pipeline functions whose smallest real example runs for seconds (worker processes, a
#: report): name -> the test file that runs it and checks its figures instead
#: (:func:`test_slow_names_are_run_by_their_test`)
SLOW: dict[str, str] = {
    "idlkit.demo.run_demo": "tests/test_demo.py",  # ~10 s even at n = 4, one epoch
    "idlkit.demo.DemoResult": "tests/test_demo.py",
}


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def _modules() -> list[str]:
    names = ["idlkit"] + [m.name for m in pkgutil.walk_packages(idlkit.__path__, "idlkit.")]
    return sorted(n for n in names if not _private(n))


def public_objects() -> dict[str, object]:
    """``"module.QualName" -> object`` for every function and class in a public ``__all__``,
    named after the module that defines it (so a re-export is counted once)."""
    out: dict[str, object] = {}
    for modname in _modules():
        mod = importlib.import_module(modname)
        for attr in getattr(mod, "__all__", ()):
            obj = getattr(mod, attr)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            home = getattr(obj, "__module__", modname)
            if _private(home):  # defined in a private module, made public here: named here
                home = modname
            out.setdefault(f"{home}.{obj.__qualname__}", obj)
    return out


def has_example(obj: object) -> bool:
    docs = [inspect.getdoc(obj)]
    if inspect.isclass(obj) and "__init__" in vars(obj):
        docs.append(inspect.getdoc(vars(obj)["__init__"]))
    return any(">>>" in (d or "") for d in docs)


def _exempt_by_rule(obj: object) -> bool:
    return inspect.isclass(obj) and issubclass(obj, BaseException)


def test_every_public_name_has_an_example() -> None:
    objs = public_objects()
    missing = sorted(name for name, obj in objs.items()
                     if not has_example(obj) and not _exempt_by_rule(obj)
                     and name not in EXEMPT and name not in PENDING and name not in SLOW)
    assert not missing, (
        f"{len(missing)} public names have no '>>>' example in their docstring: add a short one "
        "showing input and output shapes (or, for a result dataclass only returned by the "
        "library, an entry in EXEMPT naming the function that shows it):\n  "
        + "\n  ".join(missing))


def test_the_lists_are_not_stale() -> None:
    objs = public_objects()
    gone = sorted(n for n in (*EXEMPT, *PENDING) if n not in objs)
    assert not gone, f"not public any more, remove from EXEMPT/PENDING: {gone}"
    done = sorted(n for n in PENDING if has_example(objs[n]))
    assert not done, f"these have an example now, remove them from PENDING: {done}"
    assert not set(EXEMPT) & set(PENDING), set(EXEMPT) & set(PENDING)
    for name, reason in {**EXEMPT, **PENDING}.items():
        assert reason.strip(), f"{name}: an exemption says why"


def test_slow_names_are_run_by_their_test() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    objs = public_objects()
    for name, test_file in SLOW.items():
        assert name in objs, f"not public any more, remove from SLOW: {name}"
        assert name not in EXEMPT and name not in PENDING
        assert name.rsplit(".", 1)[1] in (root / test_file).read_text(), \
            f"{test_file} does not use {name}"


def test_exempt_results_are_shown_by_an_example() -> None:
    """A result dataclass is exempt only because the function named next to it returns it and
    has an example: that function exists, has an example, and names the class in its source
    (its return annotation or the constructor call)."""
    objs = public_objects()
    for name, shown_by in EXEMPT.items():
        obj = objs[name]
        assert inspect.isclass(obj) and dataclasses.is_dataclass(obj), \
            f"{name}: only result dataclasses are exempt"
        fn = objs.get(shown_by)
        assert fn is not None, f"{name}: {shown_by!r} is not a public name"
        assert has_example(fn), f"{name}: {shown_by} has no example to show it"
        assert obj.__name__ in inspect.getsource(fn), f"{name}: {shown_by} does not return it"


#: public names whose parameter list is not one name per line yet: name -> why
STYLE_PENDING: dict[str, str] = {}

_SECTION = re.compile(r"^(Args|Arguments|Attributes|Raises|Keyword Args|Other Parameters):\s*$")
_ENTRY = re.compile(r"^(\*{0,2}[A-Za-z_][\w.]*)(\s*\([^)]*\))?:(\s|$)")


def style_problems(obj: object) -> list[str]:
    """Google-style violations in the ``Args``/``Attributes``/``Raises`` sections of ``obj``'s
    docstring (a class's and its ``__init__``'s): an entry that is not one ``name: description``
    (``a, b: ...``), or a line that starts a second entry after a ``;`` or a ``.``
    (``a: ...; b: ...``, with ``b`` a parameter of the signature or an exception name)."""
    docs = [inspect.getdoc(obj) or ""]
    if inspect.isclass(obj) and "__init__" in vars(obj):
        docs.append(inspect.getdoc(vars(obj)["__init__"]) or "")
    try:
        params = set(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        params = set()
    out = []
    for doc in docs:
        section, indent = None, 0
        for line in doc.split("\n"):
            stripped = line.strip()
            lead = len(line) - len(line.lstrip())
            if _SECTION.match(line):
                section, indent = line.strip()[:-1], lead + 4
                continue
            if section is None or not stripped:
                continue
            if lead < indent:  # dedent: the section is over
                section = None
                continue
            if lead == indent and not _ENTRY.match(stripped):
                out.append(f"{section}: not one 'name: description': {stripped[:70]!r}")
            for m in re.finditer(r"[;.]\s+(?:``)?(\*{0,2}[A-Za-z_]\w*)(?:``)?:\s", stripped):
                if m.group(1) in params or m.group(1).endswith("Error"):
                    out.append(f"{section}: two entries on one line: {stripped[:70]!r}")
    return out


def test_parameter_lists_are_google_style() -> None:
    """mkdocstrings renders a table row per ``name: description`` line; grouped names
    (``lr, momentum: ...``) and entries crammed after a ``;`` render as one row of text."""
    bad = {name: p for name, obj in public_objects().items()
           if name not in STYLE_PENDING and (p := style_problems(obj))}
    assert not bad, "\n".join(f"{n}: {p}" for n, ps in sorted(bad.items()) for p in ps)


def test_style_check_sees_grouped_and_crammed_entries() -> None:
    def grouped(lr: float, momentum: float) -> None:
        """Steps.

        Args:
            lr, momentum: optimizer settings.
        """

    def crammed(lr: float, momentum: float) -> None:
        """Steps.

        Args:
            lr: step size; momentum: heavy ball.
        """

    def fine(lr: float, momentum: float) -> None:
        """Steps.

        Args:
            lr: step size; default: 0.1.
            momentum: heavy ball
                weight.

        Raises:
            ValueError: a negative ``lr``.
        """

    assert style_problems(grouped) and style_problems(crammed) and not style_problems(fine)
    stale = sorted(n for n in STYLE_PENDING if n not in public_objects()
                   or not style_problems(public_objects()[n]))
    assert not stale, f"remove from STYLE_PENDING: {stale}"


def test_the_search_is_not_vacuous() -> None:
    """The walk finds the package's public objects, sub-packages included, and the check tells
    a docstring with an example from one without."""
    objs = public_objects()
    assert len(objs) > 200, len(objs)
    for name in ("idlkit.model.ImplicitModel", "idlkit.robust.attacks.fgsm_attack",
                 "idlkit.wellposed.check", "idlkit.sim.fit.SIM"):
        assert name in objs, name
    assert not any(_private(n.rsplit(".", 1)[0]) for n in objs)

    def with_example() -> None:
        """Doubles.

        >>> 1 + 1
        2
        """

    def without() -> None:
        """Doubles ``x`` (no example)."""

    assert has_example(with_example) and not has_example(without)
    assert _exempt_by_rule(idlkit.errors.ShapeError) and not _exempt_by_rule(idlkit.ImplicitModel)


# --------------------------------------------------------------------------- Args sections
#
# The API reference shows a parameter table only for a Google-style ``Args:`` section, so in
# every public module not listed in ARGS_PENDING each public function, each public method of a
# public class (defined in the class, not inherited) and each class's constructor names every
# parameter of its signature in its own docstring: a function or method under ``Args:``, a class
# under ``Args:`` or ``Attributes:`` (a dataclass's fields are its constructor's parameters).
# ``self``/``cls`` (and an autograd Function's ``ctx``), ``*args``/``**kwargs`` (which may be
# documented as ``**options`` etc.) and private parameters (``_cache``) are not required.

#: modules whose public functions do not all have a complete ``Args:`` section yet: module -> why.
#: It may only shrink: a module that passes fails :func:`test_args_pending_is_not_stale`.
ARGS_PENDING: dict[str, str] = {}

_PARAM_SECTION = re.compile(r"^(\s*)(Args|Arguments|Attributes|Keyword Args|Other Parameters):\s*$")


def documented_params(doc: str, sections: tuple[str, ...] = ("Args", "Arguments", "Keyword Args",
                                                            "Other Parameters")) -> set[str]:
    """Names with an entry (``name: ...`` / ``name (type): ...``, stars dropped) in the
    ``sections`` of a cleaned docstring."""
    names: set[str] = set()
    indent = None
    for line in doc.split("\n"):
        m = _PARAM_SECTION.match(line)
        if m:
            indent = len(m.group(1)) + 4 if m.group(2) in sections else None
            continue
        if indent is None or not line.strip():
            continue
        lead = len(line) - len(line.lstrip())
        if lead < indent:  # dedent: the section is over
            indent = None
            continue
        if lead == indent and (e := _ENTRY.match(line.strip())):
            names.add(e.group(1).lstrip("*"))
    return names


def _own_doc(obj: object) -> str:
    """The object's own docstring (not one inherited from ``torch.nn.Module.forward``)."""
    return inspect.cleandoc(getattr(obj, "__doc__", None) or "")


def required_params(obj: object) -> list[str]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [name for name, p in sig.parameters.items()
            if name not in ("self", "cls", "ctx") and not name.startswith("_")
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def missing_args(obj: object) -> list[str]:
    """Parameters of ``obj``'s signature without an entry in its ``Args:`` section (a class: its
    or its ``__init__``'s ``Args:``/``Attributes:``)."""
    if inspect.isclass(obj):
        docs = [_own_doc(obj)]
        if "__init__" in vars(obj):
            docs.append(_own_doc(vars(obj)["__init__"]))
        sections: tuple[str, ...] = ("Args", "Arguments", "Keyword Args", "Other Parameters",
                                     "Attributes")
    else:
        docs, sections = [_own_doc(obj)], ("Args", "Arguments", "Keyword Args", "Other Parameters")
    have = set().union(*(documented_params(d, sections) for d in docs))
    return [p for p in required_params(obj) if p not in have]


def args_targets() -> dict[str, object]:
    """``name -> object`` for the public functions and classes and the public methods that the
    classes define themselves (``staticmethod``/``classmethod`` unwrapped; properties skipped)."""
    out: dict[str, object] = {}
    for name, obj in public_objects().items():
        if _exempt_by_rule(obj):
            continue
        out[name] = obj
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if inspect.isfunction(value):
                    out[f"{name}.{attr}"] = value
    return out


def _module_of(name: str, objs: dict[str, object]) -> str:
    """The public module a target is named under (``idlkit.robust.bounds`` for
    ``idlkit.robust.bounds.BoxBounds.x_lower``)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:i + 1]) in objs:  # the public object the name starts with
            return ".".join(parts[:i])
    raise AssertionError(name)


def args_problems() -> dict[str, dict[str, list[str]]]:
    """``module -> {name: missing parameters}`` over every public module."""
    objs = public_objects()
    out: dict[str, dict[str, list[str]]] = {}
    for name, obj in args_targets().items():
        if miss := missing_args(obj):
            out.setdefault(_module_of(name, objs), {})[name] = miss
    return out


def test_every_parameter_is_under_args() -> None:
    bad = {m: p for m, p in args_problems().items() if m not in ARGS_PENDING}
    assert not bad, (
        "add an 'Args:' section (one 'name: description' line per parameter, with its shape) "
        "naming these parameters:\n  " + "\n  ".join(
            f"{n}: {miss}" for m in sorted(bad) for n, miss in sorted(bad[m].items())))


def test_args_pending_is_not_stale() -> None:
    problems = args_problems()
    modules = set(_modules())
    gone = sorted(m for m in ARGS_PENDING if m not in modules)
    assert not gone, f"not a public module, remove from ARGS_PENDING: {gone}"
    done = sorted(m for m in ARGS_PENDING if m not in problems)
    assert not done, f"complete now, remove from ARGS_PENDING: {done}"
    for module, reason in ARGS_PENDING.items():
        assert reason.strip(), f"{module}: a pending entry says why"


def test_args_check_can_fail() -> None:
    def prose(u: object, sigma_u: float) -> None:
        """Bounds ``u`` by ``sigma_u`` (parameters described only in prose)."""

    def partial(u: object, sigma_u: float, *, k: int | None = None, **options: object) -> None:
        """Bounds.

        Args:
            u: ``(batch, p)`` inputs.
            sigma_u: radius.

        Returns:
            k: not a parameter entry (another section).
        """

    def complete(u: object, sigma_u: float, *args: object, _cache: object = None,
                 **options: object) -> None:
        """Bounds.

        Args:
            u: ``(batch, p)`` inputs.
            sigma_u (float): radius,
                over two lines.
            **options: passed on.
        """

    class Config:
        """Settings.

        Attributes:
            lr: step size.
        """

        def __init__(self, lr: float, momentum: float) -> None:
            self.lr, self.momentum = lr, momentum

        def step(self, scale: float) -> None:
            """Steps (no Args)."""

    assert missing_args(prose) == ["u", "sigma_u"]
    assert missing_args(partial) == ["k"]
    assert missing_args(complete) == []
    assert missing_args(Config) == ["momentum"]
    assert missing_args(Config.step) == ["scale"]
    targets = args_targets()
    assert "idlkit.model.ImplicitModel.equilibrium" in targets
    assert "idlkit.robust.bounds.box_bounds" in targets
    objs = public_objects()
    assert _module_of("idlkit.robust.bounds.BoxBounds.x_lower", objs) == "idlkit.robust.bounds"
