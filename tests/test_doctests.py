"""The ``>>>`` examples of idlkit's public modules, run as doctests (issue 20).

Every module of the package is searched with :class:`doctest.DocTestFinder`; each module with
examples is one test, run with ``ELLIPSIS | NORMALIZE_WHITESPACE``. The reference is the output
written in the docstring itself: a docstring whose example no longer prints what it says fails.

The examples may use ``idlkit``, ``idl``, ``torch`` and ``np`` without importing them (as numpy's
own doctests assume ``np``): those names are added to each module's globals. ``torch`` is seeded
with 0 before every docstring, so examples that draw random weights are reproducible.

Excluded modules, and why (:data:`EXCLUDED`):

* ``idlkit.__main__`` (if present): running it starts the command-line program.

None is excluded for a failing example: all pass today. To exclude one, add it to ``EXCLUDED``
with the reason.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import numpy as np
import pytest
import torch

import idlkit

#: module name -> why its examples are not run
EXCLUDED: dict[str, str] = {
    "idlkit.__main__": "importing it runs the command-line program",
}

#: optional dependencies whose absence skips a module instead of failing it
OPTIONAL = ("sklearn", "matplotlib", "cvxpy", "ray", "dask", "distributed", "clarabel")

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names() -> list[str]:
    """The modules whose source holds an example (read as text: nothing is imported here)."""
    names = ["idlkit"] + [m.name for m in pkgutil.walk_packages(idlkit.__path__, "idlkit.")]
    out = []
    for name in names:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if name not in EXCLUDED and origin and origin.endswith(".py"):
            with open(origin, encoding="utf-8") as fh:
                if ">>>" in fh.read():
                    out.append(name)
    return sorted(out)


def _globs() -> dict[str, object]:
    return {"idlkit": idlkit, "idl": idlkit, "torch": torch, "np": np}


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:  # an optional dependency missing: not this test's business
        if getattr(e, "name", None) and e.name.split(".")[0] in OPTIONAL:
            pytest.skip(f"{name} needs {e.name}: pip install -e '.[dev]'")
        raise


def _tests(name: str) -> list[doctest.DocTest]:
    mod = _import(name)
    found = doctest.DocTestFinder(exclude_empty=True).find(mod, name, extraglobs=_globs())
    # only the module's own docstrings (DocTestFinder also follows re-exported objects)
    return [t for t in found if t.examples and (t.filename or "") == (mod.__file__ or "")]


MODULES = _module_names()


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    tests = _tests(name)
    assert tests, f"{name} holds '>>>' but no example was found in its docstrings"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for t in sorted(tests, key=lambda t: t.name):
        torch.manual_seed(0)
        runner.run(t, out=report.append)
    result = runner.summarize(verbose=False)
    summary = f"{result.failed} of {result.attempted} examples failed in {name}:\n"
    assert result.failed == 0, summary + "".join(report)


def test_the_examples_are_found() -> None:
    """The search itself works: the modules that document their public functions with examples
    are found with their examples (a finder that found nothing would pass every test above)."""
    counts = {name: sum(len(t.examples) for t in _tests(name))
              for name in ("idlkit.wellposed", "idlkit.robust.certify", "idlkit.compress.prune",
                           "idlkit.sim.states", "idlkit.solve.api", "idlkit.model")}
    assert all(c > 0 for c in counts.values()), counts
    assert sum(counts.values()) >= 25, counts


def test_a_wrong_example_fails() -> None:
    """The runner's verdict is not vacuous: an example whose output is wrong is reported."""
    parser = doctest.DocTestParser()
    good = parser.get_doctest(">>> 1 + 1\n2\n", _globs(), "good", None, 0)
    bad = parser.get_doctest(">>> idl.wellposed.inf_norm(np.eye(2) * 0.5)\n0.6\n", _globs(), "bad", None, 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    assert runner.run(good, out=lambda s: None).failed == 0
    assert runner.run(bad, out=lambda s: None).failed == 1
