"""State extraction for SIM: ``(Z, X, Y_hat)`` of a baseline, rescaled (paper 002 §3).

Three sources of states (``extract_states(method=...)``): the converter's exact implicit form
(``"convert"``, :func:`idlkit.convert.states`), forward hooks on the activation modules of any
network (``"hooks"``, :mod:`idlkit.sim.hooks`), or the fixed point of an ImplicitModel.
``method="auto"`` (the default) uses the converter and falls back to hooks when the network
cannot be traced or converted (a :class:`~idlkit.errors.ConversionError`: layer norm, standard
attention, data-dependent control flow, ...); with ``skip_layers`` or ``identity_layers`` given
it uses hooks directly. :attr:`States.method` says which one ran.

Convention: **batch-first**, as :func:`idlkit.convert.states`: ``Z, X`` are ``(m, n)``,
``U`` is ``(m, p)`` (flattened), ``Y_hat`` is ``(m, q)``. Paper 002 writes the transposes
(one column per data point, ``Z = A X + B U`` in eq. 2b); here the same equations read
``Z = X A^T + U B^T + b``. The state is stacked last layer on top, ``x = (x_L; ...; x_1)``
(paper 002 §3), in exactly the order of :func:`idlkit.convert.from_torch`'s state.

Rescaling (paper 002 §3, Thm 2.4). Let ``s = max(1, gamma * max_l ||W_l||_inf)`` where the
``W_l`` are the baseline's layer matrices, read off its exact implicit form ``(A, B, C)`` from
:func:`idlkit.convert.from_torch` (for a chain ``W_0 = B``, ``W_1 .. W_{L-1}`` are the
blocks of ``A``, ``W_L = C``; so ``max_l ||W_l||_inf = max(||A||_inf, ||B||_inf, ||C||_inf)``).
Dividing every weight by ``s`` (and the bias of depth-``d`` layers by ``s^d``) divides the
depth-``d`` states by ``s^d``: we compute this directly on the states, ``Z'_i = c_i Z_i``,
``X'_i = c_i X_i`` with ``c_i = s^{-d_i}``, where ``d_i`` is the longest-path depth of state
``i`` in the graph of ``A`` (``d_i = 1 + max{d_j : A_ij != 0}``, 1 for a state fed by the
input only). ``Y_hat`` is the baseline's output, unscaled (the output map absorbs the scale:
``C' = C diag(c)^{-1}``, unconstrained in SIM), so a SIM model fitted to the scaled states
predicts the baseline's own outputs.

**Feasibility (positively homogeneous phi: ReLU, LeakyReLU, identity, max pooling).**
Let ``(A, B, C, D, b, d)`` be the exact implicit form and ``Dc = diag(c)``. Then
``A' = Dc A Dc^{-1}``, ``B' = Dc B``, ``b' = Dc b``, ``C' = C Dc^{-1}``, ``D' = D``,
``d' = d`` match the scaled states exactly: ``Z' = Dc Z = Dc (A X + B U + b) = A' X' + B' U
+ b'``; ``X' = Dc phi(Z) = phi(Dc Z) = phi(Z')`` since ``phi`` is positively homogeneous and
``c`` is constant on each of its blocks (depths are computed per BLIP block, so a max-pool
window shares one factor); ``C' X' + D' U + d' = C X + D U + d = Y_hat``. For ``A_ij != 0``,
``d_i - d_j >= 1`` and ``s >= 1``, so ``|A'_ij| = s^{-(d_i - d_j)} |A_ij| <= |A_ij| / s`` and
``||A'||_inf <= ||A||_inf / s <= 1 / gamma < kappa`` whenever ``gamma > 1 / kappa`` (the
default ``gamma = 1.01 / kappa``). Hence problem (2) of paper 002 is strictly feasible. (The
clamp ``s >= 1`` only matters when all weights are small, where ``||A||_inf <= 1/gamma``
already holds unscaled; it avoids magnifying states, for which the bound above would fail
on skip connections with ``d_i - d_j >= 2``.)

**Non-homogeneous phi (tanh, sigmoid, softmax).** No linear rescaling of the states keeps
``X = phi(Z)`` (``tanh(c z) != c tanh(z)``), and Thm 2.4 does not apply: ``rescale=True``
raises :class:`~idlkit.errors.InputError`. With ``rescale=False`` the states are exact and
the converter's matrices still match them exactly (A strictly block upper triangular, so the
matched model is well-posed, paper 000 Thm 2.8), but ``||A||_inf <= kappa`` may fail.

**Hooked states** (``method="hooks"``). There is no implicit form to read the weights from.
The same formula is applied with ``max_l ||W_l||_inf`` read off the modules that ran (the
``nn.Linear``/``nn.Conv*`` weights as they are, 1 per max-pooling gather; see
:attr:`~idlkit.sim.hooks.HookedStates.weight_norm`) and ``d_i`` the *forward position* of
the call that recorded state ``i`` (1 for the first block). The feasibility proof above only
needs ``d_i - d_j >= 1`` whenever state ``i`` reads state ``j``, which forward positions
satisfy (a block only reads blocks computed before it), so for a network that *has* an
exact implicit form made of those weights (a chain of Linear/Conv layers and positively
homogeneous activation modules: ReLU MLPs, CNNs) the hooked rescaling is exact and
``||A'||_inf < kappa`` holds, and it equals the converter's when the longest-path depths are
the forward positions (chains). Normalisation or attention layers between them are not
folded in: for such networks the scale is a documented normaliser of the states' magnitudes
by depth, with no feasibility guarantee (the states stay exact, ``X = phi(Z)``, whenever
phi is positively homogeneous). A non-homogeneous phi (GELU, SiLU, softmax, ...) cannot be
rescaled at all: ``rescale=True`` raises :class:`~idlkit.errors.InputError`; use
``rescale=False`` (exact states; SIM's constraint ``||A||_inf <= kappa`` then acts on the
unscaled states).

**ImplicitModel baselines.** ``X`` is the fixed point, ``Z = X A^T + U B^T + b``. With
``rescale=True`` and ``||A||_inf >= kappa``, the states are scaled by ``c = 1 / v`` with
``v > 0`` a Perron vector of ``|A| + eps 11^T`` (Thm 2.4's proof): then
``||Dc A Dc^{-1}||_inf = max_i (|A| v)_i / v_i``, about ``lambda_pf(|A|)``; this needs a
positively homogeneous ``phi`` and ``lambda_pf(|A|) < kappa``, else a typed error is raised.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from .._matrix import as_matrix, count_nonzero, to_dense
from .._validation import all_finite, check_choice, check_kappa, check_scalar
from ..activations import Activation, BlockMax, block_activations, get_activation
from ..errors import ConversionError, IdlError, InputError, NonFiniteError, ShapeError, WellPosednessError
from ..io import CheckpointError, read_tensors, write_tensors
from ..model import ImplicitModel
from .hooks import StateLayer, _check_finite_rows, hook_states

__all__ = ["States", "extract_states", "METHODS"]

METHODS = ("auto", "convert", "hooks")
_FORMAT = "idlkit.sim.States/1"


@dataclass(frozen=True)
class States:
    """States of a baseline on inputs ``U`` (paper 002 §3), batch-first.

    Attributes:
        Z: pre-activation states ``(m, n)``, scaled: ``Z = Z_raw * scale``.
        X: post-activation states ``(m, n)``, ``X = phi(Z)``, scaled likewise.
        Y_hat: the baseline's outputs ``(m, q)`` (never scaled).
        U: the inputs, flattened to ``(m, p)``, in the states' dtype.
        scale: per-state factors ``c`` (``(n,)``, float64, ``c_i = s^{-d_i}``; ones without
            rescaling). The scaled implicit form is ``A' = diag(c) A diag(c)^{-1}``,
            ``B' = diag(c) B``, ``b' = c * b``, ``C' = C diag(c)^{-1}``.
        divisor: ``s`` the weights were divided by (1.0 without rescaling or for an
            ImplicitModel baseline).
        gamma: the rescaling parameter used (None without rescaling).
        kappa: the well-posedness bound of the rescaling.
        activation: ``phi`` on the stacked state (blockwise), so that ``X = phi(Z)``.
        baseline_nnz: nonzero parameters of the baseline, ``||N||_0`` in paper 002's
            sparsity ``(1 - ||M||_0 / ||N||_0) * 100`` (§4.1).
        depth: per-state depth ``d_i`` of the rescaling: the longest-path depth (converter),
            the forward position of the recording call (hooks); None for ImplicitModel
            baselines and without rescaling of hooked states.
        method: where the states come from: ``"convert"`` (exact implicit form), ``"hooks"``
            (forward hooks, :mod:`idlkit.sim.hooks`) or ``"implicit"`` (an ImplicitModel).
        layers: the hooked blocks in stacked order (module name, call, size, offset, map);
            empty for the other methods.

    Shapes are checked on construction (:class:`~idlkit.errors.ShapeError`); finiteness by
    :meth:`check_finite` (not on construction, so that a caller can build States to test).
    ``save(path)`` / ``States.load(path)`` store them in one safetensors file.
    """

    Z: Tensor
    X: Tensor
    Y_hat: Tensor
    U: Tensor
    scale: Tensor
    divisor: float
    gamma: float | None
    kappa: float
    activation: Activation
    baseline_nnz: int
    depth: Tensor | None = None
    method: str = "convert"
    layers: tuple[StateLayer, ...] = ()

    def __post_init__(self) -> None:
        for name in ("Z", "X", "Y_hat", "U"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.dim() != 2:
                raise ShapeError(f"States.{name} must be a 2-D tensor (m, .), got "
                                 f"{getattr(t, 'shape', type(t).__name__)}")
        m, n = self.X.shape
        if tuple(self.Z.shape) != (m, n):
            raise ShapeError(f"States.Z has shape {tuple(self.Z.shape)}, X has {(m, n)}; they must match")
        for name in ("Y_hat", "U"):
            if getattr(self, name).shape[0] != m:
                raise ShapeError(f"States.{name} has {getattr(self, name).shape[0]} rows, X has m = {m}")
        for name in ("scale", "depth"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != (n,):
                raise ShapeError(f"States.{name} has shape {tuple(t.shape)}, expected ({n},)")
        if self.layers and sum(lay.size for lay in self.layers) != n:
            raise ShapeError(f"States.layers cover {sum(lay.size for lay in self.layers)} states, X has {n}")

    @property
    def n(self) -> int:
        return self.X.shape[1]

    @property
    def m(self) -> int:
        return self.X.shape[0]

    def check_finite(self) -> States:
        """``self`` if every array is finite, else :class:`~idlkit.errors.NonFiniteError` naming
        the rows (samples) and, for hooked states, the blocks that hold NaN/Inf."""
        for name in ("Z", "X", "Y_hat", "U"):
            _check_finite_rows(f"States.{name}", getattr(self, name),
                               self.layers if name in ("Z", "X") else ())
        return self

    # ------------------------------------------------------------------ save / load

    def save(self, path: str | os.PathLike) -> Path:
        """Write the states to ``path`` (one safetensors file, JSON metadata in its header,
        written atomically through a temporary file and ``os.replace``; no pickle).

        Args:
            path: the file to write (``.safetensors``).

        Returns:
            The path written, as a :class:`~pathlib.Path`.

        Examples:
            >>> st = extract_states(net, U)           # doctest: +SKIP
            >>> st.save("states.safetensors"); States.load("states.safetensors")   # doctest: +SKIP
        """
        tensors = {"Z": self.Z, "X": self.X, "Y_hat": self.Y_hat, "U": self.U, "scale": self.scale}
        if self.depth is not None:
            tensors["depth"] = self.depth
        meta = {"format": _FORMAT, "m": self.m, "n": self.n, "p": int(self.U.shape[1]),
                "q": int(self.Y_hat.shape[1]), "dtype": str(self.X.dtype).removeprefix("torch."),
                "divisor": self.divisor, "gamma": self.gamma, "kappa": self.kappa,
                "activation": self.activation.config(), "baseline_nnz": int(self.baseline_nnz),
                "method": self.method,
                "layers": [{"name": lay.name, "call": lay.call, "kind": lay.kind, "size": lay.size,
                            "offset": lay.offset, "position": lay.position,
                            "activation": lay.activation.config()} for lay in self.layers]}
        return write_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> States:
        """Read states written by :meth:`save`; bit-exact round trip.

        Args:
            path: a file written by :meth:`save`.

        Returns:
            The :class:`States`.

        Raises:
            CheckpointError (``idlkit.io``): a missing, truncated or tampered file, another
                format, or arrays whose dtype or shape disagree with the header (``Z``, ``X``
                ``(m, n)``; ``Y_hat`` ``(m, q)``; ``U`` ``(m, p)``, one float dtype;
                ``scale`` ``(n,)`` float64; ``depth`` ``(n,)`` int64).
            NonFiniteError: NaN/Inf in the stored arrays (naming the rows).
        """
        tensors, meta = read_tensors(path)
        if meta.get("format") != _FORMAT:
            raise CheckpointError(f"{path}: not an idlkit States file (format {meta.get('format')!r}, "
                                  f"expected {_FORMAT!r})")
        try:
            m, n, p, q = (int(meta[k]) for k in ("m", "n", "p", "q"))
            dtype = {"float32": torch.float32, "float64": torch.float64}[meta["dtype"]]
            expect = {"Z": ((m, n), dtype), "X": ((m, n), dtype), "Y_hat": ((m, q), dtype),
                      "U": ((m, p), dtype), "scale": ((n,), torch.float64)}
            if "depth" in tensors:
                expect["depth"] = ((n,), torch.int64)
            for name, (shape, dt) in expect.items():
                t = tensors.get(name)
                if t is None:
                    raise CheckpointError(f"{path}: array {name!r} is missing")
                if tuple(t.shape) != shape or t.dtype != dt:
                    raise CheckpointError(f"{path}: array {name!r} is {str(t.dtype)} {tuple(t.shape)}, "
                                          f"the header says {str(dt)} {shape}")
            extra = set(tensors) - set(expect)
            if extra:
                raise CheckpointError(f"{path}: unexpected arrays {sorted(extra)}")
            activation = get_activation(meta["activation"])
            activation.blocks(n)
            layers = tuple(StateLayer(str(d["name"]), int(d["call"]), str(d["kind"]), int(d["size"]),
                                      int(d["offset"]), int(d["position"]), get_activation(d["activation"]))
                           for d in meta["layers"])
            gamma = None if meta["gamma"] is None else float(meta["gamma"])
            st = cls(tensors["Z"], tensors["X"], tensors["Y_hat"], tensors["U"], tensors["scale"],
                     float(meta["divisor"]), gamma, float(meta["kappa"]), activation,
                     int(meta["baseline_nnz"]), tensors.get("depth"), str(meta["method"]), layers)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IdlError) as exc:
            raise CheckpointError(f"{path}: the States header is damaged "
                                  f"({type(exc).__name__}: {exc})") from exc
        return st.check_finite()


def _homogeneous(act: Activation, n: int) -> tuple[bool, list[tuple[int, Activation]]]:
    blocks = block_activations(act, n)
    return all(a.positively_homogeneous or isinstance(a, BlockMax) for _, a in blocks), blocks


def _net_dtype(net: nn.Module) -> torch.dtype:
    for t in list(net.parameters()) + list(net.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _net_device(net: nn.Module) -> torch.device:
    for t in list(net.parameters()) + list(net.buffers()):
        return t.device
    return torch.device("cpu")


def _inf_norm(M: Tensor) -> float:
    if M.numel() == 0:
        return 0.0
    M = to_dense(M.detach())
    return float(M.abs().sum(dim=1).max()) if M.shape[1] else 0.0


def _depths(A: Tensor, blocks: list[tuple[int, Activation]]) -> np.ndarray:
    """Longest-path depth of each state in the graph of the strictly upper triangular ``A``
    (state ``i`` depends on ``j > i``), constant on each BLIP block."""
    n = A.shape[0]
    M = sp.csr_array(as_matrix(A, dtype=None), copy=True)  # a private copy: pruned in place
    M.eliminate_zeros()
    depth = np.zeros(n, dtype=np.int64)
    ends = np.cumsum([s for s, _ in blocks])
    for k in range(len(blocks) - 1, -1, -1):
        r1 = int(ends[k])
        r0 = r1 - blocks[k][0]
        cols = M.indices[M.indptr[r0]:M.indptr[r1]]
        if cols.size and cols.min() < r1:
            raise InputError("the baseline's implicit form is not strictly block upper triangular; "
                             "pass rescale=False")  # pragma: no cover - converter guarantees it
        depth[r0:r1] = 1 + (int(depth[cols].max()) if cols.size else 0)
    return depth


def _check_kappa_gamma(kappa: float, gamma: float | None) -> float:
    kappa = check_kappa(kappa, high_inclusive=True, example=0.99, why="paper 002 uses 0.99")
    if gamma is None:
        return 1.01 / kappa
    # gamma * kappa > 1, so that ||A'||_inf <= 1/gamma < kappa
    return check_scalar("gamma", gamma, low=1.0 / kappa, low_inclusive=False, example=1.01 / kappa,
                        why=f"gamma * kappa > 1 with kappa={kappa:g} makes ||A'||_inf <= 1/gamma < "
                            f"kappa; leave gamma=None for 1.01 / kappa")


def _check_dtype(dtype: torch.dtype | None) -> None:
    check_choice("dtype", dtype, (None, torch.float32, torch.float64))



def _check_finite(**arrays: Tensor) -> None:
    for name, t in arrays.items():
        if not all_finite(t):
            raise NonFiniteError(f"{name} of the baseline contains NaN or Inf; check the network's "
                                 f"weights and the inputs (scale U, or use float64)")


def extract_states(baseline: nn.Module, U: Tensor, *, dtype: torch.dtype | None = None,
                   rescale: bool = True, kappa: float = 0.99, gamma: float | None = None,
                   method: str = "auto", skip_layers: Sequence[str] = (),
                   identity_layers: Sequence[str] = ()) -> States:
    """``(Z, X, Y_hat)`` of a network or an :class:`~idlkit.ImplicitModel` (paper 002 §3).

    Args:
        baseline: a torch network, or an ImplicitModel (its states are the fixed point). With
            ``method="convert"`` it must be traceable by :func:`idlkit.convert.from_torch`
            (biases, module or functional activations ``F.relu``/``torch.relu`` inside
            ``forward``, convolutions, pooling, ...; eval mode for batch norm/dropout); with
            ``method="hooks"`` any network whose activations are modules
            (:mod:`idlkit.sim.hooks`). It is never modified: states are computed under
            ``torch.no_grad()``, and a dtype change works on a deep copy.
        U: inputs, batch-first ``(m, *input_dims)`` (``(m, p)`` for an ImplicitModel).
        dtype: float32 or float64; default the baseline's parameter dtype.
        rescale: apply paper 002 §3's rescaling (see the module docstring for the proof of
            exact feasibility with ``||A'||_inf <= 1/gamma < kappa``, and what it means for
            hooked states).
        kappa: well-posedness bound of the later matching problem, in (0, 1].
        gamma: the paper's ``gamma``; must satisfy ``gamma * kappa > 1``; default ``1.01 / kappa``.
        method: ``"auto"`` (converter, falling back to hooks on a
            :class:`~idlkit.errors.ConversionError`; hooks directly when ``skip_layers`` or
            ``identity_layers`` is given), ``"convert"`` or ``"hooks"``. Ignored for an
            ImplicitModel.
        skip_layers: hooks only, see :func:`idlkit.sim.hooks.hook_states`.
        identity_layers: hooks only, see :func:`idlkit.sim.hooks.hook_states`.

    Returns:
        :class:`States` (batch-first, last layer on top; with the converter in the state order
        of :func:`idlkit.convert.states`).

    Raises:
        ConfigurationError: kappa outside (0, 1], bad gamma, dtype, method or layer names.
        ShapeError: ``U`` of the wrong shape for the baseline.
        InputError: no activation (no state to match; for hooks the message says how to expose
            the activations), or ``rescale=True`` with a non-positively-homogeneous activation.
        NonFiniteError: NaN/Inf in ``U`` or in the states or outputs (naming the rows).
        WellPosednessError: an ImplicitModel with ``lambda_pf(|A|) >= kappa`` and ``rescale=True``.
        ConversionError: ``method="convert"`` and a network the converter cannot trace.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6), torch.nn.ReLU(),
        ...                           torch.nn.Linear(6, 2))           # LayerNorm: not convertible
        >>> st = extract_states(net, torch.randn(20, 4))                 # falls back to hooks
        >>> st.method, st.X.shape, [lay.label for lay in st.layers]
        ('hooks', torch.Size([20, 6]), ['2'])
    """
    _check_dtype(dtype)
    check_choice("method", method, METHODS)
    g = _check_kappa_gamma(kappa, gamma)
    if not isinstance(baseline, nn.Module):
        raise InputError(f"baseline must be a torch.nn.Module or an ImplicitModel, got "
                         f"{type(baseline).__name__}")
    if not isinstance(U, Tensor):
        raise InputError(f"U must be a torch.Tensor (m, *input_dims), got {type(U).__name__}")
    if not U.is_floating_point():
        raise InputError(f"U must be a floating tensor, got {U.dtype}; pass U.double() or U.float()")
    if U.dim() < 2 or U.shape[0] == 0:
        raise ShapeError(f"U must be batch-first (m, *input_dims) with m >= 1, got shape {tuple(U.shape)}; "
                         f"for a single input use U[None]")
    if not all_finite(U):
        raise NonFiniteError("U contains NaN or Inf; clean or impute the inputs first")
    net_dtype = _net_dtype(baseline)
    dt = dtype or net_dtype
    net = baseline if dt == net_dtype else copy.deepcopy(baseline).to(dt)
    U = U.detach().to(device=_net_device(net), dtype=dt)
    if isinstance(baseline, ImplicitModel):
        return _implicit(net, U, rescale, kappa, g)  # type: ignore[arg-type]
    hooked = method == "hooks" or (method == "auto" and bool(skip_layers or identity_layers))
    if hooked:
        return _hooked(net, U, rescale, kappa, g, skip_layers, identity_layers)
    try:
        return _layered(net, U, rescale, kappa, g)
    except ConversionError as conv:
        if method == "convert":
            raise
        refusal = conv
    try:
        return _hooked(net, U, rescale, kappa, g, skip_layers, identity_layers)
    except InputError as exc:
        if type(exc) is not InputError:
            raise
        raise InputError(f"{exc}. (method='auto' tried the converter first, which refused the network: "
                         f"{refusal})") from exc


def _hooked(net: nn.Module, U: Tensor, rescale: bool, kappa: float, gamma: float,
            skip_layers: Sequence[str], identity_layers: Sequence[str]) -> States:
    """States from forward hooks (:mod:`idlkit.sim.hooks`), rescaled as the module docstring says."""
    hs = hook_states(net, U, skip_layers=skip_layers, identity_layers=identity_layers)
    n = hs.Z.shape[1]
    ones = torch.ones(n, dtype=torch.float64)
    if not rescale:
        return States(hs.Z, hs.X, hs.Y_hat, hs.U, ones, 1.0, None, float(kappa), hs.activation,
                      hs.baseline_nnz, None, "hooks", hs.layers)
    homog, _ = _homogeneous(hs.activation, n)
    if not homog:
        bad = sorted({f"{lay.label}: {lay.activation!r}" for lay in hs.layers
                      if not _homogeneous(lay.activation, lay.size)[0]})
        raise InputError(f"rescale=True needs positively homogeneous activations (ReLU, LeakyReLU, max "
                         f"pooling, identity); the hooked blocks {bad[:4]} are not, and no linear rescaling "
                         f"keeps X = phi(Z) for them (paper 002 Thm 2.4); pass rescale=False for the exact, "
                         f"unscaled states")
    s = max(1.0, gamma * hs.weight_norm)
    depth = np.zeros(n, dtype=np.int64)
    for lay in hs.layers:
        depth[lay.offset:lay.offset + lay.size] = lay.position
    scale = torch.from_numpy(np.exp(-depth * math.log(s)))
    c = scale.to(dtype=hs.Z.dtype, device=hs.Z.device)
    Zs, Xs = hs.Z * c, hs.X * c
    _check_finite(Z=Zs, X=Xs)
    return States(Zs, Xs, hs.Y_hat, hs.U, scale, s, gamma, float(kappa), hs.activation, hs.baseline_nnz,
                  torch.from_numpy(depth), "hooks", hs.layers)


def _layered(net: nn.Module, U: Tensor, rescale: bool, kappa: float, gamma: float) -> States:
    from .. import convert

    with torch.no_grad():
        try:
            Y = net(U)
        except RuntimeError as e:
            raise ShapeError(f"the baseline cannot run on U of shape {tuple(U.shape)} ({e}); U must be "
                             f"batch-first (m, *input_dims) as the network expects") from e
        if not isinstance(Y, Tensor):
            raise InputError(f"the baseline must return one tensor, got {type(Y).__name__}")
        Z, X = convert.states(net, U)
        if Z.shape[1] == 0:
            raise InputError("the baseline has no activation, so it has no hidden state to match (SIM "
                             "needs pre/post-activation states); fit its linear map directly instead")
        model = convert.from_torch(net, U[:1], sparse="auto")
    Y = Y.detach().reshape(U.shape[0], -1)
    Uf = U.reshape(U.shape[0], -1)
    _check_finite(Z=Z, X=X, Y_hat=Y)
    n = Z.shape[1]
    act = model.activation
    nnz = sum(count_nonzero(p) for p in net.parameters())
    ones = torch.ones(n, dtype=torch.float64)
    if not rescale:
        return States(Z, X, Y, Uf, ones, 1.0, None, float(kappa), act, nnz)
    homog, blocks = _homogeneous(act, n)
    if not homog:
        raise InputError(f"rescale=True needs a positively homogeneous activation (ReLU, LeakyReLU, max "
                         f"pooling): phi = {act!r} is not, and no linear rescaling keeps X = phi(Z) "
                         f"(paper 002 Thm 2.4); pass rescale=False for the exact, unscaled states")
    w = max(_inf_norm(model.A), _inf_norm(model.B), _inf_norm(model.C))
    s = max(1.0, gamma * w)
    depth = _depths(model.A, blocks)
    scale = torch.from_numpy(np.exp(-depth * math.log(s)))
    c = scale.to(dtype=Z.dtype, device=Z.device)
    Zs, Xs = Z * c, X * c
    _check_finite(Z=Zs, X=Xs)
    return States(Zs, Xs, Y, Uf, scale, s, gamma, float(kappa), act, nnz, torch.from_numpy(depth))


def _perron(A: np.ndarray, iters: int = 2000, tol: float = 1e-13) -> np.ndarray:
    """A positive vector ``v`` with ``(|A| v)_i / v_i`` near ``lambda_pf(|A|)`` (power iteration on
    ``|A| + eps 11^T``, which is positive hence has a positive Perron vector)."""
    n = A.shape[0]
    M = np.abs(A) + 1e-12 * max(np.abs(A).max(), 1.0) / n
    v = np.ones(n)
    for _ in range(iters):
        w = M @ v
        w /= w.max()
        if np.abs(w - v).max() < tol:
            v = w
            break
        v = w
    return v


def _implicit(model: ImplicitModel, U: Tensor, rescale: bool, kappa: float, gamma: float) -> States:
    if U.dim() != 2 or U.shape[1] != model.in_features:
        raise ShapeError(f"U must have shape (m, {model.in_features}) for this ImplicitModel, got "
                         f"{tuple(U.shape)}")
    n = model.hidden
    if n == 0:
        raise InputError("the ImplicitModel has hidden = 0: no state to match; fit its linear map directly")
    with torch.no_grad():
        X = model.equilibrium(U).detach()
        A, B = to_dense(model.A), to_dense(model.B)
        Z = X @ A.t() + U @ B.t()
        if model.b is not None:
            Z = Z + model.b
        Y = model(U).detach()
    _check_finite(Z=Z, X=X, Y_hat=Y)
    nnz = sum(count_nonzero(t) for t in (model.A, model.B, model.C, model.D, model.b, model.d))
    act = model.activation
    ones = torch.ones(n, dtype=torch.float64)
    norm = _inf_norm(A)
    if not rescale or norm < kappa:
        return States(Z, X, Y, U, ones, 1.0, gamma if rescale else None, float(kappa), act, nnz,
                      method="implicit")
    homog, _ = _homogeneous(act, n)
    if not homog:
        raise InputError(f"||A||_inf = {norm:.4g} >= kappa = {kappa} and phi = {act!r} is not positively "
                         f"homogeneous, so the states cannot be rescaled (paper 002 Thm 2.4); pass "
                         f"rescale=False or a larger kappa")
    Ad = A.detach().cpu().double().numpy()
    v = _perron(Ad)
    achieved = float(((np.abs(Ad) @ v) / v).max())
    if not achieved < kappa:
        raise WellPosednessError(f"lambda_pf(|A|) ~= {achieved:.4g} >= kappa = {kappa}: no diagonal "
                                 f"rescaling of the states gives ||A'||_inf <= kappa; raise kappa (<= 1) "
                                 f"or pass rescale=False")
    scale = torch.from_numpy(1.0 / v)
    if not all(scale.isfinite()):
        raise NonFiniteError("the Perron rescaling overflowed (|A| nearly reducible); pass rescale=False")
    c = scale.to(dtype=Z.dtype, device=Z.device)
    return States(Z * c, X * c, Y, U, scale, 1.0, gamma, float(kappa), act, nnz, method="implicit")
