"""The training loop: the student graph learns from the teacher's targets (and labels), best epoch kept."""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from compression.datasets import Dataset
from compression.errors import CompressionError, DatasetMismatchError
from compression.metrics.activation_size import activation_size, batch_for
from compression.settings import EngineSettings
from compression.training import losses
from compression.training.augment import augment, auto_copies
from compression.training.auto_hints import pick_hints
from compression.training.config import DistillConfig
from compression.training.graph_module import OnnxGraphModule
from compression.training.guard import GuardVerdict, judge, score_model
from compression.training.plan import OutputLoss, plan_losses
from compression.training.qat import QatPlan, find_qat_weights, finish_qat, prepare_qat
from compression.training.teacher import teacher_targets
from compression.training.weights import write_back

HOLD_OUT_MIN = 8  # train samples needed before a part of them is held out for selection (when no eval data)
GUARD_SAMPLES = 64  # a smaller unlabeled selection set is widened by mixed copies for the final check
GUARD_MAX_COPIES = 15
BN_MIN_BATCH = 16  # below this many samples per step, batch statistics are too noisy: BatchNorm stays frozen
BACKWARD_MEMORY_FACTOR = 3  # a training forward keeps its activations for the backward pass, which adds gradients
AUTO_CHECKS = 20  # with a time budget and no check_seconds: a selection check every twentieth of it
CHECK_COST_RATIO = 4.0  # checks inside an epoch are at least this many times their own cost apart
BACKOFF_PATIENCE = 0.1  # share of training without a better check before a backoff
BACKOFF_CHECKS = 3  # ... and at least this many checks (one noisy check on a few samples is no trend)
BACKOFF_FACTOR = 0.3  # the peak learning rate after a backoff, relative to before
STUDENT_COST_RATIO = 2.0  # a student train step per sample costs at least this many teacher forwards


class TrainingHooks(Protocol):
    def progress(self, fraction: float, message: str | None = None) -> None: ...

    def event(self, message: str, **data: Any) -> None: ...

    def check_canceled(self) -> None: ...


class QuietHooks:
    """Hooks for direct library use (benches, tests): no progress, no events, never canceled."""

    def progress(self, fraction: float, message: str | None = None) -> None:
        pass

    def event(self, message: str, **data: Any) -> None:
        pass

    def check_canceled(self) -> None:
        pass


@dataclass
class EvalResult:
    loss: float
    accuracy: float | None
    agreement: float | None

    def metric(self) -> tuple[str, float]:
        """The number 'best epoch' maximises: label accuracy, else teacher agreement, else -loss."""
        if self.accuracy is not None:
            return "accuracy", self.accuracy
        if self.agreement is not None:
            return "teacher_agreement", self.agreement
        return "neg_loss", -self.loss


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float | None
    eval_loss: float
    eval_metric: float
    seconds: float


@dataclass
class CheckRecord:
    """One selection check: the student scored on the selection data after `step` optimizer steps."""

    epoch: int  # the epoch it ran in (0: before training)
    step: int
    eval_loss: float
    eval_metric: float
    seconds: float  # since training started


@dataclass
class _Best:
    """The best check so far and the module state it saw."""

    key: tuple[float, ...]
    epoch: int
    step: int
    state: dict[str, Any]

    def update(self, key: tuple[float, ...], epoch: int, step: int, state: dict[str, Any]) -> None:
        self.key, self.epoch, self.step, self.state = key, epoch, step, copy.deepcopy(state)


@dataclass
class DistillOutcome:
    model: onnx.ModelProto
    best_epoch: int  # the epoch of the best check (0: the input's weights)
    metric_name: str
    best_step: int = 0  # optimizer steps behind the kept weights (0: the input's)
    steps: int = 0
    checks: list[CheckRecord] = field(default_factory=list)
    fresh_copies: bool = False  # new mixed copies every epoch
    backoffs: list[int] = field(default_factory=list)  # steps after which training went back to the best state
    history: list[EpochRecord] = field(default_factory=list)
    losses: list[dict[str, Any]] = field(default_factory=list)
    trainable_parameters: int = 0
    eval_on: str = "eval"
    selected_by: str = "loss"
    qat_weights: int = 0  # integer weights trained as float and re-quantized (0: not a QDQ student)
    learned_scales: int = 0
    lr: float = 0.0
    stopped_early: bool = False  # the time budget ended training before the last epoch
    train_samples: int = 0  # after augmentation
    given_samples: int = 0
    auto_hints: list[str] = field(default_factory=list)
    guard: GuardVerdict | None = None  # trained student vs its input on the selection data (None: not trained)

    @property
    def kept_input(self) -> bool:
        """The returned weights are the input's: no epoch beat them, or the guard rejected the trained ones."""
        return self.best_epoch == 0 or (self.guard is not None and not self.guard.accepted)


@dataclass
class _Data:
    """One dataset with its teacher targets, served as torch feeds for batched or stacked layouts."""

    dataset: Dataset
    targets: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return self.dataset.n_samples

    def feeds(self, index: np.ndarray) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None]:
        """Inputs, teacher targets and labels for a batch (batched) or one entry (stacked, a 1-element index)."""
        pick = index if self.dataset.layout == "batched" else int(index[0])
        inputs = {name: torch.from_numpy(np.ascontiguousarray(a[pick])) for name, a in self.dataset.arrays.items()}
        targets = {name: torch.from_numpy(np.ascontiguousarray(a[pick])) for name, a in self.targets.items()}
        labels = self.dataset.labels
        return inputs, targets, None if labels is None else torch.from_numpy(np.ascontiguousarray(labels[pick]))

    def chunks(self, order: np.ndarray, batch_size: int, micro_batch: int) -> Iterator[list[np.ndarray]]:
        """Per optimizer step, the forwards to run: batches of at most `micro_batch` samples, or one forward per
        stacked entry."""
        size = micro_batch if self.dataset.layout == "batched" else 1
        for start in range(0, len(order), batch_size):
            part = order[start : start + batch_size]
            yield [part[i : i + size] for i in range(0, len(part), size)]


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_inputs(module: OnnxGraphModule, dataset: Dataset, role: str) -> None:
    arrays = sorted(dataset.arrays)
    if sorted(module.input_names) != arrays:
        raise DatasetMismatchError(
            f"the {role} dataset has arrays {arrays} but the student model's inputs are {sorted(module.input_names)}: "
            "upload a dataset with one array per student input (plus optional 'labels')"
        )


class Distiller:
    """Holds the student module, the loss plan and the data; `run` trains and returns the best weights."""

    def __init__(
        self,
        teacher_path: Path,
        student_path: Path,
        train: Dataset,
        eval_data: Dataset | None,
        config: DistillConfig,
        settings: EngineSettings,
        hooks: TrainingHooks,
    ) -> None:
        if config.epochs > settings.distill.max_epochs:
            raise CompressionError(
                f"epochs={config.epochs} exceeds the limit distill_max_epochs={settings.distill.max_epochs}"
            )
        self.config, self.settings, self.hooks = config, settings, hooks
        self.teacher_path = teacher_path
        self.student_proto = onnx.load(str(student_path))
        teacher_proto = onnx.load(str(teacher_path), load_external_data=False)
        per_step = min(config.batch_size, train.n_samples)
        # inference runs (teacher labels, checks) within eval_activation_memory_mb, training forwards within
        # distill_activation_memory_mb, both measured on one sample of the teacher (a pruned student's are smaller)
        self.run_batch, self.micro_batch = settings.evaluation.batch_size, per_step  # stacked: one entry per run
        if train.layout == "batched":
            per_sample = activation_size(teacher_path, train.take(1).first_feed(1)).activations
            self.run_batch = batch_for(settings.evaluation.activation_memory_mb << 20, per_sample, cap=self.run_batch)
            self.micro_batch = batch_for(settings.distill.activation_memory_mb << 20, per_sample,
                                         BACKWARD_MEMORY_FACTOR, cap=per_step)  # fmt: skip
        bn_train = config.batchnorm == "train" or (  # batch statistics come from one forward's samples
            config.batchnorm == "auto" and train.layout == "batched" and min(per_step, self.micro_batch) >= BN_MIN_BATCH
        )
        self.qat = find_qat_weights(self.student_proto.graph) if config.qat == "auto" else QatPlan()
        trainable = self.qat.learnable_scales + self.qat.activation_scales if config.learn_scales else []
        self.module = OnnxGraphModule(
            prepare_qat(self.student_proto, self.qat, trainable) if self.qat.active else self.student_proto,
            frozen=config.frozen,
            bn_train=bn_train,
            max_loop_iterations=settings.distill.max_loop_iterations,
            trainable=trainable,
        )
        self.lr = config.lr if config.lr is not None else auto_lr(per_step)
        _check_inputs(self.module, train, "train")
        train = train.take(settings.distill.max_train_samples)
        self.eval_on = "eval"
        if eval_data is None:
            train, eval_data, self.eval_on = _hold_out(train)
        eval_data = eval_data.take(settings.evaluation.max_samples)
        copies = config.augment if config.augment is not None else auto_copies(train)
        self.given_samples = train.n_samples
        self.given, self.copies = train, copies
        train = augment(train, copies, config.seed).take(settings.distill.max_train_samples)
        # new copies every epoch only when there are copies (augment applied) and room for them
        self.fresh_copies = config.fresh_copies and train.n_samples > self.given_samples
        _check_inputs(self.module, eval_data, self.eval_on)
        self.auto_hints: list[str] = []
        if config.auto_hints and not self.qat.active:
            full_teacher = onnx.load(str(teacher_path))
            auto = pick_hints(self.student_proto, full_teacher, train, config.auto_hints, settings.distill.auto_hint_mb)
            named = {h.teacher for h in config.hints} | {h.student for h in config.hints}
            self.auto_hints = [name for name in auto if name not in named]
            del full_teacher
        hint_names = [h.teacher for h in config.hints] + self.auto_hints
        self.hint_names = hint_names
        max_bytes = settings.distill.max_target_mb << 20
        batch = self.run_batch
        self.batch_axes: dict[str, int] = {}  # outputs whose samples are not on axis 0 (time-major sequences)
        threads = settings.distill.threads
        # the given samples first (timed): copies the time budget could never train on are not labelled
        started = time.perf_counter()
        given = train.window(0, min(self.given_samples, train.n_samples))
        self.train = _Data(
            given, teacher_targets(teacher_path, given, hint_names, threads, batch, max_bytes, self.batch_axes)
        )
        self.copies = self._affordable_copies((time.perf_counter() - started) / max(given.n_samples, 1))
        self.fresh_copies = self.fresh_copies and self.copies > 0
        if self.copies:
            self._add_copies(train.window(given.n_samples, given.n_samples * (self.copies + 1)))
        started = time.perf_counter()
        self.eval = _Data(
            eval_data, teacher_targets(teacher_path, eval_data, hint_names, threads, batch, max_bytes, self.batch_axes)
        )
        # one teacher run per selection sample: the guard's widened check is sized by it
        self.seconds_per_eval_sample = (time.perf_counter() - started) / max(eval_data.n_samples, 1)
        self.plans = plan_losses(
            self.student_proto,
            teacher_proto,
            self.train.targets,
            train.labels,
            train.layout == "stacked",
            config.output_loss,
        )
        # the loss reads each output (and its logits tensor) with the samples leading, like the targets
        self.moves = {p.student_tensor: self.batch_axes.get(p.teacher_output, 0) for p in self.plans}
        self.moves |= {h.student: self.batch_axes.get(h.teacher, 0) for h in config.hints}
        self.moves |= {name: self.batch_axes.get(name, 0) for name in self.auto_hints}
        self.moves = {name: axis for name, axis in self.moves.items() if axis}
        extra = {p.student_tensor for p in self.plans if p.student_tensor != p.student_output}
        extra |= {h.student for h in config.hints} | set(self.auto_hints)
        self.module.set_extra_outputs(sorted(extra))
        self.hint_scales = {name: losses.teacher_scale(self.train.targets[name]) for name in hint_names}

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The student's outputs, samples leading (as in the targets)."""
        out = self.module(inputs)
        for name, axis in self.moves.items():
            out[name] = torch.movedim(out[name], axis, 0)
        return out

    def loss(
        self,
        out: dict[str, torch.Tensor],
        targets: dict[str, torch.Tensor],
        labels: torch.Tensor | None,
        auto_hints: bool = True,
    ) -> torch.Tensor:
        """The training loss; `auto_hints=False` leaves out the automatic hint terms (epoch selection)."""
        config = self.config
        total = torch.zeros(())
        for plan in self.plans:
            student, teacher = _common(out[plan.student_tensor], targets[plan.teacher_output])
            if plan.kind == "mse":
                total = total + losses.scaled_mse(student, teacher, plan.scale)
                continue
            logits = torch.log(student.float().clamp_min(1e-12)) if plan.student_form == "probs" else student
            kd = losses.kd_kl(logits, _teacher_logits(teacher, plan), config.temperature, plan.axis)
            if plan.raw_scores:  # the output is the scores themselves: match their values too, not only softmax
                kd = kd + losses.scaled_mse(student, teacher, plan.scale)
            if plan.use_labels and labels is not None:
                ce = losses.cross_entropy(student, labels, plan.axis)
                total = total + config.alpha * kd + (1.0 - config.alpha) * ce
            else:
                total = total + kd
        for hint in config.hints:
            student, teacher = out[hint.student], targets[hint.teacher]
            if student.shape != teacher.shape:
                raise CompressionError(
                    f"hint teacher {hint.teacher!r} has shape {list(teacher.shape)} but student {hint.student!r} "
                    f"has {list(student.shape)}: hints need tensors of the same shape"
                )
            total = total + config.hint_weight * losses.scaled_mse(student, teacher, self.hint_scales[hint.teacher])
        if auto_hints and self.auto_hints:
            weight = config.hint_weight / len(self.auto_hints)
            for name in self.auto_hints:
                student, teacher = _common(out[name], targets[name])
                if student.shape == teacher.shape:  # a data-dependent length of another rank: no term
                    total = total + weight * losses.scaled_mse(student, teacher, self.hint_scales[name])
        return total

    def evaluate(self) -> EvalResult:
        self.module.eval()
        label_plan = next((p for p in self.plans if p.use_labels), None)
        kl_plan = label_plan or next((p for p in self.plans if p.kind == "kl"), None)
        total_loss, seen, correct, agree, rows = 0.0, 0, 0, 0, 0
        step = self.run_batch if self.eval.dataset.layout == "batched" else 1
        with torch.no_grad():
            for start in range(0, self.eval.n, step):
                index = np.arange(start, min(start + step, self.eval.n))
                inputs, targets, labels = self.eval.feeds(index)
                out = self.forward(inputs)
                total_loss += float(self.loss(out, targets, labels, auto_hints=False)) * len(index)
                seen += len(index)
                if kl_plan is not None:
                    student, teacher = _common(out[kl_plan.student_tensor], targets[kl_plan.teacher_output])
                    pred = _argmax_rows(student, kl_plan.axis)
                    agree += int((pred == _argmax_rows(teacher, kl_plan.axis)).sum())
                    rows += pred.numel()
                    if label_plan is not None and labels is not None:
                        correct += int((pred == labels.reshape(-1)).sum())
        accuracy = correct / rows if label_plan is not None and self.eval.dataset.labels is not None and rows else None
        return EvalResult(loss=total_loss / max(seen, 1), accuracy=accuracy, agreement=agree / rows if rows else None)

    def _progress(self, done: int, total_steps: int, start: float) -> float:
        """Share of the training done: by steps, or by the time budget when that runs out first."""
        progress = done / total_steps
        if self.config.max_seconds is not None:
            progress = max(progress, (time.perf_counter() - start) / self.config.max_seconds)
        return min(progress, 1.0)

    def _trained_values(self) -> dict[str, np.ndarray]:
        values = self.module.trained_values()
        if not self.qat.active:
            return values
        input_scales = {x_scale for _, x_scale, _ in self.qat.bias_links}
        constants = {
            t.name: numpy_helper.to_array(t) for t in self.student_proto.graph.initializer if t.name in input_scales
        }
        return finish_qat(values, self.qat, constants)

    def _selection_key(self, metric: float, loss: float, step: int) -> tuple[float, ...]:
        """Larger is better: the eval metric (ties: lower loss), the eval loss alone, or simply the last check."""
        select = self.config.select
        if select == "metric":
            return (metric, -loss)
        if select == "loss":
            return (-loss,)
        return (float(step),)

    def _param_groups(self) -> list[dict[str, Any]]:
        """The trained weights in two groups: those the step's input changed from the teacher's (pruned,
        refitted) at the full learning rate, the teacher's own at `unchanged_lr` times it."""
        params = [(name, p) for name, p in zip(self.module.roles.parameters, self.module.parameters(), strict=True)]
        params = [(name, p) for name, p in params if p.requires_grad]
        if self.config.unchanged_lr == 1.0:
            return [{"params": [p for _, p in params], "scale": 1.0}]
        same = _unchanged_initializers(self.student_proto.graph, self.teacher_path)
        changed = [p for name, p in params if name not in same]
        kept = [p for name, p in params if name in same]
        groups = [{"params": changed, "scale": 1.0}, {"params": kept, "scale": self.config.unchanged_lr}]
        return [g for g in groups if g["params"]]

    def _check_interval(self) -> float | None:
        """Seconds of training between selection checks inside an epoch (None: at epoch ends only)."""
        if self.config.check_seconds is not None:
            return self.config.check_seconds
        if self.config.max_seconds is not None:
            return self.config.max_seconds / AUTO_CHECKS
        return None

    def _affordable_copies(self, teacher_seconds_per_sample: float) -> int:
        """The configured copies, fewer when the time budget could not train on them all: a student step
        (torch forward and backward) costs at least STUDENT_COST_RATIO teacher forwards (onnxruntime)."""
        if self.config.max_seconds is None or not self.copies:
            return self.copies
        affordable = self.config.max_seconds / (STUDENT_COST_RATIO * max(teacher_seconds_per_sample, 1e-9))
        return max(0, min(self.copies, int(affordable // max(self.given_samples, 1)) - 1))

    def _add_copies(self, copies: Dataset) -> None:
        """The given samples (first in the train data, with their targets) followed by `copies`, labelled now.

        An output whose length depends on the data (a decoder Loop) may come out of the two teacher runs with
        other lengths: then every sample is labelled again in one run, as before copies were labelled apart."""
        n, settings = self.given_samples, self.settings
        given = self.train.dataset
        arrays = {name: np.concatenate([a[:n], copies.arrays[name]]) for name, a in given.arrays.items()}
        data = Dataset(arrays=arrays, labels=None, layout=given.layout, synthetic=given.synthetic,
                       scalars=given.scalars)  # fmt: skip
        label = functools.partial(teacher_targets, self.teacher_path, extra=self.hint_names,
                                  threads=settings.distill.threads, batch_size=self.run_batch,
                                  max_bytes=settings.distill.max_target_mb << 20, batch_axes=self.batch_axes)  # fmt: skip
        targets = label(copies)
        if any(t.shape[1:] != targets[name].shape[1:] for name, t in self.train.targets.items()):
            self.train = _Data(data, label(data))
            return
        self.train = _Data(
            data, {name: np.concatenate([t[:n], targets[name]]) for name, t in self.train.targets.items()}
        )

    def _refresh_copies(self, epoch: int) -> None:
        """New mixed copies of the given samples for this epoch, labelled by the teacher; the given samples
        keep their cached targets."""
        if not self.fresh_copies or epoch <= 1:
            return
        mixed = augment(self.given, self.copies, self.config.seed + epoch)
        mixed = mixed.take(self.settings.distill.max_train_samples)
        self._add_copies(mixed.window(self.given_samples, mixed.n_samples))

    def run(self) -> DistillOutcome:
        config, hooks = self.config, self.hooks
        with _torch_threads(self.settings.distill.threads):
            torch.manual_seed(config.seed)
            rng = np.random.default_rng(config.seed)
            groups = self._param_groups()
            params = [p for group in groups for p in group["params"]]
            optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=config.weight_decay)
            anchors = [p.detach().clone() for p in params] if config.anchor > 0 else []
            # the pull runs per group (its own learning rate)
            anchored = (
                [(g["params"], anchors[i : i + len(g["params"])]) for i, g in _offsets(groups)] if anchors else []
            )
            steps_per_epoch = math.ceil(self.train.n / config.batch_size)
            total_steps = max(1, config.epochs * steps_per_epoch)
            start = time.perf_counter()
            out_of_time = False
            first = self.evaluate()
            metric_name, first_metric = first.metric()
            best = _Best(
                self._selection_key(first_metric, first.loss, 0), 0, 0, copy.deepcopy(self.module.state_dict())
            )
            history = [EpochRecord(0, None, first.loss, first_metric, time.perf_counter() - start)]
            checks = [CheckRecord(0, 0, first.loss, first_metric, time.perf_counter() - start)]
            hooks.event(
                "distill: student before training", epoch=0, eval_loss=first.loss, **{metric_name: first_metric}
            )
            interval = self._check_interval()
            last_check, check_cost = time.perf_counter(), checks[0].seconds
            last_result: EvalResult | None = None
            peak, best_progress, backoffs, since_best = self.lr, 0.0, [], 0

            def check(epoch: int) -> EvalResult:
                nonlocal last_check, check_cost, last_result, optimizer, peak, best_progress, since_best
                if checks[-1].step == done and last_result is not None:  # checked after this very step
                    return last_result
                began = time.perf_counter()
                result = self.evaluate()
                _, metric = result.metric()
                check_cost, last_check = time.perf_counter() - began, time.perf_counter()
                checks.append(CheckRecord(epoch, done, result.loss, metric, last_check - start))
                key = self._selection_key(metric, result.loss, done)
                progress = self._progress(done, total_steps, start)
                since_best += 1
                if key > best.key:
                    best.update(key, epoch, done, self.module.state_dict())
                    best_progress, since_best = progress, 0
                elif (
                    len(backoffs) < config.backoff
                    and config.select != "last"
                    and progress - best_progress >= BACKOFF_PATIENCE
                    and since_best >= BACKOFF_CHECKS
                    and progress < 1.0
                ):
                    # no check beat the best for a while: back to its weights with a lower learning rate
                    self.module.load_state_dict(best.state)
                    optimizer = torch.optim.AdamW(groups, lr=peak, weight_decay=config.weight_decay)
                    peak, best_progress, since_best = peak * BACKOFF_FACTOR, progress, 0
                    backoffs.append(done)
                    hooks.event("distill: back to the best state, lower learning rate", step=done, lr=peak)
                last_result = result
                return result

            done = 0
            for epoch in range(1, config.epochs + 1):
                started = time.perf_counter()
                self._refresh_copies(epoch)
                self.module.train()
                running, count = 0.0, 0
                for forwards in self.train.chunks(rng.permutation(self.train.n), config.batch_size, self.micro_batch):
                    hooks.check_canceled()
                    optimizer.zero_grad(set_to_none=True)
                    samples = sum(len(index) for index in forwards)
                    for index in forwards:
                        inputs, targets, labels = self.train.feeds(index)
                        loss = self.loss(self.forward(inputs), targets, labels)
                        (loss * (len(index) / samples)).backward()  # the step's mean over its samples
                        running += loss.item() * len(index)
                        count += len(index)
                    lr = peak * lr_factor(self._progress(done, total_steps, start), config.warmup)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * group["scale"]
                    optimizer.step()
                    for (group_params, group_anchors), group in zip(anchored, optimizer.param_groups, strict=False):
                        _pull_toward(group_params, group_anchors, group["lr"] * config.anchor)  # none: no anchor
                    done += 1
                    if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
                        out_of_time = True
                        break
                    if done * 100 // total_steps != (done - 1) * 100 // total_steps:  # at most ~100 updates
                        hooks.progress(0.05 + 0.85 * done / total_steps, f"distill epoch {epoch}/{config.epochs}")
                    since = time.perf_counter() - last_check
                    if interval is not None and since >= max(interval, CHECK_COST_RATIO * check_cost):
                        check(epoch)  # inside the epoch: a slow model keeps its best state, not one snapshot
                        self.module.train()
                result = check(epoch)
                metric = checks[-1].eval_metric
                seconds = time.perf_counter() - started
                history.append(EpochRecord(epoch, running / max(count, 1), result.loss, metric, seconds))
                hooks.event(
                    f"distill epoch {epoch}/{config.epochs}",
                    epoch=epoch,
                    train_loss=round(running / max(count, 1), 6),
                    eval_loss=round(result.loss, 6),
                    **{metric_name: round(metric, 6)},
                    seconds=round(seconds, 3),
                    best_step=best.step,
                )
                if out_of_time:
                    hooks.event(f"distill: time budget of {config.max_seconds:g} s spent after epoch {epoch}")
                    break
            self.module.load_state_dict(best.state)
            trained = write_back(self.student_proto, self._trained_values())
        verdict = None
        if best.step > 0:
            hooks.progress(0.9, "distill: trained student vs its input on the selection data")
            verdict = self.guard(trained)
            hooks.event("distill: trained student vs its input", **verdict.as_metrics())
            if not verdict.accepted:
                trained = self.student_proto
        return DistillOutcome(
            model=trained,
            guard=verdict,
            best_epoch=best.epoch,
            best_step=best.step,
            steps=done,
            checks=checks,
            metric_name=metric_name,
            history=history,
            losses=[{"output": p.student_output, "kind": p.kind, "labels": p.use_labels} for p in self.plans],
            auto_hints=self.auto_hints,
            trainable_parameters=sum(p.numel() for p in self.module.parameters()),
            eval_on=self.eval_on,
            selected_by=config.select,
            qat_weights=len(self.qat.weights),
            learned_scales=self.qat.scale_count() if config.learn_scales else 0,
            lr=self.lr,
            stopped_early=len(history) - 1 < config.epochs,
            train_samples=self.train.n,
            given_samples=self.given_samples,
            fresh_copies=self.fresh_copies,
            backoffs=backoffs,
        )

    def guard(self, trained: onnx.ModelProto) -> GuardVerdict:
        """The input student and the trained one, run by onnxruntime on the selection data against the teacher."""
        pairs = [(p.student_output, p.teacher_output) for p in self.plans]
        threads, batch = self.settings.distill.threads, self.run_batch
        max_bytes = self.settings.distill.max_target_mb << 20
        data, targets = self.eval.dataset, self.eval.targets
        if data.n_samples < GUARD_SAMPLES and data.labels is None:
            # a handful of held-out samples says little about unseen inputs: their mixed and noised copies
            # (labelled by the teacher) widen the check, as augmentation widens training
            n = max(data.n_samples, 1)
            copies = min(GUARD_MAX_COPIES, math.ceil(GUARD_SAMPLES / n) - 1)
            # three runs per sample (teacher, input, trained) within distill_guard_seconds
            affordable = self.settings.distill.guard_seconds / (3 * max(self.seconds_per_eval_sample, 1e-6))
            copies = max(0, min(copies, int(affordable // n) - 1))
            wider = augment(data, copies, self.config.seed + 1) if copies else data
            if wider.n_samples > data.n_samples:
                data = wider
                targets = teacher_targets(self.teacher_path, data, [], threads, batch, max_bytes, {})
        before = score_model(self.student_proto, data, targets, pairs, threads, batch, max_bytes)
        after = score_model(trained, data, targets, pairs, threads, batch, max_bytes)
        where = "eval data" if self.eval_on == "eval" else f"{self.eval_on} data"
        if data is not self.eval.dataset:
            where += f" and {data.n_samples - self.eval.n} mixed copies"
        return judge(before, after, self.settings.distill.guard_worst_tolerance, data.n_samples, where)


def _offsets(groups: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    start = 0
    for group in groups:
        yield start, group
        start += len(group["params"])


def _unchanged_initializers(student: onnx.GraphProto, teacher_path: Path) -> set[str]:
    """Main-graph initializers the student holds exactly as the teacher does (same name, type, shape, values)."""
    teacher = {t.name: t for t in onnx.load(str(teacher_path)).graph.initializer}
    same = set()
    for tensor in student.initializer:
        other = teacher.get(tensor.name)
        if other is not None and other.SerializeToString() == tensor.SerializeToString():
            same.add(tensor.name)
    return same


def _pull_toward(params: list[torch.Tensor], anchors: list[torch.Tensor], rate: float) -> None:
    """L2-SP, decoupled like AdamW's decay: each weight moves `rate` of the way back to its starting value."""
    with torch.no_grad():
        for param, anchor in zip(params, anchors, strict=True):
            param.sub_(param - anchor, alpha=min(rate, 1.0))


def _hold_out(train: Dataset) -> tuple[Dataset, Dataset, str]:
    """Without eval data: the last fifth of train (at least 2 samples) picks the best epoch, unseen in training.

    Selecting on the training samples themselves picks the most overfit epoch when the set is small.
    Fewer than HOLD_OUT_MIN samples: selection uses the train set itself.
    """
    n = train.n_samples
    if n < HOLD_OUT_MIN:
        return train, train, "train"
    keep = n - max(2, n // 5)
    return train.window(0, keep), train.window(keep, n), "held-out part of train"


AUTO_LR = 1e-3


def auto_lr(per_step: int) -> float:
    """The default peak learning rate: 1e-3 at every batch size.

    AdamW moves each weight by about lr per step whatever the batch, so the sqrt(batch) scaling this replaced
    (2.5e-4 at batch 4) only slowed recovery: on the real-model bench (prune 0.3, 80 s, batch 4) 1e-3 gave a
    higher worst-sample cosine on 3 of 4 models. A step that hurts a pretrained student is undone by the
    final check (the input is returned).
    """
    del per_step
    return AUTO_LR


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warmup over the first `warmup` share of training, then cosine decay to 0."""
    if warmup > 0 and progress < warmup:
        return (progress + 1e-3) / warmup
    rest = (progress - warmup) / max(1.0 - warmup, 1e-9)
    return 0.5 * (1.0 + math.cos(math.pi * min(max(rest, 0.0), 1.0)))


def _common(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both cut to their common extent when a data-dependent length differs (a decoder Loop stopping at
    another step): the loss compares the shared prefix. Different ranks are left to fail loudly."""
    if student.shape == teacher.shape or student.ndim != teacher.ndim:
        return student, teacher
    index = tuple(slice(0, min(a, b)) for a, b in zip(student.shape, teacher.shape, strict=True))
    return student[index], teacher[index]


def _teacher_logits(teacher: torch.Tensor, plan: OutputLoss) -> torch.Tensor:
    """Probabilities become log-probabilities, which softmax maps back to the same distribution."""
    if plan.teacher_form == "probs":
        return torch.log(teacher.float().clamp_min(1e-12))
    return teacher


def _argmax_rows(scores: torch.Tensor, axis: int) -> torch.Tensor:
    moved = torch.movedim(scores, axis, -1)
    return moved.reshape(-1, moved.shape[-1]).argmax(dim=1)


def distill(
    teacher_path: Path,
    student_path: Path,
    train: Dataset,
    eval_data: Dataset | None,
    config: DistillConfig,
    settings: EngineSettings,
    hooks: TrainingHooks,
) -> DistillOutcome:
    """Train `student_path`'s weights against `teacher_path`; the returned model is the student graph, retrained."""
    return Distiller(teacher_path, student_path, train, eval_data, config, settings, hooks).run()
