"""Student architectures, declared once each: name, family, parameters, paper, builder.

An entry names its engine builder as `"worker.engine.students.<module>:<function>"`, called as
`builder(*builder_args, input_shape, num_classes, **params)`; the engine imports it when a run
builds the student (`worker.engine.students.build_student`). Also here, torch-free: the depth
rule of the generic families and the architecture of a student derived from a zoo teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.catalog.params import Entry, param


@dataclass(frozen=True)
class StudentEntry(Entry):
    """A student architecture: its family, and the fixed depth/width of a named one.

    `builder_args` are the leading positional arguments its builder takes before
    `(input_shape, num_classes)` (e.g. the depth of `resnet20`).
    """

    family: str = ""
    depth: int | None = None
    width: float | None = None
    builder_args: tuple[Any, ...] = ()

    def extra_json(self) -> dict[str, Any]:
        fixed = {"depth": self.depth, "width": self.width}
        return {"family": self.family, **{k: v for k, v in fixed.items() if v is not None}}


_WIDTH = param("width", "float", 1.0, "Width multiplier of every layer's channels.", 0.125, 8.0)
_REPDISTILLER = (
    "Tian, Krishnan, Isola. Contrastive Representation Distillation (RepDistiller). ICLR 2020"
)
_RESNET_PAPER = "He et al. Deep Residual Learning. CVPR 2016"
_WRN_PAPER = "Zagoruyko & Komodakis. Wide Residual Networks. BMVC 2016"
_VGG_PAPER = "Simonyan & Zisserman. Very Deep Convolutional Networks. ICLR 2015"
_DEPTH_MULT = param(
    "depth", "float", 1.0, "Depth multiplier: blocks per stage times this (at least 1).", 0.1, 4.0
)
_STEM = param(
    "stem",
    "choice",
    "auto",
    "auto: the ImageNet stem from 112 px on the shorter side, below that one that keeps the "
    "resolution (small images are not reduced to nothing); or force imagenet / small.",
    choices=("auto", "imagenet", "small"),
)
RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
WRN_NAMED = {"wrn_16_1": (16, 1), "wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}
VGG_NAMED = (8, 11, 13)

STUDENTS: dict[str, StudentEntry] = {
    e.name: e
    for e in [
        *(
            StudentEntry(
                f"resnet{d}",
                f"ResNet-{d} (CIFAR-style)",
                f"Three stages of basic blocks, depth {d}, channels 16/32/64 times width.",
                (_WIDTH,),
                paper=_RESNET_PAPER,
                kind="cnn",
                family="resnet",
                depth=d,
                implementation="worker.engine.students.resnet:resnet",
                builder_args=(d,),
            )
            for d in RESNET_DEPTHS
        ),
        *(
            StudentEntry(
                f"resnet{d}x4",
                f"ResNet-{d}x4 (CIFAR-style)",
                f"Depth {d} with four times wider channels (64/128/256).",
                (),
                paper=_REPDISTILLER,
                kind="cnn",
                family="resnet",
                depth=d,
                width=4.0,
                implementation="worker.engine.students.resnet:resnet_x4",
                builder_args=(d,),
            )
            for d in (8, 32)
        ),
        StudentEntry(
            "resnet",
            "ResNet (any depth)",
            "CIFAR-style ResNet of any depth 6n+2 (8, 14, 20, 26, ...); derived students use it "
            "between the named depths.",
            (
                param("depth", "int", 20, "Depth 6n+2: n basic blocks per stage.", 8, 1202),
                _WIDTH,
            ),
            paper=_RESNET_PAPER,
            kind="cnn",
            family="resnet",
            implementation="worker.engine.students.resnet:resnet_generic",
        ),
        *(
            StudentEntry(
                name,
                f"WRN-{d}-{k}",
                f"Wide ResNet, depth {d}, widening factor {k}: pre-activation blocks with "
                f"{16 * k}/{32 * k}/{64 * k} channels.",
                (),
                paper=_WRN_PAPER,
                kind="cnn",
                family="wrn",
                depth=d,
                width=float(k),
                implementation="worker.engine.students.wrn:wrn_named",
                builder_args=(name,),
            )
            for name, (d, k) in WRN_NAMED.items()
        ),
        StudentEntry(
            "wrn",
            "WRN-d-k (any depth and width)",
            "Wide ResNet of depth 6n+4 (10, 16, 22, 28, 40, ...) and widening factor k.",
            (
                param(
                    "depth", "int", 16, "Depth 6n+4: n pre-activation blocks per stage.", 10, 1000
                ),
                param(
                    "width", "float", 2.0, "Widening factor k: channels 16k/32k/64k.", 0.125, 16.0
                ),
                param(
                    "dropout",
                    "float",
                    0.0,
                    "Dropout between the two convolutions of a block.",
                    0.0,
                    0.9,
                ),
            ),
            paper=_WRN_PAPER,
            kind="cnn",
            family="wrn",
            implementation="worker.engine.students.wrn:wrn",
        ),
        *(
            StudentEntry(
                f"vgg{d}",
                f"VGG-{d} (BN, CIFAR-style)",
                f"{d - 3} 3x3 convolutions with batch norm in five blocks (64..512 channels times "
                "width), max pooling between blocks, one linear layer.",
                (_WIDTH,),
                paper=_VGG_PAPER,
                kind="cnn",
                family="vgg",
                depth=d,
                implementation="worker.engine.students.vgg:vgg_named",
                builder_args=(d,),
            )
            for d in VGG_NAMED
        ),
        StudentEntry(
            "vgg",
            "VGG (any depth)",
            "VGG with batch norm of any depth >= 8 (= convolutions + 3); 16 and 19 are the "
            "classic ones.",
            (
                param("depth", "int", 11, "Convolutions + 3, spread over the five blocks.", 8, 40),
                _WIDTH,
            ),
            paper=_VGG_PAPER,
            kind="cnn",
            family="vgg",
            implementation="worker.engine.students.vgg:vgg",
        ),
        StudentEntry(
            "mobilenetv2",
            "MobileNetV2",
            "Inverted residual blocks with depthwise convolutions; width 0.5 is RepDistiller's "
            "CIFAR student.",
            (
                param("width", "float", 0.5, "Width multiplier of the channels.", 0.1, 4.0),
                _DEPTH_MULT,
            ),
            paper="Sandler et al. MobileNetV2: Inverted Residuals and Linear Bottlenecks. CVPR 2018",
            kind="cnn",
            family="mobilenetv2",
            implementation="worker.engine.students.mobilenetv2:mobilenetv2",
        ),
        StudentEntry(
            "shufflenetv1",
            "ShuffleNetV1",
            "Group convolutions with channel shuffle (3 groups, widths 240/480/960 times width).",
            (
                param("width", "float", 1.0, "Width multiplier of the stage widths.", 0.1, 4.0),
                _DEPTH_MULT,
            ),
            paper="Zhang et al. ShuffleNet: An Extremely Efficient CNN for Mobile Devices. CVPR 2018",
            kind="cnn",
            family="shufflenetv1",
            implementation="worker.engine.students.shufflenet:shufflenetv1",
        ),
        StudentEntry(
            "shufflenetv2",
            "ShuffleNetV2",
            "Channel split, depthwise convolutions and channel shuffle (116/232/464 at width 1; "
            "the paper's 0.5, 1.5 and 2 sizes at those widths).",
            (
                param(
                    "width",
                    "float",
                    1.0,
                    "Width: 0.5, 1, 1.5, 2 as in the paper, or any scale.",
                    0.1,
                    4.0,
                ),
                _DEPTH_MULT,
            ),
            paper="Ma et al. ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture "
            "Design. ECCV 2018",
            kind="cnn",
            family="shufflenetv2",
            implementation="worker.engine.students.shufflenet:shufflenetv2",
        ),
        *(
            StudentEntry(
                name,
                title,
                f"{text} torchvision's layout and names (conv1, layer1..layer4, fc); "
                "ImageNet stem from 112 px, a stride-1 3x3 stem without max pool below (overall "
                "stride 8: 32x32 ends at 4x4).",
                (_WIDTH, _DEPTH_MULT, _STEM),
                paper=_RESNET_PAPER,
                kind="cnn",
                family="resnet_imagenet",
                implementation="worker.engine.students.resnet_imagenet:resnet_imagenet",
                builder_args=(name,),
            )
            for name, title, text in (
                ("resnet18", "ResNet-18 (ImageNet-style)", "Basic blocks 2/2/2/2, 64..512 ch."),
                ("resnet34", "ResNet-34 (ImageNet-style)", "Basic blocks 3/4/6/3, 64..512 ch."),
                ("resnet50", "ResNet-50 (ImageNet-style)", "Bottlenecks 3/4/6/3, 256..2048 ch."),
            )
        ),
        *(
            StudentEntry(
                name,
                title,
                f"{text} Inverted residuals with squeeze-excitation and hardswish, torchvision's "
                "names (features.N, classifier); ImageNet strides from 112 px, below that the "
                "stem and first stride-2 block keep the resolution (overall stride 8).",
                (_WIDTH, _DEPTH_MULT, _STEM),
                paper="Howard et al. Searching for MobileNetV3. ICCV 2019",
                kind="cnn",
                family="mobilenetv3",
                implementation="worker.engine.students.mobilenetv3:mobilenetv3",
                builder_args=(name,),
            )
            for name, title, text in (
                (
                    "mobilenetv3_small",
                    "MobileNetV3-Small",
                    "11 blocks, 2.5M parameters at 1000 classes.",
                ),
                (
                    "mobilenetv3_large",
                    "MobileNetV3-Large",
                    "15 blocks, 5.5M parameters at 1000 classes.",
                ),
            )
        ),
        StudentEntry(
            "efficientnet_b0",
            "EfficientNet-B0",
            "MBConv stages with squeeze-excitation and SiLU (5.3M parameters at 1000 classes), "
            "torchvision's names (features.0..8, classifier); ImageNet strides from 112 px, below "
            "that the stem and first stride-2 stage keep the resolution (overall stride 8).",
            (_WIDTH, _DEPTH_MULT, _STEM),
            paper="Tan & Le. EfficientNet: Rethinking Model Scaling for CNNs. ICML 2019",
            kind="cnn",
            family="efficientnet",
            implementation="worker.engine.students.efficientnet:efficientnet_b0",
        ),
        StudentEntry(
            "deit_tiny",
            "DeiT-Tiny (ViT)",
            "Vision transformer: patch embedding, class token, 12 blocks of attention (3 heads) "
            "and MLP at width 192, timm's names (patch_embed, blocks.N, norm, head). Its layers "
            "give token maps [tokens, dim]: pair them with another transformer's.",
            (
                _WIDTH,
                _DEPTH_MULT,
                param(
                    "patch_size",
                    "int",
                    0,
                    "Patch size in pixels; 0 = auto: 16 from 112 px, 4 below (2 under 16 px).",
                    0,
                    64,
                ),
            ),
            paper="Touvron et al. Training data-efficient image transformers & distillation "
            "through attention (DeiT). ICML 2021",
            kind="vit",
            family="vit",
            implementation="worker.engine.students.vit:deit_tiny",
        ),
        StudentEntry(
            "mlp",
            "MLP",
            "Fully connected network for tabular data or small images (flattened).",
            (
                param("hidden", "int", 256, "Units in each hidden layer.", 4, 8192),
                param("depth", "int", 2, "Number of hidden layers.", 1, 16),
                param("dropout", "float", 0.0, "Dropout after each hidden layer.", 0.0, 0.9),
            ),
            kind="mlp",
            family="mlp",
            implementation="worker.engine.students.mlp:mlp",
        ),
        *(
            StudentEntry(
                name,
                title,
                f"{text} Per-pixel class logits [N, classes, H, W] at the input's size "
                "(task segmentation).",
                (
                    param("depth", "int", 8, "Backbone depth (6n+2, as resnet).", 8, 56),
                    _WIDTH,
                ),
                paper=paper,
                kind="segmentation",
                family=name,
                implementation=f"worker.engine.students.segmentation:{name}",
            )
            for name, title, text, paper in (
                (
                    "seg_fcn",
                    "FCN head on a ResNet backbone",
                    "CIFAR ResNet stages, a 3x3 conv and a 1x1 classifier on the last stage, "
                    "upsampled bilinearly.",
                    "Long, Shelhamer, Darrell. Fully Convolutional Networks for Semantic "
                    "Segmentation. CVPR 2015",
                ),
                (
                    "seg_unet",
                    "Light U-Net decoder on a ResNet backbone",
                    "CIFAR ResNet stages; each decoder step upsamples, concatenates the "
                    "stage's skip and fuses with a 3x3 conv.",
                    "Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical "
                    "Image Segmentation. MICCAI 2015",
                ),
            )
        ),
        StudentEntry(
            "det_centernet",
            "CenterNet detector on a ResNet backbone",
            "One-stage anchor-free detector (task detection): CIFAR ResNet stages, the last "
            "upsampled and fused with the second, then a dense head at stride 2 giving "
            "[N, classes + 4 * 16, H/2, W/2]: class-centre logits and, per box side (left, "
            "top, right, bottom), 16 distance-bin logits. Train it with the 'centernet' loss "
            "(focal heatmap + box distances).",
            (param("depth", "int", 8, "Backbone depth (6n+2, as resnet).", 8, 56), _WIDTH),
            paper="Zhou, Wang, Krähenbühl. Objects as Points. 2019",
            kind="detection",
            family="det_centernet",
            implementation="worker.engine.students.detection:det_centernet",
        ),
        StudentEntry(
            "gen_resnet",
            "Encoder-decoder generator (ResNet blocks)",
            "Image-to-image generator (task generation): a 3x3 stem, stride-2 convolutions down, "
            "residual blocks, transposed convolutions up and a 3x3 conv to the output channels "
            "(linear); 16 * width channels at full resolution, doubled at each step down. Any "
            "image whose sides divide by 2^downs, any channel counts in and out.",
            (
                param("width", "float", 1.0, "Width multiplier (16 channels at 1).", 0.125, 8.0),
                param("blocks", "int", 3, "Residual blocks at the lowest resolution.", 0, 16),
                param("downs", "int", 2, "Stride-2 steps down (and up).", 0, 4),
            ),
            paper="Johnson, Alahi, Fei-Fei. Perceptual Losses for Real-Time Style Transfer. "
            "ECCV 2016 (the generator GAN Compression, Li et al. CVPR 2020, compresses)",
            kind="generation",
            family="gen_resnet",
            implementation="worker.engine.students.generation:gen_resnet",
        ),
        StudentEntry(
            "hf_layers",
            "Teacher with fewer layers (DistilBERT-style)",
            "Text tasks, from a Hugging Face teacher: the teacher's architecture with fewer "
            "transformer blocks, each initialised from a teacher block (evenly spaced, the "
            "first and the last included; DistilBERT takes one of two), the embeddings and "
            "the head copied; the teacher's tokenizer.",
            (
                param(
                    "layers",
                    "int",
                    0,
                    "Transformer blocks; 0 = half the teacher's (at least 1).",
                    0,
                    512,
                ),
            ),
            paper="Sanh, Debut, Chaumond, Wolf. DistilBERT, a distilled version of BERT: "
            "smaller, faster, cheaper and lighter. 2019",
            kind="text",
            family="hf_layers",
            implementation="worker.engine.tasks.text.students:hf_layers",
        ),
        StudentEntry(
            "hf_config",
            "Narrower fresh transformer",
            "Text tasks, from a Hugging Face teacher: a randomly initialised model of the "
            "teacher's type and head with fewer blocks, a narrower hidden width, fewer heads "
            "and a narrower MLP (each 0 = half the teacher's); same vocabulary, positions and "
            "tokenizer.",
            (
                param("layers", "int", 0, "Transformer blocks; 0 = half the teacher's.", 0, 512),
                param("hidden", "int", 0, "Hidden width; 0 = half the teacher's.", 0, 65536),
                param(
                    "heads",
                    "int",
                    0,
                    "Attention heads (must divide hidden); 0 = half the teacher's.",
                    0,
                    1024,
                ),
                param(
                    "intermediate", "int", 0, "MLP inner width; 0 = half the teacher's.", 0, 262144
                ),
                param(
                    "size",
                    "choice",
                    "none",
                    "A preset from the BERT miniatures (Turc et al. 2019): tiny 2 blocks x 128, "
                    "mini 4 x 256, small 4 x 512, medium 8 x 512, heads of 64 channels and an "
                    "MLP 4x as wide; the sizes above, where not 0, override it (sentence "
                    "embeddings keep the teacher's hidden width unless `hidden` is given).",
                    choices=("none", "tiny", "mini", "small", "medium"),
                ),
            ),
            paper="Jiao et al. TinyBERT: Distilling BERT for Natural Language Understanding. "
            "Findings of EMNLP 2020 (a narrower student of the teacher's kind); Turc et al. "
            "Well-Read Students Learn Better: On the Importance of Pre-training Compact "
            "Models. 2019 (the size presets)",
            kind="text",
            family="hf_config",
            implementation="worker.engine.tasks.text.students:hf_config",
        ),
        StudentEntry(
            "hf_pruned",
            "Teacher pruned by activation importance (Minitron)",
            "Text tasks, from a Hugging Face teacher: the teacher pruned in depth and width, "
            "then distilled. One forward over calibration rows of the run's token ids scores "
            "each attention head and MLP channel (per block), each hidden channel (the norm "
            "outputs) and each block (cosine distance between its input and output); the "
            "top-scoring ones are kept with the teacher's weights sliced to them (each 0 = "
            "the teacher's). In bert, roberta, distilbert and gpt2 hidden = heads x head size "
            "(give one); grouped-query attention keeps key/value groups whole.",
            (
                param("layers", "int", 0, "Transformer blocks kept; 0 = all.", 0, 512),
                param("hidden", "int", 0, "Hidden (embedding) channels kept; 0 = all.", 0, 65536),
                param("heads", "int", 0, "Attention heads kept per block; 0 = all.", 0, 1024),
                param("intermediate", "int", 0, "MLP channels kept per block; 0 = all.", 0, 262144),
                param(
                    "calibration_rows",
                    "int",
                    256,
                    "Rows of the dataset's token ids the importance is measured on.",
                    1,
                    100000,
                ),
            ),
            paper="Muralidharan et al. Compact Language Models via Pruning and Knowledge "
            "Distillation (Minitron). NeurIPS 2024",
            kind="text",
            family="hf_pruned",
            implementation="worker.engine.tasks.text.students:hf_pruned",
        ),
    ]
}


def student_problems(name: str, params: dict[str, Any]) -> list[str]:
    """Errors for a student's parameters: the catalog ranges plus the resnet/wrn depth rule."""
    errors = STUDENTS[name].check_params(params)
    depth = params.get("depth")
    if (
        errors
        or name not in ("resnet", "wrn", "seg_fcn", "seg_unet", "det_centernet")
        or depth is None
    ):
        return errors
    offset, minimum = (4, 10) if name == "wrn" else (2, 8)
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


def _teacher_entry(
    arch: str | None, kwargs: dict[str, Any] | None, what: str
) -> tuple[StudentEntry, dict[str, Any]]:
    entry = STUDENTS.get(arch or "")
    if entry is None:
        got = f"; got {arch!r}" if arch else "; this teacher has no architecture (a .pt2 graph)"
        raise ValueError(NEEDS_ZOO_TEACHER.format(what=what) + got)
    own = {k: v for k, v in (kwargs or {}).items() if k not in _SHAPE_KEYS}
    errors = entry.check_params(own)
    if errors:
        raise ValueError(f"the teacher's parameters do not fit '{arch}': {'; '.join(errors)}")
    return entry, own


def same_architecture(
    arch: str | None, kwargs: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """Self-distillation: the teacher's own zoo architecture and parameters (fresh weights)."""
    _, own = _teacher_entry(arch, kwargs, "self-distillation students (source 'teacher')")
    return str(arch), own


def _nearest_depth(target: float, offset: int, minimum: int) -> int:
    """The depth 6n + offset (>= minimum) nearest to `target`; ties go to the shallower one."""
    n = (target - offset) / 6
    low, high = 6 * int(n // 1) + offset, 6 * (int(n // 1) + 1) + offset
    best = low if target - low <= high - target else high
    return max(minimum, best)


def _width(value: float, entry: StudentEntry) -> float:
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
    - gen_resnet: width times the width factor, residual blocks times the depth factor
      (rounded, >= 1 when the teacher has any), the steps down kept (the image sizes it takes);
    - mobilenetv2, shufflenetv1/v2, resnet18/34/50, mobilenetv3_small/large, efficientnet_b0,
      deit_tiny: their width and depth multipliers times the factors (other parameters, such as
      the stem or the patch size, kept).
    A named architecture is returned when the result is one (resnet20, wrn_16_2, vgg8, ...),
    else the family's generic entry (resnet, wrn, vgg) with explicit depth and width.
    """
    for name, factor in (("depth_factor", depth_factor), ("width_factor", width_factor)):
        if not 0 < factor <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {factor}")
    entry, own = _teacher_entry(teacher_arch, teacher_kwargs, "derived students")
    kw = {**entry.defaults(), **own}
    family = entry.family
    depth = float(kw.get("depth", entry.depth) or 0)  # every family but mobile/shuffle has one
    width = float(kw.get("width", entry.width if entry.width is not None else 1.0))
    if family == "resnet":
        d = _nearest_depth(depth * depth_factor, 2, 8)
        w = _width(width * width_factor, STUDENTS["resnet"])
        return (
            (f"resnet{d}", {"width": w})
            if d in RESNET_DEPTHS
            else ("resnet", {"depth": d, "width": w})
        )
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
    if family == "gen_resnet":
        blocks = int(kw["blocks"])
        return "gen_resnet", {
            "width": _width(width * width_factor, entry),
            "blocks": max(min(blocks, 1), round(blocks * depth_factor)),
            "downs": int(kw["downs"]),
        }
    if family == "mlp":
        hidden = max(4, round(kw["hidden"] * width_factor))
        return "mlp", {
            "hidden": hidden,
            "depth": max(1, round(kw["depth"] * depth_factor)),
            "dropout": float(kw["dropout"]),
        }
    # mobile, shuffle and the ImageNet-style families: multipliers, other parameters kept
    # (e.g. the stem, the patch size)
    return str(teacher_arch), {
        **{k: v for k, v in kw.items() if k not in ("width", "depth")},
        "width": _width(width * width_factor, entry),
        "depth": max(0.1, round(float(kw["depth"]) * depth_factor, 4)),
    }
