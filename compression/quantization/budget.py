"""Whether a quantized model is within the user's budget: accuracy (or top-1 agreement) and per-output floors."""

from __future__ import annotations

from pydantic import BaseModel, Field

from compression.metrics.fidelity import Fidelity
from compression.settings import EngineSettings


class Budget(BaseModel):
    max_accuracy_drop: float | None = None
    min_output_cosine: float
    min_channel_cosine: float

    @classmethod
    def from_settings(cls, max_accuracy_drop: float | None, settings: EngineSettings) -> Budget:
        return cls(
            max_accuracy_drop=max_accuracy_drop,
            min_output_cosine=settings.quantize.min_output_cosine,
            min_channel_cosine=settings.quantize.min_channel_cosine,
        )


class Verdict(BaseModel):
    ok: bool
    reasons: list[str] = Field(default_factory=list)
    metric: str | None = Field(None, description="'accuracy' with labels, else 'top1_agreement'")
    drop: float | None = None
    collapsed_outputs: list[str] = Field(default_factory=list)


def judge(fidelity: Fidelity, budget: Budget) -> Verdict:
    """Budget on accuracy (or top-1 agreement without labels) plus floors that catch collapsed outputs.

    The floors always apply: whole-tensor cosine can read 0.9999 while one channel (class scores
    next to pixel boxes) has collapsed, so small outputs are also checked channel by channel.
    """
    reasons: list[str] = []
    collapsed: list[str] = []
    for name, out in fidelity.outputs.items():
        if out.cosine < budget.min_output_cosine:
            collapsed.append(name)
            reasons.append(f"output '{name}' cosine {out.cosine:.4f} < {budget.min_output_cosine}")
        elif out.min_channel_cosine is not None and out.min_channel_cosine < budget.min_channel_cosine:
            collapsed.append(name)
            reasons.append(
                f"output '{name}' has a collapsed channel: min per-channel cosine {out.min_channel_cosine:.4f} "
                f"< {budget.min_channel_cosine} (whole-tensor cosine {out.cosine:.4f})"
            )
    metric, drop = None, None
    if fidelity.accuracy is not None:
        metric, drop = "accuracy", fidelity.accuracy.drop
    elif fidelity.top1_agreement is not None:
        metric, drop = "top1_agreement", 1.0 - fidelity.top1_agreement
    if budget.max_accuracy_drop is not None and drop is not None and drop > budget.max_accuracy_drop + 1e-9:
        reasons.append(f"{metric} drop {drop:.4f} > budget {budget.max_accuracy_drop}")
    return Verdict(ok=not reasons, reasons=reasons, metric=metric, drop=drop, collapsed_outputs=collapsed)
