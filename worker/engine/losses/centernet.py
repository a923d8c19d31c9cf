"""The CenterNet detector's own loss: the detection task's loss on the ground-truth boxes."""

from __future__ import annotations

from torch import Tensor

from worker.engine.losses.base import DistillLoss, LossContext, StepOutputs


class CenterNetLoss(DistillLoss):
    """L = focal(heatmap) + size_weight * L1(distances) + dfl_weight * DFL(distance bins),
    each over the number of boxes.

    The penalty-reduced focal loss on the class-centre heatmaps (alpha 2, beta 4; Gaussian
    targets with sigma = the box's side / 6, peak 1 at each box's centre cell), the L1 of the
    expected left/top/right/bottom distances (in stride units) and the distribution focal loss of
    their bins at the centre cells, from a dense-head output [N, classes + 4 * bins, h, w] and
    the detection task's targets [N, boxes, 5]
    (`worker.engine.tasks.detection.centernet.centernet_loss`). Zhou, Wang, Krähenbühl.
    "Objects as Points", 2019; the distances as in TTFNet (Liu et al. AAAI 2020); the bins and
    DFL as in General Focal Loss (Li et al. NeurIPS 2020).
    """

    needs_teacher = False

    def __init__(
        self, ctx: LossContext, size_weight: float = 0.1, dfl_weight: float = 0.25
    ) -> None:
        super().__init__(ctx)
        if size_weight < 0 or dfl_weight < 0:
            raise ValueError(
                f"{self.name}: size_weight and dfl_weight must be >= 0, got {size_weight}, "
                f"{dfl_weight}"
            )
        self.size_weight = float(size_weight)
        self.dfl_weight = float(dfl_weight)

    def forward(self, out: StepOutputs) -> Tensor:
        from worker.engine.tasks.detection.centernet import (
            STRIDE,
            centernet_loss,
            encode,
            split_output,
        )
        from worker.engine.tasks.detection.data import unpack_targets

        output, classes = out.student_logits, self.ctx.num_classes
        try:
            if not isinstance(output, Tensor) or output.dim() != 4:
                raise ValueError(f"got {list(getattr(output, 'shape', []))}")
            split_output(output, classes)
        except ValueError as exc:
            raise ValueError(
                f"loss '{self.name}' needs the dense-head output [N, classes + 4 * bins, h, w] "
                f"({classes} classes) of a detector such as det_centernet: {exc}; use it with "
                "the detection task"
            ) from exc
        boxes, labels = unpack_targets(out.labels.detach().cpu())
        size = (output.shape[-2] * STRIDE, output.shape[-1] * STRIDE)
        heat, dist, mask = encode(boxes, labels, classes, size)
        device = output.device
        return centernet_loss(
            output.float(),
            heat.to(device),
            dist.to(device),
            mask.to(device),
            self.size_weight,
            self.dfl_weight,
        )
