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
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import idlkit

#: result dataclasses that are only returned: name -> the function whose example shows them
EXEMPT: dict[str, str] = {}

#: public names without an example yet: name -> why
PENDING: dict[str, str] = {}


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
                     and name not in EXEMPT and name not in PENDING)
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


def test_exempt_results_are_shown_by_an_example() -> None:
    """A result dataclass is exempt only because the function named in its reason has an
    example that returns it: that function exists and has an example."""
    objs = public_objects()
    for name, shown_by in EXEMPT.items():
        obj = objs[name]
        assert inspect.isclass(obj), f"{name}: only result classes are exempt"
        fn = objs.get(shown_by)
        assert fn is not None, f"{name}: {shown_by!r} is not a public name"
        assert has_example(fn), f"{name}: {shown_by} has no example to show it"


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
