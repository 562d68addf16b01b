"""matplotlib figures of implicit models.

matplotlib is imported lazily inside each function (an optional dependency, extra
``plot``); a clear :class:`ImportError` names the fix when it is missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._matrix import nonzero_indices
from .errors import InputError

__all__ = ["spy", "sensitivity_heatmaps", "attack_images"]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("idlkit.plot needs matplotlib: pip install 'idlkit[plot]' "
                          "(or pip install matplotlib)") from exc
    return plt


def _pattern(A: Tensor) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Row and column indices of the nonzeros of a dense or sparse matrix (never densified)."""
    r, c = nonzero_indices(A)
    return r, c, (int(A.shape[0]), int(A.shape[1]))


def spy(model: Any, ax: Any = None, *, matrix: str = "A", markersize: float = 0.05,
        max_points: int = 2_000_000, color: str = "tab:blue", seed: int = 0) -> Any:
    """Sparsity pattern of ``model.A`` (or ``B``, ``C``, ``D``), as paper 000 Fig. 7.

    Nonzeros are drawn as points (row ``i`` down, column ``j`` right, like ``plt.spy``);
    for a converted network the convolutions show as Toeplitz-structured blocks above
    the diagonal and the residual connections as straight lines. Above ``max_points``
    nonzeros a uniform random subset (``seed``) is drawn. Returns the ``Axes``.

    Args:
        model: an implicit model (or a tensor to draw directly).
        ax: matplotlib ``Axes`` to draw in; ``None``: a new figure.
        matrix: ``"A"``, ``"B"``, ``"C"`` or ``"D"``.
        markersize: size of the points.
        max_points: most nonzeros drawn (a uniform random subset above it).
        color: matplotlib colour of the points.
        seed: seed of the subset.

    Returns:
        The matplotlib ``Axes``.

    Raises:
        InputError: ``model`` without the matrix ``matrix``.
        ImportError: matplotlib missing.

    Examples:
        >>> ax = spy(idlkit.ImplicitModel(3, 6, 2))
        >>> type(ax).__name__
        'Axes'
    """
    plt = _pyplot()
    if not isinstance(model, Tensor) and not isinstance(getattr(model, matrix, None), Tensor):
        raise InputError(f"spy draws an implicit model's {matrix} (or a tensor); got "
                         f"{type(model).__name__} without a matrix {matrix!r}: convert a network first "
                         f"with idlkit.convert.from_torch")
    M = getattr(model, matrix) if not isinstance(model, Tensor) else model
    r, c, shape = _pattern(M)
    nnz = int(r.size)
    if r.size > max_points:
        keep = np.random.default_rng(seed).choice(r.size, max_points, replace=False)
        r, c = r[keep], c[keep]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    ax.plot(c, r, linestyle="none", marker="s" if r.size < 5000 else ",", color=color,
            markersize=markersize if r.size >= 5000 else 2.0, rasterized=True)
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)
    ax.set_aspect("equal" if shape[0] == shape[1] else "auto")
    ax.xaxis.tick_top()
    title = f"{matrix}: {shape[0]} x {shape[1]}, {nnz} nonzeros"
    ax.set_title(title, fontsize=9)
    return ax


def _as_numpy(a: Any) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _image(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A flat vector as an image: ``(H, W)`` or, for ``(C, H, W)`` (CHW, as ``from_torch``
    flattens), an ``(H, W, C)`` array for 3 channels or the channel mean otherwise."""
    img = v.reshape(shape)
    if img.ndim == 3:
        img = np.transpose(img, (1, 2, 0)) if img.shape[0] == 3 else img.mean(axis=0)
    return img


def _check_shape(shape: tuple[int, ...], p: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or int(np.prod(shape)) != p:
        raise ValueError(f"shape {shape} must be (H, W) or (C, H, W) with {p} entries in all")
    return shape


def sensitivity_heatmaps(model: Any, shape: tuple[int, ...] = (28, 28), classes: Any = None, *,
                         class_names: Any = None, ncols: int = 5, cmap: str = "inferno",
                         channel_reduce: str = "sum", S: Any = None, fig: Any = None) -> Any:
    """Per-class rows of the sensitivity matrix as images (paper 000 Fig. 8 and 15; thesis Fig. 4.4).

    Row ``c`` of ``S = |C|(I - |A|)^-1 |B| + |D|`` (Thm 4.3,
    :func:`idlkit.robust.sensitivity_matrix`) bounds how much output ``c`` can move per unit change
    of each input; reshaped to ``shape`` it shows which pixels matter most for class ``c``
    (brighter = more sensitive). ``model`` is an implicit model (or pass the ``(q, p)`` matrix
    ``S`` directly). ``shape``: ``(H, W)`` or ``(C, H, W)`` (channels are reduced with
    ``channel_reduce``: ``"sum"`` or ``"max"``). ``classes``: the rows to show (default all);
    ``class_names``: their titles. Each panel has its own colour scale (the sensitivities of
    different classes differ in size; the panel titles give the maximum). Returns the ``Figure``.

    Args:
        model: an implicit model (ignored when ``S`` is given).
        shape: image shape ``(H, W)`` or ``(C, H, W)`` with ``p`` entries in all.
        classes: the rows (output indices) to show; ``None``: all.
        class_names: panel titles, one per shown class.
        ncols: panels per row.
        cmap: matplotlib colour map.
        channel_reduce: ``"sum"`` or ``"max"`` over channels.
        S: a precomputed ``(q, p)`` sensitivity matrix, or ``None``.
        fig: matplotlib ``Figure`` to draw in; ``None``: a new one.

    Returns:
        The matplotlib ``Figure``.

    Raises:
        ValueError: a ``shape`` without ``p`` entries, an ``S`` that is not 2-D, a class index
            out of range, or another ``channel_reduce``.

    Examples:
        >>> fig = sensitivity_heatmaps(idlkit.ImplicitModel(16, 6, 3), shape=(4, 4))
        >>> len(fig.axes) >= 3
        True
    """
    plt = _pyplot()
    if S is None:
        from .robust import sensitivity_matrix

        S = sensitivity_matrix(model)
    Sn = _as_numpy(S)
    if Sn.ndim != 2:
        raise ValueError(f"S must be a (q, p) matrix, got shape {Sn.shape}")
    q, p = Sn.shape
    shape = _check_shape(shape, p)
    rows = list(range(q)) if classes is None else [int(c) for c in np.atleast_1d(classes)]
    if not rows or any(not 0 <= c < q for c in rows):
        raise ValueError(f"classes must be indices in [0, {q}), got {classes!r}")
    if channel_reduce not in ("sum", "max"):
        raise ValueError(f"channel_reduce must be 'sum' or 'max', got {channel_reduce!r}")
    ncols = max(1, min(int(ncols), len(rows)))
    nrows = -(-len(rows) // ncols)
    if fig is None:
        fig = plt.figure(figsize=(2.2 * ncols, 2.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, c in zip(axes.flat, rows, strict=False):
        img = Sn[c].reshape(shape)
        if img.ndim == 3:
            img = img.sum(axis=0) if channel_reduce == "sum" else img.max(axis=0)
        im = ax.imshow(img, cmap=cmap, interpolation="nearest")
        name = str(class_names[c]) if class_names is not None else f"class {c}"
        ax.set_title(f"{name}\nmax {img.max():.3g}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle("sensitivity matrix rows  S = |C|(I-|A|)^-1|B| + |D|  (Thm 4.3)", fontsize=9)
    return fig


def attack_images(clean: Any, adversarial: Any, shape: tuple[int, ...] = (28, 28), *,
                  labels: Any = None, predictions: Any = None, clean_predictions: Any = None,
                  titles: Any = None, mark_changed: bool = True, atol: float = 1e-6,
                  vmin: float = 0.0, vmax: float = 1.0, cmap: str = "gray", fig: Any = None) -> Any:
    """Clean vs adversarial images (paper 000 Fig. 16-18; thesis Fig. 4.5-4.6).

    ``clean`` and ``adversarial`` are ``(m, p)`` (or ``(p,)``) flat images; the first row of the grid
    shows the clean images, the second the adversarial ones, and (``mark_changed``) a third row the
    adversarial image in grey with the changed inputs (``|u' - u| > atol``) in red, as the paper
    marks sparse attacks. ``shape``: ``(H, W)`` or ``(C, H, W)`` (3 channels drawn as RGB).
    ``labels``, ``clean_predictions``, ``predictions`` (integers, optional) go into the titles;
    ``titles`` (one string per image) replaces them. Returns the ``Figure``.

    Args:
        clean: ``(m, p)`` or ``(p,)`` clean images, flattened.
        adversarial: adversarial images of ``clean``'s shape.
        shape: image shape ``(H, W)`` or ``(C, H, W)`` with ``p`` entries in all.
        labels: ``(m,)`` true labels, or ``None``.
        predictions: ``(m,)`` predictions on the adversarial images, or ``None``.
        clean_predictions: ``(m,)`` predictions on the clean images, or ``None``.
        titles: one title per image, replacing the generated ones.
        mark_changed: add the row marking the changed inputs in red.
        atol: change above which an input counts as changed.
        vmin: value drawn black.
        vmax: value drawn white.
        cmap: matplotlib colour map of one-channel images.
        fig: matplotlib ``Figure`` to draw in; ``None``: a new one.

    Returns:
        The matplotlib ``Figure``.

    Raises:
        ValueError: images of different shapes, none at all, a ``shape`` without ``p`` entries,
            or a label list of another length.

    Examples:
        >>> clean = torch.rand(2, 16); adv = (clean + 0.1).clamp(0, 1)
        >>> fig = attack_images(clean, adv, shape=(4, 4))
        >>> len(fig.axes) >= 4
        True
    """
    plt = _pyplot()
    U, V = np.atleast_2d(_as_numpy(clean)), np.atleast_2d(_as_numpy(adversarial))
    if U.shape != V.shape or U.ndim != 2:
        raise ValueError(f"clean and adversarial must have the same shape (m, p), got {U.shape} and "
                         f"{V.shape}")
    m, p = U.shape
    if m == 0:
        raise ValueError("no images given")
    shape = _check_shape(shape, p)

    def seq(a: Any, what: str) -> list | None:
        if a is None:
            return None
        out = [int(x) for x in np.atleast_1d(_as_numpy(a))] if what != "titles" else [str(t) for t in a]
        if len(out) != m:
            raise ValueError(f"{what} has {len(out)} entries for {m} images")
        return out

    lab, pred, cpred, tit = (seq(labels, "labels"), seq(predictions, "predictions"),
                             seq(clean_predictions, "clean_predictions"), seq(titles, "titles"))
    nrows = 3 if mark_changed else 2
    if fig is None:
        fig = plt.figure(figsize=(1.9 * m, 2.0 * nrows + 0.3))
    axes = fig.subplots(nrows, m, squeeze=False)
    for i in range(m):
        a, b = _image(U[i], shape), _image(V[i], shape)
        kw = {} if a.ndim == 3 else {"cmap": cmap, "vmin": vmin, "vmax": vmax}
        if a.ndim == 3:  # RGB: scale [vmin, vmax] to [0, 1] (imshow ignores vmin/vmax for RGB)
            a, b = (np.clip((z - vmin) / max(vmax - vmin, 1e-12), 0, 1) for z in (a, b))
        axes[0, i].imshow(a, interpolation="nearest", **kw)
        axes[1, i].imshow(b, interpolation="nearest", **kw)
        t0, t1 = "clean", "adversarial"
        if lab is not None:
            t0 += f"\nlabel {lab[i]}"
        if cpred is not None:
            t0 += f", pred {cpred[i]}"
        if pred is not None:
            t1 += f"\npred {pred[i]}"
        changed = np.abs(V[i] - U[i]) > atol
        t1 += f"  ({int(changed.sum())} changed)"
        axes[0, i].set_title(tit[i] if tit is not None else t0, fontsize=7)
        axes[1, i].set_title(t1, fontsize=7)
        if mark_changed:
            mask = changed.reshape(shape)
            if mask.ndim == 3:
                mask = mask.any(axis=0)
            g = b.mean(axis=2) if b.ndim == 3 else np.clip((b - vmin) / max(vmax - vmin, 1e-12), 0, 1)
            rgb = np.stack([g, g, g], axis=-1) * 0.6
            rgb[mask] = (1.0, 0.0, 0.0)
            axes[2, i].imshow(rgb, interpolation="nearest")
            axes[2, i].set_title("changed inputs (red)", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
