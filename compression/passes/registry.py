"""Pass registry: each step `type` maps to one pass class; the spec's step union is built from it."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from compression.contract import CompressionPass, StepConfig

_PASSES: dict[str, type[CompressionPass]] = {}


def register_pass(cls: type[CompressionPass]) -> type[CompressionPass]:
    if cls.step_type in _PASSES:
        raise ValueError(f"step type {cls.step_type!r} registered twice")
    _PASSES[cls.step_type] = cls
    return cls


def registered_passes() -> dict[str, type[CompressionPass]]:
    return dict(_PASSES)


def _step_type(value: Any) -> str | None:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


def step_config_union() -> Any:
    """A union of every registered config, discriminated by `type` (nested unions discriminate by mode).

    A callable discriminator keeps the OpenAPI schema valid with nested unions and lets the error
    for an unknown type list the valid ones.
    """
    members = tuple(Annotated[cls.config_model, Tag(name)] for name, cls in _PASSES.items())
    valid = ", ".join(repr(name) for name in _PASSES)
    return Annotated[
        Union[members],  # noqa: UP007
        Discriminator(
            _step_type,
            custom_error_type="unknown_step_type",
            custom_error_message=f"unknown or missing step 'type'; valid types: {valid}",
        ),
    ]


def create_pass(config: StepConfig) -> CompressionPass:
    step_type = config.type  # type: ignore[attr-defined]
    return _PASSES[step_type](config)
