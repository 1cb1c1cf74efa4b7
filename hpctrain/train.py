"""The training loop, readable top to bottom. It composes config, runtime, data, model, optimizer and
metrics; the policy of each stays in its own module."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import horovod
import horovod.torch as hvd
import numpy as np
import torch

import hpctrain
from hpctrain import config as config_mod
from hpctrain import models, optim
from hpctrain.config import Config
from hpctrain.data import synthetic
from hpctrain.data.sampler import GlobalBatchSampler
from hpctrain.metrics import Metrics, params_sha256
from hpctrain.runtime import Runtime, rank_seed, seed_everything

log = logging.getLogger(__name__)


class InMemoryDataset:
    """Input and target arrays held by every rank; batches are gathered by index."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        self.inputs = torch.from_numpy(inputs)
        self.targets = torch.from_numpy(targets)

    def __len__(self) -> int:
        return len(self.inputs)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(indices)
        return self.inputs[idx], self.targets[idx]


def build_dataset(cfg: Config) -> InMemoryDataset:
    spec = models.sample_spec(cfg.model)
    if spec.input_dtype == torch.int64:
        x, y = synthetic.token_sequences(cfg.data.samples, cfg.model.seq_len, spec.num_classes, cfg.train.seed)
    else:
        x, y = synthetic.classification(cfg.data.samples, spec.input_shape, spec.num_classes, cfg.train.seed)
    return InMemoryDataset(x, y)


class Trainer:
    """One data-parallel training run on this rank. Extend by subclassing ``train_step``."""

    def __init__(self, cfg: Config, rt: Runtime) -> None:
        self.cfg = cfg
        self.rt = rt
        self.run_dir = Path(cfg.run.dir)
        if rt.is_root:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(config_mod.to_toml(cfg))
        self.dataset = build_dataset(cfg)
        self.sampler = GlobalBatchSampler(len(self.dataset), cfg.train.batch_size, rt.rank, rt.size,
                                          cfg.train.seed, cfg.data.remainder)
        seed_everything(cfg.train.seed)  # same initial weights on every rank, before the broadcast
        self.model = models.build(cfg.model).to(rt.device)
        self.optimizer = optim.build(self.model, cfg.optim, cfg.comm)
        optim.broadcast_state(self.model, self.optimizer)
        seed_everything(rank_seed(cfg.train.seed, rt.rank))  # dist: per-rank randomness from here on
        self.step = 0
        hvd.barrier()  # dist: rank 0 has created run_dir before any rank opens files in it
        self.metrics = Metrics(cfg.run, rt, self.run_dir, cfg.train.steps, cfg.train.batch_size,
                               cfg.train.warmup_steps)

    def train_step(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss = models.loss_fn(self.model(inputs), target)
        loss.backward()  # dist: gradients are all-reduced in the background as they are produced
        self.optimizer.step()  # dist: waits for the all-reduces, then applies the averaged gradients
        return loss

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        self.model.train()
        self.metrics.start(self.step)
        while self.step < cfg.train.steps:
            inputs, target = self.dataset.batch(self.sampler.next_indices())
            loss = self.train_step(inputs.to(self.rt.device), target.to(self.rt.device))
            self.step += 1
            self.metrics.step_done(self.step, loss, self.optimizer.param_groups[0]["lr"])
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Summary on every rank (collective); rank 0 writes summary.json and the final weights."""
        extra = {
            "steps": self.step,
            "params_sha256": params_sha256(self.model),
            "num_parameters": models.num_parameters(self.model),
            "model": self.cfg.model.name,
            "compression": self.cfg.comm.compression,
            "launcher": self.rt.launch.launcher,
            "controller": self.rt.controller,
            "device": str(self.rt.device),
            "threads_per_rank": self.rt.threads,
            "versions": {"hpctrain": hpctrain.__version__, "torch": torch.__version__,
                         "horovod": horovod.__version__},
        }
        summary = self.metrics.summary(extra)
        if self.rt.is_root:
            tmp = self.run_dir / ".model.pt.tmp"
            torch.save(self.model.state_dict(), tmp)
            tmp.replace(self.run_dir / "model.pt")
        return summary

    def close(self) -> None:
        self.metrics.close()


def describe_summary(summary: dict[str, Any], run_dir: Path) -> str:
    """The few lines a person reads at the end of a run."""
    rate = summary["samples_per_sec"]
    per_rank = summary["samples_per_sec_per_rank"]["mean"]
    return (f"trained {summary['model']} for {summary['steps']} steps on {summary['world_size']} rank(s) "
            f"({summary['launcher']}, {summary['controller']} controller, compression {summary['compression']})\n"
            f"  loss {summary['initial_loss']:.4f} -> {summary['final_loss']:.4f}\n"
            f"  throughput {rate:,.0f} samples/s global, {per_rank:,.0f} samples/s per rank, "
            f"step {summary['step_time_ms']['mean']:.1f} ms (after {summary['warmup_steps']} warm-up steps)\n"
            f"  outputs in {run_dir}/: metrics.jsonl, summary.json, config.toml, model.pt\n"
            f"  params_sha256 {summary['params_sha256']}")


def run(cfg: Config, rt: Runtime) -> dict[str, Any]:
    trainer = Trainer(cfg, rt)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    if rt.is_root:
        log.info("done\n%s", describe_summary(summary, trainer.run_dir))
    return summary
