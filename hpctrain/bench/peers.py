"""The two loops `hpctrain bench compare` measures hpctrain against, as a user would write them:

  horovod  a minimal raw Horovod loop (hvd.DistributedOptimizer, broadcast, SGD), run under mpirun;
  ddp      PyTorch DistributedDataParallel launched by torchrun (gloo on CPU, nccl on GPU).

Both train the same registry model on the same synthetic data with the same per-rank batch, threads and SGD
kernel (fused) as `hpctrain train`, and print one JSON line: samples/s over the steps after warm-up, from the
slowest rank.

    python -m hpctrain.bench.peers horovod|ddp --model mlp --width 2048 --depth 6 --batch 64 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch

from hpctrain import models
from hpctrain.config import ModelConfig
from hpctrain.data import synthetic


def problem(args: argparse.Namespace, threads: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    cfg = ModelConfig(name=args.model, width=args.width, depth=args.depth)
    spec = models.sample_spec(cfg)
    x, y = synthetic.classification(args.batch * 8, spec.input_shape, spec.num_classes, args.seed)
    return models.build(cfg), torch.from_numpy(x), torch.from_numpy(y)


def sgd(params: Any, args: argparse.Namespace) -> torch.optim.Optimizer:
    # fused: the update kernel hpctrain uses by default (optim.fused), so that the comparison measures the
    # distributed machinery, not the optimizer kernel
    return torch.optim.SGD(params, lr=args.lr, momentum=0.9, fused=True)


def timed_loop(step, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> tuple[float, int]:
    """Seconds for the steps after warm-up (the same count as hpctrain's measured steps)."""
    n = len(x) // args.batch
    start = 0.0
    for i in range(args.steps):
        if i == args.warmup:
            start = time.perf_counter()
        a = (i % n) * args.batch
        step(x[a:a + args.batch], y[a:a + args.batch])
    return time.perf_counter() - start, args.steps - args.warmup


def run_horovod(args: argparse.Namespace) -> dict:
    import horovod.torch as hvd

    hvd.init()
    threads = max(1, (os.cpu_count() or 1) // hvd.local_size())
    model, x, y = problem(args, threads)
    opt = sgd(model.parameters(), args)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(), op=hvd.Average)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        opt.zero_grad()
        models.loss_fn(model(xb), yb).backward()
        opt.step()

    seconds, steps = timed_loop(step, x, y, args)
    slowest = float(hvd.allreduce(torch.tensor(seconds), op=hvd.Max, name="bench.time"))
    return {"impl": "horovod", "ranks": hvd.size(), "rank": hvd.rank(), "threads": threads,
            "samples_per_sec": steps * args.batch * hvd.size() / slowest}


def run_ddp(args: argparse.Namespace) -> dict:
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
    threads = max(1, (os.cpu_count() or 1) // local_size)
    model, x, y = problem(args, threads)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = sgd(ddp.parameters(), args)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        opt.zero_grad()
        models.loss_fn(ddp(xb), yb).backward()
        opt.step()

    seconds, steps = timed_loop(step, x, y, args)
    t = torch.tensor(seconds)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    result = {"impl": "ddp", "ranks": dist.get_world_size(), "rank": dist.get_rank(), "threads": threads,
              "samples_per_sec": steps * args.batch * dist.get_world_size() / float(t)}
    dist.barrier()  # measured: without it, a rank tearing down gloo first aborts its peer now and then
    dist.destroy_process_group()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("impl", choices=["horovod", "ddp"])
    p.add_argument("--model", default="mlp")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args()
    result = run_horovod(args) if args.impl == "horovod" else run_ddp(args)
    if result.pop("rank") == 0:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
