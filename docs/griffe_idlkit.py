"""A Griffe extension for the API reference: idlkit's docstrings as mkdocstrings should read them.

The docstrings are written for ``help()`` and doctest: ``>>>`` examples stand in the text and
cross-references use Sphinx roles (``:func:`~idlkit.robust.attack```). Markdown would read a
``>>>`` line as a nested quote and print the roles literally, so before the Google-style parser
runs (:meth:`IdlkitDocstrings.on_instance`, on every object Griffe loads):

* each doctest block outside an ``Examples:`` section (a ``>>>`` line, its ``...``
  continuations and its output, up to a blank line) is fenced as ``pycon`` code at its own
  indentation (Griffe reads the blocks of an ``Examples:`` section as code itself);
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


_EXAMPLES = re.compile(r"^(\s*)Examples?:\s*$")


def fence_doctests(text: str) -> str:
    """Wrap every doctest block of ``text`` in a fenced ``pycon`` block (indentation kept).

    Blocks under a Google ``Examples:`` section are left to Griffe's parser, which reads them
    as code itself (fencing them there would print the fence)."""
    lines, out, i, fenced = text.splitlines(), [], 0, False
    section: int | None = None  # indentation of the current Examples: header
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        indent_len = len(line) - len(stripped)
        if section is not None and stripped and indent_len <= section:
            section = None  # a line back at the header's level ends the section
        if (m := _EXAMPLES.match(line)) and not fenced:
            section = len(m.group(1))
        if stripped.startswith("```"):
            fenced = not fenced
        if fenced or section is not None or not stripped.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[:indent_len]
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
