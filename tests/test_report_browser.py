"""The analysis report in a real headless browser (Chromium): the page loads, every image
decodes and is visible, no console messages, and a screenshot is written.

Skips with the install command when Chromium is absent (``make test`` / ``.ci/run`` install it).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

import idlkit as idl  # noqa: E402
from idlkit.report import write_report  # noqa: E402

# Runs in the page after load and records, per <img>, its src, decoded width and visibility.
_PROBE = ('<script>window.addEventListener("load",()=>{const r=[...document.images].map(i=>'
          '[i.getAttribute("src"),i.naturalWidth,i.getBoundingClientRect().width>0&&'
          'getComputedStyle(i).visibility!=="hidden"]);'
          'document.body.setAttribute("data-imgcheck",JSON.stringify(r));});</script>')


def _chromium() -> str:
    for cand in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if cand and Path(cand).exists():
            return cand
    pytest.skip("Chromium not installed: apt-get install -y chromium (make test / .ci/run installs it)")


def _run(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _check(exe: str, page: Path, profile: Path) -> tuple[list, list[str]]:
    """Load ``page`` with the probe; return the probe's image list and the console lines."""
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    res = _run(exe, profile, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r'data-imgcheck="([^"]*)"', res.stdout)
    assert m, f"the page did not finish loading: {res.stdout[:500]}"
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]
    return json.loads(html.unescape(m.group(1))), console


def test_report_in_headless_chromium(tmp_path):
    exe = _chromium()
    ds = idl.datasets.load("digits")
    torch.manual_seed(0)
    model = idl.ImplicitModel(64, 12, 10)
    res = write_report(model, tmp_path / "report", data=(torch.tensor(ds.x_test), torch.tensor(ds.y_test)),
                       samples=40, attack_samples=3)
    images, console = _check(exe, res.path, tmp_path / "profile")
    assert sorted(src for src, _, _ in images) == sorted(f.name for f in res.figures)
    assert all(width > 0 and visible for _, width, visible in images), images
    assert console == []
    shot = tmp_path / "screenshot.png"
    out = _run(exe, tmp_path / "profile", "--window-size=1200,4000", f"--screenshot={shot}",
               res.path.as_uri())
    assert out.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, out.stderr[-2000:]
    from matplotlib.image import imread

    assert imread(shot).shape[:2] == (4000, 1200)


def test_the_browser_check_catches_a_broken_page(tmp_path):
    """Negative control: a missing image and a console message are both detected."""
    exe = _chromium()
    page = tmp_path / "index.html"
    (tmp_path / "ok.png").write_bytes(_tiny_png())
    page.write_text('<!DOCTYPE html><html><body><img src="ok.png"><img src="missing.png">'
                    '<script>console.error("boom")</script></body></html>')
    images, console = _check(exe, page, tmp_path / "profile")
    assert [(s, w > 0) for s, w, _ in images] == [("ok.png", True), ("missing.png", False)]
    assert any("boom" in ln for ln in console)


def _tiny_png() -> bytes:
    import io

    from matplotlib.figure import Figure

    buf = io.BytesIO()
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1])
    fig.savefig(buf, format="png")
    return buf.getvalue()
