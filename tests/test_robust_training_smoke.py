"""Smoke test of experiments/robust_training.py --quick (digits, two epochs, one radius)."""

from __future__ import annotations

import json
from pathlib import Path

from test_experiments_smoke import _run_experiment

import idlkit as idl


def test_robust_training_smoke(tmp_path: Path) -> None:
    proc = _run_experiment("robust_training.py", ["--quick", "--out", str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "robust_training_quick.json").read_text())
    rows = {r["method"]: r for r in res["runs"]}
    trained = ["standard", "Lipschitz penalty", "mu_inf", "adversarial (PGD)"]
    robust_fit = ["robust counterpart", "affine recourse", "robust LP"]
    assert set(trained + robust_fit) <= set(rows)
    for name in trained:
        r = rows[name]
        assert 0 <= r["clean"] <= 1, r
        for row in r["sigmas"].values():
            # attacked accuracy never exceeds clean accuracy; nothing certified is broken
            assert row["pgd"] <= r["clean"] and row["sens"] <= r["clean"] and row["violations"] == 0
            assert row["box"] is None or row["box"] <= row["pgd"]
            for meth in ("lp", "crown"):
                assert row.get(meth) is None or row[meth] <= 1
    for name in robust_fit:  # rows of branch robustfit: trained when it is merged, skipped cleanly if not
        r = rows[name]
        if not hasattr(idl.train, "robust_fit"):
            assert "not available" in r["note"] and "clean" not in r
        else:
            assert "clean" in r or r["note"].startswith("failed")
    assert (tmp_path / "robust_training_quick.md").read_text().startswith("# Robust training")
