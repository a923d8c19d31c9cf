"""Export a trained model: safetensors weights, a `torch.export` archive, ONNX.

- `save_safetensors`: tensors only; with the studio's metadata (architecture, its kwargs, input
  shape, class count) so `loading.load_model(path, "safetensors")` can rebuild a zoo model.
- `export_pt2`: `torch.export.export` on CPU in eval mode with a dynamic batch dimension,
  saved by `torch.export.save`; loads back with `loading.load_model(path, "pt2")`. Source stack
  traces (local file paths) are stripped from the saved graph.
- The example input traced is the task's (`Task.example_input`; classification: 2 random
  float samples).
- `export_onnx`: the same graph as ONNX (dynamic batch, input "input", output "logits", or the
  module's `output_names` when it has several outputs), through the dynamo exporter, falling
  back to the TorchScript exporter when it fails.
- What a run exports of its student is the task's `Task.export_module(student, input_shape)`
  (the pipeline asks; detection adds the decoding to boxes, scores and classes).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

if TYPE_CHECKING:
    from worker.engine.tasks.base import Task

log = logging.getLogger(__name__)


def _metadata(module: nn.Module) -> dict[str, str]:
    """The studio's description of a zoo model, JSON-encoded per key (safetensors wants str)."""
    meta = {"format": "pt"}
    for key in ("arch", "arch_kwargs", "input_shape", "num_classes"):
        value = getattr(module, key, None)
        if value is not None:
            meta[key] = json.dumps(list(value) if isinstance(value, tuple) else value)
    return meta


def save_safetensors(module: nn.Module, path: Path) -> None:
    """Write the module's state dict as contiguous CPU tensors.

    Tensors that share storage (tied weights) are cloned, since safetensors refuses aliasing; a
    strict `load_state_dict` of the file restores every key.
    """
    seen: set[tuple[int, int]] = set()
    tensors: dict[str, Tensor] = {}
    for key, value in module.state_dict().items():
        if not isinstance(value, Tensor):
            continue
        tensor = value.detach().to("cpu").contiguous()
        storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if storage in seen and tensor.numel() > 0:
            tensor = tensor.clone()
        seen.add((tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()))
        tensors[key] = tensor
    save_file(tensors, str(path), metadata=_metadata(module))


@contextmanager
def _cpu_eval(module: nn.Module) -> Iterator[nn.Module]:
    """The module in eval mode on CPU (a copy when it lives elsewhere); mode restored after."""
    on_cpu = all(t.device.type == "cpu" for t in [*module.parameters(), *module.buffers()])
    model = module if on_cpu else copy.deepcopy(module).cpu()
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _example(input_shape: Sequence[int], task: Task | None) -> Tensor:
    """The task's example batch for tracing (the default task's when none is given)."""
    from worker.engine.tasks import default_task

    return (task or default_task()).example_input(input_shape)


def _batch_dim(
    task: Task | None = None, input_shape: Sequence[int] = ()
) -> tuple[dict[int, torch.export.Dim]]:
    """The input's dynamic dimensions: the batch, and those the task adds (`Task.export_dims`:
    a text task's sequence length)."""
    dims = {0: torch.export.Dim("batch", min=1)}
    if task is not None:
        dims.update(task.export_dims(input_shape))
    return (dims,)


def export_program(
    module: nn.Module, input_shape: Sequence[int], task: Task | None = None
) -> torch.export.ExportedProgram:
    """`torch.export.export` of the module (eval, CPU) with a dynamic batch dimension, traced
    on `task`'s example input."""
    with _cpu_eval(module) as model:
        try:
            program = torch.export.export(
                model, (_example(input_shape, task),), dynamic_shapes=_batch_dim(task, input_shape)
            )
        except Exception as exc:
            raise ValueError(
                f"torch.export could not trace the model for input shape {list(input_shape)} "
                f"with a dynamic batch: {type(exc).__name__}: {exc}"
            ) from exc
    for node in program.graph.nodes:
        node.meta.pop("stack_trace", None)
    _drop_inplace_detach(program)
    return program


def _drop_inplace_detach(program: torch.export.ExportedProgram) -> None:
    """Take out the `aten::detach_` calls torch.export keeps on tensors a model makes during its
    forward (transformers' GPT-2 attention makes a constant this way): in an inference graph
    they change no value, and the studio's loader refuses in-place view operators
    (`operators.py`), so without this a text student's own .pt2 could not be uploaded again.
    Each is replaced by its input."""
    graph = program.graph_module.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.detach_.default:
            continue
        if any(user.op == "output" for user in node.users):
            continue  # the graph's output names it: left as it is
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
        changed = True
    if changed:
        graph.lint()
        program.graph_module.recompile()


def export_pt2(
    module: nn.Module, input_shape: Sequence[int], path: Path, task: Task | None = None
) -> None:
    """Save a `.pt2` archive that `loading.load_model(path, "pt2")` loads back."""
    program = export_program(module, input_shape, task)
    with Path(path).open("wb") as fh:
        torch.export.save(program, fh)


def export_onnx(
    module: nn.Module, input_shape: Sequence[int], path: Path, task: Task | None = None
) -> None:
    """Save a single-file ONNX model with a dynamic batch (input "input"; output "logits", or
    the names in the module's `output_names`)."""
    path = Path(path)
    outputs = list(getattr(module, "output_names", ("logits",)))
    with _cpu_eval(module) as model:
        example = (_example(input_shape, task),)
        try:
            torch.onnx.export(
                model,
                example,
                str(path),
                input_names=["input"],
                output_names=outputs,
                dynamic_shapes=_batch_dim(task, input_shape),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            return
        except Exception as exc:  # the dynamo exporter is young; the TorchScript one still works
            log.warning("dynamo ONNX export failed (%s); using the TorchScript exporter", exc)
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=["input"],
            output_names=outputs,
            dynamic_axes={
                "input": {
                    d: str(dim.__name__) for d, dim in _batch_dim(task, input_shape)[0].items()
                },
                **{name: {0: "batch"} for name in outputs},
            },
            dynamo=False,
            opset_version=17,
        )
