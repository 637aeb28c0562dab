"""The pass contract: what every compression method implements and what the pipeline gives it.

A leaf module: it imports no method package (quantization, pruning, training) and no pass, so a method
package can import its config base from here without a cycle. The pipeline owns every path: a pass reads
its input model, writes the model it returns to `ctx.output_path` (or to a file under `ctx.scratch_dir`,
which the pipeline then moves there), and everything else it writes under `ctx.scratch_dir`, which the
pipeline removes after the step.
"""

from __future__ import annotations

import itertools
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from compression.datasets import Dataset, DatasetBundle
from compression.errors import MissingDatasetError, MissingModelError, StepFailedError
from compression.metrics.evaluation import Evaluator
from compression.settings import EngineSettings
from compression.synthetic import synthetic_dataset


class StepConfig(BaseModel):
    """Base for every step's config: unknown fields are errors, so typos never pass silently.

    Each concrete config declares `type: Literal["<step type>"]`; the pass's step type is derived from it.
    """

    model_config = ConfigDict(extra="forbid")


ConfigT = TypeVar("ConfigT", bound=StepConfig)


class ProgressSink(Protocol):
    def progress(self, fraction: float, message: str | None = None) -> None: ...

    def event(self, message: str, data: dict[str, Any] | None = None) -> None: ...

    def check_canceled(self) -> None:
        """Raise JobCanceledError when the caller asked to stop."""


class NullProgress:
    def progress(self, fraction: float, message: str | None = None) -> None:
        pass

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        pass

    def check_canceled(self) -> None:
        pass


@dataclass
class PassContext:
    """What a pass may use besides its input model: data, the job's original model, progress, settings, paths.

    `output_path` and `scratch_dir` default to names under `work_dir` for the step index, so a pass can be run
    on its own (tests, benches); the pipeline sets them for every step.
    """

    work_dir: Path
    original_model: Path
    datasets: DatasetBundle
    sink: ProgressSink = field(default_factory=NullProgress)
    settings: EngineSettings = field(default_factory=EngineSettings)
    step_index: int = 0
    evaluator: Evaluator | None = None
    # Resolves a model reference in a step config (an uploaded model id in the service, a path in the CLI).
    model_resolver: Callable[[str], Path] | None = None
    output_path: Path | None = None
    scratch_dir: Path | None = None
    _counter: itertools.count = field(default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        self.for_step(self.step_index, self.output_path, self.scratch_dir)

    def for_step(self, index: int, output_path: Path | None = None, scratch_dir: Path | None = None) -> None:
        self.step_index = index
        self.output_path = output_path or self.work_dir / f"step{index}.onnx"
        self.scratch_dir = scratch_dir or self.work_dir / f"step{index}_scratch"

    def reference(self) -> Evaluator:
        """The original model's outputs on the eval data (synthetic inputs when the job has none)."""
        if self.evaluator is None:
            dataset = self.datasets.eval or synthetic_dataset(
                self.original_model, self.settings.synthetic_samples, self.settings.seed
            )
            self.evaluator = Evaluator(self.original_model, dataset, self.settings)
        return self.evaluator

    def progress(self, fraction: float, message: str | None = None) -> None:
        self.sink.progress(min(max(fraction, 0.0), 1.0), message)

    def event(self, message: str, **data: Any) -> None:
        self.sink.event(message, data or None)

    def check_canceled(self) -> None:
        self.sink.check_canceled()

    def resolve_model(self, reference: str) -> Path:
        if self.model_resolver is not None:
            return self.model_resolver(reference)
        path = Path(reference)
        if not path.is_file():
            raise MissingModelError(f"model {reference!r} not found: give a path to an .onnx file")
        return path

    def output(self) -> Path:
        """Where the model this step returns goes (its folder exists)."""
        assert self.output_path is not None
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        return self.output_path

    def scratch(self, name: str = "") -> Path:
        """A folder under this step's scratch dir (created); the pipeline removes it after the step."""
        assert self.scratch_dir is not None
        path = self.scratch_dir / name if name else self.scratch_dir
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_model_path(self, stem: str) -> Path:
        """A fresh candidate file in the scratch dir; a pass may return one of these as its model."""
        return self.scratch() / f"{stem}_{next(self._counter)}.onnx"

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
    """`model_path` is the model the step returns (None: its input, unchanged) and `metrics` its details."""

    model_path: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.model_path is not None


def adopt_output(result: PassResult, ctx: PassContext, step_type: str) -> Path | None:
    """The step's model at its output path (moved there from the scratch dir), or None for "input unchanged".

    A pass may only return its output path or a file it wrote under its scratch dir: anything else (its input,
    another step's file, a path outside the work dir) is a contract violation and fails the step.
    """
    if result.model_path is None:
        return None
    assert ctx.output_path is not None and ctx.scratch_dir is not None
    label = f"step {ctx.step_index} ({step_type})"
    returned, output = result.model_path.resolve(), ctx.output_path.resolve()
    if returned != output:
        if not returned.is_relative_to(ctx.scratch_dir.resolve()):
            raise StepFailedError(
                f"{label} returned {result.model_path.name}: neither its output path nor a scratch file"
            )
        output.parent.mkdir(parents=True, exist_ok=True)
        returned.replace(output)
    if not output.is_file():
        raise StepFailedError(f"{label} said it changed the model but wrote no file")
    return ctx.output_path


def step_type_of(config_model: Any) -> str:
    """The one `type` literal shared by a config model or by every member of a (discriminated) union of them."""
    if typing.get_origin(config_model) is typing.Annotated:
        return step_type_of(typing.get_args(config_model)[0])
    if typing.get_origin(config_model) in (typing.Union, types.UnionType):
        names = {step_type_of(member) for member in typing.get_args(config_model)}
        if len(names) != 1:
            raise TypeError(f"a step's config union mixes step types: {sorted(names)}")
        return names.pop()
    field_info = config_model.model_fields.get("type")
    literal = typing.get_args(field_info.annotation) if field_info is not None else ()
    if len(literal) != 1 or not isinstance(literal[0], str):
        raise TypeError(f"{config_model.__name__} must declare `type: Literal['<step type>']`")
    return literal[0]


class CompressionPass(ABC, Generic[ConfigT]):
    """One compression method. Subclasses set `config_model` and implement `run`; `step_type` follows."""

    config_model: ClassVar[Any]
    step_type: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_model" in cls.__dict__:
            cls.step_type = step_type_of(cls.config_model)

    def __init__(self, config: ConfigT) -> None:
        self.config: ConfigT = config

    @abstractmethod
    def run(self, model_path: Path, ctx: PassContext) -> PassResult: ...
