"""Safe model loading: `torch.export` archives (`.pt2`) and safetensors weights for a zoo model.

No code from an upload ever runs, by construction rather than by a deny-list:

1. **Layout allow-list.** `check_archive` accounts for every member of a `.pt2` zip against the
   layout `torch.export.save` (torch 2.13) writes, names compared exactly, case and all:
   `models/model.json` (the graph, JSON), `data/weights|constants/model_*_config.json` (JSON),
   raw tensor bytes `data/weights/weight_<n>` and `data/constants/tensor_<n>`, the sample inputs
   `data/sample_inputs/model.pt`, text `extra/<name>` files and torch's bookkeeping members
   (`archive_format`, `archive_version`, `byteorder`, `.data/version`, `.data/serialization_id`).
   Anything else is refused naming the member. Weights must be raw tensors (`use_pickle` false),
   constants plain tensors (no TorchScript or opaque objects).
2. **A clean rebuild.** torch never sees the upload: `load_model` writes a new archive holding
   only the graph, the two configs (re-serialized from the parsed JSON) and the referenced raw
   tensor members, and hands that to `torch.export.load`. There are no sample inputs in it, so
   no member torch could unpickle (it retries with `weights_only=False`) ever reaches torch. The
   dropped sample inputs are still checked: a `torch.save` zip whose `data.pkl` may import only
   tensor-rebuild functions, whatever the pickle's header or protocol (`_scan_pickle`).
3. **Graph allow-list.** Every node target in the JSON, and again in the loaded graph, must pass
   `worker.engine.operators`: pure ATen operators (no files, storages, generators, random
   numbers, values read back into Python, writes into inputs/parameters/buffers), the
   symbolic-shape operators, `getitem`. Shape expressions (`expr_str`, which sympy `eval`s) must
   use a small sympy grammar, `guards_code` (compiled to Python) must be empty, and names torch.fx
   pastes into generated code (`1.weight`, `blocks.0.conv`) may hold only letters, digits, `_`
   and `-`.

The worker additionally loads, inspects and trains uploads in a child process with resource
limits (`worker.sandbox`). Safetensors files get their header checked against the file size
before the library maps them.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import pickletools
import re
import struct
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from core import catalog
from worker.engine import operators

ModelFormat = Literal["pt2", "safetensors", "onnx", "hf"]


def set_mode(module: nn.Module, training: bool) -> None:
    """`module.train(training)`; an exported graph module may refuse it (it is inference
    already) and is left as it is."""
    with contextlib.suppress(NotImplementedError, RuntimeError):
        module.train(training)


class UnsafeModelError(ValueError):
    """The file contains something that could run code when loaded; it was not loaded."""


class ModelLoadError(ValueError):
    """The file is not a model we can load (wrong format, truncated, weights that do not fit)."""


@dataclass
class LoadedModel:
    """A loaded model in eval mode with frozen parameters.

    `input_shape` excludes the batch dimension; `num_classes` is the last dimension of a 2D output
    (None when the output is not a batch of vectors). `tokenizer`: a Hugging Face checkpoint's
    `tokenizers.Tokenizer` (None when it has none, and for every other format); `config`: its
    config.json.
    """

    module: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int | None
    format: str
    tokenizer: Any = None
    config: dict[str, Any] | None = None


def is_shell(module: nn.Module) -> bool:
    """Whether `module` is a model without its weights (on the `meta` device: a teacher whose
    outputs a run replays from its cache, `hf_teacher.load_hf_shell`); it cannot run."""
    return any(t.is_meta for t in itertools.chain(module.parameters(), module.buffers()))


# --------------------------------------------------------------------------------------------
# pickles
# --------------------------------------------------------------------------------------------

_STORAGES = (
    "Float",
    "Double",
    "Half",
    "BFloat16",
    "Long",
    "Int",
    "Short",
    "Char",
    "Byte",
    "Bool",
    "ComplexFloat",
    "ComplexDouble",
)
_DTYPES = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
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
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
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
        "Symbol",
        "Integer",
        "Rational",
        "Float",
        "Mul",
        "Add",
        "Pow",
        "Max",
        "Min",
        "Abs",
        "floor",
        "ceiling",
        "sqrt",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "And",
        "Or",
        "Not",
        "Piecewise",
        "ExprCondPair",
        "true",
        "false",
        "True",
        "False",
        "None",
        "oo",
        "zoo",
        "nan",
        "Infinity",
        "NegativeInfinity",
        "Half",
        "One",
        "Zero",
        "NegativeOne",
        "BooleanTrue",
        "BooleanFalse",
        "StrictLessThan",
        "StrictGreaterThan",
        "LessThan",
        "GreaterThan",
        "Equality",
        "Unequality",
        # torch.utils._sympy.functions, as registered by the torch.export deserializer
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "Mod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "FloatPow",
        "FloatTrueDiv",
        "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
    }
)
_EXPR_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<str>'[A-Za-z0-9_.+\-]*')|(?P<op>\*\*|==|!=|<=|>=|//|[-+*/%(),=<>]))"
)
_SYMBOL_NAME = re.compile(r"[a-z]+[0-9]+")
# module paths and weight names: `1.weight`, `blocks.0.conv`, `head-a.fc`, `conv@1` (a reuse)
_DOTTED = re.compile(r"([A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*(@[0-9]+)?)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_KEYS = frozenset(
    {"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn"}
)
_FREE_TEXT_KEYS = frozenset(
    {"stack_trace", "in_spec", "out_spec", "as_string", "as_strings", "custom", "from_node"}
)
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def _check_target(target: str, where: str) -> None:
    """An operator as serialized ("torch.ops.aten.add.Tensor") must pass the operator rule."""
    reason = operators.serialized_target_refusal(target)
    if reason is not None:
        raise UnsafeModelError(
            f"{where}: the graph calls {reason}; refused. Only pure ATen operators are accepted "
            "(see worker/engine/operators.py)"
        )


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
    if not isinstance(doc, dict) or "graph_module" not in doc:
        raise ModelLoadError(f"{where} is not an exported program: {_REEXPORT}")
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
        raise UnsafeModelError(
            f"{where}: {key} {value[:60]!r} may hold only letters, digits, '_', '-' and dots; "
            "refused. Rename the module"
        )
    elif key == "name" and value and _IDENT.fullmatch(value) is None:
        raise UnsafeModelError(f"{where}: name {value[:60]!r} is not an identifier; refused")
    if key in _FREE_TEXT_KEYS:
        if "\r" in value:
            raise UnsafeModelError(f"{where}: {key} holds a carriage return; refused")
        return
    if _CONTROL.search(value) or "\n" in value or '"' in value or "\\" in value:
        raise UnsafeModelError(f"{where}: {key} {value[:60]!r} holds quotes or control chars")


# --------------------------------------------------------------------------------------------
# the archive: layout allow-list, then a clean rebuild
# --------------------------------------------------------------------------------------------

_REEXPORT = "re-export with torch.export.save(torch.export.export(model.eval(), (x,)), 'model.pt2')"
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError)
_MAX_READ = 256 * 1024 * 1024  # bytes read into memory per metadata member (zip bombs)

# What torch.export.save (torch 2.13, `torch/export/pt2_archive/_package.py`) writes for the one
# program it saves ("model"), below the archive's root folder (named after the file).
PROGRAM = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_BOOKKEEPING = frozenset(
    {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
)
LAYOUT_NAMES = frozenset({PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG, SAMPLE_INPUTS, *_BOOKKEEPING})
_WEIGHT = re.compile(r"weight_[0-9]{1,9}")
_CONSTANT = re.compile(r"tensor_[0-9]{1,9}")
_EXTRA = re.compile(r"extra/[A-Za-z0-9_.\-]{1,200}")
_PAYLOAD_DIRS = {
    WEIGHTS_CONFIG: ("data/weights/", _WEIGHT),
    CONSTANTS_CONFIG: ("data/constants/", _CONSTANT),
}
_ROOT = re.compile(r"[^/\\\x00-\x1f\x7f]{1,255}")
# a torch.save zip (the sample inputs): what torch.save (torch 2.13) writes below its root
_SAVE_NAMES = frozenset(
    {
        "data.pkl",
        "byteorder",
        "version",
        ".data/version",
        ".data/serialization_id",
        ".format_version",
        ".storage_alignment",
    }
)
_SAVE_STORAGE = re.compile(r"data/[0-9]{1,9}")


@dataclass
class CheckedArchive:
    """What `check_archive` accepted: the parsed JSON members and the raw tensor members."""

    program: dict[str, Any]
    configs: dict[str, dict[str, Any]]
    payloads: dict[str, str] = field(default_factory=dict)  # layout name -> member name


def check_archive(path: Path) -> CheckedArchive:
    """Account for every member of a `.pt2` archive (see the module docstring).

    Raises ModelLoadError when the file is not a readable torch.export archive and
    UnsafeModelError when it holds anything outside the layout or anything executable.
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
            return _check_members(zf, path.name)
    except _ZIP_ERRORS as exc:
        raise ModelLoadError(
            f"{path.name} is not a torch.export archive (a .pt2 zip) or it is truncated ({exc}): "
            f"{_REEXPORT}"
        ) from exc


def _layout_names(zf: zipfile.ZipFile, where: str) -> dict[str, zipfile.ZipInfo]:
    """Layout name (below the root folder) -> member; refuses any member outside the layout."""
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise UnsafeModelError(f"{where}: the archive has duplicate member names; refused")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or _ROOT.fullmatch(next(iter(roots))) is None:
        raise UnsafeModelError(
            f"{where}: members must all sit in one root folder (torch.export.save's layout), "
            f"found {sorted(roots)[:5]}; refused. {_REEXPORT}"
        )
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        rel = info.filename.split("/", 1)[1] if "/" in info.filename else ""
        if rel.startswith("data/aotinductor/"):
            raise UnsafeModelError(
                f"{where}: the archive contains compiled AOTInductor code ('{info.filename}'); "
                f"refused. {_REEXPORT}"
            )
        if not _in_layout(rel):
            raise UnsafeModelError(
                f"{where}: member '{info.filename}' is not part of a torch.export archive "
                "(names are compared exactly, case and all); refused. "
                f"{_REEXPORT}"
            )
        members[rel] = info
    return members


def _in_layout(rel: str) -> bool:
    if rel in LAYOUT_NAMES or _EXTRA.fullmatch(rel):
        return True
    folder, _, base = rel.rpartition("/")
    return (folder == "data/weights" and _WEIGHT.fullmatch(base) is not None) or (
        folder == "data/constants" and _CONSTANT.fullmatch(base) is not None
    )


def _check_members(zf: zipfile.ZipFile, where: str) -> CheckedArchive:
    members = _layout_names(zf, where)
    if PROGRAM not in members:
        raise ModelLoadError(f"{where} holds no exported program ({PROGRAM}): {_REEXPORT}")
    for rel, expected in (("archive_format", b"pt2"), ("archive_version", _archive_version())):
        if rel in members and zf.read(members[rel]).strip() != expected:
            raise ModelLoadError(
                f"{where}: {rel} is {zf.read(members[rel])[:20]!r}, not {expected!r}: this "
                f"archive was written by another torch.export version; {_REEXPORT}"
            )
    if "byteorder" in members and zf.read(members["byteorder"]).strip() != sys.byteorder.encode():
        raise ModelLoadError(f"{where}: the weights are not {sys.byteorder}-endian; {_REEXPORT}")
    program = _read_json(zf, members[PROGRAM], where)
    _check_program(program, f"{where}:{members[PROGRAM].filename}")
    checked = CheckedArchive(program=program, configs={})
    for config_name in (WEIGHTS_CONFIG, CONSTANTS_CONFIG):
        if config_name not in members:
            raise ModelLoadError(f"{where} has no {config_name}: {_REEXPORT}")
        doc = _read_json(zf, members[config_name], where)
        here = f"{where}:{members[config_name].filename}"
        checked.configs[config_name] = doc
        folder, pattern = _PAYLOAD_DIRS[config_name]
        for path_name in _check_payload_config(doc, here, pattern):
            rel = folder + path_name
            if rel not in members:
                raise ModelLoadError(f"{here} names {path_name}, which the archive lacks")
            checked.payloads[rel] = members[rel].filename
    if SAMPLE_INPUTS in members:
        info = members[SAMPLE_INPUTS]
        _check_sample_inputs(_read(zf, info, where), f"{where}:{info.filename}")
    return checked


def _archive_version() -> bytes:
    from torch.export.pt2_archive.constants import ARCHIVE_VERSION_VALUE

    return str(ARCHIVE_VERSION_VALUE).encode()


def _check_payload_config(doc: Any, where: str, pattern: re.Pattern[str]) -> set[str]:
    """The raw tensor members a weights/constants config names; anything else is refused."""
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{where} is not a torch.export payload config: {_REEXPORT}")
    names: set[str] = set()
    for fqn, meta in config.items():
        if _DOTTED.fullmatch(fqn) is None:
            raise UnsafeModelError(
                f"{where}: weight name {fqn[:60]!r} may hold only letters, digits, '_', '-' and "
                "dots; refused"
            )
        if not isinstance(meta, dict):
            raise ModelLoadError(f"{where}: entry '{fqn}' is not an object")
        path_name = str(meta.get("path_name", ""))
        if meta.get("use_pickle") or pattern.fullmatch(path_name) is None:
            raise UnsafeModelError(
                f"{where}: '{fqn}' is stored as {path_name[:60]!r}"
                f"{' (a pickle)' if meta.get('use_pickle') else ''}, not as raw tensor bytes; "
                "pickled weights, tensor subclasses and TorchScript/opaque constants would be "
                "unpickled, so the file was refused. Export a model whose weights and constants "
                "are plain tensors"
            )
        if not isinstance(meta.get("tensor_meta"), dict):
            raise ModelLoadError(f"{where}: '{fqn}' has no tensor_meta: {_REEXPORT}")
        names.add(path_name)
    return names


def _check_sample_inputs(data: bytes, where: str) -> None:
    """The sample inputs are never handed to torch, but a hostile one is still refused: a
    `torch.save` zip of tensors whose pickle imports only tensor-rebuild functions."""
    if not data:
        return
    if not data.startswith(b"PK\x03\x04"):
        _scan_pickle(data, where)
        raise ModelLoadError(f"{where}: the legacy torch.save format is not supported: {_REEXPORT}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            roots = {n.split("/", 1)[0] for n in inner.namelist()}
            for info in inner.infolist():
                rel = info.filename.split("/", 1)[1] if "/" in info.filename else ""
                if len(roots) != 1 or not (rel in _SAVE_NAMES or _SAVE_STORAGE.fullmatch(rel)):
                    raise UnsafeModelError(
                        f"{where}: member '{info.filename}' is not part of a torch.save file; "
                        "refused"
                    )
                if rel == "data.pkl":
                    _scan_pickle(_read(inner, info, where), f"{where}:{info.filename}")
    except _ZIP_ERRORS as exc:
        raise ModelLoadError(f"{where} is not a readable torch.save zip ({exc})") from exc


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bytes:
    if info.file_size > _MAX_READ:
        raise ModelLoadError(
            f"{where}:{info.filename} is {info.file_size} bytes; metadata members above "
            f"{_MAX_READ} bytes are not accepted: {_REEXPORT}"
        )
    return zf.read(info)


def _read_json(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> Any:
    try:
        return json.loads(_read(zf, info, where))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        message = f"{where}:{info.filename} is not valid JSON ({exc}): {_REEXPORT}"
        raise ModelLoadError(message) from exc


def rebuild_archive(path: Path, checked: CheckedArchive, dest: Path) -> None:
    """Write a new archive with only what `torch.export.load` needs: the checked graph and
    configs (re-serialized from the parsed JSON), the raw tensors they name, and empty sample
    inputs (nothing torch would unpickle)."""
    from torch.export.pt2_archive._package import PT2ArchiveWriter

    with zipfile.ZipFile(path) as zf, PT2ArchiveWriter(str(dest)) as writer:
        writer.write_bytes(PROGRAM, json.dumps(checked.program).encode())
        for name, doc in checked.configs.items():
            writer.write_bytes(name, json.dumps(doc).encode())
        for name, member in sorted(checked.payloads.items()):
            writer.write_bytes(name, zf.read(member))
        writer.write_bytes(SAMPLE_INPUTS, b"")


def check_graph(program: torch.export.ExportedProgram, where: str) -> None:
    """Every call in the loaded graph (and its subgraphs) must pass `worker.engine.operators`."""
    refusals = list(operators.graph_refusals(program.graph_module))
    if refusals:
        more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
        raise UnsafeModelError(
            f"{where}: {refusals[0]}{more}; refused. Only pure ATen operators are accepted"
        )


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def load_model(
    path: Path,
    format: ModelFormat,
    architecture: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a teacher (or a student to start from) without running code from the file.

    - "pt2": a `torch.export.save` archive. It is checked (`check_archive`), rebuilt clean
      (`rebuild_archive`), loaded, its graph checked (`check_graph`) and unflattened (`torch.export.unflatten`) so that the original module paths (`layer2`, ...)
      exist and forward hooks on them fire.
    - "safetensors": weights for zoo `architecture`; `kwargs` holds `input_shape`, `num_classes`
      and the architecture's parameters (falling back to the file's own metadata, which
      `export.save_safetensors` writes).
    - "onnx": a single-file ONNX graph, checked and run by onnxruntime
      (`worker.engine.onnx_teacher`): a frozen teacher, no gradients through it.
    - "hf": a Hugging Face checkpoint folder zipped (config.json, safetensors, tokenizer), built
      with transformers from its config, never remote code or pickles (`worker.engine.hf_teacher`).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    if format == "pt2":
        loaded = _load_pt2(path)
    elif format == "safetensors":
        loaded = _load_safetensors(path, architecture, dict(kwargs or {}))
    elif format == "onnx":
        from worker.engine.onnx_teacher import load_onnx

        loaded = load_onnx(path)
    elif format == "hf":
        from worker.engine.hf_teacher import load_hf

        loaded = load_hf(path)
    else:
        raise ModelLoadError(
            f"unknown model format '{format}'; use 'pt2', 'safetensors', 'onnx' or 'hf'"
        )
    loaded.module.eval()
    loaded.module.requires_grad_(False)
    return loaded


def _load_pt2(path: Path) -> LoadedModel:
    checked = check_archive(path)
    with tempfile.TemporaryDirectory(prefix="ds-pt2-") as tmp:
        clean = Path(tmp) / "model.pt2"
        rebuild_archive(path, checked, clean)
        try:
            program = torch.export.load(str(clean))
        except Exception as exc:  # torch raises many kinds here
            message = f"{path.name} could not be loaded by torch.export ({exc}): {_REEXPORT}"
            raise ModelLoadError(message) from exc
    _refuse_training_mode(program, path.name)
    check_graph(program, path.name)
    input_shape = _program_input_shape(program, path.name)
    module = torch.export.unflatten(program)
    follow_input_device(module)
    for sub in module.modules():
        if hasattr(sub, "_run_with_interpreter") and not _calls_reused_module(sub):
            # run the generated code rather than torch.fx.Interpreter: ~4x faster at batch 1
            # torch's stub types nn.Module.__setattr__ for tensors and modules only
            sub._run_with_interpreter = False  # type: ignore[assignment]
    module.module_types = _module_types(program)  # type: ignore[assignment]
    return LoadedModel(module, input_shape, _program_num_classes(program), "pt2")


def follow_input_device(module: nn.Module) -> None:
    """Make an unflattened exported graph run on whichever device its inputs are on.

    torch.export records the device it traced on: `_assert_tensor_metadata` checks (from
    `.to(dtype)` / `.float()` calls) and factory calls (`arange(..., device=cpu)`). As loaded,
    a graph exported on the CPU fails on a GPU ("Tensor device mismatch! Expected: cpu, Got:
    cuda:0"), and the reverse: a teacher trained on the GPU, or a student's `.pt2` timed there.
    The checks are dropped (nothing reads them), and each factory call takes the device of its
    graph's first tensor input, as the eager module did. Each graph (the root's and every
    submodule's) is rewritten, then its generated code rebuilt (`finalize`)."""
    for sub in module.modules():
        graph = getattr(sub, "graph", None)
        if not isinstance(graph, torch.fx.Graph) or not hasattr(sub, "finalize"):
            continue
        inputs = [n for n in graph.nodes if n.op == "placeholder"]
        tensor = next((n for n in inputs if isinstance(n.meta.get("val"), torch.Tensor)), None)
        device: torch.fx.Node | None = None
        changed = False
        for node in list(graph.nodes):
            if node.op != "call_function":
                continue
            if node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
                graph.erase_node(node)
                changed = True
            elif isinstance(node.kwargs.get("device"), torch.device) and tensor is not None:
                if device is None:
                    with graph.inserting_after(inputs[-1]):
                        device = graph.call_function(_device_of, (tensor,))
                node.update_kwarg("device", device)
                changed = True
        if changed:
            sub.finalize()  # type: ignore[operator]  # UnflattenedModule / InterpreterModule


def _device_of(tensor: torch.Tensor) -> torch.device:
    """The device a graph's factory calls create their tensors on (`follow_input_device`)."""
    return tensor.device


def _calls_reused_module(module: nn.Module) -> bool:
    """Whether the unflattened module calls a reused child (`relu@1`, a module called twice):
    torch's generated code cannot reach those, its interpreter can."""
    code = getattr(getattr(module, "graph_module", None), "code", "")
    return "@" in code or "@" in getattr(module, "code", "")


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
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
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
    if architecture is None or architecture not in REGISTRY:
        raise ModelLoadError(
            f"safetensors weights need a zoo architecture; got {architecture!r}. Choose one of: "
            f"{', '.join(REGISTRY)}"
            + (
                f" (nearest: {', '.join(catalog.nearest(architecture, list(REGISTRY)))})"
                if architecture
                else ""
            )
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
