"""``idlkit demo`` (``make demo``), shrunk: the whole pipeline runs, saves, certifies and reports.

Each figure the demo reports is recomputed here by an independent route: the saved files reloaded,
accuracies from the predictions, the conversion against the network, the certificates against
dense numpy, nonzeros counted from the matrices, the Lipschitz certificate tried by sampling.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

import idlkit  # noqa: E402
from idlkit.demo import DemoResult, run_demo  # noqa: E402
from idlkit.report import SECTIONS  # noqa: E402


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    res = run_demo(root / "runs", root / "report", hidden=16, epochs=2, attack_samples=2,
                   sim_samples=150, log=False)
    assert torch.get_num_threads() == threads  # the demo's one-thread setting is restored
    assert isinstance(res, DemoResult)
    return res, root


def _values(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', page))


def test_every_model_is_saved_reloads_and_scores_as_reported(demo):
    res, root = demo
    ds = idlkit.datasets.load("digits", as_torch=True)
    names = [m.name for m in res.models]
    assert names[:5] == ["implicit (trained)", "network 64-64-32-10", "network, converted",
                         "SIM (l1) from the network", "SIM, states pruned (staged)"]
    for m in res.models:
        assert 0.0 <= m.accuracy <= 1.0
        if m.path is None:
            continue
        model = idlkit.load(m.path)
        with torch.no_grad():
            acc = float((model(ds.x_test).argmax(1) == ds.y_test).double().mean())
        assert acc == pytest.approx(m.accuracy, abs=1e-12)
        A = model.A.to_dense() if model.A.layout != torch.strided else model.A
        nnz = sum(int((t.to_dense() if t.layout != torch.strided else t).ne(0).sum())
                  for t in (A, model.B, model.C, model.D))
        nnz += sum(int(t.ne(0).sum()) for t in (getattr(model, "b", None), getattr(model, "d", None))
                   if isinstance(t, torch.Tensor))
        assert nnz == m.nonzeros, m.name
    assert res.models[0].accuracy > 0.5  # 10 classes: chance is 0.1
    assert res.models[2].accuracy == res.models[1].accuracy  # the exact implicit form
    assert res.models[4].accuracy == res.models[3].accuracy  # prune_states is exact
    assert res.conversion_error < 1e-5


def test_certificates_file_matches_dense_numpy(demo):
    res, _ = demo
    certs = json.loads(res.certificates.read_text())
    assert set(certs) == {"implicit (trained)", "network, converted", "SIM (l1)"}
    for name, m in zip(["implicit (trained)", "network, converted", "SIM (l1)"],
                       [res.models[0], res.models[2], res.models[3]], strict=True):
        A = idlkit.load(m.path).A
        A = (A.to_dense() if A.layout != torch.strided else A).detach().double().numpy()
        c = certs[name]
        assert c["inf_norm"] == pytest.approx(np.abs(A).sum(1).max(), rel=1e-12, abs=1e-15)
        assert c["lambda_pf"] == pytest.approx(max(abs(np.linalg.eigvals(np.abs(A)))), abs=1e-7)
        assert c["wellposed"] is True
        assert tuple(sorted(k for k, v in c["holds"].items() if v)) == m.certified
    assert certs["implicit (trained)"]["inf_norm"] <= 0.95 + 1e-9  # the training projection
    assert certs["network, converted"]["lambda_pf"] == 0.0  # strictly triangular: nilpotent


def test_report_has_every_section_and_its_numbers(demo):
    from matplotlib.image import imread

    res, root = demo
    page = res.report.read_text()
    for s in (*SECTIONS, "pipeline", "lipschitz-models", "accuracy-sparsity"):
        assert f'<section id="{s}">' in page, s
    assert 'class="skip"' not in page  # every section applies to the demo's models
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert {"training.png", "iterations.png", "spy.png", "sensitivity.png", "lipschitz.png",
            "bounds.png", "attacks.png", "attacks_lp.png", "compression.png",
            "models_lipschitz.png", "pipeline_sparsity.png"} <= set(srcs)
    for src in srcs:
        img = imread(res.report.parent / src)
        assert img.ndim == 3 and float(img[..., :3].std()) > 0.01
    v = _values(page)
    for i, m in enumerate(res.models):
        assert float(v[f"pipeline.{i}.accuracy"]) == m.accuracy
    assert int(v["bounds.violations"]) == 0
    assert v["attack.success"] == f"{res.attacks['sensitivity']} of 2"
    assert v["attack.lp.success"] == f"{res.attacks['lp']} of 2"
    assert int(v["train.implicit.epochs"]) == 2 and int(v["train.network.epochs"]) == 2
    assert page.index('id="pipeline"') < page.index('id="certificate"')  # the summary first


def test_lipschitz_certificate_survives_sampling(demo):
    res, _ = demo
    model = idlkit.load(res.models[0].path)
    ds = idlkit.datasets.load("digits", as_torch=True)
    g = torch.Generator().manual_seed(3)
    u = ds.x_test[:300].double()
    w = u + 0.05 * torch.randn(u.shape, generator=g, dtype=u.dtype)
    model = model.double()
    with torch.no_grad():
        ratio = (model(u) - model(w)).abs().amax(1) / (u - w).abs().amax(1)
    assert float(ratio.max()) <= res.lipschitz["certified"] * (1 + 1e-6)
    assert 0 < res.lipschitz["empirical"] <= res.lipschitz["certified"] * (1 + 1e-6)
    assert set(res.seconds) >= {"train the implicit model", "SIM fit (paper 002)", "total"}


def test_cli_demo_refuses_bad_options_before_work(tmp_path, capsys, monkeypatch):
    from idlkit import cli

    f = tmp_path / "file"
    f.write_text("x")
    for argv in (["demo", "--kappa", "1.5"], ["demo", "--out", str(f)],
                 ["demo", "--report", str(f / "sub")], ["demo", "--sim-samples", "3"]):
        monkeypatch.setattr("sys.argv", ["idlkit", *argv])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_printed_summary_keeps_the_certificate_text(demo, capsys):
    """The summary prints the certificate verbatim: its '[x] inf' lines are not rich markup."""
    from types import SimpleNamespace

    from idlkit.demo import _print_summary

    res, _ = demo
    model = idlkit.load(res.models[0].path)
    cert = model.certificate()
    _print_summary(res, SimpleNamespace(path=res.report, figures=()), torch.zeros(10, 64), cert)
    out = capsys.readouterr().out
    assert "[x] inf" in out and str(cert).splitlines()[1].strip() in out
    for m in res.models:  # the table wraps long names: each accuracy is on its row
        assert f"{m.accuracy:.4f}" in out
