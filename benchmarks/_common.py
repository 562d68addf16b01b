"""Helpers shared by the benchmark scripts: machine facts, atomic writes, torchidl loading."""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=HERE.parent,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty(src)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def config_of(args: object) -> dict:
    """The parsed arguments for a results file; a path becomes repository-relative (or its
    bare name outside the repository), so no machine path is recorded."""
    root = HERE.parent

    def rel(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(root))
        except ValueError:
            return path.name

    return {k: (rel(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def idlkit_data_dir() -> str | None:
    """``$IDLKIT_DATA`` (``None`` when unset): the data sets are found by ``idlkit.datasets.load``
    there or in the idlkit cache, never through a path written here (the Makefile exports it)."""
    return os.environ.get("IDLKIT_DATA")


def loadavg_1min() -> float | None:
    """The 1-minute load average (``None`` where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def has_backward_stop() -> bool:
    """Whether this idlkit's ``ImplicitModel`` takes ``backward_stop`` (absolute adjoint
    tolerance, issue 14); older versions only have the relative rule."""
    import inspect

    import idlkit as idl

    return "backward_stop" in inspect.signature(idl.ImplicitModel).parameters


def load_torchidl() -> tuple[types.ModuleType | None, types.ModuleType | None, str]:
    """``(implicit_base_model, implicit_function, note)``; modules are ``None`` when missing.

    torchidl 0.0.4's package ``__init__`` also imports its SIM sub-package, which
    needs tqdm, cvxpy, matplotlib and scikit-learn (installed with ``--no-deps`` they
    are absent). The implicit model itself needs torch only, so when ``import
    torchidl`` fails on such a dependency its two core files are loaded directly
    from the installed package, under a private package name.
    """
    try:
        tb = importlib.import_module("torchidl.implicit_base_model")
        tf = importlib.import_module("torchidl.implicit_function")
        return tb, tf, "import torchidl"
    except ModuleNotFoundError as exc:
        if exc.name == "torchidl":
            return None, None, ("torchidl is not installed (install it with "
                                "`.venv/bin/pip install --no-deps torchidl`)")
        missing = exc.name
    except ImportError as exc:  # pragma: no cover - any other import failure
        missing = repr(exc)
    spec = importlib.util.find_spec("torchidl")
    if spec is None or not spec.submodule_search_locations:
        return None, None, f"torchidl could not be imported ({missing})"
    for name in [m for m in sys.modules if m == "torchidl" or m.startswith("torchidl.")]:
        del sys.modules[name]  # partial import left behind by the failed attempt
    pkg = types.ModuleType("_torchidl_core")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__package__ = "_torchidl_core"
    sys.modules["_torchidl_core"] = pkg
    try:
        tb = importlib.import_module("_torchidl_core.implicit_base_model")
        tf = importlib.import_module("_torchidl_core.implicit_function")
    except ImportError as exc:
        return None, None, f"torchidl core modules could not be loaded ({exc!r})"
    return tb, tf, (f"`import torchidl` fails (its SIM sub-package needs missing module "
                    f"{missing!r}); loaded implicit_base_model.py and implicit_function.py "
                    f"directly from the installed package (site-packages/torchidl)")
