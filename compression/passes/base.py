"""The pass contract: a config schema, a run that returns a new model and says whether it changed it."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from compression.datasets import Dataset, DatasetBundle
from compression.errors import MissingDatasetError, MissingModelError
from compression.metrics.evaluation import Evaluator
from compression.model_info import inspect_model
from compression.settings import EngineSettings


class StepConfig(BaseModel):
    """Base for every step's config: unknown fields are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")


class ProgressSink(Protocol):
    def progress(self, fraction: float, message: str | None = None) -> None: ...

    def event(self, message: str, data: dict[str, Any] | None = None) -> None: ...

    def check_cancelled(self) -> None:
        """Raise JobCanceledError when the caller asked to stop."""


class NullProgress:
    def progress(self, fraction: float, message: str | None = None) -> None:
        pass

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        pass

    def check_cancelled(self) -> None:
        pass


@dataclass
class PassContext:
    """What a pass may use besides its input model: data, the job's original model, progress, settings."""

    work_dir: Path
    original_model: Path
    datasets: DatasetBundle
    sink: ProgressSink = field(default_factory=NullProgress)
    settings: EngineSettings = field(default_factory=EngineSettings)
    step_index: int = 0
    evaluator: Evaluator | None = None
    # Resolves a model reference in a step config (an uploaded model id in the service, a path in the CLI).
    model_resolver: Callable[[str], Path] | None = None
    _counter: itertools.count = field(default_factory=itertools.count, repr=False)

    def reference(self) -> Evaluator:
        """The original model's outputs on the eval data (synthetic inputs when the job has none)."""
        if self.evaluator is None:
            dataset = self.datasets.eval or Dataset.synthetic_for(
                inspect_model(self.original_model).inputs, self.settings.synthetic_samples, self.settings.seed
            )
            self.evaluator = Evaluator(self.original_model, dataset, self.settings)
        return self.evaluator

    def progress(self, fraction: float, message: str | None = None) -> None:
        self.sink.progress(min(max(fraction, 0.0), 1.0), message)

    def event(self, message: str, **data: Any) -> None:
        self.sink.event(message, data or None)

    def check_cancelled(self) -> None:
        self.sink.check_cancelled()

    def resolve_model(self, reference: str) -> Path:
        if self.model_resolver is not None:
            return self.model_resolver(reference)
        path = Path(reference)
        if not path.is_file():
            raise MissingModelError(f"model {reference!r} not found: give a path to an .onnx file")
        return path

    def new_model_path(self, stem: str) -> Path:
        """A fresh file in the work dir, so no pass overwrites a model an earlier step returned."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir / f"step{self.step_index}_{stem}_{next(self._counter)}.onnx"

    def require(self, *roles: str, purpose: str) -> Dataset:
        """The first of the given datasets that the job has, or a clear failure naming them."""
        for role in roles:
            dataset = getattr(self.datasets, role)
            if dataset is not None:
                return dataset
        names = " or ".join(f"'{role}'" for role in roles)
        raise MissingDatasetError(f"{purpose} needs a {names} dataset: upload one and name it in the job's datasets")


@dataclass
class PassResult:
    model_path: Path
    changed: bool
    metrics: dict[str, Any] = field(default_factory=dict)


class CompressionPass(ABC):
    """One compression method. Subclasses set `step_type` and `config_model` and implement `run`."""

    step_type: ClassVar[str]
    config_model: ClassVar[Any]

    def __init__(self, config: StepConfig) -> None:
        self.config = config

    @abstractmethod
    def run(self, model_path: Path, ctx: PassContext) -> PassResult: ...
