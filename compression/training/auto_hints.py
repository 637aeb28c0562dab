"""Intermediate tensors a pruned student should reproduce, found without being named (`auto_hints`).

A structured prune keeps every tensor name; it changes the width of the tensors inside pruned groups and
leaves the others (a group's consumers' outputs where the group ends: a head, an intact residual stream,
an attention score map, an LSTM's input projection of an intact width) as wide as they were. Those
same-shape tensors downstream of a changed weight are where the pruned layers' damage first becomes
measurable against the teacher; matching them (MSE scaled by the teacher tensor's mean square, like the
outputs) gives the student dense targets deep inside the graph, which recovers more from a few samples
than matching the final outputs alone.

Candidates: float tensors produced by main-graph nodes of the student that the teacher produces under the
same name, downstream of an initializer whose value or shape differs, not graph outputs, and of the same
shape in both graphs (onnxruntime runs on two samples, and three for batched data: the leading axis must
hold the samples). Up to `count` of them, evenly spread over the graph order (the last one included),
within `max_mb` of teacher targets over the train set.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort

from compression.datasets import Dataset


def _changed_initializers(student: onnx.GraphProto, teacher: onnx.GraphProto) -> set[str]:
    t_init = {t.name: t for t in teacher.initializer}
    changed = set()
    for tensor in student.initializer:
        other = t_init.get(tensor.name)
        if other is None or other.SerializeToString() != tensor.SerializeToString():
            changed.add(tensor.name)
    return changed


def _downstream(graph: onnx.GraphProto, sources: set[str]) -> list[str]:
    """Node outputs (graph order) that depend on any of `sources`; nodes with bodies taint all their outputs
    when a body reads a tainted outer name (checked coarsely: any body reading any tainted name)."""
    tainted = set(sources)
    order: list[str] = []
    for node in graph.node:
        reads = set(node.input)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                reads |= _names_read(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for body in attribute.graphs:
                    reads |= _names_read(body)
        if reads & tainted:
            for name in node.output:
                if name:
                    tainted.add(name)
                    order.append(name)
    return order


def _names_read(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                names |= _names_read(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for body in attribute.graphs:
                    names |= _names_read(body)
    return names


def _run_exposed(model: onnx.ModelProto, names: Iterable[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    outputs = {v.name for v in exposed.graph.output}
    wanted = [name for name in names if name not in outputs]
    for name in wanted:
        exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    # no graph optimization: fused nodes would drop the intermediate names asked for
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(wanted, feed)
    return {name: np.asarray(v) for name, v in zip(wanted, values, strict=True)}


def pick_hints(
    student: onnx.ModelProto,
    teacher: onnx.ModelProto,  # loaded with its weights
    train: Dataset,
    count: int,
    max_mb: float,
) -> list[str]:
    """Up to `count` tensor names to match with the teacher (see the module docstring); [] when none fit."""
    if count <= 0:
        return []
    outputs = {v.name for v in student.graph.output} | {v.name for v in teacher.graph.output}
    t_produced = {name for node in teacher.graph.node for name in node.output if name}
    changed = _changed_initializers(student.graph, teacher.graph)
    if not changed:
        return []
    candidates = [n for n in _downstream(student.graph, changed) if n in t_produced and n not in outputs]
    if not candidates:
        return []
    batched = train.layout == "batched"
    if batched and train.n_samples < 2:
        return []
    # batched data: two samples, so a tensor without a leading sample axis (anchor grids and other values
    # computed from shapes) is told apart from one that has it; stacked entries are whole feeds of their own
    feed = train.first_feed(2 if batched else 1)
    try:
        s_values = _run_exposed(student, candidates, feed)
        t_values = _run_exposed(teacher, candidates, feed)
        # a third sample (when there is one): a tensor whose leading size is 2 by coincidence (a shape read
        # as floats) does not grow with it
        t_three = _run_exposed(teacher, candidates, train.first_feed(3)) if batched and train.n_samples >= 3 else {}
    except Exception:  # noqa: BLE001  (a graph that cannot expose its intermediates simply gets no hints)
        return []
    same = [
        name
        for name in candidates
        if s_values[name].dtype.kind == "f"
        and t_values[name].dtype == s_values[name].dtype
        and s_values[name].shape == t_values[name].shape
        and s_values[name].ndim >= 1
        and s_values[name].size > 1
        and (not batched or s_values[name].shape[0] == 2)
        and (name not in t_three or t_three[name].shape[:1] == (3,))
    ]
    budget = max_mb * (1 << 20)
    per_sample = 2 if batched else 1
    per_set = {name: t_values[name].nbytes // per_sample * max(train.n_samples, 1) for name in same}
    same = [name for name in same if per_set[name] <= budget]
    if not same:
        return []
    if len(same) > count:  # evenly spread, the last (closest to the outputs) included
        positions = np.linspace(len(same) - 1, 0, num=count).round().astype(int)
        same = [same[i] for i in sorted(set(positions.tolist()))]
    chosen, used = [], 0
    for name in reversed(same):  # nearest the outputs first when the budget binds
        if used + per_set[name] <= budget:
            chosen.append(name)
            used += per_set[name]
    return sorted(chosen, key=same.index)
