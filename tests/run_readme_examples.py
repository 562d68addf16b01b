"""Run every ```python block of the README, in order, with the idlkit this interpreter imports.

Used by ``make package`` in a fresh virtual environment that has only the built wheel (and its
dependencies) installed, and by ``tests/test_packaging.py``: ``python tests/run_readme_examples.py
README.md [--expect-under DIR]`` fails unless ``idlkit`` is imported from under ``DIR``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def readme_examples(readme: Path) -> str:
    """Every ```python block of ``readme``, joined in order (they build on one another)."""
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), flags=re.S)
    if not blocks:
        raise SystemExit(f"{readme} has no python example")
    return "\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("readme", type=Path)
    ap.add_argument("--expect-under", type=Path, default=None,
                    help="fail unless idlkit is imported from under this folder")
    args = ap.parse_args(argv)
    import idlkit

    where = Path(idlkit.__file__).resolve()
    if args.expect_under is not None and not where.is_relative_to(args.expect_under.resolve()):
        raise SystemExit(f"idlkit imported from {where}, not from under {args.expect_under}")
    exec(compile(readme_examples(args.readme), str(args.readme), "exec"), {"__name__": "__readme__"})
    print(f"README examples ran (idlkit {idlkit.__version__} from {where.parent})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
