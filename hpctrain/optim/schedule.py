"""Learning-rate scaling with world size and the schedule (warmup, then decay).

Pure functions of their arguments: before each step the trainer asks :func:`lr_at_samples` for the rate of
the update on the next global batch and sets it with ``apply_lr``, so a resumed run needs no scheduler state
beyond the number of samples trained on. A *step* is one optimizer update (the vocabulary of ``docs/``).

The schedule's position is a count of samples, not of steps, so that warm-up and decay keep their length in
data when a resumed run has another world size (and so another global batch). Its lengths are given in steps
(``optim.warmup_steps``, ``train.steps``, ``optim.step_size``) and converted to samples at
:attr:`Schedule.batch` samples per step: the global batch the run started with. A run whose global batch
never changes gets exactly the rates of the by-step rule (:func:`lr_at`), bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
        ValueError: unknown ``decay``, ``warmup_steps < 0``, ``batch < 1``, or ``"step"`` with
            ``step_size <= 0``.
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
    batch: int = 1
    """samples per step that convert the step counts above into samples (1: positions are steps)"""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay not in DECAYS:
            raise ValueError(f"unknown lr decay {self.decay!r}; valid: {', '.join(DECAYS)}")
        if self.decay == "step" and self.step_size <= 0:
            raise ValueError(f"step decay needs step_size > 0, got {self.step_size}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")

    @classmethod
    def from_config(cls, optim: OptimConfig, total_steps: int, world_size: int, batch: int) -> Schedule:
        """The schedule of ``optim`` (``[optim]``) for a run of ``total_steps`` steps (``train.steps``), its
        peak scaled for ``world_size`` ranks (``optim.lr_scaling``), its step counts converted to samples at
        ``batch`` samples per step."""
        return cls(scaled_lr(optim.lr, world_size, optim.lr_scaling), total_steps, optim.warmup_steps,
                   optim.decay, optim.min_lr, optim.power, optim.step_size, optim.gamma, batch)


def lr_at_samples(seen: int, batch: int, s: Schedule) -> float:
    """The learning rate of the update on a global batch of ``batch`` samples, after ``seen`` samples.

    Warmup, while ``seen < warmup_steps * s.batch``: linear in the samples trained on once this update is
    made, ``peak_lr * min(seen + batch, W) / W`` with ``W`` the warmup's samples, so the last warmup update
    already uses ``peak_lr``. Then the decay of :class:`Schedule`, with ``t / T`` and ``t // step_size``
    measured in samples (``seen`` minus the warmup's samples, over ``T`` or ``step_size`` steps' samples).

    With ``seen = step * s.batch`` and ``batch = s.batch`` this is ``lr_at(step, s)``, bit for bit.

    Raises:
        ValueError: ``seen < 0`` or ``batch < 1``.
    """
    if seen < 0:
        raise ValueError(f"samples seen must be >= 0, got {seen}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    # in steps of s.batch samples: whole numbers (exact floats) at that batch, so the arithmetic below is the
    # by-step rule's, operation for operation, and a run that keeps its batch gets its rates bit for bit
    if seen < s.warmup_steps * s.batch:
        done = (seen + batch) / s.batch
        return s.peak_lr * min(done, s.warmup_steps) / s.warmup_steps
    t = seen / s.batch - s.warmup_steps
    total = max(1, s.total_steps - s.warmup_steps)
    if s.decay == "constant":
        return s.peak_lr
    if s.decay == "cosine":
        return s.min_lr + (s.peak_lr - s.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    if s.decay == "poly":
        return s.min_lr + (s.peak_lr - s.min_lr) * (1.0 - min(t, total) / total) ** s.power
    # whole decays only: integer samples, so a batch change cannot round a boundary early or late
    return s.peak_lr * s.gamma ** ((seen - s.warmup_steps * s.batch) // (s.step_size * s.batch))


def lr_at(step: int, s: Schedule) -> float:
    """The learning rate for the update made after ``step`` updates (0-based: ``step=0`` is the first update),
    every update training on ``s.batch`` samples: ``peak_lr * (step + 1) / warmup_steps`` during warmup, then
    the decay of :class:`Schedule` with ``t = step - warmup_steps``.

    Raises:
        ValueError: ``step < 0``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return lr_at_samples(step * s.batch, s.batch, s)


def position_from_state(state: Mapping[str, Any]) -> tuple[int, int]:
    """(samples trained on, :attr:`Schedule.batch`) recorded in a checkpoint's train state. Checkpoints
    written before these were recorded give ``step x world_size x batch_size`` and that global batch: the
    best guess, exact unless the world size had already changed once before them."""
    global_batch = int(state["world_size"]) * int(state["batch_size"])
    return (int(state.get("samples_seen", int(state["step"]) * global_batch)),
            int(state.get("schedule_batch", global_batch)))


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` in every parameter group of ``optimizer``.

    Works on a ``hvd.DistributedOptimizer`` too: it shares ``param_groups`` with the optimizer it wraps.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
