"""The ``idlkit train`` command (typer CliRunner)."""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("typer")
pytest.importorskip("rich")

from typer.testing import CliRunner  # noqa: E402

import idlkit as idl  # noqa: E402
from idlkit.cli import app  # noqa: E402

runner = CliRunner()

OPTIONS = ("--data", "--hidden", "--epochs", "--batch-size", "--lr", "--optimizer", "--kappa",
           "--activation", "--solver", "--tol", "--seed", "--val-fraction", "--patience",
           "--float64", "--checkpoint", "--resume", "--limit", "--out")


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_train_digits_writes_loadable_model(tmp_path):
    out = tmp_path / "model.safetensors"
    res = runner.invoke(app, ["train", "--data", "digits", "--hidden", "16", "--epochs", "2",
                              "--limit", "400", "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = _plain(res.output).lower()
    assert "test accuracy" in text
    assert str(out.name) in text.replace("\n", "")  # rich wraps a long path
    model = idl.load(out)
    assert isinstance(model, idl.ImplicitModel)
    assert model.hidden == 16 and model.in_features == 64 and model.out_features == 10
    with torch.no_grad():
        assert model(torch.zeros(3, 64)).shape == (3, 10)
    assert model.certificate().inf_norm <= 0.95 * (1 + 1e-6)


def test_help_lists_every_option():
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert res.exit_code == 0
    text = _plain(res.output)
    for opt in OPTIONS:
        assert opt in text, f"{opt} missing from --help"


def test_unknown_dataset_exits_2(tmp_path):
    res = runner.invoke(app, ["train", "--data", "no_such_set", "--out", str(tmp_path / "m.st")])
    assert res.exit_code == 2
    assert "no_such_set" in _plain(res.output)
    assert not (tmp_path / "m.st").exists()


def test_missing_data_file_exits_2(tmp_path, monkeypatch):
    monkeypatch.setenv("IDLKIT_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("IDLKIT_CACHE", str(tmp_path / "cache"))
    res = runner.invoke(app, ["train", "--data", "gtsrb", "--out", str(tmp_path / "m.st")])
    assert res.exit_code == 2
    out = _plain(res.output)
    assert "gtsrb32_gray.npz" in out
    assert len([ln for ln in out.splitlines() if ln.startswith("error:")]) == 1


def test_sim_digits_fits_and_saves_a_wellposed_model(tmp_path):
    out = tmp_path / "sim.safetensors"
    res = runner.invoke(app, ["sim", "--data", "digits", "--hidden", "16,8", "--epochs", "3",
                              "--samples", "300", "--backend", "serial", "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = _plain(res.output).lower()
    assert "sim model test accuracy" in text and "sparsity" in text
    model = idl.load(out)
    assert model.hidden == 24 and model.in_features == 64
    assert model.certificate().inf_norm <= 0.99


@pytest.mark.parametrize("args,match", [
    (["--hidden", "a,b"], "hidden"), (["--objective", "l0"], "objective"), (["--kappa", "2"], "kappa"),
])
def test_sim_bad_options_exit_2(tmp_path, args, match):
    res = runner.invoke(app, ["sim", "--data", "digits", "--out", str(tmp_path / "m.st"), *args])
    assert res.exit_code == 2
    assert match in _plain(res.output)
    assert not (tmp_path / "m.st").exists()


def _saved_digits_model(tmp_path):
    out = tmp_path / "m.safetensors"
    res = runner.invoke(app, ["train", "--data", "digits", "--hidden", "16", "--epochs", "3",
                              "--limit", "400", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_attack_reports_the_success_rate_of_the_library(tmp_path):
    import numpy as np

    from idlkit import datasets
    from idlkit.robust import Budget, success_rate

    path = _saved_digits_model(tmp_path)
    res = runner.invoke(app, ["attack", str(path), "--data", "digits", "--method", "sensitivity",
                              "--k", "4", "--samples", "60"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    # the same numbers computed here through the library
    model = idl.load(path)
    ds = datasets.load("digits", split="test", seed=0)
    U = torch.as_tensor(np.asarray(ds.x_test)).flatten(1)[:60].float()
    Y = torch.as_tensor(np.asarray(ds.y_test))[:60]
    ref = success_rate(model, "sensitivity", U, Y, Budget(k=4, clip=(float(U.min()), float(U.max()))))
    text = _plain(res.output)
    assert f"{ref.rate:.4f} ({ref.n_success} flipped)" in text
    assert f"{ref.clean_accuracy:.4f}" in text
    bad = runner.invoke(app, ["attack", str(path), "--data", "digits", "--method", "nope"])
    assert bad.exit_code == 2 and "nope" in _plain(bad.output)
    bad = runner.invoke(app, ["attack", str(path), "--data", "digits", "--k", "-1"])
    assert bad.exit_code == 2


def test_bench_times_a_saved_model(tmp_path):
    path = _saved_digits_model(tmp_path)
    res = runner.invoke(app, ["bench", str(path), "--batch", "32", "--repeats", "3"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    text = _plain(res.output)
    assert "forward + backward" in text and "n = 16, batch 32" in text
    model = idl.load(path)  # the same inputs as the command's: its seed, its batch
    with torch.no_grad():
        model(torch.rand(32, 64, generator=torch.Generator().manual_seed(0)))
    row = next(line for line in text.splitlines() if "forward" in line and "backward" not in line)
    cells = [c.strip() for c in row.replace("│", "|").split("|") if c.strip()]
    assert cells[0] == "forward" and float(cells[1]) > 0 and int(cells[2]) == model.last_solve.iterations
    missing = runner.invoke(app, ["bench", str(tmp_path / "nothing.safetensors")])
    assert missing.exit_code == 2


def test_every_command_documents_its_options():
    for cmd, opts in (("attack", ("--data", "--method", "--k", "--epsilon", "--samples", "--seed")),
                      ("bench", ("--batch", "--repeats", "--float64", "--seed"))):
        res = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
        assert res.exit_code == 0
        for opt in opts:
            assert opt in _plain(res.output), f"{cmd} {opt}"
