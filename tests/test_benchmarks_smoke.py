"""Smoke tests of the speed benchmarks (bench_core, bench_train, bench_rnn, bench_convert, bench_prune,
bench_sparse) at tiny budgets, so that CI catches a broken benchmark script; the timings themselves are
not checked. The SIM benchmarks are in ``test_bench_sim_smoke.py`` (a separate file, so that
``pytest -n 2 --dist loadfile`` can give the two halves to different workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return proc


def _mnist_available() -> bool:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _common import idlkit_data_dir

        idlkit_data_dir()
        import idlkit as idl

        idl.datasets.load("mnist", split="train")
        return True
    except Exception:
        return False
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_bench_core_quick(tmp_path: Path) -> None:
    _run(["benchmarks/bench_core.py", "--quick", "--threads", "1", "--target-threads", "1",
          "--sizes", "20", "--repeats", "1", "--scaling-sizes", "20", "--scaling-batches", "8",
          "16", "--tiny-steps", "40", "--mnist-steps", "2", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "bench_core_quick.json").read_text())
    secs = res["sections"]
    assert set(secs) == {"compare", "scaling", "targets"}
    cfg = res["config"]
    assert cfg["dtypes"] == ["float32", "float64"] and cfg["grad_tol"] == cfg["tol"]
    for tab in secs["compare"]["tables"]:
        labels = [r["label"] for c in tab["cells"] for r in c["methods"]]
        assert "idlkit-anderson" in labels and "idlkit-anderson [rel bwd]" in labels
        assert not [r for c in tab["cells"] for r in c["methods"] if "error" in r]
    rows = [r for c in secs["scaling"]["cells"] for r in c["rows"] if "memory" in r]
    assert rows and all(r["memory"]["kept_bytes"] > 0 for r in rows)
    goals = secs["targets"]["goals"]
    assert {g["row"][:3] for g in goals} >= {"(a)", "(b)", "(c)"}
    assert all(g["verdict"] in ("PASS", "MISS", "-") for g in goals)
    md = (tmp_path / "bench_core_quick.md").read_text()
    assert "## scaling" in md and "## targets" in md and "grad_tol" in md


def test_bench_train_quick(tmp_path: Path) -> None:
    if not _mnist_available():  # checked here, not at collection: loading MNIST costs ~2 s per worker
        pytest.skip("MNIST not available ($IDLKIT_DATA)")
    _run(["benchmarks/bench_train.py", "--quick", "--limit", "300", "--threads", "1",
          "--out", str(tmp_path)])
    res = json.loads((tmp_path / "bench_train_quick.json").read_text())
    assert res["results"]["idlkit"]["epochs"]
    assert "adjoint_tolerance" in res["config"]
    assert "Tolerances" in (tmp_path / "bench_train_quick.md").read_text()


def test_bench_rnn_quick_with_torchidl(tmp_path: Path) -> None:
    _run(["benchmarks/bench_rnn.py", "--quick", "--limit", "128", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "bench_rnn.json").read_text())
    names = [r["model"] for r in res["rows"]]
    assert "idlkit ImplicitRNN (warm start)" in names
    assert all(r["final_mse"] >= 0 for r in res["rows"])


def test_bench_convert_quick_recurrent(tmp_path: Path) -> None:
    _run(["benchmarks/bench_convert.py", "--quick", "--only", "recurrent", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "bench_convert_recurrent_quick.json").read_text())
    rows = res["recurrent_rows"]
    assert {(r["kind"], r["dtype"]) for r in rows} == {(k, d) for k in ("LSTM", "GRU")
                                                       for d in ("float32", "float64")}
    assert all(r["triangular_certificate"] and r["profile_top_ops"] for r in rows)
    assert all(r["max_abs_error"] <= (1e-5 if r["dtype"] == "float32" else 1e-12) for r in rows)
    assert res["config"]["out"] == tmp_path.name  # no machine path recorded
    assert "## recurrent layers" in (tmp_path / "bench_convert_recurrent_quick.md").read_text()


def test_bench_prune_quick(tmp_path: Path) -> None:
    _run(["benchmarks/bench_prune.py", "--quick", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "bench_prune_quick.json").read_text())
    staged = [r for r in res["rows"] if r["variant"] == "pruned, staged"]
    assert len(staged) == 2 and staged[0]["iterated_states"] == 0  # the MLP is fully explicit
    assert all(r["max_abs_diff"] < 1e-4 for r in res["rows"])
    assert "| speed-up |" in (tmp_path / "bench_prune_quick.md").read_text()


def test_bench_sparse_quick(tmp_path: Path) -> None:
    _run(["benchmarks/bench_sparse.py", "--quick", "--sizes", "60", "--densities", "0.05", "0.5",
          "--batches", "1", "4", "--p", "8", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "bench_sparse_quick.json").read_text())
    for sec in ("general", "triangular"):
        cells = [c for c in res[sec]["cells"] if not c.get("skipped")]
        assert cells
        for c in cells:  # same model, same solver: same iterations (float64) and outputs to rounding
            for d in ("forward", "backward"):
                its = [c[side][d]["iterations"] for side in ("dense", "csr")]
                assert abs(its[0] - its[1]) <= (0 if c["dtype"] == "float64" else 1)
            tol = 1e-4 if c["dtype"] == "float32" else 1e-10
            assert c["max_abs_dy"] <= tol * max(1.0, c["max_abs_y"])
            assert c["inf_norm_A"] <= res["config"]["kappa"] + 1e-9 or sec == "triangular"
        keys = {(x["n"], x["dtype"], x["direction"], x["batch"]) for x in res[sec]["crossovers"]}
        assert keys == {(60, d, r, b) for d in ("float32", "float64") for r in ("forward", "backward")
                        for b in (1, 4)}
    assert res["config"]["out"] == tmp_path.name  # no machine path recorded
    assert "Crossover density" in (tmp_path / "bench_sparse_quick.md").read_text()
