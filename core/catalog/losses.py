"""Losses, declared once each: name, kind, parameters, paper, default weight, implementation.

An entry names its engine class as `"worker.engine.losses.<module>:<Class>"`; the engine imports
it when a run uses the loss (`worker.engine.losses.build_loss`). Adding a loss is one engine
module and one entry here (see `tests/unit/test_catalog.py`, which checks that they agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from core.catalog.params import Entry, param

LossKind = Literal["logits", "feature", "relation", "other"]


@dataclass(frozen=True)
class LossEntry(Entry):
    """A loss: its kind, what it reads and where its weight starts.

    - `needs_pairs`: it reads teacher/student layer pairs (feature and relation losses);
    - `min_pairs`: the fewest pairs it works with (0: as `needs_pairs` says, i.e. 1 or 0);
    - `default_weight`: the weight the New run form starts at (the paper's or reference
      implementation's setting, cited in `help`); a run config without a weight still means 1;
    - `aux_modules`: the loss's own trainable submodules (connectors, regressors,
      auto-encoders), trained by the optimizer and saved in checkpoints;
    - `reads_attention`: each paired layer must be, or hold, an attention with query/key/value
      projections (`core.pairing.attention_problem`).
    """

    needs_pairs: bool = False
    min_pairs: int = 0
    default_weight: float = 1.0
    aux_modules: tuple[str, ...] = ()
    reads_attention: bool = False

    def fewest_pairs(self) -> int:
        """The layer pairs a run must give this loss at least."""
        return max(self.min_pairs, 1 if self.needs_pairs else 0)

    def extra_json(self) -> dict[str, Any]:
        return {
            "default_weight": self.default_weight,
            "min_pairs": self.fewest_pairs(),
            "aux_modules": list(self.aux_modules),
            "reads_attention": self.reads_attention,
        }


_T = param(
    "temperature", "float", 4.0, "Softmax temperature T; higher gives softer targets.", 0.1, 100
)

LOSSES: dict[str, LossEntry] = {
    e.name: e
    for e in [
        LossEntry(
            "ce",
            "Cross-entropy",
            "The student's own task loss on the hard labels.",
            (param("label_smoothing", "float", 0.0, "Label smoothing factor.", 0.0, 0.5),),
            kind="logits",
            implementation="worker.engine.losses.ce:CrossEntropy",
        ),
        LossEntry(
            "kd",
            "Knowledge distillation (Hinton)",
            "KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch; on a language "
            "model's logits [N, tokens, vocab] averaged over the tokens whose label is not -100: "
            "the token-level forward KL of LM distillation (GKD's beta = 0). LM recipes use T = 1.",
            (_T,),
            paper="Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. 2015",
            kind="logits",
            implementation="worker.engine.losses.kd:KD",
        ),
        LossEntry(
            "pixel_kd",
            "Pixel-wise KD (segmentation)",
            "KD at every pixel over the class dimension: T^2 times the mean, over the pixels "
            "that are not ignored, of KL(softmax(t_p/T) || softmax(s_p/T)); per-pixel logits "
            "[N, classes, H, W] (task segmentation). Liu et al. use T = 1.",
            (
                param(
                    "temperature", "float", 1.0, "Softmax temperature T over the classes.", 0.1, 100
                ),
            ),
            paper="Liu, Chen, Liu, Qu, Ma, Wang. Structured Knowledge Distillation for Semantic "
            "Segmentation. CVPR 2019",
            kind="logits",
            implementation="worker.engine.losses.dense:PixelKD",
        ),
        LossEntry(
            "cwd",
            "Channel-wise distillation (segmentation)",
            "Each class channel's map becomes a distribution over the H*W locations "
            "(softmax(y_c/T) over space); T^2/(N*C) * sum over samples and channels of "
            "KL(teacher || student): KD with classes and locations swapped. Per-pixel logits "
            "[N, classes, H, W] (task segmentation); MMRazor uses T = 1 and weight 3.",
            (param("temperature", "float", 1.0, "Softmax temperature T over space.", 0.1, 100),),
            paper="Shu, Liu, Gao, Yan, Shen. Channel-wise Knowledge Distillation for Dense "
            "Prediction. ICCV 2021",
            kind="logits",
            default_weight=3.0,
            implementation="worker.engine.losses.dense:CWD",
        ),
        LossEntry(
            "pairwise",
            "Pairwise similarity distillation (segmentation)",
            "Structured pair-wise distillation on feature maps: pool the teacher's map to a grid "
            "of nodes (patches of scale x its height and width, max-pooled; the student's map "
            "to the same grid), a_ij = cosine similarity of nodes i and j, and the mean over "
            "samples and node pairs of (a_ij^s - a_ij^t)^2, summed over the layer pairs. "
            "Channels and sizes may differ. The authors' code uses scale 0.5 (a 2x2 grid) "
            "and weight 0.5 on the last feature map.",
            (
                param(
                    "scale",
                    "float",
                    0.5,
                    "Patch side as a fraction of the teacher map's side (the paper's beta): "
                    "0.5 gives 2x2 nodes, 0.25 4x4; the smallest patch is one location.",
                    0.01,
                    1.0,
                ),
            ),
            paper="Liu, Chen, Liu, Qu, Ma, Wang. Structured Knowledge Distillation for Semantic "
            "Segmentation. CVPR 2019",
            kind="relation",
            needs_pairs=True,
            default_weight=0.5,
            implementation="worker.engine.losses.pairwise:Pairwise",
        ),
        LossEntry(
            "adversarial",
            "Holistic adversarial distillation (dense outputs)",
            "A small convolutional critic D, trained by the engine inside the run with its own "
            "Adam optimizer, scores (input image, output map) pairs: the teacher's map is real, "
            "the student's fake. Each training step D takes one step on "
            "mean D(I, s) - mean D(I, t) + gp_weight * (||grad D|| - 1)^2 at random mixes of the "
            "two (WGAN-GP), on detached maps, and the student gets -mean D(I, s). D is not "
            "part of the student (not exported) nor in its optimizer; checkpoints keep it. "
            "Any dense output [N, C, H, W] (segmentation logits: output softmax; images: raw). "
            "The authors' code uses weight 0.1, critic lr 4e-4, gradient penalty 10; their "
            "self-attention critic with spectral norm and SGD are simplified here to a plain "
            "convolutional critic and Adam(0.5, 0.9).",
            (
                param("lr", "float", 4e-4, "The critic's learning rate (Adam).", 1e-6, 1.0),
                param(
                    "gp_weight",
                    "float",
                    10.0,
                    "Gradient-penalty weight lambda_gp (WGAN-GP; 0 turns it off).",
                    0.0,
                    1000.0,
                ),
                param(
                    "width",
                    "int",
                    32,
                    "Channels of the critic's first convolution (then 2x and 4x).",
                    1,
                    512,
                ),
                param(
                    "output",
                    "choice",
                    "softmax",
                    "How outputs become the critic's maps: softmax over the channels (class "
                    "logits, segmentation) or raw (images, image-to-image).",
                    choices=("softmax", "raw"),
                ),
                param(
                    "condition",
                    "bool",
                    True,
                    "Also show the critic the input image (resized to the output's size), as "
                    "the paper's conditional critic.",
                ),
            ),
            paper="Liu, Chen, Liu, Qu, Ma, Wang. Structured Knowledge Distillation for Semantic "
            "Segmentation. CVPR 2019; Gulrajani et al. Improved Training of Wasserstein GANs. "
            "NeurIPS 2017",
            kind="logits",
            default_weight=0.1,
            implementation="worker.engine.losses.adversarial:Adversarial",
        ),
        LossEntry(
            "recon_l1",
            "Output reconstruction L1 (image-to-image)",
            "mean |G_s(x) - G_t(x)| over pixels and channels: the student generator's output "
            "pulled to the teacher's (task generation); GAN Compression's reconstruction term.",
            (),
            paper="Li, Lin, Ding, Liu, Zhu, Han. GAN Compression: Efficient Architectures for "
            "Interactive Conditional GANs. CVPR 2020",
            kind="logits",
            implementation="worker.engine.losses.generation:ReconstructionL1",
        ),
        LossEntry(
            "target_l1",
            "Target L1 (image-to-image task loss)",
            "mean |G_s(x) - y| against the dataset's target images (task generation): the "
            "student's own task loss, as ce is a classifier's; needs a dataset with targets.",
            (),
            paper="Isola, Zhu, Zhou, Efros. Image-to-Image Translation with Conditional "
            "Adversarial Networks (pix2pix, its L1 term). CVPR 2017",
            kind="logits",
            implementation="worker.engine.losses.generation:TargetL1",
        ),
        LossEntry(
            "centernet",
            "CenterNet detection loss",
            "The detector's own loss on the ground-truth boxes (task detection): the "
            "penalty-reduced focal loss on the class-centre heatmaps (Gaussian targets) plus "
            "size_weight times the L1 of the left/top/right/bottom box distances and "
            "dfl_weight times the distribution focal loss of their bins at the centres, each "
            "over the number of boxes; reads the dense-head output [N, classes + 4 * bins, h, w] "
            "of det_centernet.",
            (
                param(
                    "size_weight",
                    "float",
                    0.1,
                    "Weight of the box-distance L1 (in stride units) against the focal term.",
                    0.0,
                    100,
                ),
                param(
                    "dfl_weight",
                    "float",
                    0.25,
                    "Weight of the distribution focal loss on the distance bins (GFL uses 0.25).",
                    0.0,
                    100,
                ),
            ),
            paper="Zhou, Wang, Krähenbühl. Objects as Points. 2019",
            kind="logits",
            implementation="worker.engine.losses.centernet:CenterNetLoss",
        ),
        LossEntry(
            "fitnets",
            "FitNets hints",
            "A regressor maps the student feature to the teacher's shape; L2 between them. "
            "RepDistiller uses weight 100.",
            (
                param(
                    "hint_epochs",
                    "int",
                    0,
                    "Epochs of hint-only training before the other losses.",
                    0,
                    1000,
                ),
            ),
            paper="Romero et al. FitNets: Hints for Thin Deep Nets. ICLR 2015",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.fitnets:FitNets",
            default_weight=100.0,
            aux_modules=("connectors",),
        ),
        LossEntry(
            "at",
            "Attention transfer",
            "L2 between normalised spatial attention maps mean(|f|^p over channels). RepDistiller "
            "uses weight 1000 for 32x32 inputs; scale it by the largest map's H*W / 1024 (about "
            "100 for 8x8 inputs).",
            (param("p", "float", 2.0, "Exponent of the attention map.", 1.0, 8.0),),
            paper="Zagoruyko & Komodakis. Paying More Attention to Attention. ICLR 2017",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.at:AttentionTransfer",
            default_weight=1000.0,
        ),
        LossEntry(
            "feature_l2",
            "Feature matching (projector + BN)",
            "A linear projector maps the student feature to the teacher's shape (1x1 conv or "
            "linear, identity-initialised when shapes match); both sides are batch-normalised "
            "per channel (no affine); then L2, L1 or cosine distance.",
            (
                param(
                    "distance",
                    "choice",
                    "l2",
                    "Distance between the normalised features.",
                    choices=("l2", "l1", "cosine"),
                ),
                param(
                    "normalize",
                    "bool",
                    True,
                    "Batch-normalise both features before the "
                    "distance (Miles et al.: this is what makes the projector work).",
                ),
            ),
            paper="Miles, Elezi, Deng. Understanding the Role of the Projector in Knowledge "
            "Distillation. AAAI 2024",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.feature_l2:FeatureL2",
            aux_modules=("projectors",),
        ),
        LossEntry(
            "ab",
            "Activation boundaries",
            "Hinge-style loss pushing the student's (connector) pre-activations beyond a margin on "
            "the side of zero where the teacher's neuron is: the firing pattern is transferred. "
            "Pair PRE-activation features: tap the input of a ReLU or a BatchNorm output.",
            (
                param(
                    "margin", "float", 1.0, "Margin m around the activation boundary.", 0.0, 100.0
                ),
            ),
            paper="Heo, Lee, Yun, Choi. Knowledge Transfer via Distillation of Activation "
            "Boundaries Formed by Hidden Neurons. AAAI 2019",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.ab:ActivationBoundaries",
            aux_modules=("connectors",),
        ),
        LossEntry(
            "nst",
            "Neuron selectivity transfer",
            "MMD^2 between the distributions of L2-normalised channel maps of teacher and student "
            "with a polynomial kernel (x.y + c)^d; channel counts may differ.",
            (
                param("degree", "int", 2, "Degree d of the polynomial kernel.", 1, 8),
                param("c", "float", 0.0, "Constant c of the polynomial kernel.", 0.0, 100.0),
            ),
            paper="Huang & Wang. Like What You Like: Knowledge Distill via Neuron Selectivity "
            "Transfer. 2017",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.nst:NST",
        ),
        LossEntry(
            "mmd",
            "Maximum mean discrepancy (NST kernels)",
            "NST with a choice of kernel: polynomial (x.y)^2 or Gaussian exp(-|x-y|^2/(2 sigma^2)) "
            "between the normalised channel maps of teacher and student.",
            (
                param("kernel", "choice", "poly", "Kernel of the MMD.", choices=("poly", "rbf")),
                param(
                    "sigma", "float", 1.0, "Bandwidth of the Gaussian (rbf) kernel.", 0.01, 100.0
                ),
            ),
            paper="Huang & Wang. Like What You Like: Knowledge Distill via Neuron Selectivity "
            "Transfer. 2017; Gretton et al. A Kernel Two-Sample Test. JMLR 2012",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.nst:MMD",
        ),
        LossEntry(
            "ft",
            "Factor transfer",
            "A paraphraser (conv auto-encoder) is pre-trained on the teacher feature by the engine, "
            "then frozen; a translator on the student feature is trained so that the L2-normalised "
            "factors match in L1. Pairs must be convolutional maps.",
            (
                param(
                    "rate",
                    "float",
                    0.5,
                    "Paraphrase rate k: factor channels = k * teacher channels.",
                    0.05,
                    4.0,
                ),
                param(
                    "paraphraser_epochs",
                    "int",
                    5,
                    "Passes over the training data to pre-train "
                    "the paraphraser before distillation (RepDistiller: 30).",
                    0,
                    1000,
                ),
            ),
            paper="Kim, Park, Kwak. Paraphrasing Complex Network: Network Compression via Factor "
            "Transfer. NeurIPS 2018",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.ft:FactorTransfer",
            aux_modules=("paraphrasers", "translators"),
        ),
        LossEntry(
            "vid",
            "Variational information distillation",
            "Gaussian log-likelihood of the teacher feature under a mean regressed from the "
            "student feature (1x1 convs) and a learned per-channel variance: "
            "mean(0.5 (log s^2 + (t - mu)^2 / s^2)); maximises a bound on mutual information.",
            (
                param(
                    "init_var",
                    "float",
                    5.0,
                    "Initial value of the learned variance.",
                    0.001,
                    1000.0,
                ),
            ),
            paper="Ahn, Hu, Damianou, Lawrence, Dai. Variational Information Distillation for "
            "Knowledge Transfer. CVPR 2019",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.vid:VID",
            aux_modules=("regressors", "log_scales"),
        ),
        LossEntry(
            "ickd",
            "Inter-channel correlation",
            "L2 between the row-normalised channel Gram matrices (C x C) of the teacher feature "
            "and of the student feature embedded by a 1x1 conv; spatial sizes may differ.",
            (),
            paper="Liu et al. Exploring Inter-Channel Correlation for Diversity-Preserved "
            "Knowledge Distillation. ICCV 2021",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.ickd:ICKD",
            aux_modules=("embeds",),
        ),
        LossEntry(
            "reviewkd",
            "Knowledge review",
            "Student features of all the pairs (levels, shallow to deep) are fused from deep to "
            "shallow by attention-based fusion and compared with the teacher's by the "
            "hierarchical context loss (pyramid pooling 4, 2, 1). Give one pair per stage.",
            (
                param(
                    "mid_channels",
                    "int",
                    64,
                    "Channels of the fusion modules (reference: 64 "
                    "for CIFAR ResNets, 256 for wider ones).",
                    4,
                    2048,
                ),
                param(
                    "warmup_epochs",
                    "int",
                    0,
                    "Epochs of linear warm-up of the loss (reference: 20 of 240); 0 for none.",
                    0,
                    10000,
                ),
            ),
            paper="Chen, Liu, Zhao, Jia. Distilling Knowledge via Knowledge Review. CVPR 2021",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.reviewkd:ReviewKD",
            aux_modules=("abfs",),
        ),
        LossEntry(
            "ka",
            "Knowledge adaptation",
            "The teacher feature is compressed by an auto-encoder the engine pre-trains and "
            "freezes; an adapter on the student feature matches the normalised compact code "
            "(L2), optionally with an affinity (pairwise position similarity) term.",
            (
                param("rate", "float", 0.5, "Code channels = rate * teacher channels.", 0.05, 4.0),
                param(
                    "autoencoder_epochs",
                    "int",
                    5,
                    "Passes over the training data to pre-train "
                    "the auto-encoder before distillation.",
                    0,
                    1000,
                ),
                param(
                    "affinity_weight",
                    "float",
                    0.0,
                    "Weight of the affinity term (0: off).",
                    0.0,
                    1000.0,
                ),
            ),
            paper="He, Shen, Tian, Gong, Sun, Yan. Knowledge Adaptation for Efficient Semantic "
            "Segmentation. CVPR 2019",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.ka:KnowledgeAdaptation",
            aux_modules=("autoencoders", "adapters"),
        ),
        LossEntry(
            "fsp",
            "FSP matrices (flow of solution procedure)",
            "G = F1^T F2 / (h w) between the features of consecutive pairs on each side (pooled "
            "to the same size), L2 between teacher and student flows. Needs at least 2 pairs; "
            "student features of another shape pass through a connector.",
            (),
            paper="Yim, Joo, Bae, Kim. A Gift from Knowledge Distillation: Fast Optimization, "
            "Network Minimization and Transfer Learning. CVPR 2017",
            kind="relation",
            needs_pairs=True,
            min_pairs=2,
            implementation="worker.engine.losses.fsp:FSP",
            aux_modules=("connectors",),
        ),
        LossEntry(
            "grad_match",
            "Input-gradient matching",
            "The gradient of the cross-entropy w.r.t. the input, student vs. frozen teacher, "
            "compared by cosine or L2 (double backpropagation). Needs floating-point inputs "
            "and a differentiable teacher (.pt2 or safetensors).",
            (
                param(
                    "distance",
                    "choice",
                    "cosine",
                    "Distance between the per-sample input gradients.",
                    choices=("cosine", "l2"),
                ),
            ),
            paper="Srinivas & Fleuret. Knowledge Transfer with Jacobian Matching. ICML 2018",
            kind="other",
            implementation="worker.engine.losses.grad_match:GradMatch",
        ),
        LossEntry(
            "weight_match",
            "Weight matching (projected)",
            "For each pair's conv/linear weights: learnable (low-rank) projections over the out "
            "and in channels map the teacher's weight to the student's shape (kernel sizes "
            "pooled); L2 to the student's weight.",
            (
                param("rank", "int", 0, "Rank of each projection; 0 for full rank.", 0, 4096),
                param(
                    "normalize", "bool", True, "Compare Frobenius-normalised weights (scale-free)."
                ),
            ),
            paper="Lin et al. Weight Distillation: Transferring the Knowledge in Neural Network "
            "Parameters. ACL 2021",
            kind="other",
            needs_pairs=True,
            implementation="worker.engine.losses.weight_match:WeightMatch",
            aux_modules=("p_out", "p_in"),
        ),
        LossEntry(
            "dkd",
            "Decoupled KD (DKD)",
            "alpha * TCKD (target vs. rest, binary KL) + beta * NCKD (KL over the non-target "
            "classes), times T^2; the weight ramps up linearly over the first `warmup` epochs.",
            (
                param("alpha", "float", 1.0, "Weight of the target-class term TCKD.", 0.0, 100.0),
                param(
                    "beta",
                    "float",
                    8.0,
                    "Weight of the non-target-class term NCKD (mdistiller: "
                    "8 on CIFAR-100, 0.5-2 on ImageNet).",
                    0.0,
                    100.0,
                ),
                param("temperature", "float", 4.0, _T.help, 0.1, 100),
                param(
                    "warmup",
                    "int",
                    20,
                    "Epochs of linear warm-up of the loss weight (mdistiller: "
                    "20 of 240); use ~10% of the run's epochs, 0 for none.",
                    0,
                    10000,
                ),
            ),
            paper="Zhao, Cui, Song, Qiu, Liang. Decoupled Knowledge Distillation. CVPR 2022",
            kind="logits",
            implementation="worker.engine.losses.dkd:DKD",
        ),
        LossEntry(
            "dist",
            "DIST (correlation relations)",
            "T^2 * (beta * (1 - Pearson per sample over classes) + gamma * (1 - Pearson per class "
            "over the batch)) between softmax(s/T) and softmax(t/T); tolerant of a strong teacher.",
            (
                param(
                    "beta",
                    "float",
                    1.0,
                    "Weight of the inter-class relation (per sample).",
                    0.0,
                    100.0,
                ),
                param(
                    "gamma",
                    "float",
                    1.0,
                    "Weight of the intra-class relation (per class over the batch).",
                    0.0,
                    100.0,
                ),
                param(
                    "temperature",
                    "float",
                    4.0,
                    "Softmax temperature T (paper: 1 on ImageNet, 4 on CIFAR-100).",
                    0.1,
                    100,
                ),
            ),
            paper="Huang, You, Wang, Qian, Xu. Knowledge Distillation from A Stronger Teacher. "
            "NeurIPS 2022",
            kind="logits",
            implementation="worker.engine.losses.dist:DIST",
        ),
        LossEntry(
            "logit_std",
            "Logit standardization (KD/DKD + LS)",
            "Applies on top of kd or dkd: both logits are z-scored per sample (minus their mean, "
            "over their std) before the tempered softmax, so the student matches the shape of "
            "the teacher's logits, not their range. Use it instead of the kd/dkd term, not with "
            "it; paper setting: temperature 2, weight 9, ce weight 0.1.",
            (
                param(
                    "temperature",
                    "float",
                    2.0,
                    "Base temperature applied to the z-scores.",
                    0.1,
                    100,
                ),
                param(
                    "base",
                    "choice",
                    "kd",
                    "The loss it standardizes: 'kd' or 'dkd'.",
                    choices=("kd", "dkd"),
                ),
                param("alpha", "float", 1.0, "With base 'dkd': weight of TCKD.", 0.0, 100.0),
                param("beta", "float", 8.0, "With base 'dkd': weight of NCKD.", 0.0, 100.0),
                param("warmup", "int", 20, "With base 'dkd': warm-up epochs.", 0, 10000),
            ),
            paper="Sun, Ren, Li, Wang, Cao. Logit Standardization in Knowledge Distillation. "
            "CVPR 2024",
            kind="logits",
            implementation="worker.engine.losses.logit_std:LogitStandardization",
            default_weight=9.0,
        ),
        LossEntry(
            "reverse_kl",
            "Reverse KL (MiniLLM, token-level)",
            "T^2 * mean over positions of KL(softmax(s/T) || softmax(t/T)): mode-seeking, the "
            "student is penalised for mass where the teacher has little rather than for missing "
            "a teacher mode. Logits [N, classes] or [N, tokens, vocab] (tokens labelled -100 do "
            "not count). The token-level form of MiniLLM's objective (GKD's beta = 1).",
            (param("temperature", "float", 1.0, _T.help, 0.1, 100),),
            paper="Gu, Dong, Wei, Huang. MiniLLM: Knowledge Distillation of Large Language "
            "Models. ICLR 2024",
            kind="logits",
            implementation="worker.engine.losses.divergence:ReverseKL",
        ),
        LossEntry(
            "gkd_jsd",
            "Generalised JSD (GKD)",
            "T^2 * mean over positions of beta * KL(p_t || M) + (1 - beta) * KL(p_s || M), "
            "M = beta p_t + (1 - beta) p_s, p = softmax(logits/T); beta = 0 is the forward KL "
            "(kd) and beta = 1 the reverse KL (reverse_kl), as TRL's GKD trainer defines them. "
            "Logits [N, classes] or [N, tokens, vocab] (tokens labelled -100 do not count).",
            (
                param(
                    "beta",
                    "float",
                    0.5,
                    "Interpolation: 0 forward KL, 1 reverse KL, 0.5 the symmetric JSD (TRL's "
                    "default).",
                    0.0,
                    1.0,
                ),
                param("temperature", "float", 1.0, _T.help, 0.1, 100),
            ),
            paper="Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist, Bachem. On-Policy "
            "Distillation of Language Models: Learning from Self-Generated Mistakes. ICLR 2024",
            kind="logits",
            implementation="worker.engine.losses.divergence:GeneralizedJSD",
        ),
        LossEntry(
            "skew_kl",
            "Skew KL (DistiLLM)",
            "T^2 * mean over positions of KL(p_t || alpha p_t + (1 - alpha) p_s) (forward), or "
            "KL(p_s || alpha p_s + (1 - alpha) p_t) (reverse), p = softmax(logits/T): the "
            "mixture keeps the divergence and its gradient bounded where the student gives a "
            "teacher token almost no mass; alpha = 0 is the plain KL. Logits [N, classes] or "
            "[N, tokens, vocab] (tokens labelled -100 do not count).",
            (
                param(
                    "alpha",
                    "float",
                    0.1,
                    "Skew: the share of the first distribution in the mixture (DistiLLM: 0.1).",
                    0.0,
                    0.99,
                ),
                param(
                    "direction",
                    "choice",
                    "forward",
                    "'forward': skew KL; 'reverse': skew reverse KL.",
                    choices=("forward", "reverse"),
                ),
                param("temperature", "float", 1.0, _T.help, 0.1, 100),
            ),
            paper="Ko, Kim, Chen, Yun. DistiLLM: Towards Streamlined Distillation for Large "
            "Language Models. ICML 2024",
            kind="logits",
            implementation="worker.engine.losses.divergence:SkewKL",
        ),
        LossEntry(
            "tvd",
            "Total variation distance",
            "T^2 * mean over positions of (1/2) * sum |softmax(t/T) - softmax(s/T)|: symmetric "
            "and bounded in [0, 1] per position. Logits [N, classes] or [N, tokens, vocab] "
            "(tokens labelled -100 do not count); one of DistillKit's logit losses.",
            (param("temperature", "float", 1.0, _T.help, 0.1, 100),),
            paper="Wen, Li, Du, Mou. f-Divergence Minimization for Sequence-Level Knowledge "
            "Distillation. ACL 2023 (TVD as a distillation objective); arcee-ai DistillKit",
            kind="logits",
            implementation="worker.engine.losses.divergence:TVD",
        ),
        LossEntry(
            "hidden_mse",
            "Hidden-state MSE (TinyBERT)",
            "sum over layer pairs of mean over real tokens and teacher channels of "
            "(W h_s - h_t)^2: h the hidden states [N, tokens, H] a pair's blocks output, W a "
            "linear map H_s -> H_t trained with the student (identity-initialised when the "
            "widths match); padding does not count. Pair blocks by the uniform mapping "
            "(student block i with teacher block (i + 1) * L_t / L_s - 1).",
            paper="Jiao et al. TinyBERT: Distilling BERT for Natural Language Understanding. "
            "Findings of EMNLP 2020",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.hidden_mse:HiddenMSE",
            aux_modules=("projections",),
        ),
        LossEntry(
            "attention_kl",
            "Attention KL (TinyBERT)",
            "sum over layer pairs of mean over heads and real query tokens of "
            "KL(A_t || A_s), A = softmax(Q K^T / sqrt(d)) per head of the attention in each "
            "paired block (or attention module): keys at padding masked, later keys too in "
            "causal models (GPT-2, Llama). Different head counts: each side's maps are averaged "
            "over its heads first. Both models must read the same tokens.",
            paper="Jiao et al. TinyBERT: Distilling BERT for Natural Language Understanding. "
            "Findings of EMNLP 2020 (attention-based distillation; as a KL: Wang et al. MiniLM, "
            "NeurIPS 2020)",
            kind="relation",
            needs_pairs=True,
            reads_attention=True,
            implementation="worker.engine.losses.attention_kl:AttentionKL",
        ),
        LossEntry(
            "minilm_relations",
            "Self-attention relations (MiniLM)",
            "sum over layer pairs and A in (Q, K, V) of mean over relation heads and real query "
            "tokens of KL(R_t || R_s), R = softmax(A_r A_r^T / sqrt(d_r)) with each side's "
            "query, key or value projection split into relation_heads heads (independent of the "
            "models' heads and widths). MiniLM pairs the student's last block with the "
            "teacher's last or an upper-middle block.",
            (
                param(
                    "relation_heads",
                    "int",
                    8,
                    "Relation heads R; must divide every paired projection's width (MiniLMv2 "
                    "uses 12 for base-size and 48 for large teachers).",
                    1,
                    256,
                ),
            ),
            paper="Wang et al. MiniLM: Deep Self-Attention Distillation for Task-Agnostic "
            "Compression of Pre-Trained Transformers. NeurIPS 2020; Wang et al. MiniLMv2: "
            "Multi-Head Self-Attention Relation Distillation for Compressing Pretrained "
            "Transformers. Findings of ACL 2021",
            kind="relation",
            needs_pairs=True,
            reads_attention=True,
            implementation="worker.engine.losses.minilm:MiniLMRelations",
        ),
        LossEntry(
            "pad",
            "Prime-Aware Adaptive Distillation",
            "Feature L2 through a connector, weighted per sample by a learned variance: "
            "mean_b(d_b / (2 sigma_b^2) + log sigma_b), sigma_b^2 predicted from the student "
            "feature. Hard samples get a large variance and count less; the value can be negative.",
            (
                param(
                    "eps",
                    "float",
                    1e-4,
                    "Floor added to sigma^2 (bounds the loss below).",
                    1e-8,
                    1.0,
                ),
            ),
            paper="Zhang, Chen, Wang et al. Prime-Aware Adaptive Distillation. ECCV 2020",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.pad:PAD",
            aux_modules=("connectors", "variance_heads"),
        ),
        LossEntry(
            "rkd",
            "Relational KD (distance + angle)",
            "Smooth-L1 between the batch's pairwise distances (each divided by its mean) and "
            "between the angles of all triplets, student vs. teacher. Pair pooled features.",
            (
                param("w_dist", "float", 25.0, "Weight of the distance-wise term.", 0.0, 1000.0),
                param("w_angle", "float", 50.0, "Weight of the angle-wise term.", 0.0, 1000.0),
            ),
            paper="Park, Kim, Lu, Cho. Relational Knowledge Distillation. CVPR 2019",
            kind="relation",
            needs_pairs=True,
            implementation="worker.engine.losses.rkd:RKD",
        ),
        LossEntry(
            "sp",
            "Similarity-preserving KD",
            "||G_s - G_t||_F^2 / B^2 with G = row-normalised F F^T over the batch; RepDistiller "
            "uses weight 3000 on the last convolutional map.",
            (),
            paper="Tung & Mori. Similarity-Preserving Knowledge Distillation. ICCV 2019",
            kind="relation",
            needs_pairs=True,
            implementation="worker.engine.losses.sp:SimilarityPreserving",
            default_weight=3000.0,
        ),
        LossEntry(
            "cc",
            "Correlation congruence",
            "||Psi_s - Psi_t||_F^2 / B^2 between the batch correlation matrices under a Gaussian "
            "RBF kernel on L2-normalised features, approximated by a Taylor expansion.",
            (
                param("gamma", "float", 0.4, "RBF kernel parameter gamma.", 0.0, 10.0),
                param("order", "int", 2, "Order P of the Taylor expansion.", 0, 10),
            ),
            paper="Peng et al. Correlation Congruence for Knowledge Distillation. ICCV 2019",
            kind="relation",
            needs_pairs=True,
            implementation="worker.engine.losses.cc:CorrelationCongruence",
        ),
        LossEntry(
            "pkt",
            "Probabilistic knowledge transfer",
            "KL between teacher and student conditional distributions p(j|i) built from cosine "
            "similarities within the batch; RepDistiller uses weight 30000.",
            (),
            paper="Passalis & Tefas. Learning Deep Representations with Probabilistic Knowledge "
            "Transfer. ECCV 2018",
            kind="relation",
            needs_pairs=True,
            implementation="worker.engine.losses.pkt:PKT",
            default_weight=30000.0,
        ),
        LossEntry(
            "crd",
            "Contrastive representation distillation",
            "InfoNCE between linear, L2-normalised embeddings of student and teacher: the teacher "
            "embedding of the same sample is the positive, a FIFO queue of earlier teacher "
            "embeddings the negatives (fixed memory, unlike RepDistiller's dataset-sized bank). "
            "RepDistiller uses weight 0.8 with ce weight 1.",
            (
                param("feat_dim", "int", 128, "Embedding dimension of both heads.", 2, 4096),
                param(
                    "queue_size",
                    "int",
                    4096,
                    "Negatives kept in the queue (capped at the number of training samples).",
                    1,
                    1_000_000,
                ),
                param(
                    "nce_t", "float", 0.07, "Temperature of the contrastive softmax.", 0.001, 10.0
                ),
            ),
            paper="Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020",
            kind="relation",
            needs_pairs=True,
            implementation="worker.engine.losses.crd:CRD",
            default_weight=0.8,
            aux_modules=("embed_s", "embed_t"),
        ),
        LossEntry(
            "fg_imitation",
            "Fine-grained feature imitation (detection)",
            "MSE between the adapted student feature (3x3 conv to the teacher's channels) and "
            "the teacher's, only at the locations near a ground-truth box: the box moved to a "
            "location is that location's anchor, kept where its IoU with the box exceeds psi "
            "times the best; 1/(2 N_p) * sum over kept locations and channels, N_p the kept "
            "locations (task detection; any teacher, layers by name). The sum over channels "
            "is large next to the task loss (7x the centernet loss at the start on the demo), "
            "hence the starting weight 0.1.",
            (
                param(
                    "psi",
                    "float",
                    0.5,
                    "Keep locations whose anchor IoU exceeds psi x the box's best (paper: 0.5).",
                    0.0,
                    0.99,
                ),
            ),
            paper="Wang, Yuan, Zhang, Feng. Distilling Object Detectors with Fine-grained "
            "Feature Imitation. CVPR 2019",
            kind="feature",
            needs_pairs=True,
            implementation="worker.engine.losses.detection:FineGrainedImitation",
            default_weight=0.1,
            aux_modules=("adapters",),
        ),
        LossEntry(
            "ld",
            "Localization distillation (detection)",
            "KD on the box-side distributions: at each ground-truth box's centre cell, "
            "T^2 * KL(softmax(t/T) || softmax(s/T)) over the distance bins of each side "
            "(left, top, right, bottom), averaged over the sides and cells. Both models' outputs "
            "in the dense-head layout [N, classes + 4 * bins, h, w] with the same bins (task "
            "detection); the paper uses T = 10 and weight 0.25.",
            (
                param(
                    "temperature", "float", 10.0, "Softmax temperature T over the bins.", 0.1, 100
                ),
            ),
            paper="Zheng, Ye, Wang, Cao, Ren, Zuo, Cheng. Localization Distillation for Dense "
            "Object Detection. CVPR 2022",
            kind="logits",
            default_weight=0.25,
            implementation="worker.engine.losses.detection:LocalizationDistillation",
        ),
        LossEntry(
            "heatmap_kd",
            "Heatmap KD (detection)",
            "KD on the class-centre heatmaps: each class score per location is a binary "
            "(sigmoid) distribution; T^2 times the binary KL(teacher || student) summed over the "
            "classes and averaged over the locations. Both models' outputs in the dense-head "
            "layout (task detection).",
            (param("temperature", "float", 1.0, "Temperature T of the sigmoid.", 0.1, 100),),
            paper="Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. 2015",
            kind="logits",
            implementation="worker.engine.losses.detection:HeatmapKD",
        ),
        *(
            LossEntry(
                name,
                title,
                f"{formula} between the student's and the teacher's sentence embeddings [N, D] "
                "(task sentence_embedding: the mean of the last hidden state over the real "
                "tokens); both of the same width (a narrower student keeps the teacher's hidden "
                "width).",
                paper="Reimers & Gurevych. Making Monolingual Sentence Embeddings Multilingual "
                "using Knowledge Distillation. EMNLP 2020",
                kind="logits",
                implementation=f"worker.engine.losses.embedding:{cls}",
            )
            for name, title, formula, cls in (
                (
                    "embedding_mse",
                    "Embedding MSE (sentence embeddings)",
                    "mean over texts and dimensions of (s - t)^2",
                    "EmbeddingMSE",
                ),
                (
                    "embedding_cosine",
                    "Embedding cosine (sentence embeddings)",
                    "mean over texts of 1 - cos(s, t)",
                    "EmbeddingCosine",
                ),
            )
        ),
    ]
}
