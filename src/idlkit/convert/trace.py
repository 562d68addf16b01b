"""Trace a network with ``torch.fx`` and turn it into state blocks (paper 000 §3).

:class:`Tracer` runs the traced graph node by node on the example input, computing
for every node both its value (used for shapes, and by :func:`idlkit.convert.states`)
and, when building, its :class:`~idlkit.convert.expr.Affine` expression. An
activation (any map of :mod:`idlkit.convert.nonlinear`: ReLU ... GELU, SoftMax over one
dimension) makes a new *state block* whose pre-activation is the expression of its input;
max pooling makes a BlockMax block holding a copy of each window (§3.3); recurrent layers and
cells (``nn.RNN``/``LSTM``/``GRU``, unrolled over the example's length, §3.5-3.6) are converted
by :mod:`idlkit.convert.recurrent`; products of two input-dependent tensors
(elementwise, matrix products, GLU, attention) make Product blocks (§2.4, §3.6, see
:mod:`idlkit.convert.multiplicative`). Everything else supported is affine and folds into
the expressions. The graph comes from :mod:`idlkit.convert.concrete`'s shape-specialising
tracer, so Python loops over the example's shapes unroll. Anything else raises
:class:`~idlkit.errors.ConversionError` naming the node, the module and the reason; nothing is
half converted.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..activations import Activation, BlockMax, SoftMax
from ..errors import ConversionError, IdlError
from . import linear_maps as lm
from . import nonlinear as nl
from .concrete import ExampleError, concrete_graph
from .expr import INPUT, Affine
from .multiplicative import MultiplicativeOps
from .products import NeedsBuild, block_ranges, expr_range
from .recurrent import convert_recurrent, packed_refusal, track_entries

__all__ = ["StateBlock", "Tracer", "trace_graph", "NeedsBuild"]


def _user_frame(stack_trace: str | None) -> str | None:
    """The innermost frame of a node's recorded stack outside torch.fx itself, preferring the
    user's code to torch's own modules (e.g. the ``forward`` that called the layer), as
    ``'File "...", line N, in f: code'``."""
    lines = (stack_trace or "").strip().splitlines()
    frames = []
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith("File "):
            code = lines[i + 1].strip() if i + 1 < len(lines) and not lines[i + 1].strip().startswith(
                "File ") else ""
            frames.append((text, code))
    torch_dir = os.path.dirname(torch.__file__)
    fx_dir = os.path.join(torch_dir, "fx")
    frames = [f for f in frames if fx_dir not in f[0]]
    if not frames:
        return None
    user = [f for f in frames if torch_dir not in f[0]]
    text, code = (user or frames)[-1]
    return f"{text}: {code}" if code else text


@dataclass
class StateBlock:
    """One block ``x_k = phi_k(z_k)`` of the state, in creation (forward) order.

    Attributes:
        name: where it comes from (the fx node, e.g. ``layer1.0.relu``; ``rnn@t3.l0``).
        size: number of states.
        act: its activation map (componentwise, ``BlockMax(K)`` or ``SoftMax(k)``).
        pre: its pre-activation as an :class:`Affine` of the input and earlier blocks.
        z: the pre-activation values on the traced input, ``(batch, size)``.
        x: the post-activation values on the traced input, ``(batch, size)``.
        lo: ``(size,)`` lower end of an interval holding each state for every input (``-inf``
            when unbounded; see :func:`idlkit.convert.products.block_ranges`), used to bound the
            factors of products.
        hi: ``(size,)`` upper end of that interval (``+inf`` when unbounded).
        deps: the earlier blocks its pre-activation reads (the keys of ``pre``), by which
            :meth:`Tracer.live` finds the blocks nobody reads.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> u = torch.randn(3, 4)
        >>> block = Tracer(net, u).run().blocks[0]
        >>> block.z.shape, torch.allclose(block.x, torch.relu(net[0](u)))
        (torch.Size([3, 6]), True)
    """

    name: str
    size: int
    act: Activation
    pre: Affine | None
    z: Tensor
    x: Tensor
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    deps: frozenset[int] = frozenset()


@dataclass
class _Env:
    val: dict = field(default_factory=dict)
    expr: dict = field(default_factory=dict)
    deps: dict = field(default_factory=dict)  # value-only trace: node -> blocks its value reads


def _tracer_with_traces() -> fx.Tracer:
    t = fx.Tracer()
    t.record_stack_traces = True
    return t


def trace_graph(net: nn.Module, example: Tensor | None = None) -> fx.GraphModule:
    """``torch.fx`` trace of ``net`` (specialised to ``example``'s shapes when given, see
    :mod:`idlkit.convert.concrete`); dynamic control flow raises :class:`ConversionError`.

    Args:
        net: the torch network.
        example: an example input to specialise the shapes to, or ``None``.

    Returns:
        The ``torch.fx.GraphModule``.

    Raises:
        ConversionError: dynamic control flow or an untraceable module.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> gm = trace_graph(net)
        >>> [n.op for n in gm.graph.nodes]
        ['placeholder', 'call_module', 'call_module', 'call_module', 'output']
    """
    if not isinstance(net, nn.Module):
        raise ConversionError(f"from_torch expects a torch.nn.Module, got {type(net).__name__}")
    if type(net) in nl.MODULES:  # a table module as the root: refuse it as the tracer would inside
        try:
            nl.MODULES[type(net)](net)
        except nl.Refused as exc:
            raise ConversionError(f"cannot convert {type(net).__name__}: {exc}") from exc
    try:
        if example is not None:
            return concrete_graph(net, example)
        tracer = _tracer_with_traces()
        graph = tracer.trace(net)
    except ExampleError as exc:
        raise ConversionError(f"cannot trace {type(net).__name__} on the example input: {exc}") from exc
    except Exception as exc:  # fx raises TraceError, TypeError, ... on data-dependent code
        raise ConversionError(
            f"torch.fx could not trace {type(net).__name__}: {type(exc).__name__}: {exc}. Dynamic "
            f"control flow (if/for on tensor values) cannot be converted into a fixed implicit "
            f"model; rewrite the branch without data-dependent Python control flow") from exc
    return fx.GraphModule(tracer.root, graph)


# ops that only move entries around (or pad with zeros): converted by the index trick
_REARRANGE_FUNCS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
                    torch.unsqueeze, torch.cat, torch.concat, torch.stack, F.pad, operator.getitem,
                    torch.swapaxes, torch.narrow, torch.movedim, torch.t, torch.unflatten}
_REARRANGE_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze",
                      "unsqueeze", "narrow", "swapaxes", "clone", "detach", "t", "movedim", "expand",
                      "expand_as", "repeat", "unflatten"}
_PASSTHROUGH_MODULES = (nn.Identity,)


def _pair(v: object) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, tuple | list) else (int(v), int(v))  # type: ignore[index]


class Tracer(MultiplicativeOps):
    """Interpret a traced network on ``example`` (batch-first), recording state blocks.

    ``build=False`` computes only values and blocks' ``z, x`` (for :func:`states`); it raises
    :class:`~idlkit.convert.products.NeedsBuild` where a product needs the expressions.

    Args:
        net: the torch network.
        example: a batch-first example input.
        build: also build the expressions of the implicit model (else values only).

    Raises:
        ConversionError: an unsupported operation, naming it.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> tr = Tracer(net, torch.randn(3, 4)).run()
        >>> [(b.name, b.size, b.act.name) for b in tr.blocks], tr.output.shape
        ([('_1', 6, 'relu')], (2,))
    """

    def __init__(self, net: nn.Module, example: Tensor, build: bool = True) -> None:
        if not isinstance(example, Tensor) or example.dim() < 2 or not example.is_floating_point():
            raise ConversionError(f"example_input must be a floating tensor (batch, *dims), got "
                                  f"{getattr(example, 'shape', type(example).__name__)}")
        self.net, self.example, self.build = net, example, build
        self.gm = trace_graph(net, example)
        self.modules = dict(self.gm.named_modules())
        self.blocks: list[StateBlock] = []
        self.batch = example.shape[0]
        self.output: Affine | None = None
        self.output_value: Tensor | None = None
        self.output_deps: frozenset[int] = frozenset()

    # ------------------------------------------------------------------ errors

    def _fail(self, node: fx.Node, reason: str) -> ConversionError:
        where = f"node {node.name!r} ({node.op} {self._target_name(node)})"
        frame = _user_frame(node.stack_trace)
        if frame:
            where += f", at {frame}"
        return ConversionError(f"cannot convert {where}: {reason}")

    def _target_name(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"{node.target!r}: {type(self.modules[node.target]).__name__}"
        return getattr(node.target, "__name__", repr(node.target))

    # ------------------------------------------------------------------ driver

    def run(self) -> Tracer:
        env = _Env()
        # free each value and expression after its last use (as torch.fx.Interpreter does):
        # the expressions of a large network (float64 sparse maps) would otherwise all stay alive
        last_uses: dict[fx.Node, list[fx.Node]] = {}
        seen: set[fx.Node] = set()
        for node in reversed(self.gm.graph.nodes):
            for a in node.all_input_nodes:
                if a not in seen:
                    seen.add(a)
                    last_uses.setdefault(node, []).append(a)
        self._position = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if any(n.op == "placeholder" for n in env.val):
                    raise self._fail(node, "networks with more than one input are not supported")
                env.val[node] = self.example
                env.expr[node] = Affine.source(INPUT, tuple(self.example.shape[1:]))
                continue
            if node.op == "output":
                self._output(node, env)
                continue
            args = fx.node.map_arg(node.args, lambda n: env.val[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env.val[n])
            run_args = self._before_inplace(node, env, args) if self._mutates(node, args, kwargs) else args
            try:
                value = self._evaluate(node, run_args, kwargs)
            except ConversionError:
                raise
            except Exception as exc:
                raise self._fail(node, f"running it on the example input failed (shape mismatch?): "
                                       f"{type(exc).__name__}: {exc}") from exc
            env.val[node] = value
            n_before = len(self.blocks)
            env.expr[node] = self._convert(node, args, kwargs, value, env)
            if not self.build and env.expr[node] is not None:
                self._track_deps(node, env, n_before)
            del args, run_args, kwargs, value
            for a in last_uses.get(node, ()):
                env.val.pop(a, None)
                env.expr.pop(a, None)
                env.deps.pop(a, None)
        return self

    def live(self) -> list[int]:
        """Indices of the blocks the output reads, directly or through later blocks' pre-activations
        (a block nobody reads, e.g. a sigmoid gate absorbed as a product factor, which reads its
        pre-activation instead, is left out of the model and of :func:`states` alike)."""
        live = set(self.output_deps)
        for k in range(len(self.blocks) - 1, -1, -1):
            if k in live:
                live |= self.blocks[k].deps
        return sorted(live)

    def _track_deps(self, node: fx.Node, env: _Env, n_before: int) -> None:
        """Value-only trace: the blocks ``node``'s value reads, mirroring the keys its expression
        would have (a block-making node reads its new blocks, which read what its inputs read;
        any other node reads what its inputs read). Products never get here (they need the
        expressions), so this agrees with the keys of a building trace."""
        reads = frozenset().union(*(env.deps.get(a, frozenset()) for a in node.all_input_nodes))
        new = range(n_before, len(self.blocks))
        for k in new:
            self.blocks[k].deps = reads | frozenset(range(n_before, k))
        env.deps[node] = frozenset(new) if len(new) else reads

    def _mutates(self, node: fx.Node, args: tuple, kwargs: dict) -> bool:
        """Whether ``node`` writes into its first argument (``relu_``, ``inplace=True``, ``+=``)."""
        if node.op == "call_module":
            return bool(getattr(self.modules[node.target], "inplace", False))
        if node.op == "call_method":
            name, fn = str(node.target), nl.METHODS.get(str(node.target))
        elif node.op == "call_function":
            name = getattr(node.target, "__name__", "")
            fn = nl.FUNCTIONS.get(node.target) if _hashable(node.target) else None
        else:
            return False
        inplace = kwargs.get("inplace", False)
        if fn is not None and "inplace" in fn.params:
            inplace = _getter(args, kwargs, ["input", *fn.params])("inplace", False)
        return nl.mutates(name, inplace)

    def _before_inplace(self, node: fx.Node, env: _Env, args: tuple) -> tuple:
        """The arguments to run an in-place op on: a copy of its input, so the input's value stays
        the pre-activation; refuses if the network reads the overwritten tensor (or a view of
        it) later, since its expression would not follow the write."""
        target = args[0] if args else None
        if not isinstance(target, Tensor):
            return args
        here = self._position[node]
        ptr = _storage(target)
        for other, val in env.val.items():
            if isinstance(val, Tensor) and ptr is not None and _storage(val) == ptr and \
                    any(self._position[u] > here for u in other.users):
                raise self._fail(node, f"this in-place operation overwrites {other.name!r}, which is "
                                       f"read again later; use the out-of-place form (inplace=False)")
        return (target.clone(), *args[1:])

    def _evaluate(self, node: fx.Node, args: tuple, kwargs: dict) -> object:
        if node.op == "get_attr":
            obj: object = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        raise self._fail(node, f"unknown fx op {node.op!r}")

    def _output(self, node: fx.Node, env: _Env) -> None:
        arg = node.args[0]
        if not isinstance(arg, fx.Node) or not isinstance(env.val.get(arg), Tensor):
            raise self._fail(node, "the network must return one tensor (nn.RNN/LSTM/GRU return (out, h_n): "
                                   "return one of them, e.g. out[:, -1])")
        value = env.val[arg]
        expr = env.expr.get(arg)
        if not isinstance(expr, Affine):
            raise self._fail(node, "the output does not depend on the input")
        if expr.batch_dim != 0 or value.shape[0] != self.batch:
            raise self._fail(node, f"the output of shape {tuple(value.shape)} is not batch-first")
        self.output, self.output_value = expr, value
        self.output_deps = (frozenset(k for k in expr.terms if k != INPUT) if self.build
                            else env.deps.get(arg, frozenset()))

    # ------------------------------------------------------------------ node conversion

    def _convert(self, node: fx.Node, args: tuple, kwargs: dict, value: object, env: _Env) -> object:
        deps = [env.expr.get(a) for a in node.all_input_nodes]
        if not any(isinstance(d, Affine | tuple) for d in deps):
            return None  # a constant (parameters, shapes, ...): evaluated only
        if node.op == "call_module":
            res = self._module(node, self.modules[node.target], args, kwargs, value, env)
        elif node.op == "call_function":
            res = self._function(node, args, kwargs, value, env)
        elif node.op == "call_method":
            res = self._method(node, args, kwargs, value, env)
        else:
            raise self._fail(node, "unsupported node")
        if self.build or res is None or isinstance(res, tuple) or \
                isinstance(res, Affine) and res.batch_dim != 0:
            return res
        if not isinstance(value, Tensor):
            raise self._fail(node, "expected a tensor result")
        return Affine(tuple(value.shape[1:]))

    def _in(self, node: fx.Node, env: _Env, i: int = 0) -> Affine:
        a = node.args[i]
        e = env.expr.get(a) if isinstance(a, fx.Node) else None
        if not isinstance(e, Affine):
            raise self._fail(node, f"argument {i} is not a tensor computed from the input")
        if e.batch_dim != 0:
            raise self._fail(node, f"this tensor keeps the batch in dim {e.batch_dim} (a sequence-first "
                                   f"output or h_n of a recurrent layer): index it (h_n[-1], out[-1]) or "
                                   f"make it batch-first (out.transpose(0, 1)) first")
        return e

    def _module(self, node: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: object,
                env: _Env) -> object:
        name = str(node.target)
        if isinstance(mod, _PASSTHROUGH_MODULES):
            return self._in(node, env)
        if isinstance(mod, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.AlphaDropout):
            if mod.training and mod.p > 0:
                raise self._fail(node, f"dropout {name!r} is in training mode (random); call net.eval()")
            return self._in(node, env)
        if type(mod) in nl.MODULES:
            return self._nonlinear(node, env, lambda: nl.MODULES[type(mod)](mod), args, value)
        if isinstance(mod, nn.Linear):
            return self._linear(node, env, mod.weight, mod.bias)
        if isinstance(mod, nn.Conv1d | nn.Conv2d):
            return self._conv(node, env, mod, args[0], value)
        if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
            return self._batchnorm(node, env, mod, value)
        if isinstance(mod, nn.AvgPool2d):
            return self._avgpool(node, env, args[0], value, mod.kernel_size, mod.stride, mod.padding,
                                 mod.count_include_pad, mod.divisor_override)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return self._adaptive_avgpool(node, env, args[0], value)
        if isinstance(mod, nn.MaxPool2d):
            if mod.return_indices:
                raise self._fail(node, "MaxPool2d(return_indices=True) is not supported")
            return self._maxpool(node, env, args[0], value, mod.kernel_size, mod.stride, mod.padding,
                                 mod.dilation)
        if isinstance(mod, nn.Flatten | nn.Unflatten):
            return self._rearrange(node, env, lambda x: mod(x), value)
        if isinstance(mod, nn.RNNBase | nn.RNNCellBase):
            return convert_recurrent(self, node, env, mod, args, kwargs, value)
        raise self._fail(node, f"unsupported module {type(mod).__name__} (supported: Linear, Conv1d/2d, "
                               f"BatchNorm1d/2d (eval), AvgPool2d, MaxPool2d, AdaptiveAvgPool2d, "
                               f"Flatten, Unflatten, Dropout (eval), Identity, RNN/LSTM/GRU and "
                               f"their cells, and the nonlinearities {nl.SUPPORTED_MODULES})")

    def _function(self, node: fx.Node, args: tuple, kwargs: dict, value: object, env: _Env) -> object:
        f = node.target
        fn = nl.FUNCTIONS.get(f) if _hashable(f) else None
        if fn is not None:
            get = _getter(args, kwargs, ["input", *fn.params])
            return self._nonlinear(node, env, lambda: fn.make(get), args, value)
        if f in (torch.matmul, operator.matmul, torch.bmm, torch.mm):
            return self._matmul(node, env, args, value)
        if f is F.scaled_dot_product_attention:
            get = _getter(args, kwargs, ["query", "key", "value", "attn_mask", "dropout_p", "is_causal",
                                         "scale", "enable_gqa"])
            return self._sdpa(node, env, get, value)
        if f is getattr:
            if args[1] in ("T", "mT"):
                return self._rearrange(node, env, None, value)
            if args[1] in ("shape", "dtype", "device", "ndim", "layout", "is_cuda"):
                return None  # metadata: a constant
            raise self._fail(node, f"unsupported tensor attribute .{args[1]}")
        if f in (F.dropout, torch.dropout):
            training = kwargs.get("training", args[2] if len(args) > 2 else f is F.dropout)
            p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            if training and p > 0:
                raise self._fail(node, "functional dropout with training=True (random); pass "
                                       "training=self.training and call net.eval()")
            return self._in(node, env)
        if f in (F.avg_pool2d,):
            get = _getter(args, kwargs, ["input", "kernel_size", "stride", "padding", "ceil_mode",
                                         "count_include_pad", "divisor_override"])
            k = get("kernel_size")
            return self._avgpool(node, env, args[0], value, k, get("stride") or k, get("padding", 0),
                                 get("count_include_pad", True), get("divisor_override"))
        if f in (F.max_pool2d, torch.max_pool2d):
            get = _getter(args, kwargs, ["input", "kernel_size", "stride", "padding", "dilation",
                                         "ceil_mode", "return_indices"])
            if get("return_indices", False):
                raise self._fail(node, "max_pool2d(return_indices=True) is not supported")
            k = get("kernel_size")
            return self._maxpool(node, env, args[0], value, k, get("stride") or k, get("padding", 0),
                                 get("dilation", 1))
        if f in (F.adaptive_avg_pool2d,):
            return self._adaptive_avgpool(node, env, args[0], value)
        if f in (operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub):
            alpha = kwargs.get("alpha", 1)
            sign = -1.0 if f in (operator.sub, operator.isub, torch.sub) else 1.0
            return self._sum(node, env, args, value, sign * alpha)
        if f in (operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div):
            return self._scalar_mul(node, env, args, value,
                                    f in (operator.truediv, operator.itruediv, torch.div))
        if f in (operator.neg, torch.neg):
            return self._in(node, env).scale(-1.0)
        if f is operator.getitem and isinstance(env.expr.get(node.args[0]), tuple):
            return env.expr[node.args[0]][args[1]]
        if f in (torch.unbind, torch.split, torch.chunk):
            return track_entries(self, node, env)
        if f in _REARRANGE_FUNCS:
            return self._rearrange(node, env, None, value)
        if f is F.linear:
            return self._linear(node, env, args[1], args[2] if len(args) > 2 else kwargs.get("bias"))
        if f in (torch.mean, torch.sum):
            get = _getter(args, kwargs, ["input", "dim", "keepdim"])
            return self._reduce(node, env, args[0], value, get("dim"), f is torch.mean)
        raise self._fail(node, packed_refusal(f) or f"unsupported function {getattr(f, '__name__', f)!r}")

    def _method(self, node: fx.Node, args: tuple, kwargs: dict, value: object, env: _Env) -> object:
        m = str(node.target)
        if m in nl.METHODS:
            fn = nl.METHODS[m]
            get = _getter(args, kwargs, ["input", *fn.params])
            return self._nonlinear(node, env, lambda: fn.make(get), args, value)
        if m in ("matmul", "bmm", "mm", "__matmul__"):
            return self._matmul(node, env, args, value)
        if m in ("size", "dim"):
            return None
        if m in ("add", "add_", "sub", "sub_"):
            sign = -1.0 if m.startswith("sub") else 1.0
            return self._sum(node, env, args, value, sign * kwargs.get("alpha", 1))
        if m in ("mul", "mul_", "div", "div_"):
            return self._scalar_mul(node, env, args, value, m.startswith("div"))
        if m in _REARRANGE_METHODS:
            return self._rearrange(node, env, None, value)
        if m in ("unbind", "split", "chunk"):
            return track_entries(self, node, env)
        if m in ("mean", "sum"):
            get = _getter(args, kwargs, ["input", "dim", "keepdim"])
            return self._reduce(node, env, args[0], value, get("dim"), m == "mean")
        raise self._fail(node, f"unsupported tensor method .{m}()")

    # ------------------------------------------------------------------ states

    def _new_block(self, node: fx.Node | None, name: str, act: Activation, pre: Affine | None,
                   z: Tensor, x: Tensor) -> int:
        size = z.shape[1]
        if pre is not None:
            plo, phi = expr_range(pre, [(b.lo, b.hi) for b in self.blocks])  # type: ignore[misc]
            deps = frozenset(k for k in pre.terms if k != INPUT)
        else:
            plo, phi = np.full(size, -np.inf), np.full(size, np.inf)
            deps = frozenset()  # value-only trace: set by _track_deps
        lo, hi = block_ranges(act, plo, phi)
        self.blocks.append(StateBlock(name, size, act, pre, z.detach(), x.detach(), lo, hi, deps))
        return len(self.blocks) - 1

    # ------------------------------------------------------------------ nonlinearities

    def _nonlinear(self, node: fx.Node, env: _Env, make: Callable[[], nl.Spec], args: tuple,
                   value: object) -> Affine | None:
        """A nonlinearity of :mod:`idlkit.convert.nonlinear` applied to the node's first argument."""
        for a in node.all_input_nodes:
            if a is not node.args[0] and env.expr.get(a) is not None:
                raise self._fail(node, f"its parameter {a.name!r} is computed from the input; only the "
                                       f"first argument may be")
        try:
            spec = make()
        except nl.Refused as exc:
            raise self._fail(node, str(exc)) from exc
        except IdlError as exc:  # a parameter the activation refuses (e.g. Hardtanh(1, -1))
            raise self._fail(node, str(exc)) from exc
        inp = args[0]
        if not isinstance(value, Tensor) or not isinstance(inp, Tensor):
            raise self._fail(node, "expected a tensor input and result")
        if isinstance(spec, nl.Glu):
            return self._glu(node, env, spec.dim, inp, value)
        if value.shape != inp.shape:
            raise self._fail(node, "expected a result of the shape of its input")
        if isinstance(spec, nl.Pointwise):
            return self._pointwise(node, env, spec, inp, value)
        return self._softmax(node, env, spec, inp, value)

    def _pointwise(self, node: fx.Node, env: _Env, spec: nl.Pointwise, inp: Tensor, value: Tensor
                   ) -> Affine | None:
        """A componentwise block ``x = act(in_scale * v + in_shift)`` for the input ``v``; the
        node's value is ``out_scale * x + out_shift``."""
        e = self._in(node, env)
        z = inp.reshape(self.batch, -1)
        pre = e
        if not spec.plain:
            z = z * spec.in_scale + spec.in_shift
            if self.build:
                pre = e.scale(spec.in_scale).shift(np.full(e.size, spec.in_shift))
        x = value.reshape(self.batch, -1) if spec.plain else spec.act(z.t()).t()
        k = self._new_block(node, node.name, spec.act, pre if self.build else None, z, x)
        if not self.build:
            return e
        out = Affine.source(k, e.shape)
        if not spec.plain:
            out = out.scale(spec.out_scale).shift(np.full(e.size, spec.out_shift))
        return out

    def _softmax(self, node: fx.Node, env: _Env, spec: nl.Softmax, inp: Tensor, value: Tensor
                 ) -> Affine | None:
        """SoftMax over one per-sample dimension (eq. 2.2): a ``SoftMax(size of dim)`` block over
        the input with that dimension moved last (an index permutation), of ``-x`` for softmin."""
        e = self._in(node, env)
        nd = inp.dim()
        dim = spec.dim
        if dim is None or nd < 2 or not -nd <= int(dim) < nd or int(dim) % nd == 0:  # type: ignore[call-overload]
            raise self._fail(node, f"softmax over dim={dim!r} of a {nd}-d tensor: give the dim, and "
                                   f"not the batch (dim 0)")
        d = int(dim) % nd  # type: ignore[call-overload]
        sign = -1.0 if spec.negate else 1.0
        act = SoftMax(int(inp.shape[d]))
        perm = None if d == nd - 1 else torch.arange(e.size).reshape(e.shape).movedim(d - 1, -1).reshape(-1)
        z = (inp if perm is None else inp.movedim(d, -1)).reshape(self.batch, -1) * sign
        x = (value if perm is None else value.movedim(d, -1)).reshape(self.batch, -1)
        pre = None
        if self.build:
            pre = e if perm is None else e.gather(perm.numpy(), (e.size,))
            pre = pre.scale(sign) if spec.negate else pre
        k = self._new_block(node, node.name, act, pre, z, x)
        if not self.build:
            return e
        if perm is None:
            return Affine.source(k, e.shape)
        return Affine.source(k, (e.size,)).gather(torch.argsort(perm).numpy(), e.shape)

    def _maxpool(self, node: fx.Node, env: _Env, inp: Tensor, value: Tensor, kernel: object,
                 stride: object, padding: object, dilation: object) -> Affine | None:
        e = self._in(node, env)
        if inp.dim() != 4:
            raise self._fail(node, f"max pooling expects (batch, C, H, W), got {tuple(inp.shape)}")
        kernel, stride = _pair(kernel), _pair(stride if stride not in (None, ()) else kernel)
        C, H, W = inp.shape[1:]
        Ho, Wo = value.shape[2:]
        try:
            G = lm.maxpool2d_windows((C, H, W), (Ho, Wo), kernel, stride, _pair(padding), _pair(dilation))
        except ValueError as exc:
            raise self._fail(node, str(exc)) from exc
        K = G.shape[1]
        flat = inp.reshape(self.batch, -1)
        z = flat[:, torch.as_tensor(G.ravel())]
        x = BlockMax(K)(z.t()).t()
        pre = e.gather(G.ravel(), (G.size,)) if self.build else None
        k = self._new_block(node, node.name, BlockMax(K), pre, z, x)
        if not self.build:
            return e
        sel = np.arange(G.shape[0]) * K  # the max sits in each block's first slot
        out = Affine.source(k, (G.size,)).gather(sel, (C, Ho, Wo))
        return out

    # ------------------------------------------------------------------ affine layers

    def _linear(self, node: fx.Node, env: _Env, weight: Tensor, bias: Tensor | None) -> Affine | None:
        e = self._in(node, env)
        if not self.build:
            return e
        W = sp.csr_array(weight.detach().double().cpu().numpy())
        if not e.shape or e.shape[-1] != W.shape[1]:
            raise self._fail(node, f"Linear expects last dimension {W.shape[1]}, got shape {e.shape}")
        lead = math.prod(e.shape[:-1])
        M = W if lead == 1 else sp.kron(sp.identity(lead, format="csr"), W, format="csr")
        b = None if bias is None else np.tile(bias.detach().double().cpu().numpy(), lead)
        return e.linear(M, e.shape[:-1] + (W.shape[0],), b)

    def _conv(self, node: fx.Node, env: _Env, mod: nn.Module, inp: Tensor, value: Tensor) -> Affine | None:
        e = self._in(node, env)
        if mod.padding_mode != "zeros":
            raise self._fail(node, f"padding_mode={mod.padding_mode!r}: only 'zeros' is supported")
        if not self.build:
            return e
        w = mod.weight.detach().double().cpu().numpy()
        one_d = isinstance(mod, nn.Conv1d)
        if one_d:
            w = w[:, :, None, :]
            in_shape = (inp.shape[1], 1, inp.shape[2])
            out_hw = (1, value.shape[2])
            stride, dil = (1, mod.stride[0]), (1, mod.dilation[0])
        else:
            in_shape = tuple(inp.shape[1:])
            out_hw = tuple(value.shape[2:])
            stride, dil = tuple(mod.stride), tuple(mod.dilation)
        if isinstance(mod.padding, str):  # 'valid' / 'same': left padding = total // 2
            pads = [0 if mod.padding == "valid" else d * (k - 1) // 2
                    for d, k in zip(mod.dilation, mod.kernel_size, strict=True)]
        else:
            pads = list(mod.padding)
        pad = (0, pads[0]) if one_d else (pads[0], pads[1])
        M = lm.conv2d_matrix(w, in_shape, out_hw, stride, pad, dil, mod.groups)  # type: ignore[arg-type]
        rest = math.prod(value.shape[2:])
        b = None if mod.bias is None else np.repeat(mod.bias.detach().double().cpu().numpy(), rest)
        return e.linear(M, tuple(value.shape[1:]), b)

    def _batchnorm(self, node: fx.Node, env: _Env, mod: nn.Module, value: Tensor) -> Affine | None:
        e = self._in(node, env)
        if mod.training:
            raise self._fail(node, f"batch norm {node.target!r} is in training mode (uses batch "
                                   f"statistics); call net.eval()")
        if mod.running_mean is None:
            raise self._fail(node, f"batch norm {node.target!r} has track_running_stats=False: it "
                                   f"normalises with batch statistics even in eval mode")
        if not self.build:
            return e
        var = mod.running_var.detach().double().cpu().numpy()
        mean = mod.running_mean.detach().double().cpu().numpy()
        scale = 1.0 / np.sqrt(var + mod.eps)
        shift = -mean * scale
        if mod.affine:
            g = mod.weight.detach().double().cpu().numpy()
            beta = mod.bias.detach().double().cpu().numpy()
            scale, shift = scale * g, shift * g + beta
        M, c = lm.channel_scale(scale, shift, e.shape)
        return e.linear(M, e.shape, c)

    def _avgpool(self, node: fx.Node, env: _Env, inp: Tensor, value: Tensor, kernel: object,
                 stride: object, padding: object, count_include_pad: bool,
                 divisor_override: int | None) -> Affine | None:
        e = self._in(node, env)
        if inp.dim() != 4:
            raise self._fail(node, f"AvgPool2d expects (batch, C, H, W), got {tuple(inp.shape)}")
        if not self.build:
            return e
        kernel = _pair(kernel)
        stride = _pair(stride if stride not in (None, ()) else kernel)
        M = lm.avgpool2d_matrix(tuple(inp.shape[1:]), tuple(value.shape[2:]), kernel, stride,
                                _pair(padding), bool(count_include_pad), divisor_override)
        return e.linear(M, tuple(value.shape[1:]))

    def _adaptive_avgpool(self, node: fx.Node, env: _Env, inp: Tensor, value: Tensor) -> Affine | None:
        e = self._in(node, env)
        if inp.dim() != 4:
            raise self._fail(node, f"AdaptiveAvgPool2d expects (batch, C, H, W), got {tuple(inp.shape)}")
        if not self.build:
            return e
        M = lm.adaptive_avgpool2d_matrix(tuple(inp.shape[1:]), tuple(value.shape[2:]))
        return e.linear(M, tuple(value.shape[1:]))

    def _reduce(self, node: fx.Node, env: _Env, inp: Tensor, value: Tensor, dim: object,
                mean: bool) -> Affine | None:
        """``x.mean(dim)`` / ``x.sum(dim)`` over per-sample dimensions (e.g. the global average
        pooling ``x.mean((2, 3))`` of ResNets): a linear map, weights 1/count or 1."""
        e = self._in(node, env)
        nd = inp.dim()
        if dim is None:
            raise self._fail(node, "mean/sum over every dimension mixes the samples of the batch; "
                                   "reduce over per-sample dimensions (dim >= 1)")
        dims = {int(d) % nd for d in (dim if isinstance(dim, tuple | list) else (dim,))}
        if 0 in dims:
            raise self._fail(node, "mean/sum over the batch dimension mixes the samples; reduce over "
                                   "dim >= 1 only")
        if not self.build:
            return e
        S = tuple(inp.shape[1:])
        coords = np.indices(S).reshape(len(S), -1)
        kept = [a for a in range(len(S)) if a + 1 not in dims]
        out_shape = tuple(S[a] for a in kept)
        rows = (np.ravel_multi_index(tuple(coords[kept]), out_shape) if kept
                else np.zeros(coords.shape[1], dtype=np.int64))
        count = math.prod(S[a] for a in range(len(S)) if a + 1 in dims)
        w = np.full(rows.size, 1.0 / count if mean else 1.0)
        M = sp.csr_array((w, (rows, np.arange(rows.size))), shape=(max(math.prod(out_shape), 1), rows.size))
        return e.linear(M, tuple(value.shape[1:]))

    def _sum(self, node: fx.Node, env: _Env, args: tuple, value: Tensor, alpha: float) -> Affine | None:
        a, b = node.args[0], node.args[1]
        ea = env.expr.get(a) if isinstance(a, fx.Node) else None
        eb = env.expr.get(b) if isinstance(b, fx.Node) else None
        shape = tuple(value.shape[1:])
        for e in (ea, eb):
            if isinstance(e, Affine) and (e.batch_dim != 0 or e.shape != shape):
                raise self._fail(node, f"adding tensors of different shapes ({e.shape} vs {shape}) "
                                       f"(broadcasting between branches is not supported)")
        if not self.build:
            return ea if isinstance(ea, Affine) else eb
        if isinstance(ea, Affine) and isinstance(eb, Affine):
            return ea + eb.scale(alpha)
        const = args[1] if isinstance(ea, Affine) else args[0]
        c = self._constant(node, const, shape)
        if isinstance(ea, Affine):
            return ea.shift(alpha * c)
        return eb.scale(alpha).shift(c)  # type: ignore[union-attr]

    def _constant(self, node: fx.Node, c: object, shape: tuple[int, ...]) -> np.ndarray:
        if isinstance(c, int | float):
            return np.full(math.prod(shape), float(c))
        if isinstance(c, Tensor):
            t = c.detach().double().cpu()
            if t.dim() > len(shape):  # a batch dimension: size 1, or the batch's (equal rows)
                if t.dim() != len(shape) + 1 or t.shape[0] not in (1, self.batch) or \
                        not bool((t == t[:1]).all()):
                    raise self._fail(node, f"a constant of shape {tuple(t.shape)} varies over the batch")
                t = t[0]
            try:
                return torch.broadcast_to(t, shape).reshape(-1).numpy().copy()
            except RuntimeError as exc:
                raise self._fail(node, f"constant of shape {tuple(t.shape)} does not broadcast to "
                                       f"{shape}") from exc
        raise self._fail(node, f"unsupported operand {type(c).__name__}")

    def _scalar_mul(self, node: fx.Node, env: _Env, args: tuple, value: object, divide: bool
                    ) -> Affine | None:
        a, b = node.args[0], node.args[1]
        ea = env.expr.get(a) if isinstance(a, fx.Node) else None
        eb = env.expr.get(b) if isinstance(b, fx.Node) else None
        if divide and not (isinstance(ea, Affine) and eb is None):
            raise self._fail(node, "division by an input-dependent tensor is not supported (1/x is "
                                   "not Lipschitz)")
        if isinstance(ea, Affine) and isinstance(eb, Affine):
            return self._multiply(node, env, args, value)  # type: ignore[arg-type]
        e = ea if isinstance(ea, Affine) else eb
        s = args[1] if isinstance(ea, Affine) else args[0]
        if isinstance(s, Tensor) and s.numel() == 1 and s.dim() <= len(e.shape) + 1:  # type: ignore[union-attr]
            s = float(s)
        if isinstance(s, Tensor):  # a constant tensor, broadcast as torch does: a diagonal map
            return self._multiply(node, env, args, value, divide)  # type: ignore[arg-type]
        if not isinstance(s, int | float):
            raise self._fail(node, "only multiplication by a constant is supported")
        if e.batch_dim != 0:  # type: ignore[union-attr]
            raise self._fail(node, "only h_n[layer] of an nn.RNN may be used")
        if not self.build:
            return e
        return e.scale(1.0 / s if divide else float(s))  # type: ignore[union-attr]

    def _rearrange(self, node: fx.Node, env: _Env, fn: Callable | None, value: object) -> Affine | None:
        """Ops that only move entries (reshape, slicing, zero padding, cat, ...), converted by
        running the op on a tensor of entry indices (1-based; 0 is a zero entry)."""
        if not isinstance(value, Tensor):
            raise self._fail(node, "expected a tensor result")
        tensor_args = [a for a in node.all_input_nodes if isinstance(env.expr.get(a), Affine)]
        constants = [a for a in node.all_input_nodes if a not in tensor_args
                     and isinstance(env.val.get(a), Tensor) and env.val[a].is_floating_point()]
        if constants or self.batch == 1 or any(env.expr[a].batch_dim != 0 for a in tensor_args):
            # constant entries, a batch not in dim 0, or a batch of 1 (which cannot show where
            # the batch goes, e.g. transpose(0, 1) of (1, 1, p))
            return track_entries(self, node, env, fn)
        offsets, total = {}, 0
        for a in tensor_args:
            offsets[a], total = total, total + env.expr[a].size
        if total >= 2 ** 52:
            raise self._fail(node, "tensor too large for the index trick")

        def index_tensor(a: fx.Node) -> Tensor:
            e = env.expr[a]
            idx = torch.arange(1, e.size + 1, dtype=torch.float64) + offsets[a]
            return idx.reshape(e.shape).unsqueeze(0).expand(self.batch, *e.shape).clone()

        def sub(n: fx.Node) -> object:
            return index_tensor(n) if n in offsets else env.val[n]

        try:
            if fn is not None:
                out = fn(index_tensor(node.args[0]))
            else:
                args = fx.node.map_arg(node.args, sub)
                kwargs = fx.node.map_arg(node.kwargs, sub)
                if node.op == "call_method":
                    out = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:
                    out = node.target(*args, **kwargs)
        except Exception as exc:
            raise self._fail(node, f"could not follow the entries through it: {exc}") from exc
        if not isinstance(out, Tensor) or out.shape != value.shape:
            raise self._fail(node, "entry tracking changed the shape")
        if out.dim() == 0 or out.shape[0] != self.batch or not bool((out == out[:1]).all()):
            return track_entries(self, node, env, fn)  # the batch moves (transpose(0, 1), ...) or mixes
        if fn is None and node.op == "call_function" and node.target is F.pad:
            mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
            fill = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
            if mode != "constant" or fill not in (None, 0, 0.0):
                raise self._fail(node, "only zero padding is supported")
        if not self.build:
            return env.expr[tensor_args[0]]
        idx = out[0].reshape(-1).round().long().numpy() - 1
        shape = tuple(value.shape[1:])
        result: Affine | None = None
        for a in tensor_args:
            lo, hi = offsets[a], offsets[a] + env.expr[a].size
            local = np.where((idx >= lo) & (idx < hi), idx - lo, -1)
            part = env.expr[a].gather(local, shape)
            result = part if result is None else result + part
        return result


def _storage(t: Tensor) -> int | None:
    try:
        return int(t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):
        return None


def _hashable(f: object) -> bool:
    try:
        hash(f)
    except TypeError:
        return False
    return True


def _getter(args: tuple, kwargs: dict, names: list[str]) -> Callable[..., object]:
    def get(name: str, default: object = None) -> object:
        if name in kwargs:
            return kwargs[name]
        i = names.index(name)
        return args[i] if i < len(args) else default
    return get

