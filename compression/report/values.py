"""Tolerant reads of a metrics document: a failed or partial job leaves keys out or holds odd types."""

from __future__ import annotations

import math
from typing import Any


def dig(data: Any, *keys: str | int) -> Any:
    """`data[k1][k2]...`, or None as soon as a level is missing or of the wrong type."""
    for key in keys:
        if isinstance(key, int) and isinstance(data, list) and -len(data) <= key < len(data):
            data = data[key]
        elif isinstance(key, str) and isinstance(data, dict):
            data = data.get(key)
        else:
            return None
    return data


def as_float(value: Any) -> float | None:
    """A finite number, else None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def as_int(value: Any) -> int | None:
    number = as_float(value)
    return int(number) if number is not None and number == int(number) else None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_floats(value: Any) -> list[float]:
    """The finite numbers of a list, others dropped."""
    return [number for number in (as_float(item) for item in as_list(value)) if number is not None]


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def as_texts(value: Any) -> list[str]:
    return [str(item) for item in as_list(value) if item is not None]
