"""Errors the engine raises; each carries a stable code so the service can report it."""

from __future__ import annotations


class CompressionError(Exception):
    """Base class: a failure the user can act on (bad model, bad data, bad spec)."""

    code = "compression_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidModelError(CompressionError):
    code = "invalid_model"


class DatasetMismatchError(CompressionError):
    code = "dataset_mismatch"


class MissingDatasetError(CompressionError):
    code = "missing_dataset"


class UnsupportedOperatorError(CompressionError):
    code = "unsupported_operator"


class StepFailedError(CompressionError):
    code = "step_failed"


class JobInterrupted(Exception):  # noqa: N818
    """Control flow, not failure: the caller stopped the job; passes must let it propagate."""


class JobCanceledError(JobInterrupted):
    """Raised by a pass's cancellation check when the user canceled the job."""


class MissingModelError(CompressionError):
    code = "missing_model"
