"""Sparse matrices of the linear layers of standard networks (paper 000 §3.1-3.3).

Each function returns the per-sample map of one layer as a float64 scipy CSR matrix
built by index arithmetic, ``(out_size, in_size)`` on C-order flattened tensors, never
a dense ``(out x in)`` matrix: a convolution is the Toeplitz-structured matrix of §3.3
(``nnz = out_size * (C_in / groups) * prod(kernel)`` minus the padding), average
pooling a matrix of ``1 / window`` entries, batch normalisation the diagonal of §3.1.
Max pooling is not linear: :func:`maxpool2d_windows` gives the index matrix that
copies each window into one BLIP block of the max-over-blocks map (§3.3).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

__all__ = ["conv2d_matrix", "avgpool2d_matrix", "adaptive_avgpool2d_matrix", "maxpool2d_windows",
           "channel_scale"]


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> sp.csr_array:
    M = sp.csr_array((vals.astype(np.float64), (rows.astype(np.int64), cols.astype(np.int64))),
                     shape=shape)
    M.sum_duplicates()
    return M


def conv2d_matrix(weight: np.ndarray, in_shape: tuple[int, int, int], out_hw: tuple[int, int],
                  stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                  groups: int) -> sp.csr_array:
    """Matrix of a 2-D cross-correlation (``nn.Conv2d`` without bias, zero padding), §3.3.

    ``weight``: ``(C_out, C_in / groups, kh, kw)``; ``in_shape``: ``(C_in, H, W)``;
    ``out_hw``: the output's ``(H_out, W_out)``; ``padding``: the top/left padding.
    Output entry ``(o, i, j)`` reads input ``(g C_in/groups + c, i s_h - p_h + a d_h,
    j s_w - p_w + b d_w)`` with weight ``w[o, c, a, b]``, ``g = o // (C_out / groups)``.

    Args:
        weight: ``(C_out, C_in / groups, kh, kw)`` kernel.
        in_shape: ``(C_in, H, W)`` input shape.
        out_hw: ``(H_out, W_out)`` output size.
        stride: ``(s_h, s_w)``.
        padding: top/left zero padding ``(p_h, p_w)``.
        dilation: ``(d_h, d_w)``.
        groups: number of channel groups.

    Returns:
        ``(C_out H_out W_out, C_in H W)`` SciPy CSR matrix on the flattened (C, H, W) vectors.

    Examples:
        >>> conv = torch.nn.Conv2d(2, 3, 3, padding=1, bias=False)
        >>> x = torch.randn(1, 2, 5, 5)
        >>> M = conv2d_matrix(conv.weight.detach().numpy(), (2, 5, 5), (5, 5), (1, 1), (1, 1), (1, 1), 1)
        >>> M.shape, np.allclose(M @ x.flatten().numpy(), conv(x).flatten().detach().numpy(), atol=1e-5)
        ((75, 50), True)
    """
    Co, Cig, kh, kw = weight.shape
    Ci, H, W = in_shape
    Ho, Wo = out_hw
    per_group = Co // groups
    o = np.arange(Co).reshape(-1, 1, 1, 1, 1, 1)
    c = np.arange(Cig).reshape(1, -1, 1, 1, 1, 1)
    a = np.arange(kh).reshape(1, 1, -1, 1, 1, 1)
    b = np.arange(kw).reshape(1, 1, 1, -1, 1, 1)
    i = np.arange(Ho).reshape(1, 1, 1, 1, -1, 1)
    j = np.arange(Wo).reshape(1, 1, 1, 1, 1, -1)
    r = i * stride[0] - padding[0] + a * dilation[0]
    s = j * stride[1] - padding[1] + b * dilation[1]
    ci = (o // per_group) * Cig + c
    shape = (Co, Cig, kh, kw, Ho, Wo)
    valid = np.broadcast_to((r >= 0) & (r < H) & (s >= 0) & (s < W), shape)
    rows = np.broadcast_to((o * Ho + i) * Wo + j, shape)[valid]
    cols = np.broadcast_to((ci * H + r) * W + s, shape)[valid]
    vals = np.broadcast_to(weight.reshape(Co, Cig, kh, kw, 1, 1), shape)[valid]
    return _csr(rows, cols, vals, (Co * Ho * Wo, Ci * H * W))


def _pool_windows(C: int, H: int, W: int, Ho: int, Wo: int, kernel: tuple[int, int],
                  stride: tuple[int, int], padding: tuple[int, int],
                  dilation: tuple[int, int] = (1, 1)) -> tuple[np.ndarray, ...]:
    """Window coordinates, shape ``(C, Ho, Wo, kh, kw)``: ``(channel, row, col, valid)``."""
    c = np.arange(C).reshape(-1, 1, 1, 1, 1)
    i = np.arange(Ho).reshape(1, -1, 1, 1, 1)
    j = np.arange(Wo).reshape(1, 1, -1, 1, 1)
    a = np.arange(kernel[0]).reshape(1, 1, 1, -1, 1)
    b = np.arange(kernel[1]).reshape(1, 1, 1, 1, -1)
    r = i * stride[0] - padding[0] + a * dilation[0]
    s = j * stride[1] - padding[1] + b * dilation[1]
    shape = (C, Ho, Wo, kernel[0], kernel[1])
    valid = (r >= 0) & (r < H) & (s >= 0) & (s < W)
    return tuple(np.broadcast_to(x, shape) for x in (c, i, j, r, s, valid))


def avgpool2d_matrix(in_shape: tuple[int, int, int], out_hw: tuple[int, int], kernel: tuple[int, int],
                     stride: tuple[int, int], padding: tuple[int, int], count_include_pad: bool,
                     divisor_override: int | None) -> sp.csr_array:
    """Matrix of ``nn.AvgPool2d`` (the divisor rule of PyTorch's kernel, ceil mode included).

    Args:
        in_shape: ``(C, H, W)`` input shape.
        out_hw: ``(H_out, W_out)`` output size.
        kernel: ``(kh, kw)`` window.
        stride: ``(s_h, s_w)``.
        padding: ``(p_h, p_w)``.
        count_include_pad: count padded positions in the divisor (as ``nn.AvgPool2d``).
        divisor_override: a fixed divisor, or ``None``.

    Returns:
        ``(C H_out W_out, C H W)`` SciPy CSR matrix.

    Examples:
        >>> x = torch.randn(1, 2, 4, 4)
        >>> M = avgpool2d_matrix((2, 4, 4), (2, 2), (2, 2), (2, 2), (0, 0), True, None)
        >>> ref = torch.nn.functional.avg_pool2d(x, 2)
        >>> M.shape, np.allclose(M @ x.flatten().numpy(), ref.flatten().numpy(), atol=1e-6)
        ((8, 32), True)
    """
    C, H, W = in_shape
    Ho, Wo = out_hw
    c, i, j, r, s, valid = _pool_windows(C, H, W, Ho, Wo, kernel, stride, padding)
    hs = np.arange(Ho) * stride[0] - padding[0]
    ws = np.arange(Wo) * stride[1] - padding[1]
    he, we = np.minimum(hs + kernel[0], H + padding[0]), np.minimum(ws + kernel[1], W + padding[1])
    pool = (he - hs)[:, None] * (we - ws)[None, :]
    n_valid = ((np.minimum(he, H) - np.maximum(hs, 0))[:, None]
               * (np.minimum(we, W) - np.maximum(ws, 0))[None, :])
    if divisor_override:
        div = np.full((Ho, Wo), float(divisor_override))
    else:
        div = (pool if count_include_pad else n_valid).astype(np.float64)
    rows = ((c * Ho + i) * Wo + j)[valid]
    cols = ((c * H + r) * W + s)[valid]
    vals = np.broadcast_to((1.0 / div)[None, :, :, None, None], valid.shape)[valid]
    return _csr(rows, cols, vals, (C * Ho * Wo, C * H * W))


def adaptive_avgpool2d_matrix(in_shape: tuple[int, int, int], out_hw: tuple[int, int]) -> sp.csr_array:
    """Matrix of ``nn.AdaptiveAvgPool2d``: window ``[floor(i H / Ho), ceil((i + 1) H / Ho))``.

    Args:
        in_shape: ``(C, H, W)`` input shape.
        out_hw: ``(H_out, W_out)`` output size.

    Returns:
        ``(C H_out W_out, C H W)`` SciPy CSR matrix.

    Examples:
        >>> x = torch.randn(1, 2, 5, 5)
        >>> M = adaptive_avgpool2d_matrix((2, 5, 5), (2, 2))
        >>> ref = torch.nn.functional.adaptive_avg_pool2d(x, 2)
        >>> M.shape, np.allclose(M @ x.flatten().numpy(), ref.flatten().numpy(), atol=1e-6)
        ((8, 50), True)
    """
    C, H, W = in_shape
    Ho, Wo = out_hw
    rows, cols, vals = [], [], []
    for i in range(Ho):
        h0, h1 = (i * H) // Ho, -((-(i + 1) * H) // Ho)
        for j in range(Wo):
            w0, w1 = (j * W) // Wo, -((-(j + 1) * W) // Wo)
            rr, ss = np.meshgrid(np.arange(h0, h1), np.arange(w0, w1), indexing="ij")
            k = rr.size
            ch = np.arange(C)[:, None]
            rows.append(np.broadcast_to((ch * Ho + i) * Wo + j, (C, k)).ravel())
            cols.append(((ch * H + rr.ravel()[None, :]) * W + ss.ravel()[None, :]).ravel())
            vals.append(np.full(C * k, 1.0 / k))
    return _csr(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals),
                (C * Ho * Wo, C * H * W))


def maxpool2d_windows(in_shape: tuple[int, int, int], out_hw: tuple[int, int], kernel: tuple[int, int],
                      stride: tuple[int, int], padding: tuple[int, int],
                      dilation: tuple[int, int]) -> np.ndarray:
    """``(C Ho Wo, kh kw)`` indices into the flattened input: row ``o`` lists window ``o``.

    Padded (out-of-range) positions are replaced by the window's first valid entry,
    which leaves the max unchanged and keeps every block the same size (BlockMax).

    Args:
        in_shape: ``(C, H, W)`` input shape.
        out_hw: ``(H_out, W_out)`` output size.
        kernel: ``(kh, kw)`` window.
        stride: ``(s_h, s_w)``.
        padding: ``(p_h, p_w)``.
        dilation: ``(d_h, d_w)``.

    Returns:
        ``(C H_out W_out, kh kw)`` int array of input indices.

    Raises:
        ValueError: a window that lies entirely in the padding.

    Examples:
        >>> x = torch.randn(1, 1, 4, 4)
        >>> W = maxpool2d_windows((1, 4, 4), (2, 2), (2, 2), (2, 2), (0, 0), (1, 1))
        >>> ref = torch.nn.functional.max_pool2d(x, 2)
        >>> W.shape, np.allclose(x.flatten().numpy()[W].max(1), ref.flatten().numpy())
        ((4, 4), True)
    """
    C, H, W = in_shape
    Ho, Wo = out_hw
    c, i, j, r, s, valid = _pool_windows(C, H, W, Ho, Wo, kernel, stride, padding, dilation)
    K = kernel[0] * kernel[1]
    idx = ((c * H + r) * W + s).reshape(-1, K)
    ok = valid.reshape(-1, K)
    if not bool(ok.any(axis=1).all()):
        raise ValueError("a max-pooling window lies entirely in the padding")
    first = idx[np.arange(idx.shape[0]), ok.argmax(axis=1)]
    return np.where(ok, idx, first[:, None])


def channel_scale(scale: np.ndarray, shift: np.ndarray, shape: tuple[int, ...]
                  ) -> tuple[sp.csr_array, np.ndarray]:
    """Diagonal map ``v -> scale[c] v + shift[c]`` over channel ``c = dim 0`` of ``shape`` (§3.1).

    Args:
        scale: ``(C,)`` per-channel factors.
        shift: ``(C,)`` per-channel offsets.
        shape: the tensor shape ``(C, ...)`` (batch excluded).

    Returns:
        ``(M, v)``: the diagonal SciPy CSR matrix and the offset vector, both of size ``prod(shape)``.

    Examples:
        >>> M, c = channel_scale(np.array([2.0, 3.0]), np.array([0.0, 1.0]), (2, 1, 2))
        >>> M.toarray().diagonal().tolist(), c.tolist()
        ([2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0])
    """
    rest = math.prod(shape[1:])
    return sp.diags_array(np.repeat(scale, rest)).tocsr(), np.repeat(shift, rest)
