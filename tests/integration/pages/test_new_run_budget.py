"""The New run page's "Find a student for a budget": the target and family, the cost table the
API answers (the worker's measuring done in-process first), "Use as the student" filling the
student fields, and the best two launched as a sweep saved as one comparison."""

from __future__ import annotations

import pytest

from client import Client
from core import budget
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import texts
from tests.integration.pages.test_run_workflow import Studio, _app, _seed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    api = Client(live_api.url, live_api.token)
    return _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)


def test_find_a_student_for_a_budget_fill_it_and_launch_a_sweep(studio: Studio) -> None:
    from worker.tasks import measure_students

    # what a worker does when the page asks (the 202 path: tests/integration/test_budget_api.py)
    measure_students([[a, k] for a, k in budget.zoo_candidates("resnet8")], [3, 8, 8], 4)
    at = _app(studio, "new_run.py")
    at.selectbox(key="nr_budget_family").set_value("resnet8").run()
    at.number_input(key="nr_budget_bound.params").set_value(20000.0).run()
    at.button(key="nr_budget_search").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, texts(at.error)
    shown = at.dataframe[0].value
    assert list(shown.columns) == [
        "#",
        "architecture",
        "params",
        "FLOPs",
        "latency ms",
        "% of budget",
    ]
    assert (shown["params"] <= 20000).all() and shown["params"].is_monotonic_decreasing
    assert "candidates meet 20,000 parameters" in texts(at.info)

    at.selectbox(key="nr_budget_pick").set_value(1).run()
    second = shown["architecture"][1]  # "resnet8 width=0.375"
    at.button(key="nr_budget_use").click().run()
    assert not at.exception
    assert at.selectbox(key="nr_student").value == "resnet8"
    width = float(second.rsplit("=", 1)[1])
    assert at.number_input(key="nr_student.resnet8.width").value == width
    assert f"width: {width}" in texts(at.code)  # the review's run config

    at.slider(key="nr_budget_n").set_value(2).run()
    at.text_input(key="nr_name").set_value("budget-sweep").run()
    at.button(key="nr_budget_sweep").click().run()
    assert not at.exception
    api = Client(studio.url, studio.token)
    runs = [r for r in api.list_runs().items if r.name.startswith("budget-sweep [")]
    assert sorted(r.name for r in runs) == sorted(
        f"budget-sweep [{label}]" for label in shown["architecture"][:2]
    )
    saved = next(c for c in api.comparisons().items if c.name == "budget-sweep: budget candidates")
    assert sorted(saved.run_ids) == sorted(r.id for r in runs)
