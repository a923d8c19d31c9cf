"""ONNX teachers on the pages: the Models page takes an .onnx file (no architecture form) and
uploads it as format onnx."""

from __future__ import annotations

import pytest

from client import Client
from tests.integration.pages.conftest import LiveApi
from tests.integration.pages.support import texts
from tests.integration.pages.test_run_workflow import Studio, _app, _seed
from tests.integration.test_onnx_api import onnx_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(live_api: LiveApi) -> Studio:
    api = Client(live_api.url, live_api.token)
    return _seed(live_api.env, api, live_api.url, live_api.token, live_api.env.data_dir)


def test_the_models_page_uploads_an_onnx_teacher(studio: Studio) -> None:
    at = _app(studio, "models.py")
    at.file_uploader(key="up_file").set_value(("teacher.onnx", onnx_bytes(), "application/x"))
    at.run()
    assert not at.exception and not at.error
    assert "up_arch" not in {s.key for s in at.selectbox}  # no architecture form: a whole graph
    at.text_input(key="up_name").set_value("onnx-from-ui")
    at.button(key="up_submit").click().run()
    assert not at.exception
    assert "onnx-from-ui" in texts(at.title)  # now on the model page
    models = Client(studio.url, studio.token).list_models().items
    assert next(m for m in models if m.name == "onnx-from-ui").format == "onnx"
