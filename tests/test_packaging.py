"""Packaging: the sdist and the wheel build offline, hold every module, carry the one version, and
the wheel installed on its own runs the README's examples (issue 20)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import idlkit

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("build", reason="the dev extras carry `build` (pip install -e '.[dev]')")
pytest.importorskip("hatchling", reason="the dev extras carry `hatchling` (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # the wheel is built from the sdist: a file missing from the sdist fails here
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def test_sdist_and_wheel_hold_every_module_and_one_version(dist: Path) -> None:
    version = idlkit.__version__
    (wheel,) = dist.glob(f"idlkit-{version}-py3-none-any.whl")
    (sdist,) = dist.glob(f"idlkit-{version}.tar.gz")
    sources = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "idlkit").rglob("*.py")}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(f"idlkit-{version}.dist-info/METADATA").decode()
    assert sources <= names, sorted(sources - names)
    assert f"Version: {version}" in meta and "Requires-Dist: torch>=2.2" in meta
    with tarfile.open(sdist) as tf:
        in_sdist = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "CHANGELOG.md"} <= in_sdist
    assert {f"src/{s}" for s in sources} <= in_sdist
    # the changelog names the version being built
    assert f"## {version}" in (ROOT / "CHANGELOG.md").read_text()


def test_installed_wheel_runs_the_readme_examples(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("idlkit-*.whl")
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # a clean environment: the installed wheel first on the path, the checkout nowhere on it; the
    # runner (the same one `make package` runs in a fresh venv) checks where idlkit comes from
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-s", str(ROOT / "tests" / "run_readme_examples.py"),
                           str(ROOT / "README.md"), "--expect-under", str(target)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "README examples ran" in proc.stdout and str(target) in proc.stdout


def test_readme_runner_refuses_an_idlkit_from_elsewhere(tmp_path: Path) -> None:
    """The runner's location check can fail: the checkout's idlkit is not under tmp_path."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "run_readme_examples.py"),
                           str(ROOT / "README.md"), "--expect-under", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not from under" in proc.stderr
