"""`onnx-compress example [DIR]`: a small trained model and its data, to try the service and the CLI on.

Trains the model zoo's digits CNN (two convolutions on scikit-learn's bundled 8x8 digits: no download, about
ten seconds on one core) and writes into DIR:

- `digits_cnn.onnx`: the model (input `input` [batch, 1, 8, 8] float32, output `logits` [batch, 10]);
- `digits_calibration.npz`: 256 training images (`input`), for static quantization;
- `digits_train.npz`: the training split with `labels`, for distillation;
- `digits_eval.npz`: the held-out split with `labels`, for accuracy;
- `spec.json`: a one-step spec (dynamic int8 quantization).

Needs torch and scikit-learn (`make run` or `make example` installs them; `pip install '.[train,example]'`).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import BaseModel

MODEL_FILE = "digits_cnn.onnx"
CALIBRATION_FILE = "digits_calibration.npz"
TRAIN_FILE = "digits_train.npz"
EVAL_FILE = "digits_eval.npz"
SPEC_FILE = "spec.json"
CALIBRATION_SAMPLES = 256
SPEC = {"steps": [{"type": "quantize", "mode": "dynamic"}]}
MISSING_EXTRA = (
    "the example trains a model with torch on scikit-learn's digits: install them with "
    "`make example` or `pip install '.[train,example]'` ({missing} is missing)"
)


class ExampleFiles(BaseModel):
    """What `write_example` wrote, and the trained model's accuracy on the eval split."""

    directory: Path
    model: Path
    calibration: Path
    train: Path
    eval: Path
    spec: Path
    accuracy: float
    n_train: int
    n_eval: int


class ExampleDependencyError(RuntimeError):
    """torch or scikit-learn is not installed."""


def write_example(directory: Path, seed: int = 0) -> ExampleFiles:
    """Train the digits CNN and write it, its datasets and a spec into `directory` (created if missing)."""
    import numpy as np

    try:
        from model_zoo import digits_cnn
        from model_zoo.digits import load_digits_split

        load_digits_split()
    except ModuleNotFoundError as exc:
        raise ExampleDependencyError(MISSING_EXTRA.format(missing=exc.name)) from exc
    built = digits_cnn.build(seed)
    directory.mkdir(parents=True, exist_ok=True)
    files = ExampleFiles(
        directory=directory,
        model=directory / MODEL_FILE,
        calibration=directory / CALIBRATION_FILE,
        train=directory / TRAIN_FILE,
        eval=directory / EVAL_FILE,
        spec=directory / SPEC_FILE,
        accuracy=built.accuracy,
        n_train=len(built.y_train),
        n_eval=len(built.y_test),
    )
    files.model.write_bytes(built.model.SerializeToString())
    name = built.input_name
    np.savez(files.calibration, **{name: built.x_train[:CALIBRATION_SAMPLES]})
    np.savez(files.train, **{name: built.x_train, "labels": built.y_train})
    np.savez(files.eval, **{name: built.x_test, "labels": built.y_test})
    files.spec.write_text(json.dumps(SPEC, indent=2) + "\n")
    return files


def next_commands(files: ExampleFiles) -> str:
    """The commands to try next, run from the folder the example was written to."""
    d = files.directory
    return "\n".join(
        [
            f"cd {d}",
            "# compress locally (no server):",
            f"onnx-compress compress {MODEL_FILE} --spec {SPEC_FILE} --eval-data {EVAL_FILE} "
            "--output digits_int8.onnx --metrics metrics.json",
            "# or on a running server (make run):",
            f"onnx-compress submit {MODEL_FILE} --spec {SPEC_FILE} --eval-data {EVAL_FILE} "
            "--server http://127.0.0.1:8000 --wait --output digits_int8.onnx",
            "# static int8 needs calibration data:",
            f"#   --calibration-data {CALIBRATION_FILE} with a spec "
            '{"steps": [{"type": "quantize", "mode": "static"}]}',
            "# the README's curl walkthrough uses these files too",
        ]
    )


def run(directory: Path, seed: int = 0) -> None:
    """The `example` command: write the files, say what was written (stderr), print the next commands (stdout)."""
    typer.echo(f"training the digits CNN (a few seconds) into {directory}/ ...", err=True)
    try:
        files = write_example(directory, seed)
    except ExampleDependencyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"wrote {MODEL_FILE} (eval accuracy {files.accuracy:.4f}), {CALIBRATION_FILE} "
        f"({CALIBRATION_SAMPLES} samples), {TRAIN_FILE} ({files.n_train}), {EVAL_FILE} ({files.n_eval}), "
        f"{SPEC_FILE}",
        err=True,
    )
    typer.echo(next_commands(files))
