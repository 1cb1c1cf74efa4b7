"""Learning-rate scaling with world size and the per-step schedule (warmup, then decay).

Pure functions of their arguments: the trainer asks ``lr_at(step, schedule)`` before each step and sets the
result with ``apply_lr``, so a resumed run needs no scheduler state beyond the step count. A *step* is one
optimizer update (the vocabulary of ``docs/``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from hpctrain.config import OptimConfig

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


@dataclass(frozen=True)
class Schedule:
    """What the learning rate depends on besides the position: the optim section's settings, with the peak
    already scaled for the world size and the run's length in steps.

    After warmup, with ``t`` steps into the decay and ``T = max(1, total_steps - warmup_steps)``:

    - ``"constant"``: ``peak_lr``.
    - ``"cosine"``: ``min_lr + (peak_lr - min_lr) * 0.5 * (1 + cos(pi * min(t, T) / T))``
      (Loshchilov & Hutter 2017, without restarts); stays at ``min_lr`` past ``total_steps``.
    - ``"poly"``: ``min_lr + (peak_lr - min_lr) * (1 - min(t, T) / T) ** power``; ``power=1`` is linear decay,
      ``power=2`` the LARS papers' choice; stays at ``min_lr`` past ``total_steps``.
    - ``"step"``: ``peak_lr * gamma ** (t // step_size)``; ``min_lr`` is not used.

    Raises:
        ValueError: unknown ``decay``, ``warmup_steps < 0``, or ``"step"`` with ``step_size <= 0``.
    """

    peak_lr: float
    """learning rate at the end of warmup (already scaled, see :func:`scaled_lr`)"""
    total_steps: int
    """length of the run in steps, warmup included"""
    warmup_steps: int = 0
    """steps of linear warmup, >= 0 (0: start at ``peak_lr``)"""
    decay: str = "constant"
    """one of :data:`DECAYS`"""
    min_lr: float = 0.0
    """floor reached at ``total_steps`` by ``"cosine"`` and ``"poly"``"""
    power: float = 1.0
    """exponent of ``"poly"``"""
    step_size: int = 0
    """steps between two multiplications by ``gamma`` in ``"step"``; must be > 0 there"""
    gamma: float = 0.1
    """factor of ``"step"``"""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay not in DECAYS:
            raise ValueError(f"unknown lr decay {self.decay!r}; valid: {', '.join(DECAYS)}")
        if self.decay == "step" and self.step_size <= 0:
            raise ValueError(f"step decay needs step_size > 0, got {self.step_size}")

    @classmethod
    def from_config(cls, optim: OptimConfig, total_steps: int, world_size: int) -> Schedule:
        """The schedule of ``optim`` (``[optim]``) for a run of ``total_steps`` steps (``train.steps``), its
        peak scaled for ``world_size`` ranks (``optim.lr_scaling``)."""
        return cls(scaled_lr(optim.lr, world_size, optim.lr_scaling), total_steps, optim.warmup_steps,
                   optim.decay, optim.min_lr, optim.power, optim.step_size, optim.gamma)


def lr_at(step: int, s: Schedule) -> float:
    """The learning rate for the update made after ``step`` updates (0-based: ``step=0`` is the first update).

    Warmup, for ``step < warmup_steps``: linear from ``peak_lr / warmup_steps`` to ``peak_lr``,
    ``peak_lr * (step + 1) / warmup_steps``, so the last warmup step already uses ``peak_lr``. Then the decay
    of :class:`Schedule`, with ``t = step - warmup_steps``.

    Raises:
        ValueError: ``step < 0``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < s.warmup_steps:
        return s.peak_lr * (step + 1) / s.warmup_steps
    t = step - s.warmup_steps
    total = max(1, s.total_steps - s.warmup_steps)
    if s.decay == "constant":
        return s.peak_lr
    if s.decay == "cosine":
        return s.min_lr + (s.peak_lr - s.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    if s.decay == "poly":
        return s.min_lr + (s.peak_lr - s.min_lr) * (1.0 - min(t, total) / total) ** s.power
    return s.peak_lr * s.gamma ** (t // s.step_size)


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` in every parameter group of ``optimizer``.

    Works on a ``hvd.DistributedOptimizer`` too: it shares ``param_groups`` with the optimizer it wraps.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
