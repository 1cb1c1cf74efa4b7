"""Activation checkpointing (``model.activation_checkpointing``): chosen blocks keep only their inputs for
backward and run their forward again there (``torch.utils.checkpoint``, non-reentrant), trading compute
for the memory of every activation inside them.

The blocks are patched in place (their ``forward``), not wrapped in a new module, so parameter names, and
with them checkpoints and ``model.pt``, are the same with and without it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hpctrain.config import ConfigError

# The blocks of the built-in models (hpctrain.models): a transformer layer, a residual block, an MLP layer.
BUILTIN_BLOCKS = {"transformer": ["TransformerEncoderLayer"], "cnn": ["ResidualBlock"], "mlp": ["Linear"]}


def recomputed(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # evaluation: nothing is kept for backward anyway
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def apply(model: nn.Module, names: list[str], key: str = "model.recompute_modules") -> list[str]:
    """Recompute every module whose class name or module name (``fnmatch`` pattern: ``layers.*``) is in
    ``names``; the module names chosen. Nested matches: the outermost one only."""
    chosen: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(c + ".") for c in chosen):
            continue
        if any(type(module).__name__ == n or fnmatch.fnmatchcase(name, n) for n in names):
            module.forward = recomputed(module.forward)
            chosen.append(name)
    if not chosen:
        raise ConfigError(f"{key}: {names} names no module of the model (give class names such as "
                          f"{type(next(iter(model.children()), model)).__name__!r} or module names such as "
                          f"{next((n for n, _ in model.named_modules() if n), '0')!r})")
    return chosen


def blocks_for(model_name: str, given: list[str], builtin: bool) -> list[str]:
    """What to recompute: the names given, else the built-in model's blocks."""
    if given:
        return given
    if builtin and model_name in BUILTIN_BLOCKS:
        return BUILTIN_BLOCKS[model_name]
    raise ConfigError("model.recompute_modules: name the blocks of your model to recompute (class names or "
                      "module names) with model.activation_checkpointing = true")
