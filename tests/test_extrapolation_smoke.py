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
