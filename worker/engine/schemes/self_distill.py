"""Self-distillation: the `self` scheme, in the two forms of the seeds (`mode`).

`born_again` (Furlanello, Lipton, Tschannen, Itti, Anandkumar. Born-Again Neural Networks,
ICML 2018): `generations` rounds of `training.epochs` each (the trainer runs `rounds()` rounds
and calls `start_round` before each later one's first step, clearing the optimizer's state and
restarting the LR schedule). Generation 1 is taught by the run's teacher, exactly as `offline`.
Before generation k+1 the student's final weights are kept (frozen, as generation k) and the
same student module is re-initialised in place under a seed derived from the run's
(`online.fresh_copy`: a zoo student's own initialisation), so the trainer's taps and the
optimizer's parameters stay the same objects. Generation k+1's teacher logits are generation
k's (`ensemble_last`: the last generation's are the mean of the logits of every earlier
generation); the configured losses read them as they read a teacher's. A checkpoint holds the
generation index and every finished generation's weights, so a resume continues in the right
generation with the right teachers. The pipeline exports each earlier generation k as
`gen{k}_student.*` with its own evaluation (evaluation.json `generations`); the last one is the
run's student.

`deep_supervision` (Zhang, Song, Gao, Chen, Bao, Ma. Be Your Own Teacher, ICCV 2019): an
auxiliary head (1x1 bottleneck conv + BN + ReLU to the deepest stage's channels, global average
pool, linear) on the end of every spatial stage but the deepest (the stages `taps.inspect_model`
finds). Head i adds

    ce_weight * CE(z_i, y) + kd_weight * T^2 KL(softmax(z / T) || softmax(z_i / T))
        + hint_weight * ||pool(adapter_i(f_i)) - pool(f_deepest)||^2 (mean)

with z the student's own (deepest) logits and f_deepest the deepest stage's output, both
detached: the heads and, through them, the shallow stages learn from the deepest head. The
heads live in the scheme, not in the student, so the exported student is exactly the trained
backbone. The stage outputs are tapped only within a training step: `teacher_outputs` (called
just before the student's forward) attaches the taps and `combine` reads and removes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.schemes.base import Autocast, StepView
from worker.engine.schemes.offline import OfflineScheme, freeze
from worker.engine.schemes.online import SEED_STRIDE, fresh_copy
from worker.engine.taps import FeatureTaps, inspect_model

MODES = ("born_again", "deep_supervision")


class AuxHead(nn.Module):
    """A shallow exit: bottleneck 1x1 conv to `width` channels, BN, ReLU, pool, linear."""

    def __init__(self, channels: int, width: int, classes: int) -> None:
        super().__init__()
        self.adapter = nn.Sequential(
            nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.fc = nn.Linear(width, classes)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, pooled adapted feature)."""
        pooled = F.adaptive_avg_pool2d(self.adapter(feature), 1).flatten(1)
        return self.fc(pooled), pooled


class HeadExit(nn.Module):
    """The student up to stage i's end, then auxiliary head i: a model of its own, to validate."""

    def __init__(self, student: nn.Module, ends: list[str], head: nn.Module, i: int) -> None:
        super().__init__()
        self.student, self.head, self.ends, self.i = student, head, ends, i

    def forward(self, x: Tensor) -> Tensor:
        with FeatureTaps(self.student, [(p, "output") for p in self.ends], "student") as taps:
            self.student(x)
            logits: Tensor = self.head(taps.features[self.i])[0]
            return logits


def stage_ends(student: nn.Module) -> tuple[list[str], list[int]]:
    """The paths ending the student's spatial stages (as `inspect_model` finds them), in order,
    and the student's input shape.

    Raises ValueError when the student's input shape is unknown or it has fewer than 2.
    """
    shape = getattr(student, "input_shape", None)
    if shape is None:
        raise ValueError(
            "self/deep_supervision needs a zoo or derived student (its input shape tells "
            "where its stages end)"
        )
    with torch.random.fork_rng(devices=[]):
        stages = inspect_model(student, list(shape))["stages"]
    ends = [s["end"] for s in stages if s["resolution"] is not None and s["end"]]
    if len(ends) < 2:
        raise ValueError(
            f"self/deep_supervision needs a student with at least 2 stages; this one has "
            f"{len(ends)}; use a CNN student (resnet, wrn, vgg, mobilenetv2, shufflenet)"
        )
    return ends, [int(s) for s in shape]


class SelfScheme(OfflineScheme):
    """Born-again generations or deep-supervision heads (`mode`)."""

    def __init__(
        self,
        mode: str = "born_again",
        generations: int = 2,
        ensemble_last: bool = False,
        temperature: float = 3.0,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        hint_weight: float = 0.1,
    ) -> None:
        super().__init__(
            mode=mode,
            generations=generations,
            ensemble_last=ensemble_last,
            temperature=temperature,
            ce_weight=ce_weight,
            kd_weight=kd_weight,
            hint_weight=hint_weight,
        )
        if mode not in MODES:
            raise ValueError(f"self: mode must be one of {list(MODES)}, got {mode!r}")
        if not 1 <= int(generations) <= 5:
            raise ValueError(f"self: generations must be in [1, 5], got {generations}")
        self.mode, self.n_generations = mode, int(generations)
        self.ensemble_last = bool(ensemble_last)
        self.temperature = float(temperature)
        self.weights = (float(ce_weight), float(kd_weight), float(hint_weight))
        self.generation = 0  # born_again: the generation training now, 0-based
        self.elders = nn.ModuleList()  # born_again: finished generations, frozen
        self.heads = nn.ModuleList()  # deep_supervision
        self.ends: list[str] = []
        self.base_seed = 0
        self._taps: FeatureTaps | None = None

    # -- setup ---------------------------------------------------------------------------------

    def setup(self, teacher: nn.Module, student: nn.Module, losses: nn.ModuleList) -> None:
        super().setup(teacher, student, losses)
        self.base_seed = torch.initial_seed()
        if self.mode == "deep_supervision":
            self._build_heads(student)
        elif self.n_generations > 1:  # refuse now, not after the first generation trained
            try:
                fresh_copy(student, self.generation_seed(1))
            except ValueError:
                raise ValueError(
                    "self/born_again: the student has no layers that can be re-initialised "
                    "(reset_parameters), so no later generation could start fresh; use a zoo "
                    "or derived student"
                ) from None

    def _build_heads(self, student: nn.Module) -> None:
        self.ends, shape = stage_ends(student)
        with (
            torch.random.fork_rng(devices=[]),
            FeatureTaps(student, [(p, "output") for p in self.ends], side="student") as taps,
        ):
            was_training = student.training
            student.eval()
            with torch.no_grad():
                param = next(student.parameters())
                logits = student(torch.zeros(2, *shape, dtype=param.dtype, device=param.device))
                channels = [int(f.shape[1]) for f in taps.features]
            student.train(was_training)
        classes, width = int(logits.shape[1]), channels[-1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.base_seed + SEED_STRIDE) % 2**63)
            self.heads = nn.ModuleList(AuxHead(c, width, classes) for c in channels[:-1])
        self.heads.train(student.training)

    def rounds(self) -> int:
        return self.n_generations if self.mode == "born_again" else 1

    def extra_modules(self) -> list[nn.Module]:
        return [self.heads, self.elders]

    def trained_modules(self) -> list[nn.Module]:
        return [self.student, self.losses, self.heads]

    # -- born again ----------------------------------------------------------------------------

    def generation_seed(self, generation: int) -> int:
        """The seed generation `generation` (0-based, > 0) is initialised under."""
        return (self.base_seed + generation * SEED_STRIDE) % 2**63

    def start_round(self, index: int) -> None:
        """Finish the generations before `index` (keeping the student's weights frozen as the
        last) and re-initialise the student for generation `index`; a no-op when already done
        (a resume that stopped right after it)."""
        while self.generation < index:
            self.elders.append(self._frozen(self.student.state_dict()))
            fresh = fresh_copy(self.student, self.generation_seed(self.generation + 1))
            self.student.load_state_dict(fresh.state_dict())
            self.generation += 1

    def teachers_now(self) -> list[nn.Module]:
        """The models whose mean logits teach the current generation (none: the run's
        teacher)."""
        if self.mode != "born_again" or self.generation == 0:
            return []
        last = self.generation == self.n_generations - 1
        return list(self.elders) if self.ensemble_last and last else [self.elders[-1]]

    def earlier_students(self) -> list[nn.Module]:
        return list(self.elders)

    # -- the step ------------------------------------------------------------------------------

    def teacher_outputs(
        self, x: Tensor, taps: Any, needed: bool, autocast: Autocast
    ) -> tuple[Tensor, list[Tensor]]:
        if self.heads and self.student.training:
            self._close_taps()
            self._taps = FeatureTaps(self.student, [(p, "output") for p in self.ends], "student")
            self._taps.__enter__()
        teachers = self.teachers_now()
        if not teachers:
            return super().teacher_outputs(x, taps, needed, autocast)
        if not needed:
            return x.new_empty(0), []
        with torch.inference_mode(), autocast():
            logits = torch.stack([t(x).float() for t in teachers]).mean(0)
        return logits.clone(), []

    def _close_taps(self) -> list[Tensor]:
        if self._taps is None:
            return []
        feats = []
        with contextlib.suppress(RuntimeError):  # no forward ran: nothing to read
            feats = self._taps.features
        self._taps.__exit__(None, None, None)
        self._taps = None
        return feats

    def combine(self, values: dict[str, Tensor], view: StepView) -> dict[str, Tensor]:
        feats = self._close_taps()
        if not self.heads:
            return values
        ce_w, kd_w, hint_w = self.weights
        t = self.temperature
        deepest = F.log_softmax(view.student_logits.detach().float() / t, dim=1)
        target = F.adaptive_avg_pool2d(feats[-1].detach().float(), 1).flatten(1)
        terms: dict[str, Tensor] = {}
        with view.autocast():
            outs = [head(f) for head, f in zip(self.heads, feats[:-1], strict=True)]
        for i, (logits, pooled) in enumerate(outs):
            logits = logits.float()
            terms[f"head{i}/ce"] = ce_w * F.cross_entropy(logits, view.targets)
            log_p = F.log_softmax(logits / t, dim=1)
            kl = F.kl_div(log_p, deepest, reduction="batchmean", log_target=True)
            terms[f"head{i}/kd"] = kd_w * kl * t * t
            terms[f"head{i}/hint"] = hint_w * F.mse_loss(pooled.float(), target)
        return {**values, **terms}

    def validate_extra(self, validate: Callable[[nn.Module], dict[str, float]]) -> dict[str, float]:
        """Every head's validation metrics as `val/head{i}/<metric>` (deep supervision)."""
        metrics: dict[str, float] = {}
        for i, head in enumerate(self.heads):
            exit_i = HeadExit(self.student, self.ends, head, i)
            for name, value in validate(exit_i).items():
                group, sep, rest = name.partition("/")
                metrics[f"{group}/head{i}/{rest}" if sep else f"head{i}/{name}"] = value
        return metrics

    def head_logits(self, x: Tensor) -> list[Tensor]:
        """Every auxiliary head's logits for `x` (no grad; for evaluation and tests)."""
        with (
            torch.no_grad(),
            FeatureTaps(self.student, [(p, "output") for p in self.ends], "student") as taps,
        ):
            self.student(x)
            return [head(f)[0] for head, f in zip(self.heads, taps.features[:-1], strict=True)]

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.mode == "born_again":
            state["generation"] = self.generation
            state["generations"] = [e.state_dict() for e in self.elders]
        else:
            state["heads"] = self.heads.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.mode == "deep_supervision":
            self.heads.load_state_dict(state["heads"])
            return
        finished = state["generations"]
        if int(state["generation"]) != len(finished) or len(finished) >= self.n_generations:
            raise RuntimeError(
                f"the checkpoint is in generation {int(state['generation']) + 1} with "
                f"{len(finished)} finished; this run trains {self.n_generations}"
            )
        self.elders = nn.ModuleList(self._frozen(sd) for sd in finished)
        self.generation = len(finished)

    def _frozen(self, weights: dict[str, Tensor]) -> nn.Module:
        """A frozen model of the student's architecture holding a copy of `weights`."""
        elder = fresh_copy(self.student, self.base_seed)  # rebuilt: no hooks of the trainer's
        elder.load_state_dict(weights)
        freeze(elder)
        return elder.to(next(self.student.parameters()).device)
