"""Distillation losses: soft-target KL (Hinton et al.), cross-entropy on labels, MSE for regression and hints."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, axis: int) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over every distribution in the tensor.

    T² keeps the gradient scale independent of the temperature, so alpha means the same at any T.
    """
    s = _rows(student_logits, axis)
    t = _rows(teacher_logits, axis)
    log_p_student = F.log_softmax(s / temperature, dim=-1)
    log_p_teacher = F.log_softmax(t / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature * temperature


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor, axis: int) -> torch.Tensor:
    return F.cross_entropy(_rows(student_logits, axis), labels.reshape(-1).long())


def mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student.float(), teacher.float())


def scaled_mse(student: torch.Tensor, teacher: torch.Tensor, scale: float) -> torch.Tensor:
    """MSE divided by the teacher output's mean square: box coordinates in pixels and scores in [0, 1]
    weigh alike, and 1 - cosine ~ half this value for small errors."""
    return mse(student, teacher) / scale


def teacher_scale(target: np.ndarray) -> float:
    """Mean square of a teacher output over the train set (a floor keeps all-zero outputs finite)."""
    value = float(np.mean(np.square(target.astype(np.float64)))) if target.size else 0.0
    return max(value, 1e-8)


def _rows(logits: torch.Tensor, axis: int) -> torch.Tensor:
    """[rows, classes] view with the class axis last."""
    moved = torch.movedim(logits.float(), axis, -1)
    return moved.reshape(-1, moved.shape[-1])
