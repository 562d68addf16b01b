"""Smoke tests of the SIM benchmarks (bench_sim --only exact, bench_sim_scale) at tiny budgets, on the
cached Fashion-MNIST states and teacher (skipped without them); the timings themselves are not checked.
Split from ``test_benchmarks_smoke.py`` so that ``--dist loadfile`` balances the two workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_benchmarks_smoke import ROOT, _run


def test_bench_sim_exact_quick(tmp_path: Path) -> None:
    if not (ROOT / "experiments" / "results" / "cache" / "fashion_states_2000.npz").exists():
        pytest.skip("cached Fashion-MNIST states not present")
    _run(["benchmarks/bench_sim.py", "--quick", "--only", "exact", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "bench_sim_exact_quick.json").read_text())
    fit = res["exact"]["fits"]["serial"]
    assert fit["feasible_rows"] + fit["infeasible_rows"] == res["exact"]["rows"]
    assert fit["nnz"] > 0 and fit["a_inf_norm"] <= 0.99 and fit["max_row_residual"] <= 1e-5
    assert res["exact"]["highs"]["rows_timed"] == 1
    assert "HiGHS" in (tmp_path / "bench_sim_exact_quick.md").read_text()


def test_bench_sim_scale_quick(tmp_path: Path) -> None:
    if not (ROOT / "experiments" / "results" / "cache" / "fashion_teacher_784_64_32_16_10.pt").exists():
        pytest.skip("cached Fashion-MNIST teacher not present")
    _run(["benchmarks/bench_sim_scale.py", "--quick", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "bench_sim_scale_quick.json").read_text())
    assert [r["samples"] for r in res["samples"]] == [200]
    for r in res["samples"]:
        assert r["fit_s"] > 0 and 0 < r["accuracy"] <= 1 and r["nnz_A"] > 0 and r["a_inf"] <= 0.99
    assert {r["backend"] for r in res["backends"]} == {"serial", "loky"}
    assert all(r["best_s"] and r["speedup"] for r in res["backends"])
    assert res["config"]["out"] == tmp_path.name  # no machine path recorded
    assert "## Backends" in (tmp_path / "bench_sim_scale_quick.md").read_text()
