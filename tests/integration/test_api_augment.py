"""The run config's `augment` section through the REST API: stored with the run, served by the
catalog, and refused with a 422 that names the setting when it is out of range, when mixed
targets meet a loss that needs one class, or when image operations meet a table."""

from __future__ import annotations

from .api_helpers import DATASET_INFO, ready_dataset, ready_model, run_config, set_row

IMAGES = {"flip": True, "pad_crop": 4, "policy": "trivial", "mixup": 0.2, "cutmix": 1.0}


def test_augmentation_is_stored_with_the_run_and_served_by_the_catalog(api, studio_env) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)
    augment = {**IMAGES, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.25, 0.25]}
    r = api.post("/runs", json=run_config(model_id, dataset_id, augment=augment))
    assert r.status_code == 201, r.text
    stored = r.json()["config"]["augment"]
    assert {k: stored[k] for k in augment} == augment and stored["rand_ops"] == 2
    text = api.get(f"/runs/{r.json()['id']}/config.yaml").text
    assert "augment:" in text and "cutmix: 1.0" in text
    served = {s["name"]: s for s in api.get("/catalog").json()["augment"]}
    assert served["policy"]["choices"] == ["none", "trivial", "rand"]
    assert served["mixup"]["le"] == 10.0 and served["mixup"]["default"] == 0.0


def test_augmentation_problems_are_422_naming_the_setting(api, studio_env) -> None:
    model_id, dataset_id = ready_model(api), ready_dataset(api)

    far = api.post("/runs", json=run_config(model_id, dataset_id, augment={"pad_crop": 100}))
    assert far.status_code == 422
    assert far.json()["detail"].startswith("augment.pad_crop: ")
    assert far.json()["errors"][0]["loc"] == ["body", "augment", "pad_crop"]

    losses = [{"name": "ce"}, {"name": "dkd"}]
    mixed = api.post(
        "/runs", json=run_config(model_id, dataset_id, augment={"mixup": 0.2}, losses=losses)
    )
    assert mixed.status_code == 422
    assert "losses[1] 'dkd' cannot train on mixup/cutmix's mixed targets" in mixed.json()["detail"]

    widths = api.post(
        "/runs",
        json=run_config(model_id, dataset_id, augment={"mean": [0.5, 0.5], "std": [0.2, 0.2]}),
    )
    assert widths.status_code == 422
    assert widths.json()["detail"] == (
        f"augment.mean has 2 values but the samples have 3 channels; give one value or 3 "
        f"(dataset {dataset_id})"
    )
    assert widths.json()["errors"][0]["loc"] == ["body", "augment"]

    table = ready_dataset(api, "table")
    set_row("Dataset", table, info={**DATASET_INFO, "input_shape": [20], "kind": "table"})
    refused = api.post("/runs", json=run_config(model_id, table, augment=IMAGES))
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "augment: flip, pad_crop, policy, cutmix need images [C, H, W], but this dataset's "
        "samples are [20]; turn them off (mixup and the mean/std normalisation work on any "
        f"data) (dataset {table})"
    )
    tabular = {"mixup": 0.4, "mean": [0.0] * 20, "std": [1.0] * 20}
    fine = api.post("/runs", json=run_config(model_id, table, augment=tabular))
    assert fine.status_code == 201, fine.text
