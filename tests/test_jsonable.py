"""One JSON helper (pneumolens/jsonable.py): plain types out, never a bare NaN or Infinity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumolens.jsonable import dumps, jsonable


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float32(0.5), 0.5),
        (np.float64(-2.25), -2.25),
        (np.int64(7), 7),
        (np.uint8(255), 255),
        (np.bool_(True), True),
        (torch.tensor(3), 3),
        (torch.tensor(0.25), 0.25),
        (np.str_("gradcam"), "gradcam"),
        (Path("runs") / "a.json", str(Path("runs") / "a.json")),
        ((1, (2, 3)), [1, [2, 3]]),
        (None, None),
        ("text", "text"),
    ],
)
def test_scalars_paths_and_tuples(value: object, expected: object) -> None:
    out = jsonable(value)
    assert out == expected
    assert type(out) is type(expected)  # Python's own types, not NumPy's or torch's


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -math.inf, np.float32("nan"), np.float64("-inf"), torch.tensor(float("nan"))]
)
def test_non_finite_numbers_become_none(bad: object) -> None:
    assert jsonable(bad) is None


def test_arrays_and_tensors_become_nested_lists_with_null_for_non_finite() -> None:
    assert jsonable(np.array([[1, 2], [3, 4]], dtype=np.int16)) == [[1, 2], [3, 4]]
    assert jsonable(np.array([0.5, np.nan, np.inf])) == [0.5, None, None]
    assert jsonable(torch.tensor([[1.5], [-np.inf]])) == [[1.5], [None]]
    assert jsonable(np.zeros((0, 3))) == []


def test_max_array_summarises_large_arrays_only() -> None:
    assert jsonable(np.arange(4), max_array=4) == [0, 1, 2, 3]
    assert jsonable(np.arange(5), max_array=4) == "array(5,)"
    assert jsonable({"m": np.zeros((3, 4))}, max_array=10) == {"m": "array(3, 4)"}
    assert jsonable(np.float64(1.0), max_array=0) == 1.0  # a scalar is never summarised


def test_nested_dicts_keys_as_json_writes_them() -> None:
    value = {
        "metrics": {"auc": np.float32(0.75), "ci": (np.float64(0.5), float("nan"))},
        3: [np.int32(1), {"deep": np.array([np.inf])}],
        None: Path("x"),
        False: 0.0,
    }
    assert jsonable(value) == {
        "metrics": {"auc": 0.75, "ci": [0.5, None]},
        "3": [1, {"deep": [None]}],
        "null": "x",
        "false": 0.0,
    }


def test_dumps_never_writes_nan_or_infinity() -> None:
    text = dumps({"a": float("nan"), "b": [np.float32("inf"), 1], "c": np.int64(2)})
    assert text == '{"a": null, "b": [null, 1], "c": 2}'
    assert json.loads(text) == {"a": None, "b": [None, 1], "c": 2}
    assert dumps([1.5], indent=2) == "[\n  1.5\n]"


def test_other_objects_become_their_text() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing"

    assert jsonable({"x": Thing()}) == {"x": "thing"}
