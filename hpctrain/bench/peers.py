"""The loops `hpctrain bench compare` measures hpctrain against, as a user would write them:

  horovod  a minimal raw Horovod loop (hvd.DistributedOptimizer, broadcast, SGD), run under mpirun;
  ddp      PyTorch DistributedDataParallel launched by torchrun (gloo on CPU, nccl on GPU);
  torch    a plain single-process PyTorch loop, no distribution at all (the one-GPU reference);
  zero     DDP with ``torch.distributed.optim.ZeroRedundancyOptimizer`` (AdamW), by torchrun;
  fsdp     FSDP2: ``fully_shard`` on each Transformer layer and on the model (AdamW), by torchrun.

The last two are `hpctrain bench memory`'s peers: they also report the peak resident memory of their
largest rank, and with ``model.activation_checkpointing=true`` recompute the blocks hpctrain recomputes.

All train the model that the same ``section.key=value`` overrides as `hpctrain train` describe (a built-in
one, or a user's ``model.name = "package.module:callable"`` with ``model.args.*``, its synthetic samples
described by ``data.sample_shape``/``sample_kind``/``num_classes``), on the same synthetic data with the
same per-rank batch, threads and SGD kernel (fused), one GPU per rank where there are GPUs, copying each
batch from host memory as hpctrain does; each prints one JSON line: samples/s over the steps after warm-up,
from the slowest rank, and the figures hpctrain's summary.json has from the same meter (hpctrain.usage): CPU
seconds per sample and involuntary context switches per step of each rank, step-time percentiles. The
loss reads the logits from whatever the model returns (models.loss_fn: a tensor, a tuple, a dict or Hugging
Face's ``.logits``).

    python -m hpctrain.bench.peers horovod --steps 200 model.name=mlp model.width=2048 train.batch_size=64
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from hpctrain import memory, models, recompute
from hpctrain.config import Config, load
from hpctrain.data import synthetic
from hpctrain.data.pipeline import SampleShape, _synthetic_shape
from hpctrain.launchers import cpu_threads
from hpctrain.usage import StepUsage, summarise


def problem(cfg: Config, local_size: int, local_rank: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model on this rank's device, and 8 batches of samples in host memory."""
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cpu_threads(local_size))  # hpctrain's rule: a share of the cores per rank
    torch.manual_seed(cfg.train.seed)
    shape = sample_shape(cfg)
    x, y = synthetic.samples(cfg.train.batch_size * 8, shape.input_shape, shape.num_classes, cfg.train.seed,
                             shape.tokens)
    model = models.build(cfg.model)
    if cfg.model.activation_checkpointing:
        recompute.apply(model, recompute.blocks_for(cfg.model.name, cfg.model.recompute_modules,
                                                    models.is_builtin(cfg.model.name)))
    return model.to(device), torch.from_numpy(x), torch.from_numpy(y)


def sample_shape(cfg: Config) -> SampleShape:
    """One synthetic sample: a built-in model's own shape, or the data.* keys for a model given by import path
    (hpctrain's pipeline rule itself, not a copy of it, so both sides train on the same samples)."""
    spec = None
    if models.is_builtin(cfg.model.name):
        s = models.sample_spec(cfg.model)
        spec = SampleShape(s.input_shape, s.input_dtype == torch.int64, s.num_classes)
    return _synthetic_shape(cfg.data, spec)


def sgd(params: Any, cfg: Config) -> torch.optim.Optimizer:
    # fused: the update kernel hpctrain uses by default (optim.fused), so that the comparison measures the
    # distributed machinery, not the optimizer kernel
    return torch.optim.SGD(params, lr=cfg.optim.lr, momentum=0.9, fused=True)


def train_step(forward: torch.nn.Module, opt: torch.optim.Optimizer) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step as a user writes it; ``forward`` is the model or its DDP wrapper."""
    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        opt.zero_grad()
        models.loss_fn(forward(xb), yb).backward()
        opt.step()

    return step


def timed_loop(step: Callable[[torch.Tensor, torch.Tensor], None], x: torch.Tensor, y: torch.Tensor,
               device: torch.device, batch: int, steps: int, warmup: int) -> tuple[float, int, list[float]]:
    """Seconds for the steps after warm-up (the same count as hpctrain's measured steps), and this rank's
    :class:`StepUsage` row over them (the step clock read as hpctrain's is: once per step, no device
    sync). On a GPU the total is read with the device idle, so queued kernels count in their steps."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = len(x) // batch
    start = 0.0
    usage = StepUsage()
    for i in range(steps):
        if i == warmup:
            sync()
            start = time.perf_counter()
            usage.start(start)
        a = (i % n) * batch
        step(x[a:a + batch].to(device), y[a:a + batch].to(device))
        if i >= warmup:
            usage.step(time.perf_counter())
    sync()
    seconds = time.perf_counter() - start
    usage.finish()
    return seconds, steps - warmup, usage.row()


def figures(table: torch.Tensor, seconds: float, steps: int, batch: int) -> dict[str, Any]:
    """samples/s from the slowest rank's ``seconds``, and the usage figures from every rank's row."""
    ranks = len(table)
    return {"samples_per_sec": steps * batch * ranks / seconds, **summarise(table.numpy(), steps, batch)}


def run_horovod(cfg: Config, args: argparse.Namespace) -> dict:
    import horovod.torch as hvd

    hvd.init()
    model, x, y = problem(cfg, hvd.local_size(), hvd.local_rank())
    opt = sgd(model.parameters(), cfg)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(), op=hvd.Average)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    device = next(model.parameters()).device
    seconds, steps, usage = timed_loop(train_step(model, opt), x, y, device, cfg.train.batch_size, args.steps,
                                       args.warmup)
    slowest = float(hvd.allreduce(torch.tensor(seconds), op=hvd.Max, name="bench.time"))
    table = hvd.allgather(torch.tensor([usage], dtype=torch.float64), name="bench.usage")
    return {"impl": "horovod", "ranks": hvd.size(), "rank": hvd.rank(), "threads": torch.get_num_threads(),
            "device": str(device), **figures(table, slowest, steps, cfg.train.batch_size)}


def run_ddp(cfg: Config, args: argparse.Namespace) -> dict:
    def wrap(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        return ddp, sgd(ddp.parameters(), cfg)

    return run_torch_distributed(cfg, args, "ddp", wrap)


def run_sharded(cfg: Config, args: argparse.Namespace, kind: str) -> dict:
    """PyTorch's own answers to sharded state, trained with AdamW as `hpctrain bench memory` trains hpctrain:
    ``zero`` (DDP and ZeroRedundancyOptimizer: optimizer state sharded, like ZeRO-1) or ``fsdp`` (FSDP2,
    parameters too, like ZeRO-3)."""

    # the fused AdamW kernel, as hpctrain's optim.fused default uses
    def wrap(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        if kind == "zero":
            from torch.distributed.optim import ZeroRedundancyOptimizer

            ddp = torch.nn.parallel.DistributedDataParallel(model)
            return ddp, ZeroRedundancyOptimizer(ddp.parameters(), torch.optim.AdamW, lr=cfg.optim.lr, fused=True)
        from torch.distributed.fsdp import fully_shard

        for block in [m for m in model.modules() if isinstance(m, torch.nn.TransformerEncoderLayer)]:
            fully_shard(block)
        fully_shard(model)
        # fully_shard changes the module's class in place; its forward gathers the parameters
        return model, torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, fused=True)

    return run_torch_distributed(cfg, args, kind, wrap)


def run_torch_distributed(cfg: Config, args: argparse.Namespace, kind: str,
                          wrap: Callable[[torch.nn.Module], tuple[torch.nn.Module, torch.optim.Optimizer]]) -> dict:
    """A torchrun process: the process group, the model that ``wrap`` makes distributed with its optimizer,
    the timed loop, and the figures of every rank (the slowest rank's time, the largest rank's memory)."""
    import torch.distributed as dist

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
    model, x, y = problem(cfg, local_size, int(os.environ.get("LOCAL_RANK", 0)))
    device = next(model.parameters()).device
    forward, opt = wrap(model)
    seconds, steps, usage = timed_loop(train_step(forward, opt), x, y, device, cfg.train.batch_size, args.steps,
                                       args.warmup)
    cuda_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    # nccl reduces device tensors only
    worst = torch.tensor([seconds, memory.peak_rss_bytes(), cuda_peak], dtype=torch.float64, device=device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    rows = [torch.zeros(len(usage), dtype=torch.float64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, torch.tensor(usage, dtype=torch.float64, device=device))
    result = {"impl": kind, "ranks": dist.get_world_size(), "rank": dist.get_rank(),
              "threads": torch.get_num_threads(), "device": str(device), "peak_rss_bytes": int(worst[1]),
              "num_parameters": sum(p.numel() for p in model.parameters()),
              **figures(torch.stack(rows).cpu(), float(worst[0]), steps, cfg.train.batch_size)}
    if device.type == "cuda":
        result["cuda_max_allocated_bytes"] = int(worst[2])
    dist.barrier()  # measured: without it, a rank tearing down gloo first aborts its peer now and then
    dist.destroy_process_group()
    return result


def run_torch(cfg: Config, args: argparse.Namespace) -> dict:
    model, x, y = problem(cfg, 1, 0)
    device = next(model.parameters()).device
    opt = sgd(model.parameters(), cfg)
    seconds, steps, usage = timed_loop(train_step(model, opt), x, y, device, cfg.train.batch_size, args.steps,
                                       args.warmup)
    return {"impl": "torch", "ranks": 1, "rank": 0, "threads": torch.get_num_threads(), "device": str(device),
            **figures(torch.tensor([usage], dtype=torch.float64), seconds, steps, cfg.train.batch_size)}


RUNNERS = {"horovod": run_horovod, "ddp": run_ddp, "torch": run_torch,
           "zero": lambda cfg, args: run_sharded(cfg, args, "zero"),
           "fsdp": lambda cfg, args: run_sharded(cfg, args, "fsdp")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("impl", choices=sorted(RUNNERS))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("overrides", nargs="*", help="section.key=value, as for hpctrain train (model.*, "
                                                 "train.batch_size, train.seed, optim.lr, data.sample_shape, "
                                                 "data.sample_kind, data.num_classes)")
    args = p.parse_intermixed_args()
    result = RUNNERS[args.impl](load(None, args.overrides), args)
    if result.pop("rank") == 0:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
