"""Model inspection and feature taps, both built on forward hooks.

`inspect_model` runs one dummy forward and records, for every named submodule, its input and
output shapes, its parameter count and the stage it belongs to; the table is what the
UI shows and what layer pairs are checked against. `FeatureTaps` captures the tensors of chosen
modules during training (the teacher/student features that feature losses compare).

Stages: the task's stage rule (its catalog entry's `stage_rule`, the name of a function in
`STAGE_RULES`) groups the layers into stages; auto-pairing (`core.pairing.suggest_pairs`) reads
them under the same rule. What the inspection says of the model's output beyond its shape (e.g.
`num_classes`) is the task's too (`Task.inspect_output`).

The "spatial" rule (classification's): walking the modules in the order their forward
*finished*, a stage is a maximal run of modules with a 4D output of the same spatial
resolution; its `end` is the last module to finish at that resolution, which is the outermost
one (e.g. `layer2` rather than `layer2.2.relu2`). Global pooling to 1x1 and everything after the
last spatial stage form a final "head" stage with resolution null; 1x1 maps in the middle of the
network (squeeze-excitation) do not break a stage, nor does work at the old resolution inside a
down-sampling block (a pre-activation, a bottleneck's first 1x1: see `_inner`), while a trunk
module that wraps several stages (`features` of MobileNetV3/EfficientNet) does not hide them.

The "blocks" rule (the text tasks'): each transformer block (`encoder.layer.3`,
`model.layers.3`, `transformer.h.3`) is a stage whose `end` is the block itself. A block whose
forward returns a tuple (older transformers' `BertLayer`, `GPT2Block`) is tapped and recorded by
its first tensor, the hidden states [N, tokens, dim].
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from core.pairing import token_blocks, unknown_layer_message
from worker.engine.loading import ModelLoadError

if TYPE_CHECKING:
    from worker.engine.tasks.base import Task

_BATCH = 2


def _first_tensor(value: Any) -> Tensor | None:
    leaves, _ = tree_flatten(value)
    return next((leaf for leaf in leaves if isinstance(leaf, Tensor)), None)


def _shape(value: Any) -> list[int] | None:
    """Shape without the batch dimension of the first tensor in `value`."""
    tensor = _first_tensor(value)
    return None if tensor is None or tensor.dim() == 0 else [int(s) for s in tensor.shape[1:]]


def _param_count(module: nn.Module) -> int:
    """Its parameters; a module standing for part of a graph run elsewhere (an ONNX teacher's
    scopes, `onnx_teacher.OnnxScope`) says how many weights it holds (`param_count`)."""
    own = getattr(module, "param_count", None)
    if isinstance(own, int):
        return own
    return sum(p.numel() for p in module.parameters())


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


class _Recorder:
    """Forward hooks that record every named submodule's first call (shapes, parameters)."""

    def __init__(self, types: dict[str, str]) -> None:
        self.types = types
        self.rows: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []  # call order (pre-hooks)
        self.finished: list[str] = []  # finishing order (forward hooks)
        self._started: set[str] = set()

    def attach(self, module: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        handles = []
        for path, sub in module.named_modules():
            if path:
                handles.append(sub.register_forward_pre_hook(self._pre(path)))
                handles.append(sub.register_forward_hook(self._post(path)))
        return handles

    def _pre(self, path: str) -> Any:
        def hook(_mod: nn.Module, _args: Any) -> None:
            if path not in self._started:
                self._started.add(path)
                self.order.append(path)

        return hook

    def _post(self, path: str) -> Any:
        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            if path in self.rows:
                return  # a module called twice keeps its first call
            self.rows[path] = {
                "path": path,
                "type": self.types.get(path, type(mod).__name__),
                "input_shape": _shape(args[0]) if args else None,
                "output_shape": _shape(output),
                "params": _param_count(mod),
                "stage": None,
            }
            self.finished.append(path)

        return hook


def inspect_model(
    module: nn.Module, input_shape: Sequence[int], task: Task | None = None
) -> dict[str, Any]:
    """One dummy forward (batch 2, eval, no grad) with a hook on every named submodule.

    Returns JSON-able {"input_shape", "output_shape", the task's keys (`task.inspect_output`;
    classification: "num_classes"), "params", "flops",
    "layers": [{"path", "type", "input_shape", "output_shape", "params", "stage"}],
    "stages": [...]} with the stages of `task.stage_rule` (`STAGE_RULES`; "spatial":
    {"index", "resolution", "channels", "layers", "end"}). `task` defaults to the catalog's
    default task. Shapes exclude the batch; layers are in call order; `flops` is per sample as
    counted by `torch.utils.flop_counter` (a multiply-add is 2). Raises ModelLoadError when the
    forward fails on that input shape.
    """
    if task is None:
        from worker.engine.tasks import default_task

        task = default_task()
    shape = [int(s) for s in input_shape]
    recorder = _Recorder(getattr(module, "module_types", None) or {})
    output, flops = _dummy_forward(module, shape, recorder.attach(module))
    graph_cost = getattr(module, "graph_cost", None)  # an ONNX teacher: counted on its graph
    flops = graph_cost()["flops"] if callable(graph_cost) else flops
    rows = recorder.rows
    stages = STAGE_RULES[task.stage_rule]([rows[p] for p in recorder.finished], recorder.order)
    out_shape = _shape(output)
    return {
        "input_shape": shape,
        "output_shape": out_shape,
        **task.inspect_output(out_shape),
        "params": _param_count(module),
        "flops": flops,
        "layers": [rows[p] for p in recorder.order if p in rows],
        "stages": stages,
    }


def _dummy_forward(
    module: nn.Module, shape: list[int], handles: list[torch.utils.hooks.RemovableHandle]
) -> tuple[Any, int]:
    """Run the forward under the flop counter; always removes `handles` and restores the mode."""
    device, dtype = _device_dtype(module)
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            output = module(torch.randn(_BATCH, *shape, device=device, dtype=dtype))
    except Exception as exc:
        built_for = getattr(module, "input_shape", None)
        fix = (
            f"the model expects input_shape {list(built_for)}"
            if built_for
            else "give the input shape the model expects without the batch, e.g. [3, 32, 32]"
        )
        raise ModelLoadError(
            f"the model's forward failed on a dummy input of shape {shape} (batch excluded): "
            f"{type(exc).__name__}: {exc}; {fix}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    return output, int(counter.get_total_flops()) // _BATCH


def _resolution(row: dict[str, Any], key: str = "output_shape") -> tuple[int, int] | None:
    shape = row.get(key)
    return (shape[1], shape[2]) if shape is not None and len(shape) == 3 else None


def _is_global_pool(row: dict[str, Any]) -> bool:
    """A parameter-free module that reduces a spatial map to 1x1 (the classifier's pooling)."""
    source = _resolution(row, "input_shape")
    shrinks = source is not None and source[0] * source[1] > 1
    return _resolution(row) == (1, 1) and row["params"] == 0 and (shrinks or "Pool" in row["type"])


def _head_start(seq: list[dict[str, Any]]) -> int:
    """Index (in finishing order) where the head begins."""
    spatial = [i for i, r in enumerate(seq) if _resolution(r) not in (None, (1, 1))]
    last_big = spatial[-1] if spatial else -1
    maps_out = {r["path"] for r in seq if _resolution(r) is not None}
    for i in range(last_big + 1, len(seq)):
        parts = seq[i]["path"].split(".")
        # a pool inside a module that outputs a map (squeeze-excitation on 1x1 maps) is no head
        inside_map = any(".".join(parts[:k]) in maps_out for k in range(1, len(parts)))
        if _is_global_pool(seq[i]) and not inside_map:
            return i
    maps = [i for i, r in enumerate(seq) if _resolution(r) is not None]
    return (maps[-1] if maps else -1) + 1


def _inner(seq: list[dict[str, Any]]) -> set[str]:
    """Rows computed inside a module whose output has another spatial resolution.

    That is the old-resolution work at the start of a down-sampling block: a pre-activation
    BN-ReLU (wide ResNets), a bottleneck's 1x1 before its strided 3x3 (MobileNet, ShuffleNet,
    ResNet-50), a branch of a two-branch block. Such rows belong to the stage they run in but
    never start or end one, so `layer1` (not `layer2.0.relu1`) ends the first stage.
    """
    res = {row["path"]: _resolution(row) for row in seq}
    ins = {row["path"]: _resolution(row, "input_shape") for row in seq}
    convs: dict[tuple[str, tuple[int, int] | None], int] = {}
    for row in seq:
        if _CONV.fullmatch(row["type"]):
            parts = row["path"].split(".")
            for k in range(1, len(parts)):
                key = (".".join(parts[:k]), res[row["path"]])
                convs[key] = convs.get(key, 0) + 1
    inner = set()
    for path, own in res.items():
        parts = path.split(".")
        ancestors = [".".join(parts[:k]) for k in range(1, len(parts))]
        if own is not None and any(
            _encloses(a, res.get(a), ins.get(a), own, convs) for a in ancestors
        ):
            inner.add(path)
    return inner


_CONV = re.compile(r"(Lazy)?Conv(Transpose)?[123]d")


def _encloses(
    ancestor: str,
    outer: tuple[int, int] | None,
    source: tuple[int, int] | None,
    own: tuple[int, int],
    convs: dict[tuple[str, tuple[int, int] | None], int],
) -> bool:
    """Whether a row at resolution `own` is old-resolution work inside `ancestor`: the ancestor
    ends at another resolution, `own` is its input's, and it holds at most one convolution at
    `own` (a block's expansion or pre-activation). A trunk that wraps whole stages (`features`,
    `trunk`: a stem at a resolution that is neither its input's nor its output's, or two or more
    convolutions at one) does not hide them: they stay stages of their own."""
    if outer is None or outer == own:
        return False
    if own == (1, 1):
        return True
    return own == source and convs.get((ancestor, own), 0) < 2


def _spatial_stages(seq: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """The "spatial" rule: group rows (in finishing order) into resolution stages of 4-D maps
    plus a head; sets row["stage"]."""
    head_start = _head_start(seq)
    inner = _inner(seq)
    big = [i for i, r in enumerate(seq) if _resolution(r) not in (None, (1, 1))]
    last_big = big[-1] if big else -1
    stages: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for i, row in enumerate(seq):
        res = _resolution(row)
        spatial = (
            i < head_start
            and res is not None
            and not (res == (1, 1) and i < last_big)
            and row["path"] not in inner
        )
        if i >= head_start:
            if current is None or current["resolution"] is not None:
                current = _new_stage(stages, None)
        elif (
            spatial and res is not None and (current is None or current["resolution"] != list(res))
        ):
            current = _new_stage(stages, list(res))
        if current is None:
            continue
        current["layers"].append(row["path"])
        row["stage"] = current["index"]
        if i >= head_start or spatial:
            current["end"] = row["path"]
            out = row["output_shape"]
            current["channels"] = out[0] if out else None
    rank = {p: k for k, p in enumerate(order)}
    for stage in stages:
        stage["layers"].sort(key=lambda p: rank.get(p, len(rank)))
    return stages


def _new_stage(stages: list[dict[str, Any]], resolution: list[int] | None) -> dict[str, Any]:
    stage = {
        "index": len(stages),
        "resolution": resolution,
        "channels": None,
        "layers": [],
        "end": None,
    }
    stages.append(stage)
    return stage


def _block_stages(seq: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """The "blocks" rule (text tasks): each transformer block is a stage, in block order, with
    the block and every module inside it as its layers and the block as its `end`; its
    `resolution` is [tokens] and `channels` the hidden size. Embeddings and head stay outside
    (stage None). Blocks are `core.pairing.token_blocks`: numbered children of one module whose
    outputs are token maps [tokens, dim]."""
    rows = {row["path"]: row for row in seq}
    stages: list[dict[str, Any]] = []
    for index, (path, tokens) in enumerate(token_blocks(seq)):
        layers = [p for p in order if p == path or p.startswith(f"{path}.")]
        for p in layers:
            if p in rows:
                rows[p]["stage"] = index
        shape = rows[path]["output_shape"]
        stages.append(
            {
                "index": index,
                "resolution": [tokens],
                "channels": shape[-1],
                "layers": layers,
                "end": path,
            }
        )
    return stages


StageRule = Callable[[list[dict[str, Any]], list[str]], list[dict[str, Any]]]
# a task's `stage_rule` names one: (rows in finishing order, paths in call order) -> stages,
# each row's "stage" set
STAGE_RULES: dict[str, StageRule] = {"spatial": _spatial_stages, "blocks": _block_stages}


class FeatureTaps:
    """Capture module outputs (or first inputs) during forward passes.

        with FeatureTaps(teacher, [("layer2", "output"), ("layer3", "output")], detach=True) as t:
            logits = teacher(x)
            f2, f3 = t.features

    `features` is reset at the start of every forward of the root module and holds one tensor per
    tap, in the order given; a module called more than once keeps its first call's tensor.
    """

    def __init__(
        self,
        module: nn.Module,
        taps: Sequence[tuple[str, Literal["output", "input"]]],
        side: str = "teacher",
        detach: bool = False,
    ) -> None:
        self.module = module
        self.taps = [(path, kind) for path, kind in taps]
        self.side = side
        self.detach = detach
        self._values: list[Tensor | None] = [None] * len(self.taps)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        modules = dict(module.named_modules())
        paths = [p for p in modules if p]
        for path, kind in self.taps:
            if path not in modules or not path:
                raise ValueError(unknown_layer_message(path, paths, side))
            if kind not in ("output", "input"):
                raise ValueError(f"tap for '{path}' must be 'output' or 'input', got {kind!r}")
        self._modules = [modules[path] for path, _ in self.taps]

    @property
    def features(self) -> list[Tensor]:
        missing = [p for (p, _), v in zip(self.taps, self._values, strict=True) if v is None]
        if missing:
            raise RuntimeError(
                f"{self.side} layers {missing} did not run in the last forward; tap modules "
                "that the forward actually calls"
            )
        return [v for v in self._values if v is not None]

    @property
    def tapped_modules(self) -> list[nn.Module]:
        """The tapped modules, in the order of `taps`."""
        return list(self._modules)

    @property
    def complete(self) -> bool:
        """Whether every tap has captured its tensor in the current forward."""
        return all(v is not None for v in self._values)

    def __enter__(self) -> FeatureTaps:
        self._handles.append(self.module.register_forward_pre_hook(self._reset))
        for i, (sub, (_, kind)) in enumerate(zip(self._modules, self.taps, strict=True)):
            self._handles.append(sub.register_forward_hook(self._hook(i, kind)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _reset(self, _mod: nn.Module, _args: Any) -> None:
        self._values = [None] * len(self.taps)

    def _hook(self, index: int, kind: str) -> Any:
        def hook(_mod: nn.Module, args: Any, output: Any) -> None:
            if self._values[index] is not None:
                return
            value = _first_tensor(args[0] if kind == "input" and args else output)
            if value is not None and self.detach:
                value = value.detach()
            self._values[index] = value

        return hook
