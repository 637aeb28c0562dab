"""Value names of an ONNX graph seen through its If/Loop/Scan bodies.

A body reads values of the graphs around it by name (outer-scope references), so a rewrite that looks
only at the top-level nodes believes an initializer read inside an `If` branch is unused, or renames a
value without updating the body that reads it. Every rewrite that removes or renames initializers or
values asks this module which names are used, and renames through `rename_values`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

import onnx
import onnx_ir as ir


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The bodies a node holds directly (If branches, Loop/Scan bodies, any graph attribute)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every body nested in it, at any depth."""
    yield graph
    for node in graph.node:
        for body in subgraphs(node):
            yield from iter_graphs(body)


def used_names(graph: onnx.GraphProto | ir.Graph) -> set[str]:
    """Every value name read anywhere: node inputs and graph outputs of the graph and of all nested bodies.

    An initializer or value of `graph` absent from this set is read by nothing and may be removed.
    Takes an onnx GraphProto or an onnx_ir Graph (the rewrites use both).
    """
    if isinstance(graph, ir.Graph):
        return _ir_used_names(graph)
    names: set[str] = set()
    for scope in iter_graphs(graph):
        names.update(name for node in scope.node for name in node.input if name)
        names.update(value.name for value in scope.output)
    return names


def read_counts(graph: onnx.GraphProto) -> Counter[str]:
    """How many node inputs read each name, bodies included: a rewrite that changes an initializer in place
    must copy it first when anything else (an If branch too) reads it."""
    counts: Counter[str] = Counter()
    for scope in iter_graphs(graph):
        counts.update(name for node in scope.node for name in node.input if name)
        counts.update(value.name for value in scope.output)
    return counts


def _ir_used_names(graph: ir.Graph) -> set[str]:
    names = {value.name for value in graph.outputs if value.name}
    for node in ir.traversal.RecursiveGraphIterator(graph):
        names.update(value.name for value in node.inputs if value is not None and value.name)
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                bodies = [attr.as_graph()]
            elif attr.type == ir.AttributeType.GRAPHS:
                bodies = list(attr.as_graphs())
            else:
                continue
            names.update(value.name for body in bodies for value in body.outputs if value.name)
    return names


def defined_names(graph: onnx.GraphProto) -> set[str]:
    """Names one graph defines itself (inputs, initializers, node outputs), bodies not included."""
    names = {value.name for value in graph.input} | {init.name for init in graph.initializer}
    names.update(name for node in graph.node for name in node.output if name)
    names.update(init.values.name for init in graph.sparse_initializer)
    return names


def outer_references(graph: onnx.GraphProto) -> set[str]:
    """Names that bodies nested in `graph` read from an enclosing scope (not defined inside the body)."""
    found: set[str] = set()
    for node in graph.node:
        for body in subgraphs(node):
            found |= _free_names(body)
    return found


def _free_names(body: onnx.GraphProto) -> set[str]:
    local = defined_names(body)
    read = {name for node in body.node for name in node.input if name} | {value.name for value in body.output}
    nested = set()
    for node in body.node:
        for inner in subgraphs(node):
            nested |= _free_names(inner)
    return (read | nested) - local


def rename_values(graph: onnx.GraphProto, renames: Mapping[str, str]) -> None:
    """Rename values everywhere they appear: definitions and reads in the graph and in every nested body.

    ONNX forbids a body from redefining an outer name, so one mapping applies at every depth.
    """
    if not renames:
        return

    def new(name: str) -> str:
        return renames.get(name, name)

    for scope in iter_graphs(graph):
        for init in scope.initializer:
            init.name = new(init.name)
        for sparse in scope.sparse_initializer:
            sparse.values.name = new(sparse.values.name)
        for group in (scope.input, scope.output, scope.value_info):
            for value in group:
                value.name = new(value.name)
        for node in scope.node:
            node.input[:] = [new(name) for name in node.input]
            node.output[:] = [new(name) for name in node.output]


def drop_unused_initializers(graph: onnx.GraphProto, candidates: set[str] | None = None) -> list[str]:
    """Remove top-level initializers nothing reads (bodies included); only `candidates` when given.

    Initializers listed as graph inputs stay (a caller may override them). Returns the names removed.
    """
    used = used_names(graph) | {value.name for value in graph.input}
    keep, dropped = [], []
    for init in graph.initializer:
        if init.name in used or (candidates is not None and init.name not in candidates):
            keep.append(init)
        else:
            dropped.append(init.name)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return dropped
