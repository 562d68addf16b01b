"""Bad input of every ``idlkit`` command: a missing file, a corrupt checkpoint, a dataset that does
not exist, each numeric option out of range. Each call must exit non-zero with exactly one stderr
line starting with ``error:`` and no traceback (issue 20). And every option of every command has
help text (``--help`` documents it).

The calls go through the console entry ``idlkit.cli.main`` in process (``sys.argv`` patched), a
couple through a subprocess. The ``demo`` command is only given bad options and an unwritable
``--out``: its body must never run here (``run_demo`` is replaced by a failure).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("typer")
pytest.importorskip("rich")

import typer  # noqa: E402
from _cli import plain, run_main  # noqa: E402

import idlkit as idl  # noqa: E402
from idlkit.cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# per command: a valid call with cheap settings (a bad value replaces one of them), the files it
# reads, and for each numeric option the out-of-range values it must refuse
BASE = {
    "demo": ["demo", "--out", "{o}/demo", "--report", "{o}/report"],
    "train": ["train", "--data", "digits", "--hidden", "4", "--epochs", "1", "--limit", "60",
              "--out", "{o}/train.safetensors"],
    "sim": ["sim", "--data", "digits", "--hidden", "4", "--epochs", "1", "--samples", "20",
            "--backend", "serial", "--out", "{o}/sim.safetensors"],
    "analyze": ["analyze", "{d}/model.safetensors", "--out", "{o}/report"],
    "attack": ["attack", "{d}/model.safetensors", "--data", "digits", "--samples", "5"],
    "bench": ["bench", "{d}/model.safetensors", "--batch", "2", "--repeats", "1"],
}

OUT_OF_RANGE = {
    "demo": {"--hidden": ["0"], "--epochs": ["0"], "--kappa": ["0", "1", "nan"], "--seed": ["-1"],
             "--attack-samples": ["0"], "--sim-samples": ["9"]},
    "train": {"--hidden": ["0"], "--epochs": ["0"], "--batch-size": ["0"], "--lr": ["0", "-1", "nan"],
              "--kappa": ["0", "1", "inf"], "--tol": ["0", "nan"], "--seed": ["-1"],
              "--val-fraction": ["-0.1", "1"], "--patience": ["0"], "--limit": ["0"]},
    "sim": {"--epochs": ["0"], "--samples": ["0"], "--kappa": ["0", "1.5", "nan"], "--beta": ["-1", "nan"],
            "--alpha": ["-1", "inf"], "--lambda-state": ["-1", "nan"], "--lambda-output": ["-1", "inf"],
            "--n-jobs": ["0"], "--seed": ["-1"]},
    "analyze": {"--samples": ["0"], "--attack-samples": ["0"], "--seed": ["-1"],
                "--check-tol": ["0", "nan"], "--attack-k": ["0", "1.5", "nan"],
                "--bound-epsilon": ["0", "-1", "inf"]},
    "attack": {"--k": ["0", "-1", "nan"], "--epsilon": ["-1", "nan"], "--samples": ["0"], "--seed": ["-1"],
               "--check-tol": ["0", "-1"]},
    "bench": {"--batch": ["0"], "--repeats": ["0"], "--seed": ["-1"], "--check-tol": ["0", "inf"]},
}

CORRUPT = ("random.safetensors", "truncated.safetensors", "plain.safetensors", "empty.safetensors")


def _with(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option value`` (replacing the option's value if it is there)."""
    argv = list(argv)
    if option in argv:
        argv[argv.index(option) + 1] = value
        return argv
    return [*argv, option, value]


def _cases() -> list[tuple[str, list[str], str]]:
    cases = []
    for cmd, options in OUT_OF_RANGE.items():
        for opt, values in options.items():
            cases += [(f"{cmd} {opt} {v}", _with(BASE[cmd], opt, v), opt) for v in values]
    for cmd in ("analyze", "attack", "bench"):  # MODEL: missing, corrupt
        model = BASE[cmd][1]
        cases.append((f"{cmd} missing MODEL", [cmd, "{d}/nothing.safetensors", *BASE[cmd][2:]], "nothing"))
        cases.append((f"{cmd} MODEL is a folder", [cmd, "{d}", *BASE[cmd][2:]], "not a file"))
        cases += [(f"{cmd} {bad}", [cmd, model.replace("model.safetensors", bad), *BASE[cmd][2:]], bad)
                  for bad in CORRUPT]
    for bad in CORRUPT:  # the trainer's checkpoint
        cases.append((f"train --checkpoint {bad} --resume",
                      [*BASE["train"], "--checkpoint", f"{{d}}/{bad}", "--resume"], bad))
    for cmd in ("train", "sim", "attack", "analyze"):  # a dataset name that does not exist
        cases.append((f"{cmd} --data no_such_set", _with(BASE[cmd], "--data", "no_such_set"), "no_such_set"))
    for cmd in ("train", "sim"):  # a dataset whose file is missing
        cases.append((f"{cmd} --data gtsrb (file missing)", _with(BASE[cmd], "--data", "gtsrb"),
                      "gtsrb32_gray.npz"))
    cases.append(("analyze --data gtsrb (file missing)", [*BASE["analyze"], "--data", "gtsrb"],
                  "gtsrb32_gray.npz"))
    for cmd in ("demo", "train", "sim"):  # an output that cannot be written
        cases.append((f"{cmd} --out under a file", _with(BASE[cmd], "--out", "{d}/plain.safetensors/m.st"),
                      "is a file"))
    for cmd in ("train", "sim"):  # a file output given a folder
        cases.append((f"{cmd} --out a folder", _with(BASE[cmd], "--out", "{d}"), "directory"))
    cases.append(("demo --out a file", _with(BASE["demo"], "--out", "{d}/plain.safetensors"), "is a file"))
    cases.append(("demo --report a file", _with(BASE["demo"], "--report", "{d}/plain.safetensors"),
                  "is a file"))
    cases.append(("analyze --out a file", _with(BASE["analyze"], "--out", "{d}/plain.safetensors"), "--out"))
    cases.append(("train --checkpoint a folder", [*BASE["train"], "--checkpoint", "{d}"], "--checkpoint"))
    cases.append(("sim --hidden 0", _with(BASE["sim"], "--hidden", "0"), "--hidden"))
    cases.append(("attack --method nope", [*BASE["attack"], "--method", "nope"], "nope"))
    cases.append(("analyze --attacks nope", [*BASE["analyze"], "--attacks", "sensitivity,nope"], "nope"))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    good = idl.save(idl.ImplicitModel(64, 8, 10), d / "model.safetensors").read_bytes()
    (d / "random.safetensors").write_bytes(bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).tolist()))
    (d / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    save_file({"weight": torch.zeros(3, 3)}, d / "plain.safetensors")  # valid, not an idlkit model
    (d / "empty.safetensors").write_bytes(b"")
    return d


@pytest.fixture
def no_demo(monkeypatch):
    def must_not_run(**kw: object) -> None:
        pytest.fail(f"the demo ran with {kw}: a bad option was not refused")

    monkeypatch.setattr("idlkit.demo.run_demo", must_not_run)


@pytest.mark.parametrize("argv,names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(argv, names, files, tmp_path, monkeypatch, capsys, no_demo):
    monkeypatch.setenv("IDLKIT_DATA", str(tmp_path / "no_data"))  # gtsrb: not there
    monkeypatch.setenv("IDLKIT_CACHE", str(tmp_path / "no_cache"))
    out = tmp_path / "out"
    argv = [a.replace("{d}", str(files)).replace("{o}", str(out)) for a in argv]
    run = run_main(argv, monkeypatch, capsys)
    line = run.assert_one_error_line()
    # an option is named as on the command line ("--lambda-state", not SIM's "lambda_state")
    assert names in line, line
    assert not out.exists() or not any(out.rglob("*.*")), list(out.rglob("*"))  # nothing written


def _params(name: str) -> list[tuple[str, type | None, object]]:
    """``(shown name, numeric type or None, typer OptionInfo/ArgumentInfo)`` of each parameter of
    command ``name``, from its Python signature (independent of typer's click internals)."""
    import inspect
    import types
    import typing

    fn = next(c.callback for c in app.registered_commands if (c.name or c.callback.__name__) == name)
    hints = typing.get_type_hints(fn)
    out = []
    for pname, par in inspect.signature(fn).parameters.items():
        info = par.default
        hint = hints[pname]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        numeric = next((t for t in args if t in (int, float)), None)
        if isinstance(info, typer.models.ArgumentInfo):
            shown = info.metavar or pname.upper()
        else:
            decls = [d for d in (info.param_decls or ()) if d.startswith("--")]
            shown = decls[0] if decls else "--" + pname.replace("_", "-")
        out.append((shown, numeric, info))
    return out


COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


def test_every_numeric_option_is_swept():
    """The table above covers every int/float option of every command (a new option without
    out-of-range values fails here)."""
    assert set(COMMANDS) == set(OUT_OF_RANGE)
    for name in COMMANDS:
        numeric = {shown for shown, kind, _ in _params(name) if kind is not None}
        assert numeric == set(OUT_OF_RANGE[name]), name


def test_every_option_has_help_text():
    from typer.testing import CliRunner

    runner = CliRunner()
    for name in COMMANDS:
        fn = next(c.callback for c in app.registered_commands if (c.name or c.callback.__name__) == name)
        assert (fn.__doc__ or "").strip(), name
        res = runner.invoke(app, [name, "--help"], env={"COLUMNS": "250", "TERM": "dumb"})
        assert res.exit_code == 0, res.output
        text = plain(res.output)
        for shown, _, info in _params(name):
            assert (info.help or "").strip(), f"{name} {shown} has no help"
            assert shown in text, f"{name} --help does not show {shown}"
            assert info.help.split()[0] in text, f"{name} --help does not show the help of {shown}"


def test_console_script_in_a_subprocess(files):
    """The real process: its stderr, its exit status (tests/test_bad_input.py runs more this way)."""
    argv = ["bench", "{d}/plain.safetensors", "--factory", "{d}/nope.py:net", "--input-shape", "4"]
    names = "nope.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    argv = [a.replace("{d}", str(files)) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "idlkit.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and names in err[0], proc.stderr
