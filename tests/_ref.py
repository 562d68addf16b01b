"""Independent reference computations for the idlkit tests.

Everything here is written from the papers' equations with plain numpy / torch
operations and does not call into idlkit, so the tests compare the library
against an independent implementation.
"""

from __future__ import annotations

import numpy as np
import torch

# activation names accepted by get_activation / ImplicitModel (componentwise ones)
COMPONENTWISE = ["relu", "leaky_relu", "tanh", "sigmoid", "identity"]


def ref_phi(name: str, slope: float = 0.01):
    """Torch reference of a componentwise activation, written independently."""
    if name == "relu":
        return lambda z: torch.clamp(z, min=0)
    if name == "leaky_relu":
        return lambda z: torch.where(z > 0, z, slope * z)
    if name == "tanh":
        return lambda z: 1.0 - 2.0 / (torch.exp(2.0 * z) + 1.0)
    if name == "sigmoid":
        return lambda z: 1.0 / (1.0 + torch.exp(-z))
    if name == "identity":
        return lambda z: z * 1.0
    raise KeyError(name)


def ref_phi_np(name: str, slope: float = 0.01):
    """Numpy reference of a componentwise activation."""
    if name == "relu":
        return lambda z: np.maximum(z, 0.0)
    if name == "leaky_relu":
        return lambda z: np.where(z > 0, z, slope * z)
    if name == "tanh":
        return np.tanh
    if name == "sigmoid":
        return lambda z: 1.0 / (1.0 + np.exp(-z))
    if name == "identity":
        return lambda z: z
    raise KeyError(name)


def ref_block_softmax(z: torch.Tensor, bs: int) -> torch.Tensor:
    """SoftMax over consecutive blocks of ``bs`` rows of ``z`` (n, m), plain torch ops."""
    outs = []
    for s in range(0, z.shape[0], bs):
        blk = z[s:s + bs]
        e = torch.exp(blk - blk.max(dim=0, keepdim=True).values)
        outs.append(e / e.sum(dim=0, keepdim=True))
    return torch.cat(outs, dim=0)


def ref_block_max(z: torch.Tensor, bs: int) -> torch.Tensor:
    """Max over each block of ``bs`` rows, written in the block's first slot, zeros elsewhere."""
    outs = []
    for s in range(0, z.shape[0], bs):
        blk = z[s:s + bs]
        top = blk.max(dim=0, keepdim=True).values
        outs.append(torch.cat([top, torch.zeros_like(blk[1:])], dim=0))
    return torch.cat(outs, dim=0)


def unrolled_picard(phi, A: torch.Tensor, Z0: torch.Tensor, iters: int) -> torch.Tensor:
    """``x <- phi(A x + Z0)`` unrolled with plain torch ops (autograd flows through it)."""
    X = torch.zeros_like(Z0)
    for _ in range(iters):
        X = phi(A @ X + Z0)
    return X


def picard_numpy(phi, A: np.ndarray, b: np.ndarray, tol: float = 1e-13,
                 max_iter: int = 100_000) -> np.ndarray:
    """Plain numpy Picard iteration to a tight tolerance (reference solution)."""
    X = np.zeros_like(b)
    for _ in range(max_iter):
        Xn = phi(A @ X + b)
        if np.abs(Xn - X).max() <= tol:
            return Xn
        X = Xn
    raise AssertionError("reference Picard did not converge")


def scale_to_inf_norm(A: np.ndarray, target: float) -> np.ndarray:
    """``A`` rescaled so that its max-row-sum norm is ``target``."""
    s = np.abs(A).sum(axis=1).max()
    return A * (target / s) if s > 0 else A


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)
