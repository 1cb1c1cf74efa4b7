"""TensorBoard event files for a run: loss, learning rate, throughput, step-time breakdown, validation."""

from __future__ import annotations

import os
from typing import Any

from hpctrain.errors import UserError

_SKIP = ("step", "time")  # so a metrics.jsonl record can be passed as it is: these are not scalars to plot


class TensorBoardError(UserError):
    """TensorBoard logging was asked for but the ``tensorboard`` package is not installed."""


def _flatten(values: dict[str, Any], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}/{key}"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
    return out


class TensorBoardLog:
    """Scalars into TensorBoard event files under ``log_dir``; create it on rank 0 only (file I/O).

    Args:
        log_dir: directory for the event files (created if missing).
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TensorBoardError("run.tensorboard: TensorBoard logging needs the tensorboard package: "
                                   "pip install tensorboard==2.21.0, or set run.tensorboard = false") from None
        self._writer = SummaryWriter(log_dir=os.fspath(log_dir))

    def scalars(self, step: int, values: dict[str, Any], prefix: str = "train") -> None:
        """Log every number in ``values`` at ``step`` as ``prefix/key``.

        Nested dicts are flattened (``breakdown_ms={"data": 1.0}`` becomes ``train/breakdown_ms/data``);
        the keys ``step`` and ``time`` and values that are not numbers (strings, None, booleans) are skipped.
        """
        for tag, value in _flatten({k: v for k, v in values.items() if k not in _SKIP}, prefix).items():
            self._writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file; the log cannot be written after this."""
        self._writer.close()
