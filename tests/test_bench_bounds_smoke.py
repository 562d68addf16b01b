"""Smoke test of benchmarks/bench_bounds.py at its --quick size (the widths' ordering is checked,
the timings are not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_bounds_quick(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "benchmarks/bench_bounds.py", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    data = json.loads((tmp_path / "bench_bounds_quick.json").read_text())
    assert (tmp_path / "bench_bounds_quick.md").exists()
    rows = data["rows"]
    assert len(rows) >= 5
    for r in rows:
        if r.get("ref_crown"):
            assert abs(r["crown_over_ref"] - 1) < 1e-8
            assert r["alpha-crown"]["width"] <= r["crown"]["width"] <= r["ibp"]["width"] <= r["box"]["width"]
            assert r["best"]["width"] <= r["alpha-crown"]["width"] * (1 + 1e-12)
    assert str(ROOT) not in json.dumps(data)  # no machine paths
