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
