"""The command-line page: ``idlkit COMMAND --help`` of every command, captured at build time.

An mkdocs hook (``hooks:`` in ``mkdocs.yml``): ``on_page_markdown`` replaces :data:`MARKER` in
``reference/cli.md`` by one section per command with its help text, exactly as the terminal shows
it (80 columns, no colours), so the page cannot drift from the code.
``python docs/gen_cli.py`` prints it.
"""

from __future__ import annotations

import os
import re
import sys

MARKER = "<!-- cli-help -->"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _help(args: list[str]) -> str:
    from typer.testing import CliRunner

    from idlkit.cli import app

    env = dict(os.environ, COLUMNS="90", TERM="dumb", NO_COLOR="1", _TYPER_FORCE_DISABLE_TERMINAL="1")
    res = CliRunner().invoke(app, [*args, "--help"], env=env, color=False, prog_name="idlkit")
    if res.exit_code != 0:
        raise RuntimeError(f"idlkit {' '.join(args)} --help failed: {res.output}")
    lines = [line.rstrip() for line in _ANSI.sub("", res.output).splitlines()]
    return "\n".join(lines).strip("\n")


def commands() -> list[str]:
    """The command names, in the order ``idlkit --help`` lists them."""
    import typer.main

    from idlkit.cli import app

    return list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def render() -> str:
    parts = ["## idlkit\n", "```text\n" + _help([]) + "\n```\n"]
    for name in commands():
        parts += [f"## idlkit {name}\n", "```text\n" + _help([name]) + "\n```\n"]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: object, **kwargs: object) -> str:
    """mkdocs hook: fill the command-line page's marker with the help texts."""
    if getattr(getattr(page, "file", None), "src_uri", None) == "reference/cli.md":
        return markdown.replace(MARKER, render())
    return markdown


if __name__ == "__main__":
    sys.stdout.write(render())
