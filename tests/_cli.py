"""Helpers of the command-line tests: run the console entry ``idlkit.cli.main`` in process."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Run:
    """What one ``idlkit ...`` call left: its exit status, stdout and stderr (ANSI codes removed)."""

    code: int
    out: str
    err: str

    def assert_one_error_line(self, *fragments: str) -> str:
        """Non-zero exit, exactly one stderr line, starting with ``error:``, naming ``fragments``,
        and no traceback anywhere; returns that line."""
        assert self.code not in (0, None), (self.code, self.out, self.err)
        assert "Traceback" not in self.out + self.err, self.err
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), self.err
        for f in fragments:
            assert f in lines[0], (f, lines[0])
        return lines[0]


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def run_main(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Run:
    """``idlkit argv...`` through the console entry point (``main`` reads ``sys.argv``)."""
    from idlkit.cli import main

    monkeypatch.setattr(sys, "argv", ["idlkit", *argv])
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    code: int | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return Run(code, plain(out), plain(err))


def report_values(page: str) -> dict[str, str]:
    """The ``data-key -> data-value`` pairs of a report page (idlkit.report)."""
    return dict(re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', page))
