"""Memory accounting of a run: what each rank holds for parameters, gradients and optimizer state, its peak
resident memory, and the ZeRO paper's per-parameter formula for the chosen stage beside them."""

from __future__ import annotations

import resource
from typing import Any

import torch

FP32 = 4  # bytes per value of hpctrain's parameter, gradient and optimizer-state layout


def formula_bytes_per_param(stage: int, state_copies: int, size: int) -> float:
    """Bytes per parameter on each rank (Rajbhandari et al. 2020, section 5, with hpctrain's fp32 layout:
    no separate master copy): parameters and gradients 4 B each, K = 4 B per optimizer-state copy (AdamW
    K = 8): replicated 8 + K; stage 1 8 + K/N; stage 2 4 + (4 + K)/N."""
    k = FP32 * state_copies
    if stage == 0:
        return 2 * FP32 + k
    if stage == 1:
        return 2 * FP32 + k / size
    return FP32 + (FP32 + k) / size


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rank_record(held: dict[str, int], device: torch.device) -> dict[str, Any]:
    """One rank's figures: ``held`` (params/grads/optimizer_state bytes) plus peak memory."""
    out: dict[str, Any] = {f"{k}_bytes": int(v) for k, v in held.items()}
    out["peak_rss_bytes"] = peak_rss_bytes()
    if device.type == "cuda":
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def summary(per_rank: list[dict[str, Any]], stage: int, state_copies: int, trainable: int) -> dict[str, Any]:
    """The ``memory`` section of summary.json."""
    size = len(per_rank)
    per_param = formula_bytes_per_param(stage, state_copies, size)
    return {"zero_stage": stage, "per_rank": per_rank,
            "formula": {"bytes_per_param": per_param, "bytes_per_rank": per_param * trainable,
                        "trainable_parameters": trainable,
                        "what": "ZeRO paper, fp32 layout: replicated 8+K, stage 1 8+K/N, stage 2 4+(4+K)/N "
                                f"bytes per parameter, K = {FP32 * state_copies} (optimizer state)"}}


def describe(mem: dict[str, Any]) -> str:
    """One line of the end-of-run report."""
    mib = 2**20
    r = mem["per_rank"]
    held = max(x["params_bytes"] + x["grads_bytes"] + x["optimizer_state_bytes"] for x in r)
    return (f"  memory per rank (ZeRO stage {mem['zero_stage']}): params {r[0]['params_bytes'] / mib:.1f} MiB, "
            f"grads <= {max(x['grads_bytes'] for x in r) / mib:.1f} MiB, optimizer state "
            f"{max(x['optimizer_state_bytes'] for x in r) / mib:.1f} MiB (formula "
            f"{mem['formula']['bytes_per_rank'] / mib:.1f} MiB, held {held / mib:.1f} MiB); peak RSS "
            f"{max(x['peak_rss_bytes'] for x in r) / mib:.0f} MiB\n")
