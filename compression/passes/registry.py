"""Pass registry: each step `type` maps to one pass class; the spec's step union is built from it."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from compression.passes.base import CompressionPass, StepConfig

_PASSES: dict[str, type[CompressionPass]] = {}


def register_pass(cls: type[CompressionPass]) -> type[CompressionPass]:
    if cls.step_type in _PASSES:
        raise ValueError(f"step type {cls.step_type!r} registered twice")
    _PASSES[cls.step_type] = cls
    return cls


def registered_passes() -> dict[str, type[CompressionPass]]:
    return dict(_PASSES)


def step_config_union() -> Any:
    """A union of every registered config, discriminated by `type` (nested unions discriminate by mode)."""
    members = tuple(cls.config_model for cls in _PASSES.values())
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007


def create_pass(config: StepConfig) -> CompressionPass:
    step_type = config.type  # type: ignore[attr-defined]
    return _PASSES[step_type](config)
