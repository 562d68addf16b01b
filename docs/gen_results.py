"""The results page: every paper-reproduction table of ``experiments/results/``, gathered at build time.

Each experiment writes its own table, our number next to the paper's, to
``experiments/results/NAME.md``. ``docs/results.md`` holds only the page's introduction and the
marker :data:`MARKER`; this file is an mkdocs hook (``hooks:`` in ``mkdocs.yml``) whose
``on_page_markdown`` replaces the marker by the tables, grouped by paper, their headings moved two
levels down and nothing else changed (the numbers are the experiment's, verbatim), so the page is
never stale after an experiment is re-run. The ``*_quick.md`` files are the seconds-long smoke runs
of the ``--quick`` modes and are left out.

``python docs/gen_results.py`` prints the gathered tables (a preview without mkdocs).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
MARKER = "<!-- results-tables -->"

#: (section title, file-name prefixes), in page order; a file goes to the first section it matches
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Paper 000: Implicit Deep Learning (El Ghaoui et al.)",
     ("regression_7_1", "synthetic_7_2_1", "mnist_7_2_2", "gtsrb_7_2_3", "attack_", "lstm_")),
    ("Paper 001: Fenchel training, robust training", ("fenchel_", "robust_training")),
    ("Paper 002: State-driven implicit modeling (SIM)", ("sim_",)),
    ("Thesis (paper 003): bounds, compression, extrapolation",
     ("bounds_", "lp_tightness", "compression", "extrapolation")),
    ("Paper 004: Lipschitz bounds", ("lipschitz_",)),
)



def _demote(text: str, levels: int = 2) -> str:
    """Move every markdown heading ``levels`` deeper, outside fenced code."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out)


def render() -> str:
    files = sorted(p for p in RESULTS.glob("*.md") if not p.stem.endswith("_quick"))
    placed: dict[str, list[Path]] = {title: [] for title, _ in SECTIONS}
    other: list[Path] = []
    for path in files:
        for title, prefixes in SECTIONS:
            if path.stem.startswith(prefixes):
                placed[title].append(path)
                break
        else:
            other.append(path)
    parts: list[str] = []
    groups = [*placed.items(), *([("Other experiments", other)] if other else [])]
    for title, paths in groups:
        if not paths:
            continue
        parts.append(f"## {title}\n")
        for path in paths:
            body = _demote(path.read_text(encoding="utf-8").strip())
            parts.append(f"*From `experiments/results/{path.name}`:*\n\n{body}\n")
    return "\n".join(parts).rstrip() + "\n"


def on_page_markdown(markdown: str, page: object, **kwargs: object) -> str:
    """mkdocs hook: fill the results page's marker with the tables."""
    if getattr(getattr(page, "file", None), "src_uri", None) == "results.md":
        return markdown.replace(MARKER, render())
    return markdown


if __name__ == "__main__":
    sys.stdout.write(render())
