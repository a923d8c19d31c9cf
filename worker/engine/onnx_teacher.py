"""Teachers in ONNX: a checked `.onnx` graph run by onnxruntime behind an `nn.Module`.

Safety (crafted uploads never run code or read files). `check_onnx` parses the bytes without
loading external data and refuses, naming the problem:

- tensors stored outside the file (`data_location: EXTERNAL`, a `location` such as
  `/etc/passwd` or `../x`), anywhere: initializers, sparse initializers, constant attributes,
  subgraphs of `If`/`Loop`/`Scan`;
- operator domains other than the default ONNX domain and `ai.onnx.ml` (custom operators, the
  `com.microsoft` contrib ops, Azure operators that reach the network), operators the domain's
  schema registry does not know, model-local functions, opset versions this `onnx` does not know;
- graphs above `MAX_NODES` nodes or nested deeper than `MAX_DEPTH` (the file itself is bounded by
  the upload limit, DS_MAX_UPLOAD_MB);
- a graph whose single input is not a float tensor of fixed shape apart from the batch.

The session is built from the checked bytes (no path, so no folder to resolve files against),
with the CPU provider (or CUDA when the batch lives there and onnxruntime has it), released
opsets only, and no custom operator library (none is ever registered).

Layers. The graph has no modules, so `OnnxTeacher` makes some: every node gets a module path,
from the exporter's name scopes (`pkg.torch.onnx.name_scopes`, the dynamo exporter: `layer1.0.bn1`)
or the node name's `/`-separated scopes (the TorchScript exporter and others:
`/layer1/layer1.0/conv1/Conv` -> `layer1.0.conv1`), else the node's own name. Each path (and each
of its parents) becomes a child module (`OnnxScope`) whose output is the output of the last node
inside it and whose input is the first node's first input, so `layer1` is the tensor leaving
`layer1` just as in the torch model. These modules are called, with the tensors, after the
session runs, whenever a forward hook (or pre-hook) watches one of them: the tensors they need
are added as extra graph outputs to an in-memory copy of the model (one session per set of
outputs, cached). So `taps.inspect_model` (the layer table, the stages) and `taps.FeatureTaps`
(feature losses) work unchanged, and a forward without hooks fetches the logits only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from worker.engine.loading import LoadedModel, ModelLoadError, UnsafeModelError

MAX_NODES = 200_000
MAX_DEPTH = 8
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # TensorProto FLOAT/FLOAT16/DOUBLE
_COMPONENT = re.compile(r"[^A-Za-z0-9_\-]")
_REEXPORT = (
    "export it again with torch.onnx.export(model.eval(), (x,), 'teacher.onnx', "
    "external_data=False)"
)


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------


def check_onnx(data: bytes, where: str) -> Any:
    """Parse and check an ONNX file's bytes; returns the `onnx.ModelProto` (see module doc)."""
    import onnx
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{where} is not a readable ONNX model ({exc}); the file is truncated or not "
            f"ONNX: {_REEXPORT}"
        ) from exc
    if not model.HasField("graph") or not model.graph.node:
        raise ModelLoadError(f"{where} holds no ONNX graph (truncated or empty): {_REEXPORT}")
    if model.functions:
        names = ", ".join(f"{f.domain}.{f.name}" for f in model.functions[:3])
        raise UnsafeModelError(
            f"{where}: the model defines its own functions ({names}), which are not checked; "
            "refused. Export with functions inlined (the default of torch.onnx.export)"
        )
    _check_opsets(model, where)
    count = _check_graph(model.graph, where, 0, [0])
    if count == 0:
        raise ModelLoadError(f"{where} holds no ONNX nodes: {_REEXPORT}")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelLoadError(f"{where} is not a valid ONNX model: {exc}") from exc
    return model


def _check_opsets(model: Any, where: str) -> None:
    import onnx

    latest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain not in ALLOWED_DOMAINS:
            raise UnsafeModelError(_domain_refusal(where, f"imports opset domain '{opset.domain}'"))
        if opset.domain in ("", "ai.onnx") and not 7 <= opset.version <= latest:
            raise ModelLoadError(
                f"{where}: ONNX opset {opset.version} cannot be checked (this studio knows 7.."
                f"{latest}); export with opset_version between those"
            )


def _domain_refusal(where: str, what: str) -> str:
    return (
        f"{where}: the model {what}; only the default ONNX domain and ai.onnx.ml are accepted "
        "(custom operators run code the studio cannot check), so it was refused. Export with "
        "standard ONNX operators only"
    )


def _check_graph(graph: Any, where: str, depth: int, count: list[int]) -> int:
    """Walk a graph and its subgraphs; returns the total node count."""
    import onnx

    if depth > MAX_DEPTH:
        raise ModelLoadError(f"{where}: subgraphs nest deeper than {MAX_DEPTH}; refused")
    for tensor in graph.initializer:
        _check_tensor(tensor, where)
    for sparse in graph.sparse_initializer:
        _check_tensor(sparse.values, where)
        _check_tensor(sparse.indices, where)
    for node in graph.node:
        count[0] += 1
        if count[0] > MAX_NODES:
            raise ModelLoadError(
                f"{where}: the graph has more than {MAX_NODES} nodes; refused as oversized"
            )
        if node.domain not in ALLOWED_DOMAINS:
            raise UnsafeModelError(
                _domain_refusal(where, f"uses operator '{node.op_type}' of domain '{node.domain}'")
            )
        if not onnx.defs.has(node.op_type, "" if node.domain == "ai.onnx" else node.domain):
            raise UnsafeModelError(
                f"{where}: operator '{node.op_type}' is not a standard ONNX operator; refused. "
                "Export with standard ONNX operators only"
            )
        for attr in node.attribute:
            if attr.HasField("t"):
                _check_tensor(attr.t, where)
            for t in attr.tensors:
                _check_tensor(t, where)
            if attr.HasField("sparse_tensor"):
                _check_tensor(attr.sparse_tensor.values, where)
            if attr.HasField("g"):
                _check_graph(attr.g, where, depth + 1, count)
            for g in attr.graphs:
                _check_graph(g, where, depth + 1, count)
    return count[0]


def _check_tensor(tensor: Any, where: str) -> None:
    import onnx

    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        raise UnsafeModelError(
            f"{where}: tensor '{tensor.name}' keeps its data in an external file "
            f"({location[:80]!r}); external data would make the studio read files, so the "
            f"model was refused. Save the model as one file: {_REEXPORT}"
        )


def _input_spec(model: Any, where: str) -> tuple[str, tuple[int, ...], Any]:
    """The graph's one data input: (name, shape without the batch, numpy dtype)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{where}: the graph takes {len(inputs)} inputs; the studio feeds one float tensor "
            "batch: export a model whose forward takes a single input"
        )
    spec = inputs[0]
    ttype = spec.type.tensor_type if spec.type.HasField("tensor_type") else None
    dtype = _FLOAT_TYPES.get(ttype.elem_type) if ttype is not None else None
    if ttype is None or dtype is None:
        raise ModelLoadError(
            f"{where}: the input '{spec.name}' is not a float tensor; the studio feeds float "
            "batches (export with a float32 example input)"
        )
    dims = list(ttype.shape.dim)
    if len(dims) < 2 or any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims[1:]):
        shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        raise ModelLoadError(
            f"{where}: the input '{spec.name}' has shape {shown}; it must be a batch (N, ...) "
            "whose other dimensions are fixed numbers"
        )
    return spec.name, tuple(int(d.dim_value) for d in dims[1:]), dtype


def _num_classes(model: Any) -> int | None:
    out = model.graph.output[0].type.tensor_type.shape.dim
    if len(out) == 2 and out[1].HasField("dim_value"):
        return int(out[1].dim_value)
    return None


# --------------------------------------------------------------------------------------------
# scopes: module paths for the graph's nodes
# --------------------------------------------------------------------------------------------


def _clean(component: str) -> str:
    return _COMPONENT.sub("_", component) or "_"


def _node_scopes(node: Any, index: int) -> list[str]:
    """The module paths enclosing a node, outermost first."""
    meta = {p.key: p.value for p in node.metadata_props}
    raw = meta.get("pkg.torch.onnx.name_scopes")
    if raw:
        names = re.findall(r"'([^']*)'", raw)[:-1]  # the last is the operator itself
        # nodes outside any module (a flatten in forward) are no layer, as in torch
        return [".".join(_clean(c) for c in n.split(".")) for n in names if n]
    if "/" in node.name:  # "/layer1/layer1.0/conv1/Conv"; "/Flatten" is outside any module
        scopes: list[str] = []
        for part in [p for p in node.name.split("/") if p][:-1]:
            comps = ".".join(_clean(c) for c in part.split("."))
            prev = scopes[-1] if scopes else ""
            last = prev.rsplit(".", 1)[-1]
            if prev and comps.startswith(last + "."):  # "layer1.0" inside "layer1"
                scopes.append(prev + comps[len(last) :])
            else:
                scopes.append(f"{prev}.{comps}" if prev else comps)
        return scopes
    return [_clean(node.name) if node.name else f"{_clean(node.op_type)}_{index}"]


class OnnxScope(nn.Module):
    """A group of graph nodes standing for a module: calls its children, returns its output."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__()
        self.path = path
        self.kind = kind
        self.input_name = ""
        self.output_name = ""
        self.param_count = 0
        self.first = 0

    def forward(self, x: Tensor | None, values: dict[str, Tensor]) -> Tensor | None:
        _call_children(self, values)
        return values.get(self.output_name)


def _call_children(parent: nn.Module, values: dict[str, Tensor]) -> None:
    """Call each scope under `parent` with its tensors, so that hooks on it see them. A hook
    cannot change what the graph computed: one that replaces a scope's output is refused."""
    for child in parent.children():
        assert isinstance(child, OnnxScope)
        out = values.get(child.output_name)
        if child(values.get(child.input_name), values) is not out:
            raise ValueError(
                f"layer '{child.path}' of an ONNX teacher cannot have its output replaced (the "
                "graph runs whole in onnxruntime), which e.g. scheme split needs: upload the "
                "teacher as a .pt2 archive or safetensors weights"
            )


_RESERVED = frozenset(dir(nn.Module)) | {"path", "kind", "input_name", "output_name", "first"}


def _build_scopes(model: Any) -> tuple[OnnxScope, dict[str, OnnxScope], dict[str, str]]:
    """The scope tree (root = the whole graph), scopes by path, class names by path."""
    root = OnnxScope("", "OnnxGraph")
    scopes: dict[str, OnnxScope] = {}
    types: dict[str, str] = {}
    sizes = {
        t.name: int(np.prod(t.dims, dtype=np.int64))
        for t in model.graph.initializer
        if t.data_type in _FLOAT_TYPES or t.data_type == 16  # BFLOAT16
    }
    produced: set[str] = {i.name for i in model.graph.input}
    counted: dict[str, set[str]] = {}
    for index, node in enumerate(model.graph.node):
        if not any(i in produced for i in node.input):
            continue  # a constant (Constant, an Identity of a weight): no layer
        paths = _node_scopes(node, index)
        classes = _classes(node)
        parent = root
        for depth, path in enumerate(paths):
            scope = scopes.get(path)
            if scope is None:
                name = _child_name(parent, path)
                leaf = depth == len(paths) - 1
                kind = (
                    classes[depth] if depth < len(classes) else (node.op_type if leaf else "Module")
                )
                scope = OnnxScope(path, kind)
                scope.first = index
                scope.input_name = next((i for i in node.input if i in produced), "")
                parent.add_module(name, scope)
                scopes[path] = scope
                types[path] = kind
                counted[path] = set()
            if node.output and node.output[0]:
                scope.output_name = node.output[0]
            for name in node.input:
                if name in sizes and name not in counted[path]:
                    counted[path].add(name)
                    scope.param_count += sizes[name]
            parent = scope
        produced.update(o for o in node.output if o)
    root.output_name = model.graph.output[0].name
    root.param_count = sum(sizes.values())
    return root, scopes, types


def _classes(node: Any) -> list[str]:
    """Class names of the enclosing modules (dynamo exporter), without the root's."""
    raw = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.class_hierarchy")
    names = re.findall(r"'([^']*)'", raw or "")[1:-1]
    return [n.rsplit(".", 1)[-1] for n in names]


def _child_name(parent: OnnxScope, path: str) -> str:
    """The attribute name under `parent` so that `named_modules` yields `path`."""
    name = (
        path[len(parent.path) + 1 :] if parent.path and path.startswith(parent.path + ".") else ""
    )
    if not name or "." in name:
        name = path.rsplit(".", 1)[-1] if "." in path and not parent.path else path
    name = name.replace(".", "_")
    while name in _RESERVED or name in parent._modules:
        name += "_"
    return name


# --------------------------------------------------------------------------------------------
# the module
# --------------------------------------------------------------------------------------------


class OnnxTeacher(nn.Module):
    """An ONNX graph as a frozen module: `forward(x)` runs onnxruntime, returns the first output.

    No gradients flow through it (losses that need the teacher's gradients want a .pt2 or
    safetensors teacher). The batch goes to the session as numpy (the CPU provider) or, when it
    lives on a GPU and onnxruntime has CUDA, through the CUDA provider; the output comes back on
    the batch's device. Child modules are the graph's scopes (see the module doc)."""

    def __init__(self, model: Any, where: str) -> None:
        super().__init__()
        self.where = where
        self.input_name, self.input_shape, self._dtype = _input_spec(model, where)
        self._model = model
        self._bytes = model.SerializeToString()
        root, self._scopes, _types = _build_scopes(model)
        for name, child in list(root.named_children()):
            self.add_module(name, child)
        self.module_types = {
            p: m.kind for p, m in self.named_modules() if p and isinstance(m, OnnxScope)
        }
        self._graph_outputs = {o.name for o in model.graph.output}
        self.param_count = root.param_count
        self._output = root.output_name
        self._sessions: dict[tuple[str, frozenset[str]], Any] = {}
        self._flops = _graph_flops(model)

    def graph_cost(self) -> dict[str, int]:
        """What `evaluate` and `inspect_model` report for a module (they cannot count a graph
        that onnxruntime runs): weights, the file's bytes, FLOPs per sample (`_graph_flops`)."""
        return {"params": self.param_count, "size_bytes": len(self._bytes), "flops": self._flops}

    @torch.compiler.disable  # onnxruntime runs the graph: nothing for training.compile to do
    def forward(self, x: Tensor) -> Tensor:
        watched = self._watched()
        names = frozenset(n for s in watched for n in (s.input_name, s.output_name) if n)
        names = names - {self._output, self.input_name}
        session = self._session(x.device, names)
        fetch = [self._output, *sorted(names)]
        array = x.detach().to("cpu", dtype=torch.float32).contiguous().numpy().astype(self._dtype)
        results = session.run(fetch, {self.input_name: array})
        values = {n: _tensor(r, x.device) for n, r in zip(fetch, results, strict=True)}
        values[self.input_name] = x.detach()
        if watched:
            _call_children(self, values)
        return values[self._output]

    def _watched(self) -> list[OnnxScope]:
        from torch.nn.modules import module as torch_module

        if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return list(self._scopes.values())
        return [s for s in self._scopes.values() if s._forward_hooks or s._forward_pre_hooks]

    def _session(self, device: torch.device, extra: frozenset[str]) -> Any:
        import onnxruntime as ort

        cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        key = ("cuda" if cuda else "cpu", extra)
        session = self._sessions.get(key)
        if session is not None:
            return session
        data = self._bytes
        if extra:
            import onnx

            copy = onnx.ModelProto()
            copy.CopyFrom(self._model)
            added = sorted(extra - self._graph_outputs)
            copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in added)
            data = copy.SerializeToString()
        options = ort.SessionOptions()
        options.add_session_config_entry("session.allow_released_opsets_only", "1")
        options.add_session_config_entry("session.load_model_format", "ONNX")
        options.log_severity_level = 3
        options.intra_op_num_threads = torch.get_num_threads()  # the engine's thread setting
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else None
        try:
            session = ort.InferenceSession(
                data, options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(
                f"{self.where}: onnxruntime could not load the model ({exc}): {_REEXPORT}"
            ) from exc
        if len(self._sessions) > 8:
            self._sessions.clear()
        self._sessions[key] = session
        return session

    def scopes(self) -> Iterator[OnnxScope]:
        yield from self._scopes.values()


def _graph_flops(model: Any) -> int:
    """FLOPs per sample of the convolutions and matrix products (a multiply-add counts 2, as
    `torch.utils.flop_counter` counts), from ONNX shape inference; 0 when shapes are unknown."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an estimate only
        return 0
    shapes: dict[str, list[int]] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    for t in graph.initializer:
        shapes[t.name] = list(t.dims)
    total = 0
    for node in graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        ins = [shapes.get(i) for i in node.input[:2]]
        if not out or any(d <= 0 for d in out[1:]) or None in ins:
            continue
        per_sample = int(np.prod(out[1:], dtype=np.int64))
        if node.op_type == "Conv" and ins[1] and len(ins[1]) > 1:
            total += 2 * per_sample * int(np.prod(ins[1][1:], dtype=np.int64))
        elif node.op_type in ("Gemm", "MatMul") and ins[0]:
            k = ins[0][-1] if node.op_type == "MatMul" or len(ins[0]) < 2 else ins[0][1]
            transposed = any(a.name == "transA" and a.i for a in node.attribute)
            k = ins[0][0] if node.op_type == "Gemm" and transposed else k
            total += 2 * per_sample * max(int(k), 0)
    return total


def _tensor(array: Any, device: torch.device) -> Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        tensor = tensor.float()
    return tensor.to(device, non_blocking=True) if device.type != "cpu" else tensor


def load_onnx(path: Path) -> LoadedModel:
    """Check an `.onnx` file and wrap it (`OnnxTeacher`); one dummy run proves it loads."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path.name} could not be read ({exc})") from exc
    model = check_onnx(data, path.name)
    module = OnnxTeacher(model, path.name)
    try:
        with torch.no_grad():
            module(torch.zeros(1, *module.input_shape))
    except ModelLoadError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelLoadError(
            f"{path.name}: onnxruntime failed on a dummy input of shape "
            f"{[1, *module.input_shape]} ({exc}): {_REEXPORT}"
        ) from exc
    return LoadedModel(module, module.input_shape, _num_classes(model), "onnx")
