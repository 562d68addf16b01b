"""A ``torch.fx`` tracer specialised to the shapes of one example input (paper 000 §3.5).

The converter unrolls recurrences over the example's sequence length (§3.5), so a forward
written as a Python loop over time,

    h = torch.zeros(x.size(0), H)
    for t in range(x.size(1)):          # or: for xt in x.unbind(1)
        h, c = self.cell(x[:, t], (h, c))

is as convertible as an ``nn.LSTM`` call. ``torch.fx``'s symbolic tracer cannot run it: its
proxies know no shapes, so ``range(x.size(1))`` and ``for xt in x.unbind(1)`` fail. The
:class:`ShapeTracer` here runs the network on the example while it traces: every proxy carries
its concrete value, so

* shape queries are answered with Python ints: ``x.shape``, ``x.size(d)``, ``x.dim()``,
  ``x.ndim``, ``x.numel()``, ``len(x)`` (also ``x.dtype``, ``x.device``), and loops over them unroll;
* iterating a proxy walks its dim 0 (``for xt in x.unbind(1)``, ``for xt in x.transpose(0, 1)``),
  or the items of a tuple-valued proxy (``out, (h, c) = self.lstm(x)``);
* tensors made from shapes alone (``torch.zeros(x.size(0), H)``, ``x.new_zeros(...)``,
  ``torch.zeros_like(x)``, ``ones``/``full`` alike) are constants of the graph; the converter
  accepts one with a batch dimension only if it is equal across the batch.

Control flow on tensor *values* is still refused: ``bool(proxy)`` (``if x.sum() > 0``),
``int(proxy)``/``float(proxy)``/``range(proxy)`` on a tensor raise a ``TraceError`` that
:func:`idlkit.convert.trace.trace_graph` turns into a :class:`~idlkit.errors.ConversionError`.
The graph is therefore valid for inputs of the example's shape (any batch size: the batch
enters only through such constants, checked equal across the batch).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.proxy import TraceError

__all__ = ["ShapeTracer", "ShapeProxy", "DataDependentError", "ExampleError", "concrete_graph"]

_VALUE = "idlkit_concrete_value"  # node.meta key of the concrete value during tracing
_SHAPE_ATTRS = {"shape": lambda v: v.shape, "ndim": lambda v: v.dim(), "dtype": lambda v: v.dtype,
                "device": lambda v: v.device, "layout": lambda v: v.layout,
                "is_cuda": lambda v: v.is_cuda, "is_sparse": lambda v: v.is_sparse}
_SHAPE_METHODS = {"size", "dim", "numel", "nelement", "is_floating_point", "is_complex",
                  "element_size", "ndimension"}
# factories whose result depends on a tensor's shape, dtype and device only
_LIKE_FUNCS = {torch.zeros_like, torch.ones_like, torch.full_like}
_NEW_METHODS = {"new_zeros", "new_ones", "new_full"}
_INPLACE_OPERATORS = {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
                      operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior,
                      operator.ixor, operator.ilshift, operator.irshift, operator.imatmul}


class DataDependentError(TraceError):
    """Python control flow or a Python number read from a tensor's values."""


class ExampleError(TraceError):
    """The forward cannot run on the example: the traced code needed the value of an op that
    failed on it, or the forward takes a second input without a default."""


@dataclass(frozen=True)
class _Failed:
    """The value of a node whose op raised on the example (recorded, not raised, so that the
    converter reports it at that node, with its usual message)."""

    exc: BaseException


def _values(a: object) -> object:
    """``a`` with every proxy replaced by its value (through tuples, named tuples such as
    ``PackedSequence``, lists, dicts and slices)."""
    if isinstance(a, fx.Proxy):
        return a.node.meta[_VALUE]
    if isinstance(a, tuple):
        items = [_values(x) for x in a]
        return type(a)._make(items) if hasattr(a, "_fields") else tuple(items)
    if isinstance(a, list):
        return [_values(x) for x in a]
    if isinstance(a, dict):
        return {k: _values(v) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(_values(a.start), _values(a.stop), _values(a.step))
    return a


def _first_failed(a: object) -> _Failed | None:
    if isinstance(a, _Failed):
        return a
    items = a.values() if isinstance(a, dict) else a if isinstance(a, tuple | list) else ()
    for x in items:
        f = _first_failed(x)
        if f is not None:
            return f
    return None


class ShapeProxy(fx.Proxy):
    """A proxy that knows its node's value on the example input (see the module docstring).

    Args:
        node: the graph node.
        tracer: the :class:`ShapeTracer` that made it.

    Examples:
        >>> class Flat(torch.nn.Module):
        ...     def forward(self, x):
        ...         assert isinstance(x, ShapeProxy) and x.shape == (2, 3, 4)   # the proxy knows x
        ...         return x.reshape(x.shape[0], -1)
        >>> concrete_graph(Flat(), torch.zeros(2, 3, 4))(torch.ones(2, 3, 4)).shape
        torch.Size([2, 12])
    """

    @property
    def concrete(self) -> object:
        return self.node.meta[_VALUE]

    def _known(self) -> object:
        v = self.node.meta.get(_VALUE)
        if isinstance(v, _Failed):
            raise ExampleError(f"running {self.node.name!r} on the example input failed (shape "
                               f"mismatch?): {type(v.exc).__name__}: {v.exc}")
        return v

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__"):
            raise AttributeError(k)
        v = self.node.meta.get(_VALUE)
        if isinstance(v, _Failed) and (k in _SHAPE_ATTRS or k in _SHAPE_METHODS):
            self._known()
        if isinstance(v, Tensor):
            if k in _SHAPE_ATTRS:
                return _SHAPE_ATTRS[k](v)
            if k in _SHAPE_METHODS:
                return getattr(v, k)
        return super().__getattr__(k)

    def __len__(self) -> int:
        v = self._known()
        if isinstance(v, Tensor | tuple | list):
            return len(v)
        return super().__len__()

    def __iter__(self) -> Iterator[fx.Proxy]:
        v = self._known()
        if isinstance(v, Tensor) and v.dim() > 0 or isinstance(v, tuple | list):
            return iter([self[i] for i in range(len(v))])  # type: ignore[index, arg-type]
        return super().__iter__()

    def _refuse(self, what: str) -> DataDependentError:
        return DataDependentError(
            f"{what} of the traced value {self.node.name!r} depends on the input's values "
            f"(data-dependent control flow)")

    def __bool__(self) -> bool:
        raise self._refuse("the truth value")

    def __index__(self) -> int:
        raise self._refuse("a Python integer")

    def __int__(self) -> int:
        raise self._refuse("a Python integer")

    def __float__(self) -> float:
        raise self._refuse("a Python float")


class ShapeTracer(fx.Tracer):
    """``torch.fx`` tracer whose proxies carry the value of the example run (module docstring).

    Leaf modules are run on the concrete values as they are recorded; the forward's first
    argument is ``example``, any further argument takes its default (e.g. ``state=None``).

    Args:
        example: the batch-first example input the proxies carry values of.

    Examples:
        >>> class Flat(torch.nn.Module):
        ...     def forward(self, x):
        ...         return x.reshape(x.shape[0], -1)
        >>> graph = ShapeTracer(torch.zeros(2, 3, 4)).trace(Flat())
        >>> len(list(graph.nodes)) >= 2
        True
    """

    def __init__(self, example: Tensor) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.example = example
        self._placeholders = 0
        self._running = False  # True while a leaf module runs on concrete values

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        """``fx.Tracer.call_module``, except inside a leaf module being run for its value.

        Args:
            m: the called module.
            forward: its forward.
            args: the call's positional arguments.
            kwargs: the call's keyword arguments.

        Returns:
            The call's value (inside a running leaf) or its proxy.
        """
        if self._running:  # a submodule of a leaf module being run for its value
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        """``fx.Tracer.getattr``, except inside a leaf module being run for its value.

        Args:
            attr: the attribute's name.
            attr_val: its value.
            parameter_proxy_cache: ``fx``'s cache of parameter proxies.

        Returns:
            ``attr_val`` (inside a running leaf) or ``fx``'s proxy for it.
        """
        if self._running:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        """A :class:`ShapeProxy` for ``node`` (instead of a plain ``fx.Proxy``).

        Args:
            node: the graph node.

        Returns:
            The :class:`ShapeProxy`.
        """
        return ShapeProxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                     type_expr: Any | None = None, proxy_factory_fn: Any = None) -> Any:
        """``fx.Tracer.create_proxy`` that also records the node's value on the example run.

        Args:
            kind: the node kind (``"placeholder"``, ``"call_module"``, ...).
            target: the called module name, function or method name.
            args: the call's positional arguments (proxies or constants).
            kwargs: the call's keyword arguments.
            name: the node's name, or ``None``.
            type_expr: the node's type annotation, or ``None``.
            proxy_factory_fn: ``fx``'s proxy factory, or ``None``.

        Returns:
            The :class:`ShapeProxy` of the new node (a later forward argument: its default).

        Raises:
            ExampleError: a later forward argument without a default.
        """
        if kind == "placeholder":
            self._placeholders += 1
            if self._placeholders > 1:  # later forward arguments: specialised to their default
                if not args:
                    raise ExampleError(f"the forward's argument {target!r} has no default; networks with "
                                       f"more than one input are not supported")
                return args[0]
            value = self.example
        else:
            a, k = _values(args), _values(kwargs)
            failed = _first_failed((a, k))
            if failed is not None:
                value: object = failed
            else:
                try:
                    with torch.no_grad():
                        value = self._run(kind, target, a, k)  # type: ignore[arg-type]
                except Exception as exc:  # reported by the converter at this node
                    value = _Failed(exc)
            if not isinstance(value, _Failed) and (kind == "call_function" and target in _LIKE_FUNCS
                                                   or kind == "call_method" and target in _NEW_METHODS):
                return value  # a constant: depends on the shape only
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        proxy.node.meta[_VALUE] = value
        if proxy.node.stack_trace:
            proxy.node.stack_trace = _without_own_frames(proxy.node.stack_trace)
        return proxy

    def _run(self, kind: str, target: Any, args: tuple, kwargs: dict) -> object:
        self._running = True  # the user's modules run as they are, not traced
        try:
            return self._run_op(kind, target, args, kwargs)
        finally:
            self._running = False

    def _run_op(self, kind: str, target: Any, args: tuple, kwargs: dict) -> object:
        if kind == "get_attr":
            obj: object = self.root
            for part in str(target).split("."):
                obj = getattr(obj, part)
            return obj
        if kind == "call_module":
            return self.root.get_submodule(target)(*args, **kwargs)
        if kind == "call_function":
            return target(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        raise TraceError(f"unexpected fx node kind {kind!r}")


def _without_own_frames(trace: str) -> str:
    """A recorded stack trace without this module's frames (so errors point at the user's line)."""
    lines, out, skip = trace.splitlines(), [], False
    for line in lines:
        if line.strip().startswith("File "):
            skip = __file__ in line
        if not skip:
            out.append(line)
    return "\n".join(out)


class _Root(nn.Module):
    """Holds a leaf module (``nn.LSTM``, ``nn.Linear``, ...) passed as the whole network, so that
    it is traced as one ``call_module`` node instead of through torch's own forward."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Any:
        return self.net(x)


def concrete_graph(net: nn.Module, example: Tensor) -> fx.GraphModule:
    """Trace ``net`` on ``example`` with :class:`ShapeTracer`; the values are dropped afterwards.

    The network is left as it was: the tensor constants that ``torch.fx`` stores on the root
    module while tracing (``_tensor_constant0``, ...) live on the returned graph module only.

    Args:
        net: the torch network.
        example: the batch-first example input.

    Returns:
        The ``torch.fx.GraphModule``, specialised to ``example``'s shapes.

    Examples:
        >>> class Flat(torch.nn.Module):
        ...     def forward(self, x):
        ...         return x.reshape(x.shape[0], -1)        # shape-dependent: specialised to the example
        >>> gm = concrete_graph(Flat(), torch.zeros(2, 3, 4))
        >>> gm(torch.ones(2, 3, 4)).shape
        torch.Size([2, 12])
    """
    tracer = ShapeTracer(example)
    root = _Root(net) if tracer.is_leaf_module(net, "") else net
    before = set(vars(root))
    try:
        graph = tracer.trace(root)
        gm = fx.GraphModule(tracer.root, graph)
    finally:
        for key in set(vars(root)) - before:
            delattr(root, key)
    for node in gm.graph.nodes:
        node.meta.pop(_VALUE, None)
    _drop_dead(gm)
    return gm


def _drop_dead(gm: fx.GraphModule) -> None:
    """Remove the nodes whose value nothing uses, such as the ``x[0]`` of ``len(x[0])`` (its
    length was all the loop needed); nodes that may mutate a tensor in place are kept."""
    changed = False
    for node in reversed(list(gm.graph.nodes)):
        if node.users or node.op not in ("call_function", "call_method", "call_module", "get_attr"):
            continue
        if node.op == "call_module":
            mutates = bool(getattr(gm.get_submodule(node.target), "inplace", False))
        else:
            name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
            mutates = str(name).endswith("_") and not str(name).startswith("__") or \
                node.target in _INPLACE_OPERATORS
        if not mutates:
            gm.graph.erase_node(node)
            changed = True
    if changed:
        gm.recompile()

