"""Which candidate within budget a quantize step returns, by its objective, from sizes and latency verdicts.

"Never slower" holds under every objective: a candidate whose latency interval lies wholly above the slowdown
tolerance is never returned. An inconclusive measurement counts as not worse, never as faster.
"""

from __future__ import annotations

from dataclasses import dataclass

from compression.metrics.latency import RatioInterval
from compression.quantization.config import Objective
from compression.quantization.speed import SpeedVerdict


@dataclass
class Option:
    mode: str
    size_ratio: float
    interval: RatioInterval
    verdict: SpeedVerdict

    def text(self) -> str:
        interval = self.interval
        latency = f"{interval.ratio:.3f}x [{interval.low:.3f}, {interval.high:.3f}]"
        return f"{self.mode} ({self.size_ratio:.3f}x size, latency {latency}, {self.verdict.value})"


@dataclass
class Choice:
    option: Option | None
    reason: str


def choose(objective: Objective, options: list[Option], size_tie: float) -> Choice:
    """The option `objective` picks among candidates already within budget, or None (return the input)."""
    listed = "; ".join(option.text() for option in options) or "none"
    inconclusive = any(option.verdict == SpeedVerdict.INCONCLUSIVE for option in options)
    capped = (
        " The latency measurement stopped at its cap before every interval was narrow: inconclusive."
        if inconclusive
        else ""
    )
    if objective == Objective.LATENCY:
        faster = [option for option in options if option.verdict == SpeedVerdict.FASTER]
        if not faster:
            return Choice(
                None,
                f"objective 'latency': no candidate within budget is clearly faster than the input ({listed}); "
                f"returning the input model.{capped}",
            )
        best = min(faster, key=lambda option: option.interval.ratio)
        return Choice(
            best,
            f"objective 'latency': {best.mode} is the fastest candidate within budget clearly faster than the "
            f"input: {best.text()}",
        )
    not_slower = [option for option in options if option.verdict != SpeedVerdict.SLOWER]
    smaller = [option for option in not_slower if option.size_ratio < 1.0]
    if not smaller:
        why = (
            "every candidate within budget that is smaller than the input is clearly slower than it"
            if any(option.size_ratio < 1.0 for option in options)
            else "no candidate within budget is smaller than the input"
        )
        return Choice(None, f"objective '{objective.value}': {why} ({listed}); returning the input model")
    smallest = min(smaller, key=lambda option: (option.size_ratio, option.interval.ratio))
    noise = {
        SpeedVerdict.FASTER: "clearly faster than the input",
        SpeedVerdict.WITHIN_NOISE: "within noise of the input's latency",
        SpeedVerdict.INCONCLUSIVE: "inconclusive latency, counted as not worse",
    }
    if objective == Objective.SIZE:
        return Choice(
            smallest,
            f"objective 'size': {smallest.mode} is the smallest candidate within budget that is not clearly slower "
            f"({noise[smallest.verdict]}): {smallest.text()}",
        )
    tied = [option for option in smaller if option.size_ratio <= smallest.size_ratio * (1.0 + size_tie)]
    best = min(tied, key=lambda option: option.interval.ratio)
    if best is smallest:
        return Choice(
            best,
            f"objective 'balanced': {best.mode} is the smallest candidate within budget whose latency is not worse "
            f"than the input's ({noise[best.verdict]}): {best.text()}",
        )
    return Choice(
        best,
        f"objective 'balanced': {best.mode} is within {size_tie:.0%} of the smallest candidate's size "
        f"({smallest.text()}) and faster ({noise[best.verdict]}): {best.text()}",
    )
