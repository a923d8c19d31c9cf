"""A whole distillation run, from files to artifacts; the Celery task and the CLI both call it.

    teacher file + dataset file + RunConfig
      -> load (safely) -> check they fit -> split -> build the student (zoo, derived
         from the teacher, the teacher's own architecture, or a model to start from) -> train
      -> evaluate on the held-out split
      -> out_dir/{student.safetensors, student.pt2, student.onnx, run.yaml, evaluation.json}
         (with `training.qat`: the student trains through int8 fake quantization, and
         student_int8.onnx, its int8 model in ONNX QDQ form, is written too: `quantize.py`)
         (a scheme that trains several students, e.g. `online`: also peer{k}_student.* for
         each student k > 0, and evaluation.json lists every student's under `peers`; `self`'s
         born-again generations: gen{k}_student.* for each earlier one, under `generations`)

student.onnx is written when `training.export_onnx` is on (the default); if the ONNX exporter
fails on a model that trained fine, the run still succeeds, without that artifact, and
evaluation.json says why under "onnx_export_error" (the .pt2 export: "pt2_export_error"). A task
may write more exports of its student (`Task.extra_exports`; a text task: student_hf.zip, the
Hugging Face checkpoint), their failure said under "export_error".

Every trained model has its evaluation in evaluation.json (the run's `summary`), where the pages,
the API and the CLI find them (`core.trained_models`): the run's student at the top level
(`student_top1`, `student_params`, `student_size_bytes`, `student_flops`,
`student_cpu_latency_ms`, ...), `peers` and `generations` as above, `quantized` for the int8
student. A future scheme that trains or exports other models lists every one of them, its
student included, under `models`: [{label, <the same evaluation keys>, artifacts: {kind: file},
val_prefix (optional: where its validation series are logged, e.g. `val/p1/`)}]; nothing else is
needed for them to get a row, a curve and a point on Compare.

What the data is, how it is read, checked against the teacher, split, batched, validated and
evaluated is the run's task (`config.task`, built from the catalog: `tasks/`); how the models
train is its scheme (`config.scheme`: `schemes/`). This module only orders the steps.

Inputs are raw: the teacher and the student both receive the dataset's tensors as the task
loads them, so the exported student takes the same inputs as the teacher.

`make_demo` writes the default task's small, real example (for classification, a ResNet teacher
on scikit-learn's bundled 8x8 digits) for the quick start, the docs and the tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.catalog.losses import LOSSES
from core.config import RunConfig
from core.hf import text_task_refusal
from core.teacher_cache import cache_enabled, cache_key, cache_problem, per_epoch
from worker.engine import distributed
from worker.engine.augment import Augmenter
from worker.engine.evaluate import evaluate
from worker.engine.export import export_onnx, export_pt2, save_safetensors
from worker.engine.loading import LoadedModel, ModelFormat, load_model
from worker.engine.quantize import export_int8, qat_student
from worker.engine.tasks import IncompatibleDataError as IncompatibleDataError  # re-exported
from worker.engine.tasks import Task, build_task, default_task
from worker.engine.teacher_cache import TeacherCache
from worker.engine.trainer import Callbacks, Cancelled, resolve_device, train

log = logging.getLogger(__name__)

ARTIFACTS = {
    "student_safetensors": "student.safetensors",
    "student_pt2": "student.pt2",
    "student_onnx": "student.onnx",
    "config": "run.yaml",
    "evaluation": "evaluation.json",
}
PREDICTIONS = "predictions.json"  # a task's drawn validation predictions (`samples`), if any
CACHE_FILE = "teacher_cache.npz"  # the teacher-output cache after the run (`teacher_cache.py`)
MODEL_SUFFIXES: dict[str, ModelFormat] = {
    ".pt2": "pt2",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".zip": "hf",
}


def model_format(path: Path, declared: ModelFormat | None) -> ModelFormat:
    """The declared model format, else the one the file extension names."""
    if declared:
        return declared
    fmt = MODEL_SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of model file '{Path(path).name}'; name it .pt2, "
            ".safetensors, .onnx or .zip (a Hugging Face checkpoint), or set teacher.format"
        )
    return fmt


def teacher_architecture(
    config: RunConfig, teacher: LoadedModel
) -> tuple[str | None, dict[str, Any]]:
    """The teacher's zoo architecture and parameters; (None, {}) for a .pt2 graph.

    A safetensors teacher is built from the zoo, so its module knows both; the config's
    `teacher.architecture` / `kwargs` are the fallback.
    """
    arch = getattr(teacher.module, "arch", None) or config.teacher.architecture
    kwargs = getattr(teacher.module, "arch_kwargs", None)
    if kwargs is None:
        kwargs = config.teacher.kwargs
    return arch, dict(kwargs or {})


def build_run_student(
    config: RunConfig,
    teacher: LoadedModel,
    data: Any,
    student_path: Path | None = None,
    task: Task | None = None,
) -> nn.Module | None:
    """The student this run trains, or None to let the trainer build the zoo student.

    The task may build a student itself from its teacher (`Task.build_student`: a text task's
    teacher with fewer layers), for any source but "model";
    - source "model": the model file to start from (loaded safely, trainable): `student.model.path`,
      or `student_path` where the caller fetched the file (the studio's worker, for a model id);
    - source "derived" / "teacher": built from the teacher's zoo architecture (fresh weights,
      seeded with the run's seed); ValueError when the teacher is a .pt2 graph without one.
    """
    spec = config.student
    task = task or build_task(config.task, **config.task_params)
    if spec.source == "zoo":  # a task's own student, else None: the trainer builds it
        torch.manual_seed(config.seed)
        return task.build_student(spec.architecture, dict(spec.kwargs), teacher, data)
    if spec.source == "model":
        ref = spec.model
        path = student_path or (Path(ref.path) if ref is not None and ref.path else None)
        if ref is None or path is None:
            raise ValueError("student.model must name a file (path) by the time the engine runs")
        fmt = model_format(path, ref.format)
        if fmt == "hf" and (
            refusal := text_task_refusal("the student model", config.task, "student")
        ):
            raise ValueError(refusal)
        loaded = load_model(path, fmt, ref.architecture, ref.kwargs)
        loaded.module.requires_grad_(True)
        return task.adapt_model(loaded.module, loaded)
    from worker.engine.students import build_student

    arch, kwargs = spec.zoo_architecture(*teacher_architecture(config, teacher))
    torch.manual_seed(config.seed)
    built = task.build_student(arch, kwargs, teacher, data)
    if built is not None:
        return built
    return build_student(arch, task.input_shape(data), task.output_size(data), **kwargs)


def _student_description(
    student: nn.Module, config: RunConfig, task: Task, data: Any
) -> dict[str, Any]:
    """The student's zoo architecture and the parameters that rebuild it; its output size is
    stored as `num_classes` (the zoo's constructor argument)."""
    kwargs = dict(getattr(student, "arch_kwargs", config.student.kwargs))
    return {
        "student_architecture": getattr(student, "arch", config.student.architecture),
        "student_kwargs": {
            **kwargs,
            "input_shape": list(task.input_shape(data)),
            "num_classes": task.output_size(data),
        },
    }


def student_artifacts(k: int, prefix: str = "peer") -> dict[str, str]:
    """The weight artifacts of trained student k: peer 0 (the configured student) under the
    usual names, student k > 0 (a scheme's other students, e.g. `online`'s peers) under
    `peer{k}_student.*` (artifact names are flat); `prefix` "gen": born-again generation k's
    `gen{k}_student.*`."""
    names = {key: ARTIFACTS[key] for key in ("student_safetensors", "student_pt2", "student_onnx")}
    if k == 0:
        return names
    return {f"{prefix}{k}_{key}": f"{prefix}{k}_{name}" for key, name in names.items()}


def _write_weights(
    out_dir: Path,
    student: nn.Module,
    input_shape: tuple[int, ...],
    task: Task,
    k: int = 0,
    prefix: str = "peer",
) -> str | None:
    """Student k's safetensors and .pt2; why the .pt2 export failed (None when written): the
    student is good without it, as without ONNX (`pt2_export_error` in evaluation.json)."""
    names = student_artifacts(k, prefix)
    save_safetensors(student, out_dir / names[_kind(k, "student_safetensors", prefix)])
    exported = task.export_module(student, input_shape)  # detection: with its box decoding
    pt2_path = out_dir / names[_kind(k, "student_pt2", prefix)]
    pt2_path.unlink(missing_ok=True)  # a resumed run must not keep an older export
    try:
        export_pt2(exported, input_shape, pt2_path, task)
    except Exception as exc:  # noqa: BLE001 - e.g. a transformer torch.export cannot trace
        log.warning(".pt2 export failed: %s", exc)
        pt2_path.unlink(missing_ok=True)
        return f"{type(exc).__name__}: {exc}"[:2000]
    return None


def _kind(k: int, kind: str, prefix: str = "peer") -> str:
    return kind if k == 0 else f"{prefix}{k}_{kind}"


def _write_onnx(
    out_dir: Path,
    student: nn.Module,
    config: RunConfig,
    task: Task,
    input_shape: tuple[int, ...],
    evaluation: dict[str, Any],
    k: int = 0,
    prefix: str = "peer",
) -> dict[str, str]:
    """Student k's weight artifacts that exist, after writing its ONNX export (when asked;
    a failure is said in `evaluation["onnx_export_error"]`)."""
    written = student_artifacts(k, prefix)
    onnx_kind = _kind(k, "student_onnx", prefix)
    onnx_path = out_dir / written[onnx_kind]
    onnx_path.unlink(missing_ok=True)  # a resumed run must not keep an older export
    if config.training.export_onnx:
        try:
            export_onnx(task.export_module(student, input_shape), input_shape, onnx_path, task)
        except Exception as exc:  # noqa: BLE001 - the student is good; say why ONNX is missing
            log.warning("ONNX export failed: %s", exc)
            evaluation["onnx_export_error"] = f"{type(exc).__name__}: {exc}"[:2000]
            onnx_path.unlink(missing_ok=True)
    if not onnx_path.exists():
        written.pop(onnx_kind)
    pt2_kind = _kind(k, "student_pt2", prefix)
    if not (out_dir / written[pt2_kind]).exists():  # its export failed (`_write_weights`)
        written.pop(pt2_kind)
    return written


def _write_rest(
    out_dir: Path,
    student: nn.Module,
    config: RunConfig,
    task: Task,
    input_shape: tuple[int, ...],
    evaluation: dict[str, Any],
    peers: list[tuple[dict[str, Any], dict[str, str]]] | None = None,
    generations: list[tuple[dict[str, Any], dict[str, str]]] | None = None,
) -> dict[str, str]:
    """ONNX (when asked), run.yaml and evaluation.json; returns every artifact written.

    `peers`: the other students' (evaluation, artifacts), k = 1, 2, ...; evaluation.json then
    lists every student's under `peers` (peer 0's is also the top level, as for one student).
    `generations`: born-again generations 1..N-1's; evaluation.json lists all N under
    `generations` (the last, the run's student, also at the top level).
    """
    weights = _write_onnx(out_dir, student, config, task, input_shape, evaluation)
    written = {**weights, **{k: v for k, v in ARTIFACTS.items() if not k.startswith("student_")}}
    samples = evaluation.pop("samples", None)  # images, kept out of the run's summary
    if samples is not None:
        (out_dir / PREDICTIONS).write_text(json.dumps(samples))
        written["predictions"] = PREDICTIONS
    if peers:
        evaluation["peers"] = [
            {"peer": 0, "artifacts": weights, **evaluation},
            *({"peer": k, "artifacts": a, **e} for k, (e, a) in enumerate(peers, 1)),
        ]
        for _, artifacts in peers:
            written.update(artifacts)
    if generations:
        evaluation["generations"] = [
            *({"generation": k, "artifacts": a, **e} for k, (e, a) in enumerate(generations, 1)),
            {"generation": len(generations) + 1, "artifacts": weights, **evaluation},
        ]
        for _, artifacts in generations:
            written.update(artifacts)
    (out_dir / ARTIFACTS["config"]).write_text(config.to_yaml())
    (out_dir / ARTIFACTS["evaluation"]).write_text(json.dumps(evaluation, indent=2))
    return written


def _peer(
    k: int,
    peer: nn.Module,
    teacher: LoadedModel,
    out_dir: Path,
    val: Any,
    config: RunConfig,
    task: Task,
    input_shape: tuple[int, ...],
    prefix: str = "peer",
) -> tuple[dict[str, Any], dict[str, str]]:
    """Student k > 0 (`prefix` "gen": generation k): its weights, evaluation and ONNX export;
    (evaluation, artifacts)."""
    peer = peer.cpu().eval()
    pt2_error = _write_weights(out_dir, peer, input_shape, task, k, prefix)
    evaluation = _evaluate(teacher, peer, out_dir, val, input_shape, task, None, k, prefix)
    if pt2_error:
        evaluation["pt2_export_error"] = pt2_error
    return evaluation, _write_onnx(out_dir, peer, config, task, input_shape, evaluation, k, prefix)


def _evaluate(
    teacher: LoadedModel,
    student: nn.Module,
    out_dir: Path,
    val: Any,
    input_shape: tuple[int, ...],
    task: Task,
    teacher_figures: dict[str, Any] | None = None,
    k: int = 0,
    prefix: str = "peer",
) -> dict[str, Any]:
    """`evaluate`, with both models timed in the same form.

    A .pt2 teacher runs as an unflattened graph, which costs more per call than an eager module
    (milliseconds at batch 1 on a small model); its student is then timed through its own
    student.pt2, loaded the same way (which also proves that artifact loads). A safetensors
    teacher is an eager zoo module, like the student.
    """
    same_form = None
    if teacher.format == "pt2":
        same_form = load_model(
            out_dir / student_artifacts(k, prefix)[_kind(k, "student_pt2", prefix)], "pt2"
        ).module
    evaluation = evaluate(
        teacher.module,
        student,
        val,
        input_shape,
        task=task,
        latency_student=same_form,
        teacher_figures=teacher_figures,
    )
    evaluation["latency_form"] = "pt2" if same_form is not None else "eager"
    return evaluation


def _other_teachers(
    config: RunConfig, teacher: LoadedModel, paths: list[Path] | None, task: Task, data: Any
) -> tuple[list[nn.Module], Any] | None:
    """Scheme multi_teacher: the other teachers, loaded (safely) and checked against the run's
    teacher (same input shape and classes, else ValueError saying which and how), and the
    scheme bound to them; None for other schemes."""
    if not config.teachers:
        return None
    from worker.engine.schemes import build_scheme

    specs = config.teachers
    files = paths or [Path(t.path) for t in specs if t.path]
    if len(files) != len(specs):
        raise ValueError("multi_teacher: every entry of teachers must name a file (path)")
    probe = task.batch(data, torch.arange(min(2, len(data))), torch.device("cpu")).inputs
    with torch.inference_mode():
        want = tuple(teacher.module(probe).shape[1:])
    modules = []
    for k, (spec, path) in enumerate(zip(specs, files, strict=True), 1):
        module = load_model(path, model_format(path, spec.format), spec.architecture, spec.kwargs)
        try:
            with torch.inference_mode():
                got = tuple(module.module(probe).shape[1:])
        except Exception as exc:  # noqa: BLE001 - say which teacher does not take the inputs
            raise IncompatibleDataError(
                f"teachers[{k - 1}] does not take the run teacher's inputs "
                f"{tuple(probe.shape[1:])}: {type(exc).__name__}: {exc}"
            ) from None
        if got != want:
            raise IncompatibleDataError(
                f"teachers[{k - 1}] outputs {list(got)} per sample, the run's teacher {list(want)}"
                ": every teacher must predict the same classes"
            )
        modules.append(module.module)
    scheme = build_scheme(config.scheme, **config.scheme_params)
    pairs = [[(p.student, p.teacher, p.tap) for p in spec.pairs] for spec in specs]
    scheme.bind(modules, [spec.weight for spec in specs], pairs, probe)  # type: ignore[attr-defined]
    return modules, scheme


def _teacher_evaluations(
    config: RunConfig, others: list[nn.Module], student: nn.Module, val: Any, task: Task
) -> list[dict[str, Any]]:
    """Each other teacher's quality on the held-out split (the task's `teacher_*` metrics),
    after the run's teacher (teacher 0, the top level's `teacher_*`)."""
    rows = []
    for k, (spec, module) in enumerate(zip(config.teachers, others, strict=True), 1):
        metrics = task.evaluate(module.cpu(), student, val)
        rows.append(
            {
                "teacher": k,
                "model_id": spec.model_id,
                "path": spec.path,
                "weight": spec.weight,
                **{m: v for m, v in metrics.items() if m.startswith("teacher_top")},
            }
        )
    return rows


def _inputs(
    config: RunConfig,
    teacher_path: Path,
    dataset_path: Path,
    student_path: Path | None,
    shell: bool = False,
) -> tuple[Task, LoadedModel, Any, nn.Module | None, Any, Any]:
    """The run's task, teacher (loaded safely; `shell`: a Hugging Face teacher without its
    weights, `hf_teacher.load_hf_shell`), data (checked against the teacher), student (None:
    the trainer's zoo student) and training and validation splits."""
    task = build_task(config.task, **config.task_params)
    teacher_format = model_format(Path(teacher_path), config.teacher.format)
    if teacher_format == "hf" and (refusal := text_task_refusal("the teacher", config.task)):
        raise ValueError(refusal)
    if shell and teacher_format == "hf":
        from worker.engine.hf_teacher import load_hf_shell

        teacher = load_hf_shell(Path(teacher_path))
    else:
        teacher = load_model(
            Path(teacher_path),
            teacher_format,
            config.teacher.architecture,
            config.teacher.kwargs,
        )
    teacher = replace(teacher, module=task.adapt_model(teacher.module, teacher))
    data = task.fit_to_teacher(teacher, task.load(Path(dataset_path), config.dataset))
    train_data, val_data = task.split(data, config.dataset.val_fraction, config.seed)
    # built from the training split: a student calibrated on data (hf_pruned) never sees the
    # validation rows
    student = build_run_student(config, teacher, train_data, student_path, task)
    _check_own_tokenizer(config, student)
    return task, teacher, data, student, train_data, val_data


def _check_own_tokenizer(config: RunConfig, student: nn.Module | None) -> None:
    """A student reading its own tokenizer's ids (`Retokenizer`) has other tokens than the
    teacher: only losses on the models' outputs (sentence embeddings) compare the two, no
    layer pairs."""
    if getattr(student, "retokenize", None) is None:
        return
    paired = [s.name for s in config.losses if s.name in LOSSES and LOSSES[s.name].needs_pairs]
    if config.layer_pairs or paired:
        raise IncompatibleDataError(
            "the student has its own tokenizer, so its tokens are not the teacher's: only "
            "losses on the sentence embeddings (embedding_mse, embedding_cosine) compare the "
            f"two; remove {', '.join(paired) or 'the layer pairs'} (or use a student that "
            "shares the teacher's tokenizer)"
        )


def _other_ranks(
    config: RunConfig,
    teacher_path: Path,
    dataset_path: Path,
    checkpoint_path: Path | None,
    student_path: Path | None,
) -> contextlib.AbstractContextManager[Any]:
    """With `training.gpus` N > 1: ranks 1..N-1 (`distributed.launch`, `_train_rank`) while the
    block runs, this process being rank 0; with one GPU, nothing."""
    ts = config.training
    if ts.gpus == 1:
        return contextlib.nullcontext()
    args = (config, teacher_path, dataset_path, checkpoint_path, student_path)
    return distributed.launch(ts.gpus, ts.device, _train_rank, args)


def _train_rank(
    index: int,
    ranks: int,
    port: int,
    device_name: str,
    config: RunConfig,
    teacher_path: Path,
    dataset_path: Path,
    checkpoint_path: Path | None,
    student_path: Path | None,
) -> None:
    """Rank `index` + 1 of a `training.gpus` run, in its own process: the same inputs and
    training as rank 0, which alone reports, writes checkpoints and the artifacts; it reads
    rank 0's checkpoint to resume and stops when rank 0 is cancelled."""
    with distributed.joined(index + 1, ranks, port, device_name):
        task, teacher, _, student, train_data, val_data = _inputs(
            config, teacher_path, dataset_path, student_path
        )
        with contextlib.suppress(Cancelled):
            train(
                config,
                teacher.module,
                train_data,
                val_data,
                student=student,
                checkpoint_path=checkpoint_path,
                task=task,
            )


def run_distillation(
    config: RunConfig,
    teacher_path: Path,
    dataset_path: Path,
    out_dir: Path,
    *,
    callbacks: Callbacks | None = None,
    checkpoint_path: Path | None = None,
    student_path: Path | None = None,
    teacher_paths: list[Path] | None = None,
    teacher_cache: Path | None = None,
    teacher_cache_key: str | None = None,
) -> dict[str, Any]:
    """Run one distillation end to end; returns the evaluation, artifact names and the student.

    With `training.teacher_cache` on (or auto, where it applies): `teacher_cache` is a cache
    file of an earlier run to replay (`teacher_cache.py`; used when its key is this run's:
    `teacher_cache_key`, by default computed from the teacher's and the dataset's bytes);
    the cache after this run is written to out_dir/teacher_cache.npz (artifact
    `teacher_cache`) and evaluation.json's `teacher_cache` gives its key, size and the
    batches replayed and recorded (or, under auto, why the run could not use one).

    `student_path`: the file of a `source: model` student whose config names it by id;
    `teacher_paths`: the files of `config.teachers` (scheme multi_teacher) named by id, in order
    (default: each entry's `path`).

    Raises `loading.ModelLoadError` / `UnsafeModelError` for a teacher that cannot or must not
    be loaded, `datasets.DatasetError` for a dataset that cannot be read, `IncompatibleDataError`
    when they do not fit each other, and `trainer.Cancelled` when the callbacks stop the run.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = _other_ranks(config, teacher_path, dataset_path, checkpoint_path, student_path)
    with ranks:  # training.gpus > 1: ranks 1..N-1 load and train beside this one, rank 0
        key = _cache_key(config, teacher_path, dataset_path, teacher_cache_key)
        # a cache with the teacher's record may spare the teacher's weights (`_may_replay`)
        may_replay = _may_replay(config, teacher_cache, key)
        shell = may_replay and not build_task(
            config.task, **config.task_params
        ).student_reads_teacher(config.student)
        task, teacher, data, student, train_data, val_data = _inputs(
            config, teacher_path, dataset_path, student_path, shell
        )
        qat = qat_student(config, task, data, student)  # None unless training.qat
        others = _other_teachers(config, teacher, teacher_paths, task, train_data)
        cache, cache_note = _teacher_cache(config, teacher_cache, key, len(train_data))
        replay = may_replay and _replays_all(config, cache)
        if shell and not replay:  # the cache does not hold every batch: the teacher must run
            log.info("the teacher-output cache lacks batches of this run: loading the teacher")
            task, teacher, data, student, train_data, val_data = _inputs(
                config, teacher_path, dataset_path, student_path
            )
            shell = False
        if replay:
            assert cache is not None and cache.teacher_record is not None
            task.replay_teacher(cache.teacher_record["task"], cache.teacher_arrays)
            if not shell and not _shares_weights(teacher.module, student):
                teacher.module.to("meta")  # read to build the student; not needed any more
            cache_note["teacher_loaded"] = "no" if shell else "to build the student"
        elif cache is not None:
            cache_note["teacher_loaded"] = "yes"
        result = train(
            config,
            teacher.module,
            train_data,
            val_data,
            student=student if qat is None else qat.prepared,
            callbacks=callbacks,
            checkpoint_path=checkpoint_path,
            task=task,
            scheme=others[1] if others else None,
            teacher_cache=cache,
        )
    student = (result.student if qat is None else qat.synced()).cpu().eval()
    val_data = Augmenter(config.augment, config.seed).eval_data(val_data)  # normalised
    if not replay:
        teacher.module.cpu()
    input_shape = task.input_shape(data)
    pt2_error = _write_weights(out_dir, student, input_shape, task)
    figures = (
        cache.teacher_record["evaluation"] if replay and cache and cache.teacher_record else None
    )
    evaluation = _evaluate(teacher, student, out_dir, val_data, input_shape, task, figures)
    if (
        cache is not None
        and cache.teacher_record is None
        and cache.holds_every_batch(result.epochs)
    ):
        _keep_teacher_record(cache, task, evaluation)
    if pt2_error:
        evaluation["pt2_export_error"] = pt2_error
    extra = _extra_exports(task, student, out_dir, teacher, Path(teacher_path), data, evaluation)
    int8: dict[str, str] = {}
    if qat is not None:
        int8, evaluation["quantized"] = export_int8(
            qat, task=task, teacher=teacher.module, out_dir=out_dir, data=val_data,
            input_shape=input_shape, fp32_size=evaluation["student_size_bytes"],
        )  # fmt: skip
    evaluation = {**evaluation, "train_steps": result.steps, "epochs": result.epochs}
    cache_files: dict[str, str] = {}
    if cache is not None:
        cache_note["size_bytes"] = cache.save(out_dir / CACHE_FILE)
        cache_note.update(cache.stats.as_json())
        cache_files["teacher_cache"] = CACHE_FILE
    if cache_note:
        evaluation["teacher_cache"] = cache_note
    if config.scheme == "split":  # the head on its own (head.*) and evaluation.json's `split`
        from worker.engine.schemes.split import SplitModel, export_head

        assert isinstance(student, SplitModel)
        head, evaluation["split"] = export_head(student, out_dir, val_data, task)
        int8.update(head)  # extra artifacts
    if others:
        first = {
            "teacher": 0,
            "model_id": config.teacher.model_id,
            "path": config.teacher.path,
            "weight": config.resolved_scheme_params()["teacher_weight"],
            **{m: v for m, v in evaluation.items() if m.startswith("teacher_top")},
        }
        rest = _teacher_evaluations(config, others[0], student, val_data, task)
        evaluation["teachers"] = [first, *rest]
    peers = [
        _peer(k, peer, teacher, out_dir, val_data, config, task, input_shape)
        for k, peer in enumerate(result.students[1:], 1)
    ]
    generations = [
        _peer(k, gen, teacher, out_dir, val_data, config, task, input_shape, "gen")
        for k, gen in enumerate(result.earlier, 1)
    ]
    artifacts = _write_rest(
        out_dir, student, config, task, input_shape, evaluation, peers, generations
    )
    artifacts.update(int8)
    artifacts.update(cache_files)
    artifacts.update(extra)
    described = _student_description(student, config, task, data)
    return {**evaluation, "artifacts": artifacts, **described}


def _extra_exports(
    task: Task,
    student: nn.Module,
    out_dir: Path,
    teacher: LoadedModel,
    teacher_path: Path,
    data: Any,
    evaluation: dict[str, Any],
) -> dict[str, str]:
    """The task's own exports of the student (`Task.extra_exports`: a text task's Hugging Face
    checkpoint zip); a failure leaves them out and says why in `evaluation["export_error"]`."""
    try:
        return task.extra_exports(student, out_dir, teacher, teacher_path, data)
    except Exception as exc:  # noqa: BLE001 - the student is good; say why the export is missing
        log.warning("the task's export failed: %s", exc)
        evaluation["export_error"] = f"{type(exc).__name__}: {exc}"[:2000]
        return {}


def _teacher_cache(
    config: RunConfig, stored: Path | None, key: str | None, samples: int
) -> tuple[TeacherCache | None, dict[str, Any]]:
    """The run's teacher-output cache (None when it uses none) and what evaluation.json says
    of it: under `auto`, why a run cannot use one. `key`: the cache's (`cache_key`)."""
    mode = config.training.teacher_cache
    if mode == "off":
        return None, {}
    if not cache_enabled(config):
        return None, {"used": False, "why": cache_problem(config)}
    assert key is not None
    top_k = config.training.teacher_cache_top_k
    bf16 = config.training.amp and resolve_device(config.training.device).type == "cuda"
    precision = "bf16" if bf16 else "fp32"  # as the trainer's autocast will run the teacher
    cache = TeacherCache.open(stored, key, top_k, samples, per_epoch(config), precision)
    note: dict[str, Any] = {"used": True, "key": key, "top_k": top_k, "per_epoch": cache.per_epoch}
    return cache, note


def _cache_key(
    config: RunConfig, teacher_path: Path, dataset_path: Path, given: str | None
) -> str | None:
    """The run's teacher-output cache key: `given` (the worker's), else computed from the
    teacher's and the dataset's bytes; None when the run uses no cache."""
    if not cache_enabled(config):
        return None
    return given or cache_key(config, file_sha256(teacher_path), file_sha256(dataset_path))


def _may_replay(config: RunConfig, stored: Path | None, key: str | None) -> bool:
    """Whether the run may do without the teacher's weights, before anything is loaded: it
    uses the cache, `stored` is that cache with the teacher's record (`Task.teacher_record`)
    and nothing but the cached logits reads the teacher (no layer pairs, no QAT)."""
    return (
        cache_enabled(config)
        and stored is not None
        and key is not None
        and not config.layer_pairs
        and config.training.qat == "none"
        and TeacherCache.has_teacher_record(Path(stored), key)
    )


def _replays_all(config: RunConfig, cache: TeacherCache | None) -> bool:
    """Whether the opened cache replays every training batch and the teacher's evaluation."""
    return (
        cache is not None
        and cache.teacher_record is not None
        and cache.holds_every_batch(config.training.epochs)
    )


def _shares_weights(teacher: nn.Module, student: nn.Module | None) -> bool:
    """Whether the student holds tensors of the teacher (then the teacher stays loaded)."""
    if student is None:
        return False
    held = {t.data_ptr() for t in [*teacher.parameters(), *teacher.buffers()] if t.numel()}
    return any(
        t.numel() and t.data_ptr() in held for t in [*student.parameters(), *student.buffers()]
    )


def _keep_teacher_record(cache: TeacherCache, task: Task, evaluation: dict[str, Any]) -> None:
    """Keep in the cache what the evaluation read of the teacher (the task's record and the
    teacher's figures in evaluation.json), for later runs that replay it without the teacher."""
    kept = task.teacher_record()
    if kept is None:
        return
    record, arrays = kept
    figures = {
        k: v for k, v in evaluation.items() if k.startswith("teacher_") and k != "teacher_cache"
    }
    cache.keep_teacher_record({"task": record, "evaluation": figures}, arrays)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (as the artifact store records an upload's)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# demo


def make_demo(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """The default task's demo files in `out_dir`: (teacher path, data path). For
    classification, a ResNet teacher trained on the digits and the digits as .npz
    (`tasks/classification/demo.py`)."""
    return default_task().demo(Path(out_dir), seed)


if __name__ == "__main__":  # python -m worker.engine.pipeline DIR: the demo files, for the CLI
    import sys

    logging.basicConfig(level=logging.INFO)
    for written in make_demo(Path(sys.argv[1] if len(sys.argv) > 1 else "demo")):
        print(written)
