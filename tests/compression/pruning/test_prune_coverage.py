"""Structured pruning of the structures real graphs are made of, on small graphs built here.

YOLO C2f blocks (Split -> bottleneck -> Concat), ConvTranspose decoders, LSTM/GRU taggers (gate blocks,
bidirectional outputs, zero initial states built from Shape), packed q/k/v split into heads, channel
shuffle, a tensor read inside an If body. Each graph has "dead" channels (zero weights in and out), exactly
as many as the sparsity removes per group, so the pruned model must compute the same outputs: any wrong
index through a Split, a gate block or a head split would show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prune_helpers import initializers, make_model, prune, run

from compression.datasets import Dataset
from compression.model_info import inspect_model
from compression.pruning import batchnorm
from compression.pruning.structured import groups_of

Feeds = dict[str, np.ndarray]


def const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def conv_node(name: str, x: str, out: str, pads: int = 0, **attrs: object) -> onnx.NodeProto:
    inputs = [x, f"{name}.w", f"{name}.b"]
    return helper.make_node("Conv", inputs, [out], name=name, pads=[pads] * 4, **attrs)


def silu(x: str, out: str) -> list[onnx.NodeProto]:
    return [helper.make_node("Sigmoid", [x], [f"{x}_sig"]), helper.make_node("Mul", [x, f"{x}_sig"], [out])]


def assert_same_outputs(source: Path, pruned: Path, feeds: Feeds, exact: bool = False) -> None:
    for got, want in zip(run(pruned, feeds), run(source, feeds), strict=True):
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def check_sparsity_zero_and_random(source: Path, feeds: Feeds, tmp_path: Path) -> None:
    """Sparsity 0 keeps the outputs bit for bit; 0.5 gives a smaller, valid model."""
    same = tmp_path / "same.onnx"
    prune(source, same, 0.0)
    assert_same_outputs(source, same, feeds, exact=True)
    half = tmp_path / "half.onnx"
    report = prune(source, half, 0.5)
    assert report["channels_removed"] > 0
    onnx.checker.check_model(str(half), full_check=True)
    size = sum(a.size for a in initializers(half).values())
    assert size < 0.8 * sum(a.size for a in initializers(source).values())
    for got, want in zip(run(half, feeds), run(source, feeds), strict=True):
        assert got.shape == want.shape and np.all(np.isfinite(got))


# --- YOLO C2f block --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def c2f(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cv1 (16) -> Split [8, 8]; bottleneck on the second half with a residual Add; Concat(y0, y1, m) -> cv2."""
    rng = np.random.default_rng(0)
    shapes = {"cv1": (16, 4, 1, 1), "m1": (8, 8, 3, 3), "m2": (8, 8, 3, 3), "cv2": (16, 24, 1, 1)}
    w = {k: rng.normal(0, 0.4, s).astype(np.float32) for k, s in shapes.items()}
    b = {k: rng.normal(0, 0.1, s[0]).astype(np.float32) + 0.3 for k, s in shapes.items()}
    fc = rng.normal(0, 0.4, (3, 16)).astype(np.float32)
    dead = {"y0": [1, 5], "y1": [2, 6], "m1": [0, 3], "cv2": [4, 9, 11, 15]}
    for c in dead["y0"]:  # first half of cv1: read by cv2 only
        w["cv1"][c], b["cv1"][c], w["cv2"][:, c] = 0, 0, 0
    for c in dead["y1"]:  # second half of cv1, joined with m2 by the residual Add
        w["cv1"][8 + c], b["cv1"][8 + c], w["m2"][c], b["m2"][c] = 0, 0, 0, 0
        w["m1"][:, c], w["cv2"][:, 8 + c], w["cv2"][:, 16 + c] = 0, 0, 0
    for c in dead["m1"]:
        w["m1"][c], b["m1"][c], w["m2"][:, c] = 0, 0, 0
    for c in dead["cv2"]:
        w["cv2"][c], b["cv2"][c], fc[:, c] = 0, 0, 0
    nodes = [conv_node("cv1", "x", "cv1_out"), *silu("cv1_out", "a")]
    nodes += [helper.make_node("Split", ["a", "split"], ["y0", "y1"], name="split", axis=1)]
    nodes += [conv_node("m1", "y1", "m1_out", pads=1), *silu("m1_out", "m1_act")]
    nodes += [conv_node("m2", "m1_act", "m2_out", pads=1), *silu("m2_out", "m2_act")]
    nodes += [helper.make_node("Add", ["y1", "m2_act"], ["m"], name="residual")]
    nodes += [helper.make_node("Concat", ["y0", "y1", "m"], ["cat"], name="concat", axis=1)]
    nodes += [conv_node("cv2", "cat", "cv2_out"), *silu("cv2_out", "d")]
    nodes += [
        helper.make_node("GlobalAveragePool", ["d"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    inits = [const(f"{k}.w", w[k]) for k in w] + [const(f"{k}.b", b[k]) for k in b]
    inits += [const("split", np.array([8, 8], np.int64)), const("fc.w", fc), const("fc.b", np.zeros(3, np.float32))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    return make_model(nodes, inits, [x], [out], tmp_path_factory.mktemp("c2f") / "c2f.onnx")


def image_feed(shape: tuple[int, ...], seed: int = 1) -> Feeds:
    return {"x": np.random.default_rng(seed).normal(size=shape).astype(np.float32)}


def test_c2f_split_parts_are_pruned_each_with_its_own_channels(c2f: Path, tmp_path: Path) -> None:
    groups = {tuple(sorted(g.producers)): g for g in groups_of(c2f)}
    assert ("cv1[0:8]",) in groups, "the first Split part is a group of its own"
    assert ("cv1[8:16]", "m2") in groups, "the second part joins the bottleneck through the residual Add"
    assert not any("Split" in reason for g in groups.values() for reason in g.reasons)
    pruned = tmp_path / "pruned.onnx"
    report = prune(c2f, pruned, 0.25)
    assert report["groups_pruned"] == 4 and report["groups_skipped"] == 1  # the classifier head stays
    onnx.checker.check_model(str(pruned), full_check=True)
    weights = initializers(pruned)
    assert weights["cv1.w"].shape == (12, 4, 1, 1)
    assert weights["m1.w"].shape == (6, 6, 3, 3) and weights["m2.w"].shape == (6, 6, 3, 3)
    assert weights["cv2.w"].shape == (12, 18, 1, 1)
    split = next(n for n in onnx.load(str(pruned)).graph.node if n.op_type == "Split")
    assert weights[split.input[1]].tolist() == [6, 6]
    assert_same_outputs(c2f, pruned, image_feed((3, 4, 8, 8)))


def test_c2f_sparsity_zero_and_half(c2f: Path, tmp_path: Path) -> None:
    check_sparsity_zero_and_random(c2f, image_feed((2, 4, 8, 8)), tmp_path)


# --- ConvTranspose decoder -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """enc Conv (8, stride 2) -> ConvTranspose (6, stride 2) -> depthwise ConvTranspose -> head Conv (output)."""
    rng = np.random.default_rng(2)
    enc, enc_b = rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), np.full(8, 0.2, np.float32)
    up, up_b = rng.normal(0, 0.4, (8, 6, 2, 2)).astype(np.float32), np.full(6, 0.1, np.float32)
    dw, dw_b = rng.normal(0, 0.4, (6, 1, 3, 3)).astype(np.float32), np.full(6, 0.05, np.float32)
    head = rng.normal(0, 0.4, (2, 6, 1, 1)).astype(np.float32)
    for c in (1, 4):  # encoder channels: ConvTranspose reads them on weight axis 0
        enc[c], enc_b[c], up[c] = 0, 0, 0
    for c in (0, 3):  # ConvTranspose outputs (weight axis 1), through the depthwise ConvTranspose
        up[:, c], up_b[c], dw[c], head[:, c] = 0, 0, 0, 0
    nodes = [
        helper.make_node("Conv", ["x", "enc.w", "enc.b"], ["e"], name="enc", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["e"], ["e_act"]),
        helper.make_node("ConvTranspose", ["e_act", "up.w", "up.b"], ["u"], name="up", strides=[2, 2]),
        helper.make_node("Relu", ["u"], ["u_act"]),
        helper.make_node("ConvTranspose", ["u_act", "dw.w", "dw.b"], ["v"], name="dw", group=6, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["v", "head.w"], ["map"], name="head"),
    ]
    inits = [const("enc.w", enc), const("enc.b", enc_b), const("up.w", up), const("up.b", up_b)]
    inits += [const("dw.w", dw), const("dw.b", dw_b), const("head.w", head)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])
    out = helper.make_tensor_value_info("map", TensorProto.FLOAT, ["batch", 2, "h", "w"])
    return make_model(nodes, inits, [x], [out], tmp_path_factory.mktemp("decoder") / "decoder.onnx")


def test_conv_transpose_input_and_output_channels_prune(decoder: Path, tmp_path: Path) -> None:
    pruned = tmp_path / "pruned.onnx"
    report = prune(decoder, pruned, 0.25)
    by_producer = {tuple(g["producers"]): g for g in report["groups"]}
    assert by_producer[("enc",)]["status"] == "pruned" and by_producer[("up",)]["status"] == "pruned"
    assert "graph output" in by_producer[("head",)]["reason"]
    onnx.checker.check_model(str(pruned), full_check=True)
    weights = initializers(pruned)
    assert weights["enc.w"].shape == (6, 3, 3, 3)
    assert weights["up.w"].shape == (6, 4, 2, 2) and weights["up.b"].shape == (4,)
    assert weights["dw.w"].shape == (4, 1, 3, 3) and weights["head.w"].shape == (2, 4, 1, 1)
    group = next(a.i for n in onnx.load(str(pruned)).graph.node if n.name == "dw" for a in n.attribute)
    assert group == 4
    assert_same_outputs(decoder, pruned, image_feed((2, 3, 16, 12)))


def test_decoder_sparsity_zero_and_half(decoder: Path, tmp_path: Path) -> None:
    check_sparsity_zero_and_random(decoder, image_feed((2, 3, 8, 8)), tmp_path)


# --- LSTM / GRU tagger -------------------------------------------------------------------------------------

GATES = {"LSTM": 4, "GRU": 3}
VOCAB, EMBED, HIDDEN, TAGS = 20, 8, 6, 5


def tagger(op: str, folder: Path) -> Path:
    """Embedding -> bidirectional LSTM/GRU (zero initial state from Shape) -> Transpose/Reshape -> MatMul."""
    rng = np.random.default_rng(3)
    g, h = GATES[op], HIDDEN
    table = rng.normal(0, 0.5, (VOCAB, EMBED)).astype(np.float32)
    w = rng.normal(0, 0.4, (2, g * h, EMBED)).astype(np.float32)
    r = rng.normal(0, 0.4, (2, g * h, h)).astype(np.float32)
    b = rng.normal(0, 0.1, (2, 2 * g * h)).astype(np.float32)
    out_w = rng.normal(0, 0.4, (2 * h, TAGS)).astype(np.float32)
    for e in (2, 5):  # embedding features: the recurrent layer reads them on W's last axis
        table[:, e], w[:, :, e] = 0, 0
    for u in (1, 4):  # hidden units: zero in every gate block, in R's columns and in the tagger's rows
        for k in range(g):
            w[:, k * h + u], r[:, k * h + u], b[:, k * h + u], b[:, (g + k) * h + u] = 0, 0, 0, 0
        r[:, :, u], out_w[u], out_w[h + u] = 0, 0, 0
    states = ["h0", "h0"] if op == "LSTM" else ["h0"]
    nodes = [
        helper.make_node("Gather", ["table", "tokens"], ["emb"], name="embedding"),
        helper.make_node("Transpose", ["emb"], ["seq"], perm=[1, 0, 2]),
        helper.make_node("Shape", ["tokens"], ["tokens_shape"], start=0, end=1),
        helper.make_node("Concat", ["two", "tokens_shape", "hidden"], ["state_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["state_shape"], ["h0"], value=const("zero", np.zeros(1, np.float32))),
        helper.make_node(
            op, ["seq", "W", "R", "B", "", *states], ["Y"], name="rnn", direction="bidirectional", hidden_size=h
        ),  # fmt: skip
        helper.make_node("Transpose", ["Y"], ["Y_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["Y_t", "merge"], ["features"], name="merge_directions"),
        helper.make_node("MatMul", ["features", "out.w"], ["scores"], name="tagger"),
        helper.make_node("Add", ["scores", "out.b"], ["tags"]),
    ]
    inits = [const("table", table), const("W", w), const("R", r), const("B", b), const("out.w", out_w)]
    inits += [const("out.b", np.zeros(TAGS, np.float32)), const("merge", np.array([0, 0, -1], np.int64))]
    inits += [const("two", np.array([2], np.int64)), const("hidden", np.array([h], np.int64))]
    tokens = helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"])
    out = helper.make_tensor_value_info("tags", TensorProto.FLOAT, ["time", "batch", TAGS])
    return make_model(nodes, inits, [tokens], [out], folder / f"{op}.onnx")


def token_feed(seed: int = 4) -> Feeds:
    return {"tokens": np.random.default_rng(seed).integers(0, VOCAB, (3, 7)).astype(np.int64)}


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_recurrent_hidden_size_prunes_every_gate_block(op: str, tmp_path: Path) -> None:
    source = tagger(op, tmp_path)
    pruned = tmp_path / "pruned.onnx"
    report = prune(source, pruned, 0.25)
    by_producer = {tuple(g["producers"]): g for g in report["groups"]}
    assert by_producer[("embedding",)]["kept"] == 6 and by_producer[("rnn",)]["kept"] == 4
    assert report["groups_skipped"] == 1  # the tag scores are the graph output
    onnx.checker.check_model(str(pruned), full_check=True)
    g = GATES[op]
    weights = initializers(pruned)
    assert weights["W"].shape == (2, g * 4, 6) and weights["R"].shape == (2, g * 4, 4)
    assert weights["B"].shape == (2, 2 * g * 4) and weights["out.w"].shape == (8, TAGS)
    rnn = next(n for n in onnx.load(str(pruned)).graph.node if n.op_type == op)
    assert next(a.i for a in rnn.attribute if a.name == "hidden_size") == 4
    assert all(name == "" for name in rnn.input[5:]), "the zero initial state is dropped (ONNX's default)"
    assert_same_outputs(source, pruned, token_feed())


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_recurrent_sparsity_zero_and_half(op: str, tmp_path: Path) -> None:
    check_sparsity_zero_and_random(tagger(op, tmp_path), token_feed(), tmp_path)


def test_recurrent_state_from_the_caller_stays(tmp_path: Path) -> None:
    """An initial state fed by the caller fixes the hidden size: the group stays intact, with the reason."""
    source = tagger("GRU", tmp_path)
    model = onnx.load(str(source))
    rnn = next(n for n in model.graph.node if n.op_type == "GRU")
    rnn.input[5] = "state"
    model.graph.input.append(helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", HIDDEN]))
    onnx.save(model, str(source))
    report = prune(source, tmp_path / "pruned.onnx", 0.25)
    rnn_group = next(g for g in report["groups"] if g["producers"] == ["rnn"])
    assert rnn_group["status"] == "skipped" and "initial state 'state' is a graph input" in rnn_group["reason"]


# --- attention: packed q/k/v split into heads --------------------------------------------------------------

DIM, HEADS, HEAD_DIM = 16, 2, 8


@pytest.fixture(scope="module")
def attention(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return attention_model(tmp_path_factory.mktemp("attention") / "attention.onnx", scaled=False)


def attention_model(path: Path, scaled: bool) -> Path:
    """x @ Wqkv -> Reshape [B, T, 3, heads, head_dim] -> Transpose -> q, k, v -> softmax(q kᵀ) v -> merge -> Wo.

    `scaled`: the scores are divided by sqrt(Shape(q)[-1]) computed at run time, as PyTorch exports it."""
    rng = np.random.default_rng(5)
    wqkv = rng.normal(0, 0.4, (DIM, 3 * DIM)).astype(np.float32)
    bqkv = rng.normal(0, 0.1, 3 * DIM).astype(np.float32)
    wo = rng.normal(0, 0.4, (DIM, DIM)).astype(np.float32)
    for d in (3, 6):  # one head-dim index, the same in q, k, v and every head
        for part in range(3):
            for head in range(HEADS):
                wqkv[:, part * DIM + head * HEAD_DIM + d], bqkv[part * DIM + head * HEAD_DIM + d] = 0, 0
        for head in range(HEADS):
            wo[head * HEAD_DIM + d] = 0
    nodes = [
        helper.make_node("MatMul", ["x", "qkv.w"], ["qkv_mm"], name="qkv"),
        helper.make_node("Add", ["qkv_mm", "qkv.b"], ["qkv_out"]),
        helper.make_node("Reshape", ["qkv_out", "split_heads"], ["heads"], name="split_heads"),
        helper.make_node("Transpose", ["heads"], ["parts"], perm=[2, 0, 3, 1, 4]),
        helper.make_node("Gather", ["parts", "i0"], ["q"], axis=0),
        helper.make_node("Gather", ["parts", "i1"], ["k"], axis=0),
        helper.make_node("Gather", ["parts", "i2"], ["v"], axis=0),
        helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "k_t"], ["scores"]),
        helper.make_node("Softmax", ["scaled" if scaled else "scores"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["context"]),
        helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_t", "merge_heads"], ["merged"], name="merge_heads"),
        helper.make_node("MatMul", ["merged", "o.w"], ["y"], name="out_proj"),
    ]
    inits = [const("qkv.w", wqkv), const("qkv.b", bqkv), const("o.w", wo)]
    inits += [const("split_heads", np.array([0, 0, 3, HEADS, HEAD_DIM], np.int64))]
    inits += [const("merge_heads", np.array([0, 0, DIM], np.int64))]
    inits += [const(f"i{k}", np.array(k, np.int64)) for k in range(3)]
    if scaled:
        at = next(i for i, n in enumerate(nodes) if n.op_type == "Softmax")
        nodes[at:at] = [
            helper.make_node("Shape", ["q"], ["q_shape"]),
            helper.make_node("Gather", ["q_shape", "last"], ["head_dim"], axis=0),
            helper.make_node("Cast", ["head_dim"], ["head_dim_f"], to=TensorProto.FLOAT),
            helper.make_node("Sqrt", ["head_dim_f"], ["scale"]),
            helper.make_node("Div", ["scores", "scale"], ["scaled"]),
        ]
        inits += [const("last", np.array(-1, np.int64))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", DIM])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", DIM])
    return make_model(nodes, inits, [x], [out], path)


def sequence_feed(seed: int = 6) -> Feeds:
    return {"x": np.random.default_rng(seed).normal(size=(2, 5, DIM)).astype(np.float32)}


def test_packed_qkv_split_into_heads_prunes_head_dims(attention: Path, tmp_path: Path) -> None:
    pruned = tmp_path / "pruned.onnx"
    report = prune(attention, pruned, 0.25)
    by_producer = {tuple(g["producers"]): g for g in report["groups"]}
    assert by_producer[("split_heads (head dim)",)]["kept"] == 6
    assert by_producer[("qkv",)]["reason"] == "follows its 6 attention heads"
    onnx.checker.check_model(str(pruned), full_check=True)
    weights = initializers(pruned)
    assert weights["qkv.w"].shape == (DIM, 36) and weights["qkv.b"].shape == (36,) and weights["o.w"].shape == (12, DIM)
    graph = onnx.load(str(pruned)).graph
    targets = {n.name: weights[n.input[1]].tolist() for n in graph.node if n.op_type == "Reshape"}
    assert targets == {"split_heads": [0, 0, 3, HEADS, 6], "merge_heads": [0, 0, 12]}
    assert_same_outputs(attention, pruned, sequence_feed())


def test_attention_scale_read_from_the_shape_keeps_the_unpruned_head_dim(tmp_path: Path) -> None:
    """scores / sqrt(Shape(q)[-1]): the scale is frozen at sqrt(8), so the pruned model scales as the original."""
    source = attention_model(tmp_path / "scaled.onnx", scaled=True)
    pruned = tmp_path / "pruned.onnx"
    report = prune(source, pruned, 0.25)
    assert {tuple(g["producers"]): g["kept"] for g in report["groups"]}[("split_heads (head dim)",)] == 6
    onnx.checker.check_model(str(pruned), full_check=True)
    assert not any(n.op_type == "Shape" for n in onnx.load(str(pruned)).graph.node)
    assert_same_outputs(source, pruned, sequence_feed())


def test_attention_sparsity_zero_and_half(attention: Path, tmp_path: Path) -> None:
    check_sparsity_zero_and_random(attention, sequence_feed(), tmp_path)


# --- channel shuffle: channels split into groups and interleaved -------------------------------------------


@pytest.fixture(scope="module")
def shuffle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A (8) -> Reshape [B, 2, 4, H, W] -> Transpose(groups <-> channels) -> Reshape [B, 8, H, W] -> B -> head."""
    rng = np.random.default_rng(7)
    a, a_b = rng.normal(0, 0.4, (8, 4, 3, 3)).astype(np.float32), np.full(8, 0.2, np.float32)
    b, b_b = rng.normal(0, 0.4, (4, 8, 3, 3)).astype(np.float32), np.full(4, 0.2, np.float32)
    fc = rng.normal(0, 0.4, (3, 4)).astype(np.float32)
    for group in range(2):  # channel 1 of each group of 4: after the shuffle, positions 2 and 3
        a[group * 4 + 1], a_b[group * 4 + 1] = 0, 0
    b[:, [2, 3]] = 0
    b[0], b_b[0], fc[:, 0] = 0, 0, 0
    nodes = [
        conv_node("A", "x", "a_out", pads=1),
        helper.make_node("Relu", ["a_out"], ["a_act"]),
        helper.make_node("Reshape", ["a_act", "grouped"], ["g"], name="to_groups"),
        helper.make_node("Transpose", ["g"], ["g_t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["g_t", "flat"], ["shuffled"], name="from_groups"),
        conv_node("B", "shuffled", "b_out", pads=1),
        helper.make_node("Relu", ["b_out"], ["b_act"]),
        helper.make_node("GlobalAveragePool", ["b_act"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w"], ["logits"], name="fc", transB=1),
    ]
    inits = [const("A.w", a), const("A.b", a_b), const("B.w", b), const("B.b", b_b), const("fc.w", fc)]
    inits += [const("grouped", np.array([0, 2, 4, 6, 6], np.int64)), const("flat", np.array([0, 8, 6, 6], np.int64))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 6])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    return make_model(nodes, inits, [x], [out], tmp_path_factory.mktemp("shuffle") / "shuffle.onnx")


def test_channel_shuffle_prunes_the_same_channel_in_every_group(shuffle: Path, tmp_path: Path) -> None:
    pruned = tmp_path / "pruned.onnx"
    report = prune(shuffle, pruned, 0.25)
    assert report["groups_pruned"] == 3, report["groups"]  # A's per-group channels (and A following), B
    onnx.checker.check_model(str(pruned), full_check=True)
    weights = initializers(pruned)
    assert weights["A.w"].shape == (6, 4, 3, 3) and weights["B.w"].shape == (3, 6, 3, 3)
    assert weights["fc.w"].shape == (3, 3)
    assert_same_outputs(shuffle, pruned, image_feed((2, 4, 6, 6)))


# --- If bodies -----------------------------------------------------------------------------------------


def test_tensor_read_inside_an_if_body_keeps_its_group(tmp_path: Path) -> None:
    """A's output is read by an If branch: A stays intact with the reason; B prunes; new names avoid the body's."""
    rng = np.random.default_rng(8)
    then_out = helper.make_tensor_value_info("branch", TensorProto.FLOAT, None)
    then_nodes = [  # names the rewrite would pick for the patched Reshape target below
        helper.make_node("Relu", ["A_out"], ["B_flatten_target_head"], name="B_flatten_target"),
        helper.make_node("Identity", ["B_flatten_target_head"], ["branch"], name="B_flatten_target_tail"),
    ]
    then_body = helper.make_graph(then_nodes, "then", [], [then_out])
    else_body = helper.make_graph([helper.make_node("Neg", ["A_out"], ["branch"], name="neg")], "else", [],
                                  [then_out])  # fmt: skip
    nodes = [
        conv_node("A", "x", "A_out", pads=1),
        helper.make_node("If", ["flag"], ["chosen"], name="if", then_branch=then_body, else_branch=else_body),
        conv_node("B", "chosen", "B_out", pads=1),
        helper.make_node("Relu", ["B_out"], ["B_act"]),
        helper.make_node("Shape", ["B_act"], ["B_shape"], start=0, end=1),
        helper.make_node("Concat", ["B_shape", "minus_one"], ["B_target_shape"], axis=0),
        helper.make_node("Reshape", ["B_act", "B_target_shape"], ["flat"], name="B_flatten"),
        helper.make_node("Gemm", ["flat", "fc.w"], ["logits"], name="fc", transB=1),
    ]
    fc = rng.normal(0, 0.4, (3, 8 * 16)).astype(np.float32)
    inits = [const("A.w", rng.normal(0, 0.4, (8, 2, 3, 3)).astype(np.float32)), const("A.b", np.zeros(8, np.float32))]
    inits += [const("B.w", rng.normal(0, 0.4, (8, 8, 3, 3)).astype(np.float32)), const("B.b", np.zeros(8, np.float32))]
    inits += [const("fc.w", fc), const("minus_one", np.array([-1], np.int64))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 4])
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    source = make_model(nodes, inits, [x, flag], [out], tmp_path / "if.onnx")
    pruned = tmp_path / "pruned.onnx"
    report = prune(source, pruned, 0.5)
    by_producer = {tuple(g["producers"]): g for g in report["groups"]}
    assert by_producer[("A",)]["status"] == "skipped"
    assert "tensor 'A_out' is used inside a subgraph" in by_producer[("A",)]["reason"]
    assert by_producer[("B",)]["status"] == "pruned"
    onnx.checker.check_model(str(pruned), full_check=True)
    feeds = {"x": np.ones((2, 2, 4, 4), np.float32), "flag": np.array(True)}
    assert run(pruned, feeds)[0].shape == (2, 3)
    graph = onnx.load(str(pruned)).graph
    body = next(a.g for n in graph.node if n.op_type == "If" for a in n.attribute if a.name == "then_branch")
    body_names = {n.name for n in body.node} | {o for n in body.node for o in n.output}
    assert not body_names & ({n.name for n in graph.node} | {o for n in graph.node for o in n.output})


# --- BatchNorm re-estimation ---------------------------------------------------------------------------


def test_one_pass_batchnorm_statistics_match_the_in_order_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the whole set in one batch, batch-statistics normalization equals one run per BatchNorm in order."""
    rng = np.random.default_rng(9)
    nodes, inits = [], []
    for i, (c_in, c_out, x) in enumerate(((3, 6, "x"), (6, 6, "r0"))):
        nodes += [
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"c{i}", f"s{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"], name=f"bn{i}"),
            helper.make_node("Relu", [f"n{i}"], [f"r{i}"]),
        ]  # fmt: skip
        inits += [const(f"w{i}", rng.normal(0, 0.5, (c_out, c_in, 3, 3)).astype(np.float32))]
        inits += [const(f"s{i}", rng.uniform(0.5, 1.5, c_out).astype(np.float32))]
        inits += [const(f"b{i}", rng.normal(0, 0.1, c_out).astype(np.float32))]
        inits += [const(f"m{i}", np.zeros(c_out, np.float32)), const(f"v{i}", np.ones(c_out, np.float32))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 5, 5])
    out = helper.make_tensor_value_info("r1", TensorProto.FLOAT, ["batch", 6, 5, 5])
    source = make_model(nodes, inits, [x], [out], tmp_path / "bn.onnx")
    data = Dataset.bind({"x": rng.normal(1, 2, (16, 3, 5, 5)).astype(np.float32)}, inspect_model(source).inputs)
    stats = {}
    for way in ("one pass", "in order"):
        path = tmp_path / f"{way}.onnx"
        path.write_bytes(source.read_bytes())
        if way == "in order":
            monkeypatch.setattr(batchnorm, "_input_ranks", lambda *_: None)
        assert batchnorm.recalibrate_batchnorm(path, data, 64, 64, lambda: None) == ["bn0", "bn1"]
        stats[way] = {k: v for k, v in initializers(path).items() if "recalibrated" in k}
    assert stats["one pass"].keys() == stats["in order"].keys() and len(stats["one pass"]) == 4
    for name, value in stats["one pass"].items():
        np.testing.assert_allclose(value, stats["in order"][name], rtol=1e-4, atol=1e-5)


# --- shape inference -----------------------------------------------------------------------------------


def test_ranks_unknown_to_inference_come_from_one_run(tmp_path: Path) -> None:
    """A Reshape to a runtime shape hides the rank from onnx and symbolic inference; one run on the
    dataset's first sample gives it, so the ops after it are analysed."""
    rng = np.random.default_rng(10)
    nodes = [
        conv_node("A", "x", "a", pads=1),
        helper.make_node("Relu", ["a"], ["a_act"]),
        helper.make_node("Reshape", ["a_act", "target"], ["reshaped"], name="dynamic"),
        helper.make_node("Relu", ["reshaped"], ["r"]),
        helper.make_node("Add", ["r", "r"], ["y"], name="double"),
    ]
    inits = [const("A.w", rng.normal(0, 0.4, (4, 2, 3, 3)).astype(np.float32)), const("A.b", np.zeros(4, np.float32))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 4])
    target = helper.make_tensor_value_info("target", TensorProto.INT64, ["n"])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    out.type.tensor_type.ClearField("shape")
    source = tmp_path / "dynamic.onnx"
    model = helper.make_model(helper.make_graph(nodes, "dynamic", [x, target], [out], inits),
                              opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    onnx.save(model, str(source))
    arrays = {"x": np.ones((1, 2, 2, 4, 4), np.float32), "target": np.array([[-1, 16]], np.int64)}  # stacked
    dataset = Dataset.bind(arrays, inspect_model(source).inputs)
    report = prune(source, tmp_path / "pruned.onnx", 0.5, dataset=dataset)
    assert report["shape_inference"]["run"] >= 2 and report["shape_inference"]["unknown"] == 0
    assert "rank is unknown" not in str(report["skipped"])


def test_groups_inside_if_branches_prune_in_their_body(tmp_path: Path) -> None:
    """Each branch holds a Conv pair with its own weights: the inner group prunes inside the body; the body's
    output channels (what the If returns) stay, with the reason."""
    rng = np.random.default_rng(11)

    def branch(name: str) -> onnx.GraphProto:
        a, a_b = rng.normal(0, 0.4, (8, 2, 3, 3)).astype(np.float32), np.full(8, 0.1, np.float32)
        b = rng.normal(0, 0.4, (4, 8, 3, 3)).astype(np.float32)
        a[[1, 4]], a_b[[1, 4]], b[:, [1, 4]] = 0, 0, 0
        nodes = [
            helper.make_node("Conv", ["x", f"{name}_a.w", f"{name}_a.b"], [f"{name}_a"], name=f"{name}_a", pads=[1] * 4),
            helper.make_node("Relu", [f"{name}_a"], [f"{name}_r"]),
            helper.make_node("Conv", [f"{name}_r", f"{name}_b.w"], [f"{name}_out"], name=f"{name}_b", pads=[1] * 4),
        ]  # fmt: skip
        inits = [const(f"{name}_a.w", a), const(f"{name}_a.b", a_b), const(f"{name}_b.w", b)]
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)
        return helper.make_graph(nodes, name, [], [out], inits)

    nodes = [helper.make_node("If", ["flag"], ["y"], name="if", then_branch=branch("then"), else_branch=branch("else"))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 5, 5])
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 5, 5])
    source = make_model(nodes, [], [x, flag], [out], tmp_path / "branches.onnx")
    pruned = tmp_path / "pruned.onnx"
    report = prune(source, pruned, 0.25)
    by_producer = {tuple(g["producers"]): g for g in report["groups"]}
    assert by_producer[("then_a",)]["kept"] == 6 and by_producer[("else_a",)]["kept"] == 6
    assert "graph output" in by_producer[("then_b",)]["reason"]
    onnx.checker.check_model(str(pruned), full_check=True)
    if_node = onnx.load(str(pruned)).graph.node[0]
    for attr in if_node.attribute:
        weights = {t.name: numpy_helper.to_array(t).shape for t in attr.g.initializer}
        prefix = attr.name.split("_")[0]
        assert weights[f"{prefix}_a.w"] == (6, 2, 3, 3) and weights[f"{prefix}_b.w"] == (4, 6, 3, 3)
    for value in (True, False):
        feeds = {"x": np.random.default_rng(12).normal(size=(2, 2, 5, 5)).astype(np.float32), "flag": np.array(value)}
        assert_same_outputs(source, pruned, feeds)
    same = tmp_path / "same.onnx"
    prune(source, same, 0.0)
    assert_same_outputs(source, same, feeds, exact=True)
