"""The teacher-output cache (FKD: Shen & Xing, "A Fast Knowledge Distillation Framework for
Visual Recognition", ECCV 2022): the teacher's logits of every training batch, stored so that
later epochs and later runs replay them without the teacher forward. `core/teacher_cache.py`
says when a run may use it and what its key is.

What a row holds. With `top_k` k (0 < k < C classes) a sample's logits z [C], shifted so that
their maximum is 0 (a shift changes no softmax, and keeps the values in float16's range and
most precise at the top), are kept as the k largest values (float16) with their class indices (int16, int32 from 32,768 classes) and one
float32 `rest` = log((1 / (C - k)) sum_{j not in top-k} exp(z_j)), the log-mean-exp of the
other logits. The replayed logits are z'_i = z_i (rounded to float16) in the top k and z'_j =
rest elsewhere (z shifted as above: the logit losses, kd, dkd, dist and logit_std, read only
differences of logits), so softmax(z') gives the top-k classes their probabilities and spreads the rest
of the mass evenly over the other classes (FKD's label smoothing of the remainder), exactly at
temperature 1 (up to the float16 rounding); at a temperature T != 1 the rest is spread in the
same way. With k = 0 (or k >= C) the logits are kept whole in float32 and replay exactly.

Record = replay. A batch the cache does not hold runs the teacher, and its logits are stored and
replaced by their replayed form (`record` returns `expand(compress(z))`), so the run that
records and every run that replays compute the same losses; with k = 0 they are the teacher's
own logits, the same as without the cache.

Which rows. Without random augmentation (no flip, crop, policy, mixup or cutmix; normalisation
is deterministic) a sample's teacher output is the same in every epoch: one slot holds a row per
training sample, and every epoch after the first replays it. With random augmentation each
epoch's batches differ: slot e holds epoch e's rows in the epoch's batch order (batch b at rows
b * batch_size ...), each with the seed of its batch's augmentation draws
(`augment.augment_seed(seed, e, b)`: the parameters that produced it, checked on replay), and a
later run of the same key (same seed, data, batch size and recipe, hence the same draws)
replays them; a run of more epochs records the epochs the cache lacks.

Language models (token logits [N, L, V], issue 12: DistillKit's offline mode, Megatron's
offline top-k KD). A row is a position, not a sample: each training sample keeps the rows of
its counted positions only (those whose target is not -100: padding and prompt positions
take no room), compressed as above with V for C (top-k float16 values, int16/int32 indices
and the log-mean-exp of the other V - k logits). A replayed batch is [N, L, V] with the rows at
the counted positions and zeros (a uniform distribution) elsewhere, where no token divergence
reads it (`losses/divergence.py` masks them), so with k = 0 or k >= V the losses equal the
live teacher's. Which top-k distribution the losses see: the tail mass is kept, spread
evenly over the other V - k tokens (not renormalised onto the top k), so every divergence
(reverse KL, JSD, TVD) stays finite. Token rows are kept per sample, for every epoch (text
has no random augmentation).

The teacher's record. A run whose task keeps one (`Task.teacher_record`: causal_lm's validation
NLL and counted tokens, tokens/s, sample continuations and argmax next tokens) stores it beside
the rows, with the teacher's figures of evaluation.json (parameters, size, FLOPs, latency); a
later run of the key whose cache holds every batch (`holds_every_batch`) replays it
(`Task.replay_teacher`) and builds the teacher without weights (`hf_teacher.load_hf_shell`,
the `meta` device): nothing runs or reads the teacher, only the student is measured
(`pipeline._may_replay`).

The file is one `.npz` (numpy, no pickles): `meta` (JSON: key, top_k, classes, samples, layout)
and per slot `s{e}.values`, `s{e}.indices`, `s{e}.rest`, `s{e}.filled`, `s{e}.seeds`; token
rows as `t.samples` (the samples held), `t.offsets` (sample i's rows are offsets[i] to
offsets[i + 1]), `t.values`, `t.indices`, `t.rest`; the teacher's record as `r.json` and its
arrays `r.<name>`. A file whose meta does not match the run
is ignored (the run records afresh).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    """The rows of one epoch (or of every epoch, without random augmentation)."""

    values: np.ndarray  # [n, k] float16, or [n, C] float32 when whole
    indices: np.ndarray  # [n, k] int16/int32; [n, 0] when whole
    rest: np.ndarray  # [n] float32
    filled: np.ndarray  # [n] bool
    seeds: np.ndarray  # [n] int64: the augmentation seed of the row's batch (-1: none)


@dataclass
class _Rows:
    """Compressed logit rows: top-k values and indices and the rest (or, whole, the values)."""

    values: np.ndarray  # [P, k] float16, or [P, C] float32 when whole
    indices: np.ndarray  # [P, k] int16/int32; [P, 0] when whole
    rest: np.ndarray  # [P] float32

    FIELDS = ("values", "indices", "rest")

    def nbytes(self) -> int:
        return int(self.values.nbytes + self.indices.nbytes + self.rest.nbytes)


@dataclass
class CacheStats:
    """Batches replayed and recorded (teacher forwards run) in this process."""

    replayed: int = 0
    recorded: int = 0

    def as_json(self) -> dict[str, int]:
        return {"replayed_batches": self.replayed, "recorded_batches": self.recorded}


class TeacherCache:
    """The teacher's logits of a run's training batches; see the module docstring.

    `samples`: training samples; `per_epoch`: whether the batches are randomly augmented (a
    slot per epoch); `classes` is taken from the first recorded logits.
    """

    def __init__(
        self, key: str, top_k: int, samples: int, per_epoch: bool, precision: str = "fp32"
    ) -> None:
        self.key, self.top_k, self.samples, self.per_epoch = key, top_k, samples, per_epoch
        self.precision = precision  # "bf16" (autocast on a GPU) or "fp32": not interchangeable
        self.classes: int | None = None
        self.slots: dict[int, _Slot] = {}
        self.tokens = False  # token logits [N, L, V]: `rows` per sample, not `slots`
        self.rows: dict[int, _Rows] = {}  # sample -> its counted positions' rows
        self.stats = CacheStats()
        self.changed = False
        # what the run's evaluation read of the teacher (`Task.teacher_record`, its figures in
        # evaluation.json): a run that replays every batch and this needs no teacher weights
        self.teacher_record: dict[str, Any] | None = None
        self.teacher_arrays: dict[str, np.ndarray] = {}

    # -- the file ------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "top_k": self.top_k,
            "samples": self.samples,
            "per_epoch": self.per_epoch,
            "precision": self.precision,
            "classes": self.classes,
            "tokens": self.tokens,
        }

    @classmethod
    def open(
        cls,
        path: Path | None,
        key: str,
        top_k: int,
        samples: int,
        per_epoch: bool,
        precision: str = "fp32",
    ) -> TeacherCache:
        """The cache stored at `path` when it is this run's (same key, layout and precision:
        a bf16 recording on a GPU is not replayed into a float32 run), else an empty one."""
        cache = cls(key, top_k, samples, per_epoch, precision)
        if path is None or not Path(path).is_file():
            return cache
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["meta"]).decode())
            mine = {k: v for k, v in cache.meta().items() if k not in ("classes", "tokens")}
            if {k: meta.get(k) for k in mine} != mine:
                log.warning(
                    "teacher cache %s belongs to another run (%s); recording afresh", path, meta
                )
                return cache
            cache.classes = meta["classes"]
            cache.tokens = bool(meta.get("tokens", False))
            if "t.samples" in npz.files:
                cache.rows = _split_rows(
                    npz["t.samples"],
                    npz["t.offsets"],
                    _Rows(npz["t.values"], npz["t.indices"], npz["t.rest"]),
                )
            if "r.json" in npz.files:
                cache.teacher_record = json.loads(bytes(npz["r.json"]).decode())
                cache.teacher_arrays = {
                    n[2:]: npz[n] for n in npz.files if n.startswith("r.") and n != "r.json"
                }
            for name in npz.files:
                if name.startswith("s") and name.endswith(".values"):
                    e = int(name[1:].split(".")[0])
                    cache.slots[e] = _Slot(
                        *(
                            npz[f"s{e}.{part}"]
                            for part in ("values", "indices", "rest", "filled", "seeds")
                        )
                    )
        return cache

    @staticmethod
    def has_teacher_record(path: Path, key: str) -> bool:
        """Whether the cache file at `path` is of `key` and holds the teacher's record
        (`keep_teacher_record`), read from its meta alone."""
        if not Path(path).is_file():
            return False
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(bytes(npz["meta"]).decode())
                return meta.get("key") == key and "r.json" in npz.files
        except (OSError, ValueError, KeyError) as exc:
            log.warning("teacher cache %s could not be read (%s)", path, exc)
            return False

    def save(self, path: Path) -> int:
        """Write the cache to `path` (atomically); its size in bytes."""
        arrays: dict[str, np.ndarray] = {
            "meta": np.frombuffer(json.dumps(self.meta()).encode(), dtype=np.uint8)
        }
        for e, slot in sorted(self.slots.items()):
            for part in ("values", "indices", "rest", "filled", "seeds"):
                arrays[f"s{e}.{part}"] = getattr(slot, part)
        if self.rows:
            arrays.update(_joined_rows(self.rows))
        if self.teacher_record is not None:
            arrays["r.json"] = np.frombuffer(
                json.dumps(self.teacher_record).encode(), dtype=np.uint8
            )
            arrays.update({f"r.{n}": a for n, a in self.teacher_arrays.items()})
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
        return path.stat().st_size

    def holds_every_batch(self, epochs: int) -> bool:
        """Whether every training batch of a run of `epochs` epochs replays (no teacher forward
        is left to run): each sample's token rows, or every row of each epoch's slot (of slot 0
        without random augmentation)."""
        if self.tokens:
            return all(i in self.rows for i in range(self.samples))
        wanted = range(epochs) if self.per_epoch else range(1)
        return all(e in self.slots and bool(self.slots[e].filled.all()) for e in wanted)

    def keep_teacher_record(self, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Keep what the run's evaluation read of the teacher (`record`: JSON, `arrays`:
        named numpy arrays), replayed by later runs that do not load the teacher."""
        self.teacher_record, self.teacher_arrays = record, dict(arrays)
        self.changed = True

    # -- rows ------------------------------------------------------------------------------------

    def whole(self) -> bool:
        """Whether rows hold every logit (top_k 0 or at least the class count)."""
        assert self.classes is not None
        return self.top_k == 0 or self.top_k >= self.classes

    def _where(self, epoch: int, start: int, idx: Tensor) -> tuple[int, np.ndarray]:
        """(slot, rows) of a batch: epoch e's positions start.. or, without random augmentation,
        the samples' own indices in slot 0."""
        if self.per_epoch:
            return epoch, np.arange(start, start + len(idx))
        return 0, idx.cpu().numpy()

    def _slot(self, e: int) -> _Slot:
        if e not in self.slots:
            assert self.classes is not None
            n, whole = self.samples, self.whole()
            width = self.classes if whole else self.top_k
            index_type = np.int16 if self.classes <= 2**15 else np.int32
            self.slots[e] = _Slot(
                np.zeros((n, width), np.float32 if whole else np.float16),
                np.zeros((n, 0 if whole else self.top_k), index_type),
                np.zeros(n, np.float32),
                np.zeros(n, bool),
                np.full(n, -1, np.int64),
            )
        return self.slots[e]

    def lookup(
        self,
        epoch: int,
        start: int,
        idx: Tensor,
        seed: int,
        device: torch.device,
        labels: Tensor | None = None,
    ) -> Tensor | None:
        """The replayed logits [len(idx), C] of a batch (epoch `epoch`, first row `start`,
        samples `idx`, augmentation seed `seed`) on `device`; None when any row is missing.
        Token logits: [len(idx), L, V] at the positions `labels` [len(idx), L] counts."""
        if self.tokens:
            return self._lookup_tokens(idx, labels, device)
        e, rows = self._where(epoch, start, idx)
        slot = self.slots.get(e)
        if slot is None or not slot.filled[rows].all():
            return None
        if self.per_epoch and not (slot.seeds[rows] == seed).all():
            return None  # recorded under other augmentation draws: not this batch's
        self.stats.replayed += 1
        return self._expand(slot, rows).to(device, non_blocking=True)

    def record(
        self,
        epoch: int,
        start: int,
        idx: Tensor,
        seed: int,
        logits: Tensor,
        labels: Tensor | None = None,
    ) -> Tensor:
        """Store a batch's teacher logits [len(idx), C] (or token logits [len(idx), L, V], kept
        at the positions `labels` counts); returns their replayed form (on the logits'
        device), which the run uses in their place."""
        if logits.dim() == 3:
            return self._record_tokens(idx, logits, labels)
        if logits.dim() != 2:
            raise ValueError(
                f"the teacher-output cache stores class logits [N, classes] or token logits "
                f"[N, length, vocab]; this teacher gives {list(logits.shape)}; set "
                "training.teacher_cache to 'off'"
            )
        if self.classes is None:
            self.classes = int(logits.shape[1])
        if logits.shape[1] != self.classes:
            raise ValueError(
                f"the teacher gave {logits.shape[1]} classes, the cache holds {self.classes}"
            )
        e, rows = self._where(epoch, start, idx)
        slot = self._slot(e)
        packed = self._compress(logits)
        slot.values[rows] = packed.values
        if not self.whole():
            slot.indices[rows] = packed.indices
            slot.rest[rows] = packed.rest
        slot.filled[rows] = True
        slot.seeds[rows] = seed if self.per_epoch else -1
        self.changed = True
        self.stats.recorded += 1
        return self._expand(slot, rows).to(logits.device)

    def _compress(self, logits: Tensor) -> _Rows:
        """Rows [P, C] of logits as they are kept: whole (float32), or shifted to a maximum of
        0 (in float16's range, most precise at the top) and cut to the top k values (float16)
        and indices plus the log-mean-exp of the others (module docstring)."""
        assert self.classes is not None
        z = logits.detach().float()
        index_type = np.int16 if self.classes <= 2**15 else np.int32
        if self.whole():
            empty = np.zeros((len(z), 0), index_type)
            return _Rows(z.cpu().numpy(), empty, np.zeros(len(z), np.float32))
        k = self.top_k
        z = z - z.amax(dim=1, keepdim=True)
        top = z.topk(k, dim=1)
        others = z.scatter(1, top.indices, float("-inf"))
        rest = torch.logsumexp(others, dim=1) - math.log(self.classes - k)
        return _Rows(
            top.values.half().cpu().numpy(),
            top.indices.cpu().numpy().astype(index_type),
            rest.cpu().numpy(),
        )

    def _expand(self, slot: _Slot | _Rows, rows: np.ndarray | None = None) -> Tensor:
        """The logits [len(rows), C] the rows replay (float32); every row of `slot` when
        `rows` is None."""
        pick = slice(None) if rows is None else rows
        values = torch.from_numpy(slot.values[pick]).float()
        if self.whole():
            return values
        assert self.classes is not None
        out = torch.from_numpy(slot.rest[pick]).unsqueeze(1).repeat(1, self.classes)
        indices = torch.from_numpy(slot.indices[pick].astype(np.int64))
        return out.scatter_(1, indices, values)

    # -- token logits ----------------------------------------------------------------------------

    def _record_tokens(self, idx: Tensor, logits: Tensor, labels: Tensor | None) -> Tensor:
        """Store token logits [N, L, V] at the counted positions of each sample of `idx`."""
        if self.per_epoch:
            raise ValueError(
                "the teacher-output cache keeps token logits per sample, the same in every "
                "epoch; this run augments its batches randomly: turn augmentation off"
            )
        if self.classes is None:
            self.classes, self.tokens = int(logits.shape[-1]), True
        if logits.shape[-1] != self.classes or not self.tokens:
            raise ValueError(
                f"the teacher gave {list(logits.shape)} logits, the cache holds "
                f"{'token' if self.tokens else 'class'} logits of {self.classes}"
            )
        keep = _counted(labels, logits.shape[:2])
        packed = self._compress(logits[keep])
        at = 0
        for sample, n in zip(idx.tolist(), keep.sum(1).tolist(), strict=True):
            part = slice(at, at + n)
            self.rows[int(sample)] = _Rows(
                packed.values[part].copy(), packed.indices[part].copy(), packed.rest[part].copy()
            )
            at += n
        self.changed = True
        self.stats.recorded += 1
        return self._place(packed, keep, logits.shape).to(logits.device)

    def _lookup_tokens(
        self, idx: Tensor, labels: Tensor | None, device: torch.device
    ) -> Tensor | None:
        """The replayed token logits of samples `idx` at the positions `labels` counts; None
        when a sample is missing or holds another number of positions."""
        if labels is None or self.classes is None:
            return None
        keep = _counted(labels, labels.shape)
        parts = [self.rows.get(int(i)) for i in idx.tolist()]
        counts = keep.sum(1).tolist()
        if any(p is None or len(p.rest) != n for p, n in zip(parts, counts, strict=True)):
            return None
        rows = [p for p in parts if p is not None]
        packed = _Rows(*(np.concatenate([getattr(r, f) for r in rows]) for f in _Rows.FIELDS))
        self.stats.replayed += 1
        shape = torch.Size((*labels.shape, self.classes))
        return self._place(packed, keep, shape).to(device, non_blocking=True)

    def _place(self, packed: _Rows, keep: Tensor, shape: torch.Size) -> Tensor:
        """Token logits of `shape` [N, L, V]: the rows' replayed logits at the positions `keep`
        marks, zeros elsewhere (no loss reads them)."""
        out = torch.zeros(tuple(shape), dtype=torch.float32)
        out[keep] = self._expand(packed)
        return out

    def size_bytes(self) -> int:
        """Bytes the rows take in memory (about the file's size)."""
        slots = sum(
            getattr(s, p).nbytes
            for s in self.slots.values()
            for p in ("values", "indices", "rest", "filled", "seeds")
        )
        tokens = sum(r.nbytes() for r in self.rows.values())
        return slots + tokens + (16 * len(self.rows) + 8 if self.rows else 0)  # samples, offsets


def _counted(labels: Tensor | None, shape: torch.Size) -> Tensor:
    """The positions (`shape` [N, L] of token logits [N, L, V]) whose target counts (not
    -100), on the CPU; every position when there are no such targets."""
    if labels is None or labels.shape != shape or labels.is_floating_point():
        return torch.ones(tuple(shape), dtype=torch.bool)
    return (labels >= 0).cpu()


def _joined_rows(rows: dict[int, _Rows]) -> dict[str, np.ndarray]:
    """Per-sample token rows as the file's flat arrays (samples in order)."""
    samples = sorted(rows)
    counts = [len(rows[s].rest) for s in samples]
    arrays = {
        f"t.{f}": np.concatenate([getattr(rows[s], f) for s in samples]) for f in _Rows.FIELDS
    }
    arrays["t.samples"] = np.asarray(samples, np.int64)
    arrays["t.offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return arrays


def _split_rows(samples: np.ndarray, offsets: np.ndarray, flat: _Rows) -> dict[int, _Rows]:
    """The file's flat token rows back per sample."""
    return {
        int(s): _Rows(*(getattr(flat, f)[offsets[i] : offsets[i + 1]] for f in _Rows.FIELDS))
        for i, s in enumerate(samples)
    }
