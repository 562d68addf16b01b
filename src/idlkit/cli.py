"""The ``idlkit`` command (typer). Nothing imports this module."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="idlkit: implicit deep learning.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def _main() -> None:
    """idlkit command line."""


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo/model.safetensors"), help="where to save"),
         hidden: int = typer.Option(100, help="state size n"),
         epochs: int = typer.Option(15, help="training epochs"),
         kappa: float = typer.Option(0.95, help="bound on ||A||_inf"),
         seed: int = typer.Option(0, help="random seed")) -> None:
    """Train a small implicit model on scikit-learn's digits, report and save it."""
    from .demo import run_demo

    run_demo(out=out, hidden=hidden, epochs=epochs, kappa=kappa, seed=seed)


if __name__ == "__main__":
    app()
