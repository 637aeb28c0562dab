"""How static quantization lays out the Convs onnxruntime runs slowly in int8, chosen by timing on this machine.

onnxruntime's direct int8 Conv kernel (x86 and ARM) needs a multiple of 4 input channels; tiny-reduction
Convs (a 1-channel 3x3 stem reduces over 9 values) run its slower fallback. Three layouts are candidates:

- `small_convs_float`: the tiny-reduction Convs stay float (int8 storage), the rest int8;
- `int8`: every Conv int8, as onnxruntime's quantizer leaves them;
- `int8_padded`: every Conv int8, input channels padded to a multiple of 4 (conv_channel_pad.py, exact).

Which is fastest depends on the graph and the CPU (measured, 1 thread, batch 32, AVX512-VNNI: residual_cnn
int8_padded 0.464x of fp32 vs 0.480x small_convs_float; digits_cnn small_convs_float 0.72x vs 0.80x
int8_padded), so the candidates that differ are quantized and timed interleaved, and the fastest is kept.

The search's attempts all use `int8` (onnxruntime's own layout); the layouts are timed once, after the search,
on the exclusion list of the attempt it returns (`tune_conv_layout`): that attempt is the `int8` candidate,
so only the other layouts are quantized (without bias correction, which changes no kernel). A faster layout
is then quantized in full and judged as one more attempt, and kept only within budget. Timing inside the
first attempt cost up to 3 quantizations and a timing on models whose static search never met the budget
(layout_cdla: 37 s of a 170 s first attempt).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from compression.errors import JobInterrupted
from compression.metrics.evaluation import Evaluator
from compression.quantization.conv_channel_pad import pad_conv_channels, paddable_convs
from compression.quantization.prepare import Prepared
from compression.quantization.speed import interleaved_latency

if TYPE_CHECKING:
    from compression.quantization.modes import StaticQuantizer

SMALL_FLOAT, INT8, INT8_PADDED = "small_convs_float", "int8", "int8_padded"


@dataclass(frozen=True)
class ConvLayout:
    name: str
    keep_float: list[str]  # tiny-reduction Convs kept float
    pad_channels: bool


def candidate_layouts(small: list[str], pad: bool) -> list[ConvLayout]:
    """The layouts worth timing: `small` are the tiny-reduction Convs, `pad` whether padding is enabled."""
    layouts = [ConvLayout(SMALL_FLOAT, small, False)] if small else []
    layouts.append(ConvLayout(INT8, [], False))
    if pad:
        layouts.append(ConvLayout(INT8_PADDED, [], True))
    return layouts


def pad_conv_file(path: Path) -> list[str]:
    """Pad the eligible Convs of the QDQ model at `path` in place; returns the padded Convs' names."""
    model = onnx.load(str(path))
    padded = pad_conv_channels(model)
    if padded:
        onnx.save(model, str(path))
    return padded


def _any_paddable(prepared: Prepared) -> bool:
    return bool(paddable_convs(onnx.load(str(prepared.path), load_external_data=False)))


def apply_layout(prepared: Prepared, quantizer: StaticQuantizer, layout: ConvLayout) -> None:
    prepared.details["always_exclude"] = list(layout.keep_float)
    quantizer.pad_channels = layout.pad_channels


def use_int8(prepared: Prepared, quantizer: StaticQuantizer) -> None:
    """The layout of the search's attempts: every Conv int8, as onnxruntime's quantizer leaves them."""
    apply_layout(prepared, quantizer, ConvLayout(INT8, [], False))


def tune_conv_layout(
    quantizer: StaticQuantizer, prepared: Prepared, evaluator: Evaluator, baseline: Path, exclude: list[str]
) -> bool:
    """Time every candidate layout on `exclude` against `baseline` (the `int8` attempt), keep the fastest.

    Recorded as `conv_layout`. Returns True when a layout other than `int8` was chosen (and applied): the
    caller re-quantizes with it. The padded layout is dropped when there is nothing to pad; with a single
    layout left nothing is quantized or timed here.
    """
    small = prepared.details.get("small_conv_candidates") or []
    small = [name for name in small if name not in set(exclude)]  # already float: nothing to choose
    settings = quantizer.ctx.settings
    pad = settings.quantize.pad_conv_channels and quantizer.config.format == "qdq" and _any_paddable(prepared)
    layouts = candidate_layouts(small, pad)
    paths: dict[str, Path] = {}
    padded: list[str] = []
    failures: dict[str, str] = {}
    for layout in sorted(layouts, key=lambda layout: not layout.pad_channels):  # padded first: may drop out
        if len(layouts) == 1:
            break  # nothing to compare
        path = quantizer.work / f"layout_{layout.name}.onnx"
        if layout.name == INT8:
            shutil.copyfile(baseline, path)  # the attempt itself: the same kernels
            paths[layout.name] = path
            continue
        apply_layout(prepared, quantizer, layout)
        try:
            quantizer.timing_only = True  # only timed: no bias correction (it changes no kernel)
            quantizer.quantize(prepared, path, exclude)
        except JobInterrupted:
            raise
        except Exception as exc:  # the search met (and reported) the graphs that cannot be quantized itself
            failures[layout.name] = f"{type(exc).__name__}: {str(exc)[:200]}"
            layouts.remove(layout)
            continue
        finally:
            quantizer.timing_only = False
        if layout.pad_channels:
            padded = list(quantizer.details.get("conv_channels_padded") or [])
            if not padded:  # no Conv to pad: the same graph as `int8`
                layouts.remove(layout)
                continue
        paths[layout.name] = path
    use_int8(prepared, quantizer)
    quantizer.details["conv_channels_padded"] = []  # the returned attempt's, until a padded one is kept
    if len(layouts) <= 1:
        if failures:
            quantizer.details["conv_layout"] = {"chosen": INT8, "failed": failures}
        return False
    stats = interleaved_latency([paths[layout.name] for layout in layouts], evaluator, quantizer.ctx.settings)
    for path in paths.values():
        path.unlink(missing_ok=True)
    latency = {layout.name: stat.median_ms for layout, stat in zip(layouts, stats, strict=True)}
    chosen = min(layouts, key=lambda layout: (latency[layout.name], layouts.index(layout)))
    apply_layout(prepared, quantizer, chosen)
    quantizer.details["conv_layout"] = {
        "chosen": chosen.name,
        "latency_ms": latency,
        "padded_convs": padded,
        **({"failed": failures} if failures else {}),
    }
    if small:  # the report's "kept in float" reasons read this
        int8_ms = [ms for name, ms in latency.items() if name != SMALL_FLOAT]
        quantizer.details["small_convs"] = {
            "nodes": small,
            "kept_float": chosen.name == SMALL_FLOAT,
            "latency_ms_float": latency.get(SMALL_FLOAT),
            "latency_ms_int8": min(int8_ms) if int8_ms else None,
        }
    return chosen.name != INT8


def layout_rejected(prepared: Prepared, quantizer: StaticQuantizer, reasons: list[str]) -> None:
    """The faster layout's attempt broke the budget: the `int8` attempt stays (recorded in `conv_layout`)."""
    layout = quantizer.details.get("conv_layout") or {}
    use_int8(prepared, quantizer)
    quantizer.details["conv_layout"] = {**layout, "fastest": layout.get("chosen"), "chosen": INT8, "rejected": reasons}
    quantizer.details["conv_channels_padded"] = []
    if "small_convs" in quantizer.details:
        quantizer.details["small_convs"]["kept_float"] = False


def layout_kept(quantizer: StaticQuantizer) -> None:
    chosen = (quantizer.details.get("conv_layout") or {}).get("chosen")
    small = (quantizer.details.get("small_convs") or {}).get("nodes") or []
    if chosen == SMALL_FLOAT:
        quantizer.report(f"keeping {len(small)} Conv node(s) with a tiny reduction in float: measured faster")
    elif chosen == INT8_PADDED:
        padded = quantizer.details.get("conv_channels_padded") or []
        quantizer.report(f"padding the input channels of {len(padded)} int8 Conv(s) to a multiple of 4: faster")
