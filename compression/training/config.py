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
    lr: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="AdamW peak learning rate after a short linear warmup, cosine-decayed to 0; default (None): 1e-3 "
        "(a step whose training hurts returns its input: see the final check)",
    )
    warmup: float = Field(0.05, ge=0, lt=1, description="fraction of the steps the learning rate ramps up over")
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(4.0, gt=0, description="softens both distributions in the KL term")
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the KL term; 1 - alpha weighs cross-entropy")
    hints: list[Hint] = Field(default_factory=list, description="intermediate tensors matched with MSE")
    hint_weight: float = Field(1.0, ge=0, description="weight of each hint loss")
    auto_hints: int = Field(
        4,
        ge=0,
        le=32,
        description="also match up to this many intermediate tensors found automatically: same name and shape in "
        "student and teacher, downstream of a changed weight (after a structured prune: the pruned layers' "
        "consumers), spread over the graph; their MSE terms share hint_weight. 0: off. Not used for QAT students",
    )
    output_loss: dict[str, Literal["kl", "mse"]] = Field(
        default_factory=dict,
        description="per-output override of the automatic choice: kl (class scores, per position for [N, T, C] "
        "sequences) or mse (dense maps, boxes, states; divided by the teacher output's mean square)",
    )
    batchnorm: Literal["auto", "train", "frozen"] = Field(
        "auto",
        description="BatchNormalization: batch statistics while training or frozen running statistics; auto: "
        "batch statistics only for batched data with at least 16 samples per step",
    )
    augment: int | None = Field(
        None,
        ge=0,
        le=31,
        description="mixed and noised copies of the unlabeled train inputs the teacher labels too (float inputs "
        "only, never with labels); None: enough copies to reach ~128 samples (at most 7), none for larger sets",
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        description="training time budget: the learning rate decays over it and training stops when it is spent "
        "(the best epoch so far is kept); None: only epochs bound it",
    )
    check_seconds: float | None = Field(
        None,
        gt=0,
        description="selection checks inside an epoch: the student is scored on the selection data (and its best "
        "state kept) every this many seconds of training, besides each epoch's end (checks stay at least 4x their "
        "own cost apart); None: a twentieth of max_seconds when that is set, else epoch ends only",
    )
    anchor: float = Field(
        0.0,
        ge=0,
        description="L2-SP: after each step every trained weight moves lr*anchor of the way back to its starting "
        "value (decoupled like AdamW's weight_decay, which pulls toward 0); 0: off",
    )
    backoff: int = Field(
        2,
        ge=0,
        le=5,
        description="times training goes back to the best state with 0.3x the learning rate when a tenth of the "
        "training (steps or time) and 3 selection checks pass without a better one (a student that starts close to the "
        "teacher, e.g. refitted after a prune, is pushed away by the first rate); 0: never",
    )
    unchanged_lr: float = Field(
        1.0,
        gt=0,
        le=1.0,
        description="learning rate of the weights the student holds exactly as the teacher does (not pruned or "
        "refitted), as a share of lr; the changed weights train at lr. 1: one rate for all",
    )
    fresh_copies: bool = Field(
        True,
        description="new mixed copies of the train inputs every epoch, labelled by the teacher (onnxruntime) at "
        "the epoch's start; the given samples keep their cached targets. Only when copies are made (see augment)",
    )
    qat: Literal["auto", "off"] = Field(
        "auto",
        description="quantization-aware training of a QDQ student: int8 weights feeding DequantizeLinear train as "
        "float, fake-quantized with their scales (straight-through), and are re-quantized on write-back",
    )
    learn_scales: bool = Field(
        False,
        description="QAT: also learn the weight scales and the activation (Q/DQ) scales, LSQ-style, in log space "
        "(a step of lr changes a scale by about lr, relatively); int32 biases follow input x weight scale",
    )
    frozen: list[str] = Field(default_factory=list, description="initializer names to keep fixed")
    select: Literal["loss", "metric", "last"] = Field(
        "loss",
        description="epoch kept: lowest eval loss (smooth, the default), best eval metric "
        "(accuracy, else teacher agreement; ties by loss), or the last",
    )
    seed: int = Field(0, description="shuffling seed: the same seed gives the same weights")
