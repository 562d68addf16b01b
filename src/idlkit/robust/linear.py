"""Linear bound propagation (CROWN, alpha-CROWN) for implicit models under an l_inf input box.

Input set: ``U = {u : |u - u0| <= sigma_u}`` (paper 000 eq. 4.1), optionally intersected with a
valid input range ``clip = (lo, hi)``. Model: ``x = phi(z)``, ``z = A x + B u + b``,
``y = C x + D u + d`` with a componentwise ``phi`` (a :class:`~idlkit.activations.Blockwise` of
componentwise maps and ``Centered`` shifts included; block maps are not supported: use IBP or the
Thm 4.1 box).

**Relaxations.** For each state ``i`` with pre-activation interval ``z_i in [l_i, h_i]`` two
*families* of lines are built (:func:`relax`), each the convex combination
``(1 - t) L0 + t L1``, ``t in [0, 1]``, of two lines that are sound on ``[l, h]``:
``L0(z) <= phi(z)`` and ``L1(z) <= phi(z)`` imply ``(1 - t) L0 + t L1 <= phi`` (and likewise for
upper lines). Hence *every* ``t`` gives a sound relaxation, which is what makes alpha-CROWN
sound for any parameters.

* ``phi`` convex on ``[l, h]`` (ReLU, leaky ReLU with slope <= 1, softplus, ELU/CELU with
  ``alpha <= 1``, the convex side of tanh/sigmoid/hardtanh): upper = the chord; lower = the
  tangents at ``l`` and ``h`` (sound for a convex map; at a kink torch's one-sided derivative is a
  subgradient). For ReLU with ``l < 0 < h`` this is exactly CROWN's relaxation: upper chord
  ``h (z - l) / (h - l)``, lower ``alpha z`` with ``alpha = t``; CROWN's default
  ``t = 1 if h >= -l else 0`` (the "adaptive" choice).
* ``phi`` concave on ``[l, h]``: the mirror image (lower = chord, upper = tangents).
* otherwise (an inflection inside, or a map of unknown shape, monotone or not): the slope range
  ``phi' in [a, b]`` on ``[l, h]`` gives ``phi(l) + a (z - l) <= phi(z)`` and
  ``phi(h) + b (z - h) <= phi(z)``, and ``phi(z) <= phi(l) + b (z - l)``, ``phi(z) <= phi(h) + a (z - h)``
  (integrate ``a <= phi' <= b``). ``[a, b]`` is the activation's global ``[slope_min, slope_max]``
  (always sound), or the local range for the maps whose derivative is unimodal with its peak at
  0 (tanh, sigmoid, softsign: ``a = min(phi'(l), phi'(h))``, ``b = phi'(clip(0, l, h))``).

**Triangular ``A`` (CROWN).** A converted feed-forward network has a strictly triangular ``A`` up
to a permutation: the states form dependency levels (paper 000 Thm 2.8-2.9, as in
:mod:`idlkit.robust.ibp`). For level ``k`` the rows ``z_S = A_S x + B_S u + b_S`` are bounded by
backward substitution through the levels ``k - 1, ..., 0``: a coefficient vector ``lam`` on
``x_T`` is replaced by ``lam+ (a_u z_T + c_u) + lam- (a_l z_T + c_l)`` (an upper bound), then
``z_T = A_T x + B_T u + b_T``, until only ``u`` is left; the linear function of ``u`` is maximised
over the box in closed form (``lam_u u_c + |lam_u| u_r``). Lower bounds are ``-upper(-f)``. The
pre-activation intervals of level ``k`` use the relaxations of the earlier levels; the outputs
use all levels. With the relaxations above this is CROWN (Zhang et al. 2018) exactly.

**alpha-CROWN.** The family parameters ``t`` (lower and upper families, one per unit, per
objective row and side) become free variables for every pair (bounded level ``k``, relaxed level
``j < k``) and for the outputs, as in auto_LiRPA's alpha-CROWN; they are optimised by projected
Adam steps (clamp to ``[0, 1]``) from CROWN's choice, minimising the sum of the output bounds,
with each iterate's pre-activation intervals intersected with CROWN's. Every iterate is a sound
bound (every ``t`` gives sound lines on sound intervals), so the elementwise best over the
iterates, which is returned (outputs and states), is sound and never looser than CROWN.

**CROWN-IBP** (``intermediate="ibp"``): IBP's pre-activation intervals and one backward pass for
the outputs, on the sparse matrices as they are (for models too large to densify).

**General ``A`` (non-triangular).** Let ``[x_lo, x_hi]`` be a box known to contain ``x(u)`` for
all ``u in U``, and ``[l, h]`` intervals containing ``z(u)``. For an objective ``lam_0^T x``
the same substitution as above gives, after one step, ``lam_0^T x <= lam_1^T x + g_1(u)`` with
``lam_1 = (lam_0+ a_u + lam_0- a_l) A`` and ``g_1`` affine in ``u`` (the equilibrium equation is
used once: ``z = A x + B u + b``). Repeating gives, for every ``K``,
``lam_0^T x <= lam_K^T x + g_K(u) <= max_{x in box} lam_K^T x + max_{u in U} g_K(u)``:
**each truncation is a sound bound** (no contraction is needed for soundness), and we keep the
best over ``K``. When ``|a| |A|`` is a contraction (``lambda_pf(gamma |A|) < 1``, as Thm 4.1
asks) ``lam_K -> 0`` geometrically and the box term vanishes. The sound starting box is Thm 4.1
around the nominal state ``x0`` computed by the model, widened by the certified error bound
``(I - gamma |A|)^-1 |r|`` of its residual ``r = x0 - phi(A x0 + B u0 + b)`` (so the bounds hold
for the exact equilibrium, whatever the solver's tolerance; :func:`equilibrium_error`). Then up
to ``rounds`` refinements: the ``z`` rows (``lam_0 = A_i``) are bounded this way, intersected
with their interval bounds and the previous round's, the relaxations rebuilt, and the state box
intersected with ``phi([l, h])`` (each step keeps every interval sound); the rounds stop when they
narrow the intervals by less than 0.1 %. alpha optimises the output bound's parameters only.
When Thm 4.1 cannot be certified (``lambda_pf(gamma |A|) >= 1``) a
:class:`~idlkit.errors.WellPosednessError` is raised: there is no sound starting box.

**Rounding.** Pre-activation intervals are widened outward by ``2 (n + p + 4) eps`` times the
magnitude ``|lam_u| |u| + sum |terms|`` of the linear bound (the rounding of our sums and of the
model's own float64 evaluation) plus ``1e-12 (1 + |value|)`` (the ulp-level error of the
relaxation slopes computed in float64); the returned bounds get the same widening and a final
``nextafter`` outward. The widening is ~1e-12 relative: negligible next to any input box.

Float64 throughout (a float32 model is copied to float64; the bounds hold for its float64
evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._matrix import block_pattern_graph, to_dense
from .._validation import check_choice, check_int, check_scalar
from ..activations import Activation, Blockwise, Centered, ComponentwiseActivation
from ..errors import ConfigurationError, NonFiniteError
from ._model import as_batch64, as_sigma, componentwise_maps

__all__ = ["LinearBounds", "linear_bounds", "relax", "Relaxation", "state_levels", "equilibrium_error"]

_EPS = float(np.finfo(np.float64).eps)
_REL = 1e-12
_DENSE_MAX = 30_000_000  # entries of a dense A (240 MB) the linear bounds accept


@dataclass(frozen=True)
class LinearBounds:
    """Linear-relaxation bounds (float64, batch-first).

    Attributes:
        x_lower: ``(batch, n)`` lower state bounds; every state of every input of the set lies
            above.
        x_upper: ``(batch, n)`` upper state bounds.
        y_lower: ``(batch, q)`` lower output bounds.
        y_upper: ``(batch, q)`` upper output bounds.
        method: ``"crown"``, ``"alpha-crown"`` (triangular ``A``) or ``"linear-fixed-point"``,
            ``"alpha-linear-fixed-point"`` (general ``A``).
        levels: number of dependency levels (``0`` for a general ``A``).
    """

    x_lower: Tensor
    x_upper: Tensor
    y_lower: Tensor
    y_upper: Tensor
    method: str
    levels: int


# ----------------------------------------------------------------------------- relaxations

@dataclass(frozen=True)
class Relaxation:
    """Two line families on a set of units, ``(batch, k)`` tensors each.

    Lower: ``(1 - t) (ls0 z + lo0) + t (ls1 z + lo1) <= phi(z)``; upper likewise with ``us*``,
    ``uo*`` and ``>=``; sound for every ``t in [0, 1]`` on the unit's interval. ``tl``, ``tu``:
    CROWN's default parameters.

    Attributes:
        ls0: slopes of the first lower line.
        lo0: offsets of the first lower line.
        ls1: slopes of the second lower line.
        lo1: offsets of the second lower line.
        us0: slopes of the first upper line.
        uo0: offsets of the first upper line.
        us1: slopes of the second upper line.
        uo1: offsets of the second upper line.
        tl: CROWN's default lower parameters in ``[0, 1]``.
        tu: CROWN's default upper parameters in ``[0, 1]``.
    """

    ls0: Tensor
    lo0: Tensor
    ls1: Tensor
    lo1: Tensor
    us0: Tensor
    uo0: Tensor
    us1: Tensor
    uo1: Tensor
    tl: Tensor
    tu: Tensor

    def lines(self, tl: Tensor | None = None, tu: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(a_l, c_l, a_u, c_u)`` for parameters ``tl``, ``tu`` (default CROWN's); the
        parameters may carry extra leading dimensions (one per objective row).

        Args:
            tl: lower-line parameters in ``[0, 1]``, ``(..., batch, k)``; ``None``: CROWN's.
            tu: upper-line parameters likewise.

        Returns:
            ``(a_l, c_l, a_u, c_u)``: slopes and offsets of the lower and upper lines.
        """
        rows = (tl is not None and tl.dim() == 3) or (tu is not None and tu.dim() == 3)
        e = (lambda v: v[:, None, :]) if rows else (lambda v: v)  # noqa: E731
        tl = e(self.tl) if tl is None else tl
        tu = e(self.tu) if tu is None else tu
        al = e(self.ls0) + tl * e(self.ls1 - self.ls0)
        cl = e(self.lo0) + tl * e(self.lo1 - self.lo0)
        au = e(self.us0) + tu * e(self.us1 - self.us0)
        cu = e(self.uo0) + tu * e(self.uo1 - self.uo0)
        return al, cl, au, cu

    @property
    def free(self) -> Tensor:
        """Units whose parameters change a line (for the optimiser)."""
        return ((self.ls0 != self.ls1) | (self.lo0 != self.lo1) | (self.us0 != self.us1)
                | (self.uo0 != self.uo1))


def _shape(f: ComponentwiseActivation) -> tuple[float, float]:
    """``(c1, c2)``: ``f`` is convex on ``(-inf, c1]`` and concave on ``[c2, inf)``."""
    name = getattr(f, "name", "")
    inf = math.inf
    if name == "identity":
        return inf, -inf
    if name == "relu":
        return inf, 0.0
    if name == "leaky_relu":
        return (inf, 0.0) if f.negative_slope <= 1 else (0.0, -inf)  # type: ignore[attr-defined]
    if name in ("tanh", "sigmoid", "softsign"):
        return 0.0, 0.0
    if name in ("hardtanh", "relu6"):
        return f.max_val, f.min_val  # type: ignore[attr-defined]
    if name == "hardsigmoid":
        return 3.0, -3.0
    if name == "softplus":
        return inf, inf
    if name in ("elu", "celu"):
        a = float(getattr(f, "alpha", 1.0))
        if 0 <= a <= 1 or name == "celu":
            return inf, 0.0
        return (0.0, 0.0) if a > 1 else (-inf, inf)
    if name == "selu":
        return 0.0, 0.0
    if name == "logsigmoid":
        return -inf, -inf
    return -inf, inf  # unknown shape: the slope-range lines only


def _local_slopes(f: ComponentwiseActivation, l: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """Slope range of ``f`` on ``[l, h]`` (sound; slightly widened for the rounding of ``f'``)."""
    if getattr(f, "name", "") in ("tanh", "sigmoid", "softsign"):
        a = torch.minimum(f.derivative(l), f.derivative(h))
        b = f.derivative(torch.clamp(torch.zeros_like(l), l, h))
        return a * (1 - 4 * _EPS), b * (1 + 4 * _EPS)
    return torch.full_like(l, float(f.slope_min)), torch.full_like(l, float(f.slope_max))


def relax(f: Activation, l: Tensor, h: Tensor) -> Relaxation:
    """The line families of the module docstring for a componentwise map ``f`` on ``[l, h]``.

    Args:
        f: a componentwise activation, possibly ``Centered`` (its shift moves every offset).
        l: ``(batch, k)`` lower pre-activation bounds.
        h: ``(batch, k)`` upper pre-activation bounds, ``l <= h``.

    Examples:
        >>> l = torch.tensor([[-1.0, 0.5]], dtype=torch.float64)
        >>> h = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
        >>> r = relax(idlkit.get_activation("relu"), l, h)
        >>> r.us0.shape
        torch.Size([1, 2])
        >>> z = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None] * (h - l) + l   # points of [l, h]
        >>> upper = r.us0 * z + r.uo0                                                 # one upper line
        >>> bool((torch.relu(z) <= upper + 1e-12).all())
        True
    """
    shift = 0.0
    if isinstance(f, Centered):
        shift = float(f.base(torch.zeros(1, 1, dtype=torch.float64)))
        f = f.base
    if not isinstance(f, ComponentwiseActivation):
        raise ConfigurationError(f"linear bounds need a componentwise activation, got {f!r}; use "
                                 f"method='ibp' or 'box'")
    c1, c2 = _shape(f)
    fl, fh = f(l), f(h)
    w = h - l
    pos = w > 0
    wsafe = torch.where(pos, w, torch.ones_like(w))
    chord = torch.where(pos, (fh - fl) / wsafe, f.derivative(l))
    ch_o = fl - chord * l
    dl, dh = f.derivative(l), f.derivative(h)
    tan_l_o, tan_h_o = fl - dl * l, fh - dh * h
    # the tangent side of a single-curvature interval: the tangents at l and h for the piecewise
    # linear maps (ReLU's alpha family); the tangent at the midpoint for the smooth ones (CROWN's
    # choice there; a fixed line, so alpha does not move it)
    t_sl, t_so, t_hl, t_ho = dl, tan_l_o, dh, tan_h_o
    if getattr(f, "name", "") not in _PIECEWISE_LINEAR:
        mid = (l + h) / 2
        dm = f.derivative(mid)
        t_sl = t_hl = dm
        t_so = t_ho = f(mid) - dm * mid
    a, b = _local_slopes(f, l, h)
    convex = h <= c1
    concave = (l >= c2) & ~convex
    gen = ~(convex | concave)
    # generic lines (slope range)
    g_ls0, g_lo0, g_ls1, g_lo1 = a, fl - a * l, b, fh - b * h
    g_us0, g_uo0, g_us1, g_uo1 = b, fl - b * l, a, fh - a * h
    W = torch.where
    ls0 = W(convex, t_sl, W(concave, chord, g_ls0))
    lo0 = W(convex, t_so, W(concave, ch_o, g_lo0))
    ls1 = W(convex, t_hl, W(concave, chord, g_ls1))
    lo1 = W(convex, t_ho, W(concave, ch_o, g_lo1))
    us0 = W(convex, chord, W(concave, t_sl, g_us0))
    uo0 = W(convex, ch_o, W(concave, t_so, g_uo0))
    us1 = W(convex, chord, W(concave, t_hl, g_us1))
    uo1 = W(convex, ch_o, W(concave, t_ho, g_uo1))
    # CROWN's default: the tangent at the end of larger magnitude (ReLU: alpha = 1 iff h >= -l)
    adapt = (h >= -l).to(l.dtype)
    tl = W(convex, adapt, W(concave, torch.zeros_like(l), torch.full_like(l, 0.5)))
    tu = W(concave, adapt, W(convex, torch.zeros_like(l), torch.full_like(l, 0.5)))
    if getattr(f, "name", "") in _S_SHAPED:
        s_mask = gen & (l < 0) & (h > 0)
        if bool(s_mask.any()):
            us0, uo0, us1, uo1, ls0, lo0, ls1, lo1, tl, tu = _s_shaped(
                f, l, h, fl, fh, dl, dh, chord, ch_o, tan_l_o, tan_h_o, s_mask,
                (us0, uo0, us1, uo1, ls0, lo0, ls1, lo1, tl, tu))
    if shift:
        lo0, lo1, uo0, uo1 = lo0 - shift, lo1 - shift, uo0 - shift, uo1 - shift
    return Relaxation(ls0, lo0, ls1, lo1, us0, uo0, us1, uo1, tl, tu)


_PIECEWISE_LINEAR = ("relu", "leaky_relu", "identity", "hardtanh", "relu6", "hardsigmoid")
_S_SHAPED = ("tanh", "sigmoid", "softsign")  # smooth, convex on (-inf, 0], concave on [0, inf)


def _tangent_point(f: ComponentwiseActivation, lo: Tensor, hi: Tensor, anchor: Tensor, f_anchor: Tensor,
                   keep_hi: bool, iters: int = 60) -> Tensor:
    """Bisection for the point ``d`` whose tangent passes through ``(anchor, f(anchor))``:
    ``g(d) = f(d) + f'(d) (anchor - d) - f(anchor)`` is increasing on ``[lo, hi]`` with a sign change.
    Returns the bracket end with ``g >= 0`` (``keep_hi``) or ``g <= 0``, so that the tangent stays
    on the sound side."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        g = f(mid) + f.derivative(mid) * (anchor - mid) - f_anchor
        pos = g >= 0
        hi = torch.where(pos, mid, hi)
        lo = torch.where(pos, lo, mid)
    return hi if keep_hi else lo


def _s_shaped(f: ComponentwiseActivation, l: Tensor, h: Tensor, fl: Tensor, fh: Tensor, dl: Tensor,
              dh: Tensor, chord: Tensor, ch_o: Tensor, tan_l_o: Tensor, tan_h_o: Tensor, mask: Tensor,
              cur: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Lines of an S-shaped map (convex left of 0, concave right of it) on ``l < 0 < h`` (the units of
    ``mask``), as in CROWN. Upper: the chord when ``f'(h) >= chord slope`` (then the tangent at ``h``
    lies above ``(l, f(l))`` and the chord above ``f``); else the family between the tangent at
    ``d*`` (in ``[0, h]``, the tangent through ``(l, f(l))``) and the tangent at ``h``: a tangent at
    ``d >= d*`` on the concave side lies above ``f`` on ``[0, h]``, above ``f(l)`` at ``l`` (its
    value at ``l`` grows with ``d``) and above ``f(0)``, hence above the convex part. Lower: the
    mirror image (tangents at ``l`` and at ``d_* in [l, 0]``, the tangent through ``(h, f(h))``)."""
    us0, uo0, us1, uo1, ls0, lo0, ls1, lo1, tl, tu = cur
    W = torch.where
    z = torch.zeros_like(l)
    hs, ls = W(mask, h, torch.ones_like(h)), W(mask, l, -torch.ones_like(l))
    d_up = _tangent_point(f, z, hs, ls, f(ls), keep_hi=True)
    d_lo = _tangent_point(f, ls, z, hs, f(hs), keep_hi=False)
    fu, du = f(d_up), f.derivative(d_up)
    fd, dd = f(d_lo), f.derivative(d_lo)
    up_chord = mask & (dh >= chord)
    up_tan = mask & ~up_chord
    lo_chord = mask & (dl >= chord)
    lo_tan = mask & ~lo_chord
    us0 = W(up_chord, chord, W(up_tan, du, us0))
    uo0 = W(up_chord, ch_o, W(up_tan, fu - du * d_up, uo0))
    us1 = W(up_chord, chord, W(up_tan, dh, us1))
    uo1 = W(up_chord, ch_o, W(up_tan, tan_h_o, uo1))
    ls0 = W(lo_chord, chord, W(lo_tan, dl, ls0))
    lo0 = W(lo_chord, ch_o, W(lo_tan, tan_l_o, lo0))
    ls1 = W(lo_chord, chord, W(lo_tan, dd, ls1))
    lo1 = W(lo_chord, ch_o, W(lo_tan, fd - dd * d_lo, lo1))
    tu = W(mask, z, tu)  # the tangent through (l, f(l)), as CROWN
    tl = W(mask, torch.ones_like(l), tl)  # the tangent through (h, f(h))
    return us0, uo0, us1, uo1, ls0, lo0, ls1, lo1, tl, tu


def _segments(act: Activation, n: int) -> list[tuple[int, int, Activation]]:
    """``(start, stop, map)`` per Blockwise segment (one segment for a plain map)."""
    base = act.base if isinstance(act, Centered) else act
    if isinstance(base, Blockwise):
        out, s = [], 0
        for size, a in base.segments:
            a2 = Centered(a) if isinstance(act, Centered) else a
            out.append((s, s + size, a2))
            s += size
        return out
    return [(0, n, act)]


def _relax_units(segs: list[tuple[int, int, Activation]], idx: Tensor, l: Tensor, h: Tensor) -> Relaxation:
    """Relaxation of the units ``idx`` (sorted global state indices) with bounds ``l, h``
    ``(batch, len(idx))``."""
    parts: list[tuple[Tensor, Relaxation]] = []
    for s0, s1, f in segs:
        sel = torch.nonzero((idx >= s0) & (idx < s1)).flatten()
        if sel.numel():
            parts.append((sel, relax(f, l[:, sel], h[:, sel])))
    if len(parts) == 1:
        return parts[0][1]
    fields = {}
    for name in Relaxation.__dataclass_fields__:
        out = torch.empty_like(l)
        for sel, r in parts:
            out[:, sel] = getattr(r, name)
        fields[name] = out
    return Relaxation(**fields)


def _interval(segs: list[tuple[int, int, Activation]], idx: Tensor, l: Tensor, h: Tensor
              ) -> tuple[Tensor, Tensor]:
    """Interval image ``phi([l, h])`` on the units ``idx``, widened by a few ulps."""
    lo, hi = torch.empty_like(l), torch.empty_like(h)
    for s0, s1, f in segs:
        sel = torch.nonzero((idx >= s0) & (idx < s1)).flatten()
        if sel.numel():
            a, b = f.interval(l[:, sel].T, h[:, sel].T)
            lo[:, sel], hi[:, sel] = a.T, b.T
    pad = 16 * _EPS * (1 + torch.maximum(lo.abs(), hi.abs()) + torch.maximum(l.abs(), h.abs()))
    return lo - pad, hi + pad


# ----------------------------------------------------------------------------- model plumbing

def state_levels(A: object) -> np.ndarray | None:
    """Dependency level of each state (``0``: depends on ``u`` only), or ``None`` when the
    dependency graph of ``A`` has a cycle (Thm 2.8-2.9).

    Args:
        A: ``(n, n)`` dense or sparse matrix.

    Returns:
        ``(n,)`` integer array of levels, or ``None`` for a cyclic ``A``.

    Examples:
        >>> state_levels(torch.tensor([[0.0, 1.0], [0.0, 0.0]])).tolist()   # x_1 needs x_2
        [1, 0]
        >>> state_levels(torch.tensor([[0.0, 1.0], [1.0, 0.0]])) is None      # a cycle
        True
    """
    n = A.shape[0]  # type: ignore[attr-defined]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    G = block_pattern_graph(A)
    if G.diagonal().any():
        return None
    nz = np.flatnonzero(np.diff(G.indptr))
    level = np.zeros(n, dtype=np.int64)
    for _ in range(n + 1):
        new = np.zeros(n, dtype=np.int64)
        if nz.size:
            new[nz] = np.maximum.reduceat(level[G.indices], G.indptr[nz]) + 1
        if np.array_equal(new, level):
            return level
        level = new
    return None


def _dense64(M: Tensor | None, shape: tuple[int, int]) -> Tensor:
    if M is None:
        return torch.zeros(shape, dtype=torch.float64)
    M = M.detach().cpu()
    if M.layout != torch.strided:
        if M.shape[0] * M.shape[1] > _DENSE_MAX:
            raise ConfigurationError(
                f"linear bounds densify the model matrices; {tuple(M.shape)} is too large "
                f"(> {_DENSE_MAX} entries). Use method='ibp' or 'box'")
        M = to_dense(M)
    return M.to(torch.float64).reshape(shape)


def _check_activation(model: object) -> list[tuple[int, int, Activation]]:
    act = model.activation  # type: ignore[attr-defined]
    if componentwise_maps(act) is None:
        raise ConfigurationError(
            f"linear bounds (CROWN) need a componentwise activation (or a Blockwise of them), got "
            f"{act!r}. Fix: use method='ibp' (interval propagation, any map, triangular A) or "
            f"method='box' (Thm 4.1-4.4, any Lipschitz map)")
    return _segments(act, model.A.shape[0])  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Net:
    A: Tensor
    B: Tensor
    b: Tensor
    C: Tensor
    D: Tensor
    d: Tensor
    segs: list
    n: int
    p: int
    q: int


def _net(model: object) -> _Net:
    A0 = model.A  # type: ignore[attr-defined]
    n, p = A0.shape[0], model.B.shape[1]  # type: ignore[attr-defined]
    q = model.C.shape[0]  # type: ignore[attr-defined]
    if n * n > _DENSE_MAX:
        raise ConfigurationError(f"linear bounds handle up to ~{int(math.isqrt(_DENSE_MAX))} states "
                                 f"densely, got n = {n}. Use method='ibp' or 'box'")
    segs = _check_activation(model)
    b = getattr(model, "b", None)
    d = getattr(model, "d", None)
    vec = lambda v, k: (torch.zeros(k, dtype=torch.float64) if v is None  # noqa: E731
                        else v.detach().cpu().to(torch.float64).reshape(k))
    return _Net(_dense64(A0, (n, n)), _dense64(model.B, (n, p)), vec(b, n),  # type: ignore[attr-defined]
                _dense64(model.C, (q, n)), _dense64(model.D, (q, p)), vec(d, q), segs, n, p, q)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- backward substitution

@dataclass
class _Lin:
    """An affine bound ``lam_x x + lam_u u + const`` for rows ``(batch, r)``; ``mag`` tracks
    ``sum |terms|`` for the rounding pad."""

    lam_x: Tensor  # (m, r, n)
    lam_u: Tensor  # (m, r, p)
    const: Tensor  # (m, r)
    mag: Tensor    # (m, r)


def _substitute(L: _Lin, T: Tensor, rel: Relaxation, net: _Net, tl: Tensor | None = None,
                tu: Tensor | None = None) -> _Lin:
    """Replace ``lam_x[:, :, T] x_T`` by its upper relaxation and ``z_T = A_T x + B_T u + b_T``."""
    al, cl, au, cu = rel.lines(tl, tu)
    if al.dim() == 2:
        al, cl, au, cu = (v[:, None, :] for v in (al, cl, au, cu))
    lam = L.lam_x[:, :, T]
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    w = pos * au + neg * al
    const = L.const + (pos * cu + neg * cl).sum(-1) + w @ net.b[T]
    mag = L.mag + (lam.abs() * torch.maximum(cu.abs(), cl.abs())).sum(-1) + w.abs() @ net.b[T].abs()
    lam_x = L.lam_x.index_fill(2, T, 0.0) + w @ net.A[T]
    lam_u = L.lam_u + w @ net.B[T]
    return _Lin(lam_x, lam_u, const, mag)


def _concretize(L: _Lin, uc: Tensor, ur: Tensor, n_terms: int) -> Tensor:
    """``max_u`` of the affine bound over the box (``lam_x`` must be zero), widened outward."""
    val = L.const + (L.lam_u @ uc[:, :, None])[..., 0] + (L.lam_u.abs() @ ur[:, :, None])[..., 0]
    mag = L.mag + (L.lam_u.abs() @ (uc.abs() + ur)[:, :, None])[..., 0]
    return val + 2 * (n_terms + 4) * _EPS * mag + _REL * (1 + val.abs())


def _box_term(L: _Lin, xl: Tensor, xh: Tensor) -> tuple[Tensor, Tensor]:
    """``max_{x in box} lam_x x`` and its magnitude."""
    pos, neg = L.lam_x.clamp(min=0), L.lam_x.clamp(max=0)
    v = (pos * xh[:, None, :]).sum(-1) + (neg * xl[:, None, :]).sum(-1)
    mag = (L.lam_x.abs() * torch.maximum(xh.abs(), xl.abs())[:, None, :]).sum(-1)
    return v, mag


def _start(net: _Net, rows_x: Tensor, rows_u: Tensor, const: Tensor, m: int) -> _Lin:
    """The objective ``[f; -f]`` (``2 r`` rows) for each of ``m`` inputs."""
    lx = torch.cat([rows_x, -rows_x])[None].expand(m, -1, -1)
    lu = torch.cat([rows_u, -rows_u])[None].expand(m, -1, -1)
    c = torch.cat([const, -const])[None].expand(m, -1)
    return _Lin(lx, lu, c, c.abs())


def _split(val: Tensor) -> tuple[Tensor, Tensor]:
    r = val.shape[1] // 2
    return -val[:, r:], val[:, :r]


# ----------------------------------------------------------------------------- triangular (CROWN)

def _crown_pass(net: _Net, groups: list[Tensor], uc: Tensor, ur: Tensor, params: dict | None,
                clamp: list[tuple[Tensor, Tensor]] | None
                ) -> tuple[Tensor, Tensor, Tensor, list[Relaxation], list[tuple[Tensor, Tensor]]]:
    """One CROWN pass: pre-activation bounds level by level, then the outputs. ``params[(k, j)]``:
    the family parameters ``(tl, tu)`` of level ``j`` in the bound of level ``k`` (``k = -1``: the
    outputs), ``(batch, rows, units)``; ``None``: CROWN's choice. ``clamp``: sound intervals to
    intersect the pre-activation bounds with (IBP's, or CROWN's when optimising)."""
    m, n = uc.shape[0], net.n
    params = {} if params is None else params
    n_terms = n + net.p
    rels: list[Relaxation] = []
    zs: list[tuple[Tensor, Tensor]] = []
    xl = torch.zeros(m, n, dtype=torch.float64)
    xh = torch.zeros(m, n, dtype=torch.float64)
    for k, S in enumerate(groups):
        lin = _start(net, net.A[S], net.B[S], net.b[S], m)
        for j in reversed(range(k)):
            lin = _substitute(lin, groups[j], rels[j], net, *params.get((k, j), (None, None)))
        zl, zh = _split(_concretize(lin, uc, ur, n_terms))
        if clamp is not None:
            zl, zh = torch.maximum(zl, clamp[k][0]), torch.minimum(zh, clamp[k][1])
            zh = torch.maximum(zl, zh)
        if torch.isnan(zl).any() or torch.isnan(zh).any():
            raise NonFiniteError("linear bounds became NaN (an overflow); scale the inputs or weights down")
        zs.append((zl, zh))
        rels.append(_relax_units(net.segs, S, zl, zh))
        a, b = _interval(net.segs, S, zl, zh)
        xl = xl.index_copy(1, S, a)
        xh = xh.index_copy(1, S, b)
    lin = _start(net, net.C, net.D, net.d, m)
    for j in reversed(range(len(groups))):
        lin = _substitute(lin, groups[j], rels[j], net, *params.get((-1, j), (None, None)))
    return _concretize(lin, uc, ur, n_terms), xl, xh, rels, zs


def _crown_triangular(net: _Net, levels: np.ndarray, uc: Tensor, ur: Tensor, *, alpha: bool,
                      iters: int, lr: float, ibp: tuple[Tensor, Tensor] | None
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n = net.n
    L = int(levels.max()) + 1 if n else 0
    groups = [torch.from_numpy(np.flatnonzero(levels == k)) for k in range(L)]
    clamp = None if ibp is None else [(ibp[0][:, S], ibp[1][:, S]) for S in groups]
    val, xl, xh, rels, zs = _crown_pass(net, groups, uc, ur, None, clamp)
    if alpha and L and iters > 0:
        val, xl, xh = _optimise(net, groups, uc, ur, rels, zs, (val, xl, xh), iters, lr)
    yl, yh = _split(val)
    return xl, xh, yl, yh


def _optimise(net: _Net, groups: list[Tensor], uc: Tensor, ur: Tensor, rels: list[Relaxation],
              zs: list[tuple[Tensor, Tensor]], init: tuple[Tensor, Tensor, Tensor], iters: int, lr: float
              ) -> tuple[Tensor, Tensor, Tensor]:
    """alpha-CROWN: projected Adam on the family parameters of every (bounded level, relaxed
    level) pair and of the outputs, from CROWN's choice, minimising the sum of the output upper
    bounds (of ``[y; -y]``); the pre-activation bounds of each iterate are intersected with
    CROWN's. Every iterate is sound; the elementwise best over the iterates is returned."""
    val0, xl0, xh0 = init
    params: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
    rows = {k: 2 * int(S.numel()) for k, S in enumerate(groups)}
    rows[-1] = val0.shape[1]
    for k in [*range(1, len(groups)), -1]:
        for j in range(len(groups) if k == -1 else k):
            rel = rels[j]
            if not bool(rel.free.any()):
                continue
            r = rows[k]
            params[(k, j)] = (rel.tl[:, None, :].expand(-1, r, -1).clone().requires_grad_(True),
                              rel.tu[:, None, :].expand(-1, r, -1).clone().requires_grad_(True))
    if not params:
        return init
    flat = [t for pair in params.values() for t in pair]
    opt = torch.optim.Adam(flat, lr=lr)
    best, bxl, bxh = val0.detach().clone(), xl0.detach().clone(), xh0.detach().clone()
    for it in range(iters + 1):
        opt.zero_grad()
        val, xl, xh, _, _ = _crown_pass(net, groups, uc, ur, params, zs)
        best = torch.minimum(best, val.detach())
        bxl, bxh = torch.maximum(bxl, xl.detach()), torch.minimum(bxh, xh.detach())
        if it == iters:
            break
        val.sum().backward()
        opt.step()
        with torch.no_grad():
            for t in flat:
                t.clamp_(0.0, 1.0)
    return best, bxl, bxh


def _optimise_general(bound_fn, rels: list[Relaxation], val0: Tensor, iters: int, lr: float) -> Tensor:
    """Projected Adam on the family parameters of the output bound (one per unit, objective row
    and side) of the general method, from CROWN's choice; the elementwise best over the iterates."""
    r = val0.shape[1]
    params = []
    tls: list[Tensor | None] = []
    tus: list[Tensor | None] = []
    for rel in rels:
        if not bool(rel.free.any()):
            tls.append(None)
            tus.append(None)
            continue
        tl = rel.tl[:, None, :].expand(-1, r, -1).clone().requires_grad_(True)
        tu = rel.tu[:, None, :].expand(-1, r, -1).clone().requires_grad_(True)
        params += [tl, tu]
        tls.append(tl)
        tus.append(tu)
    if not params:
        return val0
    opt = torch.optim.Adam(params, lr=lr)
    best = val0.detach().clone()
    for _ in range(iters):
        opt.zero_grad()
        val = bound_fn(tls, tus)
        best = torch.minimum(best, val.detach())
        val.sum().backward()
        opt.step()
        with torch.no_grad():
            for t in params:
                t.clamp_(0.0, 1.0)
    with torch.no_grad():
        best = torch.minimum(best, bound_fn(tls, tus))
    return best



# ----------------------------------------------------------------------------- general A

def equilibrium_error(model: object, U: np.ndarray, extra: np.ndarray | None = None
                      ) -> tuple[Tensor, np.ndarray]:
    """The model's float64 nominal states ``x0`` at the rows of ``U`` and a certified bound on their
    distance to the exact equilibria (plus ``(I - gamma |A|)^-1 extra``, e.g. Thm 4.1's term).

    With ``r = |x0 - phi(A x0 + B u + b)|`` (evaluated in float64, widened by
    ``4 (n + p + 4) eps`` times the magnitude of the sums) and a componentwise ``gamma``-Lipschitz
    ``phi``: ``|x0 - x*| <= gamma |A| |x0 - x*| + r``, so ``|x0 - x*| <= (I - gamma |A|)^-1 r``
    (certified with :func:`idlkit.robust._linalg.solve_nonneg`, which needs
    ``lambda_pf(gamma |A|) < 1``). Dense or sparse matrices, never densified.

    Returns:
        ``x0`` ``(m, n)`` tensor and the radius ``(m, n)`` float64 array.

    Args:
        model: an :class:`~idlkit.ImplicitModel` with a componentwise activation.
        U: ``(m, p)`` float64 inputs.
        extra: ``(m, n)`` nonnegative term added to the residual, or ``None``.

    Raises:
        ConfigurationError: a non-componentwise activation.
        WellPosednessError: ``lambda_pf(gamma |A|) < 1`` cannot be certified.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> x0, err = equilibrium_error(model, np.zeros((2, 3)))
        >>> x0.shape, err.shape, bool((err >= 0).all())
        (torch.Size([2, 5]), (2, 5), True)
    """
    from ._linalg import solve_nonneg
    from ._model import float64_copy, model_data, norm_matrices

    dm = model_data(model)
    if not dm.componentwise:
        raise ConfigurationError(f"equilibrium_error needs a componentwise activation, got {dm.activation!r}")
    NA, _, _, _ = norm_matrices(dm)
    m64 = float64_copy(model)
    with torch.no_grad():
        x0 = m64.equilibrium(torch.from_numpy(U)).to(torch.float64)  # type: ignore[attr-defined]
    X = x0.numpy().T  # (n, m)
    bv = getattr(model, "b", None)
    b = np.zeros((dm.n, 1)) if bv is None else bv.detach().cpu().to(torch.float64).numpy()[:, None]
    absA = abs(dm.A) if hasattr(dm.A, "tocsr") else np.abs(dm.A)
    absB = abs(dm.B) if hasattr(dm.B, "tocsr") else np.abs(dm.B)
    Z = np.asarray(dm.A @ X) + np.asarray(dm.B @ U.T) + b
    with torch.no_grad():
        res = np.abs(X - model.activation(torch.from_numpy(Z)).numpy())  # type: ignore[attr-defined]
    res = res + 4 * (dm.n + dm.p + 4) * _EPS * (np.asarray(absA @ np.abs(X)) + np.asarray(absB @ np.abs(U.T))
                                                 + np.abs(b) + np.abs(X) + 1)
    R = res if extra is None else res + extra
    Xr, _ = solve_nonneg(NA, np.ascontiguousarray(R), what="the equilibrium error bound (Thm 4.1)")
    return x0, np.ascontiguousarray(Xr.T) * (1 + 1e-9)


def _start_box(model: object, net: _Net, U: np.ndarray, s_lo: np.ndarray, s_hi: np.ndarray
               ) -> tuple[Tensor, Tensor]:
    """A sound state box: Thm 4.1 around the model's nominal state at the box centre, widened by
    the certified error bound of its residual (module docstring, :func:`equilibrium_error`)."""
    from ._model import model_data, norm_matrices

    _, NB, _, _ = norm_matrices(model_data(model))
    uc = (s_lo + s_hi) / 2
    ur = (s_hi - s_lo) / 2
    x0, rad = equilibrium_error(model, uc, np.asarray(NB @ ur.T))
    radt = torch.from_numpy(rad)
    return x0 - radt, x0 + radt


def _neumann(lin: _Lin, rel: Relaxation, net: _Net, xl: Tensor, xh: Tensor, uc: Tensor, ur: Tensor,
             steps: int, tl: Tensor | None = None, tu: Tensor | None = None) -> Tensor:
    """Best over ``K <= steps`` of the truncated substitution closed by the box (module docstring)."""
    allidx = torch.arange(net.n)
    n_terms = net.n + net.p
    best = None
    for _ in range(steps + 1):
        bx, bmag = _box_term(lin, xl, xh)
        closed = _Lin(lin.lam_x, lin.lam_u, lin.const + bx, lin.mag + bmag)
        v = _concretize(closed, uc, ur, n_terms)
        best = v if best is None else torch.minimum(best, v)
        # the rest can move the bound by about the box term only: stop when it is negligible
        small = 1e-13 * (1 + float(best.detach().abs().max()))
        if not lin.lam_x.numel() or float(bmag.detach().max()) <= small:
            break
        lin = _substitute(lin, allidx, rel, net, tl, tu)
    assert best is not None
    return best


def _linear_general(model: object, net: _Net, U: np.ndarray, lo: np.ndarray, hi: np.ndarray, *,
                    alpha: bool, iters: int, lr: float, steps: int, rounds: int
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    m, n = lo.shape[0], net.n
    uc = torch.from_numpy((lo + hi) / 2)
    ur = torch.from_numpy((hi - lo) / 2)
    xl, xh = _start_box(model, net, U, lo, hi)
    allidx = torch.arange(n)
    n_terms = n + net.p
    rel = None
    zprev: tuple[Tensor, Tensor] | None = None
    for _ in range(rounds + 1):
        # interval bounds of z over the boxes of x and u
        xc, xr = (xl + xh) / 2, (xh - xl) / 2
        zc = xc @ net.A.T + uc @ net.B.T + net.b
        zr = xr @ net.A.abs().T + ur @ net.B.abs().T
        mag = xc.abs() @ net.A.abs().T + (uc.abs() + ur) @ net.B.abs().T + net.b.abs() + xr @ net.A.abs().T
        pad = 2 * (n_terms + 4) * _EPS * mag + _REL * (1 + zc.abs() + zr)
        zl, zh = zc - zr - pad, zc + zr + pad
        if rel is not None:
            lin = _start(net, net.A, net.B, net.b, m)
            zl2, zh2 = _split(_neumann(lin, rel, net, xl, xh, uc, ur, steps))
            zl, zh = torch.maximum(zl, zl2), torch.minimum(zh, zh2)
        if zprev is not None:  # the previous round's intervals are sound too
            zl, zh = torch.maximum(zl, zprev[0]), torch.minimum(zh, zprev[1])
        zh = torch.maximum(zl, zh)
        if torch.isnan(zl).any() or torch.isnan(zh).any():
            raise NonFiniteError("linear bounds became NaN (an overflow); scale the inputs or weights down")
        il, ih = _interval(net.segs, allidx, zl, zh)
        xl, xh = torch.maximum(xl, il), torch.minimum(xh, ih)
        xh = torch.maximum(xl, xh)
        rel = _relax_units(net.segs, allidx, zl, zh)
        if zprev is not None and float((zh - zl).sum()) > 0.999 * float((zprev[1] - zprev[0]).sum()):
            break  # the refinement has converged (< 0.1 % narrower)
        zprev = (zl, zh)
    assert rel is not None

    def out_bounds(tls: list, tus: list) -> Tensor:
        lin = _start(net, net.C, net.D, net.d, m)
        return _neumann(lin, rel, net, xl, xh, uc, ur, steps, tls[0], tus[0])

    val = out_bounds([None], [None])
    if alpha and iters > 0:
        val = _optimise_general(out_bounds, [rel], val, iters, lr)
    yl, yh = _split(val)
    return xl, xh, yl, yh


# ----------------------------------------------------------------------------- public entry

def input_box(u0: np.ndarray, sigma: np.ndarray, clip: tuple[float, float] | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """``[u0 - sigma, u0 + sigma]`` per row of ``u0`` (``(m, p)``), intersected with ``clip``."""
    from .lp import input_box as _lp_box

    if clip is None:
        return u0 - sigma, u0 + sigma
    pairs = [_lp_box(u, sigma, clip) for u in u0]
    return np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs])


def linear_bounds(model: object, u0: Tensor, sigma_u: object, *, clip: tuple[float, float] | None = None,
                  alpha: bool = False, alpha_iters: int = 20, alpha_lr: float = 0.5,
                  intersect_ibp: bool = False, steps: int = 200, rounds: int = 8,
                  intermediate: str = "crown", batch_size: int = 64) -> LinearBounds:
    """CROWN / alpha-CROWN bounds of the states and outputs over ``|u - u0| <= sigma_u``.

    Triangular ``A`` (a converted feed-forward network): CROWN level by level (exactly CROWN for
    a ``nn.Sequential``); general ``A``: the truncated-substitution method of the module
    docstring, sound at every step.

    Args:
        model: an :class:`~idlkit.ImplicitModel` with a componentwise activation.
        u0: ``(batch, p)`` (or ``(p,)``) nominal inputs.
        sigma_u: scalar or ``(p,)`` radius.
        clip: valid input range ``(lo, hi)`` intersected with the box.
        alpha: optimise the relaxation parameters of the output bounds (alpha-CROWN).
        alpha_iters: projected Adam iterations.
        alpha_lr: projected Adam step size.
        intersect_ibp: intersect CROWN's pre-activation intervals with IBP's (tighter, sound;
            triangular only).
        steps: substitution steps of the general method.
        rounds: its ``z``-refinement rounds (at most; it stops when a round narrows the
            intervals by less than 0.1 %).
        intermediate: ``"crown"`` (default) or ``"ibp"``: pre-activation intervals from IBP and one
            backward pass for the outputs ("CROWN-IBP"), on the sparse matrices as they are (for
            models too large to densify, e.g. a converted ResNet-20); triangular ``A``, no ``alpha``.
        batch_size: inputs bounded together (memory ``batch_size x rows x n`` per level).

    Returns:
        :class:`LinearBounds` (float64, ``(batch, n)`` and ``(batch, q)``).

    Raises:
        ConfigurationError: a block activation (SoftMax, BlockMax, Product), or a model too large
            to densify.
        WellPosednessError: general ``A`` and Thm 4.1 cannot be certified.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> model = idlkit.convert.from_torch(net, torch.zeros(1, 4))
        >>> lb = linear_bounds(model, torch.zeros(3, 4), 0.1)
        >>> lb.y_lower.shape
        torch.Size([3, 2])
    """
    check_int("alpha_iters", alpha_iters, 0)
    check_scalar("alpha_lr", alpha_lr, low=0.0, low_inclusive=False)
    check_int("steps", steps, 0)
    check_int("rounds", rounds, 0)
    check_int("batch_size", batch_size, 1)
    check_choice("intermediate", intermediate, ("crown", "ibp"))
    p = model.B.shape[1]  # type: ignore[attr-defined]
    s = as_sigma(sigma_u, p)
    U = as_batch64(u0, p, "u0")
    lo, hi = input_box(U, s, clip)
    levels = state_levels(model.A)  # type: ignore[attr-defined]
    if intermediate == "ibp":
        if levels is None or alpha:
            raise ConfigurationError(
                "intermediate='ibp' (CROWN-IBP) needs a triangular A and alpha=False; use "
                "intermediate='crown' (any A, alpha-CROWN)")
        xl, xh, yl, yh = _crown_ibp_sparse(model, levels, lo, hi)
        return _finish(xl, xh, yl, yh, "crown-ibp", int(levels.max()) + 1 if levels.size else 0)
    net = _net(model)
    parts = []
    for i in range(0, max(U.shape[0], 1), batch_size):  # chunks bound the memory (batch x rows x n)
        sl = slice(i, i + batch_size)
        parts.append(_dense_bounds(model, net, levels, U[sl], lo[sl], hi[sl], alpha=alpha, iters=alpha_iters,
                                   lr=alpha_lr, intersect_ibp=intersect_ibp, steps=steps, rounds=rounds))
    xl, xh, yl, yh = (torch.cat([pt[j] for pt in parts]) for j in range(4))
    if levels is not None:
        method = "alpha-crown" if alpha else "crown"
        depth = int(levels.max()) + 1 if net.n else 0
    else:
        method = "alpha-linear-fixed-point" if alpha else "linear-fixed-point"
        depth = 0
    return _finish(xl, xh, yl, yh, method, depth)


def _dense_bounds(model: object, net: _Net, levels: np.ndarray | None, U: np.ndarray, lo: np.ndarray,
                  hi: np.ndarray, *, alpha: bool, iters: int, lr: float, intersect_ibp: bool, steps: int,
                  rounds: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The dense linear bounds of one chunk of inputs (CROWN, or the general method)."""
    if levels is not None:
        ibp = _ibp_pre(net, levels, lo, hi) if intersect_ibp and net.n else None
        uc, ur = torch.from_numpy((lo + hi) / 2), torch.from_numpy((hi - lo) / 2)
        return _crown_triangular(net, levels, uc, ur, alpha=alpha, iters=iters, lr=lr, ibp=ibp)
    return _linear_general(model, net, U, lo, hi, alpha=alpha, iters=iters, lr=lr, steps=steps, rounds=rounds)


def _finish(xl: Tensor, xh: Tensor, yl: Tensor, yh: Tensor, method: str, depth: int) -> LinearBounds:
    """Outward ``nextafter`` of the (already widened) bounds."""
    out = [t.detach().contiguous() for t in (xl, xh, yl, yh)]
    down = lambda t: torch.nextafter(t, torch.full_like(t, -math.inf))  # noqa: E731
    up = lambda t: torch.nextafter(t, torch.full_like(t, math.inf))  # noqa: E731
    return LinearBounds(down(out[0]), up(out[1]), down(out[2]), up(out[3]), method, depth)


def _ibp_pre(net: _Net, levels: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[Tensor, Tensor]:
    """IBP pre-activation intervals level by level (the same widening as the CROWN ones)."""
    m, n = lo.shape[0], net.n
    uc = torch.from_numpy((lo + hi) / 2)
    ur = torch.from_numpy((hi - lo) / 2)
    xl = torch.zeros(m, n, dtype=torch.float64)
    xh = torch.zeros(m, n, dtype=torch.float64)
    zl = torch.zeros(m, n, dtype=torch.float64)
    zh = torch.zeros(m, n, dtype=torch.float64)
    n_terms = n + net.p
    for k in range(int(levels.max()) + 1):
        S = torch.from_numpy(np.flatnonzero(levels == k))
        xc, xr = (xl + xh) / 2, (xh - xl) / 2
        A_S = net.A[S]
        zc = xc @ A_S.T + uc @ net.B[S].T + net.b[S]
        zr = xr @ A_S.abs().T + ur @ net.B[S].abs().T
        mag = (xc.abs() + xr) @ A_S.abs().T + (uc.abs() + ur) @ net.B[S].abs().T + net.b[S].abs()
        pad = 2 * (n_terms + 4) * _EPS * mag + _REL * (1 + zc.abs() + zr)
        zl[:, S], zh[:, S] = zc - zr - pad, zc + zr + pad
        xl[:, S], xh[:, S] = _interval(net.segs, S, zl[:, S], zh[:, S])
    return zl, zh



# ----------------------------------------------------------------------------- CROWN-IBP (sparse, large)

def _crown_ibp_sparse(model: object, levels: np.ndarray, lo: np.ndarray, hi: np.ndarray
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Output bounds by one backward CROWN pass whose pre-activation intervals are IBP's
    ("CROWN-IBP"), with sparse ``A, B`` (scipy CSR, never densified): the cost is one pass over the
    nonzeros of ``A`` per objective row. Sound for the same reasons as CROWN (the relaxations hold
    on IBP's intervals, which contain every pre-activation). One input at a time."""
    import scipy.sparse as sp

    from ._model import model_data

    dm = model_data(model)
    segs = _check_activation(model)
    n, p, q = dm.n, dm.p, dm.q
    A = sp.csr_array(dm.A)
    B = sp.csr_array(dm.B) if sp.issparse(dm.B) else np.asarray(dm.B)
    C = dm.C.toarray() if sp.issparse(dm.C) else np.asarray(dm.C)
    D = dm.D.toarray() if sp.issparse(dm.D) else np.asarray(dm.D)
    bv = getattr(model, "b", None)
    b = np.zeros(n) if bv is None else bv.detach().cpu().to(torch.float64).numpy()
    dv = getattr(model, "d", None)
    dd = np.zeros(q) if dv is None else dv.detach().cpu().to(torch.float64).numpy()
    L = int(levels.max()) + 1 if n else 0
    groups = [np.flatnonzero(levels == k) for k in range(L)]
    A_rows = [A[S] for S in groups]
    A_rows_T = [M.T.tocsr() for M in A_rows]
    B_rows = [B[S] for S in groups]
    absA_rows = [abs(M) for M in A_rows]
    absB_rows = [abs(M) if sp.issparse(M) else np.abs(M) for M in B_rows]
    rho = 2 * (n + p + 4) * _EPS
    XL, XH, YL, YH = [], [], [], []
    for ul, uh in zip(lo, hi, strict=True):
        uc, ur = (ul + uh) / 2, (uh - ul) / 2
        uabs = np.abs(uc) + ur
        xl, xh = np.zeros(n), np.zeros(n)
        rels = []
        for k, S in enumerate(groups):
            xc, xr = (xl + xh) / 2, (xh - xl) / 2
            zc = A_rows[k] @ xc + B_rows[k] @ uc + b[S]
            zr = absA_rows[k] @ xr + absB_rows[k] @ ur
            mag = absA_rows[k] @ (np.abs(xc) + xr) + absB_rows[k] @ uabs + np.abs(b[S])
            pad = rho * mag + _REL * (1 + np.abs(zc) + zr)
            zl, zh = torch.from_numpy(zc - zr - pad)[None], torch.from_numpy(zc + zr + pad)[None]
            if torch.isnan(zl).any() or torch.isnan(zh).any():
                raise NonFiniteError("CROWN-IBP intervals became NaN (an overflow); scale the inputs down")
            St = torch.from_numpy(S)
            rels.append(_relax_units(segs, St, zl, zh))
            a, c = _interval(segs, St, zl, zh)
            xl[S], xh[S] = a[0].numpy(), c[0].numpy()
        lam = np.concatenate([C, -C])  # (2q, n)
        lam_u = np.concatenate([D, -D])
        const = np.concatenate([dd, -dd])
        cmag = np.abs(const)
        for k in reversed(range(L)):
            S = groups[k]
            al, cl, au, cu = (t[0].numpy() for t in rels[k].lines())
            lt = lam[:, S]
            pos, neg = np.clip(lt, 0, None), np.clip(lt, None, 0)
            w = pos * au + neg * al
            const = const + (pos * cu + neg * cl).sum(1) + w @ b[S]
            cmag = cmag + (np.abs(lt) * np.maximum(np.abs(cu), np.abs(cl))).sum(1) + np.abs(w) @ np.abs(b[S])
            lam[:, S] = 0.0
            lam = lam + (A_rows_T[k] @ w.T).T
            lam_u = lam_u + np.asarray(B_rows[k].T @ w.T).T
        val = const + lam_u @ uc + np.abs(lam_u) @ ur
        val = val + rho * (cmag + np.abs(lam_u) @ uabs) + _REL * (1 + np.abs(val))
        XL.append(xl)
        XH.append(xh)
        YL.append(-val[q:])
        YH.append(val[:q])
    t = lambda a: torch.from_numpy(np.stack(a)) if a else torch.zeros(0, 0, dtype=torch.float64)  # noqa: E731
    return t(XL), t(XH), t(YL), t(YH)
