"""The distill step's config: what to train, for how long, and against which losses."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from compression.contract import StepConfig


class Hint(BaseModel):
    """An intermediate tensor the student should reproduce (MSE), named in each graph; shapes must match."""

    model_config = ConfigDict(extra="forbid")

    teacher: str = Field(min_length=1, description="tensor name in the teacher graph")
    student: str = Field(min_length=1, description="tensor name in the student graph")


class DistillConfig(StepConfig):
    """Train the student graph's weights against the job's original model (the teacher)."""

    type: Literal["distill"] = "distill"
    student: str = Field("current", description="'current' (the pipeline's model so far) or an uploaded model id")
    epochs: int = Field(10, ge=1, description="passes over the train dataset (at most distill_max_epochs)")
    batch_size: int = Field(64, ge=1, description="samples per optimizer step (stacked data: entries per step)")
    lr: float = Field(1e-3, gt=0, le=1.0, description="AdamW peak learning rate, cosine-decayed to 0")
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(4.0, gt=0, description="softens both distributions in the KL term")
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the KL term; 1 - alpha weighs cross-entropy")
    hints: list[Hint] = Field(default_factory=list, description="intermediate tensors matched with MSE")
    hint_weight: float = Field(1.0, ge=0, description="weight of each hint loss")
    output_loss: dict[str, Literal["kl", "mse"]] = Field(
        default_factory=dict, description="per-output override of the automatic kl (class scores) / mse choice"
    )
    batchnorm: Literal["auto", "train", "frozen"] = Field(
        "auto", description="BatchNormalization: batch statistics while training (auto: for batched data) or frozen"
    )
    frozen: list[str] = Field(default_factory=list, description="initializer names to keep fixed")
    select: Literal["loss", "metric", "last"] = Field(
        "loss",
        description="epoch kept: lowest eval loss (smooth, the default), best eval metric "
        "(accuracy, else teacher agreement; ties by loss), or the last",
    )
    seed: int = Field(0, description="shuffling seed: the same seed gives the same weights")
