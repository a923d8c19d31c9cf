"""The New run page with an image-to-image dataset: the task selector starts at generation,
which narrows the students and losses to the task's; the review carries the task."""

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


def test_the_task_selector_offers_generation_with_its_students_and_losses(
    studio: Studio,
) -> None:
    info = {
        "task": "generation",
        "num_samples": 24,
        "input_shape": [1, 16, 16],
        "target_shape": [1, 16, 16],
        "has_targets": True,
        "kind": "image",
    }
    update("Dataset", studio.dataset_id, info=info)
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_dataset").set_value(studio.dataset_id).run()
    assert not at.exception
    assert at.selectbox(key="nr_task").value == "generation"
    assert at.selectbox(key="nr_student").options == [
        "Encoder-decoder generator (ResNet blocks) (gen_resnet)"
    ]
    losses = " ".join(at.multiselect(key="nr_losses").options)
    assert "(recon_l1)" in losses and "(target_l1)" in losses and "(kd)" not in losses
    at.multiselect(key="nr_losses").set_value(["recon_l1", "target_l1"]).run()
    assert not at.exception
    assert "task: generation" in texts(at.code)
