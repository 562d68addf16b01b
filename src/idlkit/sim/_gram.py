"""Gram-matrix algebra shared by the SIM row solvers, and their numpy/torch plumbing.

Every SIM row problem sees the data ``F = (X, U[, 1])`` (``m x d``) through its Gram matrix
``G = F^T F`` and the per-row ``c_i = F^T t_i``, ``||t_i||^2`` (paper 002 Alg. 1 shares ``F``
across rows; thesis Alg. 2 forms ``G`` once). The helpers here are the one home of

* the eigen pseudo-inverse of a PSD matrix (:func:`pinv_psd`, :func:`lstsq_rows`), with
  numpy's ``pinv`` cut-off convention ``rtol * max |eig|`` (default ``rtol = d eps``);
  eigenvalues at or below the cut-off -- including the negative round-off of a Gram matrix --
  count as zero;
* a factor ``R^T R = G`` with the reduced targets ``R^T y_i = c_i`` and the residuals
  ``||t_i - P t_i||`` (:func:`gram_factor`, ``P`` the projector onto ``range(F)``);
* the exact elimination of free (unpenalised, unconstrained) coordinates by partial
  minimisation (:func:`eliminate_free`, a Schur complement);
* numpy-in/numpy-out, tensor-in/tensor-out conversion and the device rule of the batched
  engine (:func:`engine_device`, :func:`to_engine`, :func:`from_engine`).

All computations are float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigurationError

__all__ = ["FreeElimination", "eliminate_free", "engine_device", "from_engine", "gram_factor",
           "lstsq_rows", "pinv_psd", "psd_eig", "to_engine"]

_F64 = torch.float64
_TINY = 1e-300


# ------------------------------------------------------------------------- numpy / torch plumbing


def engine_device(device: Any, *arrays: Any) -> torch.device:
    """The device the engine iterates on: ``device`` if given, else that of the first torch
    tensor among ``arrays``, else the CPU."""
    if device is not None:
        try:
            return torch.device(device)
        except (TypeError, RuntimeError) as e:
            raise ConfigurationError(f"device must name a torch device ('cpu', 'cuda', 'cuda:0'); "
                                     f"got {device!r}") from e
    for a in arrays:
        if isinstance(a, Tensor):
            return a.device
    return torch.device("cpu")


def to_engine(x: Any, device: torch.device) -> Tensor:
    """``x`` (numpy array, tensor or nested sequence) as a float64 tensor on ``device``
    (zero-copy for a float64 CPU array)."""
    if isinstance(x, Tensor):
        return x.detach().to(device=device, dtype=_F64)
    a = np.asarray(x, dtype=np.float64)
    if not a.flags.writeable:  # e.g. a read-only memory map shared by loky: copy (torch warns)
        a = a.copy()
    return torch.as_tensor(a, device=device)


def wants_numpy(*arrays: Any) -> bool:
    """Results are numpy arrays unless an input was a torch tensor."""
    return not any(isinstance(a, Tensor) for a in arrays)


def from_engine(t: Tensor, numpy: bool) -> Any:
    """``t`` back to the caller's type: a numpy array (on the CPU) or the tensor itself."""
    return t.detach().cpu().numpy() if numpy else t


# ------------------------------------------------------------------------- eigen algebra


def psd_eig(M: Tensor, rtol: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(ev, V, keep)``: the eigen decomposition of the symmetric PSD ``M`` and the mask of the
    eigenvalues above ``rtol * max |ev|`` (default ``rtol = d eps``, numpy's rank cut-off)."""
    ev, V = torch.linalg.eigh(M)
    d = M.shape[0]
    tol = d * float(np.finfo(np.float64).eps) if rtol is None else rtol
    top = float(ev.abs().max()) if ev.numel() else 0.0
    keep = ev > max(top, _TINY) * tol
    return ev, V, keep


def pinv_psd(M: Any, rtol: float | None = None) -> Any:
    """Pseudo-inverse of a symmetric PSD matrix through one ``eigh`` (cut-off as
    :func:`psd_eig`), exactly symmetric; numpy in, numpy out."""
    Mt = to_engine(M, engine_device(None, M))
    if Mt.numel() == 0:
        return from_engine(Mt.clone(), wants_numpy(M))
    ev, V, keep = psd_eig(Mt, rtol)
    inv = torch.where(keep, 1.0 / torch.where(keep, ev, torch.ones_like(ev)), torch.zeros_like(ev))
    P = (V * inv) @ V.T
    return from_engine(0.5 * (P + P.T), wants_numpy(M))


def lstsq_rows(G: Any, C: Any, rtol: float | None = None) -> Any:
    """Minimum-norm least-squares rows ``G^+ c_i`` for the rows ``c_i`` of ``C``."""
    dev = engine_device(None, G, C)
    Gt, Ct = to_engine(G, dev), to_engine(C, dev)
    ev, V, keep = psd_eig(Gt, rtol)
    inv = torch.where(keep, 1.0 / torch.where(keep, ev, torch.ones_like(ev)), torch.zeros_like(ev))
    return from_engine(((Ct @ V) * inv) @ V.T, wants_numpy(G, C))


def gram_factor(G: Any, C: Any, tt: Any) -> tuple[Any, Any, Any]:
    """A factor ``R`` (``rank x d``) with ``R^T R = G``, the reduced targets ``y_i`` with
    ``R^T y_i = c_i`` and the residuals ``sqrt(||t_i||^2 - ||y_i||^2)`` (``= ||t_i - P t_i||``),
    from the Gram form alone. The subtraction loses half the digits of a small residual: where
    ``F`` itself is at hand, :func:`idlkit.sim.cvx.factor` is the accurate one."""
    dev = engine_device(None, G, C, tt)
    Gt, Ct, tq = to_engine(G, dev), to_engine(C, dev), to_engine(tt, dev)
    ev, V, keep = psd_eig(Gt)
    sq = torch.sqrt(ev[keep])
    R = sq[:, None] * V[:, keep].T
    Y = (Ct @ V[:, keep]) / sq
    resid = torch.sqrt(torch.clamp(tq - (Y * Y).sum(dim=1), min=0.0))
    numpy = wants_numpy(G, C, tt)
    return from_engine(R, numpy), from_engine(Y, numpy), from_engine(resid, numpy)


# ------------------------------------------------------------------------- free coordinates


@dataclass(frozen=True)
class FreeElimination:
    """Exact partial minimisation of ``1/2 w^T G w - c_i^T w`` over the free coordinates ``U``.

    ``w_U = G_UU^+ (c_U - G_US w_S)`` leaves ``1/2 w_S^T H w_S - b_i^T w_S + const_i`` with the
    Schur complement ``H = G_SS - G_SU G_UU^+ G_US``, ``b_i = c_S - G_SU G_UU^+ c_U`` and
    ``const_i = -1/2 c_U^T G_UU^+ c_U`` (exact when ``c_U`` lies in the range of ``G_UU``, as
    for ``G = F^T F``, ``c = F^T z``). Fields are numpy arrays or tensors, as the input.

    Attributes:
        H: ``(|S|, |S|)`` Schur complement.
        B: ``(rows, |S|)`` reduced linear terms ``b_i``.
        const: ``(rows,)`` constants ``const_i``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> F = rng.standard_normal((8, 3)); G = F.T @ F; C = rng.standard_normal((2, 8)) @ F
        >>> el = eliminate_free(G, C, np.array([False, False, True]))
        >>> XS = np.zeros((2, 2))
        >>> wU = el.free_part(XS)                                  # best w_U for w_S = 0
        >>> wU.shape, np.allclose(wU[:, 0], C[:, 2] / G[2, 2])
        ((2, 1), True)
    """

    H: Any
    B: Any
    const: Any
    _CU: Any
    _PU: Any
    _K: Any

    def free_part(self, XS: Any) -> Any:
        """The optimal free coordinates ``w_U`` for the rows ``w_S`` of ``XS``.

        Args:
            XS: ``(rows, |S|)`` constrained coordinates ``w_S``.

        Returns:
            ``(rows, |U|)`` optimal free coordinates, of ``XS``'s kind.
        """
        return self._CU @ self._PU - XS @ self._K


def eliminate_free(G: Any, C: Any, free: Any) -> FreeElimination:
    """:class:`FreeElimination` of the ``free`` coordinates (boolean mask) of all rows of ``C``;
    numpy in, numpy out (tensors in, tensors out, on their device).

    Args:
        G: ``(d, d)`` Gram matrix.
        C: ``(rows, d)`` linear terms ``c_i``.
        free: boolean ``(d,)`` mask of the free coordinates ``U``.

    Returns:
        :class:`FreeElimination` (NumPy or tensors, as the input).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> F = rng.standard_normal((8, 3)); G = F.T @ F; C = rng.standard_normal((2, 8)) @ F
        >>> free = np.array([False, False, True])           # the last coordinate (the bias) is free
        >>> el = eliminate_free(G, C, free)
        >>> el.H.shape, el.B.shape
        ((2, 2), (2, 2))
        >>> H = G[:2, :2] - G[:2, 2:] @ np.linalg.pinv(G[2:, 2:]) @ G[2:, :2]   # Schur complement
        >>> np.allclose(el.H, H)
        True
    """
    numpy = wants_numpy(G, C)
    dev = engine_device(None, G, C)
    Gt, Ct = to_engine(G, dev), to_engine(C, dev)
    fr = torch.as_tensor(np.asarray(free.cpu() if isinstance(free, Tensor) else free, dtype=bool),
                         device=dev)
    S, U = torch.nonzero(~fr).flatten(), torch.nonzero(fr).flatten()
    r = Ct.shape[0]
    if not U.numel():
        out = (Gt, Ct.clone(), Ct.new_zeros(r), Ct.new_zeros((r, 0)), Ct.new_zeros((0, 0)),
               Ct.new_zeros((S.numel(), 0)))
    else:
        PU = pinv_psd(Gt[U][:, U])
        GSU = Gt[S][:, U]
        K = GSU @ PU  # G_SU G_UU^+
        H = Gt[S][:, S] - K @ GSU.T
        CU = Ct[:, U]
        out = (0.5 * (H + H.T), Ct[:, S] - CU @ K.T, -0.5 * ((CU @ PU) * CU).sum(dim=1), CU, PU, K)
    return FreeElimination(*(from_engine(t, numpy) for t in out))
