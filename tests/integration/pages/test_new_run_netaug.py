"""The New run page's scheme picker offers `netaug`: its augmentation widths (text) and alpha
(number) come from the catalog, the review and the launched run carry them, and pasted YAML
fills them."""

from __future__ import annotations

import pytest

from client import Client
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import texts
from tests.integration.pages.test_run_workflow import Studio, _app, _seed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    api = Client(live_api.url, live_api.token)
    return _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)


def test_the_netaug_scheme_shows_its_widths_and_alpha_and_launches_them(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_scheme").set_value("netaug").run()
    assert not at.exception
    assert at.text_input(key="nr_scheme.netaug.widths").value == "1.5,2,3"
    assert at.number_input(key="nr_scheme.netaug.alpha").value == 1.0
    assert "Network Augmentation for Tiny Deep Learning" in " ".join(c.value for c in at.caption)
    at.text_input(key="nr_scheme.netaug.widths").set_value("2,4").run()
    at.number_input(key="nr_scheme.netaug.alpha").set_value(0.5).run()
    at.text_input(key="nr_name").set_value("netaug-from-the-form").run()
    review = texts(at.code)
    assert "name: netaug" in review and "widths: 2,4" in review and "alpha: 0.5" in review
    at.button(key="nr_launch").click().run()
    assert not at.exception
    runs = Client(studio.url, studio.token).list_runs().items
    run = next(r for r in runs if r.name == "netaug-from-the-form")
    assert run.config["scheme"] == "netaug"
    assert run.config["scheme_params"] == {"widths": "2,4", "alpha": 0.5}


def test_pasted_yaml_fills_the_netaug_fields(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    pasted = f"""
name: pasted-netaug
teacher: {{model_id: {studio.teacher_id}}}
dataset: {{dataset_id: {studio.dataset_id}}}
student: {{architecture: resnet8, kwargs: {{width: 0.25}}}}
losses: [{{name: ce}}, {{name: kd}}]
scheme: {{name: netaug, params: {{widths: "1.5,3", alpha: 2.0}}}}
"""
    at.text_area(key="nr_yaml").set_value(pasted)
    at.button(key="nr_yaml_load").click().run()
    assert not at.exception
    assert at.selectbox(key="nr_scheme").value == "netaug"
    assert at.text_input(key="nr_scheme.netaug.widths").value == "1.5,3"
    assert at.number_input(key="nr_scheme.netaug.alpha").value == 2.0
