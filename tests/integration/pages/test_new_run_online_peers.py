"""The New run page's `online` fields beyond peers: the mutual loss (choice), the peer layers
(text), the feature loss between peers (choice) and its weight come from the catalog, the review
and the launched run carry them (the API checks the layers against the student's stored layer
table), and pasted YAML fills them."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from client import Client
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import INSPECTION, texts
from tests.integration.pages.test_run_workflow import Studio, _app, _seed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    api = Client(live_api.url, live_api.token)
    return _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)


def _plant_student(review: dict[str, Any]) -> None:
    """What a worker stores for the form's zoo student (layers conv1, layer1, layer2, fc), in
    the store the API reads (no worker here)."""
    from core import inspections

    student = review["student"]
    kwargs = {k: v for k, v in (student.get("kwargs") or {}).items()
              if k not in ("input_shape", "num_classes")}  # fmt: skip
    inspections.plant(student["architecture"], kwargs, [3, 8, 8], 4, INSPECTION)


def test_the_online_peer_fields_show_and_reach_the_launched_run(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_scheme").set_value("online").run()
    assert not at.exception
    assert at.selectbox(key="nr_scheme.online.mutual_loss").value == "kl"
    assert at.text_input(key="nr_scheme.online.peer_layers").value == ""
    assert at.selectbox(key="nr_scheme.online.peer_loss").value == "feature_l2"
    assert "at" in at.selectbox(key="nr_scheme.online.peer_loss").options
    assert at.number_input(key="nr_scheme.online.peer_weight").value == 1.0
    at.selectbox(key="nr_scheme.online.mutual_loss").set_value("dist").run()
    at.text_input(key="nr_scheme.online.peer_layers").set_value("layer1,layer2").run()
    at.selectbox(key="nr_scheme.online.peer_loss").set_value("at").run()
    at.number_input(key="nr_scheme.online.peer_weight").set_value(100.0).run()
    at.text_input(key="nr_name").set_value("dml-peer-features").run()
    review = texts(at.code)
    assert "peer_layers: layer1,layer2" in review and "peer_loss: at" in review
    assert "mutual_loss: dist" in review and "peer_weight: 100.0" in review
    _plant_student(yaml.safe_load(review))
    at.button(key="nr_launch").click().run()
    assert not at.exception and not at.error, texts(at.error)
    runs = Client(studio.url, studio.token).list_runs().items
    run = next(r for r in runs if r.name == "dml-peer-features")
    assert run.config["scheme"] == "online"
    params = run.config["scheme_params"]
    assert (params["peer_layers"], params["peer_loss"]) == ("layer1,layer2", "at")
    assert (params["mutual_loss"], params["peer_weight"]) == ("dist", 100.0)


def test_pasted_yaml_fills_the_online_peer_fields(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    pasted = f"""
name: pasted-dml-features
teacher: {{model_id: {studio.teacher_id}}}
dataset: {{dataset_id: {studio.dataset_id}}}
losses: [{{name: ce}}]
scheme: {{name: online, params: {{peers: 3, peer_layers: layer2, peer_loss: nst,
          peer_weight: 50.0, mutual_loss: kd}}}}
"""
    at.text_area(key="nr_yaml").set_value(pasted)
    at.button(key="nr_yaml_load").click().run()
    assert not at.exception
    assert at.selectbox(key="nr_scheme").value == "online"
    assert at.text_input(key="nr_scheme.online.peer_layers").value == "layer2"
    assert at.selectbox(key="nr_scheme.online.peer_loss").value == "nst"
    assert at.number_input(key="nr_scheme.online.peer_weight").value == 50.0
    assert at.selectbox(key="nr_scheme.online.mutual_loss").value == "kd"
