"""The teacher-output cache's rules, torch-free: when a run may use it and what its key is.

A run with `training.teacher_cache` on (or auto, where it applies) keeps the teacher's
outputs of every training batch (top-k logits, FKD-style: Shen & Xing, "A Fast Knowledge
Distillation Framework for Visual Recognition", ECCV 2022) in a file; a later epoch, or a later
run of the team with the same key, replays them instead of running the teacher
(`worker/engine/teacher_cache.py` stores and replays them; `worker/tasks.py` keeps the file as
a team artifact under `cache_storage_key`).

The key is a hash of everything the teacher's output of a batch depends on: the teacher file
(its sha256, format, architecture), the dataset file (its sha256 and how it is read and split),
the task, the seed (split, batch order and every augmentation draw), the batch size (which
samples share a batch: mixup/cutmix mix within it; only under random augmentation, since
without it a row is one sample's in every batch) and the augment recipe, plus the stored
top-k; for text, the text column and the task parameters (max_length changes the tokens).
Epochs are not in it: a run of more epochs extends the same cache.

Only response-based (logit) losses can read a replayed output: a feature or relation loss
needs the teacher's intermediate layers, which are not stored, and a loss of kind "other"
(grad_match) runs the teacher itself. So the cache applies to the offline scheme with logit
losses only, on the tasks of `CACHED_TASKS`: class logits [N, classes] (classification) or a
language model's token logits [N, L, vocab] (causal_lm: top-k per counted token position,
DistillKit's offline mode and Megatron's offline top-k KD); `cache_problem` says why not
otherwise.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from core import catalog
from core.catalog.augment import image_ops

VERSION = 1  # of the stored layout; part of the key

# the tasks whose teacher outputs the cache keeps: class logits or token logits
CACHED_TASKS = {"classification": "class logits", "causal_lm": "token logits"}


def cache_problem(config: Any) -> str | None:
    """Why `config` (a `core.config.RunConfig`) cannot use the teacher-output cache; None when
    it can."""
    if config.scheme != "offline":
        return (
            f"the teacher-output cache replays one frozen teacher's outputs; scheme "
            f"'{config.scheme}' trains or runs other models: use scheme 'offline'"
        )
    if config.training.gpus > 1:
        return "the teacher-output cache is written by one process; set training.gpus to 1"
    if config.task not in CACHED_TASKS:
        return (
            f"the teacher-output cache stores class logits [N, classes] or token logits "
            f"[N, length, vocab] (tasks {', '.join(CACHED_TASKS)}); task '{config.task}' has "
            "other outputs"
        )
    for i, loss in enumerate(config.losses):
        kind = catalog.LOSSES[loss.name].kind
        if kind != "logits":
            return (
                f"losses[{i}] '{loss.name}' is a {kind} loss: it reads the teacher's layers or "
                "runs the teacher itself, which the cache (logits only) cannot replay; use logit "
                "losses only (ce, kd, dkd, dist, ...)"
            )
    return None


def cache_enabled(config: Any) -> bool:
    """Whether a run uses the cache: `on`, or `auto` where `cache_problem` finds nothing."""
    mode = config.training.teacher_cache
    return mode == "on" or (mode == "auto" and cache_problem(config) is None)


def per_epoch(config: Any) -> bool:
    """Whether the training batches are randomly augmented (image operations, mixup or
    cutmix), so each epoch's teacher outputs differ and the cache keeps a slot per epoch."""
    aug = config.augment
    return bool(image_ops(aug.model_dump()) or aug.mixup or aug.cutmix)


def cache_key(config: Any, teacher_sha256: str, dataset_sha256: str) -> str:
    """The cache's key (64 hex digits) for a run of `config` on these teacher and dataset
    files (the sha256 of their bytes, as the artifact store records them)."""
    parts: dict[str, Any] = {
        "version": VERSION,
        "teacher": {
            "sha256": teacher_sha256,
            "format": config.teacher.format,
            "architecture": config.teacher.architecture,
            "kwargs": config.teacher.kwargs,
        },
        "dataset": {
            "sha256": dataset_sha256,
            "format": config.dataset.format,
            "label_column": config.dataset.label_column,
            "val_fraction": config.dataset.val_fraction,
        },
        "task": config.task,
        "seed": config.seed,
        # which samples share a batch matters to randomly augmented batches (a slot per epoch,
        # mixup/cutmix); without augmentation a row is a sample's, whatever its batch
        "batch_size": config.training.batch_size if per_epoch(config) else None,
        "augment": config.augment.model_dump(mode="json"),
        "top_k": config.training.teacher_cache_top_k,
    }
    if config.task != "classification":  # how texts are read and tokenised
        parts["dataset"]["text_column"] = config.dataset.text_column
        parts["task_params"] = config.resolved_task_params()
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_storage_key(team_id: int, key: str) -> str:
    """Where the artifact store keeps a team's cache of `key`."""
    return f"team-{team_id}/teacher-cache/{key}/teacher_cache.npz"


def cache_line(summary: dict[str, Any], size: Callable[[Any], str]) -> str | None:
    """What a run's teacher-output cache did, in words, from its summary (None when the run
    had it off); `size` writes a byte count. The run page and `distill-studio train` say it."""
    cache = summary.get("teacher_cache")
    if not isinstance(cache, dict):
        return None
    if not cache.get("used"):
        return f"Teacher-output cache not used: {cache.get('why')}"
    replayed, recorded = cache.get("replayed_batches", 0), cache.get("recorded_batches", 0)
    k = cache.get("top_k")
    kept = "every logit" if not k else f"top-{k} logits"
    line = (
        f"Teacher-output cache ({kept}, {size(cache.get('size_bytes'))}): "
        f"{replayed} of {replayed + recorded} training batches replayed without the teacher"
    )
    loaded = cache.get("teacher_loaded")
    if loaded == "no":
        line += "; the teacher was not loaded (its figures are those of the run that recorded it)"
    elif loaded == "to build the student":
        line += (
            "; the teacher's weights were read only to build the student, and the teacher never "
            "ran (its figures are those of the run that recorded it)"
        )
    return line
