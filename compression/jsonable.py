"""Metrics as strict JSON: inf/NaN become null and numpy values plain numbers, so PostgreSQL's JSON
columns and strict JSON clients accept every metrics document a pass can produce."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import BaseModel


def _fallback(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)


def to_jsonable(model: BaseModel) -> dict[str, Any]:
    return json.loads(model.model_dump_json(fallback=_fallback))
