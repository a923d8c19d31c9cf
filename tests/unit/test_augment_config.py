"""The run config's `augment` section: declared once in `core.catalog.augment`, validated by
`core.config.AugmentSettings` with the catalog's ranges, served by `GET /catalog`, refused with
losses or schemes that cannot take mixed targets, and written to YAML only when used."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core import catalog
from core.catalog.augment import AUGMENT, image_ops_problem
from core.config import AugmentSettings, RunConfig


def _config(augment: dict[str, Any], **fields: Any) -> RunConfig:
    return RunConfig.model_validate(
        {"teacher": {"path": "t.pt2"}, "dataset": {"path": "d.npz"}, "augment": augment, **fields}
    )


def test_every_catalog_setting_is_a_field_with_its_default_and_is_served() -> None:
    fields = AugmentSettings.model_fields
    assert list(fields) == list(AUGMENT)
    defaults = AugmentSettings().model_dump()
    for name, spec in AUGMENT.items():
        expected = list(spec.default) if spec.type == "floats" else spec.default
        assert defaults[name] == expected, name
    served = {s["name"]: s for s in catalog.as_json()["augment"]}
    assert served["policy"]["choices"] == ["none", "trivial", "rand"]
    assert (served["pad_crop"]["ge"], served["pad_crop"]["le"]) == (0, 64)


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"pad_crop": 65}, "less than or equal to 64"),
        ({"mixup": float("nan")}, "must be a finite number in [0.0, 10.0], got nan"),
        ({"policy": "auto"}, "'none', 'trivial' or 'rand'"),
        ({"mean": [0.5], "std": [0.0]}, "item 0 must be in (0.0, inf), got 0.0"),
        ({"mean": [0.5, 0.5]}, "augment.mean has 2 values and augment.std 0"),
        ({"flips": True}, "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(augment: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        _config(augment)
    assert message in str(info.value)


def test_mixed_targets_are_refused_for_losses_and_schemes_that_need_one_class() -> None:
    with pytest.raises(ValidationError, match=r"losses\[1\] 'dkd' cannot train on mixup"):
        _config({"cutmix": 1.0}, losses=[{"name": "ce"}, {"name": "dkd"}])
    _config({"cutmix": 1.0}, losses=[{"name": "ce"}, {"name": "logit_std"}])  # base kd
    with pytest.raises(ValidationError, match="'logit_std' cannot train"):
        _config({"mixup": 0.2}, losses=[{"name": "logit_std", "params": {"base": "dkd"}}])
    _config({"flip": True}, losses=[{"name": "dkd"}])  # no mixing: fine
    with pytest.raises(ValidationError, match="confidence weighting reads each sample's one"):
        _config(
            {"mixup": 0.2},
            losses=[{"name": "ce"}],
            scheme="multi_teacher",
            teachers=[{"path": "t2.pt2"}],
        )


def test_yaml_carries_the_section_only_when_used_and_round_trips() -> None:
    plain = _config({})
    assert "augment" not in plain.to_yaml()
    used = _config({"flip": True, "pad_crop": 4, "mean": [0.5, 0.4, 0.3], "std": [0.2] * 3})
    text = used.to_yaml()
    assert "augment:" in text and "pad_crop: 4" in text
    assert RunConfig.from_yaml(text) == used


def test_image_operations_need_images_and_the_mean_fits_the_channels() -> None:
    assert image_ops_problem({"flip": True}, [3, 32, 32]) is None
    problem = image_ops_problem({"flip": True, "cutmix": 1.0}, [20])
    assert problem is not None and "flip, cutmix need images [C, H, W]" in problem
    assert image_ops_problem({"mixup": 0.2, "mean": [0.0] * 20}, [20]) is None
    problem = image_ops_problem({"mean": [0.0, 0.0]}, [3, 8, 8])
    assert (
        problem == "augment.mean has 2 values but the samples have 3 channels; give one value or 3"
    )


def test_other_tasks_take_only_the_normalisation() -> None:
    with pytest.raises(ValidationError, match="augment: flip, mixup change the inputs but not"):
        _config(
            {"flip": True, "mixup": 0.2},
            task="segmentation",
            student={"architecture": "seg_fcn"},
            losses=[{"name": "ce"}],
        )
    _config(
        {"mean": [0.5], "std": [0.2]},
        task="segmentation",
        student={"architecture": "seg_fcn"},
        losses=[{"name": "ce"}],
    )
