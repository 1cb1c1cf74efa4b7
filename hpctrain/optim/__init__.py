"""Optimizers and the Horovod distributed-optimizer wrapper (compression, averaging, state broadcast).

The package also holds ``large_batch`` (LAMB and LARS) and ``schedule`` (learning-rate scaling, warm-up and
decay as pure functions of the samples seen) and ``zero`` (sharded optimizer state: ZeRO stages 1 and 2)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import horovod.torch as hvd
import torch
from torch import nn

from hpctrain.config import CommConfig, OptimConfig
from hpctrain.optim import zero
from hpctrain.optim.large_batch import LAMB, LARS


def base_optimizer(model: nn.Module | Iterable[torch.Tensor], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The configured optimizer over a model's parameters (or over the given tensors: a rank's shards)."""
    params = model.parameters() if isinstance(model, nn.Module) else model
    # fused: None (not False) lets PyTorch pick its default kernel when the fused one is not asked for
    fused = True if cfg.fused else None
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, fused=fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.name == "lamb":
        return LAMB(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}")  # config validation makes this unreachable


def state_copies(cfg: OptimConfig) -> int:
    """Tensors of optimizer state per parameter tensor (momentum; Adam's two moments): what a checkpoint holds
    beside the weights."""
    if cfg.name in ("adamw", "lamb"):
        return 2
    return 1 if cfg.momentum > 0 else 0


def held_bytes(optimizer: Any, model: nn.Module) -> dict[str, int]:
    """Bytes this rank holds for parameters, gradients (at their most during a step) and optimizer state."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    if isinstance(optimizer, zero.ShardedOptimizer):
        return {"params": params, "grads": optimizer.peak_grad_bytes, "optimizer_state": optimizer.state_bytes()}
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = sum(t.numel() * t.element_size() for st in optimizer.state.values() for t in st.values()
                if isinstance(t, torch.Tensor) and t.dim() > 0)
    return {"params": params, "grads": grads, "optimizer_state": state}


def compression(comm: CommConfig) -> type:
    return hvd.Compression.fp16 if comm.compression == "fp16" else hvd.Compression.none


def build(model: nn.Module, cfg: OptimConfig, comm: CommConfig, backward_passes: int = 1) -> Any:
    """The configured optimizer, wrapped so gradients are averaged across ranks by ring all-reduce, once
    every ``backward_passes`` backward passes (gradient accumulation). Horovod makes the wrapper's class at run
    time (a subclass of the optimizer's, with ``synchronize`` and ``skip_synchronize``), hence ``Any``.
    With ``optim.zero_stage`` 1 or 2, a :class:`hpctrain.optim.zero.ShardedOptimizer` with the same interface."""
    if cfg.zero_stage:
        opts = zero.ZeroOptions(cfg.zero_stage, hvd.rank(), hvd.size(), compression(comm), backward_passes,
                                int(cfg.zero_bucket_mb * 2**20))
        sharded = zero.ShardedOptimizer(model, lambda shards: base_optimizer(shards, cfg), opts)
        if isinstance(sharded.inner, (LAMB, LARS)):
            sharded.inner.layers = zero.ShardedLayers(sharded.buckets)  # dist: trust ratios of whole layers
        return sharded
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
    # Sharded state is each rank's own. Empty state (a fresh start, on every rank alike) is not broadcast:
    # Horovod first fills it with one step on zero gradients, which counts an AdamW step and applies weight
    # decay once before training starts.
    if not isinstance(optimizer, zero.ShardedOptimizer) and optimizer.state:
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)  # dist


def load_state(optimizer: Any, model: nn.Module, saved: dict[str, Any]) -> None:
    """Optimizer state from a checkpoint written at any ZeRO stage and world size."""
    if isinstance(optimizer, zero.ShardedOptimizer):
        optimizer.load_state_dict(saved)
    elif "zero" in saved:
        optimizer.load_state_dict(zero.full_state_dict(saved, model, optimizer.state_dict()["param_groups"]))
    else:
        optimizer.load_state_dict(saved)


def shard_of(optimizer: Any) -> tuple[str, dict[str, Any]] | None:
    """(file name, content) of the optimizer state this rank writes into a checkpoint itself; None when rank 0
    writes all of it (stage 0)."""
    if not isinstance(optimizer, zero.ShardedOptimizer):
        return None
    return zero.shard_file(optimizer.opts.rank, optimizer.opts.size), optimizer.shard_state()


def clip_grad_norm(optimizer: Any, model: nn.Module, max_norm: float) -> float:
    """Clip the averaged gradient to global 2-norm ``max_norm``; the norm before clipping."""
    if isinstance(optimizer, zero.ShardedOptimizer):
        return float(optimizer.clip_grad_norm(max_norm))
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))


def grad_scaler(device_type: str, init_scale: float, optimizer: Any) -> torch.amp.GradScaler:
    """fp16 loss scaler; over sharded gradients one that agrees on overflow across ranks."""
    cls = zero.AgreeingGradScaler if isinstance(optimizer, zero.ShardedOptimizer) else torch.amp.GradScaler
    return cls(device_type, init_scale=init_scale)
