"""Structured KD for dense outputs (Liu et al. 2019): `pairwise` by hand, the `adversarial`
critic (it learns, it stays out of the student's gradients and optimizer, it survives a
checkpoint), and a short segmentation distillation with both through the engine."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from torch import nn

from core.catalog.tasks import task_losses
from core.config import LossSpec, RunConfig
from tests.unit.engine.support import Epochs
from worker.engine.losses import LossContext, StepOutputs, build_loss
from worker.engine.losses.adversarial import Adversarial
from worker.engine.schemes.offline import OfflineScheme
from worker.engine.students import build_student
from worker.engine.tasks import build_task
from worker.engine.tasks.segmentation.data import SegData, synthetic_digits
from worker.engine.trainer import Cancelled, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _pairwise(s_shape: tuple, t_shape: tuple, **params: float):
    return build_loss(
        LossSpec(name="pairwise", params=params), LossContext(3, [(s_shape, t_shape)])
    )


def _maps(nodes: list[list[float]], size: int = 1) -> torch.Tensor:
    """A [1, C, 2*size, 2*size] map whose 2x2 grid of size x size patches has `nodes` (row
    major) as each patch's maximum; the patch's other locations hold a third of it."""
    c = len(nodes[0])
    out = torch.zeros(1, c, 2 * size, 2 * size)
    for k, node in enumerate(nodes):
        i, j = divmod(k, 2)
        patch = torch.tensor(node)[:, None, None].expand(c, size, size).clone() / 3
        patch[:, 0, 0] = torch.tensor(node)
        out[0, :, i * size : (i + 1) * size, j * size : (j + 1) * size] = patch
    return out


def test_pairwise_on_a_2x2_node_grid_by_hand() -> None:
    """Teacher nodes e1, e2, e1, e2: a^t is 1 on the 8 pairs of equal nodes, 0 on the 8 others;
    student nodes all e1: a^s is 1 everywhere, so 8 squared differences of 1 over 16 pairs."""
    t = _maps([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    s = _maps([[1.0, 0.0]] * 4)
    loss = _pairwise((2, 2, 2), (2, 2, 2))
    assert loss(StepOutputs(torch.zeros(1), torch.zeros(1), torch.zeros(1), [s], [t])).item() == (
        pytest.approx(8 / 16)
    )
    same = loss(StepOutputs(torch.zeros(1), torch.zeros(1), torch.zeros(1), [t], [t]))
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_pairwise_pools_patches_and_compares_any_channel_count() -> None:
    """4x4 maps, scale 0.5: 2x2 patches max-pooled to 2x2 nodes. Teacher nodes (1,0), (1,1),
    (0,1), (1,0); student (3 channels) (1,0,0), (0,1,0), (0,1,0), (0,0,1). Cosines by hand:
    teacher pairs (0,1) (1,2) (1,3) 1/sqrt2, (0,2) (2,3) 0, (0,3) 1; student (1,2) 1, else 0."""
    r = 2**-0.5
    a_t = torch.tensor([[1, r, 0, 1], [r, 1, r, r], [0, r, 1, 0], [1, r, 0, 1]])
    a_s = torch.tensor([[1.0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]])
    expected = ((a_s - a_t) ** 2).sum().item() / 16
    t = _maps([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]], size=2)
    s = _maps([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0], [0, 0, 1.0]], size=2)
    loss = _pairwise((3, 4, 4), (2, 4, 4), scale=0.5)
    assert loss.grid(4, 4) == (2, 2) and loss.grid(8, 6) == (2, 2)
    assert _pairwise((3, 4, 4), (2, 4, 4), scale=0.25).grid(8, 8) == (4, 4)
    value = loss(StepOutputs(torch.zeros(1), torch.zeros(1), torch.zeros(1), [s], [t]))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_pairwise_refuses_vectors() -> None:
    with pytest.raises(ValueError, match="feature maps"):
        _pairwise((8,), (8,))


# ---------------------------------------------------------------------------------------------
# adversarial


def _adversarial(**params) -> Adversarial:
    loss = build_loss(LossSpec(name="adversarial", params=params), LossContext(3))
    assert isinstance(loss, Adversarial)
    return loss


def _fixed(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images [n, 1, 8, 8], 'teacher' logits peaked on class 0, 'student' logits on class 2."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 1, 8, 8, generator=g)
    t = torch.randn(n, 3, 8, 8, generator=g)
    s = torch.randn(n, 3, 8, 8, generator=g)
    t[:, 0] += 3.0
    s[:, 2] += 3.0
    return image, s, t


def test_the_critic_learns_to_tell_teacher_maps_from_student_maps() -> None:
    torch.manual_seed(0)
    image, s, t = _fixed()
    loss = _adversarial(lr=1e-3, width=8)
    losses = []
    for _ in range(30):
        loss(StepOutputs(s, t, torch.zeros(8), inputs=image))
        assert loss.critic_loss is not None
        losses.append(loss.critic_loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    critic = loss.critic
    assert critic is not None
    with torch.no_grad():
        real = critic(torch.cat([image, t.softmax(1)], 1))
        fake = critic(torch.cat([image, s.softmax(1)], 1))
    assert (real > fake.max()).all()  # every teacher map scores above every student map


def test_the_students_gradient_is_the_generator_term_alone() -> None:
    """The loss's gradient on the student's logits is that of -mean D'(I, softmax(s)) with D'
    the critic after this call's step: the critic's own loss adds nothing, and the critic's
    weights get no gradient from the student's backward."""
    torch.manual_seed(1)
    image, s, t = _fixed(seed=1)
    loss = _adversarial(width=8)
    s = s.clone().requires_grad_(True)
    value = loss(StepOutputs(s, t, torch.zeros(8), inputs=image))
    value.backward()
    critic = copy.deepcopy(loss.critic)
    assert critic is not None and loss.critic is not None
    critic.requires_grad_(False)
    s2 = s.detach().clone().requires_grad_(True)
    expected = -critic(torch.cat([image, s2.softmax(1)], 1)).mean()
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert s.grad is not None and s2.grad is not None
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-6, atol=1e-9)
    assert all(p.grad is None for p in loss.critic.parameters())
    assert list(loss.parameters()) == []  # nothing of the critic for the student's optimizer


def test_no_critic_step_outside_training() -> None:
    image, s, t = _fixed()
    loss = _adversarial(width=8)
    loss(StepOutputs(s, t, torch.zeros(8), inputs=image))
    assert loss.critic is not None
    before = copy.deepcopy(loss.critic.state_dict())
    loss.eval()
    loss(StepOutputs(s, t, torch.zeros(8), inputs=image))
    with torch.no_grad():
        loss.train()(StepOutputs(s, t, torch.zeros(8), inputs=image))
    for k, v in loss.critic.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_the_critic_is_not_in_the_schemes_parameter_groups() -> None:
    """The trainer's optimizer takes `scheme.param_groups()`; the critic's weights are not
    there, not even once the critic exists."""
    image, s, t = _fixed()
    student, loss = nn.Conv2d(1, 3, 1), _adversarial(width=8)
    scheme = OfflineScheme()
    scheme.setup(nn.Conv2d(1, 3, 1), student, nn.ModuleList([loss]))
    loss(StepOutputs(s, t, torch.zeros(8), inputs=image))
    assert loss.critic is not None
    ids = {id(p) for group in scheme.param_groups() for p in group["params"]}
    assert ids == {id(p) for p in student.parameters()}
    assert not ids & {id(p) for p in loss.critic.parameters()}


def test_the_critic_round_trips_through_the_state_dict() -> None:
    """A fresh loss loaded from the state dict (weights and Adam state of the critic) takes
    the same next step as the original."""
    image, s, t = _fixed()
    a = _adversarial(width=8)
    for _ in range(3):
        a(StepOutputs(s, t, torch.zeros(8), inputs=image))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)  # as a checkpoint is written and read
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    b = _adversarial(width=8)
    b.load_state_dict(state)
    assert b.critic is None  # built at the next call, from the checkpoint
    torch.manual_seed(5)
    va = a(StepOutputs(s, t, torch.zeros(8), inputs=image))
    torch.manual_seed(5)
    vb = b(StepOutputs(s, t, torch.zeros(8), inputs=image))
    assert va.item() == vb.item()
    assert a.critic is not None and b.critic is not None
    for (k, x), y in zip(
        a.critic.state_dict().items(), b.critic.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), k
    wrong = _adversarial(width=8)
    wrong.load_state_dict(state)
    with pytest.raises(ValueError, match="channels"):
        wrong(StepOutputs(s[:, :2], t[:, :2], torch.zeros(8), inputs=image))


def test_adversarial_refuses_class_scores() -> None:
    with pytest.raises(ValueError, match="dense outputs"):
        _adversarial()(StepOutputs(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2)))


def test_raw_outputs_without_condition_serve_image_generation() -> None:
    """`output` raw and no image condition: the critic sees the outputs themselves (an image
    task's teacher output is the real sample)."""
    image, s, t = _fixed()
    loss = _adversarial(width=8, output="raw", condition=False)
    loss(StepOutputs(s, t, torch.zeros(8), inputs=image))
    assert loss.get_extra_state()["channels"] == [3, 0]


# ---------------------------------------------------------------------------------------------
# through the engine


@pytest.fixture(scope="module")
def digits() -> SegData:
    return synthetic_digits(40, seed=5)


def _config() -> RunConfig:
    return RunConfig.model_validate(
        {
            "task": "segmentation",
            "teacher": {"path": "unused.pt2"},
            "dataset": {"path": "unused.npz"},
            "student": {"architecture": "seg_fcn", "kwargs": {"width": 0.25}},
            "losses": [
                {"name": "ce"},
                {"name": "pixel_kd"},
                {"name": "pairwise", "weight": 0.5},
                {"name": "adversarial", "weight": 0.1, "params": {"width": 8}},
            ],
            "layer_pairs": [{"teacher": "backbone.layer3", "student": "backbone.layer3"}],
            "training": {
                "epochs": 2,
                "batch_size": 10,
                "lr": 0.05,
                "device": "cpu",
                "export_onnx": False,
            },
        }
    )


def test_segmentation_distils_with_structured_losses_and_resumes_exactly(
    digits: SegData, tmp_path: Path
) -> None:
    """ce + pixel_kd + pairwise + adversarial on the synthetic digits: every term is logged,
    the checkpoint holds the critic, and a run cancelled mid-way and resumed ends with the same
    student and critic as an uninterrupted one (the critic's weights and Adam state resumed)."""
    assert {"pairwise", "adversarial"} <= set(task_losses("segmentation"))
    assert "adversarial" not in task_losses("classification")
    task = build_task("segmentation")
    torch.manual_seed(0)
    teacher = build_student("seg_unet", (1, 32, 32), 11, width=0.5).eval()
    train_data, val_data = task.split(digits, 0.25, 0)
    rec = Epochs()
    full = train(_config(), teacher, train_data, val_data, task=task, callbacks=rec)
    assert {"loss/ce", "loss/pixel_kd", "loss/pairwise", "loss/adversarial"} <= rec.steps[0]
    last = full.history[-1]
    assert 0.0 <= last["val/miou"] <= 1.0

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Cancelled):
        train(
            _config(),
            teacher,
            train_data,
            val_data,
            task=task,
            callbacks=Epochs(4),
            checkpoint_path=ckpt,
        )
    saved = torch.load(ckpt, weights_only=True)
    critic = saved["losses"]["3._extra_state"]
    assert critic["channels"] == [11, 1] and critic["optimizer"]["state"]
    resumed = train(_config(), teacher, train_data, val_data, task=task, checkpoint_path=ckpt)
    for (k, a), b in zip(
        full.student.state_dict().items(), resumed.student.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k


RUN_YAML = """
task: segmentation
teacher: {path: teacher.pt2}
dataset: {path: digits.npz}
student: {architecture: seg_fcn}
layer_pairs: [{teacher: backbone.layer3, student: backbone.layer3}]
losses:
  - {name: ce}
  - {name: pixel_kd}
  - {name: pairwise, weight: 0.5, params: {scale: 0.25}}
  - {name: adversarial, weight: 0.1, params: {lr: 0.0002, output: softmax}}
"""


def test_a_run_config_file_with_the_structured_losses_validates() -> None:
    """`distill-studio train run.yaml` reads the same run config: these losses validate for
    segmentation, bad parameters and the adversarial term on class scores do not."""
    cfg = RunConfig.from_yaml(RUN_YAML)
    assert [s.name for s in cfg.losses] == ["ce", "pixel_kd", "pairwise", "adversarial"]
    assert cfg.losses[3].resolved_params()["gp_weight"] == 10.0
    with pytest.raises(ValueError, match="output"):
        RunConfig.from_yaml(RUN_YAML.replace("output: softmax", "output: logits"))
    classification = (
        RUN_YAML.replace("task: segmentation", "task: classification")
        .replace("seg_fcn", "resnet8")
        .replace("  - {name: pixel_kd}\n", "")
    )
    with pytest.raises(ValueError, match="'adversarial' does not work with task 'classification'"):
        RunConfig.from_yaml(classification)
