"""Paper 003 (thesis) Fig. 4.3: bounds on the state vector, IBP vs implicit box vs implicit LP.

Setup (thesis §4, around Fig. 4.3): the state of an implicit model for inputs in the box
``|u - u0| <= sigma_u`` (eq. 4.1) is bounded three ways and the intervals of selected state
coordinates are compared:

* **IBP** (red): interval bound propagation layer by layer (:func:`idlkit.robust.interval_bounds`);
* **implicit box** (blue): ``|x - x0| <= sigma_x = (I - |A|)^-1 |B| sigma_u`` (Thm 4.1,
  :func:`idlkit.robust.state_box_bound`); we also report it intersected with ``x >= 0``;
* **implicit LP** (green): the LP relaxation of Thm 4.5 (:func:`idlkit.robust.lp_state_bounds`):
  ``max / min z_i`` of the pre-activations (the linear objectives of §4.5), the state bounds
  being their ReLU images. It starts from the Thm 4.1 box intersected with IBP, and on this
  feed-forward (triangular) model it is layer-by-layer LP-tight in one round (each layer's
  bounds are LPs over the triangle relaxation of the earlier layers with their final bounds), a
  fixed point, so ``rounds`` is ignored on it; the "2 rounds" column is kept for comparison with
  earlier runs (it equals "1 round").
* **CROWN / alpha-CROWN** (linear bound propagation, :func:`idlkit.robust.state_bounds` with
  ``method="crown"`` / ``"alpha-crown"``), and the LP started from CROWN's box
  (``method="lp"``): the bounds the thesis figure did not have, for comparison.

Model: a small ReLU feed-forward network 784-64-32-10 trained on MNIST (2 epochs of Adam, cached in
``~/.cache/idlkit/bench/``, shared with ``benchmarks/bench_robust.py``), converted exactly to an
implicit model (``idlkit.convert.from_torch``, n = 96 states, strictly upper-triangular ``A``).
No input clipping (IBP has none). A Monte Carlo inner estimate of the true range (box vertices and
uniform points) is drawn for reference: every valid bound must contain it.

The thesis claims (qualitatively, no numbers): IBP is the most conservative, the implicit box is
"significantly tighter", the implicit LP the tightest. For a feed-forward (triangular) model the
implicit box ignores the ReLU's clipping of inactive units, which IBP uses; we report what we measure.

    .venv/bin/python experiments/bounds_fig4_3.py [--sigmas 0.01 0.03 0.1] [--images 1] [--rounds 1 2]

Writes ``experiments/results/bounds_fig4_3.{json,md,png}`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _compare import mlp

import idlkit.robust as R
from idlkit.convert import from_torch
from idlkit.robust.lp import true_states

HERE = Path(__file__).resolve().parent
CACHE = Path.home() / ".cache" / "idlkit" / "bench"
WIDTHS = (784, 64, 32, 10)
THESIS = "IBP loosest; implicit box significantly tighter; implicit LP tightest (Fig. 4.3, no numbers)"


def mnist_ffn(epochs: int = 2, seed: int = 0) -> tuple[torch.nn.Sequential, float, torch.Tensor]:
    """The MNIST ReLU network ``WIDTHS`` (same recipe and cache file as benchmarks/bench_robust.py).

    Returns ``(net float64 eval, test accuracy, test images float64)``.
    """
    from idlkit.datasets import load

    ds = load("mnist", as_torch=True)
    net = mlp(list(WIDTHS))
    path = CACHE / f"mnist_ffn_{'-'.join(map(str, WIDTHS))}_e{epochs}_s{seed}.pt"
    if path.exists():
        net.load_state_dict(torch.load(path))
    else:
        torch.manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        X, Y = ds.x_train.float(), ds.y_train
        for _ in range(epochs):
            perm = torch.randperm(X.shape[0])
            for i in range(0, X.shape[0], 128):
                idx = perm[i:i + 128]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(X[idx]), Y[idx]).backward()
                opt.step()
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    net = net.double().eval()
    Xt = ds.x_test.double()
    with torch.no_grad():
        acc = float((net(Xt).argmax(1) == ds.y_test).double().mean())
    return net, acc, Xt


def sampled_range(model: torch.nn.Module, u0: np.ndarray, sigma: float, m: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inner estimate of the true state range: ``m`` points of the box (half of them vertices)."""
    Rn = rng.uniform(-1, 1, (m, u0.size))
    Rn[: m // 2] = np.sign(Rn[: m // 2])
    X = true_states(model, u0 + sigma * Rn)
    return X.min(0), X.max(0)


def bounds_for(model: torch.nn.Module, u0: torch.Tensor, sigma: float, rounds: list[int], m: int,
               rng: np.random.Generator) -> dict:
    """Intervals ``(lo, hi)`` of every state coordinate for each method, float64 numpy."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sec: dict[str, float] = {}
    t = time.perf_counter()
    ib = R.interval_bounds(model, u0[None], sigma)
    sec["ibp"] = time.perf_counter() - t
    out["ibp"] = (ib.x_lower[0].numpy(), ib.x_upper[0].numpy())
    x0 = true_states(model, u0.numpy())[0]
    t = time.perf_counter()
    sx = R.state_box_bound(model, sigma).numpy()
    sec["box"] = time.perf_counter() - t
    out["box"] = (x0 - sx, x0 + sx)
    out["box+"] = (np.maximum(x0 - sx, 0.0), x0 + sx)
    for r in rounds:
        t = time.perf_counter()
        lb = R.lp_state_bounds(model, u0, sigma, rounds=r)
        sec[f"lp{r}"] = time.perf_counter() - t
        out[f"lp{r}"] = (lb.lower.numpy(), lb.upper.numpy())
    for key, method in (("crown", "crown"), ("alpha", "alpha-crown"), ("lpc", "lp")):
        t = time.perf_counter()
        sb = R.state_bounds(model, u0[None], sigma, method=method)
        sec[key] = time.perf_counter() - t
        out[key] = (sb.lower[0].numpy(), sb.upper[0].numpy())
    out["sampled"] = sampled_range(model, u0.numpy(), sigma, m, rng)
    return {"x0": x0, "intervals": out, "seconds": sec}


def violations(iv: dict) -> int:
    """Sampled states outside a method's interval (must be 0: the bounds are certified)."""
    slo, shi = iv["sampled"]
    tol = 1e-9 * (1 + np.abs(slo) + np.abs(shi))
    return sum(int((lo > slo + tol).sum() + (hi < shi - tol).sum())
               for k, (lo, hi) in iv.items() if k != "sampled")


def figure(path: Path, results: list[dict], coords: tuple[int, int], labels: dict[str, str]) -> None:
    """Fig. 4.3 look-alike: per sigma, the (x_i, x_j) plane with each method's box and samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colors = {"ibp": "tab:red", "box": "tab:blue", "lp1": "tab:green", "lp2": "darkgreen",
              "crown": "tab:orange", "alpha": "tab:purple", "lpc": "black"}
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.0), squeeze=False)
    i, j = coords
    for ax, res in zip(axes[0], results, strict=True):
        iv = res["intervals"]
        for key, col in colors.items():
            if key not in iv:
                continue
            lo, hi = iv[key]
            ax.add_patch(Rectangle((lo[i], lo[j]), hi[i] - lo[i], hi[j] - lo[j], fill=False, lw=2,
                                   ec=col, ls="--" if key == "lp2" else "-", label=labels[key]))
        S = res["samples_ij"]
        ax.scatter(S[:, 0], S[:, 1], s=3, c="0.5", alpha=0.5, label="sampled states")
        ax.plot(res["x0"][i], res["x0"][j], "k*", ms=9, label="x0")
        allx = np.concatenate([[iv[k][0][i], iv[k][1][i]] for k in colors if k in iv])
        ally = np.concatenate([[iv[k][0][j], iv[k][1][j]] for k in colors if k in iv])
        pad = lambda a: 0.05 * (a.max() - a.min() + 1e-12)  # noqa: E731
        ax.set_xlim(allx.min() - pad(allx), allx.max() + pad(allx))
        ax.set_ylim(ally.min() - pad(ally), ally.max() + pad(ally))
        ax.set_title(f"sigma_u = {res['sigma']:g}")
        ax.set_xlabel(f"x[{i}]")
        ax.set_ylabel(f"x[{j}]")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("State bounds (thesis Fig. 4.3): IBP (red), implicit box (blue), implicit LP (green)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    ap.add_argument("--images", type=int, default=1, help="test images averaged over")
    ap.add_argument("--rounds", type=int, nargs="+", default=[1, 2], help="LP tightening rounds")
    ap.add_argument("--samples", type=int, default=2000, help="Monte Carlo points per image and sigma")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    net, acc, Xt = mnist_ffn()
    model = from_torch(net, Xt[:1], sparse=False)
    n = model.hidden
    n_last = WIDTHS[-2]  # state order: last hidden layer on top (from_torch)
    layers = {"layer 2 (x[0:32])": slice(0, n_last), "layer 1 (x[32:96])": slice(n_last, n)}
    print(f"MNIST {'-'.join(map(str, WIDTHS))}: test accuracy {acc:.4f}; implicit model n = {n}", flush=True)
    labels = {"ibp": "IBP", "box": "implicit box (Thm 4.1)", "box+": "implicit box ∩ {x >= 0}",
              **{f"lp{r}": f"implicit LP ({r} round{'s' if r > 1 else ''})" for r in args.rounds},
              "crown": "CROWN (linear bounds)", "alpha": "alpha-CROWN",
              "lpc": "implicit LP from CROWN's box (output_bounds 'lp')",
              "sampled": "sampled range (inner)"}
    x0_first = true_states(model, Xt[0].numpy())[0]
    active = np.flatnonzero(x0_first[:n_last] > 0)
    pick = rng.choice(active if active.size >= 2 else np.arange(n_last), size=2, replace=False)
    coords = (int(pick[0]), int(pick[1]))
    rows, fig_results, bad = [], [], 0
    for sigma in args.sigmas:
        widths: dict[str, list[float]] = {k: [] for k in labels}
        layer_w: dict[str, dict[str, list[float]]] = {ln: {k: [] for k in labels} for ln in layers}
        secs: dict[str, list[float]] = {}
        for img in range(args.images):
            u0 = Xt[img]
            res = bounds_for(model, u0, sigma, args.rounds, args.samples, rng)
            bad += violations(res["intervals"])
            for k, (lo, hi) in res["intervals"].items():
                widths[k].append(float((hi - lo).mean()))
                for ln, sl in layers.items():
                    layer_w[ln][k].append(float((hi[sl] - lo[sl]).mean()))
            for k, v in res["seconds"].items():
                secs.setdefault(k, []).append(v)
            if img == 0:
                Rn = rng.uniform(-1, 1, (args.samples, u0.numel()))
                Rn[: args.samples // 2] = np.sign(Rn[: args.samples // 2])
                S = true_states(model, u0.numpy() + sigma * Rn)[:, list(coords)]
                fig_results.append({"sigma": sigma, "x0": res["x0"], "intervals": res["intervals"],
                                    "samples_ij": S})
        w = {k: statistics.fmean(v) for k, v in widths.items()}
        order = sorted((k for k in w if k not in ("sampled", "box+")), key=w.get)
        rows.append({"sigma": sigma, "mean_width": w,
                     "layer_mean_width": {ln: {k: statistics.fmean(v) for k, v in d.items()}
                                          for ln, d in layer_w.items()},
                     "seconds": {k: statistics.fmean(v) for k, v in secs.items()},
                     "tightest_to_loosest": order})
        print(f"sigma={sigma}: " + ", ".join(f"{labels[k]} {w[k]:.4g}" for k in labels), flush=True)
    png = args.out / "bounds_fig4_3.png"
    figure(png, fig_results, coords, labels)
    keys = list(labels)
    md = ["# Thesis Fig. 4.3: state bounds, IBP vs implicit box vs implicit LP", "",
          f"MNIST ReLU network {'-'.join(map(str, WIDTHS))} (test accuracy {acc:.4f}) converted to an "
          f"implicit model (n = {n}, triangular A); nominal inputs: the first {args.images} test "
          f"image(s); input box |u - u0| <= sigma_u, no clipping; float64. Mean interval width over all "
          f"{n} states (upper - lower). 'sampled range' is an inner estimate ({args.samples} points, "
          f"half box vertices): every bound contains it ({bad} violations).", "",
          "| sigma_u | " + " | ".join(labels[k] for k in keys) + " | ours, tightest -> loosest | thesis |",
          "|---" * (len(keys) + 3) + "|"]
    for r in rows:
        md.append(f"| {r['sigma']:g} | " + " | ".join(f"{r['mean_width'][k]:.4g}" for k in keys)
                  + f" | {' < '.join(labels[k] for k in r['tightest_to_loosest'])} | {THESIS} |")
    md += ["", "Per layer (mean width):", "",
           "| sigma_u | layer | " + " | ".join(labels[k] for k in keys) + " |",
           "|---" * (len(keys) + 2) + "|"]
    for r in rows:
        for ln, d in r["layer_mean_width"].items():
            md.append(f"| {r['sigma']:g} | {ln} | " + " | ".join(f"{d[k]:.4g}" for k in keys) + " |")
    md += ["", "Seconds per image: " + "; ".join(
        f"sigma {r['sigma']:g}: " + ", ".join(f"{k} {v:.3g}" for k, v in r["seconds"].items()) for r in rows),
        "", f"Figure: `bounds_fig4_3.png`, states x[{coords[0]}] and x[{coords[1]}] (last hidden layer, "
        f"active at x0), image 0.", ""]
    md_text = "\n".join(md)
    payload = {"model": "-".join(map(str, WIDTHS)), "test_accuracy": acc, "n": n, "images": args.images,
               "samples": args.samples, "rounds": args.rounds, "coords": coords, "violations": bad,
               "thesis_claim": THESIS, "rows": rows, "labels": labels}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bounds_fig4_3.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "bounds_fig4_3.md").write_text(md_text)
    print(md_text)
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
