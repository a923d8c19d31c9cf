"""Which operators an uploaded `torch.export` graph may call: pure ATen, nothing else.

The rule, for an `OpOverload` (`operator_refusal` says why one is refused, None when allowed):

1. it lives in the `aten` namespace (no custom or third-party ops);
2. it is not tagged `nondeterministic_seeded` (random numbers, seeds), except dropout and
   attention whose randomness is switched off by an argument that `node_refusal` checks
   (`train=False`, `dropout_p=0`);
3. it is not tagged `data_dependent_output` (`_local_scalar_dense`, `item`: tensor values read
   back into Python) nor `inplace_view` (`set_`, `resize_`: a tensor re-pointed at storage);
4. no argument is a Storage, a Generator or a file name (`from_file`);
5. it writes into no argument (`out=` overloads, `copy_`, ...) unless it is the in-place form
   (`relu_`, `add_`) of an operator that passes rules 1-6 and writes only its `self` argument;
   `node_refusal` then checks that `self` is a tensor the graph made itself, never an input,
   parameter, buffer or constant (nor a view of one);
6. it returns something, unless it is one of the assertions export inserts (`_assert_scalar`).

Besides ATen, a graph may use `operator.getitem`, the symbolic-shape operators torch.export
serializes (`operator.add`, `torch.sym_max`, ...) and the grad-mode/autocast wrappers (whose
subgraphs are checked like the main one). Everything else is refused, naming the operator.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx

aten = torch.ops.aten

# Rule 2's exceptions: operator -> (argument, the value that switches the randomness off).
SEEDED_ONLY_WHEN: dict[str, tuple[str, object]] = {
    "aten::dropout": ("train", False),
    "aten::feature_dropout": ("train", False),
    "aten::alpha_dropout": ("train", False),
    "aten::feature_alpha_dropout": ("train", False),
    "aten::scaled_dot_product_attention": ("dropout_p", 0.0),
}
# Rule 6's exceptions: assertions that torch.export itself inserts (they raise, nothing else).
ASSERTIONS = frozenset(
    {
        "aten::_assert_async",
        "aten::_assert_scalar",
        "aten::_assert_tensor_metadata",
        "aten::sym_constrain_range",
        "aten::sym_constrain_range_for_size",
    }
)
ALLOWED_HOPS = frozenset({"wrap_with_set_grad_enabled", "wrap_with_autocast"})
_FILE_ARG = re.compile(r"file|path", re.IGNORECASE)
_FORBIDDEN_TYPES = ("Storage", "Generator")


def _sym_ops() -> frozenset[object]:
    try:
        from torch._export.serde.serialize import _SYM_OPS

        return frozenset(_SYM_OPS)
    except ImportError:  # pragma: no cover - torch moved it
        return frozenset(
            {
                operator.add,
                operator.sub,
                operator.mul,
                operator.floordiv,
                operator.mod,
                operator.eq,
                operator.ne,
                operator.lt,
                operator.le,
                operator.gt,
                operator.ge,
                operator.neg,
                operator.pow,
                math.trunc,
            }
        )


SYM_OPS = _sym_ops() | {operator.getitem}


def _tags(op: torch._ops.OpOverload) -> set[torch.Tag]:
    return set(op.tags)


def _writes(op: torch._ops.OpOverload) -> list[str]:
    """Names of the arguments the operator writes into."""
    return [
        a.name for a in op._schema.arguments if a.alias_info is not None and a.alias_info.is_write
    ]


@functools.cache
def operator_refusal(op: torch._ops.OpOverload) -> str | None:
    """Why an ATen overload may not appear in an uploaded graph (None: it may)."""
    schema = op._schema
    name = schema.name
    if op.namespace != "aten":
        return f"'{name}' is not an ATen operator"
    tags = _tags(op)
    if torch.Tag.nondeterministic_seeded in tags and name not in SEEDED_ONLY_WHEN:
        return f"'{name}' draws random numbers"
    if torch.Tag.data_dependent_output in tags:
        return f"'{name}' reads tensor values back into Python"
    if torch.Tag.inplace_view in tags:
        return f"'{name}' re-points a tensor at other storage"
    for arg in schema.arguments:
        kind = str(arg.type)
        if any(t in kind for t in _FORBIDDEN_TYPES):
            return f"'{name}' takes a {kind.rstrip('?')} argument ('{arg.name}')"
        if "str" in kind and _FILE_ARG.search(arg.name):
            return f"'{name}' takes a file name ('{arg.name}')"
    writes = _writes(op)
    if writes:
        return _inplace_refusal(op, writes)
    if not schema.returns and name not in ASSERTIONS:
        return f"'{name}' returns nothing: it is only called for a side effect"
    return None


def _inplace_refusal(op: torch._ops.OpOverload, writes: list[str]) -> str | None:
    """An in-place form (`relu_`) is allowed when its functional form is (rule 5)."""
    name = op._schema.name
    base = name.split("::", 1)[1]
    functional = None
    if writes == ["self"] and base.endswith("_") and not base.endswith("__"):
        packet = getattr(aten, base[:-1], None)
        functional = getattr(packet, op._overloadname, None) if packet is not None else None
    if not isinstance(functional, torch._ops.OpOverload) or _writes(functional):
        return f"'{name}' writes into its argument(s) {', '.join(writes)}"
    reason = operator_refusal(functional)
    return None if reason is None else f"'{name}' is the in-place form of a refused op: {reason}"


def target_refusal(target: object) -> str | None:
    """Why a node target (an operator object) is refused; None when allowed."""
    if isinstance(target, torch._ops.OpOverload):
        return operator_refusal(target)
    if isinstance(target, torch._ops.HigherOrderOperator):
        return None if target.name() in ALLOWED_HOPS else f"'{target.name()}' is not allowed"
    try:
        if target in SYM_OPS:
            return None
    except TypeError:  # unhashable
        pass
    return f"'{getattr(target, '__name__', target)}' is not an allowed operator"


_SERIALIZED_ATEN = re.compile(
    r"torch\.ops\.aten\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)"
)
_SERIALIZED_HOP = re.compile(r"torch\.ops\.higher_order\.([A-Za-z_][A-Za-z0-9_]*)")
_SERIALIZED_SYM = re.compile(r"(_operator|math|torch)\.([A-Za-z_][A-Za-z0-9_]*)")


def serialized_target_refusal(target: str) -> str | None:
    """The same rule for a target as `torch.export` serializes it ("torch.ops.aten.add.Tensor")."""
    match = _SERIALIZED_ATEN.fullmatch(target)
    if match:
        packet = getattr(aten, match.group(1), None)
        op = getattr(packet, match.group(2), None) if packet is not None else None
        if not isinstance(op, torch._ops.OpOverload):
            return f"'{target}' is not a registered ATen operator"
        return operator_refusal(op)
    match = _SERIALIZED_HOP.fullmatch(target)
    if match:
        return None if match.group(1) in ALLOWED_HOPS else f"'{target}' is not allowed"
    match = _SERIALIZED_SYM.fullmatch(target)
    if match and not match.group(2).startswith("_"):
        module = {"_operator": operator, "math": math, "torch": torch}[match.group(1)]
        obj = getattr(module, match.group(2), None)
        if obj is not None and target_refusal(obj) is None:
            return None
    return f"'{target}' is not an allowed operator"


# -- node-level checks (arguments) ----------------------------------------------------------------


def _arg(node: fx.Node, op: torch._ops.OpOverload, name: str) -> Any:
    """The value of argument `name` of a call (positional, keyword or the schema default)."""
    for i, arg in enumerate(op._schema.arguments):
        if arg.name != name:
            continue
        if i < len(node.args) and not arg.kwarg_only:
            return node.args[i]
        return node.kwargs.get(name, arg.default_value)
    raise KeyError(name)


def _tensor_args(value: Any) -> Iterator[fx.Node]:
    if isinstance(value, fx.Node):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensor_args(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensor_args(v)


def _aliased_inputs(node: fx.Node) -> list[Any]:
    """The arguments whose memory the node's result may share (views, in-place results).

    From the schema's alias annotations (`Tensor(a) self -> Tensor(a)`); for composite ops
    tagged `maybe_aliasing_or_mutating` (dropout in eval returns its input) the first argument;
    for `getitem` its container; for higher-order ops every argument.
    """
    target = node.target
    if target is operator.getitem:
        return [node.args[0]]
    if not isinstance(target, torch._ops.OpOverload):
        return [] if target in SYM_OPS else [node.args, node.kwargs]
    schema = target._schema
    sets: set[str] = set()
    for ret in schema.returns:
        if ret.alias_info is not None:
            sets |= set(ret.alias_info.before_set)
    if sets:
        return [
            _arg(node, target, a.name)
            for a in schema.arguments
            if a.alias_info is not None and set(a.alias_info.before_set) & sets
        ]
    if torch.Tag.maybe_aliasing_or_mutating in _tags(target) and node.args:
        return [node.args[0]]
    return []


def external_base(node: fx.Node) -> fx.Node | None:
    """The graph input/parameter/buffer/constant that `node` may be a view of; None when the
    tensor was created by the graph itself."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op in ("placeholder", "get_attr"):
            return current
        if current.op == "call_function":
            stack.extend(_tensor_args(_aliased_inputs(current)))
    return None


def node_refusal(node: fx.Node) -> str | None:
    """Why one call in a loaded graph is refused (the operator, then its arguments)."""
    target = node.target
    reason = target_refusal(target)
    if reason is not None or not isinstance(target, torch._ops.OpOverload):
        return reason
    name = target._schema.name
    if name in SEEDED_ONLY_WHEN:
        arg, off = SEEDED_ONLY_WHEN[name]
        value = _arg(node, target, arg)
        if value != off:
            return (
                f"'{name}' with {arg}={value!r} draws random numbers; export the model in "
                f"eval mode (model.eval()) so that {arg}={off!r}"
            )
    for written in _writes(target):
        for value in _tensor_args(_arg(node, target, written)):
            base = external_base(value)
            if base is not None:
                return (
                    f"'{name}' writes into '{base.name}', an input, parameter, buffer or "
                    "constant of the graph; a model may change only tensors it made itself"
                )
    return None


def graph_refusals(gm: fx.GraphModule) -> Iterator[str]:
    """Every refused call in a graph module and its subgraphs, as 'node: reason'."""
    for module in gm.modules():
        graph = getattr(module, "graph", None)
        if not isinstance(graph, fx.Graph):
            continue
        for node in graph.nodes:
            if node.op == "call_function":
                reason = node_refusal(node)
                if reason is not None:
                    yield f"node '{node.name}': {reason}"
            elif node.op in ("call_method", "call_module"):
                yield f"node '{node.name}': {node.op} '{node.target}' is not allowed"
