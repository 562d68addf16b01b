"""Smoke test of experiments/lipschitz_pareto.py --quick (digits): every model trains, every
certificate stands above its empirical lower bound, and the table, JSON and figure are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_lipschitz_pareto_quick(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "lipschitz_pareto.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "lipschitz_pareto_quick.json").read_text())
    runs = res["runs"]
    assert {(r["kind"], r["lambda"]) for r in runs} == {(k, lam) for k in ("inf", "mu", "mon")
                                                        for lam in (0.0, 1e-2)}
    for r in runs:
        assert r["violations"] == 0 and 0 < r["empirical_inf"] <= r["certified"]
        assert 0 <= r["test_error_pct"] <= 100
        assert [c["eps"] for c in r["inversion"]] == [0.0, 0.2]
        if r["kind"] == "mon":
            assert r["empirical_2"] <= r["certified_l2"]
    md = (tmp_path / "lipschitz_pareto_quick.md").read_text()
    assert md.startswith("# Paper 004") and "LBEN" in md
    assert (tmp_path / "lipschitz_pareto_quick.png").stat().st_size > 0
