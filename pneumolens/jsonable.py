"""Plain JSON values from what the library computes, and the one way it writes JSON.

NumPy and torch scalars, arrays, tuples and paths turn up in metrics, explanation parameters
and checkpoint metadata; JSON knows none of them, and it has no NaN or Infinity either (Python's
``json`` writes them as bare tokens that other parsers reject). :func:`jsonable` turns a value
into dicts, lists, str, int, float, bool and None, with every non-finite float as None;
:func:`dumps` writes it with ``allow_nan=False``, so no bare NaN can ever reach a file.
"""

from __future__ import annotations

import json
import math
from typing import Any


def jsonable(value: Any, max_array: int | None = None) -> Any:
    """``value`` as plain JSON types; non-finite floats become None.

    Dicts keep their order, with keys as JSON would write them (``str``; ``true``/``false``/``null``
    for booleans and None); tuples, lists and sets become lists; NumPy and torch scalars become
    Python numbers; arrays and tensors become nested lists. Anything else (a path, an enum, an
    object) becomes its text.

    Args:
        value: what to convert.
        max_array: arrays or tensors with more elements than this become the text
            ``"array(<shape>)"`` instead of a list (keeps a large map out of a response). None: no limit.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # numpy.str_ and other subclasses as the plain string
    if isinstance(value, int):
        return int(value)  # an IntEnum or other int subclass as the plain number
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_key(k): jsonable(v, max_array) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, max_array) for v in value]
    shape = getattr(value, "shape", None)
    if shape is not None and callable(getattr(value, "tolist", None)):  # NumPy / torch arrays and scalars
        if len(shape) == 0:
            return jsonable(value.item())
        if max_array is not None and math.prod(shape) > max_array:
            return f"array{tuple(int(s) for s in shape)}"
        return jsonable(value.tolist())
    if callable(getattr(value, "item", None)):  # other scalar wrappers (numpy.generic without shape)
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def dumps(value: Any, **kwargs: Any) -> str:
    """JSON text of :func:`jsonable` ``(value)``; NaN and Infinity can never appear (``allow_nan=False``).

    Keyword arguments go to :func:`json.dumps` (``indent``, ``sort_keys``, ...).
    """
    return json.dumps(jsonable(value), allow_nan=False, **kwargs)


def _key(key: Any) -> str:
    """A dict key as :func:`json.dumps` writes it (it accepts str, int, float, bool and None keys)."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    converted = jsonable(key)
    return converted if isinstance(converted, str) else json.dumps(converted)
