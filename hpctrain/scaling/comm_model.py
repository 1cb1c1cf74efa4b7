"""The alpha-beta cost model of ring all-reduce behind `hpctrain scaling report`'s predictions.

One level (:func:`predict_efficiency`): one flat ring over p ranks, every link alike. A ring all-reduce of n
bytes takes 2(p-1) steps (reduce-scatter, then all-gather), each paying one latency α and moving n/p bytes at
β seconds per byte:  t(n) = 2(p-1)·α + 2(p-1)/p · n·β.

Two levels (:func:`predict_two_level`): N nodes of G ranks, a fast link within a node (shared memory, NVLink)
and a slower one between nodes (InfiniBand), each its own (α, β):
  flat ring over all p = N·G ranks, placed node by node: each of its 2(p-1) steps moves n/p bytes on every
      edge at once, and N of the edges cross between nodes, so a step lasts as long as the slower level's
      α + n/p·β.
  hierarchical (Horovod's HOROVOD_HIERARCHICAL_ALLREDUCE on NCCL builds): a reduce-scatter within each node
      ((G-1) steps of n/G bytes), an all-reduce between nodes of each rank's n/G piece (G rings of N ranks at
      once, 2(N-1) steps, together n/N bytes a step through each node's link), then an all-gather within the
      node ((G-1) steps):  2(G-1)·(α_in + n/G·β_in) + 2(N-1)·(α_out + n/N·β_out).
β between nodes is per node (what one node can send into the network), so the G concurrent rings of the
hierarchical algorithm share it. Both levels are fitted from `hpctrain bench allreduce` runs (one node; one
rank on each of several nodes) or stated (--intra-gbps, --link-gbps).

Everything here is a model: no overlap of communication with compute, no contention, no stragglers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpctrain.errors import UserError
from hpctrain.scaling.values import is_positive, is_whole

log = logging.getLogger(__name__)

PREDICTION_RANKS = (8, 16, 32, 64, 128, 256, 512, 1024)
LINK_GBPS = 100.0  # InfiniBand EDR 4x: the stated link between nodes
LINK_LATENCY_US = 5.0  # MPI point-to-point latency of the order measured over EDR
INTRA_GBPS = 2400.0  # NVLink 3 (A100): 300 GB/s each way, the stated link within a node
INTRA_LATENCY_US = 2.0
GPUS_PER_NODE = 8


class ModelError(UserError):
    """An input to the communication model cannot be used; the message names it."""


@dataclass(frozen=True)
class Level:
    """One level of links: α seconds per ring step, β seconds per byte."""

    alpha: float
    beta: float

    def step_s(self, nbytes: float) -> float:
        return self.alpha + nbytes * self.beta


def fit_alpha_beta(results: Sequence[dict[str, Any]], world_size: int, impl: str = "horovod") -> tuple[float, float]:
    """Fit the ring all-reduce cost t(n) = 2(p-1)·α + 2(p-1)/p · n·β to ``hpctrain bench allreduce`` results.

    Args:
        results: the benchmark's ``results`` list (``bytes``, ``impl``, ``time_s`` per entry).
        world_size: p, the ranks the benchmark ran on.
        impl: which implementation's timings to fit.

    Returns:
        (α in seconds, β in seconds per byte). A negative α (noise at small sizes) is set to 0 and β refitted.

    Raises:
        ModelError: p < 2, fewer than two message sizes for ``impl``, malformed entries, or times that do not
            grow with size.
    """
    if not is_whole(world_size) or world_size < 2:
        raise ModelError(f"world_size: {world_size!r}: fitting the all-reduce cost needs >= 2 ranks "
                         "(on one rank it moves no data)")
    sizes, times = [], []
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise ModelError(f"results[{i}]: expected a JSON object, got {r!r}")
        if r.get("impl") != impl:
            continue
        if not is_whole(r.get("bytes")) or r["bytes"] < 1:
            raise ModelError(f"results[{i}].bytes: expected a positive integer, got {r.get('bytes')!r}")
        if not is_positive(r.get("time_s")):
            raise ModelError(f"results[{i}].time_s: expected a positive number, got {r.get('time_s')!r}")
        sizes.append(float(r["bytes"]))
        times.append(float(r["time_s"]))
    if len(set(sizes)) < 2:
        impls = sorted({str(r.get("impl")) for r in results if isinstance(r, dict)})
        raise ModelError(f"results: {len(set(sizes))} message size(s) for impl {impl!r} (impls present: "
                         f"{', '.join(impls) or 'none'}); fitting latency and bandwidth needs >= 2")
    import numpy as np  # here, not at the top: the CLI imports this module for its defaults

    p = world_size
    n, t = np.array(sizes), np.array(times)
    design = np.stack([np.full_like(n, 2.0 * (p - 1)), 2.0 * (p - 1) / p * n], axis=1)
    # Residuals relative to each time: the microsecond small messages that fix α then weigh as much as the
    # large ones that fix β; in absolute terms the large messages' noise would swamp α.
    a = design / t[:, None]
    ones = np.ones_like(t)
    scale = np.linalg.norm(a, axis=0)  # the columns differ by ~n; equalise them for a well-conditioned solve
    alpha, beta = np.linalg.lstsq(a / scale, ones, rcond=None)[0] / scale
    if alpha < 0:  # a negative latency would predict efficiencies above 1 at scale
        log.warning("all-reduce fit gave latency %.3g s < 0 (noisy small messages); using 0", alpha)
        col = a[:, 1]
        alpha, beta = 0.0, float(col @ ones / (col @ col))
    if not beta > 0:
        raise ModelError(f"results: {impl!r} times do not grow with message size; no bandwidth can be fitted")
    return float(alpha), float(beta)


def check_placement(bench: dict[str, Any], level: str) -> None:
    """Check that a `bench allreduce --json` result's ranks were placed to measure ``level``.

    ``level`` "intra": every rank on one host (a result without ``hosts`` predates the field and ran on one
    machine). "inter": one rank on each of two or more hosts, so that every ring step crosses between nodes.

    Raises:
        ModelError: the placement does not measure that level (the message says how to run it).
    """
    hosts = bench.get("hosts")
    if level == "intra":
        if isinstance(hosts, dict) and len(hosts) > 1:
            raise ModelError(f"hosts: the ranks ran on {len(hosts)} hosts; the within-node fit needs a run on one "
                             "node (srun -N1 -n2 hpctrain bench allreduce)")
    elif not (isinstance(hosts, dict) and len(hosts) >= 2 and set(hosts.values()) == {1}):
        raise ModelError(f"hosts: {hosts!r}: the between-node fit needs one rank on each of two or more nodes "
                         "(srun -N2 --ntasks-per-node=1 hpctrain bench allreduce)")


def link_alpha_beta(gbps: float = LINK_GBPS, latency_us: float = LINK_LATENCY_US) -> tuple[float, float]:
    """α (s) and β (s/byte) of a stated link: by default 100 Gb/s InfiniBand EDR, α = 5 µs, β = 8/100e9 s/byte.

    Raises:
        ModelError: a speed or latency that is not a positive number.
    """
    if not is_positive(gbps):
        raise ModelError(f"link_gbps: expected a positive number, got {gbps!r}")
    if not is_positive(latency_us):
        raise ModelError(f"link_latency_us: expected a positive number, got {latency_us!r}")
    return latency_us * 1e-6, 8.0 / (gbps * 1e9)


def _check_step(model_bytes: float, compute_s: float) -> None:
    if not is_positive(model_bytes):
        raise ModelError(f"model_bytes: expected a positive number, got {model_bytes!r}")
    if not is_positive(compute_s):
        raise ModelError(f"compute_s: expected a positive number of seconds, got {compute_s!r}")


def predict_efficiency(alpha: float, beta: float, model_bytes: float, compute_s: float,
                       ranks: Sequence[int] = PREDICTION_RANKS) -> list[dict[str, Any]]:
    """Predicted data-parallel efficiency at each p in ``ranks`` of one flat ring, with no overlap.

    T_comm(p) = 2(p-1)·α + 2(p-1)/p · model_bytes·β (one ring all-reduce of the gradients per step), and
    efficiency = compute_s / (compute_s + T_comm(p)): per-rank work is fixed (weak scaling).

    Returns:
        One dict per p: ``ranks``, ``comm_s`` and ``efficiency`` (a fraction).

    Raises:
        ModelError: a non-positive model size, compute time or rank count.
    """
    _check_step(model_bytes, compute_s)
    rows = []
    for p in ranks:
        if not is_whole(p) or p < 1:
            raise ModelError(f"ranks: expected positive integers, got {p!r}")
        comm = 2 * (p - 1) * alpha + 2 * (p - 1) / p * model_bytes * beta
        rows.append({"ranks": p, "comm_s": comm, "efficiency": compute_s / (compute_s + comm)})
    return rows


def flat_ring_s(nbytes: float, nodes: int, per_node: int, intra: Level, inter: Level) -> float:
    """One flat ring over nodes × per_node ranks, placed node by node (module docstring)."""
    p = nodes * per_node
    if p == 1:
        return 0.0
    piece = nbytes / p
    levels = [lv for lv, used in ((intra, per_node > 1), (inter, nodes > 1)) if used]  # the edges the ring has
    step = max(lv.step_s(piece) for lv in levels)
    return 2 * (p - 1) * step


def hierarchical_s(nbytes: float, nodes: int, per_node: int, intra: Level, inter: Level) -> float:
    """Reduce-scatter within each node, all-reduce between nodes, all-gather within (module docstring)."""
    within = 2 * (per_node - 1) * intra.step_s(nbytes / per_node)
    between = 2 * (nodes - 1) * inter.step_s(nbytes / nodes)
    return within + between


def predict_two_level(intra: Level, inter: Level, model_bytes: float, compute_s: float,
                      per_node: int = GPUS_PER_NODE, ranks: Sequence[int] = PREDICTION_RANKS) -> list[dict[str, Any]]:
    """Flat against hierarchical all-reduce at each p in ``ranks`` (per_node ranks a node), weak scaling.

    Returns:
        One dict per p: ``ranks``, ``nodes``, ``flat_s``, ``hierarchical_s`` and each one's ``*_efficiency``
        (compute_s / (compute_s + comm)).

    Raises:
        ModelError: a non-positive size or time, or a rank count that is not a multiple of per_node.
    """
    _check_step(model_bytes, compute_s)
    if not is_whole(per_node) or per_node < 1:
        raise ModelError(f"gpus_per_node: expected a positive integer, got {per_node!r}")
    rows = []
    for p in ranks:
        if not is_whole(p) or p < per_node or p % per_node:
            raise ModelError(f"ranks: {p!r} is not a multiple of {per_node} ranks per node")
        nodes = p // per_node
        flat = flat_ring_s(model_bytes, nodes, per_node, intra, inter)
        hier = hierarchical_s(model_bytes, nodes, per_node, intra, inter)
        rows.append({"ranks": p, "nodes": nodes, "flat_s": flat, "hierarchical_s": hier,
                     "flat_efficiency": compute_s / (compute_s + flat),
                     "hierarchical_efficiency": compute_s / (compute_s + hier)})
    return rows
