"""Paper 000 §7.2.2: MNIST, implicit model (n = 100) against a 784-60-40-10 ReLU network.

Both are trained with batch 100 for the same number of epochs on the same batches; the
implicit model by stochastic projected gradient (idlkit ``Trainer``: Adam steps, then the
exact projection onto ``||A||_inf <= kappa``, App. G/H), the network by Adam with an lr
grid-searched on a 10000-sample hold-out of the training set. torchidl 0.0.4's
``ImplicitModel`` (n = 100, Adam 1e-3, its own init and solver) is trained on the same data
in the same batch order. Paper (best test accuracy, 5 runs): implicit 0.976, network 0.972.

Split: the standard 60000 train / 10000 test (the paper says 50000 / 10000; ``--val 10000``
holds 10000 training images out as a validation set instead). Inputs in [0, 1], then
standardised with the training set's global mean and std (``--norm global``, the same for
every model).

idlkit settings, chosen on a 10000-image validation hold-out (50000 train, 10 epochs,
final validation accuracy): Adam lr 2e-3, cosine schedule, kappa 0.95, solver tol 1e-4,
global standardisation: 0.9792. Alternatives: lr 1e-3 constant, tol 1e-6, [0, 1] inputs
(torchidl's setting): 0.9708; lr 3e-3 cosine, kappa 0.99: 0.9794 (a tie, 35% slower);
per-pixel standardisation: 0.9759.

    .venv/bin/python experiments/mnist_7_2_2.py                       # 10 epochs, 1 seed
    .venv/bin/python experiments/mnist_7_2_2.py --seeds 5 --skip-torchidl
    .venv/bin/python experiments/mnist_7_2_2.py --limit 2000 --epochs 1   # quick check

Writes experiments/results/mnist_7_2_2.{json,md} (atomically; ``--out``, ``--name``) and
prints the table.
"""

from __future__ import annotations

import argparse
import sys

from _compare import add_image_args, run_image

PAPER = {"idlkit": 0.976, "network": 0.972, "torchidl": "0.9763 (issue, 10 ep.)"}
SIZES = [784, 60, 40, 10]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_image_args(ap, hidden=100, epochs=10, lr=2e-3, nn_lrs=[3e-4, 1e-3, 3e-3], kappa=0.95,
                   schedule="cosine", norm="global", tol=1e-4)
    args = ap.parse_args(argv)
    return run_image("mnist", args, SIZES, PAPER, "Paper 000 §7.2.2: MNIST, implicit model vs network")


if __name__ == "__main__":
    sys.exit(main())
