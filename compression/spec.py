"""The compression spec: an ordered list of steps, each validated by its pass's config model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

import compression.passes  # noqa: F401  (registers the passes before the union is built)
from compression.passes.registry import step_config_union

Step = step_config_union()


class CompressionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(min_length=1, description="steps run in order; each gets the previous one's model")


def step_json_schema() -> dict[str, Any]:
    """JSON schema of one step, for the docs and the CLI's `steps` command."""
    return create_model("Step", step=(Step, ...)).model_json_schema()
