"""A Griffe extension for the API reference: idlkit's docstrings as mkdocstrings should read them.

The docstrings are written for ``help()`` and doctest: ``>>>`` examples stand in the text and
cross-references use Sphinx roles (``:func:`~idlkit.robust.attack```). Markdown would read a
``>>>`` line as a nested quote and print the roles literally, so before the Google-style parser
runs (:meth:`IdlkitDocstrings.on_instance`, on every object Griffe loads):

* each doctest block (a ``>>>`` line, its ``...`` continuations and its output, up to a blank
  line) is fenced as ``pycon`` code at its own indentation;
* each Sphinx role becomes inline code, ``~`` keeping the last dotted part as Sphinx does.

Only the rendered text changes; the docstrings and the doctests run by ``make test`` do not.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|ref|term):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    target = match.group(2).strip()
    if match.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def fence_doctests(text: str) -> str:
    """Wrap every doctest block of ``text`` in a fenced ``pycon`` block (indentation kept)."""
    lines, out, i, fenced = text.splitlines(), [], 0, False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        stripped = line.lstrip()
        if fenced or not stripped.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(stripped)]
        block = []
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            block.append(lines[i][len(indent):])
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}```pycon", *(f"{indent}{b}" for b in block), f"{indent}```"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def rewrite(text: str) -> str:
    """Both rewrites of the module docstring, in order."""
    return _ROLE.sub(_role, fence_doctests(text))


class IdlkitDocstrings(Extension):
    """Fence doctest blocks and turn Sphinx roles into code, on every loaded object."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        doc = getattr(obj, "docstring", None)
        if doc is not None and doc.value:
            doc.value = rewrite(doc.value)
