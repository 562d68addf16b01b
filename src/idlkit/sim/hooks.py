"""States of any network through forward hooks on its activation modules (paper 002 §3).

:func:`idlkit.convert.states` reads ``(Z, X)`` off the exact implicit form of a network that
``torch.fx`` can trace and the converter can express (paper 000 §3). Many useful teachers
cannot: layer norm, standard dot-product attention, data-dependent control flow, custom
CUDA kernels. SIM itself does not need the implicit form, only the states (paper 002 eq. 2:
``Z = A X + B U``, ``Y_hat = C X + D U`` are *fitted*), so :func:`hook_states` records them
with forward hooks instead:

* every **activation module** of the network (the module types of the converter's table,
  :data:`idlkit.convert.nonlinear.MODULES`: ``nn.ReLU``, ``nn.LeakyReLU``, ``nn.GELU``,
  ``nn.SiLU``, ``nn.Tanh``, ``nn.Softmax``, ..., plus ``nn.MaxPool2d`` as a BlockMax block,
  paper 000 §3.3) that runs in the forward pass gives one state block per call: ``Z`` is the
  module's input, ``X`` its output, each flattened per sample (batch-first). The map is
  recorded per block exactly as the converter would build it (:class:`StateLayer`,
  ``activation``), so ``X = phi(Z)`` blockwise: ``Threshold(t, t)`` is ``t + relu(z - t)``
  with ``Z = input - t``, a softmax over dim ``d`` moves ``d`` last, max pooling stores the
  copy of each window (``Z``) and its max in the window's first slot (``X``);
* ``skip_layers`` names modules (and everything inside them) whose activations are *not*
  states, e.g. ``"encoder.layers.0.self_attn"`` or a ``LogSoftmax`` at the output;
* ``identity_layers`` names modules whose *output* is recorded as a linear state
  (``phi = Identity``, ``X = Z``), e.g. a pooling or normalisation layer whose output the
  SIM model should match (the pooled representation of a Transformer classifier).

The blocks are stacked **last call on top**, ``x = (x_L; ...; x_1)``, as every state of
idlkit (paper 002 §3). For a network the converter handles as a chain of affine layers and
activation modules (ReLU MLPs, CNNs) the hooked ``(Z, X)`` equal the converter's bit for
bit (tests). Module inputs are copied *before* the call (a forward pre-hook), so in-place
activations (``nn.ReLU(inplace=True)``) are recorded correctly, and a module called several
times (ResNet's shared ``relu``) gives one block per call.

Limits, on purpose: functional calls (``F.relu(x)``, ``x.tanh()``) are not modules and are
invisible to hooks (use activation modules, or the converter); a tensor whose first dimension
is not the batch (``batch_first=False`` sequences) is refused; modules in training mode that
make the forward random or batch-dependent (dropout, batch norm, RReLU) are refused: call
``net.eval()``. The hooks are removed before :func:`hook_states` returns, and the network is
never modified (it runs under ``torch.no_grad()``).

Note on torch's fused Transformer fast path: ``nn.TransformerEncoderLayer`` skips its
submodules in eval mode *unless* hooks are attached to them, which ours are, so its
feed-forward activation runs as a module and is recorded. Pass the activation as a module
(``activation=nn.GELU()``): the string ``"gelu"`` makes torch call ``F.gelu`` (invisible).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._matrix import count_nonzero
from .._validation import all_finite
from ..activations import Activation, BlockMax, Identity, SoftMax, stack_activations
from ..convert import linear_maps as lm
from ..convert import nonlinear as nl
from ..errors import ConfigurationError, InputError, NonFiniteError, ShapeError

__all__ = ["StateLayer", "HookedStates", "hook_states", "hookable_modules"]

_RANDOM_IN_TRAINING = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, nn.RReLU)
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class StateLayer:
    """One state block recorded by a hook, in the stacked state.

    Attributes:
        name: the module's name in ``net.named_modules()`` (``""`` for the network itself).
        call: 0 for the module's first call in the forward pass, 1 for its second, ...
        kind: ``"activation"`` (a table module), ``"maxpool"`` (BlockMax, §3.3) or
            ``"identity"`` (an ``identity_layers`` output).
        size: number of states of the block (the per-sample size of the tensor).
        offset: first row of the block in the stacked state ``(x_L; ...; x_1)``.
        position: forward position of the call, 1 for the first recorded block (its depth
            in the rescaling of :func:`~idlkit.sim.extract_states`).
        activation: ``phi`` on the block, so that ``X[:, offset:offset + size] =
            phi(Z[:, offset:offset + size])``.
    """

    name: str
    call: int
    kind: str
    size: int
    offset: int
    position: int
    activation: Activation

    @property
    def label(self) -> str:
        """``name`` (``<root>`` for the network itself) with ``@call`` for repeated calls."""
        base = self.name or "<root>"
        return base if self.call == 0 else f"{base}@{self.call}"


@dataclass(frozen=True)
class HookedStates:
    """Raw (unscaled) states recorded by :func:`hook_states`, batch-first.

    Attributes:
        Z: ``(m, n)`` pre-activation states, last call on top.
        X: ``(m, n)`` post-activation states, ``X = phi(Z)``.
        Y_hat: the network's output, flattened to ``(m, q)``.
        U: the input, flattened to ``(m, p)``.
        layers: the blocks in stacked order (top, i.e. last call, first).
        activation: ``phi`` on the whole stacked state (blockwise).
        weight_norm: ``max ||W||_inf`` over the ``nn.Linear``/``nn.Conv*`` modules that ran,
            outside ``skip_layers`` (a convolution's matrix row sum is at most the sum of
            ``|kernel|`` of its output channel, attained at interior pixels) and 1 per
            max-pooling block (a gather): the ``max_l ||W_l||_inf`` of paper 002 §3 read off
            the modules.
        baseline_nnz: nonzero parameters of the network.
    """

    Z: Tensor
    X: Tensor
    Y_hat: Tensor
    U: Tensor
    layers: tuple[StateLayer, ...]
    activation: Activation
    weight_norm: float
    baseline_nnz: int


@dataclass
class _Record:
    name: str
    call: int
    kind: str
    act: Activation
    z: Tensor
    x: Tensor


def _label(name: str) -> str:
    return name or "<root>"


def _spec(mod: nn.Module) -> nl.Spec | str | None:
    """What a hook records for ``mod``: a converter spec, ``"maxpool"``, or None (not a state).

    A module with submodules is a container (attention, transformer layers): never a state
    itself; its activation submodules are hooked one by one."""
    if any(True for _ in mod.children()):
        return None
    if isinstance(mod, nn.MaxPool2d):
        return "maxpool"
    for klass in type(mod).__mro__:
        make = nl.MODULES.get(klass)
        if make is not None:
            return make(mod)  # may raise nl.Refused
    return None


def hookable_modules(net: nn.Module, skip_layers: Sequence[str] = ()) -> list[str]:
    """Names of the modules whose calls :func:`hook_states` records as states (in module order,
    not forward order; ``skip_layers`` and their submodules left out).

    Args:
        net: the torch network.
        skip_layers: module names left out (with their submodules).

    Returns:
        The module names, in module order.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> hookable_modules(net)
        ['1']
    """
    skip = _check_names(net, skip_layers, "skip_layers")
    out = []
    for name, mod in net.named_modules():
        if _skipped(name, skip):
            continue
        try:
            if _spec(mod) is not None:
                out.append(name)
        except nl.Refused:
            out.append(name)
    return out


def _check_names(net: nn.Module, names: Sequence[str], what: str) -> frozenset[str]:
    if isinstance(names, str):
        raise ConfigurationError(f"{what} must be a list of module names, got the string {names!r}; "
                                 f"write {what}=[{names!r}]")
    known = dict(net.named_modules())
    bad = [n for n in names if not isinstance(n, str) or n not in known]
    if bad:
        hints = []
        for b in bad[:3]:
            close = difflib.get_close_matches(str(b), [k for k in known if k], n=3)
            hints.append(f"{b!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise ConfigurationError(f"{what}: no module named {', '.join(hints)} in {type(net).__name__}; "
                                 f"names are those of net.named_modules(), e.g. "
                                 f"{[k for k in known if k][:5]}")
    return frozenset(names)


def _skipped(name: str, skip: frozenset[str]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def _flat(t: Tensor, m: int, who: str, what: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise InputError(f"module {who}: its {what} is a {type(t).__name__}, not a tensor; put it in "
                         f"skip_layers")
    if t.dim() == 0 or t.shape[0] != m:
        raise ShapeError(f"module {who}: its {what} has shape {tuple(t.shape)}, whose first dimension is "
                         f"not the batch size m = {m}; hooks need batch-first tensors (e.g. "
                         f"batch_first=True), or put the module in skip_layers")
    return t.reshape(m, -1)


def _pointwise(spec: nl.Pointwise, inp: Tensor, out: Tensor, m: int, who: str) -> tuple[Tensor, Tensor]:
    if out.shape != inp.shape:
        raise ShapeError(f"module {who}: output shape {tuple(out.shape)} differs from its input's "
                         f"{tuple(inp.shape)}; a componentwise activation keeps the shape")
    z = _flat(inp, m, who, "input")
    if spec.plain:
        return z, _flat(out, m, who, "output")
    z = z * spec.in_scale + spec.in_shift  # as the converter: x = act(z), y = out_scale x + out_shift
    return z, spec.act(z.t()).t()


def _softmax(spec: nl.Softmax, inp: Tensor, out: Tensor, m: int, who: str
             ) -> tuple[Tensor, Tensor, Activation]:
    nd = inp.dim()
    dim = spec.dim
    if dim is None or nd < 2 or not -nd <= int(dim) < nd or int(dim) % nd == 0:  # type: ignore[call-overload]
        raise InputError(f"module {who}: softmax over dim={dim!r} of a {nd}-d tensor: give the dim "
                         f"(nn.Softmax(dim=...)), and not the batch (dim 0)")
    d = int(dim) % nd  # type: ignore[call-overload]
    sign = -1.0 if spec.negate else 1.0
    z = _flat(inp.movedim(d, -1), m, who, "input") * sign
    x = _flat(out.movedim(d, -1), m, who, "output")
    return z, x, SoftMax(int(inp.shape[d]))


def _maxpool(mod: nn.MaxPool2d, inp: Tensor, out: object, m: int, who: str
             ) -> tuple[Tensor, Tensor, Activation]:
    if mod.return_indices or not isinstance(out, Tensor):
        raise InputError(f"module {who}: MaxPool2d(return_indices=True) is not a state map; put it in "
                         f"skip_layers")
    if inp.dim() != 4:
        raise ShapeError(f"module {who}: max pooling of a tensor of shape {tuple(inp.shape)}; hooks "
                         f"record (batch, C, H, W) inputs only")

    def pair(v: object) -> tuple[int, int]:
        return (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)  # type: ignore[return-value,union-attr]

    C, H, W = inp.shape[1:]
    Ho, Wo = out.shape[2:]
    stride = mod.stride if mod.stride not in (None, ()) else mod.kernel_size
    try:
        G = lm.maxpool2d_windows((C, H, W), (Ho, Wo), pair(mod.kernel_size), pair(stride),
                                 pair(mod.padding), pair(mod.dilation))
    except ValueError as exc:
        raise InputError(f"module {who}: {exc}") from exc
    K = G.shape[1]
    z = _flat(inp, m, who, "input")[:, torch.as_tensor(G.ravel())]
    act = BlockMax(K)
    x = act(z.t()).t()
    if not torch.equal(x[:, ::K], _flat(out, m, who, "output")):  # pragma: no cover - a torch change
        raise InputError(f"module {who}: the window maxima do not reproduce MaxPool2d's output "
                         f"(ceil_mode?); put it in skip_layers")
    return z, x, act


def _weight_norm(mod: nn.Module) -> float:
    W = mod.weight.detach()
    if W.numel() == 0:
        return 0.0
    return float(W.abs().reshape(W.shape[0], -1).sum(dim=1).max())


def _check_eval(net: nn.Module) -> None:
    for name, mod in net.named_modules():
        if mod.training and isinstance(mod, _RANDOM_IN_TRAINING) and (
                not isinstance(mod, nn.modules.dropout._DropoutNd) or mod.p > 0):
            raise InputError(f"module {_label(name)} ({type(mod).__name__}) is in training mode, where the "
                             f"forward pass is random or depends on the batch; call net.eval() first")


def _check_finite_rows(name: str, t: Tensor, layers: Sequence[StateLayer] = ()) -> None:
    """A NonFiniteError naming the samples (rows) and, for states, the blocks with NaN/Inf."""
    if all_finite(t):
        return
    bad = ~torch.isfinite(t)
    rows = torch.nonzero(bad.any(dim=1)).flatten().tolist()
    where = ""
    if layers:
        cols = bad.any(dim=0)
        hit = [lay.label for lay in layers if bool(cols[lay.offset:lay.offset + lay.size].any())]
        where = f" in block(s) {hit[:5]}{'...' if len(hit) > 5 else ''}"
    raise NonFiniteError(f"{name} has NaN or Inf in {len(rows)} row(s) (samples) {rows[:10]}"
                         f"{'...' if len(rows) > 10 else ''}{where}; check the network's weights and "
                         f"those inputs (scale U, or use float64)")


def hook_states(net: nn.Module, U: Tensor, *, skip_layers: Sequence[str] = (),
                identity_layers: Sequence[str] = ()) -> HookedStates:
    """``(Z, X, Y_hat)`` of ``net`` on ``U`` recorded by forward hooks (module docstring).

    Args:
        net: any ``torch.nn.Module`` in eval mode whose activations are modules (it need not be
            traceable). Not modified; runs under ``torch.no_grad()`` in its own dtype.
        U: inputs, batch-first ``(m, *input_dims)``, in the network's dtype and device.
        skip_layers: names (as in ``net.named_modules()``) of modules whose activations are not
            states; a container name skips everything inside it.
        identity_layers: names of modules whose output is recorded as a linear state
            (``phi = Identity``), e.g. the pooled representation before a classifier head.

    Returns:
        :class:`HookedStates`: raw states, last call on top, with the map of each block.

    Raises:
        ConfigurationError: a name in ``skip_layers``/``identity_layers`` that is no module.
        InputError: no activation module ran (functional activations are invisible to hooks;
            the message says the fix), a refused activation module (``Hardshrink``,
            ``LogSoftmax``, ``GLU``, ... : put it in ``skip_layers``), training mode.
        ShapeError: an activation tensor that is not batch-first, or a forward that fails on U.
        NonFiniteError: NaN/Inf in the states or outputs (naming the rows and blocks).

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.GELU(),
        ...                           torch.nn.Linear(4, 2))
        >>> hs = hook_states(net, torch.randn(5, 3))
        >>> hs.Z.shape, [lay.label for lay in hs.layers]
        (torch.Size([5, 4]), ['2'])
    """
    if not isinstance(net, nn.Module):
        raise InputError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    skip = _check_names(net, skip_layers, "skip_layers")
    ident = _check_names(net, identity_layers, "identity_layers")
    both = skip & ident
    if both:
        raise ConfigurationError(f"modules {sorted(both)} are in both skip_layers and identity_layers")
    _check_eval(net)
    m = U.shape[0]
    specs: dict[nn.Module, tuple[str, object]] = {}
    for name, mod in net.named_modules():
        if name in ident:
            specs[mod] = (name, "identity")
            continue
        if _skipped(name, skip):
            continue
        try:
            spec = _spec(mod)
        except nl.Refused as exc:
            raise InputError(f"module {_label(name)} ({type(mod).__name__}) has no state map: {exc}. If "
                             f"its output is not a state, pass skip_layers=[{name!r}]") from exc
        if isinstance(spec, nl.Glu):
            raise InputError(f"module {_label(name)} (GLU) is a product of two halves of its input (paper "
                             f"000 §2.4), not one activation per state; pass skip_layers=[{name!r}]")
        if spec is not None:
            specs[mod] = (name, spec)

    records: list[_Record] = []
    pending: dict[int, list[Tensor]] = {}
    calls: dict[int, int] = {}
    weight_norm = [0.0]

    def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        inp = args[0] if args else next(iter(kwargs.values()), None)
        # a copy before the call: in-place activations overwrite their input
        pending.setdefault(id(mod), []).append(inp.detach().clone() if isinstance(inp, Tensor) else inp)

    def hook(mod: nn.Module, args: tuple, kwargs: dict, out: object) -> None:
        name, spec = specs[mod]
        inp = None if spec == "identity" else pending[id(mod)].pop()
        call = calls.get(id(mod), 0)
        calls[id(mod)] = call + 1
        who = f"{_label(name)} ({type(mod).__name__})"
        act: Activation
        if spec == "identity":
            if not isinstance(out, Tensor):
                raise InputError(f"identity layer {who} returns a {type(out).__name__}, not a tensor")
            z = x = _flat(out.detach(), m, who, "output").clone()
            act, kind = Identity(), "identity"
        elif spec == "maxpool":
            z, x, act = _maxpool(mod, inp, out, m, who)  # type: ignore[arg-type]
            kind = "maxpool"
            weight_norm[0] = max(weight_norm[0], 1.0)
        else:
            if not isinstance(inp, Tensor) or not isinstance(out, Tensor):
                raise InputError(f"module {who}: expected a tensor input and output")
            kind = "activation"
            if isinstance(spec, nl.Pointwise):
                z, x = _pointwise(spec, inp, out.detach(), m, who)
                act = spec.act
            else:
                z, x, act = _softmax(spec, inp, out.detach(), m, who)  # type: ignore[arg-type]
            x = x.clone()  # the output may be a view of a tensor the network edits later
        records.append(_Record(name, call, kind, act, z, x))

    def weight_hook(mod: nn.Module, args: tuple, out: object) -> None:
        weight_norm[0] = max(weight_norm[0], _weight_norm(mod))

    handles = []
    try:
        for mod, (_, spec) in specs.items():
            if spec != "identity":
                handles.append(mod.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(mod.register_forward_hook(hook, with_kwargs=True))
        for name, mod in net.named_modules():
            if isinstance(mod, _WEIGHTED) and not _skipped(name, skip):
                handles.append(mod.register_forward_hook(weight_hook))
        with torch.no_grad():
            try:
                Y = net(U)
            except (RuntimeError, ValueError, TypeError) as e:
                if isinstance(e, InputError | ShapeError):
                    raise
                raise ShapeError(f"the network cannot run on U of shape {tuple(U.shape)} ({e}); U must be "
                                 f"batch-first (m, *input_dims) as the network expects") from e
    finally:
        for h in handles:
            h.remove()
    if not isinstance(Y, Tensor):
        raise InputError(f"the network must return one tensor, got {type(Y).__name__}; wrap it so that "
                         f"forward returns the logits")
    if not records:
        n_skip = sum(1 for name, _ in net.named_modules() if name and _skipped(name, skip))
        raise InputError(
            f"no activation module ran in the forward pass of {type(net).__name__}, so hooks recorded no "
            f"state. Hooks see modules only: functional calls inside forward (F.relu, torch.tanh, "
            f"x.relu()) are invisible; replace them by modules (nn.ReLU(), nn.GELU(); for "
            f"nn.TransformerEncoderLayer pass activation=nn.GELU(), not 'gelu'), use the converter "
            f"(extract_states(method='convert')) for a traceable network, or name a layer in "
            f"identity_layers" + (f" (skip_layers removed {n_skip} modules)" if n_skip else ""))
    Y = Y.detach().reshape(m, -1)
    # stack last call on top, x = (x_L; ...; x_1) (paper 002 §3)
    layers, offset = [], 0
    L = len(records)
    for k, r in enumerate(reversed(records)):
        size = r.z.shape[1]
        layers.append(StateLayer(r.name, r.call, r.kind, size, offset, L - k, r.act))
        offset += size
    Z = torch.cat([r.z for r in reversed(records)], dim=1)
    X = torch.cat([r.x for r in reversed(records)], dim=1)
    activation = stack_activations([(lay.size, lay.activation) for lay in layers])
    _check_finite_rows("Z (hooked pre-activation states)", Z, layers)
    _check_finite_rows("X (hooked states)", X, layers)
    _check_finite_rows("Y_hat (the network's output)", Y)
    if not math.isfinite(weight_norm[0]):
        raise NonFiniteError("a Linear/Conv weight of the network has NaN or Inf")
    return HookedStates(Z, X, Y, U.reshape(m, -1), tuple(layers), activation, weight_norm[0],
                        sum(count_nonzero(p) for p in net.parameters()))
