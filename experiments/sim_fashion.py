"""idlkit SIM on Fashion-MNIST: the issue's anchor/target and paper 002's Tables 2-3 (with FGSM).

Paper 002 (State-driven Implicit Modeling) §4.2 fits SIM to the states of the bias-free
784-64-32-16-10 ReLU network ``N_fc`` on Fashion-MNIST and measures robustness with FGSM;
App. C gives the objectives (problem 10: perspective relaxation, weight ``alpha``; problem 11:
l1, weight ``beta``; both with state/output matching weights ``lambda_1``, ``lambda_2`` and
the well-posedness constraint 2d, ``||A||_inf <= kappa = 0.99``) and Tables 2-3 (sparsity and
FGSM test accuracy vs the number of training samples). The issue's anchor: torchidl's
``CVXSolver`` defaults on 2,000 samples reach 70.7 % test accuracy with 92,934 nonzeros in
469 s (here: 70.2 %, 92,334, 967 s, ``experiments/sim_fashion_anchor.py``); its target:
>= 80 % test accuracy at >= 50 % sparsity in < 47 s.

Setup (shared with ``sim_fashion_anchor.py``, whose cached teacher is reused, read-only):
inputs are the flattened pixels / 255 in [0, 1] (the paper-literal penalty: ``SIM(penalty_units=
"rescaled", structure="free", refit=False)``; the library's defaults differ since, see
``experiments/sim_implicit.py``; no standardisation,
the paper's unweighted ``sum |M_ij|``; with ``standardize=True`` the fits overfit the states and
the accuracy collapses); the training inputs are the first ``m`` training images in file order;
test accuracy on the 10,000 test images.

1. **Anchor / target** (2,000 samples): ``l1`` at several ``beta``, ``perspective`` at
   ``alpha = beta / 2`` (idlkit's perspective term is ``alpha`` times the reverse Huber function,
   ``2 alpha |w|`` for ``|w| <= 1``, so ``alpha = beta / 2`` is the same penalty on small
   weights), and the thesis' constrained ``lasso`` (whole-row budget kappa). ``||A||_inf`` is
   reported for every fit: on the paper's rescaled states (§3) the relaxed objectives choose
   ``A = 0`` here (a 2-layer-like model ``y = C relu(B u)``, all states read from the input).
   Fits use ``backend="loky", n_jobs=2`` with 1 torch/BLAS thread per process; the best
   setting is timed again with ``backend="serial"``.
   ``lasso``: ``kappa`` is the thesis's whole-row budget; ``SIM`` rescales the states for the
   default bound 0.99 whatever ``kappa`` is, so small budgets bind (every state row
   ``"optimal"``, not ``"inactive"``) and sparsify, at a large cost in state residual here.
2. **Tables 2-3**: perspective (``lambda_1 = lambda_2 = 0.1``, ``alpha = 0.01``, Table 2) and
   l1 (``lambda_1 = lambda_2 = 0.1``, ``beta = 1e-3``; Table 3 as extracted is garbled, its rows
   use beta 1e-3 to 1e-2 and lambda 0.01 to 0.1) vs the number of training samples, with FGSM
   (``u~ = clamp(u + eps sign(grad_u loss), 0, 1)`` on a random 50 % of each image's pixels,
   the same mask for every model, cross-entropy against the true label, gradients through the
   implicit model's fixed point by autograd) at eps = 0.004 and 0.008: white-box on each model,
   and the teacher's own adversarial examples transferred to the SIM model.

    .venv/bin/python experiments/sim_fashion.py            # ~15-20 min on 2 shared cores
    .venv/bin/python experiments/sim_fashion.py --quick    # smoke: 2 sizes, 1 setting, 1000 test images

Writes ``experiments/results/sim_fashion.{json,md}`` (``--name``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from _compare import HERE, load_image_data, log, machine, write_results
from threadpoolctl import threadpool_limits

from idlkit.sim import SIM

CACHE = HERE / "results" / "cache"
TEACHER_FILE = "fashion_teacher_784_64_32_16_10.pt"
ISSUE_ANCHOR = {"accuracy": 0.707, "nnz": 92934, "seconds": 469.0}
TARGET = {"accuracy": 0.80, "sparsity": 50.0, "seconds": 47.0}
EPS = (0.004, 0.008)
# paper 002 App. C Table 2 (perspective, lambda_1 = lambda_2 = 0.1, alpha = 0.01):
# samples -> (sparsity %, FGSM test accuracy % at eps 0.004, at eps 0.008)
PAPER_TABLE2 = {700: (15, 78.7, 75.4), 500: (23, 77.3, 73.8), 400: (28, 76.6, 72.8),
                300: (36, 74.9, 72.4), 200: (54, 73.7, 70.1), 100: (77, 57.2, 49.5)}
# Table 3 (l1) as far as the garbled extraction can be read unambiguously:
# samples -> (sparsity %, lambda_1, lambda_2, beta, acc at 0.004, acc at 0.008)
PAPER_TABLE3 = {600: (20, 0.1, 0.1, 1e-3, 79.6, 76.2), 1000: (47, 0.01, 0.01, 1e-3, 79.3, 76.2),
                400: (76, 0.01, 0.01, 1e-3, 72.3, 68.4)}
SIZES = (100, 200, 400, 700, 1000, 2000)  # 300 and 500 dropped to fit the time budget


def teacher_net(sizes: tuple[int, ...] = (784, 64, 32, 16, 10)) -> torch.nn.Sequential:
    """The bias-free ReLU MLP of ``sim_fashion_anchor.teacher_net``."""
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [torch.nn.Linear(a, b, bias=False), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def load_teacher(cache: Path) -> tuple[torch.nn.Sequential, dict]:
    path = cache / TEACHER_FILE
    if not path.exists():
        sys.exit(f"no cached teacher at {path}: run experiments/sim_fashion_anchor.py --skip-torchidl first")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = teacher_net()
    net.load_state_dict(blob["state_dict"])
    info = {k: v for k, v in blob.items() if k != "state_dict"}
    info["nnz"] = sum(int(torch.count_nonzero(p)) for p in net.parameters())
    return net.eval(), info


# ----------------------------------------------------------------------------- evaluation


def fgsm(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, eps: float, mask: torch.Tensor,
         chunk: int = 2000) -> torch.Tensor:
    """Paper 002 §4.2: ``u + eps sign(grad_u CE(model(u), y))`` on the masked pixels, clamped to [0, 1]."""
    out = []
    for i in range(0, X.shape[0], chunk):
        x = X[i:i + chunk].clone().requires_grad_(True)
        loss = F.cross_entropy(model(x), y[i:i + chunk], reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
        out.append((x.detach() + eps * g.sign() * mask[i:i + chunk]).clamp_(0.0, 1.0))
    return torch.cat(out)


def acc(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, chunk: int = 5000) -> float:
    with torch.no_grad():
        right = sum(int((model(X[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum())
                    for i in range(0, X.shape[0], chunk))
    return right / X.shape[0]


def evaluate(model: torch.nn.Module, test: dict, robust: bool) -> dict:
    """Clean test accuracy; with ``robust`` white-box FGSM and the teacher's transferred examples."""
    t0 = time.perf_counter()
    out = {"test_accuracy": acc(model, test["X"], test["y"])}
    if robust:
        for eps in EPS:
            adv = fgsm(model, test["X"], test["y"], eps, test["mask"])
            out[f"fgsm_{eps}"] = acc(model, adv, test["y"])
            out[f"transfer_{eps}"] = acc(model, test["teacher_adv"][eps], test["y"])
    out["eval_seconds"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------- fitting


def fit(net: torch.nn.Module, U: torch.Tensor, test: dict, *, robust: bool, **kw) -> dict:
    """One SIM fit on the teacher's states of ``U``, evaluated on the test set."""
    model, rep = SIM(**kw).fit(net, U)
    row = {"objective": kw["objective"], "samples": int(U.shape[0]),
           **{k: kw[k] for k in ("beta", "alpha", "kappa", "lambda_state", "lambda_output", "backend",
                                 "n_jobs") if k in kw},
           "sparsity": rep.sparsity, "nnz": rep.nnz, "baseline_nnz": rep.baseline_nnz,
           "a_inf_norm": rep.a_inf_norm, "nnz_A": int(torch.count_nonzero(_dense(model.A))),
           "state_residual": rep.state_residual, "output_residual": rep.output_residual,
           "seconds": rep.seconds, "status": dict(Counter(rep.status)), "solver": dict(Counter(rep.solver)),
           "fallback_rows": len(rep.fallback_rows)}
    row.update(evaluate(model, test, robust))
    log(f"  {_label(row)} m={row['samples']}: acc {row['test_accuracy']:.4f}, "
        f"sparsity {row['sparsity']:.1f} %, "
        f"||A||_inf {row['a_inf_norm']:.3g}, {row['seconds']:.1f} s ({row['backend']}), {row['status']}")
    return row


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t.to_dense() if t.layout != torch.strided else t


def _label(r: dict) -> str:
    w = {"l1": f"beta={r.get('beta')}", "perspective": f"alpha={r.get('alpha')}",
         "lasso": f"kappa={r.get('kappa')}"}.get(r["objective"], "")
    return f"{r['objective']} {w}"


def meets_target(r: dict) -> bool:
    return (r["test_accuracy"] >= TARGET["accuracy"] and r["sparsity"] >= TARGET["sparsity"]
            and r["seconds"] < TARGET["seconds"])


# ----------------------------------------------------------------------------- markdown


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(res: dict) -> str:
    t, an = res["teacher"], res["anchor_here"]
    lam = res["lambda"]
    lines = [
        "# idlkit SIM on Fashion-MNIST: the issue's target and paper 002 Tables 2-3", "",
        f"Teacher: bias-free 784-64-32-16-10 ReLU net, {pct(t['test_accuracy'])} % test accuracy, "
        f"{t['nnz']:,} weights. Inputs: pixels / 255 in [0, 1], `standardize=False` (paper form; "
        f"`standardize=True` overfits the states and the accuracy collapses). lambda_1 = lambda_2 = {lam}, "
        f"kappa = 0.99, tol = {res['tol']}. Test set: {res['test_images']:,} images.", "",
        f"## 1. Anchor / target ({res['anchor_samples']:,} training samples)", "",
        "| method | test acc. (%) | sparsity (%) | nnz | nnz(A) | \\|\\|A\\|\\|_inf | state / output res. "
        "| fit time (s) | rows |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| torchidl CVXSolver defaults (here, `sim_fashion_anchor.py`) | {pct(an['accuracy'])} | "
        f"{(1 - an['nnz'] / t['nnz']) * 100:.1f} | {an['nnz']:,} | {an.get('nnz_A', '-'):,} | "
        f"{an.get('a_inf_norm', float('nan')):.3g} | - | {an['seconds']:.0f} | - |",
        f"| torchidl, issue's anchor | {pct(ISSUE_ANCHOR['accuracy'])} | "
        f"{(1 - ISSUE_ANCHOR['nnz'] / t['nnz']) * 100:.1f} | {ISSUE_ANCHOR['nnz']:,} | - | - | - | "
        f"{ISSUE_ANCHOR['seconds']:.0f} | - |",
        f"| **issue's target** | >= {pct(TARGET['accuracy'])} | >= {TARGET['sparsity']:.0f} | - | - | - "
        f"| - | < {TARGET['seconds']:.0f} | - |"]
    for r in res["anchor"]:
        status = ", ".join(f"{k} {v}" for k, v in r["status"].items())
        mark = " (meets target)" if meets_target(r) else ""
        lines.append(f"| idlkit {_label(r)}, {r['backend']} ({r.get('n_jobs') or 1} jobs){mark} | "
                     f"{pct(r['test_accuracy'])} | {r['sparsity']:.1f} | {r['nnz']:,} | {r['nnz_A']:,} | "
                     f"{r['a_inf_norm']:.3g} | {r['state_residual']:.3g} / {r['output_residual']:.3g} | "
                     f"{r['seconds']:.1f} | {status} |")
    best = res.get("best")
    lines += [""]
    if best:
        lines.append(f"**Best setting meeting the target:** {best} (highest accuracy among those meeting "
                     f"all three conditions; loky, 2 jobs).")
    else:
        lines.append("**No setting meets the target** (>= 80 % at >= 50 % sparsity in < 47 s).")
    lines += ["", "||A||_inf is 0 (or ~1e-9) for every l1/perspective fit: on the paper's rescaled states "
              "(§3) the penalised objectives drop the state-to-state matrix A altogether (the states are "
              "read from the input by B, a model `y = C relu(B u) + D u`), so these are implicit models "
              "only in form. The lasso (thesis P(kappa), whole-row budget) "
              "binds for kappa < ~0.1 (every state row at the budget): it sparsifies, but shrinking "
              "the large first-layer rows costs most of the state fit (state residual ~0.9-1.0) "
              "and much accuracy."]
    lines += ["", "## 2. Paper 002 Tables 2-3: accuracy, sparsity and FGSM vs training samples", "",
              f"FGSM: u + eps sign(grad_u CE), on a random 50 % of each test image's pixels (seed "
              f"{res['seed']}, same mask for all models), clamped to [0, 1]; white-box (gradients through "
              "each model, the SIM model's fixed point by autograd); 'transfer' = the teacher's "
              "adversarial examples fed to the SIM model. Teacher under the same FGSM: "
              + ", ".join(f"eps {e}: {pct(t[f'fgsm_{e}'])} %" for e in EPS)
              + f" (clean {pct(t['test_accuracy'])} %).", ""]
    for obj, weight, paper in (("perspective", f"alpha = {res['alpha_table']}", PAPER_TABLE2),
                               ("l1", f"beta = {res['beta_table']}", PAPER_TABLE3)):
        title = "Table 2 (perspective" if obj == "perspective" else "Table 3 (l1"
        lines += [f"### {title}, lambda_1 = lambda_2 = {lam}, {weight})", "",
                  "| samples | test acc. (%) | sparsity (%) | paper sparsity (%) | \\|\\|A\\|\\|_inf | "
                  "FGSM 0.004 | paper 0.004 | FGSM 0.008 | paper 0.008 | transfer 0.004 / 0.008 | fit (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["tables"].get(obj, []):
            p = paper.get(r["samples"])
            ps, p4, p8 = (p[0], p[-2], p[-1]) if p else ("-", "-", "-")
            lines.append(f"| {r['samples']} | {pct(r['test_accuracy'])} | {r['sparsity']:.1f} | {ps} | "
                         f"{r['a_inf_norm']:.3g} | {pct(r['fgsm_0.004'])} | {p4} | "
                         f"{pct(r['fgsm_0.008'])} | {p8} | "
                         f"{pct(r['transfer_0.004'])} / {pct(r['transfer_0.008'])} | {r['seconds']:.1f} |")
        lines.append("")
    lines += ["Paper Table 3 (l1) is garbled in the extracted text; the rows read unambiguously are "
              "600 samples: 20 % sparsity, lambda 0.1, beta 1e-3, 79.6 / 76.2; 1000: 47 %, lambda 0.01, "
              "beta 1e-3, 79.3 / 76.2; 400: 76 %, lambda 0.01, beta 1e-3, 72.3 / 68.4 (other rows use "
              "beta 0.01). We use lambda_1 = lambda_2 = 0.1, beta = 1e-3 throughout. The paper's teacher "
              "reaches 80 % test accuracy (§4.2); ours "
              f"{pct(t['test_accuracy'])} %, so absolute accuracies are not comparable one to one.", ""]
    mc = res["machine"]
    lines += [f"Machine: {mc['cpu']}, {mc['usable_cpus']} usable CPUs shared with other jobs (load average "
              f"{mc['loadavg_start'][0]:.2f} at start, {mc['loadavg_end'][0]:.2f} at end); torch "
              f"{mc['torch']}, 1 torch/BLAS thread per process. Total wall time {res['wall_seconds']:.0f} s.",
              f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke mode: 2 sizes, 1 setting, 1000 test images")
    ap.add_argument("--seed", type=int, default=0, help="seed of the FGSM pixel mask")
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", default=None, help="output name (default sim_fashion, sim_fashion_quick)")
    args = ap.parse_args(argv)
    name = args.name or ("sim_fashion_quick" if args.quick else "sim_fashion")
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    lam, tol, anchor_m = 0.1, 1e-4, 2000
    loky = {"backend": "loky", "n_jobs": 2}
    if args.quick:
        sizes, l1_betas, persp_alphas, lasso_kappas, test_limit = (200, 500), (2e-2,), (), (), 1000
    else:
        sizes, l1_betas, persp_alphas, lasso_kappas, test_limit = SIZES, (1e-2, 2e-2, 3e-2), (1e-2,), \
            (0.99, 1e-2, 3e-4), None
    alpha_table, beta_table = 1e-2, 1e-3

    with threadpool_limits(1):
        data = load_image_data("fashion_mnist", limit=None, val=0, norm="none", test_limit=test_limit)
        net, tinfo = load_teacher(Path(args.cache))
        Xt, yt = data["Xt"], data["yt"]
        gen = torch.Generator().manual_seed(args.seed)
        test = {"X": Xt, "y": yt, "mask": (torch.rand(Xt.shape, generator=gen) < 0.5).float()}
        test["teacher_adv"] = {e: fgsm(net, Xt, yt, e, test["mask"]) for e in EPS}
        teacher = {**tinfo, "test_accuracy": acc(net, Xt, yt),
                   **{f"fgsm_{e}": acc(net, test["teacher_adv"][e], yt) for e in EPS}}
        log(f"teacher: test {teacher['test_accuracy']:.4f}, FGSM "
            + ", ".join(f"{e}: {teacher[f'fgsm_{e}']:.4f}" for e in EPS))
        anchor_file = HERE / "results" / "sim_fashion_anchor.json"
        anchor_here = {"accuracy": 0.702, "nnz": 92334, "seconds": 967.0}
        if anchor_file.exists():
            ti = json.loads(anchor_file.read_text()).get("torchidl", {})
            if "nnz" in ti:
                anchor_here = {"accuracy": ti["test_accuracy"], "nnz": ti["nnz"], "seconds": ti["seconds"],
                               "nnz_A": ti["nnz_by_matrix"]["A"], "a_inf_norm": ti["A_inf_norm"]}

        # the paper-literal form (the defaults changed since: see experiments/sim_implicit.py)
        common = {"kappa": 0.99, "lambda_state": lam, "lambda_output": lam, "tol": tol,
                  "penalty_units": "rescaled", "structure": "free", "refit": False}
        fits: dict[tuple, dict] = {}  # (objective, weight, samples) -> row (evaluated with FGSM)

        # 1. anchor / target on 2,000 samples
        log(f"part 1: {anchor_m} samples")
        U = data["X"][:anchor_m]
        anchor = []
        for b in l1_betas:
            anchor.append(fit(net, U, test, robust=True, objective="l1", beta=b, **common, **loky))
            fits[("l1", b, anchor_m)] = anchor[-1]
        for a in persp_alphas:
            anchor.append(fit(net, U, test, robust=True, objective="perspective", alpha=a, **common, **loky))
            fits[("perspective", a, anchor_m)] = anchor[-1]
        for k in lasso_kappas:
            kw = {**common, "kappa": k}
            anchor.append(fit(net, U, test, robust=False, objective="lasso", **kw, **loky))
        ok = [r for r in anchor if meets_target(r)]
        best = max(ok, key=lambda r: r["test_accuracy"]) if ok else None
        if best is not None:
            kw = {k: best[k] for k in ("beta", "alpha") if k in best}
            anchor.append(fit(net, U, test, robust=False, objective=best["objective"], **kw, **common,
                              backend="serial"))
        res = {"command": "python experiments/sim_fashion.py" + (" --quick" if args.quick else ""),
               "quick": args.quick, "seed": args.seed, "lambda": lam, "tol": tol, "anchor_samples": anchor_m,
               "test_images": int(Xt.shape[0]), "teacher": teacher, "anchor_here": anchor_here,
               "issue_anchor": ISSUE_ANCHOR, "target": TARGET, "anchor": anchor,
               "best": f"{_label(best)}" if best else None, "alpha_table": alpha_table,
               "beta_table": beta_table, "paper_table2": PAPER_TABLE2, "paper_table3": PAPER_TABLE3,
               "machine": machine(), "data": data["source"], "tables": {}}

        def save(res: dict) -> str:
            res["wall_seconds"] = time.perf_counter() - t_start
            res["machine"]["loadavg_end"] = list(os.getloadavg())
            md = markdown(res)
            write_results(Path(args.out), name, res, md)
            return md

        save(res)

        # 2. Tables 2-3: sweep the number of training samples
        for obj, key, w in (("perspective", "alpha", alpha_table), ("l1", "beta", beta_table)):
            log(f"part 2: {obj} {key}={w}")
            rows = []
            for m in sizes:
                row = fits.get((obj, w, m))
                if row is None:
                    row = fit(net, data["X"][:m], test, robust=True, objective=obj, **{key: w},
                              **common, **loky)
                rows.append(row)
                res["tables"][obj] = rows
                save(res)  # partial results after every fit
    print(save(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
