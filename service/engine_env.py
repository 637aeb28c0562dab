"""Reads the engine's knobs from the environment under their flat names (`LATENCY_RUNS`, `QUANT_MIN_OUTPUT_COSINE`).

The engine groups its knobs in nested models (compression/settings.py); operators keep setting one flat
variable per knob. This settings source collects those variables (and the `.env` file's) for `Settings`,
whose inherited `EngineSettings` validator nests them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from compression.settings import flat_names


class EngineKnobsSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # every value comes from __call__

    def __call__(self) -> dict[str, Any]:
        names = flat_names()
        values: dict[str, Any] = {}
        env_file = self.config.get("env_file")
        if isinstance(env_file, str | Path) and Path(env_file).is_file():
            values.update(dotenv_values(env_file))
        values.update(os.environ)
        return {key.lower(): _decode(value) for key, value in values.items() if key.lower() in names and value}


def _decode(value: str) -> Any:
    """Lists are JSON (`PRUNE_ROUND_TO_CANDIDATES=[8,16]`); scalars stay strings for pydantic to parse."""
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value
    return value
