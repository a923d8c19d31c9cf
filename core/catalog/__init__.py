"""The one catalog: every loss, student architecture and training scheme, declared once.

This module imports nothing heavy (no torch). The backend validates run configs against it, the UI
builds its forms from it (`GET /api/v1/catalog`, which serves `as_json()`), and the engine
registers its loss and student implementations under the same names, their constructors taking
the catalog's parameters with the same defaults (the trainer itself is the one scheme,
`offline`); `tests/unit/test_catalog.py` checks the three agree.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ParamType = Literal["float", "int", "bool", "str", "choice"]
LossKind = Literal["logits", "feature", "relation", "other"]


def _short_repr(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters, for error messages about any JSON value."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Param:
    name: str
    type: ParamType
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    def range_text(self) -> str:
        """The parameter's range as `[min, max]` (an open end shown as -inf / inf)."""
        lo = "-inf" if self.min is None else self.min
        hi = "inf" if self.max is None else self.max
        return f"[{lo}, {hi}]"

    def check(self, value: Any) -> str | None:
        """Return an error message if `value` does not fit this parameter, else None.

        Numbers must be finite (no NaN or infinity: JSON bodies may carry them) and in range.
        """
        if self.type == "bool":
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.type in ("float", "int"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"must be a number, got {_short_repr(value)}"
            if not math.isfinite(value):
                return f"must be a finite number in {self.range_text()}, got {value}"
            if self.type == "int" and int(value) != value:
                return f"must be a whole number, got {value!r}"
            if (self.min is not None and value < self.min) or (
                self.max is not None and value > self.max
            ):
                return f"must be in {self.range_text()}, got {value}"
            return None
        if self.type == "choice":
            assert self.choices is not None
            if isinstance(value, str) and value in self.choices:
                return None
            return f"must be one of {list(self.choices)}, got {_short_repr(value)}"
        return None if isinstance(value, str) else f"must be text, got {_short_repr(value)}"


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    help: str
    params: tuple[Param, ...] = ()
    paper: str = ""
    kind: str = ""
    needs_pairs: bool = False  # feature/relation losses read teacher/student layer pairs
    extra: dict[str, Any] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def check_params(self, params: dict[str, Any]) -> list[str]:
        """Errors for unknown or out-of-range parameters, each naming the parameter."""
        known = {p.name: p for p in self.params}
        errors = []
        for key, value in params.items():
            if key not in known:
                errors.append(
                    f"unknown parameter '{key}' for '{self.name}'; it takes: {sorted(known) or 'none'}"
                )
            elif (msg := known[key].check(value)) is not None:
                errors.append(f"parameter '{key}' of '{self.name}' {msg}")
        return errors


def _p(name: str, type_: ParamType, default: Any, help_: str, lo=None, hi=None, choices=None) -> Param:
    return Param(name, type_, default, help_, lo, hi, tuple(choices) if choices else None)


_T = _p("temperature", "float", 4.0, "Softmax temperature T; higher gives softer targets.", 0.1, 100)

LOSSES: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry(
            "ce", "Cross-entropy", "The student's own task loss on the hard labels.",
            (_p("label_smoothing", "float", 0.0, "Label smoothing factor.", 0.0, 0.5),),
            kind="logits",
        ),
        Entry(
            "kd", "Knowledge distillation (Hinton)",
            "KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch.",
            (_T,), paper="Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. 2015",
            kind="logits",
        ),
        Entry(
            "fitnets", "FitNets hints",
            "A regressor maps the student feature to the teacher's shape; L2 between them.",
            (_p("hint_epochs", "int", 0, "Epochs of hint-only training before the other losses.", 0, 1000),),
            paper="Romero et al. FitNets: Hints for Thin Deep Nets. ICLR 2015",
            kind="feature", needs_pairs=True,
        ),
        Entry(
            "at", "Attention transfer",
            "L2 between normalised spatial attention maps mean(|f|^p over channels).",
            (_p("p", "float", 2.0, "Exponent of the attention map.", 1.0, 8.0),),
            paper="Zagoruyko & Komodakis. Paying More Attention to Attention. ICLR 2017",
            kind="feature", needs_pairs=True,
        ),
        # feature-based losses and the "other tensors" (issue 3)
        Entry(
            "feature_l2", "Feature matching (projector + BN)",
            "A linear projector maps the student feature to the teacher's shape (1x1 conv or "
            "linear, identity-initialised when shapes match); both sides are batch-normalised "
            "per channel (no affine); then L2, L1 or cosine distance.",
            (
                _p("distance", "choice", "l2", "Distance between the normalised features.",
                   choices=("l2", "l1", "cosine")),
                _p("normalize", "bool", True, "Batch-normalise both features before the "
                   "distance (Miles et al.: this is what makes the projector work)."),
            ),
            paper="Miles, Elezi, Deng. Understanding the Role of the Projector in Knowledge "
            "Distillation. AAAI 2024",
            kind="feature", needs_pairs=True,
        ),
        Entry(
            "ab", "Activation boundaries",
            "Hinge-style loss pushing the student's (connector) pre-activations beyond a margin on "
            "the side of zero where the teacher's neuron is: the firing pattern is transferred. "
            "Pair PRE-activation features: tap the input of a ReLU or a BatchNorm output.",
            (_p("margin", "float", 1.0, "Margin m around the activation boundary.", 0.0, 100.0),),
            paper="Heo, Lee, Yun, Choi. Knowledge Transfer via Distillation of Activation "
            "Boundaries Formed by Hidden Neurons. AAAI 2019",
            kind="feature", needs_pairs=True,
        ),
        Entry(
            "nst", "Neuron selectivity transfer",
            "MMD^2 between the distributions of L2-normalised channel maps of teacher and student "
            "with a polynomial kernel (x.y + c)^d; channel counts may differ.",
            (
                _p("degree", "int", 2, "Degree d of the polynomial kernel.", 1, 8),
                _p("c", "float", 0.0, "Constant c of the polynomial kernel.", 0.0, 100.0),
            ),
            paper="Huang & Wang. Like What You Like: Knowledge Distill via Neuron Selectivity "
            "Transfer. 2017",
            kind="feature", needs_pairs=True,
        ),
        Entry(
            "mmd", "Maximum mean discrepancy (NST kernels)",
            "NST with a choice of kernel: polynomial (x.y)^2 or Gaussian exp(-|x-y|^2/(2 sigma^2)) "
            "between the normalised channel maps of teacher and student.",
            (
                _p("kernel", "choice", "poly", "Kernel of the MMD.", choices=("poly", "rbf")),
                _p("sigma", "float", 1.0, "Bandwidth of the Gaussian (rbf) kernel.", 0.01, 100.0),
            ),
            paper="Huang & Wang. Like What You Like: Knowledge Distill via Neuron Selectivity "
            "Transfer. 2017; Gretton et al. A Kernel Two-Sample Test. JMLR 2012",
            kind="feature", needs_pairs=True,
        ),
        Entry(
            "ft", "Factor transfer",
            "A paraphraser (conv auto-encoder) is pre-trained on the teacher feature by the engine, "
            "then frozen; a translator on the student feature is trained so that the L2-normalised "
            "factors match in L1. Pairs must be convolutional maps.",
            (
                _p("rate", "float", 0.5, "Paraphrase rate k: factor channels = k * teacher "
                   "channels.", 0.05, 4.0),
                _p("paraphraser_epochs", "int", 5, "Passes over the training data to pre-train "
                   "the paraphraser before distillation (RepDistiller: 30).", 0, 1000),
            ),
            paper="Kim, Park, Kwak. Paraphrasing Complex Network: Network Compression via Factor "
            "Transfer. NeurIPS 2018",
            kind="feature", needs_pairs=True,
        ),
        Entry(
            "vid", "Variational information distillation",
            "Gaussian log-likelihood of the teacher feature under a mean regressed from the "
            "student feature (1x1 convs) and a learned per-channel variance: "
            "mean(0.5 (log s^2 + (t - mu)^2 / s^2)); maximises a bound on mutual information.",
            (_p("init_var", "float", 5.0, "Initial value of the learned variance.", 0.001, 1000.0),),
            paper="Ahn, Hu, Damianou, Lawrence, Dai. Variational Information Distillation for "
            "Knowledge Transfer. CVPR 2019",
            kind="feature", needs_pairs=True,
        ),
        Entry(
            "ickd", "Inter-channel correlation",
            "L2 between the row-normalised channel Gram matrices (C x C) of the teacher feature "
            "and of the student feature embedded by a 1x1 conv; spatial sizes may differ.",
            (), paper="Liu et al. Exploring Inter-Channel Correlation for Diversity-Preserved "
            "Knowledge Distillation. ICCV 2021",
            kind="feature", needs_pairs=True,
        ),
        Entry(
            "reviewkd", "Knowledge review",
            "Student features of all the pairs (levels, shallow to deep) are fused from deep to "
            "shallow by attention-based fusion and compared with the teacher's by the "
            "hierarchical context loss (pyramid pooling 4, 2, 1). Give one pair per stage.",
            (
                _p("mid_channels", "int", 64, "Channels of the fusion modules (reference: 64 "
                   "for CIFAR ResNets, 256 for wider ones).", 4, 2048),
                _p("warmup_epochs", "int", 0, "Epochs of linear warm-up of the loss (reference: "
                   "20 of 240); 0 for none.", 0, 10000),
            ),
            paper="Chen, Liu, Zhao, Jia. Distilling Knowledge via Knowledge Review. CVPR 2021",
            kind="feature", needs_pairs=True,
        ),
        Entry(
            "ka", "Knowledge adaptation",
            "The teacher feature is compressed by an auto-encoder the engine pre-trains and "
            "freezes; an adapter on the student feature matches the normalised compact code "
            "(L2), optionally with an affinity (pairwise position similarity) term.",
            (
                _p("rate", "float", 0.5, "Code channels = rate * teacher channels.", 0.05, 4.0),
                _p("autoencoder_epochs", "int", 5, "Passes over the training data to pre-train "
                   "the auto-encoder before distillation.", 0, 1000),
                _p("affinity_weight", "float", 0.0, "Weight of the affinity term (0: off).",
                   0.0, 1000.0),
            ),
            paper="He, Shen, Tian, Gong, Sun, Yan. Knowledge Adaptation for Efficient Semantic "
            "Segmentation. CVPR 2019",
            kind="feature", needs_pairs=True,
        ),
        Entry(
            "fsp", "FSP matrices (flow of solution procedure)",
            "G = F1^T F2 / (h w) between the features of consecutive pairs on each side (pooled "
            "to the same size), L2 between teacher and student flows. Needs at least 2 pairs; "
            "student features of another shape pass through a connector.",
            (), paper="Yim, Joo, Bae, Kim. A Gift from Knowledge Distillation: Fast Optimization, "
            "Network Minimization and Transfer Learning. CVPR 2017",
            kind="relation", needs_pairs=True, extra={"min_pairs": 2},
        ),
        Entry(
            "grad_match", "Input-gradient matching",
            "The gradient of the cross-entropy w.r.t. the input, student vs. frozen teacher, "
            "compared by cosine or L2 (double backpropagation). Needs floating-point inputs "
            "and a differentiable teacher (.pt2 or safetensors).",
            (_p("distance", "choice", "cosine", "Distance between the per-sample input gradients.",
                choices=("cosine", "l2")),),
            paper="Srinivas & Fleuret. Knowledge Transfer with Jacobian Matching. ICML 2018",
            kind="other",
        ),
        Entry(
            "weight_match", "Weight matching (projected)",
            "For each pair's conv/linear weights: learnable (low-rank) projections over the out "
            "and in channels map the teacher's weight to the student's shape (kernel sizes "
            "pooled); L2 to the student's weight.",
            (
                _p("rank", "int", 0, "Rank of each projection; 0 for full rank.", 0, 4096),
                _p("normalize", "bool", True, "Compare Frobenius-normalised weights (scale-free)."),
            ),
            paper="Lin et al. Weight Distillation: Transferring the Knowledge in Neural Network "
            "Parameters. ACL 2021",
            kind="other", needs_pairs=True,
        ),
        # response-based and relation-based losses (issue 3)
        Entry(
            "dkd", "Decoupled KD (DKD)",
            "alpha * TCKD (target vs. rest, binary KL) + beta * NCKD (KL over the non-target "
            "classes), times T^2; the weight ramps up linearly over the first `warmup` epochs.",
            (
                _p("alpha", "float", 1.0, "Weight of the target-class term TCKD.", 0.0, 100.0),
                _p("beta", "float", 8.0, "Weight of the non-target-class term NCKD (mdistiller: "
                   "8 on CIFAR-100, 0.5-2 on ImageNet).", 0.0, 100.0),
                _p("temperature", "float", 4.0, _T.help, 0.1, 100),
                _p("warmup", "int", 20, "Epochs of linear warm-up of the loss weight (mdistiller: "
                   "20 of 240); use ~10% of the run's epochs, 0 for none.", 0, 10000),
            ),
            paper="Zhao, Cui, Song, Qiu, Liang. Decoupled Knowledge Distillation. CVPR 2022",
            kind="logits",
        ),
        Entry(
            "dist", "DIST (correlation relations)",
            "T^2 * (beta * (1 - Pearson per sample over classes) + gamma * (1 - Pearson per class "
            "over the batch)) between softmax(s/T) and softmax(t/T); tolerant of a strong teacher.",
            (
                _p("beta", "float", 1.0, "Weight of the inter-class relation (per sample).", 0.0, 100.0),
                _p("gamma", "float", 1.0, "Weight of the intra-class relation (per class over the "
                   "batch).", 0.0, 100.0),
                _p("temperature", "float", 4.0, "Softmax temperature T (paper: 1 on ImageNet, "
                   "4 on CIFAR-100).", 0.1, 100),
            ),
            paper="Huang, You, Wang, Qian, Xu. Knowledge Distillation from A Stronger Teacher. "
            "NeurIPS 2022",
            kind="logits",
        ),
        Entry(
            "logit_std", "Logit standardization (KD/DKD + LS)",
            "Applies on top of kd or dkd: both logits are z-scored per sample (minus their mean, "
            "over their std) before the tempered softmax, so the student matches the shape of "
            "the teacher's logits, not their range. Use it instead of the kd/dkd term, not with "
            "it; paper setting: temperature 2, weight 9, ce weight 0.1.",
            (
                _p("temperature", "float", 2.0, "Base temperature applied to the z-scores.", 0.1, 100),
                _p("base", "choice", "kd", "The loss it standardizes: 'kd' or 'dkd'.",
                   choices=("kd", "dkd")),
                _p("alpha", "float", 1.0, "With base 'dkd': weight of TCKD.", 0.0, 100.0),
                _p("beta", "float", 8.0, "With base 'dkd': weight of NCKD.", 0.0, 100.0),
                _p("warmup", "int", 20, "With base 'dkd': warm-up epochs.", 0, 10000),
            ),
            paper="Sun, Ren, Li, Wang, Cao. Logit Standardization in Knowledge Distillation. "
            "CVPR 2024",
            kind="logits",
        ),
        Entry(
            "pad", "Prime-Aware Adaptive Distillation",
            "Feature L2 through a connector, weighted per sample by a learned variance: "
            "mean_b(d_b / (2 sigma_b^2) + log sigma_b), sigma_b^2 predicted from the student "
            "feature. Hard samples get a large variance and count less; the value can be negative.",
            (_p("eps", "float", 1e-4, "Floor added to sigma^2 (bounds the loss below).", 1e-8, 1.0),),
            paper="Zhang, Chen, Wang et al. Prime-Aware Adaptive Distillation. ECCV 2020",
            kind="feature", needs_pairs=True,
        ),
        Entry(
            "rkd", "Relational KD (distance + angle)",
            "Smooth-L1 between the batch's pairwise distances (each divided by its mean) and "
            "between the angles of all triplets, student vs. teacher. Pair pooled features.",
            (
                _p("w_dist", "float", 25.0, "Weight of the distance-wise term.", 0.0, 1000.0),
                _p("w_angle", "float", 50.0, "Weight of the angle-wise term.", 0.0, 1000.0),
            ),
            paper="Park, Kim, Lu, Cho. Relational Knowledge Distillation. CVPR 2019",
            kind="relation", needs_pairs=True,
        ),
        Entry(
            "sp", "Similarity-preserving KD",
            "||G_s - G_t||_F^2 / B^2 with G = row-normalised F F^T over the batch; RepDistiller "
            "uses weight 3000 on the last convolutional map.",
            (), paper="Tung & Mori. Similarity-Preserving Knowledge Distillation. ICCV 2019",
            kind="relation", needs_pairs=True,
        ),
        Entry(
            "cc", "Correlation congruence",
            "||Psi_s - Psi_t||_F^2 / B^2 between the batch correlation matrices under a Gaussian "
            "RBF kernel on L2-normalised features, approximated by a Taylor expansion.",
            (
                _p("gamma", "float", 0.4, "RBF kernel parameter gamma.", 0.0, 10.0),
                _p("order", "int", 2, "Order P of the Taylor expansion.", 0, 10),
            ),
            paper="Peng et al. Correlation Congruence for Knowledge Distillation. ICCV 2019",
            kind="relation", needs_pairs=True,
        ),
        Entry(
            "pkt", "Probabilistic knowledge transfer",
            "KL between teacher and student conditional distributions p(j|i) built from cosine "
            "similarities within the batch; RepDistiller uses weight 30000.",
            (),
            paper="Passalis & Tefas. Learning Deep Representations with Probabilistic Knowledge "
            "Transfer. ECCV 2018",
            kind="relation", needs_pairs=True,
        ),
        Entry(
            "crd", "Contrastive representation distillation",
            "InfoNCE between linear, L2-normalised embeddings of student and teacher: the teacher "
            "embedding of the same sample is the positive, a FIFO queue of earlier teacher "
            "embeddings the negatives (fixed memory, unlike RepDistiller's dataset-sized bank).",
            (
                _p("feat_dim", "int", 128, "Embedding dimension of both heads.", 2, 4096),
                _p("queue_size", "int", 4096, "Negatives kept in the queue (capped at the "
                   "number of training samples).", 1, 1_000_000),
                _p("nce_t", "float", 0.07, "Temperature of the contrastive softmax.", 0.001, 10.0),
            ),
            paper="Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020",
            kind="relation", needs_pairs=True,
        ),
    ]
}

_WIDTH = _p("width", "float", 1.0, "Width multiplier of every layer's channels.", 0.125, 8.0)
_REPDISTILLER = "Tian, Krishnan, Isola. Contrastive Representation Distillation (RepDistiller). ICLR 2020"
_RESNET_PAPER = "He et al. Deep Residual Learning. CVPR 2016"
_WRN_PAPER = "Zagoruyko & Komodakis. Wide Residual Networks. BMVC 2016"
_VGG_PAPER = "Simonyan & Zisserman. Very Deep Convolutional Networks. ICLR 2015"
_DEPTH_MULT = _p(
    "depth", "float", 1.0, "Depth multiplier: blocks per stage times this (at least 1).", 0.1, 4.0
)
RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
WRN_NAMED = {"wrn_16_1": (16, 1), "wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}
VGG_NAMED = (8, 11, 13)

STUDENTS: dict[str, Entry] = {
    e.name: e
    for e in [
        *(
            Entry(
                f"resnet{d}", f"ResNet-{d} (CIFAR-style)",
                f"Three stages of basic blocks, depth {d}, channels 16/32/64 times width.",
                (_WIDTH,), paper=_RESNET_PAPER,
                kind="cnn", extra={"family": "resnet", "depth": d},
            )
            for d in RESNET_DEPTHS
        ),
        *(
            Entry(
                f"resnet{d}x4", f"ResNet-{d}x4 (CIFAR-style)",
                f"Depth {d} with four times wider channels (64/128/256).",
                (), paper=_REPDISTILLER, kind="cnn",
                extra={"family": "resnet", "depth": d, "width": 4.0},
            )
            for d in (8, 32)
        ),
        Entry(
            "resnet", "ResNet (any depth)",
            "CIFAR-style ResNet of any depth 6n+2 (8, 14, 20, 26, ...); derived students use it "
            "between the named depths.",
            (
                _p("depth", "int", 20, "Depth 6n+2: n basic blocks per stage.", 8, 1202),
                _WIDTH,
            ),
            paper=_RESNET_PAPER, kind="cnn", extra={"family": "resnet"},
        ),
        *(
            Entry(
                name, f"WRN-{d}-{k}",
                f"Wide ResNet, depth {d}, widening factor {k}: pre-activation blocks with "
                f"{16 * k}/{32 * k}/{64 * k} channels.",
                (), paper=_WRN_PAPER, kind="cnn", extra={"family": "wrn", "depth": d, "width": k},
            )
            for name, (d, k) in WRN_NAMED.items()
        ),
        Entry(
            "wrn", "WRN-d-k (any depth and width)",
            "Wide ResNet of depth 6n+4 (10, 16, 22, 28, 40, ...) and widening factor k.",
            (
                _p("depth", "int", 16, "Depth 6n+4: n pre-activation blocks per stage.", 10, 1000),
                _p("width", "float", 2.0, "Widening factor k: channels 16k/32k/64k.", 0.125, 16.0),
                _p("dropout", "float", 0.0, "Dropout between the two convolutions of a block.",
                   0.0, 0.9),
            ),
            paper=_WRN_PAPER, kind="cnn", extra={"family": "wrn"},
        ),
        *(
            Entry(
                f"vgg{d}", f"VGG-{d} (BN, CIFAR-style)",
                f"{d - 3} 3x3 convolutions with batch norm in five blocks (64..512 channels times "
                "width), max pooling between blocks, one linear layer.",
                (_WIDTH,), paper=_VGG_PAPER, kind="cnn", extra={"family": "vgg", "depth": d},
            )
            for d in VGG_NAMED
        ),
        Entry(
            "vgg", "VGG (any depth)",
            "VGG with batch norm of any depth >= 8 (= convolutions + 3); 16 and 19 are the "
            "classic ones.",
            (_p("depth", "int", 11, "Convolutions + 3, spread over the five blocks.", 8, 40),
             _WIDTH),
            paper=_VGG_PAPER, kind="cnn", extra={"family": "vgg"},
        ),
        Entry(
            "mobilenetv2", "MobileNetV2",
            "Inverted residual blocks with depthwise convolutions; width 0.5 is RepDistiller's "
            "CIFAR student.",
            (
                _p("width", "float", 0.5, "Width multiplier of the channels.", 0.1, 4.0),
                _DEPTH_MULT,
            ),
            paper="Sandler et al. MobileNetV2: Inverted Residuals and Linear Bottlenecks. CVPR 2018",
            kind="cnn", extra={"family": "mobilenetv2"},
        ),
        Entry(
            "shufflenetv1", "ShuffleNetV1",
            "Group convolutions with channel shuffle (3 groups, widths 240/480/960 times width).",
            (
                _p("width", "float", 1.0, "Width multiplier of the stage widths.", 0.1, 4.0),
                _DEPTH_MULT,
            ),
            paper="Zhang et al. ShuffleNet: An Extremely Efficient CNN for Mobile Devices. CVPR 2018",
            kind="cnn", extra={"family": "shufflenetv1"},
        ),
        Entry(
            "shufflenetv2", "ShuffleNetV2",
            "Channel split, depthwise convolutions and channel shuffle (116/232/464 at width 1; "
            "the paper's 0.5, 1.5 and 2 sizes at those widths).",
            (
                _p("width", "float", 1.0, "Width: 0.5, 1, 1.5, 2 as in the paper, or any scale.",
                   0.1, 4.0),
                _DEPTH_MULT,
            ),
            paper="Ma et al. ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture "
                  "Design. ECCV 2018",
            kind="cnn", extra={"family": "shufflenetv2"},
        ),
        Entry(
            "mlp", "MLP", "Fully connected network for tabular data or small images (flattened).",
            (
                _p("hidden", "int", 256, "Units in each hidden layer.", 4, 8192),
                _p("depth", "int", 2, "Number of hidden layers.", 1, 16),
                _p("dropout", "float", 0.0, "Dropout after each hidden layer.", 0.0, 0.9),
            ),
            kind="mlp", extra={"family": "mlp"},
        ),
    ]
}


def student_problems(name: str, params: dict[str, Any]) -> list[str]:
    """Errors for a student's parameters: the catalog ranges plus the resnet/wrn depth rule."""
    errors = STUDENTS[name].check_params(params)
    depth = params.get("depth")
    if errors or name not in ("resnet", "wrn") or depth is None:
        return errors
    offset, minimum = (2, 8) if name == "resnet" else (4, 10)
    if (depth - offset) % 6:
        low = max(minimum, depth - (depth - offset) % 6)
        errors.append(
            f"parameter 'depth' of '{name}' must be 6n+{offset}, got {depth}; "
            f"nearest: {low}, {low + 6}"
        )
    return errors


# --- students from the teacher ------------------------------------------------------------------

NEEDS_ZOO_TEACHER = (
    "{what} need a teacher whose architecture is in the zoo (upload it as safetensors with "
    "architecture=...)"
)
_SHAPE_KEYS = ("input_shape", "num_classes")


def _teacher_entry(arch: str | None, kwargs: dict[str, Any] | None, what: str
                   ) -> tuple[Entry, dict[str, Any]]:
    entry = STUDENTS.get(arch or "")
    if entry is None:
        got = f"; got {arch!r}" if arch else "; this teacher has no architecture (a .pt2 graph)"
        raise ValueError(NEEDS_ZOO_TEACHER.format(what=what) + got)
    own = {k: v for k, v in (kwargs or {}).items() if k not in _SHAPE_KEYS}
    errors = entry.check_params(own)
    if errors:
        raise ValueError(f"the teacher's parameters do not fit '{arch}': {'; '.join(errors)}")
    return entry, own


def same_architecture(arch: str | None, kwargs: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """Self-distillation: the teacher's own zoo architecture and parameters (fresh weights)."""
    _, own = _teacher_entry(arch, kwargs, "self-distillation students (source 'teacher')")
    return str(arch), own


def _nearest_depth(target: float, offset: int, minimum: int) -> int:
    """The depth 6n + offset (>= minimum) nearest to `target`; ties go to the shallower one."""
    n = (target - offset) / 6
    low, high = 6 * int(n // 1) + offset, 6 * (int(n // 1) + 1) + offset
    best = low if target - low <= high - target else high
    return max(minimum, best)


def _width(value: float, entry: Entry) -> float:
    param = next(p for p in entry.params if p.name in ("width", "hidden"))
    return max(float(param.min or 0.0), round(value, 4))


def derived_architecture(
    teacher_arch: str | None,
    teacher_kwargs: dict[str, Any] | None,
    depth_factor: float = 0.5,
    width_factor: float = 0.5,
) -> tuple[str, dict[str, Any]]:
    """The zoo architecture and parameters of a student derived from a zoo teacher (no torch).

    Depth and width are multiplied by the factors (each in (0, 1]) and snapped to what the
    family allows:
    - resnet (and resnet*x4): depth d -> the nearest valid 6n+2 >= 8, width times the factor
      (an x4 teacher counts as width 4, so its derived student keeps its 64/128/256 proportions);
    - wrn: depth -> nearest 6n+4 >= 10, widening factor k times the factor;
    - vgg: convolutions (depth - 3) times the factor, at least one per block; channels scaled;
    - mlp: hidden units times the width factor (>= 4), layers times the depth factor (>= 1);
    - mobilenetv2, shufflenetv1/v2: their width and depth multipliers times the factors.
    A named architecture is returned when the result is one (resnet20, wrn_16_2, vgg8, ...),
    else the family's generic entry (resnet, wrn, vgg) with explicit depth and width.
    """
    for name, factor in (("depth_factor", depth_factor), ("width_factor", width_factor)):
        if not 0 < factor <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {factor}")
    entry, own = _teacher_entry(teacher_arch, teacher_kwargs, "derived students")
    kw = {**entry.defaults(), **own}
    family = entry.extra["family"]
    depth = kw.get("depth", entry.extra.get("depth"))
    width = float(kw.get("width", entry.extra.get("width", 1.0)))
    if family == "resnet":
        d = _nearest_depth(depth * depth_factor, 2, 8)
        w = _width(width * width_factor, STUDENTS["resnet"])
        return (f"resnet{d}", {"width": w}) if d in RESNET_DEPTHS else (
            "resnet", {"depth": d, "width": w})
    if family == "wrn":
        d = _nearest_depth(depth * depth_factor, 4, 10)
        w = _width(width * width_factor, STUDENTS["wrn"])
        dropout = float(kw.get("dropout", 0.0))
        named = f"wrn_{d}_{int(w)}"
        if named in WRN_NAMED and w == int(w) and dropout == 0.0:
            return named, {}
        return "wrn", {"depth": d, "width": w, "dropout": dropout}
    if family == "vgg":
        d = max(5, round((depth - 3) * depth_factor)) + 3
        w = _width(width * width_factor, STUDENTS["vgg"])
        return (f"vgg{d}", {"width": w}) if d in VGG_NAMED else ("vgg", {"depth": d, "width": w})
    if family == "mlp":
        hidden = max(4, round(kw["hidden"] * width_factor))
        return "mlp", {"hidden": hidden, "depth": max(1, round(kw["depth"] * depth_factor)),
                       "dropout": float(kw["dropout"])}
    return str(teacher_arch), {
        "width": _width(width * width_factor, entry),
        "depth": max(0.1, round(float(kw["depth"]) * depth_factor, 4)),
    }


SCHEMES: dict[str, Entry] = {
    "offline": Entry(
        "offline", "Offline", "A frozen, pre-trained teacher guides the student (the default).",
        kind="scheme",
    ),
}

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")


def nearest(name: str, options: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """The options closest to `name`, for error messages ("did you mean ...")."""
    import difflib

    close = difflib.get_close_matches(name, list(options), n=n, cutoff=0.4)
    return close or list(options)[:n]


def as_json() -> dict[str, Any]:
    """The catalog as plain JSON, served at `GET /api/v1/catalog`."""

    def dump(entries: dict[str, Entry]) -> list[dict[str, Any]]:
        return [asdict(e) for e in entries.values()]

    return {
        "losses": dump(LOSSES),
        "students": dump(STUDENTS),
        "schemes": dump(SCHEMES),
        "optimizers": list(OPTIMIZERS),
        "schedules": list(SCHEDULES),
    }
