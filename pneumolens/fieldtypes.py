"""Type checks for the config dataclasses: a value of the wrong kind is one clear line, not a traceback.

YAML and JSON give ``swap: "x"``, ``lr: fast`` or ``swap: true`` as readily as a number; the range
checks after them would raise a ``TypeError`` or, for a bool, accept it as 1.
"""

from __future__ import annotations

import functools
from dataclasses import fields
from typing import Any, get_type_hints

from .errors import ConfigError

_KINDS = {float: "a number", int: "a whole number", bool: "true or false", str: "text"}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a dataclass (resolved once per class)."""
    return get_type_hints(cls)


def check_scalar_types(obj: Any, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for a field declared float, int, bool or str holding another kind.

    A float field takes an int (YAML writes ``1`` for 1.0) but never a bool; an int field takes
    neither a bool nor a float. Other fields (tuples, nested configs, optional values) are left to
    their own checks.
    """
    hints = _hints(type(obj))
    for f in fields(obj):
        want, value = hints.get(f.name), getattr(obj, f.name)
        if want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif want is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif want is bool:
            ok = isinstance(value, bool)
        elif want is str:
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            raise ConfigError(f"{prefix}{f.name} must be {_KINDS[want]}, got {value!r}")
