"""Paper 000 §7.2.3: GTSRB (32x32 gray, 43 classes), implicit model (n = 400) vs 1024-300-100-43.

Both are trained with batch 100 for the same number of epochs on the same batches; the
implicit model by stochastic projected gradient (idlkit ``Trainer``: Adam steps, then the
exact projection onto ``||A||_inf <= kappa``, App. G/H), the network by Adam with an lr
grid-searched on a 5000-sample hold-out of the training set. torchidl 0.0.4's
``ImplicitModel`` (n = 400, Adam 1e-3, its own init and solver) is trained on the same data
in the same batch order. Paper (best test accuracy, 5 runs): implicit 0.874, network 0.859.

Data: ``idlkit.datasets.load("gtsrb")``: 39209 train / 12630 test (the full official
training set; the paper's 34799 matches the common pickled variant that keeps 4410 of these
images aside as validation, so we train on ~13% more images),
gray 0.299R + 0.587G + 0.114B, 1024 features in [0, 1], then each image standardised to
mean 0 and std 1 (contrast normalisation, ``--norm image``; the same for every model: on a
5000-image validation hold-out it beat the global standardisation for the implicit model,
0.977 vs 0.969, and for the network, 0.970 vs 0.964).

idlkit settings (chosen on that hold-out, 10 epochs, final validation accuracy): Adam lr
1e-3, cosine schedule, kappa 0.99, solver tol 1e-4: 0.9770. Alternatives: lr 5e-4: 0.9710;
lr 3e-3: 0.9730; lr 2e-3 with kappa 0.95: 0.9768 (a tie). The random hold-out is
optimistic (GTSRB's training set holds ~30 near-identical frames per physical sign), so
validation accuracy is far above test accuracy.

    .venv/bin/python experiments/gtsrb_7_2_3.py                        # 10 epochs, 1 seed
    .venv/bin/python experiments/gtsrb_7_2_3.py --limit 2000 --epochs 1    # quick check

Writes experiments/results/gtsrb_7_2_3.{json,md} (atomically; ``--out``, ``--name``) and
prints the table.
"""

from __future__ import annotations

import argparse
import sys

from _compare import add_image_args, run_image

PAPER = {"idlkit": 0.874, "network": 0.859, "torchidl": "0.7985 (issue, 10 ep.)"}
SIZES = [1024, 300, 100, 43]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_image_args(ap, hidden=400, epochs=10, lr=1e-3, nn_lrs=[3e-4, 1e-3, 3e-3], kappa=0.99,
                   schedule="cosine", norm="image", tol=1e-4)
    ap.set_defaults(nn_search_val=5000)
    args = ap.parse_args(argv)
    return run_image("gtsrb", args, SIZES, PAPER, "Paper 000 §7.2.3: GTSRB, implicit model vs network")


if __name__ == "__main__":
    sys.exit(main())
