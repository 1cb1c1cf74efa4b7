"""What a run reports: metrics.jsonl (rank 0), the progress bar, the end-of-run summary.json.

Throughput is measured on every rank, after the untimed first steps (train.untimed_steps), and reduced
across ranks (min/mean/max): never rank 0's rate times the world size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import horovod.torch as hvd
import numpy as np
import torch
from torch import nn

from hpctrain.config import RunConfig
from hpctrain.files import write_atomic
from hpctrain.runtime import Runtime

log = logging.getLogger(__name__)


def params_sha256(model: nn.Module) -> str:
    """SHA-256 over every parameter's name, dtype, shape and bytes, in registration order."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


# The step-time breakdown, in the order Trainer measures it: reading the batch, forward + backward (the
# all-reduces start during backward), waiting for the all-reduces still running, the optimizer update.
PHASES = ("data", "forward_backward", "allreduce_wait", "optimizer")


def _breakdown(table: torch.Tensor, steps: int) -> dict[str, float]:
    """Mean over ranks of the milliseconds per step in each phase (``table``: ranks x phases, seconds)."""
    per_step = table.mean(dim=0) * 1000 / max(steps, 1)
    return {name: float(v) for name, v in zip(PHASES, per_step, strict=True)}


def _stats(values: torch.Tensor) -> dict[str, float]:
    return {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max())}


class Metrics:
    """Collects per-step timings on every rank; every ``log_every`` steps agrees on loss and rates."""

    def __init__(self, cfg: RunConfig, rt: Runtime, run_dir: Path, total_steps: int, batch_size: int,
                 untimed_steps: int) -> None:
        self.cfg = cfg
        self.rt = rt
        self.run_dir = run_dir
        self.batch_size = batch_size
        self.untimed_steps = untimed_steps  # as configured; _untimed is what is left of them in this segment
        self.total_steps = total_steps
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self._interval_start = time.perf_counter()
        self._interval_steps = 0
        self._untimed = untimed_steps
        self._untimed_end = untimed_steps
        self._measure_start: float | None = None  # perf_counter at the end of the last untimed step
        self._measured_steps = 0
        self._last_step_end = time.perf_counter()
        self._interval_phases = np.zeros(len(PHASES))
        self._measured_phases = np.zeros(len(PHASES))
        self._interval_aligned = False
        self._started = time.time()
        self._jsonl = open(run_dir / "metrics.jsonl", "a") if rt.is_root else None  # noqa: SIM115
        self._tb = None
        if rt.is_root and cfg.tensorboard:
            from hpctrain.tboard import TensorBoardLog

            self._tb = TensorBoardLog(run_dir / "tensorboard")
        show = cfg.progress == "on" or (cfg.progress == "auto" and sys.stderr.isatty())
        self._bar = None
        if rt.is_root and show:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr)

    def set_runtime(self, rt: Runtime, step: int) -> None:
        """After an elastic reset: rank and world size may have changed (a new rank 0 takes the log), and
        throughput is measured afresh, so the summary's figures are those of the final world."""
        self.rt = rt
        self._measure_from(step)
        if rt.is_root and self._jsonl is None:
            self._jsonl = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115
        elif not rt.is_root and self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def start(self, step: int) -> None:
        """Call once before the first step (``step`` > 0 when resuming): untimed steps count from here."""
        self._measure_from(step)
        if self._bar is not None:
            self._bar.update(step)

    def _measure_from(self, step: int) -> None:
        now = time.perf_counter()
        self._interval_start = now
        self._interval_steps = 0
        self._interval_phases[:] = 0
        self._untimed = min(self.untimed_steps, self.total_steps - step - 1)
        self._untimed_end = step + self._untimed
        self._measure_start = now if self._untimed <= 0 else None
        self._measured_steps = 0
        self._measured_phases[:] = 0
        self._interval_aligned = False  # see step_done

    def step_done(self, step: int, loss: torch.Tensor, lr: float, phases: np.ndarray | None = None) -> None:
        """Record one finished step (1-based ``step``) and its seconds per phase (:data:`PHASES`); at log
        steps this is a collective on all ranks."""
        log_step = not (step % self.cfg.log_every and step != self.total_steps and step != 1)
        if self.rt.device.type == "cuda" and (log_step or step == self._untimed_end):
            # the host runs ahead of the GPU: read the clock where intervals start and end with the queue
            # drained, so each interval's throughput counts the kernels its steps launched (one wait per log)
            torch.cuda.synchronize(self.rt.device)
        now = time.perf_counter()
        self._last_step_end = now
        self._interval_steps += 1
        if phases is not None:
            self._interval_phases += phases
        if step == self._untimed_end and self._measure_start is None:
            self._measure_start = now
        elif step > self._untimed_end:
            self._measured_steps += 1
            if phases is not None:
                self._measured_phases += phases
        if self._bar is not None:
            self._bar.update(1)
        if not log_step:
            return
        elapsed = now - self._interval_start
        # dist: one small allgather gives every rank's loss and interval time
        row = torch.tensor([[float(loss.detach()), elapsed, *self._interval_phases]], dtype=torch.float64)
        table = self._gather_ranks(row, "hpctrain.metrics")
        mean_loss = float(table[:, 0].mean())
        # dist: every interval ends on all ranks together (the step's all-reduce), and after the first log step
        # also starts together (this allgather). The first one starts wherever each rank finished setting up,
        # so a late rank's short first interval would claim a rate above the job's. No rank of a synchronous
        # job runs faster than the job: until the intervals are aligned, each rank's rate is over the job's.
        seconds = table[:, 1] if self._interval_aligned else table[:, 1].max().expand(len(table))
        per_rank_rate = self._interval_steps * self.batch_size / seconds
        record: dict[str, Any] = {
            "step": step,
            "loss": mean_loss,
            "lr": lr,
            "samples_per_sec": float(self._interval_steps * self.batch_size * self.rt.size / table[:, 1].max()),
            "samples_per_sec_per_rank": _stats(per_rank_rate),
            "step_time_ms": _stats(table[:, 1] * 1000 / self._interval_steps),
            "breakdown_ms": _breakdown(table[:, 2:], self._interval_steps),
            "time": time.time(),
        }
        if self.first_loss is None:
            self.first_loss = mean_loss
        self.last_loss = mean_loss
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.scalars(step, record)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{mean_loss:.4f}", sps=f"{record['samples_per_sec']:.0f}")
        elif self.rt.is_root:
            log.info("step %d/%d loss %.4f  %.0f samples/s (%.0f/rank)  step %.1f ms", step, self.total_steps,
                     mean_loss, record["samples_per_sec"], record["samples_per_sec_per_rank"]["mean"],
                     record["step_time_ms"]["mean"])
        self._interval_start = time.perf_counter()
        self._interval_steps = 0
        self._interval_phases[:] = 0
        self._interval_aligned = True

    def record_eval(self, step: int, result: dict[str, Any], seconds: float = 0.0) -> None:
        """Rank 0 appends a validation record to metrics.jsonl; the ``seconds`` it took are left out of
        the training throughput."""
        self._interval_start += seconds
        if self._measure_start is not None:
            self._measure_start += seconds
        record = {"step": step, **{k: v for k, v in result.items() if k.startswith("val_")}, "time": time.time()}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.scalars(step, record, prefix="val")
        if self.rt.is_root and self._bar is None:
            log.info("step %d validation: %s", step, "  ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                if k.startswith("val_")))

    def _gather_ranks(self, row: torch.Tensor, name: str) -> torch.Tensor:
        """Every rank's ``row``, stacked in rank order (a collective); with one rank just ``row``, so as not
        to wait for a Horovod cycle (runtime.SINGLE_RANK_CYCLE_MS)."""
        return hvd.allgather(row, name=name) if self.rt.size > 1 else row  # dist

    def summary(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Throughput after the untimed steps, reduced over ranks (a collective); rank 0 writes summary.json."""
        end = self._last_step_end  # throughput of the training steps: not of the evaluation or checkpoint after
        elapsed = end - self._measure_start if self._measure_start is not None else float("nan")
        steps = self._measured_steps
        row = torch.tensor([[elapsed, float(steps), *self._measured_phases]], dtype=torch.float64)
        table = self._gather_ranks(row, "hpctrain.summary")
        per_rank = table[:, 1] * self.batch_size / table[:, 0]
        summary = {
            "final_loss": self.last_loss,
            "initial_loss": self.first_loss,
            "world_size": self.rt.size,
            "batch_size": self.batch_size,
            "global_batch_size": self.batch_size * self.rt.size,
            "measured_steps": steps,
            "untimed_steps": self._untimed,
            "samples_per_sec": float(steps * self.batch_size * self.rt.size / table[:, 0].max()),
            "samples_per_sec_per_rank": _stats(per_rank),
            "step_time_ms": _stats(table[:, 0] * 1000 / max(steps, 1)),
            "breakdown_ms": _breakdown(table[:, 2:], steps),
            "wall_time_s": time.time() - self._started,
            **extra,
        }
        if self.rt.is_root:
            write_json_atomic(self.run_dir / "summary.json", summary)
        return summary

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
