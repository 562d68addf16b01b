"""Paper 000 §7.2.1: implicit model vs neural network on two synthetic classification sets.

Data (as the paper says): inputs ``u in R^5`` with i.i.d. entries uniform in [-1, 1]; the
label is the argmax of the 2 outputs of a random generating model whose parameters are
uniform in [-1, 1]; 20 training and 20 test points; 5 runs. The generating models:

- network: fully connected 5-5-5-2 with ReLU (weights and biases uniform in [-1, 1]);
- implicit: n = 10, ReLU, ``A, B, C, D`` uniform in [-1, 1] (no biases), then ``A`` projected
  onto the infinity-norm ball (App. H) of radius ``--gen-kappa`` = 0.99: the paper says
  "unit-sized", but with radius 1 the fixed-point iteration is only non-expansive, so
  existence and uniqueness of the state are not guaranteed; 0.99 keeps it well-posed.

Choices where the paper is silent (stated here and in the output):

- class balance: a random generator often labels almost every point the same class, so the
  generator (and its 40 points) is redrawn until the minority class holds at least
  ``--min-minority`` = 25% of the 40 points (0 disables); the majority-class baseline is
  reported next to the models.
- learners: "the same hyperparameters and initialization as the generating models", read as
  the same architecture and the same initial distribution: the implicit learner has n = 10,
  no biases, parameters uniform in [-1, 1] with ``A`` projected onto ``||A||_inf <= --kappa``
  (0.99), trained by stochastic projected gradient (idlkit ``Trainer``: Adam step, then the
  exact projection, App. G/H); the network is 5-5-5-2 ReLU, uniform [-1, 1] init, Adam.
- training: batch 5, ``--epochs`` 300 (1200 steps), cross-entropy, float64; for each model
  and run the lr is grid-searched in ``--lrs`` and the lr with the lowest final training loss
  is kept (the test set is not used to choose it).
- metric: "average best accuracy" = the highest test accuracy over the epochs (evaluated
  every ``--eval-every`` epochs), averaged over the runs; the final test accuracy is also
  reported.

Paper (Fig. 11/12): network-generated data: implicit 0.85, network 0.76; implicit-generated
data: implicit 0.85, network 0.74.

    .venv/bin/python experiments/synthetic_7_2_1.py [--seeds 5] [--epochs 300]

Writes experiments/results/synthetic_7_2_1.{json,md} (atomically) and prints the table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _compare import HERE, log, machine, mean_std, mlp, write_results

import idlkit
from idlkit import wellposed

PAPER = {("network", "implicit"): 0.85, ("network", "network"): 0.76,
         ("implicit", "implicit"): 0.85, ("implicit", "network"): 0.74}
P, Q, N_IMPLICIT, SIZES = 5, 2, 10, [5, 5, 5, 2]
DT = torch.float64


def uniform_(t: torch.Tensor, g: torch.Generator) -> None:
    with torch.no_grad():
        t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * 2 - 1)


def make_network(g: torch.Generator) -> torch.nn.Sequential:
    net = mlp(SIZES).to(DT)
    for prm in net.parameters():
        uniform_(prm, g)
    return net


def make_implicit(g: torch.Generator, kappa: float, tol: float = 1e-6) -> idlkit.ImplicitModel:
    model = idlkit.ImplicitModel(P, N_IMPLICIT, Q, "relu", bias=False, kappa=kappa, dtype=DT,
                                 tol=tol, max_iter=2000)
    for prm in (model.A, model.B, model.C, model.D):
        uniform_(prm, g)
    with torch.no_grad():
        model.A.copy_(wellposed.project_inf_ball(model.A, kappa))
    return model


def make_data(kind: str, seed: int, args: argparse.Namespace) -> tuple[dict, int]:
    """40 points labelled by a random generator of ``kind``; returns (data, generator draws)."""
    g = torch.Generator().manual_seed(1000 + seed)
    draws = 0
    while True:
        draws += 1
        if draws > 1000:
            raise RuntimeError("no generator with balanced enough classes in 1000 draws")
        U = torch.rand(2 * args.points, P, generator=g, dtype=DT) * 2 - 1
        gen = make_network(g) if kind == "network" else make_implicit(g, args.gen_kappa, tol=1e-10)
        with torch.no_grad():
            y = gen(U).argmax(1)
        frac = float(y.float().mean())
        if min(frac, 1 - frac) >= args.min_minority:
            break
    n = args.points
    return {"X": U[:n], "y": y[:n], "Xt": U[n:], "yt": y[n:]}, draws


def test_acc(model: torch.nn.Module, data: dict) -> float:
    with torch.no_grad():
        return float((model(data["Xt"]).argmax(1) == data["yt"]).double().mean())


def fit_implicit(data: dict, seed: int, lr: float, args: argparse.Namespace) -> dict:
    g = torch.Generator().manual_seed(seed)
    model = make_implicit(g, args.kappa)
    curve: list[tuple[int, float]] = []

    def on_epoch(rec: object) -> None:
        if rec.epoch % args.eval_every == 0 or rec.epoch == args.epochs:
            curve.append((rec.epoch, test_acc(model, data)))

    t0 = time.perf_counter()
    res = idlkit.train.Trainer(optimizer="adam", lr=lr, epochs=args.epochs, batch_size=args.batch,
                               seed=seed, log=on_epoch).fit(model, (data["X"], data["y"]))
    with torch.no_grad():
        out = model(data["X"])
        loss = float(F.cross_entropy(out, data["y"]))
        tr = float((out.argmax(1) == data["y"]).double().mean())
    return {"lr": lr, "train_loss": loss, "train_accuracy": tr, "curve": curve,
            "best_test_accuracy": max(a for _, a in curve), "final_test_accuracy": curve[-1][1],
            "seconds": time.perf_counter() - t0, "train_seconds": res.seconds}


def fit_network(data: dict, seed: int, lr: float, args: argparse.Namespace) -> dict:
    g = torch.Generator().manual_seed(seed)
    net = make_network(g)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)  # the Trainer's batch order
    X, y = data["X"], data["y"]
    curve: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        perm = torch.randperm(X.shape[0], generator=order)
        for i in range(0, X.shape[0], args.batch):
            idx = perm[i:i + args.batch]
            loss = F.cross_entropy(net(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            curve.append((epoch, test_acc(net, data)))
    with torch.no_grad():
        out = net(X)
        loss = float(F.cross_entropy(out, y))
        tr = float((out.argmax(1) == y).double().mean())
    return {"lr": lr, "train_loss": loss, "train_accuracy": tr, "curve": curve,
            "best_test_accuracy": max(a for _, a in curve), "final_test_accuracy": curve[-1][1],
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="runs (default 5)")
    ap.add_argument("--epochs", type=int, default=300, help="epochs of every fit (default 300)")
    ap.add_argument("--batch", type=int, default=5, help="mini-batch size (default 5)")
    ap.add_argument("--points", type=int, default=20, help="training points = test points (default 20)")
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2, 3e-2],
                    help="Adam lr grid of both models (lowest final training loss wins)")
    ap.add_argument("--kappa", type=float, default=0.99, help="learner's ||A||_inf bound (default 0.99)")
    ap.add_argument("--gen-kappa", type=float, default=0.99,
                    help="generator's ||A||_inf bound (default 0.99)")
    ap.add_argument("--min-minority", type=float, default=0.25,
                    help="redraw the generator until the minority class has this share (default 0.25)")
    ap.add_argument("--eval-every", type=int, default=5, help="test accuracy every N epochs (default 5)")
    ap.add_argument("--limit", type=int, default=None, help="alias of --points (quick checks)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--name", default="synthetic_7_2_1", help="stem of the result files")
    args = ap.parse_args(argv)
    if args.limit is not None:
        args.points = args.limit
    torch.set_num_threads(args.threads)
    res: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                 "machine": machine(), "runs": {}}
    for kind in ("network", "implicit"):
        res["runs"][kind] = []
        for seed in range(args.seeds):
            data, draws = make_data(kind, seed, args)
            maj = int(data["y"].float().mean() >= 0.5)
            run: dict = {"seed": seed, "generator_draws": draws,
                         "majority_baseline": float((data["yt"] == maj).double().mean()),
                         "test_class1_share": float(data["yt"].double().mean())}
            for learner, fit in (("implicit", fit_implicit), ("network", fit_network)):
                fits = [fit(data, seed, lr, args) for lr in args.lrs]
                fits = [f for f in fits if math.isfinite(f["train_loss"])]
                chosen = min(fits, key=lambda f: f["train_loss"])
                run[learner] = {**chosen, "grid": {str(f["lr"]): {k: f[k] for k in (
                    "train_loss", "train_accuracy", "best_test_accuracy", "final_test_accuracy")}
                    for f in fits}}
            res["runs"][kind].append(run)
            log(f"{kind}-generated, run {seed}: implicit best {run['implicit']['best_test_accuracy']:.2f} "
                f"(lr {run['implicit']['lr']:g}, train acc {run['implicit']['train_accuracy']:.2f}), "
                f"network best {run['network']['best_test_accuracy']:.2f} (lr {run['network']['lr']:g}, "
                f"train acc {run['network']['train_accuracy']:.2f}), majority {run['majority_baseline']:.2f}")
    md = markdown(res)
    write_results(args.out, args.name, res, md)
    print(md)
    return 0


def markdown(res: dict) -> str:
    cfg, m = res["config"], res["machine"]
    lines = [
        "# Paper 000 §7.2.1: implicit model vs network on synthetic data",
        "",
        f"{m['timestamp']}; {m['cpu']}, {cfg['threads']} torch thread(s). p = 5, q = 2, "
        f"{cfg['points']} train / {cfg['points']} test points, {cfg['seeds']} runs (mean ± std). "
        f"Generators: 5-5-5-2 ReLU network / implicit n = 10 (||A||_inf <= {cfg['gen_kappa']}), "
        f"parameters uniform in [-1, 1]; generator redrawn until the minority class has >= "
        f"{cfg['min_minority']:.0%} of the points. Learners: the same architectures and init "
        f"distribution (implicit: ||A||_inf <= {cfg['kappa']}, projected after every Adam step); "
        f"batch {cfg['batch']}, {cfg['epochs']} epochs, float64; Adam lr per run from {cfg['lrs']} "
        f"by the lowest final training loss.",
        "",
        "| data generated by | learner | best test acc (paper's metric) | final test acc | train acc "
        "| paper | fit time (s, per lr) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind, runs in res["runs"].items():
        for learner in ("implicit", "network"):
            rs = [r[learner] for r in runs]
            label = f"implicit n={N_IMPLICIT}" if learner == "implicit" else "network 5-5-5-2"
            lines.append(f"| {kind} | {label} | {mean_std([r['best_test_accuracy'] for r in rs], '.3f')} | "
                         f"{mean_std([r['final_test_accuracy'] for r in rs], '.3f')} | "
                         f"{mean_std([r['train_accuracy'] for r in rs], '.3f')} | "
                         f"{PAPER[(kind, learner)]} | {mean_std([r['seconds'] for r in rs], '.1f')} |")
        lines.append(f"| {kind} | majority class | "
                     f"{mean_std([r['majority_baseline'] for r in runs], '.3f')} | | | | |")
    lines += ["", "With 20 test points one point is 0.05 of accuracy; \"best\" is the maximum over the "
              f"training curve (evaluated every {cfg['eval_every']} epochs), an optimistic number as in "
              "the paper."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
