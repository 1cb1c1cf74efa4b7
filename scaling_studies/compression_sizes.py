#!/usr/bin/env python3
"""Where int8 and cut-out rows pay on this CPU: the digits MLP's shape (64 -> w -> w -> 10) at widths from the
digits model's 128 up to 4096, at several batch sizes, each against its fp32 model. Random weights: speed only
(docs/compression.md has the trained models' accuracy). Variants of one width are timed interleaved by
hpctrain.evaluate's timer, one thread unless --threads says otherwise.

- int8: ``quantize_dynamic`` as ``hpctrain compress --quantize int8`` makes it, with each quantised engine
  this torch build has (x86 is torch's default; fbgemm, onednn and qnnpack the others);
- rows-50%: the model with half of each hidden layer's rows, what ``--materialize`` leaves after
  ``prune.kind = "structured"`` at sparsity 0.5 (3x fewer multiply-adds at w=128).

    .venv/bin/python scaling_studies/compression_sizes.py 2>/dev/null > scaling_studies/results/compression/sizes.txt
    .venv/bin/python scaling_studies/compression_sizes.py --widths 128,2048,4096 --threads 2 2>/dev/null   # appended
"""

import argparse
import copy
import os
import platform

import torch
from torch import nn

from hpctrain import models
from hpctrain.config import ModelConfig
from hpctrain.evaluate import TimingOptions, time_models
from hpctrain.inference import quantize_int8


def mlp(width: int) -> nn.Module:
    return models.mlp(ModelConfig(width=width, depth=2)).eval()  # the built-in model, configs/digits.toml's shape


def int8(model: nn.Module, engine: str) -> nn.Module:
    torch.backends.quantized.engine = engine  # the engine is chosen when the weights are packed
    return quantize_int8(copy.deepcopy(model))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return platform.processor()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    simd = [f for f in flags if f.startswith(("avx2", "avx512", "avx_vnni", "amx"))]
    return f"{name}, {os.cpu_count()} CPU(s), {' '.join(simd) or 'no AVX2'}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="128,256,512,1024,2048,4096")
    p.add_argument("--batches", default="1,64,256,1024")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    opts = TimingOptions(batches=tuple(int(b) for b in args.batches.split(",")), rounds=args.rounds,
                         min_time_s=0.1, threads=args.threads)
    engines = [e for e in ("x86", "fbgemm", "onednn", "qnnpack") if e in torch.backends.quantized.supported_engines]
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; {cpu_name()}; {args.threads} thread(s); {opts.rounds} interleaved rounds; "
          "p50 of every call; x = fp32 p50 / variant p50 (above 1: faster)")
    head = "".join(f"{f'b={b}':>18}" for b in opts.batches)
    for w in widths:
        dense = mlp(w)
        half = mlp(w // 2)
        variants = {"fp32": dense, "rows-50% (cut out)": half}
        variants.update({f"int8 {e}": int8(dense, e) for e in engines})
        torch.backends.quantized.engine = engines[0]
        inputs: dict[int, list[tuple[torch.Tensor, ...]]] = {b: [(torch.randn(b, 64),)] * len(variants)
                                                             for b in opts.batches}
        times = time_models(list(variants.values()), inputs, opts)
        macs = sum(m.in_features * m.out_features for m in dense.modules() if isinstance(m, nn.Linear))
        print(f"\n64-{w}-{w}-10 ({macs:,} multiply-adds a sample){head}")
        for label, t in zip(variants, times, strict=True):
            cells = "".join(f"{t[str(b)]['p50_ms']:>9.4f} ms {times[0][str(b)]['p50_ms'] / t[str(b)]['p50_ms']:>4.2f}x"
                            for b in opts.batches)
            print(f"  {label:34s}{cells}")


if __name__ == "__main__":
    main()
