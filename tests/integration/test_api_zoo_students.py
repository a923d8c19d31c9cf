"""The ImageNet-style students at the REST door (in-process API, real databases and Redis):
listed by the catalog, accepted in run configs (zoo and derived from a teacher of the family),
their parameters checked, their layer tables used for pairs and suggestions."""

from __future__ import annotations

from typing import Any

from .api_helpers import ready_dataset, ready_model, row_count, run_config, set_row

NEW = {
    "resnet18": {"width": 0.25, "stem": "small"},
    "resnet34": {"depth": 0.5},
    "resnet50": {"width": 0.5},
    "mobilenetv3_small": {"width": 0.5},
    "mobilenetv3_large": {"stem": "imagenet"},
    "efficientnet_b0": {"width": 0.5, "depth": 0.5},
    "deit_tiny": {"patch_size": 2},
}


def _inspection(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What the worker stores for a zoo model: the real layer table (inputs [3, 8, 8], 4 classes)."""
    from worker.engine.students import build_student
    from worker.engine.taps import inspect_model

    return inspect_model(build_student(name, (3, 8, 8), 4, **kwargs), (3, 8, 8))


def test_catalog_lists_the_new_students(api, studio_env) -> None:
    students = {e["name"]: e for e in api.get("/catalog").json()["students"]}
    assert set(NEW) <= set(students)
    stem = next(p for p in students["resnet50"]["params"] if p["name"] == "stem")
    assert stem["choices"] == ["auto", "imagenet", "small"] and stem["default"] == "auto"
    assert students["deit_tiny"]["extra"]["family"] == "vit"
    assert students["efficientnet_b0"]["extra"]["family"] == "efficientnet"


def test_run_configs_with_the_new_students(api, studio_env) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    for name, kwargs in NEW.items():
        student = {"source": "zoo", "architecture": name, "kwargs": kwargs}
        r = api.post("/runs", json=run_config(model_id, dataset_id, name=name, student=student))
        assert r.status_code == 201, r.text
        assert r.json()["config"]["student"]["architecture"] == name
        assert r.json()["config"]["student"]["kwargs"] == kwargs
    bad = {"source": "zoo", "architecture": "resnet50", "kwargs": {"stem": "tiny"}}
    r = api.post("/runs", json=run_config(model_id, dataset_id, student=bad))
    assert r.status_code == 422
    assert "parameter 'stem'" in r.json()["detail"]
    assert "must be one of ['auto', 'imagenet', 'small']" in r.json()["detail"]
    assert row_count("Run") == len(NEW)


def test_derived_from_a_resnet50_teacher(api, studio_env) -> None:
    teacher = ready_model(api, inspection=_inspection("resnet50", {"width": 0.125}))
    set_row("Model", teacher, architecture="resnet50", arch_kwargs={"width": 0.125})
    dataset_id = ready_dataset(api)
    derived = {"source": "derived", "depth_factor": 0.5, "width_factor": 0.5}
    r = api.post("/runs", json=run_config(teacher, dataset_id, student=derived))
    assert r.status_code == 201, r.text


def test_pairs_and_suggestions_with_the_new_students(api, studio_env) -> None:
    """A resnet18 teacher and an efficientnet_b0 student pair by resolution; a deit_tiny
    student's token maps do not pair with CNN maps, and the error says what does."""
    from core import inspections

    teacher = ready_model(api, inspection=_inspection("resnet18", {"width": 0.125}))
    dataset_id = ready_dataset(api)
    effnet = {"width": 0.25, "depth": 0.1}
    inspections.plant(
        "efficientnet_b0", effnet, [3, 8, 8], 4, _inspection("efficientnet_b0", effnet)
    )
    student = {"source": "zoo", "architecture": "efficientnet_b0", "kwargs": effnet}
    body = {"teacher_model_id": teacher, "dataset_id": dataset_id, "student": student}
    plan = api.post("/runs/plan", json=body)
    assert plan.status_code == 200, plan.text
    suggested = [(p["teacher"], p["student"]) for p in plan.json()["suggested_pairs"]]
    # both at 8/4/2/1 pixels: the three deepest resolutions
    assert suggested == [("layer2", "features.3"), ("layer3", "features.5"), ("layer4", "features")]
    losses = [{"name": "ce"}, {"name": "fitnets"}]
    pairs = [{"teacher": "layer2", "student": "features.3"}]
    ok = run_config(teacher, dataset_id, student=student, losses=losses, layer_pairs=pairs)
    assert api.post("/runs", json=ok).status_code == 201

    vit = {"width": 0.25, "depth": 0.1}
    inspections.plant("deit_tiny", vit, [3, 8, 8], 4, _inspection("deit_tiny", vit))
    student = {"source": "zoo", "architecture": "deit_tiny", "kwargs": vit}
    pairs = [{"teacher": "layer2", "student": "blocks.0"}]
    bad = run_config(teacher, dataset_id, student=student, losses=losses, layer_pairs=pairs)
    r = api.post("/runs", json=bad)
    assert r.status_code == 422, r.text
    assert "the student layer gives transformer tokens [17,48]" in r.json()["detail"]
    assert "use logit losses" in r.json()["detail"]
    kd = run_config(teacher, dataset_id, student=student)  # ce + kd: no pairs needed
    assert api.post("/runs", json=kd).status_code == 201
