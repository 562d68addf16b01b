"""Smoke tests of the thesis ch. 5 experiment and the ImplicitRNN benchmark (tiny budgets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_extrapolation_quick(tmp_path: Path) -> None:
    _run(["experiments/extrapolation.py", "--quick", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "extrapolation.json").read_text())
    for study in ("identity", "arithmetic", "rolling", "spiky", "depth", "feedback"):
        assert res[study], study
    row = res["arithmetic"]["add"]["rows"]["implicit"]
    assert row["params"] == 50 * 50 + 50 * 100 + 50 + 100 + 50 + 1
    assert set(row["curve"]) == {"0.0", "1.0", "3.0", "10.0", "30.0", "100.0"}
    md = (tmp_path / "extrapolation.md").read_text()
    assert "Table 5.2" in md and "Table 5.3" in md and "Table 5.4" in md and "16.07" in md


def test_bench_rnn_quick(tmp_path: Path) -> None:
    _run(["benchmarks/bench_rnn.py", "--quick", "--skip-torchidl", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "bench_rnn.json").read_text())
    names = [r["model"] for r in res["rows"]]
    assert any(n.startswith("LSTM") for n in names) and any("ImplicitRNN" in n for n in names)
    assert all(r["epoch_s_median"] > 0 for r in res["rows"])


def test_partial_run_merges_into_an_earlier_one(tmp_path: Path) -> None:
    """A run of a few models (--models, --ops) writes its rows and joins an earlier file."""
    _run(["experiments/extrapolation.py", "--quick", "--studies", "identity", "--models",
          "=implicit", "--out", str(tmp_path), "--name", "first"])
    _run(["experiments/extrapolation.py", "--quick", "--studies", "identity,arithmetic",
          "--ops", "add", "--models", "=NALU", "affine", "--merge", str(tmp_path / "first.json"),
          "--out", str(tmp_path), "--name", "merged"])
    res = json.loads((tmp_path / "merged.json").read_text())
    assert set(res["identity"]["rows"]) == {"implicit", "affine D u + d (n = 0)"}
    assert set(res["arithmetic"]) == {"add"}
    assert set(res["arithmetic"]["add"]["rows"]) == {"NALU", "affine D u + d (n = 0)"}
    assert [r["argv"].split()[-1] for r in res["meta"]["runs"]] == ["first", "merged"]
