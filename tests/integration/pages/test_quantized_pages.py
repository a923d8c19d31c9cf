"""Quantized students on the pages: the New run form's `training.qat` field reaches the launched
run's config, and a finished QAT run's page shows its fp32 and int8 student side by side."""

from __future__ import annotations

import pytest

from client import Client
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import SUMMARY, texts, update
from tests.integration.pages.test_run_workflow import Studio, _app, _seed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    api = Client(live_api.url, live_api.token)
    return _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)


def test_the_new_run_form_offers_qat_and_launches_it(studio: Studio) -> None:
    at = _app(studio, "new_run.py")
    field = at.selectbox(key="nr_t.qat")
    assert field.value == "none" and list(field.options) == ["none", "x86", "qnnpack"]
    field.set_value("qnnpack").run()
    at.text_input(key="nr_name").set_value("qat-from-the-form").run()
    assert not at.exception
    assert "qat: qnnpack" in texts(at.code)  # the review's YAML
    at.button(key="nr_launch").click().run()
    assert not at.exception
    runs = Client(studio.url, studio.token).list_runs().items
    run = next(r for r in runs if r.name == "qat-from-the-form")
    assert run.config["training"]["qat"] == "qnnpack"


def test_a_qat_runs_page_shows_fp32_and_int8_side_by_side(studio: Studio) -> None:
    block = {
        "backend": "x86",
        "fp32": {"top1": 0.9, "size_bytes": 4096, "cpu_latency_ms": 0.4},
        "int8": {"top1": 0.88, "size_bytes": 1024, "cpu_latency_ms": 0.2},
        "runtime": "onnxruntime 1.32.0 (CPUExecutionProvider)",
        "artifact": "student_int8.onnx",
        "artifact_kind": "student_int8_onnx",
    }
    update("Run", studio.done_run_id, summary={**SUMMARY, "quantized": block})
    try:
        at = _app(studio, "run.py", id=studio.done_run_id)
        assert not at.exception
        frame = next(f.value for f in at.dataframe if "fp32 / int8" in f.value.columns)
        assert list(frame[""]) == ["Top-1 accuracy", "Size", "CPU latency, 1 sample"]
        size = frame[frame[""] == "Size"].iloc[0]
        assert (size["fp32"], size["int8"], size["fp32 / int8"]) == ("4 KiB", "1 KiB", "4.00×")
        top1 = frame[frame[""] == "Top-1 accuracy"].iloc[0]
        assert (top1["fp32"], top1["int8"]) == ("90.00%", "88.00%")
        assert "The student in int8" in texts(at.markdown)
        assert "both measured in onnxruntime 1.32.0" in texts(at.markdown)
    finally:
        update("Run", studio.done_run_id, summary=SUMMARY)
    at = _app(studio, "run.py", id=studio.done_run_id)
    assert not [f for f in at.dataframe if "fp32 / int8" in f.value.columns]  # not a QAT run
