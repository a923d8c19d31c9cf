"""The split point of the `split` scheme, read from a teacher's layer table (torch-free).

The backend checks a run's `scheme_params.split_at` against the teacher's stored inspection
before queueing; the engine resolves it the same way from its own inspection of the loaded
teacher, so both refuse the same configs with the same message.
"""

from __future__ import annotations

from typing import Any

from core.pairing import find_layer, fmt_shape


def default_split_point(inspection: dict[str, Any]) -> str | None:
    """The end of the teacher's first spatial stage (the paper splits early, so the head that
    runs on the device is small), or None when the teacher has no spatial stage."""
    for stage in inspection.get("stages", []):
        if stage.get("resolution") and stage.get("end"):
            return str(stage["end"])
    return None


def _candidates(inspection: dict[str, Any]) -> list[str]:
    return [
        str(s["end"]) for s in inspection.get("stages", []) if s.get("resolution") and s.get("end")
    ]


def split_layer(inspection: dict[str, Any], split_at: str) -> dict[str, Any]:
    """The teacher layer row the head replaces (`split_at`, "" for `default_split_point`).

    ValueError, saying what would work, when the layer does not exist, or when the teacher or
    the layer cannot be split: the head maps an image batch (C, H, W) to a feature map
    (C', H', W'), so both the teacher's input and the layer's output must be such maps.
    """
    stage_ends = _candidates(inspection)
    hint = f"; stage ends that can be split: {', '.join(stage_ends)}" if stage_ends else ""
    input_shape = inspection.get("input_shape") or []
    if len(input_shape) != 3 or not stage_ends:
        raise ValueError(
            f"scheme 'split' needs a teacher that takes images (C, H, W) and computes feature "
            f"maps; this teacher takes {fmt_shape(input_shape)} and has no spatial stage: use "
            "scheme 'offline'"
        )
    path = split_at or default_split_point(inspection) or ""
    try:
        row = find_layer(inspection, path, "teacher")
    except ValueError as exc:
        raise ValueError(f"scheme_params.split_at: {exc}{hint}") from None
    shape = row.get("output_shape") or []
    if len(shape) != 3:
        raise ValueError(
            f"scheme_params.split_at: teacher layer '{path}' outputs {fmt_shape(shape)}, not a "
            f"feature map (C, H, W) that a head can reproduce{hint}"
        )
    return row


def bottleneck_bytes(channels: int, feature_shape: list[int] | tuple[int, ...]) -> dict[str, int]:
    """Bytes per sample the device sends: the bottleneck (channels x H x W of the split point)
    as float32 and as 8-bit quantised values."""
    values = int(channels) * int(feature_shape[1]) * int(feature_shape[2])
    return {"float32": 4 * values, "int8": values}
