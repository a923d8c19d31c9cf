"""The New run page's scheme picker: a scheme's fields come from its catalog parameters, the
review and the launched run carry them, and pasted YAML fills them."""

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


def test_the_scheme_picker_shows_the_schemes_fields_and_launches_them(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    assert at.selectbox(key="nr_scheme").value == "offline"
    assert not [n for n in at.number_input if str(n.key).startswith("nr_scheme.")]
    at.selectbox(key="nr_scheme").set_value("online").run()
    assert not at.exception
    assert at.number_input(key="nr_scheme.online.peers").value == 2
    assert "Deep Mutual Learning" in " ".join(c.value for c in at.caption)
    at.number_input(key="nr_scheme.online.peers").set_value(3).run()
    at.text_input(key="nr_name").set_value("dml-from-the-form").run()
    review = texts(at.code)
    assert "name: online" in review and "peers: 3" in review
    at.button(key="nr_launch").click().run()
    assert not at.exception
    runs = Client(studio.url, studio.token).list_runs().items
    run = next(r for r in runs if r.name == "dml-from-the-form")
    assert run.config["scheme"] == "online" and run.config["scheme_params"]["peers"] == 3


def test_pasted_yaml_fills_the_schemes_fields(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    pasted = f"""
name: pasted-dml
teacher: {{model_id: {studio.teacher_id}}}
dataset: {{dataset_id: {studio.dataset_id}}}
losses: [{{name: ce}}]
scheme: {{name: online, params: {{peers: 4, temperature: 2.5}}}}
"""
    at.text_area(key="nr_yaml").set_value(pasted)
    at.button(key="nr_yaml_load").click().run()
    assert not at.exception
    assert at.selectbox(key="nr_scheme").value == "online"
    assert at.number_input(key="nr_scheme.online.peers").value == 4
    assert at.number_input(key="nr_scheme.online.temperature").value == 2.5
    assert "peers: 4" in texts(at.code)


def test_the_self_scheme_shows_its_mode_generations_and_ensemble_fields(studio: Studio) -> None:
    """The picker is generic: `self`'s choice, int and bool parameters get their inputs."""
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_scheme").set_value("self").run()
    assert not at.exception
    assert at.selectbox(key="nr_scheme.self.mode").value == "born_again"
    assert at.number_input(key="nr_scheme.self.generations").value == 2
    assert at.checkbox(key="nr_scheme.self.ensemble_last").value is False
    assert "Born-Again" in " ".join(c.value for c in at.caption)
    at.number_input(key="nr_scheme.self.generations").set_value(3).run()
    at.checkbox(key="nr_scheme.self.ensemble_last").check().run()
    at.text_input(key="nr_name").set_value("ban-from-the-form").run()
    review = texts(at.code)
    assert "name: self" in review and "generations: 3" in review
    assert "ensemble_last: true" in review
    at.button(key="nr_launch").click().run()
    assert not at.exception
    runs = Client(studio.url, studio.token).list_runs().items
    run = next(r for r in runs if r.name == "ban-from-the-form")
    assert run.config["scheme"] == "self"
    assert run.config["scheme_params"]["generations"] == 3
    assert run.config["scheme_params"]["ensemble_last"] is True


def test_the_split_scheme_offers_the_teachers_layers_as_split_points(studio: Studio) -> None:
    """`split`'s split point is a select of the teacher's feature-map layers (its shape beside
    each, the default named); bottleneck and feature weight come from the catalog as usual."""
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_scheme").set_value("split").run()
    assert not at.exception
    point = at.selectbox(key="nr_scheme.split.split_at")
    assert point.options == ["default: layer1", "conv1 4×8×8", "layer1 4×8×8", "layer2 8×4×4"]
    assert at.number_input(key="nr_scheme.split.bottleneck").value == 4
    assert "Distilled Split Deep Neural Networks" in " ".join(c.value for c in at.caption)
    point.set_value("layer2").run()
    at.number_input(key="nr_scheme.split.bottleneck").set_value(2).run()
    at.text_input(key="nr_name").set_value("split-from-the-form").run()
    review = texts(at.code)
    assert "name: split" in review and "split_at: layer2" in review and "bottleneck: 2" in review
    at.button(key="nr_launch").click().run()
    assert not at.exception
    runs = Client(studio.url, studio.token).list_runs().items
    run = next(r for r in runs if r.name == "split-from-the-form")
    assert run.config["scheme"] == "split"
    assert run.config["scheme_params"]["split_at"] == "layer2"
    assert run.config["scheme_params"]["bottleneck"] == 2
