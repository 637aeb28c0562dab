"""The scopes of an ONNX graph: the main graph and the If/Loop/Scan bodies nested in it (torch-free)."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies a node carries (If branches, Loop/Scan bodies), in attribute order."""
    found: list[onnx.GraphProto] = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            found.append(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            found.extend(attribute.graphs)
    return found


def walk_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph, then depth first every body nested in it."""
    yield graph
    for node in graph.node:
        for body in subgraphs(node):
            yield from walk_graphs(body)


def walk_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of every scope."""
    for scope in walk_graphs(graph):
        yield from scope.node
