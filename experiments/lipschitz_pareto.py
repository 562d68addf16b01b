"""Test error vs certified l_inf Lipschitz bound on MNIST (paper 004, "Numerical Experiments"):
the ||A||_inf model (IDL), the mu_inf model and a monotone-operator (MON) baseline, each trained
with the Lipschitz penalty ``lambda Lip_{u -> y}``; the inversion attack; empirical lower bounds.

Models (n = 100 states, ReLU, cross entropy, Adam):

* **inf** (IDL, paper 000): ``ImplicitModel(wellposedness="inf", kappa=gamma)``, projected onto
  ``||A||_inf <= gamma`` after every step; penalty and certificate eq. 4.8,
  ``||B|| ||C|| / (1 - ||A||)`` (:func:`idlkit.train.penalties.lipschitz_bound`).
* **mu** (paper 004): ``A = T - diag(|T| 1) + gamma I`` (:class:`idlkit.wellposed.
  MuInfParametrization`, so ``mu_inf(A) <= gamma`` for every ``T``), solved by the averaged
  iteration; penalty and certificate ``||B|| ||C|| / (1 - mu_inf(A)_+)``
  (:func:`idlkit.train.penalties.mu_lipschitz_bound`).
* **mon** (Winston & Kolter 2020, :class:`idlkit.baselines.MON`): ``W = (1 - m) I - P^T P + Q - Q^T``,
  Peaceman-Rachford splitting; certificate ``sqrt(r) ||U||_2 ||C||_2 / m`` with ``r = 784`` (paper
  004: "Lip_inf <= sqrt(r) Lip_2 with r size of the input"); penalty the same quantity.

As in paper 004 the implicit models have no direct term: ``D = 0`` (frozen), ``y = C x + d``.
Pixels stay in ``[0, 1]`` (no normalisation), the domain of the inversion attack
``u + eps sign(1/2 - u)`` (clipped to ``[0, 1]``). Every certificate is set next to the empirical
lower bound of :func:`idlkit.robust.empirical_lipschitz` (float64 copies of the trained models,
gradient ascent over pairs started at test images), in l_inf and in l2; the l2 one is comparable
with LBEN's "empirical Lipschitz" (Revay, Wang & Manchester 2020), whose MNIST numbers are quoted.

    cd experiments && ../.venv/bin/python lipschitz_pareto.py            # MNIST (~20 min, 1 core)
    cd experiments && ../.venv/bin/python lipschitz_pareto.py --quick    # digits, a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _compare import HERE, atomic_write, log, machine, write_results
from torch import nn
from torch.nn.utils import parametrize

import idlkit as idl
from idlkit import wellposed as wp
from idlkit.baselines import MON
from idlkit.robust import Budget, empirical_lipschitz, inversion_attack, lipschitz_bounds
from idlkit.train import penalties as pen

KINDS = ("inf", "mu", "mon")
LABELS = {"inf": "IDL (‖A‖∞ ≤ γ)", "mu": "μ∞ model (paper 004)", "mon": "MON (l2)"}
MNIST_STD = 0.3081  # the usual MNIST pixel standardisation (torchvision examples, monotone_op_net)
LBEN = [  # Revay, Wang & Manchester 2020, MNIST, width 80 (the issue's anchor; l2 empirical Lipschitz)
    {"model": "LBEN, gamma = 1", "test_error_pct": 2.36, "empirical_lipschitz_l2": 0.86},
    {"model": "LBEN unconstrained", "test_error_pct": 2.08, "empirical_lipschitz_l2": 239.0},
]
PAPER_CLAIMS = [  # paper 004, "Test error vs Lipschitz constant on MNIST" (slides; no table printed)
    "lambda = 0: two orders of magnitude (certified bound) below IDL and below MON",
    "lambda = 1e-3: three orders of magnitude below IDL and one below MON",
    "lambda = 1e-2: four orders of magnitude below IDL and two below MON",
    "inversion attack: at lambda = 0 more robust than IDL and MON; lambda > 0 more robust at "
    "sizable eps, some clean accuracy lost",
]


# ----------------------------------------------------------------------------- models


def build(kind: str, p: int, q: int, args: argparse.Namespace) -> nn.Module:
    if kind == "mon":
        return MON(p, args.hidden, q, m=args.mon_m, tol=args.tol_mon, max_iter=2000)
    solver = "averaged" if kind == "mu" else "anderson"
    model = idl.ImplicitModel(p, args.hidden, q, "relu", wellposedness=kind, kappa=args.gamma,
                              solver=solver, tol=args.tol, max_iter=5000, on_nonconvergence="warn")
    with torch.no_grad():
        model.D.zero_()
    model.D.requires_grad_(False)
    if kind == "mu":
        parametrize.register_parametrization(model, "A", wp.MuInfParametrization(args.gamma))
    return model


def penalty(model: nn.Module, kind: str) -> torch.Tensor:
    if kind == "mon":
        return model.lipschitz_penalty("inf")
    bound = pen.lipschitz_bound if kind == "inf" else pen.mu_lipschitz_bound
    return bound(model.A, model.B, model.C, model.D)


def float64_copy(model: nn.Module, kind: str) -> nn.Module:
    """The same function in float64 with tight solves (for the empirical bounds)."""
    if kind == "mon":
        m64 = MON(model.in_features, model.hidden, model.out_features, m=model.m, tol=1e-9,
                  max_iter=20_000, dtype=torch.float64)
        m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
        return m64
    mats = [getattr(model, k).detach().double() for k in ("A", "B", "C", "D", "b", "d")]
    return idl.ImplicitModel.from_matrices(*mats, activation="relu", wellposedness=None,
                                           solver="anderson", tol=1e-10, max_iter=20_000)


def certificates(model: nn.Module, kind: str) -> dict:
    if kind == "mon":
        return {"certified": model.lipschitz_inf(), "certified_l2": model.lipschitz_l2()}
    b = lipschitz_bounds(model)  # float64: eq. 4.8, mu form, sensitivity
    own = b.inf if kind == "inf" else b.mu
    return {"certified": own, "certified_best": b.best, "eq48": b.inf, "mu_form": b.mu,
            "sensitivity": b.sensitivity, "a_inf": wp.inf_norm(model.A), "mu_inf": wp.mu_inf(model.A)}


# ----------------------------------------------------------------------------- training / evaluation


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> float:
    with torch.no_grad():
        return sum(int((model(X[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum())
                   for i in range(0, X.shape[0], chunk)) / X.shape[0]


def train(model: nn.Module, kind: str, lam: float, data: dict, args: argparse.Namespace) -> dict:
    X, y = data["X"], data["y"]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    hist = []
    for ep in range(args.epochs):
        if ep == args.epochs - 1 and args.epochs > 1:  # last epoch at lr / 10
            for group in opt.param_groups:
                group["lr"] = args.lr / 10
        tot, nb = 0.0, 0
        for idx in torch.randperm(X.shape[0], generator=gen).split(args.batch):
            loss = F.cross_entropy(model(X[idx]), y[idx])
            if lam > 0:
                loss = loss + lam * penalty(model, kind)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if kind == "inf":
                model.project_()
            tot, nb = tot + float(loss.detach()), nb + 1
        hist.append({"epoch": ep + 1, "objective": tot / nb, "seconds": time.perf_counter() - t0})
        log(f"  {kind:3s} lambda={lam:g} epoch {ep + 1}: objective {tot / nb:.4f} "
            f"({time.perf_counter() - t0:.0f} s)")
    return {"history": hist, "train_seconds": time.perf_counter() - t0}


def evaluate(model: nn.Module, kind: str, data: dict, args: argparse.Namespace) -> dict:
    model.eval()
    t0 = time.perf_counter()
    out = {"test_error_pct": 100 * (1 - accuracy(model, data["Xt"], data["yt"])), **certificates(model, kind)}
    Xa, ya = data["Xt"][:args.attack_test], data["yt"][:args.attack_test]
    curve = []
    for eps in args.eps:
        wrong = 0
        for i in range(0, Xa.shape[0], 1000):
            r = inversion_attack(model, Xa[i:i + 1000], ya[i:i + 1000], Budget(epsilon=eps, clip=(0.0, 1.0)))
            wrong += int(r.success.sum())
        curve.append({"eps": eps, "accuracy": 1 - wrong / Xa.shape[0]})
    out["inversion"] = curve
    m64 = float64_copy(model, kind)
    g = torch.Generator().manual_seed(args.seed)
    U = data["Xt"][:args.emp_pairs].double()
    for norm in ("inf", "2"):
        emp = empirical_lipschitz(m64, U, norm=norm, pairs=args.emp_pairs, steps=args.emp_steps,
                                  radius=(1e-3, 1.0), generator=g)
        out[f"empirical_{norm}"] = emp.value
        out[f"empirical_{norm}_trials"] = emp.trials
    cert2 = out.get("certified_l2")
    out["violations"] = int(out["empirical_inf"] > out["certified"]) + int(
        cert2 is not None and out["empirical_2"] > cert2)
    out["eval_seconds"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------- output


def figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"inf": "tab:red", "mu": "tab:blue", "mon": "tab:green"}
    styles = ["-", "--", ":", "-."]
    lams = sorted({r["lambda"] for r in res["runs"]})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for kind in KINDS:
        rows = sorted((r for r in res["runs"] if r["kind"] == kind), key=lambda r: r["lambda"])
        if not rows:
            continue
        err = [r["test_error_pct"] for r in rows]
        ax1.plot([r["certified"] for r in rows], err, "o-", color=colors[kind],
                 label=f"{LABELS[kind]}: certified")
        ax1.plot([r["empirical_inf"] for r in rows], err, "o:", mfc="none", color=colors[kind],
                 label=f"{LABELS[kind]}: empirical lower bound")
        for r in rows:
            ax1.annotate(f"λ={r['lambda']:g}", (r["certified"], r["test_error_pct"]), fontsize=7,
                         xytext=(3, 3), textcoords="offset points")
            ax2.plot([c["eps"] for c in r["inversion"]], [100 * c["accuracy"] for c in r["inversion"]],
                     styles[lams.index(r["lambda"]) % len(styles)], color=colors[kind],
                     label=f"{kind}, λ={r['lambda']:g}")
    ax1.set_xscale("log")
    ax1.set_xlabel("l_inf Lipschitz constant of u -> y (certified: filled; empirical: hollow)")
    ax1.set_ylabel("test error (%)")
    ax1.set_title(f"{res['settings']['dataset']}: test error vs Lipschitz bound")
    ax1.legend(fontsize=7)
    ax2.set_xlabel("eps of the inversion attack u + eps sign(1/2 - u)")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_title("inversion attack")
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(res: dict) -> str:
    s = res["settings"]
    eps_show = [e for e in s["eps"] if e in (0.1, 0.2, 0.3)] or s["eps"][1:3]
    lines = [
        "# Paper 004: test error vs certified l_inf Lipschitz bound (MNIST), inversion attack",
        "",
        f"Data: `{s['dataset']}` via `idlkit.datasets.load`, pixels in [0, 1]; {s['train_samples']} training "
        f"images (the first of the training split), {s['test_samples']} test images; attack curves on "
        f"the first {s['attack_samples']} test images. n = {s['hidden']}, gamma = {s['gamma']}, "
        f"MON m = {s['mon_m']}; Adam lr {s['lr']} (last epoch lr / 10), batch {s['batch']}, "
        f"{s['epochs']} epochs, seed {s['seed']}. Empirical bounds: {s['emp_pairs']} pairs x "
        f"{s['emp_steps']} ascent steps (+1) per norm, radii in [1e-3, 1], float64 copies.",
        "",
        "| model | lambda | test error % | certified l_inf | empirical l_inf (lower) | cert / emp | "
        "empirical l2 (lower) | " + " | ".join(f"acc. eps={e:g}" for e in eps_show) + " | train s |",
        "|---|---|---|---|---|---|---|" + "---|" * len(eps_show) + "---|",
    ]
    for r in res["runs"]:
        accs = {c["eps"]: c["accuracy"] for c in r["inversion"]}
        lines.append(
            f"| {LABELS[r['kind']]} | {r['lambda']:g} | {r['test_error_pct']:.2f} | {r['certified']:.4g} | "
            f"{r['empirical_inf']:.4g} | {r['certified'] / r['empirical_inf']:.3g} | "
            f"{r['empirical_2']:.4g} | "
            + " | ".join(f"{100 * accs[e]:.1f}" for e in eps_show) + f" | {r['train_seconds']:.0f} |")
    lines += ["", "Other certificates of the same models (float64):", "",
              "| model | lambda | eq. 4.8 | mu form | sensitivity ‖S‖∞ | ‖A‖∞ | μ∞(A) | "
              "MON l2 cert. | empirical l2 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        def f(k: str, r: dict = r) -> str:
            v = r.get(k)
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
        lines.append(f"| {r['kind']} | {r['lambda']:g} | {f('eq48')} | {f('mu_form')} | {f('sensitivity')} | "
                     f"{f('a_inf')} | {f('mu_inf')} | {f('certified_l2')} | {f('empirical_2')} |")
    viol = sum(r["violations"] for r in res["runs"])
    lines += ["", f"Certificate violations (empirical lower bound above its certificate): {viol} "
              f"over {len(res['runs'])} models.", "",
              "Inversion attack, accuracy (%) at every eps:", "",
              "| model | lambda | " + " | ".join(f"{e:g}" for e in s["eps"]) + " |",
              "|---|---|" + "---|" * len(s["eps"])]
    for r in res["runs"]:
        lines.append(f"| {r['kind']} | {r['lambda']:g} | "
                     + " | ".join(f"{100 * c['accuracy']:.1f}" for c in r["inversion"]) + " |")
    lines += ["", "## Anchors", "",
              "LBEN (Revay, Wang & Manchester 2020) on MNIST, width 80, as the issue quotes it. Its "
              "Lipschitz numbers are l2 (input l2 -> output l2), so compare them with our *empirical l2* "
              "column. The code base LBEN extends (Winston & Kolter's monotone_op_net) standardises MNIST "
              f"pixels by std {MNIST_STD}; a constant with respect to standardised inputs is "
              f"{MNIST_STD} times the constant with respect to our [0, 1] pixels, so in our units LBEN's "
              "numbers read as the last column (if LBEN kept that standardisation).", "",
              "| model | test error % | empirical Lipschitz (l2) | the same in [0, 1]-pixel units |",
              "|---|---|---|---|"]
    lines += [f"| {a['model']} | {a['test_error_pct']} | {a['empirical_lipschitz_l2']} | "
              f"{a['empirical_lipschitz_l2'] / MNIST_STD:.3g} |" for a in LBEN]
    lines += ["", "Paper 004 states (its figure has no printed numbers):", ""]
    lines += [f"- {c}" for c in PAPER_CLAIMS]
    cert = {(r["kind"], r["lambda"]): r["certified"] for r in res["runs"]}
    rows = [lam for lam in sorted({r["lambda"] for r in res["runs"]})
            if ("mu", lam) in cert and (("inf", lam) in cert or ("mon", lam) in cert)]
    if rows:
        lines += ["", "Ours, in orders of magnitude (log10 of the certified-bound ratio; positive: the "
                  "mu_inf model's certificate is smaller):", "", "| lambda | log10(IDL / mu) | "
                  "log10(MON / mu) |", "|---|---|---|"]
        for lam in rows:
            parts = [f"{math.log10(cert[(k, lam)] / cert[('mu', lam)]):+.2f}" if (k, lam) in cert else "-"
                     for k in ("inf", "mon")]
            lines.append(f"| {lam:g} | {parts[0]} | {parts[1]} |")
    if res.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def load(args: argparse.Namespace) -> dict:
    ds = idl.datasets.load(args.dataset, as_torch=True)
    X, y = ds.x_train.float(), ds.y_train.long()
    if args.limit:
        X, y = X[:args.limit], y[:args.limit]
    Xt, yt = ds.x_test.float(), ds.y_test.long()
    if args.test:
        Xt, yt = Xt[:args.test], yt[:args.test]
    return {"X": X, "y": y, "Xt": Xt, "yt": yt, "q": int(ds.num_classes)}


def run(args: argparse.Namespace) -> dict:
    data = load(args)
    p, q = data["X"].shape[1], data["q"]
    runs = []
    for lam in args.lambdas:
        for kind in args.models:
            torch.manual_seed(args.seed)
            model = build(kind, p, q, args)
            log(f"{kind} lambda={lam:g}")
            tr = train(model, kind, lam, data, args)
            ev = evaluate(model, kind, data, args)
            row = {"kind": kind, "lambda": lam, **tr, **ev}
            log(f"  error {row['test_error_pct']:.2f} %  certified {row['certified']:.4g}  "
                f"empirical {row['empirical_inf']:.4g} (l2 {row['empirical_2']:.4g})")
            runs.append(row)
    settings = {k: getattr(args, k) for k in ("dataset", "hidden", "gamma", "mon_m", "lambdas", "epochs",
                                              "lr", "batch", "seed", "eps", "emp_pairs", "emp_steps",
                                              "tol", "tol_mon", "models")}
    settings.update(train_samples=int(data["X"].shape[0]), test_samples=int(data["Xt"].shape[0]),
                    attack_samples=min(args.attack_test, int(data["Xt"].shape[0])))
    return {"settings": settings, "runs": runs, "anchors": {"lben": LBEN, "paper004": PAPER_CLAIMS},
            "notes": list(args.notes)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--gamma", type=float, default=0.95)
    ap.add_argument("--mon-m", type=float, default=0.05)
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 1e-3, 1e-2])
    ap.add_argument("--models", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--limit", type=int, default=0, help="training images (0: all)")
    ap.add_argument("--test", type=int, default=0, help="test images (0: all)")
    ap.add_argument("--attack-test", type=int, default=2000)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5])
    ap.add_argument("--emp-pairs", type=int, default=100)
    ap.add_argument("--emp-steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tol", type=float, default=1e-5, help="forward tolerance of the implicit models")
    ap.add_argument("--tol-mon", type=float, default=1e-4, help="MON's splitting tolerance (float32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", dest="notes", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="digits, small settings (a smoke run)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--render", type=Path, default=None,
                    help="re-write the markdown (and figure) of an existing JSON result, no training")
    args = ap.parse_args(argv)
    if args.render is not None:
        res = json.loads(args.render.read_text())
        figure(res, args.render.with_suffix(".png"))
        atomic_write(args.render.with_suffix(".md"), markdown(res))
        return 0
    if args.quick:
        args.dataset, args.hidden, args.epochs, args.limit, args.test, args.lr = "digits", 16, 3, 600, 0, 1e-2
        args.lambdas, args.eps, args.attack_test = [0.0, 1e-2], [0.0, 0.2], 100
        args.emp_pairs, args.emp_steps = 10, 3
    torch.set_num_threads(1)
    res = run(args)
    res["machine"] = machine()
    name = "lipschitz_pareto" + ("_quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    figure(res, args.out / f"{name}.png")
    write_results(args.out, name, res, markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
