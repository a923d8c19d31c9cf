"""Tasks, declared once (torch-free): name, help, parameters, dataset formats, metrics, stage
rule and implementation.

A task decides what a batch is (inputs, targets), how the dataset formats it accepts are read,
the validation metrics, the evaluation report, the example input for export and the layer-stage
rule (`worker.engine.tasks.base.Task`). The engine builds the one a run config names
(`RunConfig.task`) from `implementation`, a "module:Class" string imported only when a run needs
it (`Entry.load`), so this module stays torch-free.

`stage_rule` names the rule that groups an inspection's layers into stages
(`worker.engine.taps.STAGE_RULES`) and pairs them (`core.pairing.STAGE_RULES`): "spatial" groups
layers by the resolution of their 4-D maps ([C, H, W] without the batch) and pairs the ends of
those stages and, when either network has none (MLPs), the penultimate features; "blocks" (the
text tasks') makes each transformer block a stage and pairs student block i with teacher block
round((i + 1) * L_t / L_s) - 1 (TinyBERT's uniform mapping). `stage_hint`
says, in a pairing error, which student layers the rule's stages are made of.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from core.catalog.params import Entry, param

DEFAULT = "classification"
_MAX_LENGTH = param(
    "max_length",
    "int",
    128,
    "Longest row in tokens (longer rows are cut and counted); at most the teacher's positions.",
    2,
    1_048_576,
)
StageRule = Literal["spatial", "blocks"]


@dataclass(frozen=True)
class TaskEntry(Entry):
    """One task: what the UI shows and where the engine finds its class."""

    kind: str = "task"
    formats: tuple[str, ...] = ()  # dataset upload formats the task reads
    metrics: tuple[str, ...] = ()  # validation metrics, reported per epoch as val/<name>
    stage_rule: StageRule = "spatial"
    stage_hint: str = ""  # "pick a student layer <hint>" in a pairing error
    # the zoo students (by `StudentEntry.kind`) and losses the New run form offers; empty: the
    # kinds / losses no other task lists (`task_students`, `task_losses`)
    student_kinds: tuple[str, ...] = ()
    losses: tuple[str, ...] = ()
    own_losses: tuple[str, ...] = ()  # of `losses`, those only this task can use
    # a loss's parameters as this task needs them, where its catalog default is another task's
    # (generation: the adversarial critic reads raw images, not softmax maps); a run config
    # that leaves such a parameter out gets this value, and the New run form starts at it
    loss_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def extra_json(self) -> dict[str, Any]:
        return {
            "formats": list(self.formats),
            "metrics": list(self.metrics),
            "stage_rule": self.stage_rule,
            "students": task_students(self.name),
            "losses": task_losses(self.name),
            "loss_params": self.loss_params,
        }


TASKS: dict[str, TaskEntry] = {
    e.name: e
    for e in [
        TaskEntry(
            "classification",
            "Classification",
            "One class per sample: targets are class indices and the teacher outputs class "
            "scores [N, classes]; validated by top-1 accuracy and cross-entropy, evaluated by "
            "top-1/top-5, agreement and calibration (ECE).",
            implementation="worker.engine.tasks.classification:ClassificationTask",
            formats=("npz", "zip", "tar", "csv", "parquet"),
            metrics=("top1", "loss"),
            stage_rule="spatial",
            stage_hint="with a 4D output",
        ),
        TaskEntry(
            "segmentation",
            "Semantic segmentation",
            "One class per pixel: targets are masks [H, W] of class indices (255: ignored) and "
            "the teacher outputs per-pixel class logits [N, classes, H, W]; validated by mIoU, "
            "pixel accuracy and cross-entropy, evaluated by mIoU, per-class IoU, pixel accuracy "
            "and agreement. Datasets: .npz (x, masks, optional classes) or .zip (images/ and "
            "masks/ PNGs with the same names, optional classes.txt).",
            implementation="worker.engine.tasks.segmentation:SegmentationTask",
            formats=("npz", "zip"),
            metrics=("miou", "pixel_acc", "loss"),
            stage_rule="spatial",
            stage_hint="with a 4D output",
            student_kinds=("segmentation",),
            losses=(
                "ce",
                "pixel_kd",
                "cwd",
                "pairwise",
                "adversarial",
                "fitnets",
                "at",
                "feature_l2",
                "nst",
                "sp",
                "pkt",
            ),
            own_losses=("pixel_kd", "cwd", "adversarial"),
        ),
        TaskEntry(
            "detection",
            "Object detection",
            "Boxes with a class each: targets are per image its boxes (xyxy pixels) and classes; "
            "the student is a dense-head detector (det_centernet) trained with its own loss "
            "(centernet). Any .pt2 teacher serves feature distillation (layers tapped by name); "
            "a teacher whose output follows the dense-head layout [N, classes + 4 * bins, H/2, "
            "W/2] (class-centre logits, then per side left/top/right/bottom the distance-bin "
            "logits) is also evaluated by mAP. Validated by COCO mAP@[.5:.95], mAP@.5 and the "
            "loss, evaluated by mAP, mAP@.5 and per-class AP (faster-coco-eval). Datasets: .zip "
            "of images with COCO annotations.json (boxes xywh).",
            implementation="worker.engine.tasks.detection:DetectionTask",
            formats=("zip",),
            metrics=("map", "map50", "loss"),
            stage_rule="spatial",
            stage_hint="with a 4D output",
            student_kinds=("detection",),
            losses=(
                "centernet",
                "fg_imitation",
                "ld",
                "heatmap_kd",
                "fitnets",
                "at",
                "feature_l2",
                "nst",
                "sp",
                "pkt",
            ),
            own_losses=("centernet", "fg_imitation", "ld", "heatmap_kd"),
        ),
        TaskEntry(
            "generation",
            "Image-to-image generation",
            "Images to images of the same size (denoising, colourising, pix2pix-style; GAN "
            "Compression's case): the teacher is any .pt2 mapping [N, C, H, W] to "
            "[N, C', H, W], images in [0, 1]. Validated by PSNR and SSIM against the teacher's "
            "outputs (and the targets, val/target_*), evaluated by PSNR and SSIM of the student "
            "against the teacher and of both models against the targets. Datasets: .npz (x, "
            "optional y of the same size) or .zip (inputs/ and optional targets/ PNGs with the "
            "same names); without targets the student learns from the teacher alone.",
            implementation="worker.engine.tasks.generation:GenerationTask",
            formats=("npz", "zip"),
            metrics=("psnr", "ssim", "loss"),
            stage_rule="spatial",
            stage_hint="with a 4D output",
            student_kinds=("generation",),
            losses=("recon_l1", "target_l1", "adversarial", "fitnets", "feature_l2", "at"),
            own_losses=("recon_l1", "target_l1"),
            loss_params={"adversarial": {"output": "raw"}},
        ),
        TaskEntry(
            "text_classification",
            "Text classification",
            "One class per text: the teacher is a Hugging Face sequence classifier (a .zip of "
            "config.json with id2label, model.safetensors and tokenizer.json; "
            "*ForSequenceClassification), the student a text student built from it or a "
            "checkpoint with the same tokenizer. Datasets: .csv or .jsonl with a text column and "
            "a label column (the teacher's id2label names, or its class indices), tokenised with "
            "the teacher's tokenizer. Validated by accuracy, agreement with the teacher and "
            "cross-entropy; evaluated by both models' accuracy, agreement and calibration (ECE) "
            "and sample texts with both predictions.",
            params=(_MAX_LENGTH,),
            implementation="worker.engine.tasks.text.classification:TextClassificationTask",
            formats=("csv", "jsonl"),
            metrics=("accuracy", "agreement", "loss"),
            stage_rule="blocks",
            stage_hint="that is a transformer block",
            student_kinds=("text",),
            losses=(
                "ce",
                "kd",
                "reverse_kl",
                "gkd_jsd",
                "skew_kl",
                "tvd",
                "hidden_mse",
                "attention_kl",
                "minilm_relations",
            ),
        ),
        TaskEntry(
            "sentence_embedding",
            "Sentence embeddings",
            "One vector per text: the teacher is a Hugging Face encoder without a head (BertModel, "
            "RobertaModel, ... such as a sentence-transformers model; a .zip of config.json, "
            "model.safetensors and tokenizer.json) pooled by the mean of its last hidden state, "
            "and the student learns to give each text the teacher's embedding (Reimers & "
            "Gurevych 2020). Datasets: texts only, no labels: .txt (one a line), .jsonl or .csv "
            "with a text column. Validated by the cosine to the teacher's embeddings; evaluated "
            "by the mean cosine and nearest-neighbour agreement (top-1, top-5) on held-out texts, "
            "with both models' latency.",
            params=(_MAX_LENGTH,),
            implementation="worker.engine.tasks.text.embedding:SentenceEmbeddingTask",
            formats=("txt", "jsonl", "csv"),
            metrics=("cosine", "loss"),
            stage_rule="blocks",
            stage_hint="that is a transformer block",
            student_kinds=("text",),
            losses=(
                "embedding_mse",
                "embedding_cosine",
                "hidden_mse",
                "attention_kl",
                "minilm_relations",
            ),
            own_losses=("embedding_mse", "embedding_cosine"),
        ),
        TaskEntry(
            "causal_lm",
            "Causal language modelling",
            "Next-token prediction: the teacher is a Hugging Face causal LM checkpoint (a .zip of "
            "config.json, model.safetensors and tokenizer.json; *ForCausalLM / *LMHeadModel) and "
            "the student learns its per-token distributions [N, tokens, vocabulary]. Datasets: "
            ".txt (one text a line) or .jsonl with 'text', or .jsonl with 'prompt' and "
            "'completion' (instruction data: the loss is on the completion only), tokenised with "
            "the teacher's tokenizer. Validated by perplexity, next-token agreement with the "
            "teacher and the token loss; evaluated by both models' perplexity, agreement, "
            "tokens/s at batch 1 and 32, and sample continuations side by side.",
            params=(_MAX_LENGTH,),
            implementation="worker.engine.tasks.text.lm:CausalLMTask",
            formats=("txt", "jsonl"),
            metrics=("perplexity", "agreement", "loss"),
            stage_rule="blocks",
            stage_hint="that is a transformer block",
            student_kinds=("text",),
            losses=(
                "ce",
                "kd",
                "reverse_kl",
                "gkd_jsd",
                "skew_kl",
                "tvd",
                "hidden_mse",
                "attention_kl",
                "minilm_relations",
            ),
        ),
    ]
}


def task_students(name: str) -> list[str]:
    """The zoo students the task `name` offers: those of its `student_kinds`, or, when it lists
    none, those of every kind no other task lists."""
    from core.catalog.students import STUDENTS

    entry = TASKS[name]
    if entry.student_kinds:
        return [s for s, e in STUDENTS.items() if e.kind in entry.student_kinds]
    taken = {k for t in TASKS.values() if t.name != name for k in t.student_kinds}
    return [s for s, e in STUDENTS.items() if e.kind not in taken]


def task_losses(name: str) -> list[str]:
    """The losses the task `name` offers: its `losses`, or, when it lists none, every catalog
    loss that no other task lists as its own."""
    from core.catalog.losses import LOSSES

    entry = TASKS[name]
    if entry.losses:
        return [n for n in entry.losses if n in LOSSES]
    taken = {n for t in TASKS.values() if t.name != name for n in t.own_losses}
    return [n for n in LOSSES if n not in taken]
