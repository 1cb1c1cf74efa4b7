"""Learning-rate scaling with world size and the per-step schedule (warmup, then decay).

Pure functions of their arguments: the trainer asks ``lr_at(step, ...)`` before each step and sets the
result with ``apply_lr``, so a resumed run needs no scheduler state beyond the step count. A *step* is one
optimizer update (the vocabulary of ``docs/``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SCALING_RULES = ("none", "linear", "sqrt")
DECAYS = ("constant", "cosine", "poly", "step")


def scaled_lr(base_lr: float, world_size: int, rule: str) -> float:
    """The peak learning rate for ``world_size`` ranks, given one tuned for a single rank's batch.

    Args:
        base_lr: learning rate tuned for the per-rank batch size.
        world_size: number of ranks; the global batch is ``world_size`` times the per-rank batch.
        rule: ``"none"`` keeps ``base_lr``; ``"linear"`` multiplies it by ``world_size`` (Goyal et al. 2017,
            "Accurate, Large Minibatch SGD", for SGD with warmup); ``"sqrt"`` multiplies it by
            ``sqrt(world_size)`` (Hoffer et al. 2017, Krizhevsky 2014; the usual choice for adaptive
            optimizers such as Adam and LAMB).

    Raises:
        ValueError: unknown ``rule`` or ``world_size < 1``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if rule == "none":
        return base_lr
    if rule == "linear":
        return base_lr * world_size
    if rule == "sqrt":
        return base_lr * math.sqrt(world_size)
    raise ValueError(f"unknown lr scaling rule {rule!r}; valid: {', '.join(SCALING_RULES)}")


def lr_at(step: int, peak_lr: float, total_steps: int, warmup_steps: int, decay: str, min_lr: float = 0.0,
          power: float = 1.0, step_size: int = 0, gamma: float = 0.1) -> float:
    """The learning rate for the update made after ``step`` updates (0-based: ``step=0`` is the first update).

    Warmup, for ``step < warmup_steps``: linear from ``peak_lr / warmup_steps`` to ``peak_lr``,
    ``peak_lr * (step + 1) / warmup_steps``, so the last warmup step already uses ``peak_lr``.

    After warmup, with ``t = step - warmup_steps`` and ``T = max(1, total_steps - warmup_steps)``:

    - ``"constant"``: ``peak_lr``.
    - ``"cosine"``: ``min_lr + (peak_lr - min_lr) * 0.5 * (1 + cos(pi * min(t, T) / T))``
      (Loshchilov & Hutter 2017, without restarts); stays at ``min_lr`` past ``total_steps``.
    - ``"poly"``: ``min_lr + (peak_lr - min_lr) * (1 - min(t, T) / T) ** power``; ``power=1`` is linear decay,
      ``power=2`` the LARS papers' choice; stays at ``min_lr`` past ``total_steps``.
    - ``"step"``: ``peak_lr * gamma ** (t // step_size)``; ``min_lr`` is not used.

    Args:
        step: updates already taken, >= 0.
        peak_lr: learning rate at the end of warmup (already scaled, see :func:`scaled_lr`).
        total_steps: length of the run in updates, warmup included.
        warmup_steps: updates of linear warmup, >= 0 (0: start at ``peak_lr``).
        decay: one of ``"constant"``, ``"cosine"``, ``"poly"``, ``"step"``.
        min_lr: floor reached at ``total_steps`` by ``"cosine"`` and ``"poly"``.
        power: exponent of ``"poly"``.
        step_size: updates between two multiplications by ``gamma`` in ``"step"``; must be > 0 there.
        gamma: factor of ``"step"``.

    Raises:
        ValueError: unknown ``decay``, ``step < 0``, ``warmup_steps < 0``, or ``"step"`` with ``step_size <= 0``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if decay not in DECAYS:
        raise ValueError(f"unknown lr decay {decay!r}; valid: {', '.join(DECAYS)}")
    if decay == "step" and step_size <= 0:
        raise ValueError(f"step decay needs step_size > 0, got {step_size}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    t = step - warmup_steps
    total = max(1, total_steps - warmup_steps)
    if decay == "constant":
        return peak_lr
    if decay == "cosine":
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    if decay == "poly":
        return min_lr + (peak_lr - min_lr) * (1.0 - min(t, total) / total) ** power
    return peak_lr * gamma ** (t // step_size)


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` in every parameter group of ``optimizer``.

    Works on a ``hvd.DistributedOptimizer`` too: it shares ``param_groups`` with the optimizer it wraps.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
