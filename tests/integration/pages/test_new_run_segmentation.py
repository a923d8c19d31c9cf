"""The New run page's task selector: a segmentation dataset starts it at segmentation, which
narrows the students and losses to the task's; the review carries the task."""

from __future__ import annotations

import pytest

from client import Client
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import texts, update
from tests.integration.pages.test_run_workflow import Studio, _app, _seed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    api = Client(live_api.url, live_api.token)
    return _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)


def test_the_task_selector_offers_segmentation_with_its_students_and_losses(
    studio: Studio,
) -> None:
    info = {
        "task": "segmentation",
        "num_samples": 24,
        "num_classes": 4,
        "classes": ["bg", "a", "b", "c"],
        "class_counts": {},
        "input_shape": [3, 8, 8],
        "kind": "image",
    }
    update("Dataset", studio.dataset_id, info=info)
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_dataset").set_value(studio.dataset_id).run()
    assert not at.exception
    assert at.selectbox(key="nr_task").value == "segmentation"
    assert at.selectbox(key="nr_student").options == [
        "FCN head on a ResNet backbone (seg_fcn)",
        "Light U-Net decoder on a ResNet backbone (seg_unet)",
    ]
    losses = " ".join(at.multiselect(key="nr_losses").options)
    assert "(pixel_kd)" in losses and "(cwd)" in losses and "(dkd)" not in losses
    assert "(adversarial)" in losses  # Liu et al.'s structured KD; pairwise once pairs exist
    at.session_state["nr_pairs"] = [{"teacher": "layer3", "student": "layer3", "tap": "output"}]
    at.run()
    assert "(pairwise)" in " ".join(at.multiselect(key="nr_losses").options)
    assert "(gkd_jsd)" not in losses  # the token-level divergences read [N, classes] logits
    at.multiselect(key="nr_losses").set_value(["ce", "pixel_kd"]).run()
    assert "task: segmentation" in texts(at.code)
    at.selectbox(key="nr_task").set_value("classification").run()
    assert not at.exception
    assert "(resnet8)" in " ".join(at.selectbox(key="nr_student").options)
    offered = " ".join(at.multiselect(key="nr_losses").options)
    assert "(cwd)" not in offered
    assert all(f"({n})" in offered for n in ("reverse_kl", "gkd_jsd", "skew_kl", "tvd"))
