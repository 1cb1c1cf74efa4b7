"""Optimizers and the Horovod distributed-optimizer wrapper (compression, averaging, state broadcast).

The package also holds ``large_batch`` (LAMB and LARS) and ``schedule`` (learning-rate scaling, warm-up and
decay as pure functions of the samples seen)."""

from __future__ import annotations

from typing import Any

import horovod.torch as hvd
import torch
from torch import nn

from hpctrain.config import CommConfig, OptimConfig
from hpctrain.optim.large_batch import LAMB, LARS


def base_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    # fused: None (not False) lets PyTorch pick its default kernel when the fused one is not asked for
    fused = True if cfg.fused else None
    if cfg.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, fused=fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.name == "lamb":
        return LAMB(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}")  # config validation makes this unreachable


def state_copies(cfg: OptimConfig) -> int:
    """Tensors of optimizer state per parameter tensor (momentum; Adam's two moments): what a checkpoint holds
    beside the weights."""
    if cfg.name in ("adamw", "lamb"):
        return 2
    return 1 if cfg.momentum > 0 else 0


def compression(comm: CommConfig) -> type:
    return hvd.Compression.fp16 if comm.compression == "fp16" else hvd.Compression.none


def build(model: nn.Module, cfg: OptimConfig, comm: CommConfig, backward_passes: int = 1) -> Any:
    """The configured optimizer, wrapped so gradients are averaged across ranks by ring all-reduce, once
    every ``backward_passes`` backward passes (gradient accumulation). Horovod makes the wrapper's class at run
    time (a subclass of the optimizer's, with ``synchronize`` and ``skip_synchronize``), hence ``Any``."""
    return hvd.DistributedOptimizer(  # dist: all-reduce each gradient as soon as backward produces it
        base_optimizer(model, cfg),
        named_parameters=model.named_parameters(),
        compression=compression(comm),
        op=hvd.Average,
        backward_passes_per_step=backward_passes,
    )


def broadcast_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Make every rank start from rank 0's parameters and optimizer state (fresh start or resume)."""
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)  # dist
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)  # dist
