"""Smoke test of the paper 000 §7.2 experiment scripts (experiments/*_7_2_*.py).

Each script runs with tiny flags (a few hundred samples, one epoch) into a temporary
directory; the MNIST and GTSRB ones are skipped when their dataset file is not found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import idlkit

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"


def _data_dir(file: str) -> Path | None:
    dirs = idlkit.datasets.search_dirs()  # $IDLKIT_DATA and the cache: never a path of this machine
    return next((d for d in dirs if (d / file).is_file()), None)


def _run(script: str, args: list[str], tmp_path: Path, data: Path | None = None) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if data is not None:
        env["IDLKIT_DATA"] = str(data)
    proc = subprocess.run(
        [sys.executable, str(EXP / script), *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stem = Path(script).stem
    assert json.loads((tmp_path / f"{stem}.json").read_text())["runs"]
    assert (tmp_path / f"{stem}.md").read_text().startswith("# Paper 000")
    assert "| " in proc.stdout


def test_synthetic_smoke(tmp_path: Path) -> None:
    _run(
        "synthetic_7_2_1.py",
        ["--seeds", "1", "--epochs", "4", "--lrs", "1e-2", "--eval-every", "2"],
        tmp_path,
    )


@pytest.mark.parametrize(
    ("script", "file"), [("mnist_7_2_2.py", "mnist.npz"), ("gtsrb_7_2_3.py", "gtsrb32_gray.npz")]
)
def test_image_smoke(script: str, file: str, tmp_path: Path) -> None:
    data = _data_dir(file)
    if data is None:
        pytest.skip(f"{file} not found in $IDLKIT_DATA or the idlkit cache (make test sets IDLKIT_DATA)")
    _run(
        script,
        [
            "--limit",
            "300",
            "--epochs",
            "1",
            "--test-limit",
            "500",
            "--hidden",
            "20",
            "--nn-lrs",
            "1e-3",
            "--quiet",
        ],
        tmp_path,
        data,
    )


def _run_experiment(script: str, args: list[str], timeout: int) -> subprocess.CompletedProcess:
    """Run ``experiments/<script> *args`` on one BLAS thread from the repository root."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(EXP / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_lstm_robustness_smoke(tmp_path: Path) -> None:
    """experiments/lstm_robustness.py with one epoch, one eps and five digits (bundled digits)."""
    args = ["--epochs", "1", "--eps", "1e-3", "--images", "5", "--samples", "40", "--pgd-steps", "2",
            "--hidden", "4", "--l1", "0", "1e-3", "--out", str(tmp_path)]
    proc = _run_experiment("lstm_robustness.py", args, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "lstm_robustness.json").read_text())
    assert [r["l1"] for r in res["runs"]] == [0.0, 1e-3]
    for run in res["runs"]:
        assert run["max_abs_model_minus_net"] < 1e-12 and run["triangular"]
        assert all(r["violations"] == 0 for r in run["rows"])
    assert (tmp_path / "lstm_robustness.md").read_text().startswith("# LSTM robustness")


def test_sim_implicit_smoke(tmp_path: Path) -> None:
    """experiments/sim_implicit.py --quick: digits, the default SIM(), 200 test images."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(EXP / "sim_implicit.py"), "--quick", "--test", "200", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "sim_implicit.json").read_text())
    rows = res["datasets"][0]["rows"]
    assert rows[0]["state_error"] < 1e-9  # the teacher's own states
    assert rows[1]["nnz_A"] > 0 and rows[1]["a_inf"] <= 0.99
    assert (tmp_path / "sim_implicit.md").read_text().startswith("# SIM that stays implicit")


def test_sim_newsgroups_smoke(tmp_path: Path) -> None:
    """experiments/sim_newsgroups.py --quick: hooked states of GELU/SiLU MLPs on digits (equal to the
    converter's) fitted by SIM; the 20 Newsgroups Transformer part when its archive is found."""
    data = _data_dir("20news-bydate.tar.gz")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if data is not None:
        env["IDLKIT_DATA"] = str(data)
    args = ["--quick", "--out", str(tmp_path)] + ([] if data is not None else ["--skip-newsgroups"])
    proc = subprocess.run(
        [sys.executable, str(EXP / "sim_newsgroups.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "sim_newsgroups_quick.json").read_text())
    for row in res["digits"]:
        assert row["max_abs_hooked_minus_converter"] == 0.0 and row["phi_residual"] < 1e-12
        assert row["gamma_a_inf"] <= 0.99 + 1e-9 and row["sim_test_accuracy"] > 0.5
    runs = res["newsgroups"]["runs"] if data is not None else []
    if data is not None:
        assert [r["fit"].split(",")[0] for r in runs] == ["newsgroups FFN GELU + pooled"] * 4 + [
            "newsgroups pooled only"
        ]
    for row in runs:
        assert row["n"] > 0 and row["gamma_a_inf"] <= 0.99 + 1e-9 and 0 <= row["sim_test_accuracy"] <= 1
    assert (tmp_path / "sim_newsgroups_quick.md").read_text().startswith("# SIM on hooked states")


def test_compression_smoke(tmp_path: Path) -> None:
    """experiments/compression.py --quick: every compression method on digits, a table and a figure."""
    proc = _run_experiment("compression.py", ["--quick", "--out", str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "compression_quick.json").read_text())
    methods = {r["method"] for r in res["rows"]}
    assert {
        "base",
        "l1 penalty",
        "group + prune_states",
        "Frank-Wolfe (from 0)",
        "l1-ball projection",
        "Frank-Wolfe (from the projection)",
        "low rank (svd)",
        "low rank (balanced)",
        "magnitude (entries)",
        "magnitude (states)",
        "SIM l1 (default)",
        "SIM perspective",
        "SIM exact",
    } <= methods
    for r in res["rows"]:
        assert "error" in r or (0 <= r["accuracy"] <= 1 and r["nnz"] > 0)
    assert (tmp_path / "compression_quick.png").stat().st_size > 0
    assert "Paper 002 Table 1" in (tmp_path / "compression_quick.md").read_text()
    # the Table 1 comparison: every baseline ran at the reduction of a SIM row, and reached it
    table1 = res["table1"]
    baselines = [r for r in table1 if not r["method"].startswith("SIM")]
    assert {r["method"] for r in baselines} == {"magnitude (Han et al.)", "SSS-like (neuron factors, l1)",
                                                "SPR-like (structured perspective)",
                                                "MLA-like (feature alignment)"}
    for r in baselines:
        assert r["target"] > 0 and r["reduction"] >= r["target"] - 0.05 and -1 <= r["drop"] <= 1
