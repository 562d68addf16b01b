"""The HTML analysis report (idlkit.report.write_report) and ``idlkit analyze``."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

import idlkit as idl  # noqa: E402
from idlkit.errors import ConfigurationError, InputError, ShapeError  # noqa: E402
from idlkit.io import CheckpointError  # noqa: E402
from idlkit.report import SECTIONS, write_report  # noqa: E402
from idlkit.train import Trainer  # noqa: E402


def _values(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', page))


@pytest.fixture(scope="module")
def digits():
    ds = idl.datasets.load("digits")
    return (torch.tensor(ds.x_train), torch.tensor(ds.y_train), torch.tensor(ds.x_test),
            torch.tensor(ds.y_test))


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    U, Y, Ut, Yt = digits
    torch.manual_seed(0)
    model = idl.ImplicitModel(64, 16, 10)
    hist = Trainer(epochs=2, lr=3e-3, seed=0).fit(model, (U[:400], Y[:400]), (U[400:600], Y[400:600]))
    out = tmp_path_factory.mktemp("report")
    res = write_report(model, out, data=(Ut, Yt), history=hist, samples=100)
    return model, hist, res, (Ut, Yt)


def test_every_section_present_and_every_png_decodes(trained):
    from matplotlib.image import imread

    _, hist, res, _ = trained
    assert res.sections == {s: "ok" for s in SECTIONS}
    page = res.path.read_text()
    assert res.path.name == "index.html" and page.startswith("<!DOCTYPE html>")
    for s in SECTIONS:
        assert f'<section id="{s}">' in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == sorted(f.name for f in res.figures) and len(srcs) == len(SECTIONS) - 1
    for src in srcs:
        assert "/" not in src  # relative, next to index.html
        img = imread(res.path.parent / src)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert float(img[..., :3].std()) > 0.01  # not a blank picture
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    assert not list(res.path.parent.glob("*.tmp"))
    v = _values(page)
    assert res.values == v  # the result carries what the page shows
    _, _, _, (Ut, Yt) = trained
    with torch.no_grad():
        acc = (trained[0](Ut.to(trained[0].A.dtype)).argmax(1) == Yt).double().mean().item()
    assert float(v["accuracy"]) == pytest.approx(acc, abs=1e-12)
    assert int(v["train.epochs"]) == len(hist.history)
    assert float(v["train.last_loss"]) == hist.history[-1].train_loss


def test_certificate_table_equals_model_certificate_and_dense_reference(trained):
    model, _, res, _ = trained
    v = _values(res.path.read_text())
    cert = model.certificate()
    for key in ("inf_norm", "pf", "mu_inf", "gamma_inf"):
        assert float(v[key]) == getattr(cert, key)
    for k, m in cert.margins.items():
        assert float(v[f"margin.{k}"]) == m
    A = model.A.detach().double().numpy()  # independent dense references
    assert float(v["inf_norm"]) == pytest.approx(np.abs(A).sum(1).max(), rel=1e-12)
    assert float(v["pf"]) == pytest.approx(max(abs(np.linalg.eigvals(np.abs(A)))), rel=1e-9)
    mu = max(A[i, i] + np.abs(np.delete(A[i], i)).sum() for i in range(A.shape[0]))
    assert float(v["mu_inf"]) == pytest.approx(mu, rel=1e-12)


def test_iteration_and_sensitivity_numbers(trained):
    model, _, res, (Ut, _) = trained
    v = _values(res.path.read_text())
    assert model.settings.per_sample is None  # the report restored the model's settings
    model.set_solver(per_sample=True)
    try:
        with torch.no_grad():
            model(Ut[:100].to(model.A.dtype))
        it = model.last_solve.per_sample_iterations.numpy()
    finally:
        model.set_solver(per_sample=None)
    assert (int(v["iter.min"]), float(v["iter.mean"]), int(v["iter.max"])) == (
        it.min(), pytest.approx(it.mean()), it.max())
    A, B, C, D = (getattr(model, m).detach().double().numpy() for m in "ABCD")
    S = np.abs(C) @ np.linalg.solve(np.eye(A.shape[0]) - np.abs(A), np.abs(B)) + np.abs(D)
    assert float(v["sens.max"]) == pytest.approx(S.max(), rel=1e-10)


def test_lipschitz_certificates_bound_the_empirical_and_random_pairs(trained):
    model, _, res, (Ut, _) = trained
    v = _values(res.path.read_text())
    best, emp = float(v["lip.best"]), float(v["lip.empirical"])
    assert 0 < emp <= best * (1 + 1e-6)
    assert best == min(float(v[k]) for k in ("lip.inf", "lip.mu", "lip.sensitivity")
                       if math.isfinite(float(v[k])))
    g = torch.Generator().manual_seed(1)  # try to break the certified bound by sampling
    u = Ut[:200].to(model.A.dtype)
    w = u + 0.05 * torch.randn(u.shape, generator=g, dtype=u.dtype)
    with torch.no_grad():
        ratio = (model(u) - model(w)).abs().amax(1) / (u - w).abs().amax(1)
    assert float(ratio.max()) <= best * (1 + 1e-6)


def test_attack_section_reports_the_library_attack(trained):
    model, _, res, (Ut, Yt) = trained
    v = _values(res.path.read_text())
    r = idl.robust.attack(model, Ut[:5].to(model.A.dtype), Yt[:5], idl.robust.Budget(
        k=0.05, clip=(float(Ut.min()), float(Ut.max()))), method="sensitivity")
    with torch.no_grad():
        flips = int((model(r.u_adv).argmax(1) != model(Ut[:5].to(model.A.dtype)).argmax(1)).sum())
    assert v["attack.success"] == f"{flips} of 5"
    assert int(r.n_perturbed.max()) <= math.ceil(0.05 * 64)


def test_sections_without_inputs_say_why(tmp_path):
    model = idl.ImplicitModel(5, 7, 3)  # inputs not an image, no data, no history
    res = write_report(model, tmp_path)
    page = res.path.read_text()
    for s in ("iterations", "attacks", "training"):
        assert res.sections[s] != "ok"
        assert html_escape(res.sections[s]) in page
    assert res.sections["sensitivity"] == "ok" and res.sections["lipschitz"] == "ok"
    assert "not square images" in page
    U = torch.rand(20, 5)
    res = write_report(model, tmp_path, data=(U, torch.randint(0, 3, (20,))),
                       sections=("attacks", "iterations"))
    assert "not a square image" in res.sections["attacks"] and res.sections["iterations"] == "ok"


def html_escape(s: str) -> str:
    import html

    return html.escape(s)


def test_typed_errors(tmp_path):
    model = idl.ImplicitModel(4, 6, 2)
    with pytest.raises(ShapeError, match=r"\(N, 4\)"):
        write_report(model, tmp_path, data=(torch.rand(3, 5), torch.zeros(3)))
    with pytest.raises(ShapeError, match="targets"):
        write_report(model, tmp_path, data=(torch.rand(3, 4), torch.zeros(2)))
    with pytest.raises(InputError, match="pair"):
        write_report(model, tmp_path, data=torch.rand(3, 4))
    with pytest.raises(ConfigurationError, match="sections"):
        write_report(model, tmp_path, sections=("certificate", "nope"))
    with pytest.raises(InputError, match="from_torch"):
        write_report(torch.nn.Linear(4, 2), tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        write_report(model, tmp_path / "f")
    with pytest.raises(ConfigurationError):
        write_report(model, tmp_path, samples=0)
    assert not (tmp_path / "index.html").exists()


def test_failed_write_leaves_no_partial_page(tmp_path, monkeypatch):
    import os

    import idlkit.io as iomod

    model = idl.ImplicitModel(4, 6, 2)
    write_report(model, tmp_path, sections=("certificate",))
    before = (tmp_path / "index.html").read_bytes()
    real = os.replace

    def failing(src, dst):
        if str(dst).endswith("index.html"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(iomod.os, "replace", failing)
    with pytest.raises(CheckpointError, match="intact"):
        write_report(model, tmp_path, sections=("certificate", "sparsity"))
    assert (tmp_path / "index.html").read_bytes() == before  # the old page, whole
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_analyze_writes_the_report(tmp_path, monkeypatch):
    pytest.importorskip("typer")
    from typer.testing import CliRunner

    from idlkit.cli import app

    runner = CliRunner()
    torch.manual_seed(0)
    model = idl.ImplicitModel(64, 12, 10)
    path = idl.save(model, tmp_path / "m.safetensors")
    out = tmp_path / "rep"
    res = runner.invoke(app, ["analyze", str(path), "--data", "digits", "--out", str(out),
                              "--samples", "40", "--attack-samples", "3", "--attacks", "sensitivity,lp",
                              "--attack-k", "0.1", "--bound-epsilon", "0.05"])
    assert res.exit_code == 0, res.output
    assert "report written to" in res.output and (out / "index.html").is_file()
    page = (out / "index.html").read_text()
    assert len(re.findall(r"<img ", page)) == len(SECTIONS) - 1  # not certificate, not training; +lp
    assert "attacks_lp.png" in page and _values(page)["attack.k"] == "0.1"
    assert "radius 0.05" in page
    assert "section training not shown" in res.output
    assert float(_values(page)["inf_norm"]) == idl.load(path).certificate().inf_norm

    help_text = re.sub(r"\x1b\[[0-9;]*m", "", runner.invoke(app, ["analyze", "--help"]).output)
    for opt in ("--data", "--out", "--samples", "--attack-samples", "--seed", "MODEL"):
        assert opt in help_text
    bad = runner.invoke(app, ["analyze", str(tmp_path / "none.safetensors")])
    assert bad.exit_code == 2
    bad = runner.invoke(app, ["analyze", str(path), "--samples", "0"])
    assert bad.exit_code == 2
    small = idl.save(idl.ImplicitModel(5, 4, 2), tmp_path / "s.safetensors")
    bad = runner.invoke(app, ["analyze", str(small), "--data", "digits", "--out", str(out)])
    assert bad.exit_code == 2 and "64 features" in bad.output


def test_ill_posed_model_gives_a_page_that_says_why(tmp_path):
    torch.manual_seed(0)
    A = 1.5 * torch.eye(6, dtype=torch.float64) + 0.1 * torch.rand(6, 6, dtype=torch.float64)
    model = idl.ImplicitModel.from_matrices(A, torch.rand(6, 4, dtype=torch.float64),
                                            torch.rand(2, 6, dtype=torch.float64),
                                            torch.rand(2, 4, dtype=torch.float64), wellposedness=None)
    assert model.certificate().pf > 1  # the independent fact the page must report
    res = write_report(model, tmp_path, data=(torch.rand(10, 4), torch.randint(0, 2, (10,))))
    page = res.path.read_text()
    assert res.sections["certificate"] == "ok" and res.sections["sparsity"] == "ok"
    assert _values(page)["wellposed"] == "False"
    assert "ConvergenceError" in res.sections["iterations"]
    assert "lambda_pf" in res.sections["sensitivity"]
    for s in ("iterations", "sensitivity", "attacks", "lipschitz"):
        assert res.sections[s] != "ok" and html_escape(res.sections[s]) in page


# --- the bounds, compression and caller sections, several histories, several attacks ---------


def test_bounds_section_contains_independently_sampled_outputs(trained, tmp_path):
    model, _, _, (Ut, Yt) = trained
    res = write_report(model, tmp_path, data=(Ut, Yt), sections=("bounds",), attack_samples=3,
                       bound_epsilon=0.03, seed=5)
    v = _values(res.path.read_text())
    assert res.sections["bounds"] == "ok" and int(v["bounds.violations"]) == 0
    u = Ut[:3].double()
    for method in ("box", "crown"):
        ob = idl.robust.output_bounds(model, u, 0.03, method=method, clip=(0.0, 1.0))
        lo, hi = torch.as_tensor(ob.lower), torch.as_tensor(ob.upper)
        assert float(v[f"bounds.{method}.width"]) == pytest.approx(float((hi - lo).mean()), rel=1e-9)
        g = torch.Generator().manual_seed(11)  # try to leave the certified interval
        w = (u + 0.03 * (2 * torch.rand((4000, *u.shape), generator=g, dtype=u.dtype) - 1)).clamp(0, 1)
        with torch.no_grad():
            y = model(w.reshape(-1, 64).to(model.A.dtype)).double().reshape(4000, 3, -1)
        assert bool((y >= lo - 1e-5).all() and (y <= hi + 1e-5).all())
    # the sampled width is a lower bound of every certified one
    assert float(v["bounds.empirical.width"]) <= float(v["bounds.crown.width"]) <= float(
        v["bounds.box.width"]) * (1 + 1e-9)


def test_compression_section_accuracies_and_zero_fractions(trained, tmp_path):
    from idlkit.report import PRUNE_LEVELS

    model, _, _, (Ut, Yt) = trained
    res = write_report(model, tmp_path, data=(Ut, Yt), sections=("compression",), samples=150)
    v = _values(res.path.read_text())
    for level in PRUNE_LEVELS:
        pruned = model if level == 0 else idl.compress.magnitude_prune(model, level)[0]
        W = torch.cat([getattr(pruned, m).detach().flatten() for m in "ABCD"])
        assert float((W == 0).double().mean()) >= level - 0.01  # the asked fraction of zeros
        with torch.no_grad():
            acc = float((pruned(Ut[:150]).argmax(1) == Yt[:150]).double().mean())
        assert float(v[f"prune.{level:g}"]) == acc
    with torch.no_grad():
        assert float(v["prune.0"]) == float((model(Ut[:150]).argmax(1) == Yt[:150]).double().mean())
    assert v["prune_states.n"].endswith(f"of {model.A.shape[0]}")


def test_several_histories_and_the_lp_attack(trained, tmp_path):
    model, hist, _, (Ut, Yt) = trained
    res = write_report(model, tmp_path, data=(Ut, Yt), history={"first": hist, "second": hist.history[:1]},
                       sections=("training", "attacks"), attack_samples=2,
                       attack_methods=("sensitivity", "lp"))
    page = res.path.read_text()
    v = _values(page)
    assert int(v["train.first.epochs"]) == len(hist.history) and int(v["train.second.epochs"]) == 1
    lo, hi = float(Ut.min()), float(Ut.max())
    r = idl.robust.attack(model, Ut[:2], Yt[:2], idl.robust.Budget(k=0.05, epsilon=hi - lo,
                                                                   clip=(lo, hi)), method="lp")
    with torch.no_grad():
        flips = int((model(r.u_adv).argmax(1) != model(Ut[:2]).argmax(1)).sum())
    assert v["attack.lp.success"] == f"{flips} of 2"
    assert {f.name for f in res.figures} == {"training.png", "attacks.png", "attacks_lp.png"}
    assert page.count("<figcaption>") == 2
    with pytest.raises(ConfigurationError, match="attack_methods"):
        write_report(model, tmp_path, data=(Ut, Yt), attack_methods=("nope",))
    with pytest.raises(InputError, match="history"):
        write_report(model, tmp_path, history={"a": [1, 2]})


def test_caller_sections_first_or_last_and_their_checks(tmp_path):
    from idlkit.report import ReportSection

    model = idl.ImplicitModel(4, 6, 2)
    fig_png = _tiny_png()
    res = write_report(model, tmp_path, sections=("certificate",), extra=(
        ReportSection("intro", "Intro", "<p>hello</p>", first=True),
        ReportSection("more", "More", "<p>bye</p>", {"more_1.png": fig_png})))
    page = res.path.read_text()
    assert page.index('id="intro"') < page.index('id="certificate"') < page.index('id="more"')
    assert (tmp_path / "more_1.png").read_bytes() == fig_png
    assert res.sections["intro"] == "ok" and res.sections["more"] == "ok"
    for bad in (ReportSection("certificate", "x", ""), ReportSection("Bad Id", "x", ""),
                ReportSection("ok", "x", "", {"spy.png": fig_png}),
                ReportSection("ok", "x", "", {"../up.png": fig_png})):
        with pytest.raises(ConfigurationError):
            write_report(model, tmp_path, sections=("certificate",), extra=(bad,))
    with pytest.raises(InputError):
        write_report(model, tmp_path, extra=("not a section",))


def _tiny_png() -> bytes:
    import io as _io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1], [1, 0])
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
