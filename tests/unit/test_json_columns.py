"""The JSON columns' writer and reader (`core.db.json_dumps` / `json_loads`): orjson, with the
standard library's json for what orjson refuses, so nothing written before reads differently."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, Table, select, text

from core.db import json_dumps, json_loads, make_engine


def test_what_json_wrote_reads_back_the_same() -> None:
    before = {"a": [1, 2.5, None, True], "b": {"c": "é"}, "nan": math.nan, "inf": -math.inf}
    text = json.dumps(before)  # what SQLAlchemy wrote before: NaN and Infinity tokens included
    again = json_loads(text)
    assert math.isnan(again.pop("nan")) and before.pop("nan") != 0
    assert again == before
    assert json_loads(text.encode()) is not None  # psycopg hands bytes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({1: "a", "b": [1, 2]}, {"1": "a", "b": [1, 2]}),  # keys as json.dumps writes them
        ({"x": np.float32(0.5), "y": np.arange(3)}, {"x": 0.5, "y": [0, 1, 2]}),
        ({"nan": math.nan}, {"nan": None}),  # PostgreSQL's json has no NaN
        ({"big": 2**70}, {"big": 2**70}),  # past orjson's 64 bits: json writes it
    ],
)
def test_values_are_written_as_json_reads_them(value: object, expected: object) -> None:
    assert json.loads(json_dumps(value)) == expected


class _Opaque:
    pass


def test_what_neither_can_write_is_refused() -> None:
    with pytest.raises(TypeError):
        json_dumps({"x": _Opaque()})


def test_an_engine_reads_and_writes_its_json_columns_with_them(tmp_path) -> None:
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("doc", JSON))
    engine = make_engine(f"sqlite:///{tmp_path / 'j.db'}")
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(doc={"v": np.float64(0.25), 3: [1]}))
        conn.execute(text("INSERT INTO t (doc) VALUES ('{\"loss\": NaN}')"))  # json.dumps's
    with engine.connect() as conn:
        first, second = conn.scalars(select(table.c.doc).order_by(table.c.id)).all()
    assert first == {"v": 0.25, "3": [1]}
    assert math.isnan(second["loss"])
