"""SIM on any baseline through forward hooks: GELU/SiLU MLPs on digits, a Transformer on 20 Newsgroups.

Paper 002 §4.3 fits SIM (State-driven Implicit Modeling, Alg. 1) to the states of a DistilBERT
fine-tuned on 20 Newsgroups (82 % F1, 17 % fewer parameters at no accuracy loss with the
perspective objective, Fig. 2). Neither DistilBERT nor its states can be converted into an exact
implicit model: attention multiplies two unbounded maps of the input and layer norm divides by a
norm (paper 000 §2.4), so idlkit's converter refuses them. SIM does not need the exact form,
only the states (eq. 2: ``Z = A X + B U``, ``Y_hat = C X + D U`` are *fitted*), and
:mod:`idlkit.sim.hooks` records them with forward hooks on the activation modules.

1. **Digits, GELU and SiLU MLPs** (64-64-32-10, scikit-learn's bundled digits, trained here for a
   few seconds): hooked states equal the converter's (both handle these networks; the maximum
   difference is reported), SIM fits them, the fitted model is evaluated on the test split.
2. **20 Newsgroups, a small Transformer text classifier** (the stand-in for the paper's
   DistilBERT, trained here for at most ``--train-seconds``): TF-IDF features (``--features``,
   fitted on the train split) embedded into ``T`` tokens of width ``d`` by one linear map plus a
   learned position embedding, one ``nn.TransformerEncoderLayer`` (2 heads, GELU feed-forward,
   post-norm), mean pooling over the tokens (an ``nn.Module``) and a linear head.
   **Which states.** The hooked states are the feed-forward GELU states (``T * d_ff``) and, as a
   linear (identity) state, the pooled representation (``identity_layers=["pool"]``): the head is
   then exactly linear in the states. The attention softmax (functional inside
   ``nn.MultiheadAttention``) and the two layer norms are *not* states: no single implicit layer
   reproduces softmax(q k^T) or a normalisation, so their effect is what the fitted rows of
   ``(A, B)`` approximate. A second fit keeps the pooled state only (``skip_layers=["encoder"]``):
   a model with no GELU state, to show what the feed-forward states add.

SIM settings: objective ``l1`` (problem 11), ``lambda_1 = lambda_2 = 0.1``, two l1 weights
``beta`` (accuracy vs sparsity; the pooled-only fit at the smaller one), unscaled states
(``rescale=False``: GELU and SiLU are not positively homogeneous, so no linear rescaling keeps
``X = phi(Z)``, paper 002 Thm 2.4), and the well-posedness constraint scaled by the activation's
l_inf Lipschitz constant ``gamma`` (GELU 1.129, SiLU 1.100): ``||A||_inf <= 0.99 / gamma``, so
that ``gamma ||A||_inf <= 0.99 < 1`` certifies a unique state (paper 000 Thm 2.2). (The script
fits with the identity map in place of phi, which the row solvers never read, and attaches phi
afterwards through ``ImplicitModel.from_matrices(..., wellposedness="inf", kappa=0.99)``, which
checks ``gamma ||A||_inf <= 0.99``; ``SIM.fit_states`` now declares ``gamma ||A||_inf`` itself.)
The beta fits use the paper-literal form (``per_sample=False``, ``penalty_units="rescaled"``,
``structure="free"``, ``refit=False``); each network also gets a ``default SIM()`` fit (the
library's defaults: penalties in the teacher's units against per-sample matching, structure
``"auto"``, relaxed-lasso refit).
After each fit, ``regen_states(support="keep")`` refits ``(C, D, d)``
on the model's own equilibrium states within the fitted support.

Reported per fit: teacher and SIM test accuracy, agreement with the teacher, nnz, nnz(A),
``||A||_inf``, sparsity vs the teacher (paper 002 §4.1), the state error
``||X' - X||_F / ||X||_F`` of the model's equilibrium against the teacher's states on the fit
samples and on held-out test inputs, and the fit time.

    .venv/bin/python experiments/sim_newsgroups.py            # ~5 min on 2 shared cores
    .venv/bin/python experiments/sim_newsgroups.py --quick    # smoke: tiny models, ~1 min

Writes ``experiments/results/sim_newsgroups.{json,md}`` (``--name``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _compare import HERE, log, machine, write_results
from threadpoolctl import threadpool_limits
from torch import nn

import idlkit
from idlkit.activations import Identity
from idlkit.sim import SIM, States, evaluate, extract_states, regen_states

WP_BOUND = 0.99  # gamma ||A||_inf <= WP_BOUND
DIGITS_BETAS = (1e-2, 0.3)  # the l1 weight beta of problem 11 (lambda_1 = lambda_2 = 0.1)
NEWS_BETAS = (1e-2, 3e-2, 0.1)


class MeanPool(nn.Module):
    """Mean over the tokens, ``(m, T, d) -> (m, d)``: a module, so that hooks can record it."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=1)


class TextTransformer(nn.Module):
    """TF-IDF ``(m, p)`` -> ``T`` tokens of width ``d`` -> one encoder layer -> mean pool -> head."""

    def __init__(self, p: int, q: int, *, T: int = 4, d: int = 32, heads: int = 2, d_ff: int = 64,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.T, self.d = T, d
        self.embed = nn.Linear(p, T * d)
        self.pos = nn.Parameter(torch.zeros(T, d))
        # the activation as a module (a string "gelu" would make torch call F.gelu, which hooks
        # cannot see)
        self.encoder = nn.TransformerEncoderLayer(d, heads, d_ff, dropout, activation=nn.GELU(),
                                                  batch_first=True)
        self.pool = MeanPool()
        self.head = nn.Linear(d, q)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = self.embed(u).reshape(u.shape[0], self.T, self.d) + self.pos
        return self.head(self.pool(self.encoder(h)))


def mlp(act: type[nn.Module], widths: tuple[int, ...] = (64, 64, 32, 10)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


def train(net: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch: int,
          seconds: float, seed: int) -> dict:
    """AdamW on cross-entropy; stops after ``epochs`` or once ``seconds`` have passed."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    t0 = time.perf_counter()
    done = 0
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(X.shape[0], generator=gen)
        for i in range(0, X.shape[0], batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(net(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        done += 1
        if time.perf_counter() - t0 > seconds:
            break
    net.eval()
    return {"epochs": done, "train_seconds": time.perf_counter() - t0, "last_loss": float(loss)}


def accuracy(net: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(X).argmax(1) == y).double().mean())


def fit_certified(st: States, **sim_kw: object) -> tuple[idlkit.ImplicitModel, object, float]:
    """SIM with ``||A||_inf <= 0.99 / gamma`` and phi attached afterwards (module docstring)."""
    gamma = st.activation.lipschitz_inf
    t0 = time.perf_counter()
    plain = dataclasses.replace(st, activation=Identity())  # the row solvers never read phi
    m0, rep = SIM(objective="l1", kappa=WP_BOUND / gamma, **sim_kw).fit_states(plain, bias=True)
    model = idlkit.ImplicitModel.from_matrices(m0.A, m0.B, m0.C, m0.D, m0.b, m0.d, activation=st.activation,
                                               wellposedness="inf", kappa=WP_BOUND, **m0.settings.config())
    return model, rep, time.perf_counter() - t0


def default_kw(sim_kw: dict) -> dict:
    """The library's defaults (teacher units, per-sample matching, structure "auto", relaxed-lasso
    refit, beta / lambdas as shipped) with this run's engine settings."""
    return {k: sim_kw[k] for k in ("tol", "backend", "n_jobs", "dtype")}


def one_fit(label: str, st: States, st_test: States, y_test: torch.Tensor, sim_kw: dict) -> dict:
    """Fit, evaluate on the fit samples and the test set, regen (keep support), evaluate again."""
    model, rep, secs = fit_certified(st, **sim_kw)
    ev_fit = evaluate(model, st.U, teacher=st)
    ev = evaluate(model, st_test.U, y_test, teacher=st_test)
    regen, rr = regen_states(model, st.U, st.Y_hat, support="keep")
    ev_r = evaluate(regen, st_test.U, y_test, teacher=st_test)
    row = {
        "fit": label, "samples": st.m, "n": st.n, "p": int(st.U.shape[1]), "q": int(st.Y_hat.shape[1]),
        "blocks": [f"{lay.label} ({lay.kind}, {lay.size}, {lay.activation!r})" for lay in st.layers],
        "gamma_inf": st.activation.lipschitz_inf, "kappa_fit": WP_BOUND / st.activation.lipschitz_inf,
        **{k: sim_kw[k] for k in ("beta", "lambda_state", "lambda_output") if k in sim_kw},
        "teacher_test_accuracy": ev.teacher_accuracy, "sim_test_accuracy": ev.accuracy,
        "agreement": ev.agreement, "nnz": ev.nnz, "nnz_A": ev.nnz_A, "a_inf_norm": ev.a_inf_norm,
        "gamma_a_inf": st.activation.lipschitz_inf * ev.a_inf_norm,
        "baseline_nnz": ev.baseline_nnz, "sparsity": ev.sparsity,
        "state_error_fit": ev_fit.state_error, "state_error_test": ev.state_error,
        "output_error_test": ev.output_error, "state_residual": rep.state_residual,
        "output_residual": rep.output_residual, "fit_seconds": secs,
        "regen": {"output_error_fit_before": rr.output_error_before,
                  "output_error_fit_after": rr.output_error_after, "rank": rr.rank, "columns": rr.columns,
                  "seconds": rr.seconds, "test_accuracy": ev_r.accuracy, "agreement": ev_r.agreement,
                  "output_error_test": ev_r.output_error, "nnz": ev_r.nnz},
    }
    log(f"  {label}: teacher {ev.teacher_accuracy:.4f}, SIM {ev.accuracy:.4f} (regen {ev_r.accuracy:.4f}), "
        f"nnz {ev.nnz} (baseline {ev.baseline_nnz}), nnz(A) {ev.nnz_A}, ||A||_inf {ev.a_inf_norm:.3f}, "
        f"state error fit {ev_fit.state_error:.3f} test {ev.state_error:.3f}, fit {secs:.1f} s")
    return row


# ----------------------------------------------------------------------------- parts


def digits_part(quick: bool, seed: int, sim_kw: dict) -> list[dict]:
    ds = idlkit.datasets.load("digits")
    X, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    Xt, yt = torch.from_numpy(ds.x_test).double(), torch.from_numpy(ds.y_test)
    rows = []
    for act in (nn.GELU, nn.SiLU):
        torch.manual_seed(seed)
        net = mlp(act)
        info = train(net, X, y, epochs=5 if quick else 60, lr=3e-3, batch=64, seconds=60, seed=seed)
        net = net.double()
        U = X[:400].double() if quick else X.double()  # --quick: SIM fits on 400 of the 1437 images
        st = extract_states(net, U, method="hooks", rescale=False)
        ref = extract_states(net, U, method="convert", rescale=False)
        st_test = extract_states(net, Xt, method="hooks", rescale=False)
        exact = max(float((st.Z - ref.Z).abs().max()), float((st.X - ref.X).abs().max()))
        log(f"digits {act.__name__}: teacher trained {info['epochs']} epochs in "
            f"{info['train_seconds']:.1f} s; max |hooked - converter| states {exact:.1e}")
        for beta in (*DIGITS_BETAS, None):
            label = f"digits {act.__name__} MLP, " + (f"beta {beta:g}" if beta else "default SIM()")
            row = one_fit(label, st, st_test, yt, {**sim_kw, "beta": beta} if beta else default_kw(sim_kw))
            row.update({"teacher": info, "max_abs_hooked_minus_converter": exact,
                        "phi_residual": float((st.activation(st.Z.t()).t() - st.X).abs().max())})
            rows.append(row)
    return rows


def newsgroups_part(args: argparse.Namespace, sim_kw: dict) -> dict:
    t0 = time.perf_counter()
    ds = idlkit.datasets.load("newsgroups20", max_features=args.features)
    X, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    Xt, yt = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
    if args.train_limit:  # a random subset (the files are sorted by newsgroup)
        keep = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(args.seed + 2))
        X, y = X[keep[:args.train_limit]], y[keep[:args.train_limit]]
    if args.test_limit:
        keep = torch.randperm(Xt.shape[0], generator=torch.Generator().manual_seed(args.seed + 3))
        Xt, yt = Xt[keep[:args.test_limit]], yt[keep[:args.test_limit]]
    log(f"newsgroups: {X.shape[0]} train, {Xt.shape[0]} test, {X.shape[1]} TF-IDF features "
        f"({time.perf_counter() - t0:.1f} s to load)")
    torch.manual_seed(args.seed)
    net = TextTransformer(X.shape[1], ds.num_classes, T=args.tokens, d=args.width, d_ff=args.ff)
    with threadpool_limits(2):
        torch.set_num_threads(2)
        info = train(net, X, y, epochs=args.epochs, lr=2e-3, batch=128, seconds=args.train_seconds,
                     seed=args.seed)
        torch.set_num_threads(1)
    teacher = {**info, "test_accuracy_float32": accuracy(net, Xt, yt), "features": X.shape[1],
               "tokens": args.tokens, "width": args.width, "ff": args.ff,
               "parameters": sum(p.numel() for p in net.parameters()),
               "nnz": sum(int(torch.count_nonzero(p)) for p in net.parameters())}
    log(f"teacher: {info['epochs']} epochs in {info['train_seconds']:.1f} s, test accuracy "
        f"{teacher['test_accuracy_float32']:.4f}")
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(args.seed + 1))
    U, Ut = X[perm[:args.samples]].double(), Xt.double()
    runs = []
    for label, hk in (("FFN GELU + pooled", {"identity_layers": ["pool"]}),
                      ("pooled only", {"identity_layers": ["pool"], "skip_layers": ["encoder"]})):
        st = extract_states(net, U, dtype=torch.float64, method="hooks", rescale=False, **hk)
        st_test = extract_states(net, Ut, dtype=torch.float64, method="hooks", rescale=False, **hk)
        for beta in (*NEWS_BETAS, None) if label.startswith("FFN") else NEWS_BETAS[:1]:
            name = f"newsgroups {label}, " + (f"beta {beta:g}" if beta else "default SIM()")
            row = one_fit(name, st, st_test, yt, {**sim_kw, "beta": beta} if beta else default_kw(sim_kw))
            row["phi_residual"] = float((st.activation(st.Z.t()).t() - st.X).abs().max())
            runs.append(row)
    return {"teacher": teacher, "runs": runs, "data": Path(str(ds.source)).name, "train": int(X.shape[0]),
            "test": int(Xt.shape[0])}


# ----------------------------------------------------------------------------- output


def _f(x: object, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec) if isinstance(x, float) else str(x)


def markdown(res: dict) -> str:
    head = ("| fit | samples | n | teacher acc | SIM acc | regen acc | agreement | nnz (teacher) "
            "| sparsity % | nnz(A) | ‖A‖∞ (γ‖A‖∞) | state err fit / test | fit s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def line(r: dict) -> str:
        return (f"| {r['fit']} | {r['samples']} | {r['n']} | {_f(r['teacher_test_accuracy'])} | "
                f"{_f(r['sim_test_accuracy'])} | {_f(r['regen']['test_accuracy'])} | {_f(r['agreement'])} | "
                f"{r['nnz']} ({r['baseline_nnz']}) | {_f(r['sparsity'], '.1f')} | {r['nnz_A']} | "
                f"{_f(r['a_inf_norm'], '.3f')} ({_f(r['gamma_a_inf'], '.3f')}) | "
                f"{_f(r['state_error_fit'], '.3f')} / {_f(r['state_error_test'], '.3f')} | "
                f"{_f(r['fit_seconds'], '.1f')} |")

    out = ["# SIM on hooked states: GELU/SiLU MLPs (digits), a Transformer (20 Newsgroups)\n",
           f"`{res['command']}` — {res['machine']['cpu']}, {res['machine']['usable_cpus']} CPUs, "
           f"git {res['machine']['git_commit']}, {res['wall_seconds']:.0f} s in all.\n",
           "States recorded by forward hooks (`idlkit.sim.hooks`), unscaled; SIM objective `l1` "
           f"(problem 11; lambda {res['sim']['lambda_state']}, beta in the fit's name), "
           f"`||A||_inf <= 0.99 / gamma` so that `gamma ||A||_inf <= 0.99` (gamma: the activation's "
           "l_inf Lipschitz constant). Accuracies on the test split; 'regen': after "
           "`regen_states(support='keep')`. State error: `||X' - X||_F / ||X||_F`, the model's own "
           "equilibrium vs the teacher's states, on the fit samples / on the test inputs.\n",
           "## Digits: GELU and SiLU MLPs 64-64-32-10\n", head]
    out += [line(r) for r in res["digits"]]
    nets = {r["fit"].split(",")[0]: r["max_abs_hooked_minus_converter"] for r in res["digits"]}
    diffs = ", ".join(f"{k}: {v:.1e}" for k, v in nets.items())
    out.append(f"\nHooked states vs the converter's (both apply): max |difference| {diffs}.\n")
    ng = res.get("newsgroups")
    if ng:
        t = ng["teacher"]
        out += ["## 20 Newsgroups: a small Transformer text classifier (stand-in for DistilBERT)\n",
                f"Teacher: {t['features']} TF-IDF features -> {t['tokens']} tokens x {t['width']}, one "
                f"encoder layer (2 heads, GELU feed-forward {t['ff']}), mean pool, linear head; "
                f"{t['parameters']} parameters, trained {t['epochs']} epochs in {t['train_seconds']:.0f} s; "
                f"test accuracy {t['test_accuracy_float32']:.4f} (float32; the table's teacher accuracy is "
                f"its float64 copy). {ng['train']} train / {ng['test']} test documents.\n", head]
        out += [line(r) for r in ng["runs"]]
        out.append("\nStates: the encoder's feed-forward GELU (T x d_ff) and the pooled representation as "
                   "an identity state; the attention softmax and the layer norms are not states (no single "
                   "implicit layer reproduces them), so the fitted rows of (A, B) only approximate them: "
                   "the state error on held-out inputs is the honest measure of that gap.\n")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke mode: tiny models and samples")
    ap.add_argument("--skip-newsgroups", action="store_true", help="digits part only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", type=int, default=None, help="TF-IDF vocabulary (default 2000)")
    ap.add_argument("--samples", type=int, default=None, help="SIM fit samples (default 4000)")
    ap.add_argument("--train-limit", type=int, default=None, help="N random training documents (default all)")
    ap.add_argument("--test-limit", type=int, default=None, help="N random test documents (default all)")
    ap.add_argument("--train-seconds", type=float, default=None, help="teacher training cap (default 120)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", default=None, help="output name (default sim_newsgroups[_quick])")
    args = ap.parse_args(argv)
    q = args.quick
    defaults = {"features": 300 if q else 2000, "samples": 300 if q else 4000,
                "train_limit": 3000 if q else None, "test_limit": 500 if q else None,
                "train_seconds": 20.0 if q else 120.0}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.tokens, args.width, args.ff, args.epochs = (2, 8, 16, 3) if q else (4, 32, 64, 2)
    name = args.name or ("sim_newsgroups_quick" if q else "sim_newsgroups")
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    sim_kw = {"lambda_state": 0.1, "lambda_output": 0.1, "tol": 1e-4, "backend": "loky",
              "n_jobs": 2, "dtype": torch.float64, "per_sample": False, "penalty_units": "rescaled",
              "structure": "free", "refit": False}
    if q:  # the smoke run: one process (two loky workers only add start-up and pickling to tiny fits)
        sim_kw.update(backend="serial", n_jobs=None)
    cmd = "python experiments/sim_newsgroups.py" + (" --quick" if q else "")
    res: dict = {"command": cmd, "quick": q, "seed": args.seed,
                 "sim": {k: v for k, v in sim_kw.items() if k != "dtype"}, "wp_bound": WP_BOUND,
                 "machine": machine()}
    with threadpool_limits(1):
        res["digits"] = digits_part(q, args.seed, sim_kw)
        if not args.skip_newsgroups:
            res["newsgroups"] = newsgroups_part(args, sim_kw)
    res["wall_seconds"] = time.perf_counter() - t_start
    md = markdown(res)
    write_results(Path(args.out), name, res, md)
    print(md)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    raise SystemExit(main())
