"""Training schemes, declared once (torch-free): name, help, parameters, implementation.

A scheme decides which models train, the teachers' grad mode, the optimizer's parameter groups,
what a step combines and what a checkpoint holds (`worker.engine.schemes.base.Scheme`). The
engine builds the one a run config names (`RunConfig.scheme`) from `implementation`, a
"module:Class" string imported only when a run needs it (`Entry.load`), so this module stays
torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.catalog.losses import LOSSES
from core.catalog.params import Entry, param
from core.catalog.students import STUDENTS
from core.catalog.tasks import TASKS

DEFAULT = "offline"


@dataclass(frozen=True)
class SchemeEntry(Entry):
    """One training scheme: what the UI shows and where the engine finds its class."""

    kind: str = "scheme"
    feature_losses: bool = True  # whether it runs losses on layer pairs (else logit losses only)
    run_check: str = ""  # a key of RUN_CHECKS: why a run config cannot run it

    def extra_json(self) -> dict[str, Any]:
        return {"feature_losses": self.feature_losses}


# online: the catalog logit losses that can stand for the mutual KL (a peer in the teacher's
# place), and the feature losses between peers (not ft / ka: they pre-train on a teacher's
# features before the first step, which peers that train together do not have)
# the peers' logits are class scores [N, classes]: a loss only a dense task can use (pixel_kd,
# cwd: `TaskEntry.own_losses`) is no mutual term
_TASK_OWN = {n for t in TASKS.values() for n in t.own_losses}
MUTUAL_LOSSES = (
    "kl",
    *(n for n, e in LOSSES.items() if e.kind == "logits" and n != "ce" and n not in _TASK_OWN),
)
PEER_FEATURE_LOSSES = tuple(
    n for n, e in LOSSES.items() if e.kind == "feature" and n not in ("ft", "ka")
)

SCHEMES: dict[str, SchemeEntry] = {
    e.name: e
    for e in [
        SchemeEntry(
            "offline",
            "Offline",
            "A frozen, pre-trained teacher guides the student (the default).",
            implementation="worker.engine.schemes.offline:OfflineScheme",
        ),
        SchemeEntry(
            "online",
            "Online (deep mutual learning)",
            "2 to 8 peers, copies of the student initialised independently, train together: "
            "each with the configured losses (its task loss, and the teacher's terms when a "
            "loss reads the teacher; losses: [ce] for no teacher) plus a mutual term towards "
            "every other peer's current, detached prediction (KL, or the catalog logit loss "
            "mutual_loss). Features between peers: peer_layers names student layers (e.g. "
            "layer2,layer3), the same in every peer; each peer's output there is pulled towards "
            "the other peers' current, detached outputs at the same layer by the feature loss "
            "peer_loss (its catalog defaults; shapes match, so no connector), weighted by "
            "peer_weight. The configured losses are logit losses (layer_pairs are the "
            "teacher's; use peer_layers).",
            (
                param("peers", "int", 2, "How many students train together.", 2, 8),
                param(
                    "weight",
                    "float",
                    1.0,
                    "Weight of each peer's mutual term (the mean KL towards the other peers).",
                    0.0,
                    100.0,
                ),
                param(
                    "temperature",
                    "float",
                    1.0,
                    "Softmax temperature of the mutual KL (scaled by T^2); the paper uses 1.",
                    0.1,
                    20.0,
                ),
                param(
                    "mutual_loss",
                    "choice",
                    "kl",
                    "The mutual term on logits: kl (the paper's), or a catalog logit loss with "
                    "the other peer's detached logits as its teacher's (its catalog defaults; "
                    "temperature: the scheme's).",
                    choices=MUTUAL_LOSSES,
                ),
                param(
                    "peer_layers",
                    "str",
                    "",
                    "Student layers whose outputs the peers match, module paths of the student's "
                    "layer table separated by commas (e.g. layer2,layer3); empty: logits only.",
                ),
                param(
                    "peer_loss",
                    "choice",
                    "feature_l2",
                    "The feature loss between peers at peer_layers (catalog defaults).",
                    choices=PEER_FEATURE_LOSSES,
                ),
                param(
                    "peer_weight",
                    "float",
                    1.0,
                    "Weight of each peer's feature term (the mean of peer_loss towards the "
                    "other peers); at wants about 1000 on 32x32 maps, like its loss weight.",
                    0.0,
                    10000.0,
                ),
            ),
            paper="Zhang, Xiang, Hospedales, Lu. Deep Mutual Learning. CVPR 2018",
            implementation="worker.engine.schemes.online:OnlineScheme",
            feature_losses=False,
            run_check="online",
        ),
        SchemeEntry(
            "self",
            "Self-distillation (born-again / deep supervision)",
            "mode born_again: `generations` students of the same architecture in turn, each "
            "freshly initialised and taught by the one before (the first by the teacher) "
            "through the configured logit losses (e.g. ce + kd), each trained for "
            "training.epochs and exported (gen{k}_student.*; the last is the run's student). "
            "mode deep_supervision: auxiliary heads at the student's stage ends learn from its "
            "deepest head (ce + KL + a feature hint); the heads are dropped at export. "
            "Logit losses only for now.",
            (
                param(
                    "mode",
                    "choice",
                    "born_again",
                    "born_again: generations teach the next; deep_supervision: shallow heads "
                    "learn from the deepest.",
                    choices=("born_again", "deep_supervision"),
                ),
                param(
                    "generations",
                    "int",
                    2,
                    "born_again: how many generations train in turn (each for training.epochs).",
                    1,
                    5,
                ),
                param(
                    "ensemble_last",
                    "bool",
                    False,
                    "born_again: the last generation learns from the mean logits of every "
                    "earlier generation.",
                ),
                param(
                    "temperature",
                    "float",
                    3.0,
                    "deep_supervision: temperature of the heads' KL towards the deepest head.",
                    0.1,
                    20.0,
                ),
                param("ce_weight", "float", 1.0, "deep_supervision: each head's CE.", 0.0, 100.0),
                param(
                    "kd_weight",
                    "float",
                    1.0,
                    "deep_supervision: each head's KL towards the deepest head (times T^2).",
                    0.0,
                    100.0,
                ),
                param(
                    "hint_weight",
                    "float",
                    0.1,
                    "deep_supervision: each head's L2 towards the deepest stage's pooled feature.",
                    0.0,
                    100.0,
                ),
            ),
            paper="Furlanello et al. Born-Again Neural Networks. ICML 2018; Zhang et al. Be "
            "Your Own Teacher: Improve the Performance of CNNs via Self Distillation. ICCV 2019",
            implementation="worker.engine.schemes.self_distill:SelfScheme",
            feature_losses=False,
            run_check="self",
        ),
        SchemeEntry(
            "multi_teacher",
            "Multi-teacher (fixed or confidence-aware weights)",
            "2 to 8 frozen teachers of the same classes and input shape: the run's `teacher` "
            "(its layer pairs: `layer_pairs`, with the configured feature losses) and 1 to 7 "
            "more under `teachers: [{model_id, weight, pairs}]`. The scheme adds the weighted KD "
            "term  kd_weight * T^2 * mean_i sum_k w_ik KL(softmax(z_k,i/T) || softmax(s_i/T))  "
            "and, for each extra teacher's pairs, a hint  feature_weight * mean_i sum_k w_ik "
            "||r_k(f_s,i) - f_k,i||^2 / dim  (r_k: a connector). weighting fixed: w_ik = the "
            "teachers' weights normalised to sum 1; confidence (CA-MKD): per sample, w_ik = "
            "softmax over teachers k of -CE(z_k,i, y_i). Configured losses: ce and feature "
            "losses (kd and other logit losses are the scheme's own term).",
            (
                param(
                    "weighting",
                    "choice",
                    "confidence",
                    "fixed: each teacher's weight, normalised; confidence: per sample, softmax "
                    "over teachers of minus each teacher's cross-entropy (CA-MKD).",
                    choices=("fixed", "confidence"),
                ),
                param(
                    "teacher_weight",
                    "float",
                    1.0,
                    "fixed weighting: the run's teacher's weight (the others' are in teachers).",
                    0.0,
                    100.0,
                ),
                param(
                    "kd_weight",
                    "float",
                    1.0,
                    "Weight of the teachers' weighted KD term.",
                    0.0,
                    100.0,
                ),
                param(
                    "temperature", "float", 4.0, "Softmax temperature of the KD term.", 0.1, 20.0
                ),
                param(
                    "feature_weight",
                    "float",
                    1.0,
                    "Weight of the extra teachers' hint terms on their pairs.",
                    0.0,
                    1000.0,
                ),
            ),
            paper="Zhang, Chen, Wang. Confidence-Aware Multi-Teacher Knowledge Distillation. "
            "ICASSP 2022 (weights: w_k = softmax_k(-CE(z_k, y)))",
            implementation="worker.engine.schemes.multi_teacher:MultiTeacherScheme",
            run_check="multi_teacher",
        ),
        SchemeEntry(
            "netaug",
            "Network augmentation (NetAug)",
            "The tiny student trains as itself and as the leading slice of wider models that "
            "share its weights: each step adds to its configured losses alpha times the same "
            "configured logit losses (ce, kd, ...) of one augmented model, its width sampled "
            "from `widths` (multiples of the student's). Loss: L(W_tiny) + alpha * "
            "L([W_tiny, W_aug]). Only the tiny student is exported; its weights are the shared "
            "slice. Needs a zoo or derived student of mlp, resnet, wrn or vgg.",
            (
                param(
                    "widths",
                    "str",
                    "1.5,2,3",
                    "Augmentation widths, multiples of the student's width in (1, 8], "
                    "separated by commas; one is sampled per step.",
                ),
                param(
                    "alpha",
                    "float",
                    1.0,
                    "Weight of the augmented model's loss (the paper's alpha, 1 by default).",
                    0.0,
                    100.0,
                ),
            ),
            paper="Cai, Gan, Lin, Han. Network Augmentation for Tiny Deep Learning. ICLR 2022",
            implementation="worker.engine.schemes.netaug:NetAugScheme",
            run_check="netaug",
        ),
        SchemeEntry(
            "split",
            "Split computing (head network distillation)",
            "A small head with a bottleneck of few channels replaces the teacher's layers up to "
            "split_at and learns to reproduce the teacher's feature there (feature_weight * MSE); "
            "the teacher's tail (the layers after split_at) stays frozen and serves the rest, so "
            "the deployed model is head + tail: the device runs the head up to the bottleneck "
            "and sends it, the server runs the rest. The configured logit losses (ce, kd, ...) "
            "apply to the end-to-end output, through the frozen tail; the run's student setting "
            "is not used (the head is built from the split point's shape). The evaluation gives "
            "end-to-end accuracy, the bottleneck's bytes per sample (float32 and 8-bit) and the "
            "head's CPU latency at batch 1; head.safetensors and head.pt2 hold the head.",
            (
                param(
                    "split_at",
                    "str",
                    "",
                    "The teacher layer whose output the head reproduces (a module path of its "
                    "layer table, e.g. layer1); empty: the end of its first spatial stage.",
                ),
                param(
                    "bottleneck",
                    "int",
                    4,
                    "Channels of the bottleneck the device sends (at the split point's "
                    "resolution): fewer channels, fewer bytes per sample.",
                    1,
                    512,
                ),
                param(
                    "feature_weight",
                    "float",
                    1.0,
                    "Weight of the MSE between the head's output and the teacher's feature at "
                    "split_at (the paper's only loss).",
                    0.0,
                    100.0,
                ),
            ),
            paper="Matsubara, Baidya, Callegaro, Levorato, Singh. Distilled Split Deep Neural "
            "Networks for Edge-Assisted Real-Time Systems. HotEdgeVideo 2019",
            implementation="worker.engine.schemes.split:SplitScheme",
            feature_losses=False,
            run_check="split",
        ),
        SchemeEntry(
            "on_policy",
            "On-policy (GKD, language models)",
            "Offline distillation of a causal LM in which a fraction lmbda of the steps (drawn "
            "per step from the run's seed, so a resumed run makes the same) train on the "
            "student's own sampled continuations of the batch's prompts instead of the "
            "dataset's: the student samples in eval mode without gradient (temperature, at most "
            "max_new_tokens, stopped after its end-of-sequence token), the teacher scores the "
            "new sequences and the configured token divergence (gkd_jsd with beta, kd, "
            "reverse_kl, skew_kl, tvd) applies on the generated tokens only. Prompts: "
            "instruction data's prompt; plain text: the first half of each row. lmbda 0 is the "
            "offline scheme exactly. ce on an on-policy step fits the student's own samples: "
            "leave it out. Task causal_lm.",
            (
                param(
                    "lmbda",
                    "float",
                    0.5,
                    "Fraction of the steps on the student's own continuations (GKD's lambda; "
                    "0: off-policy only, 1: always on-policy).",
                    0.0,
                    1.0,
                ),
                param(
                    "temperature",
                    "float",
                    0.9,
                    "Sampling temperature of the student's continuations (TRL's default 0.9; "
                    "the loss's own temperature is the loss's parameter).",
                    0.05,
                    10.0,
                ),
                param(
                    "max_new_tokens",
                    "int",
                    128,
                    "Longest continuation sampled per prompt, in tokens (cut to the models' "
                    "positions).",
                    1,
                    4096,
                ),
            ),
            paper="Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist, Bachem. On-Policy "
            "Distillation of Language Models: Learning from Self-Generated Mistakes. ICLR 2024",
            implementation="worker.engine.schemes.on_policy:OnPolicyScheme",
            run_check="on_policy",
        ),
    ]
}


def self_problem(run: Any) -> str | None:
    """Why a run config cannot run the `self` scheme (None when it can)."""
    params = {**SCHEMES["self"].defaults(), **run.scheme_params}
    if params["mode"] == "born_again":
        if all(loss.name == "ce" for loss in run.losses):
            return (
                "scheme 'self' (born_again): with losses [ce] alone no generation learns from "
                "the one before; add a loss that reads the teacher's logits, e.g. kd"
            )
        reads_model = [loss.name for loss in run.losses if LOSSES[loss.name].kind == "other"]
        if reads_model and params["generations"] > 1:
            return (
                f"scheme 'self' (born_again): {reads_model} read the run's teacher model itself "
                "(its weights or gradients), not the generation before; use logit losses "
                "(ce, kd, dkd, ...) or generations: 1"
            )
        return None
    student = run.student
    if student.source == "zoo":
        entry = STUDENTS.get(student.architecture)
        if entry is not None and entry.kind != "cnn":
            return (
                f"scheme 'self' (deep_supervision) needs a student with at least 2 stages; "
                f"'{student.architecture}' ({entry.kind}) has none; use a CNN student (resnet, "
                "wrn, vgg, mobilenetv2, shufflenet) or mode born_again"
            )
    return None


RUN_CHECKS = {"self": self_problem}


def peer_layers(text: Any) -> list[str]:
    """online's `peer_layers` as a list: module paths separated by commas, blanks dropped."""
    return [part.strip() for part in str(text).replace(";", ",").split(",") if part.strip()]


def online_problem(run: Any) -> str | None:
    """Why a run config cannot run the `online` scheme (None when it can); the layers of
    peer_layers are checked against the student's layer table where it is known (the API)."""
    paired = [loss.name for loss in run.losses if LOSSES[loss.name].needs_pairs]
    if paired:
        return (
            f"scheme 'online': {paired} match features on layer_pairs, which scheme 'online' "
            "does not run; match features between peers with scheme_params.peer_layers (e.g. "
            "layer2,layer3) and peer_loss (e.g. feature_l2, at), and keep logit losses in losses"
        )
    layers = peer_layers(run.scheme_params.get("peer_layers", ""))
    repeated = sorted({name for name in layers if layers.count(name) > 1})
    if repeated:
        return f"scheme 'online': peer_layers names {repeated} more than once; give each once"
    return None


RUN_CHECKS["online"] = online_problem


NETAUG_FAMILIES = ("mlp", "resnet", "wrn", "vgg")


def netaug_problem(run: Any) -> str | None:
    """Why a run config cannot run the `netaug` scheme (None when it can)."""
    params = {**SCHEMES["netaug"].defaults(), **run.scheme_params}
    text = str(params["widths"])
    try:
        widths = [float(w) for w in text.replace(";", ",").split(",") if w.strip()]
    except ValueError:
        widths = []
    if not widths or any(not 1.0 < w <= 8.0 for w in widths):
        return (
            f"scheme 'netaug': widths must be multiples of the student's width in (1, 8], "
            f"separated by commas (e.g. 1.5,2,3); got {text!r}"
        )
    student = run.student
    if student.source == "model":
        return (
            "scheme 'netaug' trains the student inside wider copies of its own architecture; "
            "an uploaded student (source 'model') is a fixed graph that cannot be widened; use "
            f"a zoo or derived student of {', '.join(NETAUG_FAMILIES)}"
        )
    entry = STUDENTS.get(student.architecture) if student.source == "zoo" else None
    if entry is not None and entry.family not in NETAUG_FAMILIES:
        return (
            f"scheme 'netaug' widens the student by adding channels after its first ones; "
            f"'{student.architecture}' ({entry.family}) has grouped or depthwise convolutions "
            f"that do not slice that way; use a student of {', '.join(NETAUG_FAMILIES)}"
        )
    if entry is not None and entry.family == "wrn":
        width = student.kwargs.get("width", entry.width)
        if width == 1.0:
            return (
                f"scheme 'netaug': '{student.architecture}' at width 1 has no shortcut "
                "convolution in its first stage, which every wider twin has, so it is not their "
                "slice; use a width other than 1 (e.g. wrn_16_2) or a resnet"
            )
    reads_model = [loss.name for loss in run.losses if LOSSES[loss.name].kind == "other"]
    if reads_model:
        return (
            f"scheme 'netaug': {reads_model} read the student model itself, which the augmented "
            "wider model is not; use logit and feature losses (ce, kd, fitnets, ...)"
        )
    return None


RUN_CHECKS["netaug"] = netaug_problem


def split_problem(run: Any) -> str | None:
    """Why a run config cannot run the `split` scheme (None when it can)."""
    if run.layer_pairs:
        return (
            "scheme 'split' matches the head's output to the teacher's feature at "
            "scheme_params.split_at itself; remove layer_pairs"
        )
    if run.student.source == "model":
        return (
            "scheme 'split' trains a head it builds from the split point's shape, not the "
            "run's student: leave student at a zoo architecture (source zoo, the default)"
        )
    return None


RUN_CHECKS["split"] = split_problem


def multi_teacher_problem(run: Any) -> str | None:
    """Why a run config cannot run the `multi_teacher` scheme (None when it can)."""
    count = len(run.teachers)
    if not 1 <= count <= 7:
        return (
            f"scheme 'multi_teacher' needs 2 to 8 teachers: `teacher` plus 1 to 7 under "
            f"`teachers: [{{model_id, weight, pairs}}]`; {count} given under teachers"
        )
    logits = [
        loss.name for loss in run.losses if LOSSES[loss.name].kind == "logits" and loss.name != "ce"
    ]
    if logits:
        return (
            f"scheme 'multi_teacher' distils every teacher's logits itself (its kd_weight and "
            f"temperature); remove {logits} from losses (keep ce, and feature losses on "
            "layer_pairs)"
        )
    return None


RUN_CHECKS["multi_teacher"] = multi_teacher_problem


ON_POLICY_TASKS = ("causal_lm",)  # tasks whose student generates continuations


def on_policy_problem(run: Any) -> str | None:
    """Why a run config cannot run the `on_policy` scheme (None when it can)."""
    if run.task not in ON_POLICY_TASKS:
        return (
            f"scheme 'on_policy' samples the student's continuations of text; task "
            f"'{run.task}' is not a language model: use task {' or '.join(ON_POLICY_TASKS)}"
        )
    if all(loss.name == "ce" for loss in run.losses):
        return (
            "scheme 'on_policy': no configured loss reads the teacher, so the student's "
            "continuations teach it nothing; add a token divergence (gkd_jsd, kd, reverse_kl)"
        )
    return None


RUN_CHECKS["on_policy"] = on_policy_problem
