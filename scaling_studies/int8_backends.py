#!/usr/bin/env python3
"""int8 dynamic quantisation of Linear layers on CPU: torch.ao's quantize_dynamic against torchao's
Int8DynamicActivationInt8WeightConfig, eager and under torch.compile (inductor), all against fp32 eager and
compiled; interleaved rounds on one thread (hpctrain.evaluate's timer; the compile happens in its warm-up), a
digits-size MLP and a wide one, random weights (speed only).

    .venv/bin/pip install --no-deps torchao==0.18.0   # not a dependency of hpctrain: measured, not chosen
    .venv/bin/python scaling_studies/int8_backends.py 2>/dev/null \
        > scaling_studies/results/compression/int8-backends.txt
"""

import copy
import warnings

import torch
from torch import nn

from hpctrain import models
from hpctrain.config import ModelConfig
from hpctrain.evaluate import TimingOptions, time_models
from hpctrain.inference import quantize_int8


def mlp(width: int, depth: int) -> nn.Module:
    return models.mlp(ModelConfig(width=width, depth=depth)).eval()  # the built-in model: 64 inputs, 10 classes


def torchao_int8(model: nn.Module) -> nn.Module | None:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return None
    m = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(m, Int8DynamicActivationInt8WeightConfig())
    return m


def compiled(model: nn.Module) -> nn.Module:
    # dynamic=False: one graph specialised per batch size, as a service with a fixed batch would compile it;
    # with automatic dynamic shapes the second batch size seen gets one generic graph
    return torch.compile(copy.deepcopy(model), dynamic=False)  # type: ignore[return-value]


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    opts = TimingOptions(batches=(1, 64), rounds=5, min_time_s=0.2)
    print(f"fp32 vs int8 dynamic (Linear), torch {torch.__version__}, 1 thread, median of every call over "
          f"{opts.rounds} interleaved rounds; x = fp32 eager p50 / variant p50 (above 1: faster)")
    for name, model in (("digits MLP 64-128-128-10", mlp(128, 2)), ("wide MLP 64-2048x3-10", mlp(2048, 3))):
        variants = {"fp32": model, "fp32 torch.compile": compiled(model),
                    "torch.ao quantize_dynamic": quantize_int8(copy.deepcopy(model))}
        ao = torchao_int8(model)
        if ao is not None:
            variants["torchao int8 dynamic (eager)"] = ao
            variants["torchao int8 dynamic + torch.compile"] = compiled(ao)
        inputs: dict[int, list[tuple[torch.Tensor, ...]]] = {b: [(torch.randn(b, 64),)] * len(variants)
                                                             for b in opts.batches}
        times = time_models(list(variants.values()), inputs, opts)
        base = times[0]
        print(f"\n{name}")
        for label, t in zip(variants, times, strict=True):
            cells = [f"b={b}: {t[str(b)]['p50_ms']:9.4f} ms {base[str(b)]['p50_ms'] / t[str(b)]['p50_ms']:6.2f}x"
                     for b in opts.batches]
            print(f"  {label:38s} " + "  ".join(cells))
        if ao is None:
            print("  torchao not installed: not measured")


if __name__ == "__main__":
    main()
