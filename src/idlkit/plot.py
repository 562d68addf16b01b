"""matplotlib figures of implicit models.

matplotlib is imported lazily inside each function (an optional dependency, extra
``plot``); a clear :class:`ImportError` names the fix when it is missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["spy"]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("idlkit.plot needs matplotlib: pip install 'idlkit[plot]' "
                          "(or pip install matplotlib)") from exc
    return plt


def _pattern(A: Tensor) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Row and column indices of the nonzeros of a dense or sparse matrix (never densified)."""
    if A.layout != torch.strided:
        coo = A.detach().to_sparse_coo().coalesce()
        keep = coo.values() != 0
        r, c = coo.indices()[:, keep].cpu().numpy()
    else:
        r, c = np.nonzero(A.detach().cpu().numpy())
    return r, c, (int(A.shape[0]), int(A.shape[1]))


def spy(model: Any, ax: Any = None, *, matrix: str = "A", markersize: float = 0.05,
        max_points: int = 2_000_000, color: str = "tab:blue", seed: int = 0) -> Any:
    """Sparsity pattern of ``model.A`` (or ``B``, ``C``, ``D``), as paper 000 Fig. 7.

    Nonzeros are drawn as points (row ``i`` down, column ``j`` right, like ``plt.spy``);
    for a converted network the convolutions show as Toeplitz-structured blocks above
    the diagonal and the residual connections as straight lines. Above ``max_points``
    nonzeros a uniform random subset (``seed``) is drawn. Returns the ``Axes``.
    """
    plt = _pyplot()
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
