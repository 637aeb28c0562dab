"""Whether a quantized model is within the user's budget, judged per output with a metric that fits it.

Each output gets one budget metric, chosen from its kind (compression/metrics/fidelity.py explains the kinds)
unless the step's `budget_metric` names one (for every output, or per output name):

| kind | metric | judged on |
|---|---|---|
| class scores with labels | `accuracy` | accuracy drop <= `max_accuracy_drop` |
| class scores ([N, C]) | `top1` | 1 - top-1 agreement <= `max_accuracy_drop` |
| sequence whose steps are probability distributions | `top1_per_step` | 1 - per-step top-1 agreement <= budget |
| sequence a linear/softmax head computes (a tagger's logits) | `top1_per_step` | the same (`metrics.output_heads`) |
| other sequences, dense maps, a few values per sample | `cosine` | the cosine floors below |
| integer outputs (ids, masks) | `agreement` | share of changed values <= `max_accuracy_drop` |
| chosen explicitly | `snr_db` | worst per-sample SNR >= `quant_min_snr_db` |

The floors apply to every output whatever its metric: they catch collapsed outputs. With a budget they are
judged worst case: worst per-sample cosine >= `quant_min_output_cosine` (pooled cosine where a sample has one
value, and then also 1 - its largest change >= the same floor; integer outputs: the worst sample's share of
unchanged values >= the same floor) and worst per-slice cosine (a step, a channel, a map tile) >= `quant_min_slice_cosine`. Without one
(`max_accuracy_drop` null, "floors only") the pooled cosine is held to `quant_min_output_cosine`. Always, every
channel of a small last axis >= `quant_min_channel_cosine` (a score column next to pixel boxes). Rates
(`accuracy`, `top1`, `top1_per_step`, `agreement`) are pooled over samples and positions: they are shares,
and the budget is one. A `snr_db` output is held to its floor whether or not a budget is set.
An output whose length varies per input is judged input by input as its per-input kind (`varying_shape`), and
an input whose output length differs from the input model's fails the budget whatever the metric.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from compression.errors import CompressionError
from compression.metrics.evaluation import Evaluator
from compression.metrics.fidelity import Fidelity, OutputFidelity, OutputKind
from compression.settings import EngineSettings


class BudgetMetric(StrEnum):
    ACCURACY = "accuracy"
    TOP1 = "top1"
    TOP1_PER_STEP = "top1_per_step"
    AGREEMENT = "agreement"
    COSINE = "cosine"
    SNR_DB = "snr_db"


RATES = frozenset({BudgetMetric.ACCURACY, BudgetMetric.TOP1, BudgetMetric.TOP1_PER_STEP, BudgetMetric.AGREEMENT})
BudgetMetricSpec = BudgetMetric | dict[str, BudgetMetric]


class BudgetMetricError(CompressionError):
    code = "invalid_budget_metric"


class Budget(BaseModel):
    max_accuracy_drop: float | None = None
    min_output_cosine: float
    min_channel_cosine: float
    min_slice_cosine: float = 0.0
    min_snr_db: float = 0.0
    budget_metric: BudgetMetricSpec | None = None

    @classmethod
    def from_settings(
        cls, max_accuracy_drop: float | None, settings: EngineSettings, budget_metric: BudgetMetricSpec | None = None
    ) -> Budget:
        return cls(
            max_accuracy_drop=max_accuracy_drop,
            min_output_cosine=settings.quantize.min_output_cosine,
            min_channel_cosine=settings.quantize.min_channel_cosine,
            min_slice_cosine=settings.quantize.min_slice_cosine,
            min_snr_db=settings.quantize.min_snr_db,
            budget_metric=budget_metric,
        )

    def check_outputs(self, reference: Fidelity) -> None:
        """Fail early on a `budget_metric` naming an unknown output or a metric its output cannot have.

        `reference` is the input model compared with itself (it has every output's kind and figures).
        """
        spec = self.budget_metric
        if spec is None:
            return
        if isinstance(spec, BudgetMetric):
            if spec == BudgetMetric.ACCURACY and reference.accuracy is None:
                raise BudgetMetricError(
                    "budget_metric 'accuracy' needs an eval dataset with integer 'labels' for a class-score output"
                )
            if not any(_applies(spec, name, out, reference) for name, out in reference.outputs.items()):
                raise BudgetMetricError(
                    f"budget_metric '{spec.value}' fits none of the model's outputs: {_kinds(reference)}"
                )
            return
        unknown = sorted(set(spec) - set(reference.outputs))
        if unknown:
            raise BudgetMetricError(
                f"budget_metric names outputs the model does not have: {unknown}; its outputs are "
                f"{sorted(reference.outputs)}"
            )
        for name, metric in spec.items():
            if not _applies(metric, name, reference.outputs[name], reference):
                need = NEEDS[metric]
                raise BudgetMetricError(
                    f"budget_metric '{metric.value}' does not fit output '{name}' "
                    f"({reference.outputs[name].kind}): it needs {need}"
                )


NEEDS = {
    BudgetMetric.ACCURACY: "labels in the eval dataset scored against this class-score output",
    BudgetMetric.TOP1: "a class-score output (one score vector per sample)",
    BudgetMetric.TOP1_PER_STEP: "a sequence output [N, T, C] with C >= 2",
    BudgetMetric.AGREEMENT: "an integer output",
    BudgetMetric.COSINE: "nothing",
    BudgetMetric.SNR_DB: "a float output",
}


def _kinds(fidelity: Fidelity) -> str:
    return ", ".join(f"'{name}': {out.kind}" for name, out in fidelity.outputs.items())


def _applies(metric: BudgetMetric, name: str, out: OutputFidelity, fidelity: Fidelity) -> bool:
    if metric == BudgetMetric.ACCURACY:
        return fidelity.accuracy is not None and fidelity.accuracy.output_name == name
    if metric == BudgetMetric.TOP1:
        return out.top1_agreement is not None
    if metric == BudgetMetric.TOP1_PER_STEP:
        return out.top1_per_step is not None
    if metric == BudgetMetric.AGREEMENT:
        return out.agreement is not None
    if metric == BudgetMetric.SNR_DB:
        return out.worst_sample_snr_db is not None
    return True


class MetricChoice(BaseModel):
    metric: BudgetMetric
    why: str


def choose_metric(name: str, out: OutputFidelity, fidelity: Fidelity, budget: Budget) -> MetricChoice:
    """The output's budget metric and why: the step's `budget_metric` when it fits, else from the kind."""
    spec = budget.budget_metric
    asked = spec.get(name) if isinstance(spec, dict) else spec
    fallback_note = ""
    if asked is not None:
        if _applies(asked, name, out, fidelity):
            return MetricChoice(metric=asked, why="set by budget_metric")
        fallback_note = f" (budget_metric '{asked.value}' does not fit a {out.kind} output)"
    kind = out.kind
    if kind == OutputKind.IDS:
        choice = MetricChoice(metric=BudgetMetric.AGREEMENT, why="integer output: share of unchanged values")
    elif kind == OutputKind.CLASS_SCORES and fidelity.accuracy is not None and fidelity.accuracy.output_name == name:
        choice = MetricChoice(metric=BudgetMetric.ACCURACY, why="class scores with labels: accuracy drop")
    elif kind == OutputKind.CLASS_SCORES:
        choice = MetricChoice(metric=BudgetMetric.TOP1, why="class scores without labels: top-1 agreement")
    elif kind == OutputKind.SEQUENCE and out.step_scores and out.top1_per_step is not None:
        choice = MetricChoice(
            metric=BudgetMetric.TOP1_PER_STEP, why="sequence of probability distributions: top-1 agreement per step"
        )
    elif kind == OutputKind.SEQUENCE and out.score_head and out.top1_per_step is not None:
        choice = MetricChoice(
            metric=BudgetMetric.TOP1_PER_STEP,
            why="sequence of step-wise scores (a linear or softmax head computes it): top-1 agreement per step",
        )
    elif kind == OutputKind.SEQUENCE:
        choice = MetricChoice(
            metric=BudgetMetric.COSINE, why="sequence of features or logits: worst per-sample and per-step cosine"
        )
    elif kind == OutputKind.DENSE_MAP:
        choice = MetricChoice(
            metric=BudgetMetric.COSINE, why="dense map: worst per-sample, per-channel and per-tile cosine"
        )
    else:
        choice = MetricChoice(metric=BudgetMetric.COSINE, why="a few values per sample: cosine over all samples")
    return MetricChoice(metric=choice.metric, why=choice.why + fallback_note)


class OutputJudgement(BaseModel):
    metric: BudgetMetric
    why: str
    value: float | None = Field(None, description="the metric's figure: a drop for rates, else the worst cosine/SNR")
    threshold: float | None = Field(None, description="the largest allowed drop, or the floor")
    ok: bool


class Verdict(BaseModel):
    ok: bool
    reasons: list[str] = Field(default_factory=list)
    metric: str | None = Field(None, description="the budget metric of the output with the largest drop")
    drop: float | None = Field(None, description="the largest drop over the outputs judged on a rate")
    collapsed_outputs: list[str] = Field(default_factory=list)
    outputs: dict[str, OutputJudgement] = Field(default_factory=dict, description="per output: metric, why, figure")

    def miss(self) -> float:
        """How far the worst output is from its limit, as a multiple of the allowed change (<= 1: within): a
        rate's drop over the budget, a cosine's distance from 1 over the floor's, the SNR floor over the SNR.
        Load-independent, so it can order candidates whose costs are a near tie."""
        worst = 0.0
        for judged in self.outputs.values():
            value, threshold = judged.value, judged.threshold
            if value is None or threshold is None:
                continue
            if judged.metric in RATES:
                ratio = value / threshold if threshold > 0 else (0.0 if value <= 0 else float("inf"))
            elif judged.metric == BudgetMetric.SNR_DB:
                ratio = threshold / value if value > 0 else float("inf")
            else:
                ratio = (1.0 - value) / (1.0 - threshold) if threshold < 1 else float("inf")
            worst = max(worst, ratio)
        return worst


def _floor_failures(name: str, out: OutputFidelity, budget: Budget) -> list[str]:
    """Reasons the output counts as collapsed (empty when every floor holds).

    Without a budget (`max_accuracy_drop` None: "floors only") the pooled floors catch collapse; with one,
    the floors are judged worst case: per sample and per slice.
    """
    if out.length_mismatches:
        return [
            f"output '{name}' has another shape than the input model's on {out.length_mismatches} input(s) "
            "(its length varies per input: a sequence that stops at a different step)"
        ]
    if out.max_abs_diff == float("inf"):
        return [f"output '{name}' changed shape or became non-finite"]
    reasons = []
    worst_case = budget.max_accuracy_drop is not None
    if worst_case and out.worst_sample_cosine is not None:
        if out.worst_sample_cosine < budget.min_output_cosine:
            reasons.append(
                f"output '{name}' worst per-sample cosine {out.worst_sample_cosine:.4f} < {budget.min_output_cosine}"
            )
    elif out.cosine < budget.min_output_cosine:
        reasons.append(f"output '{name}' cosine {out.cosine:.4f} < {budget.min_output_cosine}")
    if worst_case and out.worst_sample_agreement is not None and out.worst_sample_agreement < budget.min_output_cosine:
        reasons.append(
            f"output '{name}' worst per-sample agreement {out.worst_sample_agreement:.4f} < {budget.min_output_cosine} "
            f"(pooled {out.agreement:.4f})"
        )
    value_fidelity = out.worst_value_fidelity
    if worst_case and value_fidelity is not None and value_fidelity < budget.min_output_cosine:
        reasons.append(
            f"output '{name}' moved by {1 - value_fidelity:.4f} on one sample (1 - largest change "
            f"{value_fidelity:.4f} < {budget.min_output_cosine})"
        )
    slice_cosine = out.worst_slice_cosine
    if worst_case and slice_cosine is not None and slice_cosine < budget.min_slice_cosine:
        reasons.append(
            f"output '{name}' worst per-{(out.slice or 'slice').split(' ')[0]} cosine {slice_cosine:.4f} "
            f"< {budget.min_slice_cosine} (whole-tensor cosine {out.cosine:.4f})"
        )
    if out.min_channel_cosine is not None and out.min_channel_cosine < budget.min_channel_cosine:
        reasons.append(
            f"output '{name}' has a collapsed channel: min per-channel cosine {out.min_channel_cosine:.4f} "
            f"< {budget.min_channel_cosine} (whole-tensor cosine {out.cosine:.4f})"
        )
    return reasons


def _rate_drop(metric: BudgetMetric, name: str, out: OutputFidelity, fidelity: Fidelity) -> float | None:
    if metric == BudgetMetric.ACCURACY and fidelity.accuracy is not None:
        return fidelity.accuracy.drop
    figure = {
        BudgetMetric.TOP1: out.top1_agreement,
        BudgetMetric.TOP1_PER_STEP: out.top1_per_step,
        BudgetMetric.AGREEMENT: out.agreement,
    }.get(metric)
    return None if figure is None else 1.0 - figure


def judge(fidelity: Fidelity, budget: Budget) -> Verdict:
    """Every output's floors, then its budget metric (rates only when `max_accuracy_drop` is set)."""
    reasons: list[str] = []
    collapsed: list[str] = []
    judged: dict[str, OutputJudgement] = {}
    worst: tuple[float, str] | None = None
    for name, out in fidelity.outputs.items():
        floors = _floor_failures(name, out, budget)
        if floors:
            collapsed.append(name)
            reasons.extend(floors)
        choice = choose_metric(name, out, fidelity, budget)
        value: float | None
        threshold: float | None
        ok = not floors
        if choice.metric in RATES:
            value, threshold = _rate_drop(choice.metric, name, out, fidelity), budget.max_accuracy_drop
            if value is not None and (worst is None or value > worst[0]):
                worst = (value, choice.metric.value)
            if value is not None and threshold is not None and value > threshold + 1e-9:
                ok = False
                reasons.append(f"output '{name}': {choice.metric.value} drop {value:.4f} > budget {threshold}")
        elif choice.metric == BudgetMetric.SNR_DB:
            value, threshold = out.worst_sample_snr_db, budget.min_snr_db
            if value is not None and value < threshold:
                ok = False
                reasons.append(f"output '{name}': worst per-sample SNR {value:.1f} dB < {threshold} dB")
        else:
            value = out.worst_sample_cosine if out.worst_sample_cosine is not None else out.cosine
            threshold = budget.min_output_cosine
        judged[name] = OutputJudgement(metric=choice.metric, why=choice.why, value=value, threshold=threshold, ok=ok)
    metric = worst[1] if worst is not None else next((j.metric.value for j in judged.values()), None)
    return Verdict(
        ok=not reasons,
        reasons=reasons,
        metric=metric,
        drop=worst[0] if worst is not None else None,
        collapsed_outputs=collapsed,
        outputs=judged,
    )


def step_budget(
    max_accuracy_drop: float | None,
    budget_metric: BudgetMetricSpec | None,
    settings: EngineSettings,
    evaluator: Evaluator,
) -> Budget:
    """A step's budget, its `budget_metric` checked against the outputs of the step's input model."""
    budget = Budget.from_settings(max_accuracy_drop, settings, budget_metric)
    budget.check_outputs(evaluator.compare_outputs(evaluator.reference_outputs))
    return budget
