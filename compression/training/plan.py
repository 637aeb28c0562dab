"""Which loss each student output gets, and which tensor carries its logits (the input of a final Softmax)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from compression.errors import CompressionError
from compression.training.graph_module import default_opset
from compression.training.losses import teacher_scale

SOFTMAX_OPS = ("Softmax", "LogSoftmax")


@dataclass
class OutputLoss:
    """One student output matched to a teacher output.

    `student_tensor` is the tensor the loss reads (a Softmax's input when the output is a probability),
    `teacher_form` says how to turn the teacher output into logits, `axis` is the class axis.
    """

    student_output: str
    teacher_output: str
    kind: Literal["kl", "mse"]
    student_tensor: str
    teacher_form: Literal["logits", "probs", "log_probs"] = "logits"
    student_form: Literal["logits", "probs"] = "logits"  # probs: an output normalised without a Softmax node
    axis: int = -1
    use_labels: bool = False
    scale: float = 1.0  # the teacher output's mean square over the train set: mse terms are divided by it

    @property
    def raw_scores(self) -> bool:
        """A kl output that is itself the scores (no Softmax in front): its values matter, not only its softmax."""
        return self.kind == "kl" and self.student_tensor == self.student_output


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in graph.node for name in node.output}


def _softmax_axis(node: onnx.NodeProto, opset: int) -> int:
    default = -1 if opset >= 13 else 1
    for attribute in node.attribute:
        if attribute.name == "axis":
            return attribute.i
    return default


def _probabilities(target: np.ndarray, axis: int, stacked: bool) -> bool:
    """Every row along the class axis is non-negative and sums to 1 (the teacher output is probabilities)."""
    if target.size == 0 or not np.isfinite(target).all() or target.min() < -1e-6:
        return False
    sums = target.astype(np.float64).sum(axis=axis + 1 if stacked and axis >= 0 else axis)
    return bool(np.allclose(sums, 1.0, atol=1e-3))


def match_outputs(student: onnx.ModelProto, teacher: onnx.ModelProto) -> dict[str, str]:
    """Student output name -> teacher output name: by name, or by position when each has one output."""
    s_names = [v.name for v in student.graph.output]
    t_names = [v.name for v in teacher.graph.output]
    if len(s_names) == 1 and len(t_names) == 1:
        return {s_names[0]: t_names[0]}
    missing = [name for name in s_names if name not in t_names]
    if missing:
        raise CompressionError(
            f"student outputs {missing} have no teacher output of the same name (teacher outputs: {t_names})"
        )
    return {name: name for name in s_names}


def plan_losses(
    student: onnx.ModelProto,
    teacher: onnx.ModelProto,
    targets: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    stacked: bool,
    overrides: Mapping[str, str],
) -> list[OutputLoss]:
    """Auto rule: a Softmax output, or a float output of rank 2 with >= 2 columns, is class scores (kl); else mse.

    A Softmax over the last axis of an [N, T, C] output (CTC recognizers, taggers) is one distribution per
    position: the KL term averages over positions. Everything else (dense maps, boxes, states, raw sequence
    features) gets mse divided by the teacher output's mean square (`scale`), so outputs with large ranges
    (box coordinates in pixels) and small ones (scores) weigh alike.
    Cross-entropy on labels goes to the first kl output with one score row per label.
    """
    pairs = match_outputs(student, teacher)
    unknown = sorted(set(overrides) - set(pairs))
    if unknown:
        raise CompressionError(f"output_loss names {unknown}, which are not student outputs ({sorted(pairs)})")
    s_prod, t_prod = _producers(student.graph), _producers(teacher.graph)
    s_opset, t_opset = default_opset(student), default_opset(teacher)
    plans: list[OutputLoss] = []
    labels_taken = labels is None or labels.dtype.kind not in "iub"
    for s_name, t_name in pairs.items():
        target = targets[t_name]
        per_entry = target.shape[1:] if stacked else target.shape  # the output's own shape
        s_node, t_node = s_prod.get(s_name), t_prod.get(t_name)
        if target.dtype.kind != "f":
            continue  # integer outputs (argmax indices) carry no gradient
        plan = OutputLoss(s_name, t_name, "mse", s_name, scale=teacher_scale(target))
        if s_node is not None and s_node.op_type in SOFTMAX_OPS:
            plan.kind, plan.student_tensor = "kl", s_node.input[0]
            plan.axis = _softmax_axis(s_node, s_opset)
        elif len(per_entry) == 2 and per_entry[1] >= 2:
            plan.kind, plan.axis = "kl", 1
        if t_node is not None and t_node.op_type in SOFTMAX_OPS:
            plan.teacher_form = "probs" if t_node.op_type == "Softmax" else "log_probs"
            if plan.kind == "kl" and _softmax_axis(t_node, t_opset) % len(per_entry) != plan.axis % len(per_entry):
                raise CompressionError(f"teacher and student normalise output {s_name!r} over different axes")
        if plan.kind == "kl" and plan.student_tensor == s_name and _probabilities(target, plan.axis, stacked):
            # scores already normalised by other ops (Exp/ReduceSum/Div, or a Softmax the exporter hid behind an
            # Identity): their logs are the logits; read as logits themselves, the KL term would see near-uniform
            # distributions and give almost no gradient
            plan.teacher_form, plan.student_form = "probs", "probs"
        if overrides.get(s_name) == "mse":
            plan.kind, plan.student_tensor = "mse", s_name
        elif overrides.get(s_name) == "kl" and plan.kind != "kl":
            plan.kind, plan.axis = "kl", -1
        if plan.kind == "kl" and not labels_taken and labels is not None:
            scores_per_sample = int(np.prod(per_entry if stacked else per_entry[1:])) // per_entry[plan.axis]
            if scores_per_sample == int(np.prod(labels.shape[1:])):
                plan.use_labels, labels_taken = True, True
        plans.append(plan)
    if not plans:
        raise CompressionError("the student has no float outputs to distill")
    return plans
