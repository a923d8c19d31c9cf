"""Teachers from Hugging Face checkpoints (format "hf"): a checked `.zip` of a checkpoint folder,
built with `transformers` from its `config.json` and filled from safetensors.

Safety (no code from the upload runs, no pickle is read):

- the zip (`unpack_checkpoint`): at most `MAX_MEMBERS` entries, no absolute paths, `..`,
  backslashes or symbolic links, at most `MAX_UNPACKED_BYTES` unpacked and no member packed more
  than `MAX_RATIO` times (zip bombs), each member read back no longer than its header says;
  pickled checkpoints (`*.bin`, `*.pt`, `*.pkl`, `*.ckpt`, ...) are refused with how to convert
  them to safetensors, Python files (remote code) refused, and only data files kept (`.json`,
  `.safetensors`, `.txt`, `.md`, `.model`, `.jinja`, `.gitattributes`); the folder holding
  `config.json` (the zip's top or one folder down) is the checkpoint;
- the config (`read_config`): JSON, no `auto_map` / `trust_remote_code` (code that would come
  with the checkpoint), a `model_type` of `core.hf.SUPPORTED_MODEL_TYPES`, and `architectures`
  naming a class transformers maps to that model type (`model_classes`); the model is built as
  `cls(AutoConfig.for_model(model_type, **config))`, never through `from_pretrained`;
- the weights (`load_weights`): `model.safetensors`, or the shards `model.safetensors.index.json`
  names (plain file names in the folder), each header checked against its file
  (`loading.check_safetensors_header`), read by `safetensors` and compared with the model's own
  tensors: missing, unexpected and mis-shaped tensors are refused, naming them;
- the tokenizer (`tokenizer.json`, read by `tokenizers.Tokenizer.from_file`: JSON, no code) must
  not hold more tokens than the model's `vocab_size` embeddings.

`inspect_hf` runs one forward on a few token ids and records every module (`taps._Recorder`),
grouped into the embeddings, each transformer block (its attention and MLP) and the head, with
the model type, parameters, hidden size, layers, heads, positions and vocabulary sizes; its
`stages` are the blocks (`taps.STAGE_RULES["blocks"]`, the text tasks' rule).
"""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from core.hf import CONVERT_HINT, PICKLE_SUFFIXES, SUPPORTED_MODEL_TYPES
from worker.engine.loading import (
    LoadedModel,
    ModelLoadError,
    UnsafeModelError,
    check_safetensors_header,
)

MAX_MEMBERS = 512
MAX_UNPACKED_BYTES = 64 << 30
MAX_RATIO = 1000  # a member's unpacked size over its packed size (zip bombs)
MAX_CONFIG_BYTES = 1 << 20
MAX_INDEX_BYTES = 32 << 20
MAX_TOKENIZER_BYTES = 256 << 20
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"
DATA_SUFFIXES = frozenset({".json", ".safetensors", ".txt", ".md", ".model", ".jinja"})
DATA_NAMES = frozenset({".gitattributes"})
CODE_SUFFIXES = frozenset({".py", ".pyc", ".so", ".dll", ".dylib", ".sh"})
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")
_MAPPINGS = (  # transformers' auto mappings whose classes may be built (no vision, no audio)
    "MODEL_MAPPING_NAMES",
    "MODEL_FOR_PRETRAINING_MAPPING_NAMES",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
)
_MLP_NAMES = ("mlp", "ffn", "intermediate", "output", "feed_forward")
DUMMY_TOKENS = 8


# --------------------------------------------------------------------------------------------
# the zip
# --------------------------------------------------------------------------------------------


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip entry's name or kind is refused (traversal, absolute path, link), or None."""
    name = info.filename
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"entry '{name}' has an absolute or Windows path; zip relative paths only"
    if ".." in PurePosixPath(name).parts:
        return f"entry '{name}' contains '..'; zip the folder without parent references"
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"entry '{name}' is a symbolic link; zip plain files only"
    if any(ord(c) < 32 for c in name):
        return f"entry {name!r} has control characters in its name"
    return None


def _check_kind(name: str, where: str) -> bool:
    """Whether the member is data to keep; refuses pickles and code, naming the member."""
    path = PurePosixPath(name)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeModelError(
            f"{where}: '{name}' is a pickled checkpoint, which could run code when loaded, so "
            f"the studio never reads one; {CONVERT_HINT}"
        )
    if suffix in CODE_SUFFIXES:
        raise UnsafeModelError(
            f"{where}: '{name}' is code; the studio never runs code that comes with a "
            "checkpoint (remote code). Upload a checkpoint of an architecture transformers has "
            f"built in ({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return suffix in DATA_SUFFIXES or path.name in DATA_NAMES


def _root(names: list[str], where: str) -> str:
    """The folder holding config.json: the zip's top, or one folder down ('' or 'name/')."""
    roots = sorted(
        n[: -len(CONFIG)]
        for n in names
        if PurePosixPath(n).name == CONFIG and len(PurePosixPath(n).parts) <= 2
    )
    if not roots:
        raise ModelLoadError(
            f"{where} holds no config.json at its top (or one folder down): zip a Hugging Face "
            "checkpoint folder with config.json, model.safetensors (or its shards and "
            "model.safetensors.index.json) and tokenizer.json"
        )
    return roots[0]


def unpack_checkpoint(path: Path, dest: Path, weights: bool = True) -> Path:
    """Check the zip (module doc) and unpack its data files into `dest`; the checkpoint folder.
    `weights` False leaves the safetensors files packed (`load_hf_shell`)."""
    where = path.name
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(
            f"{where} is not a readable zip ({exc}); zip the checkpoint folder again"
        ) from exc
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > MAX_MEMBERS:
            raise ModelLoadError(
                f"{where}: {len(infos)} entries, more than the limit of {MAX_MEMBERS}; zip only "
                "the checkpoint's config, weights and tokenizer files"
            )
        total = sum(i.file_size for i in infos)
        if total > MAX_UNPACKED_BYTES:
            raise ModelLoadError(
                f"{where}: unpacks to {total / (1 << 30):.1f} GiB, more than the limit of "
                f"{MAX_UNPACKED_BYTES >> 30} GiB (a zip bomb or too large a checkpoint)"
            )
        kept = []
        for info in infos:
            problem = _member_problem(info)
            if problem is not None:
                raise UnsafeModelError(f"{where}: {problem}")
            if info.file_size > 1 << 20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise UnsafeModelError(
                    f"{where}: entry '{info.filename}' unpacks {info.file_size} bytes from "
                    f"{info.compress_size} (over {MAX_RATIO}x: a zip bomb); refused"
                )
            if _check_kind(info.filename, where):
                kept.append(info)
        root = _root([i.filename for i in kept], where)
        if not weights:
            kept = [i for i in kept if not i.filename.endswith(".safetensors")]
        folder = dest / "checkpoint"
        folder.mkdir(parents=True, exist_ok=True)
        for info in kept:
            if info.filename.startswith(root):
                _extract(zf, info, folder / info.filename[len(root) :], where)
    return folder


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, where: str) -> None:
    """Copy one member, never more bytes than its header declares."""
    target.parent.mkdir(parents=True, exist_ok=True)
    left = info.file_size
    try:
        with zf.open(info) as src, target.open("wb") as out:
            while chunk := src.read(min(1 << 20, left + 1)):
                left -= len(chunk)
                if left < 0:
                    raise UnsafeModelError(
                        f"{where}: entry '{info.filename}' unpacks to more than the "
                        f"{info.file_size} bytes its header declares; refused"
                    )
                out.write(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise ModelLoadError(
            f"{where}: entry '{info.filename}' could not be unpacked ({exc}); zip it again"
        ) from exc


# --------------------------------------------------------------------------------------------
# config, weights, tokenizer
# --------------------------------------------------------------------------------------------


def _read_json(path: Path, limit: int) -> Any:
    if path.stat().st_size > limit:
        raise ModelLoadError(f"{path.name} is larger than {limit >> 20} MiB; not a config file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} is not valid JSON ({exc})") from exc


def model_classes(model_type: str) -> list[str]:
    """The model classes transformers maps to `model_type` (base, LM, classification heads)."""
    from transformers.models.auto import configuration_auto, modeling_auto

    config_class = configuration_auto.CONFIG_MAPPING_NAMES.get(model_type, "")
    family = config_class.removesuffix("Config")
    names: set[str] = set()
    for mapping in _MAPPINGS:
        value = getattr(modeling_auto, mapping, {}).get(model_type)
        for name in [value] if isinstance(value, str) else list(value or ()):
            if family and name.startswith(family):
                names.add(name)
    return sorted(names)


def read_config(folder: Path) -> dict[str, Any]:
    """config.json, checked: no remote code, a supported model type, a known architecture."""
    config = _read_json(folder / CONFIG, MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise ModelLoadError("config.json is not a JSON object")
    for key in REMOTE_CODE_KEYS:
        if key in config:
            raise UnsafeModelError(
                f"config.json has '{key}': the checkpoint needs its own Python code (remote "
                "code), which the studio never runs. Upload a checkpoint of an architecture "
                f"transformers has built in ({', '.join(SUPPORTED_MODEL_TYPES)})"
            )
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"config.json: model_type {model_type!r} is not supported; the studio loads "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    known = model_classes(str(model_type))
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise ModelLoadError("config.json: 'architectures' must be a list of class names")
    unknown = [a for a in architectures if a not in known]
    if unknown:
        raise ModelLoadError(
            f"config.json: architecture {unknown[0]!r} is not a {model_type} model transformers "
            f"builds; use one of {', '.join(known)}"
        )
    return config


def build_model(config: dict[str, Any]) -> nn.Module:
    """The architecture config.json names (the base model when it names none), fresh weights."""
    import transformers

    model_type = str(config["model_type"])
    name = (config.get("architectures") or [None])[0]
    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **kwargs)
        if name is not None:
            hf_config.architectures = [name]
        hf_config._attn_implementation = "eager"  # attention maps reach forward hooks
        if name:
            module = getattr(transformers, name)(hf_config)
        else:
            module = transformers.AutoModel.from_config(hf_config)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:
        raise ModelLoadError(
            f"config.json: transformers cannot build {name or model_type} from it ({exc})"
        ) from exc
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"config.json: {name or model_type} is not a torch model")
    return module


def weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards model.safetensors.index.json names, headers checked."""
    if (folder / WEIGHTS).is_file():
        files = [folder / WEIGHTS]
    elif (folder / INDEX).is_file():
        index = _read_json(folder / INDEX, MAX_INDEX_BYTES)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{INDEX} has no 'weight_map' of tensor names to shard files")
        names = sorted({str(v) for v in weight_map.values()})
        bad = [n for n in names if PurePosixPath(n).name != n or not n.endswith(".safetensors")]
        if bad:
            raise UnsafeModelError(
                f"{INDEX} names '{bad[0]}': shards must be .safetensors files beside the index"
            )
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ModelLoadError(f"{INDEX} names shards not in the zip: {', '.join(missing[:3])}")
        files = [folder / n for n in names]
    else:
        raise ModelLoadError(
            f"the checkpoint has no weights: give {WEIGHTS}, or the shards with {INDEX} "
            f"(a *.bin checkpoint: {CONVERT_HINT})"
        )
    for file in files:
        check_safetensors_header(file)
    return files


def load_weights(module: nn.Module, files: list[Path], name: str) -> None:
    """Fill `module` from the safetensors `files`; refuses weights that do not fit it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{file.name}: safetensors could not read it ({exc})") from exc
    own = module.state_dict()
    prefix = str(getattr(module, "base_model_prefix", "") or "")
    if prefix and not (state.keys() & own.keys()):  # a base model's file for a model with a head
        state = {f"{prefix}.{k}": v for k, v in state.items()}
    unexpected = [k for k in state if k not in own and not k.endswith("position_ids")]
    wrong = [k for k, v in own.items() if k in state and state[k].shape != v.shape]
    shapes = [f"{k}: file {list(state[k].shape)} vs config {list(own[k].shape)}" for k in wrong]
    loaded = {k: v for k, v in state.items() if k in own and k not in wrong}
    if not shapes:
        module.load_state_dict(loaded, strict=False)
        tie = getattr(module, "tie_weights", None)
        if callable(tie):
            tie()
    filled = {p.data_ptr() for k, p in module.state_dict().items() if k in loaded}
    missing = [
        k
        for k, v in module.state_dict().items()
        if k not in state and v.data_ptr() not in filled and not k.endswith("position_ids")
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    raise ModelLoadError(
        f"the safetensors weights do not fit the {name} config.json describes: "
        f"{', '.join(parts)}. Zip the config.json saved with these weights"
    )


def tokenizer_vocab(folder: Path, vocab_size: int | None) -> int | None:
    """The tokenizer's vocabulary (added tokens included), None without tokenizer.json;
    refused when it holds more tokens than the model has embeddings."""
    path = folder / TOKENIZER
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise ModelLoadError(f"{TOKENIZER} is larger than {MAX_TOKENIZER_BYTES >> 20} MiB")
    from tokenizers import Tokenizer

    try:
        size = int(Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True))
    except Exception as exc:  # tokenizers raises its own exception type
        raise ModelLoadError(f"{TOKENIZER} could not be read by tokenizers ({exc})") from exc
    if vocab_size is not None and size > vocab_size:
        raise ModelLoadError(
            f"{TOKENIZER} has {size} tokens but the model's vocab_size is {vocab_size}: token "
            "ids past the embedding would fail. Zip the tokenizer saved with this model"
        )
    return size


# --------------------------------------------------------------------------------------------
# loading and inspection
# --------------------------------------------------------------------------------------------


@dataclass
class HfCheckpoint:
    """A loaded checkpoint: the model (eval, frozen), its config and tokenizer facts."""

    module: nn.Module
    config: dict[str, Any]
    architecture: str
    tokenizer_vocab_size: int | None
    tokenizer: Any = None  # tokenizers.Tokenizer of tokenizer.json, None without one

    def fact(self, *keys: str) -> int | None:
        """The first of `keys` config.json gives (names differ between model types)."""
        for key in keys:
            value = self.config.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    @property
    def max_positions(self) -> int | None:
        return self.fact("max_position_embeddings", "n_positions", "n_ctx")

    @property
    def vocab_size(self) -> int | None:
        return self.fact("vocab_size")


def load_checkpoint(path: Path) -> HfCheckpoint:
    """Check and load a checkpoint zip (module doc)."""
    with tempfile.TemporaryDirectory(prefix="ds-hf-") as tmp:
        folder = unpack_checkpoint(Path(path), Path(tmp))
        config = read_config(folder)
        files = weight_files(folder)
        vocab = config.get("vocab_size")
        tokens = tokenizer_vocab(folder, vocab if isinstance(vocab, int) else None)
        module = build_model(config)
        name = type(module).__name__
        load_weights(module, files, name)
        tokenizer = read_tokenizer(folder) if tokens is not None else None
        shutil.rmtree(folder, ignore_errors=True)
    module.eval()
    module.requires_grad_(False)
    return HfCheckpoint(module, config, name, tokens, tokenizer)


def read_tokenizer(folder: Path) -> Any:
    """tokenizer.json as a `tokenizers.Tokenizer` (checked by `tokenizer_vocab` first)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / TOKENIZER))


def load_hf(path: Path) -> LoadedModel:
    """A checkpoint as a `LoadedModel`: inputs are token ids up to the model's positions."""
    return _loaded(load_checkpoint(path))


def _loaded(ckpt: HfCheckpoint) -> LoadedModel:
    labels = ckpt.config.get("id2label")
    heads = "ForSequenceClassification" in ckpt.architecture and isinstance(labels, dict)
    classes = len(labels) if heads and isinstance(labels, dict) else None
    shape = (ckpt.max_positions or DUMMY_TOKENS,)
    return LoadedModel(ckpt.module, shape, classes, "hf", ckpt.tokenizer, ckpt.config)


def load_hf_shell(path: Path) -> LoadedModel:
    """The checkpoint's model without its weights: built from config.json on the `meta`
    device (no memory, no weights read), with its tokenizer. A run that replays everything it
    needs of the teacher (`worker.engine.teacher_cache`: the training batches' logits and the
    teacher's evaluation) reads its structure, positions, vocabulary and tokenizer only; the
    zip is checked as for `load_hf`, its weights left packed."""
    with tempfile.TemporaryDirectory(prefix="ds-hf-") as tmp:
        folder = unpack_checkpoint(Path(path), Path(tmp), weights=False)
        config = read_config(folder)
        vocab = config.get("vocab_size")
        tokens = tokenizer_vocab(folder, vocab if isinstance(vocab, int) else None)
        with torch.device("meta"):
            module = build_model(config)
        tokenizer = read_tokenizer(folder) if tokens is not None else None
    module.eval()
    module.requires_grad_(False)
    return _loaded(HfCheckpoint(module, config, type(module).__name__, tokens, tokenizer))


def _dummy_ids(ckpt: HfCheckpoint) -> torch.Tensor:
    length = min(DUMMY_TOKENS, ckpt.max_positions or DUMMY_TOKENS)
    vocab = min(v for v in (ckpt.vocab_size, ckpt.tokenizer_vocab_size, 1000) if v)
    return (torch.arange(2 * length).reshape(2, length) * 7 + 3) % vocab


def _blocks_list(module: nn.Module, layers: int | None) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList of transformer blocks: `layers` long, its items holding an attention."""
    for path, sub in module.named_modules():
        if isinstance(sub, nn.ModuleList) and len(sub) > 0 and len(sub) == layers:
            names = [n for n, _ in sub[0].named_children()]
            if any("att" in n for n in names):
                return path, sub
    return None


def _part(child: str) -> str:
    if "att" in child:
        return "attention"
    if child in _MLP_NAMES:
        return "mlp"
    return "norm" if "norm" in child.lower() or child.startswith("ln") else "other"


def group_layers(
    rows: list[dict[str, Any]], module: nn.Module, layers: int | None
) -> dict[str, Any]:
    """Tag each layer row with its block and part; the blocks (attention, MLP), embeddings, head."""
    found = _blocks_list(module, layers)
    if found is None:
        return {"blocks": [], "embeddings": [], "head": []}
    base, blocks = found
    summary: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        path = f"{base}.{i}"
        parts: dict[str, list[str]] = {}
        for child, _ in block.named_children():
            parts.setdefault(_part(child), []).append(f"{path}.{child}")
        summary.append(
            {
                "index": i,
                "path": path,
                "attention": parts.get("attention", []),
                "mlp": parts.get("mlp", []),
                "params": sum(p.numel() for p in block.parameters()),
            }
        )
    order = [r["path"] for r in rows]
    first = next((j for j, p in enumerate(order) if p.startswith(f"{base}.")), len(order))
    last = max((j for j, p in enumerate(order) if p.startswith(f"{base}.")), default=first)
    for j, row in enumerate(rows):
        p = row["path"]
        if p == base or p.startswith(f"{base}."):
            rest = p[len(base) + 1 :].split(".") if p != base else []
            row["block"] = int(rest[0]) if rest and rest[0].isdigit() else None
            row["part"] = _part(rest[1]) if len(rest) > 1 else "block"
        elif base.startswith(f"{p}."):  # a container of the blocks (`encoder`, `model`)
            row["block"], row["part"] = None, "body"
        else:
            row["block"] = None
            row["part"] = "embeddings" if j < first else "head" if j > last else "other"
    return {
        "blocks": summary,
        "embeddings": _outermost(rows, "embeddings"),
        "head": _outermost(rows, "head"),
    }


def _outermost(rows: list[dict[str, Any]], part: str) -> list[str]:
    """The paths of `part` not inside another path of it (`embeddings`, not its children)."""
    paths = [r["path"] for r in rows if r.get("part") == part]
    return [p for p in paths if not any(p.startswith(f"{q}.") for q in paths)]


def inspect_hf(path: Path) -> dict[str, Any]:
    """Load the checkpoint and run one forward on token ids: the inspection (module doc)."""
    from worker.engine.taps import STAGE_RULES, _Recorder

    ckpt = load_checkpoint(path)
    ids = _dummy_ids(ckpt)
    recorder = _Recorder({})
    handles = recorder.attach(ckpt.module)
    try:
        with torch.no_grad():
            output = ckpt.module(input_ids=ids)
    except Exception as exc:  # the model's own forward: any error is the checkpoint's
        raise ModelLoadError(
            f"the {ckpt.architecture} forward failed on token ids of shape {list(ids.shape)} "
            f"({exc})"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    rows = [recorder.rows[p] for p in recorder.order if p in recorder.rows]
    layers = ckpt.fact("num_hidden_layers", "n_layer", "n_layers")
    groups = group_layers(rows, ckpt.module, layers)
    finished = [recorder.rows[p] for p in recorder.finished]
    stages = STAGE_RULES["blocks"](finished, recorder.order)  # its blocks, as text tasks pair them
    first = output[0] if isinstance(output, tuple) else next(iter(output.values()))
    return {
        "input_shape": [int(ids.shape[1])],
        "input_kind": "token_ids",
        "output_shape": [int(s) for s in first.shape[1:]],
        "model_type": ckpt.config["model_type"],
        "architecture": ckpt.architecture,
        "params": sum(p.numel() for p in ckpt.module.parameters()),
        "hidden_size": ckpt.fact("hidden_size", "n_embd", "dim"),
        "num_layers": layers,
        "num_heads": ckpt.fact("num_attention_heads", "n_head", "n_heads"),
        "max_positions": ckpt.max_positions,
        "vocab_size": ckpt.vocab_size,
        "tokenizer_vocab_size": ckpt.tokenizer_vocab_size,
        "layers": rows,
        "stages": stages,
        **groups,
    }
