"""The New run page's collapsed "Augmentation" section: its inputs come from
`core.catalog.augment`, the review and the launched run carry only what differs from no
augmentation, and pasted YAML fills them."""

from __future__ import annotations

import pytest

from client import Client
from core.catalog.augment import AUGMENT
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import texts
from tests.integration.pages.test_run_workflow import Studio, _app, _seed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    api = Client(live_api.url, live_api.token)
    return _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)


def test_the_augmentation_section_is_built_from_the_catalog_and_launches(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    assert not at.exception
    assert "Augmentation" in [e.label for e in at.expander]
    assert at.checkbox(key="nr_aug.flip").value is False
    assert at.number_input(key="nr_aug.pad_crop").value == AUGMENT["pad_crop"].default
    assert at.selectbox(key="nr_aug.policy").options == ["none", "trivial", "rand"]
    assert "augment:" not in texts(at.code)  # nothing augmented: no section
    at.checkbox(key="nr_aug.flip").check().run()
    at.number_input(key="nr_aug.pad_crop").set_value(4).run()
    at.selectbox(key="nr_aug.policy").set_value("trivial").run()
    at.number_input(key="nr_aug.mixup").set_value(0.2).run()
    at.text_input(key="nr_aug.mean").set_value("0.5").run()
    at.text_input(key="nr_aug.std").set_value("0.25").run()
    at.text_input(key="nr_name").set_value("augmented-from-the-form").run()
    assert not at.exception
    review = texts(at.code)
    assert "augment:" in review and "pad_crop: 4" in review and "policy: trivial" in review
    at.button(key="nr_launch").click().run()
    assert not at.exception
    runs = Client(studio.url, studio.token).list_runs().items
    run = next(r for r in runs if r.name == "augmented-from-the-form")
    augment = run.config["augment"]
    assert (augment["flip"], augment["pad_crop"], augment["policy"]) == (True, 4, "trivial")
    assert (augment["mixup"], augment["mean"], augment["std"]) == (0.2, [0.5], [0.25])


def test_pasted_yaml_fills_the_augmentation_section(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    pasted = f"""
name: pasted-augment
teacher: {{model_id: {studio.teacher_id}}}
dataset: {{dataset_id: {studio.dataset_id}}}
student: {{architecture: resnet8, kwargs: {{width: 0.25}}}}
losses: [{{name: ce}}, {{name: kd}}]
augment: {{cutmix: 1.0, resized_crop: 0.35, mean: [0.1, 0.2, 0.3], std: [1, 2, 3]}}
"""
    at.text_area(key="nr_yaml").set_value(pasted)
    at.button(key="nr_yaml_load").click().run()
    assert not at.exception
    assert at.number_input(key="nr_aug.cutmix").value == 1.0
    assert at.number_input(key="nr_aug.resized_crop").value == 0.35
    assert at.text_input(key="nr_aug.mean").value == "0.1,0.2,0.3"
    assert at.text_input(key="nr_aug.std").value == "1,2,3"
    assert "cutmix: 1.0" in texts(at.code)
