"""Safe model loading: `torch.export` archives (`.pt2`) and safetensors weights for a zoo model.

No code from an upload ever runs. A model is never unpickled as a module: `.pt2` archives hold a
JSON graph of ATen operators plus raw weights, and safetensors files hold only tensors. But
`torch.export.load` still has ways to run Python from the file, so `check_archive` reads every
member before torch does and refuses the archive when any of these is not plain data:

- pickles (weights of tensor subclasses, sample inputs, legacy `.pt` members are `torch.load`-ed
  with `weights_only=False`): every global a pickle imports (GLOBAL, INST, STACK_GLOBAL, the last
  resolved by simulating the pickle stack, memo included) must be on a short allow-list of tensor
  rebuild functions and storage types (`_ALLOWED_GLOBALS`); extension-registry opcodes are refused;
- the graph program (`models/*.json`): operator targets must resolve to registered torch ops,
  shape expressions (`expr_str`, fed to `sympy.sympify`, i.e. `eval`) must use a small sympy
  grammar, `guards_code` (compiled to Python on `.module()`) must be empty, and names that
  torch.fx pastes into generated code must be plain dotted identifiers;
- compiled AOTInductor libraries and TorchScript/opaque object constants are refused outright.

Safetensors files get their header checked against the file size before the library maps them.
"""

from __future__ import annotations

import functools
import io
import json
import math
import operator
import pickletools
import re
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from worker.engine import catalog


class UnsafeModelError(ValueError):
    """The file contains something that could run code when loaded; it was not loaded."""


class ModelLoadError(ValueError):
    """The file is not a model we can load (wrong format, truncated, weights that do not fit)."""


@dataclass
class LoadedModel:
    """A loaded model in eval mode with frozen parameters.

    `input_shape` excludes the batch dimension; `num_classes` is the last dimension of a 2D output
    (None when the output is not a batch of vectors).
    """

    module: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int | None
    format: str


# --------------------------------------------------------------------------------------------
# pickles
# --------------------------------------------------------------------------------------------

_STORAGES = (
    "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
    "ComplexFloat", "ComplexDouble",
)
_DTYPES = (
    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
    "bool", "complex64", "complex128",
)
_ALLOWED_GLOBALS: frozenset[str] = frozenset(
    {
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "collections.OrderedDict",
        "torch.device",
        "torch.Size",
        "torch.UntypedStorage",
        "torch.storage.UntypedStorage",
        *(f"torch.{s}Storage" for s in _STORAGES),
        *(f"torch.{d}" for d in _DTYPES),
    }
)
_STRING_OPS = frozenset(
    {
        "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
        "BINUNICODE8",
    }
)
_MARK = object()
_OPAQUE = object()


def _check_global(module: str, name: str, where: str) -> None:
    if f"{module}.{name}" not in _ALLOWED_GLOBALS:
        raise UnsafeModelError(
            f"{where}: the pickle imports '{module}.{name}', which is not a tensor or storage "
            "type; loading it could run code, so the file was refused. Re-export the model with "
            "torch.export.save from plain tensors (no custom classes or tensor subclasses)"
        )


def _scan_pickle(data: bytes, where: str) -> None:
    """Refuse a pickle that imports anything outside `_ALLOWED_GLOBALS`.

    Walks the opcodes with `pickletools.genops` and simulates the stack (strings tracked, other
    values opaque) so that STACK_GLOBAL's module and name are known even when they come from
    the memo. A stream that cannot be followed is refused rather than guessed at.
    """
    stack: list[object] = []
    memo: dict[int, object] = {}
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, qualname = str(arg).partition(" ")
                _check_global(module, qualname, where)
            elif name == "STACK_GLOBAL":
                if len(stack) < 2 or not all(isinstance(v, str) for v in stack[-2:]):
                    raise UnsafeModelError(
                        f"{where}: the pickle imports a global whose name is computed; refused"
                    )
                _check_global(str(stack[-2]), str(stack[-1]), where)
            elif name in ("EXT1", "EXT2", "EXT4"):
                raise UnsafeModelError(f"{where}: the pickle uses the extension registry; refused")
            if name == "STOP":
                return
            _step(stack, memo, op, arg)
    except (ValueError, IndexError, KeyError, UnicodeDecodeError, struct.error) as exc:
        if isinstance(exc, UnsafeModelError):
            raise
        raise UnsafeModelError(f"{where}: not a readable pickle ({exc}); refused") from exc
    raise UnsafeModelError(f"{where}: the pickle has no STOP opcode; refused")


def _top(stack: list[object]) -> object:
    """The top object; like the real unpickler, objects below a MARK are out of reach."""
    if not stack or stack[-1] is _MARK:
        raise IndexError("stack underflow")
    return stack[-1]


def _step(
    stack: list[object], memo: dict[int, object], op: pickletools.OpcodeInfo, arg: Any
) -> None:
    """Apply one opcode's stack effect (values other than strings are opaque)."""
    name = op.name
    if name in ("PUT", "BINPUT", "LONG_BINPUT"):
        memo[int(arg)] = _top(stack)
    elif name == "MEMOIZE":
        memo[len(memo)] = _top(stack)
    elif name in ("GET", "BINGET", "LONG_BINGET"):
        stack.append(memo[int(arg)])
    elif name == "DUP":
        stack.append(_top(stack))
    elif name == "MARK":
        stack.append(_MARK)
    else:
        before = op.stack_before
        if pickletools.markobject in before:
            while stack and stack[-1] is not _MARK:
                stack.pop()
            stack.pop()  # the mark itself (IndexError when missing)
            keep = before.index(pickletools.markobject)
        else:
            keep = len(before)
        for _ in range(keep):
            _top(stack)
            stack.pop()
        pushed: object = arg if name in _STRING_OPS and isinstance(arg, str) else _OPAQUE
        stack.extend([pushed] * len(op.stack_after))


# --------------------------------------------------------------------------------------------
# the exported program (JSON)
# --------------------------------------------------------------------------------------------

_SYMPY_NAMES = frozenset(
    {
        "Symbol", "Integer", "Rational", "Float", "Mul", "Add", "Pow", "Max", "Min", "Abs",
        "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not",
        "Piecewise", "ExprCondPair", "true", "false", "True", "False", "None", "oo", "zoo", "nan",
        "Infinity", "NegativeInfinity", "Half", "One", "Zero", "NegativeOne", "BooleanTrue",
        "BooleanFalse", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan",
        "Equality", "Unequality",
        # torch.utils._sympy.functions, as registered by the torch.export deserializer
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
        "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
        "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
        "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    }
)
_EXPR_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<str>'[A-Za-z0-9_.+\-]*')|(?P<op>\*\*|==|!=|<=|>=|//|[-+*/%(),=<>]))"
)
_SYMBOL_NAME = re.compile(r"[a-z]+[0-9]+")
_DOTTED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*(@[0-9]+)?)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PAYLOAD_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_NAME_KEYS = frozenset(
    {"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn"}
)
_FREE_TEXT_KEYS = frozenset({"stack_trace", "in_spec", "out_spec", "as_string", "as_strings",
                             "custom", "from_node"})
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_ALLOWED_HOPS = frozenset(
    {"cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled",
     "wrap_with_autocast", "invoke_subgraph"}
)


@functools.cache
def _sym_ops() -> frozenset[object]:
    try:
        from torch._export.serde.serialize import _SYM_OPS

        return frozenset(_SYM_OPS)
    except ImportError:  # pragma: no cover - torch moved it
        return frozenset({operator.add, operator.sub, operator.mul, operator.floordiv,
                          operator.mod, operator.eq, operator.ne, operator.lt, operator.le,
                          operator.gt, operator.ge, operator.neg, operator.pow})


def _is_sym_op(obj: object) -> bool:
    try:
        return obj in _sym_ops()
    except TypeError:  # unhashable
        return False


def _check_target(target: str, where: str) -> None:
    """Resolve an operator name as the deserializer does; it must be a registered torch op."""
    if target.startswith("_operator"):
        base: Any = operator
    elif target.startswith("torch"):
        base = torch
    elif target.startswith("math"):
        base = math
    else:
        raise UnsafeModelError(f"{where}: operator '{target}' is not a torch operator; refused")
    obj = base
    for part in target.split(".")[1:]:
        if part.startswith("__") or not hasattr(obj, part):
            raise UnsafeModelError(f"{where}: operator '{target}' does not resolve; refused")
        obj = getattr(obj, part)
    if isinstance(obj, torch._ops.OpOverload) or obj is operator.getitem or _is_sym_op(obj):
        return
    if isinstance(obj, torch._ops.HigherOrderOperator) and obj.name() in _ALLOWED_HOPS:
        return
    raise UnsafeModelError(f"{where}: '{target}' is not an allowed operator; refused")


def _check_expr(expr: str, where: str) -> None:
    """A shape expression (sympy `srepr`, e.g. "Symbol('s0', positive=True, integer=True)")."""
    tokens = list(_tokens(expr, where))
    for i, (kind, text) in enumerate(tokens):
        if kind != "name":
            continue
        keyword = i + 1 < len(tokens) and tokens[i + 1] == ("op", "=")
        ok = (
            (keyword and not text.startswith("_"))
            or text in _SYMPY_NAMES
            or _SYMBOL_NAME.fullmatch(text) is not None
        )
        if not ok:
            raise UnsafeModelError(
                f"{where}: shape expression {expr[:80]!r} uses '{text}', which is not a sympy "
                "shape function; refused"
            )


def _tokens(expr: str, where: str) -> Iterator[tuple[str, str]]:
    pos, end = 0, len(expr.rstrip())
    while pos < end:
        match = _EXPR_TOKEN.match(expr, pos)
        if match is None or match.end() == pos:
            raise UnsafeModelError(
                f"{where}: shape expression {expr[:80]!r} is not a plain sympy expression; refused"
            )
        kind = match.lastgroup or "op"
        yield kind, match.group(kind)
        pos = match.end()


def _check_program(doc: Any, where: str) -> None:
    """Refuse a serialized ExportedProgram that carries anything executable."""
    if doc.get("guards_code"):
        raise UnsafeModelError(
            f"{where}: the program carries guard code, which torch compiles to Python; refused. "
            "Re-export without custom guards"
        )
    _walk(doc, None, where)


def _walk(value: Any, key: str | None, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or _CONTROL.search(k) or '"' in k or "\\" in k:
                raise UnsafeModelError(f"{where}: odd key {str(k)[:60]!r} in the program; refused")
            _walk(v, k, where)
    elif isinstance(value, list):
        for v in value:
            _walk(v, key, where)
    elif isinstance(value, str):
        _check_string(value, key, where)


def _check_string(value: str, key: str | None, where: str) -> None:
    if key == "target":
        _check_target(value, where)
    elif key == "expr_str":
        _check_expr(value, where)
    elif key in _NAME_KEYS and _DOTTED.fullmatch(value) is None:
        raise UnsafeModelError(f"{where}: {key} {value[:60]!r} is not a dotted name; refused")
    elif key == "name" and value and _IDENT.fullmatch(value) is None:
        raise UnsafeModelError(f"{where}: name {value[:60]!r} is not an identifier; refused")
    if key in _FREE_TEXT_KEYS:
        if "\r" in value:
            raise UnsafeModelError(f"{where}: {key} holds a carriage return; refused")
        return
    if _CONTROL.search(value) or "\n" in value or '"' in value or "\\" in value:
        raise UnsafeModelError(f"{where}: {key} {value[:60]!r} holds quotes or control chars")


def _check_payload_config(doc: Any, where: str) -> set[str]:
    """Names of payload files that torch would unpickle; refuses TorchScript/opaque objects."""
    pickled: set[str] = set()
    for fqn, meta in (doc.get("config") or {}).items():
        if not isinstance(fqn, str) or _DOTTED.fullmatch(fqn) is None:
            raise UnsafeModelError(f"{where}: weight name {str(fqn)[:60]!r} is not a dotted name")
        path_name = str(meta.get("path_name", ""))
        if _PAYLOAD_NAME.fullmatch(path_name) is None or path_name.strip(".") == "":
            raise UnsafeModelError(
                f"{where}: payload file {path_name[:60]!r} of '{fqn}' is not a plain file name"
            )
        if path_name.startswith(("custom_obj", "opaque_obj")):
            raise UnsafeModelError(
                f"{where}: constant '{fqn}' is a TorchScript/opaque object, which loads through "
                "pickle; refused. Export a model whose constants are plain tensors"
            )
        if meta.get("use_pickle"):
            pickled.add(path_name)
    return pickled


# --------------------------------------------------------------------------------------------
# the archive
# --------------------------------------------------------------------------------------------

_REEXPORT = "re-export with torch.export.save(torch.export.export(model.eval(), (x,)), 'model.pt2')"
_MAX_DEPTH = 2
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError)
_MAX_READ = 256 * 1024 * 1024  # bytes read into memory per checked member (zip bombs)


def check_archive(path: Path) -> None:
    """Refuse a `.pt2` file that is not a clean torch.export archive (see the module docstring).

    Raises ModelLoadError when the file is not a readable zip archive of an exported program and
    UnsafeModelError when it holds anything that could run code on load.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
        if head != b"PK\x03\x04":
            raise zipfile.BadZipFile("does not start with a zip local file header")
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"member {bad} is corrupt")
            programs = _check_zip(zf, path.name, depth=0)
    except _ZIP_ERRORS as exc:
        raise ModelLoadError(
            f"{path.name} is not a torch.export archive (a .pt2 zip) or it is truncated ({exc}): "
            f"{_REEXPORT}"
        ) from exc
    if programs == 0:
        raise ModelLoadError(f"{path.name} holds no exported program (models/*.json): {_REEXPORT}")


def _check_zip(zf: zipfile.ZipFile, where: str, depth: int) -> int:
    """Check every member; returns how many exported programs were found."""
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise UnsafeModelError(f"{where}: the archive has duplicate member names; refused")
    if any("/data/aotinductor/" in f"/{n}" for n in names):
        raise UnsafeModelError(
            f"{where}: the archive contains compiled AOTInductor code; refused. {_REEXPORT}"
        )
    pickled: set[str] = set()
    for info in infos:
        if info.filename.endswith("_config.json"):
            doc = _read_json(zf, info, where)
            if isinstance(doc, dict):
                pickled |= _check_payload_config(doc, f"{where}:{info.filename}")
    programs = 0
    for info in infos:
        programs += _check_member(zf, info, where, depth, pickled)
    return programs


def _check_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, depth: int, pickled: set[str]
) -> int:
    name = info.filename
    here = f"{where}:{name}"
    base = name.rsplit("/", 1)[-1]
    if _is_raw_payload(name, base, pickled):
        return 0
    if info.file_size > _MAX_READ:
        raise ModelLoadError(
            f"{here} is {info.file_size} bytes; metadata members above {_MAX_READ} bytes are not "
            f"accepted: {_REEXPORT}"
        )
    if name.endswith(".json"):
        doc = _read_json(zf, info, where)
        if isinstance(doc, dict) and "graph_module" in doc:
            _check_program(doc, here)
            return 1
        return 0
    with zf.open(info) as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04":
        if depth >= _MAX_DEPTH:
            raise UnsafeModelError(f"{here}: archives nested too deep; refused")
        with zipfile.ZipFile(io.BytesIO(zf.read(info))) as inner:
            return _check_zip(inner, here, depth + 1)
    if name.endswith(".pt") or base in pickled:
        # torch.load of a non-zip file reads several pickles in a row (the legacy format)
        raise ModelLoadError(f"{here}: the legacy torch.save format is not supported: {_REEXPORT}")
    if name.endswith(".pkl") or head.startswith(b"\x80"):
        _scan_pickle(zf.read(info), here)
    return 0


def _is_raw_payload(name: str, base: str, pickled: set[str]) -> bool:
    """Raw tensor bytes that torch maps directly (never unpickled)."""
    if base in pickled:
        return False
    in_weights = "/data/weights/" in f"/{name}" or "/data/constants/" in f"/{name}"
    storage = re.fullmatch(r"(.*/)?data/[0-9]+", name) is not None  # torch.save zip storages
    return (in_weights and not name.endswith(".pt")) or storage


def _read_json(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> Any:
    if info.file_size > _MAX_READ:
        raise ModelLoadError(f"{where}:{info.filename} is too large ({info.file_size} bytes)")
    try:
        return json.loads(zf.read(info))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        message = f"{where}:{info.filename} is not valid JSON ({exc}): {_REEXPORT}"
        raise ModelLoadError(message) from exc


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def load_model(
    path: Path,
    format: Literal["pt2", "safetensors"],
    architecture: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a teacher (or a student to start from) without running code from the file.

    - "pt2": a `torch.export.save` archive. It is checked (`check_archive`), loaded and
      unflattened (`torch.export.unflatten`) so that the original module paths (`layer2`, ...)
      exist and forward hooks on them fire.
    - "safetensors": weights for zoo `architecture`; `kwargs` holds `input_shape`, `num_classes`
      and the architecture's parameters (falling back to the file's own metadata, which
      `export.save_safetensors` writes).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    if format == "pt2":
        loaded = _load_pt2(path)
    elif format == "safetensors":
        loaded = _load_safetensors(path, architecture, dict(kwargs or {}))
    else:
        raise ModelLoadError(f"unknown model format '{format}'; use 'pt2' or 'safetensors'")
    loaded.module.eval()
    loaded.module.requires_grad_(False)
    return loaded


def _load_pt2(path: Path) -> LoadedModel:
    check_archive(path)
    try:
        with path.open("rb") as fh:
            program = torch.export.load(fh)
    except Exception as exc:  # torch raises many kinds here
        message = f"{path.name} could not be loaded by torch.export ({exc}): {_REEXPORT}"
        raise ModelLoadError(message) from exc
    _refuse_training_mode(program, path.name)
    input_shape = _program_input_shape(program, path.name)
    module = torch.export.unflatten(program)
    for sub in module.modules():
        if hasattr(sub, "_run_with_interpreter"):
            # run the generated code rather than torch.fx.Interpreter: ~4x faster at batch 1
            sub._run_with_interpreter = False
    module.module_types = _module_types(program)  # type: ignore[assignment]
    return LoadedModel(module, input_shape, _program_num_classes(program), "pt2")


def _user_placeholders(program: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    names = set(program.graph_signature.user_inputs)
    return [n for n in program.graph.nodes if n.op == "placeholder" and n.name in names]


def _program_input_shape(program: torch.export.ExportedProgram, where: str) -> tuple[int, ...]:
    inputs = _user_placeholders(program)
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{where}: the exported model takes {len(inputs)} inputs; the studio feeds one "
            "tensor: export a model whose forward takes a single input batch"
        )
    val = inputs[0].meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() < 2:
        raise ModelLoadError(f"{where}: the model input must be a batched tensor (N, ...)")
    dims = tuple(val.shape[1:])
    if any(isinstance(d, torch.SymInt) for d in dims):
        raise ModelLoadError(
            f"{where}: only the batch dimension may be dynamic, got input shape {list(val.shape)}"
        )
    return tuple(int(d) for d in dims)


def _program_num_classes(program: torch.export.ExportedProgram) -> int | None:
    output = next(n for n in program.graph.nodes if n.op == "output")
    first = output.args[0][0] if output.args and output.args[0] else None
    val = first.meta.get("val") if isinstance(first, torch.fx.Node) else None
    if isinstance(val, torch.Tensor) and val.dim() == 2:
        classes = val.shape[1]
        return None if isinstance(classes, torch.SymInt) else int(classes)
    return None


def _refuse_training_mode(program: torch.export.ExportedProgram, where: str) -> None:
    """Batch norm or dropout exported in training mode would keep behaving that way."""
    aten = torch.ops.aten
    checks = {
        aten.batch_norm.default: 5,
        aten._native_batch_norm_legit_functional.default: 5,
        aten.native_batch_norm.default: 5,
        aten.dropout.default: 2,
        aten.feature_dropout.default: 2,
    }
    for node in program.graph.nodes:
        index = checks.get(node.target) if node.op == "call_function" else None
        if index is not None and len(node.args) > index and node.args[index] is True:
            raise ModelLoadError(
                f"{where}: the model was exported in training mode ({node.target} with "
                "training=True); call model.eval() before torch.export.export and save again"
            )


def _module_types(program: torch.export.ExportedProgram) -> dict[str, str]:
    """Original class names by module path (the unflattened modules are InterpreterModules)."""
    types: dict[str, str] = {}
    for node in program.graph.nodes:
        for path, type_name in (node.meta.get("nn_module_stack") or {}).values():
            clean = str(path).replace("L['self']", "").lstrip(".")
            types.setdefault(clean, str(type_name).strip("<>'").rsplit(".", 1)[-1].split(" ")[-1])
    return types


# --------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------

_ST_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_MAX_HEADER = 100 * 1024 * 1024


def check_safetensors_header(path: Path) -> dict[str, Any]:
    """Validate a safetensors header against the file; returns it (with `__metadata__`).

    Layout: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape,
    data_offsets: [begin, end]}}, then the data; every tensor's byte range must lie inside the
    data and match dtype size x prod(shape).
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ModelLoadError(f"{path.name} is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > min(_MAX_HEADER, size - 8):
            raise ModelLoadError(
                f"{path.name}: the safetensors header claims {n} bytes but the file has {size}; "
                "the file is truncated or not safetensors (save with safetensors.torch.save_file)"
            )
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            message = f"{path.name}: the safetensors header is not JSON ({exc})"
            raise ModelLoadError(message) from exc
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path.name}: the safetensors header is not a JSON object")
    data_size = size - 8 - n
    for name, entry in header.items():
        if name != "__metadata__":
            _check_st_entry(path.name, name, entry, data_size)
    return header


def _check_st_entry(file: str, name: str, entry: Any, data_size: int) -> None:
    try:
        itemsize = _ST_DTYPE_BYTES[entry["dtype"]]
        shape = [int(s) for s in entry["shape"]]
        begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        message = f"{file}: tensor '{name}' has a malformed header entry ({exc})"
        raise ModelLoadError(message) from exc
    expected = itemsize * math.prod(shape)
    if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size or end - begin != expected:
        raise ModelLoadError(
            f"{file}: tensor '{name}' claims bytes {begin}..{end} for shape {shape} "
            f"({expected} bytes) but the file holds {data_size} data bytes; the header lies or "
            "the file is truncated: save it again with safetensors.torch.save_file"
        )


def _load_safetensors(path: Path, architecture: str | None, kwargs: dict[str, Any]) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from worker.engine.students import REGISTRY, build_student

    header = check_safetensors_header(path)
    meta = _st_metadata(header)
    architecture = architecture or meta.get("arch")
    if architecture not in REGISTRY:
        raise ModelLoadError(
            f"safetensors weights need a zoo architecture; got {architecture!r}. Choose one of: "
            f"{', '.join(REGISTRY)}"
            + (f" (nearest: {', '.join(catalog.nearest(architecture, list(REGISTRY)))})"
               if architecture else "")
        )
    merged = {**(meta.get("arch_kwargs") or {}), **kwargs}
    for key in ("input_shape", "num_classes"):
        if key not in merged and key in meta:
            merged[key] = meta[key]
    missing = [k for k in ("input_shape", "num_classes") if k not in merged]
    if missing:
        raise ModelLoadError(
            f"safetensors weights for '{architecture}' need kwargs {missing}, e.g. "
            "{'input_shape': [3, 32, 32], 'num_classes': 10}"
        )
    input_shape = tuple(int(s) for s in merged.pop("input_shape"))
    num_classes = int(merged.pop("num_classes"))
    try:
        module = build_student(architecture, input_shape, num_classes, **merged)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot build '{architecture}' with {merged}: {exc}") from exc
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        message = f"{path.name}: safetensors could not read the weights ({exc})"
        raise ModelLoadError(message) from exc
    _check_state_fits(module, state, architecture, merged)
    module.load_state_dict(state, strict=True)
    return LoadedModel(module, input_shape, num_classes, "safetensors")


def _st_metadata(header: dict[str, Any]) -> dict[str, Any]:
    """The studio's own metadata (written by export.save_safetensors), values JSON-decoded."""
    out: dict[str, Any] = {}
    for key, value in (header.get("__metadata__") or {}).items():
        try:
            out[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            out[key] = value
    return out


def _check_state_fits(
    module: nn.Module, state: dict[str, torch.Tensor], architecture: str, kwargs: dict[str, Any]
) -> None:
    """A clear error listing missing / unexpected keys and shape mismatches."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})")
    raise ModelLoadError(
        f"the weights do not fit {architecture}({kwargs}): {', '.join(parts)}. Check the "
        "architecture and its kwargs (num_classes, width, input_shape channels)"
    )
