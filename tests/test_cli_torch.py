"""``idlkit analyze / attack / bench`` on a saved torch network (``--factory`` + its state_dict).

Independent path: the test builds the network itself, loads the weights, converts it with
``idlkit.convert.from_torch`` on an input of its own choosing (zeros, not the command's data) and
computes the report / attack / timing numbers through the library; the command's printed and
written numbers must be those. Then every refusal: a factory that does not import, is not
callable or returns no module, weights that do not match, an unsupported layer, a pickled whole
module, a network whose conversion does not reproduce it: each a one-line ``error:``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("typer")
pytest.importorskip("rich")

from _cli import report_values, run_main  # noqa: E402

import idlkit as idl  # noqa: E402
from idlkit.convert import from_torch  # noqa: E402

NETS = '''
import torch
from torch import nn


def mlp(hidden=16):
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64, 10))


def unsupported():
    return nn.Sequential(nn.Linear(64, 10), nn.Hardshrink())


class BatchScaled(nn.Module):  # its output depends on the batch size: no implicit model has that
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        return self.lin(x) * x.shape[0]


NOT_CALLABLE = 3


def not_a_module():
    return "a string"
'''


def _build(name: str, **kw: object) -> nn.Module:
    ns: dict = {}
    exec(NETS, ns)  # the same source the command imports from nets.py
    return ns[name](**kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """nets.py, an MLP briefly trained on digits (torch.save state_dict), a conv net
    (safetensors state_dict), and the odd files of the error cases."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("nets")
    (d / "nets.py").write_text(NETS)
    (d / "broken.py").write_text("def mlp(:\n")
    ds = idl.datasets.load("digits", split="train")
    x, y = torch.as_tensor(ds.x_train), torch.as_tensor(ds.y_train)
    torch.manual_seed(0)
    mlp = _build("mlp", hidden=16)
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(60):  # a net that classifies, so the attack has correct inputs to flip
        opt.zero_grad()
        nn.functional.cross_entropy(mlp(x), y).backward()
        opt.step()
    torch.save(mlp.state_dict(), d / "mlp.pt")
    # a training checkpoint around the same weights, with DataParallel's "module." names
    torch.save({"epoch": 60, "model_state_dict": {f"module.{k}": v for k, v in mlp.state_dict().items()},
                "optimizer": {"lr": 1e-2}}, d / "mlp_checkpoint.pt")
    torch.save({"epoch": 1, "misc": {"a": torch.zeros(1)}, "other": 3}, d / "no_weights.pt")
    save_file(_build("cnn").state_dict(), d / "cnn.safetensors")
    save_file(_build("unsupported").state_dict(), d / "unsupported.safetensors")
    save_file(_build("BatchScaled").state_dict(), d / "scaled.safetensors")
    torch.save(_build("cnn"), d / "whole.pt")  # a pickled module: never loaded
    idl.save(idl.ImplicitModel(64, 8, 10), d / "implicit.safetensors")
    return d


def _reference(d, name: str, weights: str, **kw: object) -> idl.ImplicitModel:
    from safetensors.torch import load_file

    net = _build(name, **kw)
    path = d / weights
    net.load_state_dict(torch.load(path, weights_only=True) if path.suffix == ".pt" else load_file(path))
    shape = (1, 8, 8) if name == "cnn" else (64,)
    return from_torch(net.eval(), torch.zeros(1, *shape))


def _digits_test(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    ds = idl.datasets.load("digits", split="test", seed=0)
    return torch.as_tensor(np.asarray(ds.x_test))[:n], torch.as_tensor(np.asarray(ds.y_test))[:n]


def _max_diff(out: str) -> float:
    line = next(ln for ln in out.splitlines() if "max |model(u) - net(u)|" in ln)
    return float(line.split("max |model(u) - net(u)| = ")[1].split()[0])


def test_analyze_mlp_state_dict_writes_the_report_of_the_converted_model(saved, tmp_path, monkeypatch,
                                                                        capsys):
    out = tmp_path / "rep"
    run = run_main(["analyze", str(saved / "mlp.pt"), "--factory", f"{saved / 'nets.py'}:mlp",
                    "--factory-kwargs", '{"hidden": 16}', "--data", "digits", "--samples", "20",
                    "--attack-samples", "2", "--out", str(out)], monkeypatch, capsys)
    assert run.code == 0, run.err
    assert "input shape 64" in run.out and "n = 16 states" in run.out
    assert _max_diff(run.out) <= 1e-5
    from idlkit.report import write_report

    ref = write_report(_reference(saved, "mlp", "mlp.pt", hidden=16), tmp_path / "ref",
                       data=_digits_test(), samples=20, attack_samples=2, seed=0)
    got, want = report_values((out / "index.html").read_text()), report_values(ref.path.read_text())
    assert {"accuracy", "inf_norm", "lip.empirical", "iter.max", "sens.max"} <= set(want)
    assert got == want
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in ref.figures)


def test_analyze_conv_net_without_data_takes_input_shape(saved, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(saved))  # the module:function form
    out = tmp_path / "rep"
    args = ["analyze", str(saved / "cnn.safetensors"), "--factory", "nets:cnn", "--out", str(out)]
    run = run_main(args, monkeypatch, capsys)
    run.assert_one_error_line("--input-shape")
    run = run_main([*args, "--input-shape", "1,8,8"], monkeypatch, capsys)
    assert run.code == 0, run.err
    assert _max_diff(run.out) <= 1e-5 and "input shape 1,8,8" in run.out
    from idlkit.report import write_report

    ref = write_report(_reference(saved, "cnn", "cnn.safetensors"), tmp_path / "ref", seed=0)
    assert report_values((out / "index.html").read_text()) == report_values(ref.path.read_text())


def test_attack_conv_net_prints_the_library_success_rate(saved, monkeypatch, capsys):
    from idlkit.robust import Budget, success_rate

    run = run_main(["attack", str(saved / "cnn.safetensors"), "--factory", f"{saved / 'nets.py'}:cnn",
                    "--data", "digits", "--k", "4", "--samples", "60"], monkeypatch, capsys)
    assert run.code == 0, run.err
    assert "input shape 1,8,8" in run.out  # the data's own (C, H, W), found without --input-shape
    U, Y = _digits_test(60)
    model = _reference(saved, "cnn", "cnn.safetensors")
    ref = success_rate(model, "sensitivity", U.float(), Y, Budget(k=4, clip=(float(U.min()), float(U.max()))))
    assert f"{ref.rate:.4f} ({ref.n_success} flipped)" in run.out
    assert f"{ref.clean_accuracy:.4f}" in run.out


def test_attack_and_bench_mlp(saved, monkeypatch, capsys):
    from idlkit.robust import Budget, success_rate

    factory = ["--factory", f"{saved / 'nets.py'}:mlp"]
    run = run_main(["attack", str(saved / "mlp.pt"), *factory, "--data", "digits", "--samples", "60"],
                   monkeypatch, capsys)
    assert run.code == 0, run.err
    U, Y = _digits_test(60)
    model = _reference(saved, "mlp", "mlp.pt")
    ref = success_rate(model, "sensitivity", U.float(), Y,
                       Budget(k=0.05, clip=(float(U.min()), float(U.max()))))
    assert ref.clean_accuracy > 0.5 and ref.n_attacked > 0  # the numbers below say something
    assert f"{ref.rate:.4f} ({ref.n_success} flipped)" in run.out

    run = run_main(["bench", str(saved / "mlp.pt"), *factory, "--input-shape", "64", "--batch", "16",
                    "--repeats", "2"], monkeypatch, capsys)
    assert run.code == 0, run.err
    assert "n = 16, batch 16" in run.out
    with torch.no_grad():
        model(torch.rand(16, 64, generator=torch.Generator().manual_seed(0)))
    row = next(ln for ln in run.out.splitlines() if "forward" in ln and "backward" not in ln)
    cells = [c.strip() for c in row.replace("│", "|").split("|") if c.strip()]
    assert int(cells[2]) == model.last_solve.iterations


def _bench(saved, weights: str, *extra: str) -> list[str]:
    return ["bench", str(saved / weights), "--input-shape", "64", "--repeats", "1", "--batch", "2", *extra]


ERRORS = [  # (weights file, extra arguments, fragments of the one error line)
    ("mlp.pt", ["--factory", "no_such_module_xyz:mlp"], ["no module named 'no_such_module_xyz'"]),
    ("mlp.pt", ["--factory", "{d}/missing.py:mlp"], ["missing.py is not a file"]),
    ("mlp.pt", ["--factory", "{d}/broken.py:mlp"], ["SyntaxError"]),
    ("mlp.pt", ["--factory", "{d}/nets.py:nope"], ["has no attribute 'nope'"]),
    ("mlp.pt", ["--factory", "{d}/nets.py:NOT_CALLABLE"], ["not callable"]),
    ("mlp.pt", ["--factory", "{d}/nets.py:not_a_module"], ["not a torch.nn.Module"]),
    ("mlp.pt", ["--factory", "{d}/nets.py"], ["module:function"]),
    ("mlp.pt", ["--factory", "{d}/nets.py:mlp", "--factory-kwargs", '{"width": 3}'], ["width"]),
    ("mlp.pt", ["--factory", "{d}/nets.py:mlp", "--factory-kwargs", "[16]"], ["JSON object"]),
    ("mlp.pt", ["--factory", "{d}/nets.py:mlp", "--factory-kwargs", "{"], ["not valid JSON"]),
    ("mlp.pt", ["--factory", "{d}/nets.py:cnn"], ["missing keys 3.weight, 3.bias",
                                                   "unexpected keys 2.weight, 2.bias"]),
    ("mlp.pt", ["--factory", "{d}/nets.py:mlp", "--factory-kwargs", '{"hidden": 8}'],
     ["shapes differ", "0.weight (16, 64) in the file, (8, 64) in the network"]),
    ("unsupported.safetensors", ["--factory", "{d}/nets.py:unsupported"], ["Hardshrink"]),
    ("scaled.safetensors", ["--factory", "{d}/nets.py:BatchScaled"], ["max |model(u) - net(u)|",
                                                                      "batch size"]),
    ("whole.pt", [], ["torch.save(net.state_dict(), PATH)", "--factory"]),
    ("whole.pt", ["--factory", "{d}/nets.py:cnn"], ["torch.save(net.state_dict(), PATH)"]),
    ("mlp.pt", [], ["torch.save (pickle) file", "--factory"]),
    ("cnn.safetensors", [], ["without an idlkit model header", "--factory"]),
    ("implicit.safetensors", ["--factory", "{d}/nets.py:mlp"], ["drop --factory"]),
    ("mlp.pt", ["--factory", "{d}/nets.py:mlp", "--check-tol", "0"], ["--check-tol"]),
    ("no_weights.pt", ["--factory", "{d}/nets.py:mlp"], ["not a state_dict", "model_state_dict"]),
    ("mlp.pt", ["--factory", "{d}/nets.py:mlp", "--input-shape", "8,x"], ["--input-shape"]),
]


@pytest.mark.parametrize("weights,extra,fragments", ERRORS,
                         ids=[f"{w} {' '.join(e)}".replace("{d}/", "") for w, e, _ in ERRORS])
def test_bad_network_input_is_one_error_line(saved, weights, extra, fragments, monkeypatch, capsys):
    extra = [a.replace("{d}", str(saved)) for a in extra]
    argv = _bench(saved, weights, *extra)
    if weights in ("whole.pt", "mlp.pt", "cnn.safetensors") and "--factory" not in extra:
        argv.remove("--input-shape")
        argv.remove("64")
    run_main(argv, monkeypatch, capsys).assert_one_error_line(*fragments)


def test_network_errors_are_the_same_for_analyze_and_attack(saved, tmp_path, monkeypatch, capsys):
    """One helper serves the three commands: the same refusal through analyze and attack, and the
    input shape checked against --data."""
    bad = ["--factory", f"{saved / 'nets.py'}:cnn"]
    for cmd in (["analyze", "--out", str(tmp_path / "r")], ["attack"]):
        run = run_main([cmd[0], str(saved / "mlp.pt"), *cmd[1:], "--data", "digits", *bad], monkeypatch,
                       capsys)
        run.assert_one_error_line("missing keys 3.weight")
    run = run_main(["attack", str(saved / "mlp.pt"), "--factory", f"{saved / 'nets.py'}:mlp", "--data",
                    "digits", "--input-shape", "1,7,7"], monkeypatch, capsys)
    run.assert_one_error_line("--input-shape 1,7,7 has 49 entries", "64")
    run = run_main(["attack", str(saved / "mlp.pt"), "--factory", f"{saved / 'nets.py'}:mlp", "--data",
                    "digits", "--input-shape", "1,8,8"], monkeypatch, capsys)
    run.assert_one_error_line("does not run on inputs of shape (1, 8, 8)")


def test_a_training_checkpoint_gives_the_same_model_as_its_state_dict(saved, monkeypatch, capsys):
    """{"model_state_dict": {"module.0.weight": ...}, "epoch": ...} is unwrapped: bench on it and on
    the plain state_dict print the same iteration counts and both conversions are exact."""
    outs = []
    for weights in ("mlp.pt", "mlp_checkpoint.pt"):
        run = run_main(_bench(saved, weights, "--factory", f"{saved / 'nets.py'}:mlp"), monkeypatch, capsys)
        assert run.code == 0, run.err
        assert _max_diff(run.out) == 0.0
        outs.append([ln for ln in run.out.splitlines() if "iterations" in ln])
    assert outs[0] == outs[1] and outs[0]
