"""Deterministic, single-threaded torch training shared by the builders."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@contextmanager
def single_thread(seed: int) -> Iterator[None]:
    """Pin torch to one thread and a fixed seed so builds are reproducible and cheap, then restore."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the AdamW + one-cycle schedule every zoo model uses."""

    epochs: int
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0


def train_classifier(net: nn.Module, x: np.ndarray, y: np.ndarray, config: TrainConfig, seed: int) -> nn.Module:
    """Minimise cross-entropy with minibatch AdamW; returns the net switched to eval mode."""
    inputs = torch.tensor(np.asarray(x))
    labels = torch.tensor(np.asarray(y))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(inputs) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), config.batch_size):
            batch = order[start : start + config.batch_size]
            optimizer.zero_grad()
            loss_fn(net(inputs[batch]), labels[batch]).backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def torch_logits(net: nn.Module, x: np.ndarray) -> np.ndarray:
    """Eval-mode forward pass as numpy, the reference the ONNX graph must reproduce."""
    with torch.no_grad():
        return net.eval()(torch.tensor(np.asarray(x))).numpy()


def parameter_count(net: nn.Module) -> int:
    """Number of trainable scalars (BatchNorm running stats excluded)."""
    return sum(p.numel() for p in net.parameters())
