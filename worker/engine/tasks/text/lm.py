"""Causal language modelling (catalog `causal_lm`): a `*ForCausalLM` / `*LMHeadModel` teacher
distilled into a smaller causal LM on the teacher's tokens (MiniLLM, GKD, DistiLLM's setting).

- data: `.txt` (one document a line) or `.jsonl` with `text` (kind `lm`: every token counts), or
  `.jsonl` whose records have `prompt` and `completion` (kind `instruction`: the loss is on the
  completion only); `kind_of` tells them apart by the first record;
- targets (`next_token_targets`): position t predicts token t + 1, so the tokenised labels
  (`data.tokenize`: the token where the loss counts, -100 elsewhere) are shifted left by one, the
  last position -100. A batch is then (ids [N, L], targets [N, L]) against logits [N, L, V], and
  `ce` and the token divergences (kd, reverse_kl, gkd_jsd, skew_kl, tvd) take it unchanged:
  padding, the prompt of instruction data and the last position never count;
- validation: `val/loss` (mean token negative log-likelihood over the counted tokens),
  `val/perplexity` = exp(val/loss), and `val/agreement`: the share of counted positions where
  the student's argmax next token is the teacher's. Each validation also draws the student's
  greedy continuations of the first `SAMPLES` validation prompts (`epoch_samples`);
- evaluation: `teacher_perplexity`, `student_perplexity`, `next_token_agreement`, both models'
  tokens per second at batch 1 and 32 (`{who}_tokens_per_s`, `{who}_tokens_per_s_b32`: greedy
  generation of `SPEED_NEW_TOKENS` tokens after `SPEED_PROMPT` prompt tokens with transformers'
  `generate` and its KV cache; `tokens_per_s_method` says "generate" or, for a model without
  `generate`, "forward" (a greedy loop of full forwards, no cache)), and `samples`: the first
  validation prompts with the reference text and the teacher's and the student's greedy
  continuations side by side, each with the student's continuation after every epoch
  (`epochs`); the pipeline writes them as the `predictions` artifact (predictions.json);
- the output size is the teacher's vocabulary (its logits' width).

The teacher is refused unless transformers built it as a causal LM (its class ends with
`ForCausalLM` or `LMHeadModel`), a dataset without one token to predict is refused, and
`max_length` beyond the teacher's positions is refused (`TextTask.fit_to_teacher`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.datasets import DatasetError
from worker.engine.loading import is_shell
from worker.engine.tasks.base import Autocast, IncompatibleDataError
from worker.engine.tasks.text.base import TextTask, TokenData
from worker.engine.tasks.text.data import IGNORE_INDEX, TextData, TextKind
from worker.engine.tasks.text.models import PAD, unwrap

if TYPE_CHECKING:
    from worker.engine.loading import LoadedModel

LM_CLASS_SUFFIXES = ("ForCausalLM", "LMHeadModel")
SAMPLES = 4  # validation prompts drawn with both models' continuations
SAMPLE_NEW_TOKENS = 24
SAMPLE_PROMPT = 16  # at most this many tokens of a plain-text row are its prompt
SPEED_BATCHES = (1, 32)
SPEED_PROMPT = 8
SPEED_NEW_TOKENS = 32
_VAL_BATCH = 32


def next_token_targets(labels: Tensor) -> Tensor:
    """targets[:, t] = labels[:, t + 1], targets[:, -1] = -100: the token each position
    predicts, where the loss counts (`labels` [N, L]: the token, or -100 where none counts)."""
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, :-1] = labels[:, 1:]
    return out


def token_nll(logits: Tensor, targets: Tensor) -> tuple[float, int]:
    """(sum of -log p(target) over the counted positions, their count) for logits [N, L, V]
    and targets [N, L] (-100: not counted)."""
    total = F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return float(total), int((targets >= 0).sum())


def perplexity(nll_sum: float, count: int) -> float:
    """exp(mean token NLL); nan when no token counted."""
    return math.exp(nll_sum / count) if count else float("nan")


def agreement_count(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> int:
    """Counted positions where the student's argmax next token is the teacher's."""
    keep = targets >= 0
    same = student_logits.argmax(-1) == teacher_logits.argmax(-1)
    return int((same & keep).sum())


def is_causal_lm(module: nn.Module) -> bool:
    """Whether transformers built `module` (or the model behind a `TokenModel`) as a causal LM."""
    return type(unwrap(module)).__name__.endswith(LM_CLASS_SUFFIXES)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _can_generate(hf: nn.Module) -> bool:
    return callable(getattr(hf, "generate", None)) and hasattr(hf, "generation_config")


@torch.inference_mode()
def greedy(module: nn.Module, prompt: Tensor, new_tokens: int, exact: bool = False) -> Tensor:
    """The greedy continuation [B, <= new_tokens] of `prompt` [B, P] (no padding): with
    transformers' `generate` (KV cache) when the model has it, else a loop of full forwards.
    `exact`: exactly `new_tokens` tokens (the end-of-text token suppressed until then)."""
    hf = unwrap(module)
    prompt = prompt.to(_device(module))
    if _can_generate(hf):
        config: Any = hf.generation_config
        eos = config.eos_token_id if config.eos_token_id is not None else 0
        pad = config.pad_token_id if config.pad_token_id is not None else eos
        out = hf.generate(  # type: ignore[operator]
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens if exact else 0,
            do_sample=False,
            pad_token_id=pad,
            use_cache=True,
        )
        return out[:, prompt.shape[1] :].cpu()  # type: ignore[no-any-return]
    ids = prompt
    for _ in range(new_tokens):
        ids = torch.cat([ids, module(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompt.shape[1] :].cpu()


def tokens_per_second(module: nn.Module, prompt: Tensor, new_tokens: int) -> float:
    """New tokens a second of greedy generation (`greedy`, exactly `new_tokens` per row) from
    `prompt` [B, P], timed after one short warm-up."""
    greedy(module, prompt, min(2, new_tokens), exact=True)
    if _device(module).type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    greedy(module, prompt, new_tokens, exact=True)
    if _device(module).type == "cuda":
        torch.cuda.synchronize()
    return prompt.shape[0] * new_tokens / (time.perf_counter() - start)


def _real(row: Tensor) -> Tensor:
    return row[row != PAD]


class CausalLMTask(TextTask):
    """Next-token prediction on plain text or prompt/completion pairs; see the module doc."""

    kinds: ClassVar[tuple[TextKind, ...]] = ("lm", "instruction")
    output = "logits"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.teacher: nn.Module | None = None  # the run's teacher, once `fit_to_teacher` saw it
        self.positions = 0
        self.vocab = 0
        self._reference: tuple[TokenData, Tensor] | None = None  # teacher argmax on val data
        self._teacher_samples: tuple[TokenData, list[str]] | None = None
        self._epochs: weakref.WeakKeyDictionary[nn.Module, list[list[str]]] = (
            weakref.WeakKeyDictionary()
        )
        # the epoch of each of those validations, where the trainer said (`live_samples`)
        self._numbers: weakref.WeakKeyDictionary[nn.Module, list[int]] = weakref.WeakKeyDictionary()
        # the run's teacher's evaluation (NLL sum, counted tokens, tokens/s), for its record
        self._teacher_eval: dict[str, Any] | None = None
        self._replay: _TeacherReplay | None = None  # an earlier run's record (`replay_teacher`)

    # -- data ---------------------------------------------------------------------------------
    def kind_of(self, path: Path) -> TextKind:
        """`instruction` for a .jsonl whose first record has `prompt` and `completion`, `lm`
        otherwise (the reader refuses what is neither)."""
        if path.suffix.lower() != ".jsonl" or not path.is_file():
            return "lm"
        with path.open("rb") as f:
            for raw in iter(lambda: f.readline(1 << 20), b""):
                if raw.strip():
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        return "lm"
                    keys = record.keys() if isinstance(record, dict) else ()
                    return "instruction" if {"prompt", "completion"} <= set(keys) else "lm"
        return "lm"

    @classmethod
    def recognizes(cls, path: Path, format: str | None) -> bool:
        """Whether an upload is instruction data (a .jsonl of prompt/completion records), which
        only this task reads (`tasks.dataset_task`)."""
        return cls().kind_of(Path(path)) == "instruction"

    def targets(self, text: TextData, labels: Tensor, ids: Tensor) -> Tensor:
        return next_token_targets(labels)

    def fit_to_teacher(self, teacher: LoadedModel, data: TextData) -> TokenData:
        """Refuses a teacher that is not a causal LM and data without a token to predict; then
        tokenises (`TextTask.fit_to_teacher`)."""
        if not is_causal_lm(teacher.module):
            name = type(unwrap(teacher.module)).__name__
            raise IncompatibleDataError(
                f"causal_lm needs a language model teacher (a *ForCausalLM or *LMHeadModel "
                f"checkpoint); this teacher is {name}. Upload the checkpoint with its LM head "
                "(config.json's architectures, e.g. GPT2LMHeadModel, LlamaForCausalLM)"
            )
        tokens = super().fit_to_teacher(teacher, data)
        if not bool((tokens.labels >= 0).any()):
            where = "completion" if data.kind == "instruction" else "text"
            raise DatasetError(
                f"no row has a {where} token to predict after tokenising at max_length "
                f"{self.max_length()}: rows need at least 2 tokens (instruction data: a "
                "completion inside max_length); raise max_length or upload longer texts"
            )
        self.teacher = teacher.module
        self.positions = int(teacher.input_shape[0])
        config = teacher.config if isinstance(teacher.config, dict) else {}
        self.vocab = int(config.get("vocab_size") or 0)
        return tokens

    def output_size(self, data: TokenData) -> int:
        """The teacher's vocabulary (its logits' width)."""
        if self.vocab:
            return self.vocab
        return int(data.tokenizer.get_vocab_size(with_added_tokens=True))

    def inspect_output(self, output_shape: list[int] | None) -> dict[str, Any]:
        """`vocab_size` of per-token logits [L, V]; anything else is refused."""
        if output_shape is None or len(output_shape) != 2:
            raise ValueError(
                f"the model outputs {output_shape} per sample; a causal language model outputs "
                "logits [tokens, vocabulary]"
            )
        return {"vocab_size": int(output_shape[1])}

    def demo(self, out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
        """A 4-block GPT-2 trained on standard-library docstrings (`lm_demo.make_lm_demo`)."""
        from worker.engine.tasks.text.lm_demo import make_lm_demo

        return make_lm_demo(out_dir, seed)

    # -- metrics ------------------------------------------------------------------------------
    def _scores(
        self, model: nn.Module, data: TokenData, autocast: Autocast | None = None
    ) -> tuple[float, int, Tensor]:
        """(NLL sum, counted tokens, argmax next tokens [N, L] with -1 where none counts) of
        `model` on `data`, in batches of _VAL_BATCH on the model's device."""
        device, n = _device(model), len(data)
        preds = torch.full(data.labels.shape, -1, dtype=torch.long)
        nll, count = 0.0, 0
        for i in range(0, n, _VAL_BATCH):
            idx = torch.arange(i, min(i + _VAL_BATCH, n))
            batch = self.batch(data, idx, device)
            with torch.inference_mode(), autocast() if autocast else contextlib.nullcontext():
                logits = model(batch.inputs)
            s, c = token_nll(logits, batch.targets)
            nll, count = nll + s, count + c
            width = batch.targets.shape[1]
            preds[idx, :width] = logits.argmax(-1).cpu().masked_fill(batch.targets.cpu() < 0, -1)
        return nll, count, preds

    def _teacher_reference(self, data: TokenData, autocast: Autocast) -> Tensor | None:
        """The teacher's argmax next tokens on the validation `data` (computed once, or
        replayed)."""
        if self._replay is not None:
            return self._replay.reference_for(data)
        if self.teacher is None:
            return None
        if self._reference is None or self._reference[0] is not data:
            was = self.teacher.training
            self.teacher.eval()
            try:
                self._reference = (data, self._scores(self.teacher, data, autocast)[2])
            finally:
                self.teacher.train(was)
        return self._reference[1]

    def validate(
        self,
        student: nn.Module,
        data: TokenData,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> dict[str, float]:
        """val/loss, val/perplexity, val/agreement (with the teacher's argmax); records the
        student's continuations of the sample prompts (`epoch_samples`)."""
        student.eval()
        try:
            nll, count, preds = self._scores(student, data, autocast)
            metrics = {"val/loss": nll / max(count, 1), "val/perplexity": perplexity(nll, count)}
            reference = self._teacher_reference(data, autocast)
            if reference is not None:
                same = ((preds == reference) & (reference >= 0)).sum()
                metrics["val/agreement"] = float(same) / max(count, 1)
            self._epochs.setdefault(student, []).append(self._continuations(student, data))
        finally:
            student.train()
        return metrics

    def epoch_samples(self, student: nn.Module) -> list[list[str]]:
        """The student's continuations of the sample prompts after each validation this task
        ran on it (epoch 0, 1, ...; a resumed run's list starts at its resumed epoch)."""
        return list(self._epochs.get(student, []))

    def live_samples(self, student: nn.Module, data: TokenData, epoch: int) -> list[dict[str, Any]]:
        """The sample prompts with the reference, the teacher's continuation (generated once)
        and the student's after its latest validation (`validate` records it), which was
        epoch `epoch`'s (kept: the evaluation's samples number the epochs with it)."""
        latest = self.epoch_samples(student)
        if not latest:
            return []
        numbers = self._numbers.setdefault(student, [])
        numbers += [-1] * (len(latest) - len(numbers))
        numbers[-1] = epoch
        teacher = self._teacher_continuations(data)
        return [
            {
                "index": i,
                "prompt": self._decode(data, prompt),
                "reference": self._decode(data, reference),
                "teacher": teacher[i] if i < len(teacher) else None,
                "student": latest[-1][i],
            }
            for i, (prompt, reference) in enumerate(self.sample_prompts(data))
            if i < len(latest[-1])
        ]

    def _teacher_continuations(self, data: TokenData) -> list[str]:
        """The teacher's continuations of the sample prompts of `data`, generated once (or
        replayed; no teacher seen: none)."""
        if self._replay is not None:
            return list(self._replay.continuations)
        if self.teacher is None:
            return []
        if self._teacher_samples is None or self._teacher_samples[0] is not data:
            was = self.teacher.training
            self.teacher.eval()
            try:
                self._teacher_samples = (data, self._continuations(self.teacher, data))
            finally:
                self.teacher.train(was)
        return self._teacher_samples[1]

    # -- samples and evaluation ---------------------------------------------------------------
    def sample_prompts(self, data: TokenData, n: int = SAMPLES) -> list[tuple[Tensor, Tensor]]:
        """(prompt ids, reference ids) of the first `n` rows: instruction data's prompt and
        completion; a text's first half (at most SAMPLE_PROMPT tokens) and the rest."""
        out = []
        for i in range(min(n, len(data))):
            real = _real(data.ids[i])
            counted = (data.labels[i] >= 0).nonzero()
            if data.text.kind == "instruction" and len(counted):
                cut = int(counted[0]) + 1  # the position before the completion's first token
            else:
                cut = max(1, min(len(real) // 2, SAMPLE_PROMPT))
            out.append((real[:cut], real[cut:]))
        return out

    def _decode(self, data: TokenData, ids: Tensor) -> str:
        tokenizer = data.tokenizer or self.tokenizer
        return str(tokenizer.decode([int(t) for t in ids], skip_special_tokens=True))

    def _continuations(self, model: nn.Module, data: TokenData) -> list[str]:
        """`model`'s greedy continuations of the sample prompts, decoded."""
        texts = []
        for prompt, _ in self.sample_prompts(data):
            new = max(0, min(SAMPLE_NEW_TOKENS, (self.positions or 10**9) - len(prompt)))
            texts.append(self._decode(data, greedy(model, prompt[None], new)[0]))
        return texts

    def _speed(self, model: nn.Module, data: TokenData) -> dict[str, float]:
        """Tokens a second at each of SPEED_BATCHES (prompts: the first SPEED_PROMPT tokens of
        the longest validation rows, repeated to fill the batch)."""
        lengths = (data.ids != PAD).sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        width = max(1, min(SPEED_PROMPT, int(lengths.max())))
        new = max(1, min(SPEED_NEW_TOKENS, (self.positions or 10**9) - width))
        rows = data.ids[order[: max(SPEED_BATCHES)], :width].clamp_min(0)
        out = {}
        for b in SPEED_BATCHES:
            prompt = rows[torch.arange(b) % len(rows)]
            out[f"b{b}"] = tokens_per_second(model, prompt, new)
        return out

    def evaluate(
        self, teacher: nn.Module, student: nn.Module, data: TokenData, **options: Any
    ) -> dict[str, Any]:
        """Perplexities, next-token agreement, tokens/s and samples (module doc)."""
        modes = (teacher.training, student.training)
        teacher.eval(), student.eval()
        replay = self._replay if is_shell(teacher) else None
        if is_shell(teacher) and replay is None:
            raise ValueError("the teacher was not loaded and no record of it is replayed")
        try:
            if replay is not None:
                t_nll, count, t_pred = replay.nll, replay.count, replay.reference_for(data)
                t_speed = dict(replay.speed)
            else:
                t_nll, count, t_pred = self._scores(teacher, data)
                t_speed = self._speed(teacher, data)
            if teacher is self.teacher and replay is None:
                self._teacher_eval = {"nll": t_nll, "count": count, "speed": t_speed}
                self._reference = (data, t_pred)
            s_nll, _, s_pred = self._scores(student, data)
            same = int(((t_pred == s_pred) & (t_pred >= 0)).sum())
            result: dict[str, Any] = {
                "teacher_perplexity": perplexity(t_nll, count),
                "student_perplexity": perplexity(s_nll, count),
                "teacher_loss": t_nll / max(count, 1),
                "student_loss": s_nll / max(count, 1),
                "next_token_agreement": same / max(count, 1),
                "eval_tokens": count,
            }
            for who, speed in (("teacher", t_speed), ("student", self._speed(student, data))):
                for b, rate in speed.items():
                    suffix = "" if b == "b1" else f"_{b}"
                    result[f"{who}_tokens_per_s{suffix}"] = rate
            gen = all(_can_generate(unwrap(m)) for m in (teacher, student))
            result["tokens_per_s_method"] = "generate" if gen else "forward"
            result["tokens_per_s_new_tokens"] = SPEED_NEW_TOKENS
            result["samples"] = self._samples(teacher, student, data)
        finally:
            teacher.train(modes[0]), student.train(modes[1])
        return result

    def _samples(
        self, teacher: nn.Module, student: nn.Module, data: TokenData
    ) -> list[dict[str, Any]]:
        """The sample prompts with the reference and both models' continuations, and the
        student's after each epoch."""
        # the run's teacher: its continuations were made once (or are replayed)
        same = teacher is self.teacher or self._replay is not None
        t_text = self._teacher_continuations(data) if same else self._continuations(teacher, data)
        s_text = self._continuations(student, data)
        epochs = self.epoch_samples(student)
        told = self._numbers.get(student, [])
        numbers = (
            told
            if len(told) == len(epochs) and all(n >= 0 for n in told)
            else list(range(len(epochs)))
        )  # a resumed run's epochs go on from the one it resumed at
        samples = []
        for i, (prompt, reference) in enumerate(self.sample_prompts(data)):
            samples.append(
                {
                    "index": i,
                    "mime": "text/plain",
                    "prompt": self._decode(data, prompt),
                    "reference": self._decode(data, reference),
                    "teacher": t_text[i],
                    "student": s_text[i],
                    "epochs": [
                        {"epoch": e, "student": texts[i]}
                        for e, texts in zip(numbers, epochs, strict=True)
                        if i < len(texts)
                    ],
                }
            )
        return samples

    # -- the teacher's record (a replaying run without the teacher) --------------------------
    def teacher_record(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The run's teacher's validation NLL and counted tokens, tokens/s, sample
        continuations and argmax next tokens on the validation split, once `evaluate` ran on
        it (`Task.teacher_record`)."""
        if self._teacher_eval is None or self._reference is None or self._teacher_samples is None:
            return None
        record = {**self._teacher_eval, "continuations": list(self._teacher_samples[1])}
        return record, {"reference": self._reference[1].numpy().astype(np.int32)}

    def replay_teacher(self, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Validation's agreement, the live samples' and the evaluation's teacher side from
        `teacher_record`'s output of an earlier run (`Task.replay_teacher`)."""
        self._replay = _TeacherReplay(
            nll=float(record["nll"]),
            count=int(record["count"]),
            speed={str(k): float(v) for k, v in record["speed"].items()},
            continuations=[str(t) for t in record["continuations"]],
            reference=torch.from_numpy(arrays["reference"].astype(np.int64)),
        )


@dataclass
class _TeacherReplay:
    """An earlier run's record of the teacher on the validation split (`replay_teacher`)."""

    nll: float
    count: int
    speed: dict[str, float]
    continuations: list[str]
    reference: Tensor  # argmax next tokens [N, L], -1 where no token counts

    def reference_for(self, data: TokenData) -> Tensor:
        """The argmax next tokens of `data`, which must be the split they were recorded on."""
        if tuple(self.reference.shape) != tuple(data.labels.shape):
            raise ValueError(
                f"the teacher's recorded validation tokens are {list(self.reference.shape)}, "
                f"this run's validation split is {list(data.labels.shape)}: the cache is not "
                "this run's; set training.teacher_cache to 'off' to run the teacher"
            )
        return self.reference
