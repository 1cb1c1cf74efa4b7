"""`hpctrain scaling report`: efficiency tables, plots and a communication model from a scaling study's records.

It reads only what the measuring commands wrote (plotting lives apart from measuring): the JSON Lines records of
``hpctrain scaling run``, one per training run, and optionally the JSON of ``hpctrain bench allreduce``.

With p ranks and p0 the smallest world size measured (normally 1):
  T_p   step time: the slowest rank's mean. A synchronous step ends when its last rank does, and this is the
        time behind the record's global ``samples_per_sec``.
  X_p   global throughput, samples/s.
  speedup = X_p / X_p0
  strong scaling (global batch fixed):   efficiency = p0 * T_p0 / (p * T_p)
  weak scaling (per-rank batch fixed):   efficiency = T_p0 / T_p
Both equal p0 * X_p / (p * X_p0) when the study holds its batch fixed, which :func:`efficiency_table` checks.
Repeated runs at one (mode, world size) are reduced by their median, which one slow repeat does not move.
"""

from __future__ import annotations

import io
import json
import logging
import math
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hpctrain.errors import UserError
from hpctrain.files import read_jsonl, read_text, write_atomic
from hpctrain.plots import label_log_axis

log = logging.getLogger(__name__)

MODES = ("strong", "weak")
# What each mode holds fixed as ranks are added; a study that changes it is not that kind of study.
HELD_FIXED = {"strong": "global_batch_size", "weak": "batch_size"}
PREDICTION_RANKS = (8, 16, 32, 64, 128, 256, 512, 1024)
LINK_GBPS = 100.0  # InfiniBand EDR 4x: the stated link of the model's second column
LINK_LATENCY_US = 5.0  # MPI point-to-point latency of the order measured over EDR
PUBLISHED = ("about 88–90% scaling efficiency at 512 GPUs for Inception V3 and ResNet-101 "
             "(Sergeev & Del Balso, 2018, 25 Gb/s RoCE, 4 GPUs per server)")
MODEL_LABEL = "Communication model (a model, not a measurement)"


class ScalingError(UserError):
    """A records or benchmark file is missing or malformed, or a study mixes runs; the message names it."""


# ---------------------------------------------------------------------------------------------------- records

def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a scaling study's JSON Lines records (blank lines are skipped).

    Raises:
        ScalingError: the file is missing or empty, a line is not a valid record (the message names file and
            line), or the records mix models or compression settings.
    """
    path = Path(path)
    records = []
    for where, record in read_jsonl(path, ScalingError, missing="records file not found"):
        _check_record(record, where)
        records.append(record)
    if not records:
        raise ScalingError(f"{path}: no records (write them with `hpctrain scaling run`)")
    # Efficiencies compare runs of one model and one wire format; a mixed file would compare unlike things.
    for key in ("model", "num_parameters", "compression"):
        seen = list(dict.fromkeys(r[key] for r in records if key in r))
        if len(seen) > 1:
            raise ScalingError(f"{path}: {key}: the records mix {', '.join(map(repr, seen))}; "
                               "keep one study per records file")
    return records


def _check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise ScalingError(f"{where}: expected a JSON object, got {type(record).__name__}")

    def need(key: str) -> Any:
        if key not in record:
            raise ScalingError(f"{where}: {key}: missing")
        return record[key]

    if need("mode") not in MODES:
        raise ScalingError(f"{where}: mode: {record['mode']!r} is not one of 'strong', 'weak'")
    for key in ("world_size", "batch_size", "global_batch_size"):
        if not _is_int(need(key)) or record[key] < 1:
            raise ScalingError(f"{where}: {key}: expected a positive integer, got {record[key]!r}")
    if not _is_positive(need("samples_per_sec")):
        raise ScalingError(f"{where}: samples_per_sec: expected a positive number, got {record['samples_per_sec']!r}")
    steps = need("step_time_ms")
    if not isinstance(steps, dict) or not all(_is_positive(steps.get(k)) for k in ("min", "mean", "max")):
        raise ScalingError(f"{where}: step_time_ms: expected {{\"min\", \"mean\", \"max\"}} positive numbers, "
                           f"got {steps!r}")
    breakdown = record.get("breakdown_ms")
    if breakdown is not None and not (isinstance(breakdown, dict) and all(
            isinstance(k, str) and _is_number(v) and v >= 0 for k, v in breakdown.items())):
        raise ScalingError(f"{where}: breakdown_ms: expected phase names mapped to milliseconds, got {breakdown!r}")
    for key in ("num_parameters", "threads_per_rank"):
        if key in record and not (_is_int(record[key]) and record[key] >= 1):
            raise ScalingError(f"{where}: {key}: expected a positive integer, got {record[key]!r}")
    for key in ("model", "compression", "launcher", "command"):
        if key in record and not isinstance(record[key], str):
            raise ScalingError(f"{where}: {key}: expected a string, got {record[key]!r}")
    if "host" in record and not isinstance(record["host"], dict):
        raise ScalingError(f"{where}: host: expected {{\"hostname\", \"cpus\"}}, got {record['host']!r}")
    if "time" in record and not _is_number(record["time"]):
        raise ScalingError(f"{where}: time: expected seconds since the epoch, got {record['time']!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_positive(v: Any) -> bool:
    return _is_number(v) and v > 0


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def efficiency_table(records: Sequence[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """One row per world size of the ``mode`` study, smallest first (formulas in the module docstring).

    Each row: ``ranks``, ``runs`` (repeats), ``samples_per_sec`` and ``step_time_ms`` (medians of the repeats;
    the step time is the slowest rank's), ``speedup``, ``efficiency`` (fractions), ``breakdown_ms`` (median per
    phase, or None when no run recorded one) and ``baseline_ranks`` (p0, the world size the others are
    compared with: 1 unless the study has no 1-rank run).

    Raises:
        ScalingError: no records of this mode, or the runs do not hold the mode's batch size fixed.
    """
    if mode not in MODES:
        raise ScalingError(f"mode: {mode!r} is not one of 'strong', 'weak'")
    runs = [r for r in records if r["mode"] == mode]
    if not runs:
        present = sorted({r["mode"] for r in records})
        raise ScalingError(f"no {mode}-scaling records (the records hold: {', '.join(present) or 'none'})")
    held = HELD_FIXED[mode]
    values = sorted({r[held] for r in runs})
    if len(values) > 1:
        raise ScalingError(f"{held}: the {mode}-scaling runs use {', '.join(map(str, values))}; "
                           f"a {mode}-scaling study holds it fixed")
    by_ranks: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_ranks.setdefault(r["world_size"], []).append(r)
    rows = [{"ranks": p,
             "runs": len(group),
             "samples_per_sec": statistics.median(r["samples_per_sec"] for r in group),
             "step_time_ms": statistics.median(r["step_time_ms"]["max"] for r in group),
             "breakdown_ms": _median_breakdown(group)}
            for p, group in sorted(by_ranks.items())]
    p0, t0, x0 = rows[0]["ranks"], rows[0]["step_time_ms"], rows[0]["samples_per_sec"]
    for row in rows:
        p, t = row["ranks"], row["step_time_ms"]
        row["speedup"] = row["samples_per_sec"] / x0
        # Strong: p ranks share the baseline's work, so ideal T_p = p0*T_p0/p. Weak: each rank keeps its work,
        # so ideal T_p = T_p0.
        row["efficiency"] = p0 * t0 / (p * t) if mode == "strong" else t0 / t
        row["baseline_ranks"] = p0
    return rows


def _median_breakdown(group: list[dict[str, Any]]) -> dict[str, float] | None:
    parts = [r["breakdown_ms"] for r in group if r.get("breakdown_ms")]
    if not parts:
        return None
    names = list(dict.fromkeys(k for part in parts for k in part))
    return {k: statistics.median(part[k] for part in parts if k in part) for k in names}


# ----------------------------------------------------------------------------------------- communication model

def fit_alpha_beta(results: Sequence[dict[str, Any]], world_size: int, impl: str = "horovod") -> tuple[float, float]:
    """Fit the ring all-reduce cost t(n) = 2(p-1)·α + 2(p-1)/p · n·β to ``hpctrain bench allreduce`` results.

    A ring all-reduce of n bytes over p ranks takes 2(p-1) steps (reduce-scatter, then all-gather), each
    paying one latency α and moving n/p bytes at β seconds per byte.

    Args:
        results: the benchmark's ``results`` list (``bytes``, ``impl``, ``time_s`` per entry).
        world_size: p, the ranks the benchmark ran on.
        impl: which implementation's timings to fit.

    Returns:
        (α in seconds, β in seconds per byte). A negative α (noise at small sizes) is set to 0 and β refitted.

    Raises:
        ScalingError: p < 2, fewer than two message sizes for ``impl``, malformed entries, or times that do not
            grow with size.
    """
    if not _is_int(world_size) or world_size < 2:
        raise ScalingError(f"world_size: {world_size!r}: fitting the all-reduce cost needs >= 2 ranks "
                           "(on one rank it moves no data)")
    sizes, times = [], []
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise ScalingError(f"results[{i}]: expected a JSON object, got {r!r}")
        if r.get("impl") != impl:
            continue
        if not _is_int(r.get("bytes")) or r["bytes"] < 1:
            raise ScalingError(f"results[{i}].bytes: expected a positive integer, got {r.get('bytes')!r}")
        if not _is_positive(r.get("time_s")):
            raise ScalingError(f"results[{i}].time_s: expected a positive number, got {r.get('time_s')!r}")
        sizes.append(float(r["bytes"]))
        times.append(float(r["time_s"]))
    if len(set(sizes)) < 2:
        impls = sorted({str(r.get("impl")) for r in results if isinstance(r, dict)})
        raise ScalingError(f"results: {len(set(sizes))} message size(s) for impl {impl!r} (impls present: "
                           f"{', '.join(impls) or 'none'}); fitting latency and bandwidth needs >= 2")
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
        raise ScalingError(f"results: {impl!r} times do not grow with message size; no bandwidth can be fitted")
    return float(alpha), float(beta)


def link_alpha_beta(gbps: float = LINK_GBPS, latency_us: float = LINK_LATENCY_US) -> tuple[float, float]:
    """α (s) and β (s/byte) of a stated link: by default 100 Gb/s InfiniBand EDR, α = 5 µs, β = 8/100e9 s/byte.

    Raises:
        ScalingError: a speed or latency that is not a positive number.
    """
    if not _is_positive(gbps):
        raise ScalingError(f"link_gbps: expected a positive number, got {gbps!r}")
    if not _is_positive(latency_us):
        raise ScalingError(f"link_latency_us: expected a positive number, got {latency_us!r}")
    return latency_us * 1e-6, 8.0 / (gbps * 1e9)


def predict_efficiency(alpha: float, beta: float, model_bytes: float, compute_s: float,
                       ranks: Sequence[int] = PREDICTION_RANKS) -> list[dict[str, Any]]:
    """Predicted data-parallel efficiency at each p in ``ranks``, with no overlap of communication and compute.

    T_comm(p) = 2(p-1)·α + 2(p-1)/p · model_bytes·β (one ring all-reduce of the gradients per step), and
    efficiency = compute_s / (compute_s + T_comm(p)): per-rank work is fixed (weak scaling). Link defaults for
    a stated link are in :func:`link_alpha_beta`.

    Returns:
        One dict per p: ``ranks``, ``comm_s`` and ``efficiency`` (a fraction).

    Raises:
        ScalingError: a non-positive model size, compute time or rank count.
    """
    if not _is_positive(model_bytes):
        raise ScalingError(f"model_bytes: expected a positive number, got {model_bytes!r}")
    if not _is_positive(compute_s):
        raise ScalingError(f"compute_s: expected a positive number of seconds, got {compute_s!r}")
    rows = []
    for p in ranks:
        if not _is_int(p) or p < 1:
            raise ScalingError(f"ranks: expected positive integers, got {p!r}")
        comm = 2 * (p - 1) * alpha + 2 * (p - 1) / p * model_bytes * beta
        rows.append({"ranks": p, "comm_s": comm, "efficiency": compute_s / (compute_s + comm)})
    return rows


def _load_allreduce(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_text(path, ScalingError, missing="all-reduce benchmark file not found"))
    except json.JSONDecodeError as e:
        raise ScalingError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ScalingError(f"{path}: results: missing; expected the JSON of `hpctrain bench allreduce --json`")
    if not isinstance(data.get("world_size"), int):
        raise ScalingError(f"{path}: world_size: missing; expected the JSON of `hpctrain bench allreduce --json`")
    return data


def _comm_model(records: list[dict[str, Any]], tables: dict[str, list[dict[str, Any]]], records_path: Path,
                allreduce_path: Path, link_gbps: float, link_latency_us: float, model_bytes: float | None,
                compute_s: float | None) -> dict[str, Any]:
    bench = _load_allreduce(allreduce_path)
    try:
        alpha, beta = fit_alpha_beta(bench["results"], bench["world_size"])
    except ScalingError as e:
        raise ScalingError(f"{allreduce_path}: {e}") from None
    sizes = sorted({r["bytes"] for r in bench["results"] if r.get("impl") == "horovod"})
    link = link_alpha_beta(link_gbps, link_latency_us)

    if model_bytes is None:
        params = next((r["num_parameters"] for r in records if "num_parameters" in r), None)
        if params is None:
            raise ScalingError(f"{records_path}: num_parameters: missing from every record; give model_bytes")
        compression = next((r["compression"] for r in records if "compression" in r), "none")
        per_param = 2 if compression == "fp16" else 4  # fp16 compression halves the gradient bytes on the wire
        model_bytes = params * per_param
        bytes_from = f"{params:,} parameters × {per_param} bytes, {'fp16' if per_param == 2 else 'fp32'} gradients"
    else:
        bytes_from = "given"
    if compute_s is None:
        base = next(((m, row) for m in ("weak", "strong") for row in tables.get(m, []) if row["ranks"] == 1), None)
        if base is None:
            raise ScalingError(f"{records_path}: no 1-rank run to take the compute time from; give compute_s")
        compute_s = base[1]["step_time_ms"] / 1000
        compute_from = f"the 1-rank step time of the {base[0]}-scaling study"
    else:
        compute_from = "given"
    return {"path": allreduce_path, "world_size": bench["world_size"], "sizes": sizes,
            "memcpy_GBps": bench.get("memcpy_GBps"), "alpha": alpha, "beta": beta,
            "link_gbps": link_gbps, "link_alpha": link[0], "link_beta": link[1],
            "model_bytes": model_bytes, "bytes_from": bytes_from, "compute_s": compute_s,
            "compute_from": compute_from,
            "machine": predict_efficiency(alpha, beta, model_bytes, compute_s),
            "stated": predict_efficiency(*link, model_bytes, compute_s)}


# ------------------------------------------------------------------------------------------------------ report

def write_report(records_path: str | Path, out_dir: str | Path, allreduce_json: str | Path | None = None,
                 link_gbps: float = LINK_GBPS, link_latency_us: float = LINK_LATENCY_US,
                 model_bytes: float | None = None, compute_s: float | None = None) -> Path:
    """Write ``out_dir/report.md`` and, per mode present, ``throughput-<mode>.png`` and ``efficiency-<mode>.png``.

    With ``allreduce_json`` the report adds the α/β fitted to this machine's all-reduce and a communication
    model at 8..1024 ranks for that link and for a stated one (``link_gbps``, ``link_latency_us``).
    ``model_bytes`` defaults to num_parameters × 4 from the records (× 2 with fp16 compression) and
    ``compute_s`` to the 1-rank step time of the weak study, else of the strong one.

    Everything is computed before anything is written, and each file is written to a temporary name and
    renamed: an error leaves the previous report as it was. The PNGs go first, so report.md never links to
    a plot that is not there.

    Returns:
        The path of report.md.

    Raises:
        ScalingError: a missing or malformed input (named), or an output directory that cannot be written.
    """
    records_path, out_dir = Path(records_path), Path(out_dir)
    records = load_records(records_path)
    tables = {}
    for mode in MODES:
        if any(r["mode"] == mode for r in records):
            try:
                tables[mode] = efficiency_table(records, mode)
            except ScalingError as e:
                raise ScalingError(f"{records_path}: {e}") from None
    comm = None
    if allreduce_json is not None:
        comm = _comm_model(records, tables, records_path, Path(allreduce_json), link_gbps, link_latency_us,
                           model_bytes, compute_s)
    files = {}
    for mode, rows in tables.items():
        files[f"throughput-{mode}.png"], files[f"efficiency-{mode}.png"] = _plots(mode, rows)
    files["report.md"] = _render(records_path, records, tables, comm).encode()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():  # report.md last: dicts keep insertion order
            write_atomic(out_dir / name, data)
    except OSError as e:
        raise ScalingError(f"{out_dir}: cannot write the report ({e.strerror or e})") from None
    return out_dir / "report.md"


def _plots(mode: str, rows: list[dict[str, Any]]) -> tuple[bytes, bytes]:
    return _png(throughput_figure(mode, rows)), _png(efficiency_figure(mode, rows))


def _figure() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ScalingError("the report's plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only: compute nodes have no display
    from matplotlib.figure import Figure  # not pyplot: a figure of our own is freed with it, no global state

    return Figure(figsize=(6, 4.2), layout="tight")


def throughput_figure(mode: str, rows: list[dict[str, Any]]) -> Any:
    """Global samples/s against ranks, measured and ideal, on log axes (a matplotlib Figure, not saved)."""
    ranks = [r["ranks"] for r in rows]
    p0, x0 = ranks[0], rows[0]["samples_per_sec"]
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(ranks, [x0 * p / p0 for p in ranks], "--", color="grey", label=f"ideal (linear from {p0} rank)")
    ax.plot(ranks, [r["samples_per_sec"] for r in rows], "o-", label="measured (median)")
    _rank_axis(ax, ranks)
    ax.set_yscale("log")
    label_log_axis(ax.yaxis)
    ax.set_ylabel("samples/s (global)")
    ax.set_title(f"{mode.capitalize()} scaling: throughput")
    ax.legend()
    return fig


def efficiency_figure(mode: str, rows: list[dict[str, Any]]) -> Any:
    """Scaling efficiency against ranks, with the ideal 1.0 (a matplotlib Figure, not saved)."""
    ranks = [r["ranks"] for r in rows]
    fig = _figure()
    ax = fig.add_subplot()
    ax.axhline(1.0, linestyle="--", color="grey", label="ideal")
    ax.plot(ranks, [r["efficiency"] for r in rows], "o-", label="measured (median)")
    _rank_axis(ax, ranks)
    ax.set_ylim(0, max(1.1, max(r["efficiency"] for r in rows) * 1.05))
    ax.set_ylabel("efficiency")
    ax.set_title(f"{mode.capitalize()} scaling: efficiency")
    ax.legend(loc="lower left")
    return fig


def _rank_axis(ax: Any, ranks: list[int]) -> None:
    ax.set_xscale("log", base=2)  # studies double the ranks: equal steps on the axis
    ax.set_xticks(ranks, [str(p) for p in ranks])
    ax.minorticks_off()
    ax.set_xlabel("ranks")
    ax.grid(True, alpha=0.3)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _render(records_path: Path, records: list[dict[str, Any]], tables: dict[str, list[dict[str, Any]]],
            comm: dict[str, Any] | None) -> str:
    first = records[0]
    out = ["# Scaling report", ""]
    times = [r["time"] for r in records if "time" in r]
    when = ""
    if times:
        fmt = "%Y-%m-%d %H:%M"
        start, end = (datetime.fromtimestamp(t, UTC).strftime(fmt) for t in (min(times), max(times)))
        when = f", {start} UTC" if start == end else f", {start} to {end} UTC"
    out.append(f"From `{records_path}` ({len(records)} runs{when}).")
    out.append("")
    model = f"`{first['model']}`" if "model" in first else "(not recorded)"
    params = f", {first['num_parameters']:,} parameters" if "num_parameters" in first else ""
    launchers = sorted({r["launcher"] for r in records if "launcher" in r})
    out.append(f"- model: {model}{params}; gradient compression: `{first.get('compression', 'not recorded')}`")
    if launchers:
        out.append(f"- launcher: {', '.join(f'`{x}`' for x in launchers)}")
    hosts = list(dict.fromkeys((str(r["host"].get("hostname", "?")), r["host"].get("cpus")) for r in records
                               if "host" in r))
    if hosts:
        out.append("- host: " + ", ".join(f"`{h}` ({c} CPUs)" if c else f"`{h}`" for h, c in hosts)
                   + " (rank 0's)")
    threads = {(r["world_size"], r["threads_per_rank"]) for r in records if "threads_per_rank" in r}
    if threads:  # a CPU rank's threads follow its binding: what a 1-rank baseline ran on is worth seeing
        out.append("- intra-op threads per rank: " + ", ".join(f"{t} at {p} rank{'s' * (p > 1)}"
                                                               for p, t in sorted(threads)))
    commands = list(dict.fromkeys(r["command"] for r in records if "command" in r))
    if commands:
        out += ["", "Made by:", "", "```", *commands, "```"]
    out += ["", "T_p is the step time at p ranks (the slowest rank's mean: a synchronous step ends when its last "
            "rank does), X_p the global samples/s. Repeated runs at one rank count are reduced by their median. "
            "The breakdown columns are means over ranks of each phase's milliseconds per step."]

    for mode, rows in tables.items():
        p0 = rows[0]["baseline_ranks"]
        held = next(r[HELD_FIXED[mode]] for r in records if r["mode"] == mode)
        t0 = f"T_{p0}"
        if mode == "strong":
            out += ["", f"## Strong scaling (global batch fixed at {held} samples)", "",
                    f"Efficiency = {'' if p0 == 1 else f'{p0}·'}{t0} / (p · T_p); speedup = X_p / X_{p0}."]
        else:
            out += ["", f"## Weak scaling (batch fixed at {held} samples per rank)", "",
                    f"Efficiency = {t0} / T_p; speedup = X_p / X_{p0}."]
        if p0 != 1:
            out.append(f"No 1-rank run was recorded: the {p0}-rank run is the baseline.")
        phases = list(dict.fromkeys(k for r in rows if r["breakdown_ms"] for k in r["breakdown_ms"]))
        head = ["ranks", "runs", "samples/s", "speedup", "efficiency", "step ms", *(f"{k} ms" for k in phases)]
        out += ["", _row(head), _row(["---:"] * len(head))]
        for r in rows:
            bd = r["breakdown_ms"] or {}
            out.append(_row([str(r["ranks"]), str(r["runs"]), f"{r['samples_per_sec']:,.1f}", f"{r['speedup']:.2f}",
                             f"{r['efficiency']:.1%}", f"{r['step_time_ms']:,.1f}",
                             *(f"{bd[k]:,.1f}" if k in bd else "–" for k in phases)]))
        out += ["", f"![{mode} scaling: throughput against ranks](throughput-{mode}.png)",
                f"![{mode} scaling: efficiency against ranks](efficiency-{mode}.png)"]

    if comm is not None:
        out += _render_comm(comm)
    return "\n".join(out) + "\n"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _render_comm(c: dict[str, Any]) -> list[str]:
    sizes = c["sizes"]
    memcpy = f"; memcpy on this machine: {c['memcpy_GBps']:.1f} GB/s" if _is_number(c["memcpy_GBps"]) else ""
    stated = f"{c['link_gbps']:g} Gb/s link" + (" (InfiniBand EDR)" if c["link_gbps"] == 100 else "")
    out = ["", "## All-reduce on this machine (measured)", "",
           f"From `{c['path']}`: Horovod all-reduce on p = {c['world_size']} ranks, {len(sizes)} message sizes "
           f"from {_bytes(sizes[0])} to {_bytes(sizes[-1])}{memcpy}. Least-squares fit (relative residuals) of the "
           "ring all-reduce cost t(n) = 2(p−1)·α + 2(p−1)/p · n·β:", "",
           f"- α (latency per ring step) = {c['alpha'] * 1e6:.2f} µs",
           f"- β (time per byte) = {c['beta']:.4g} s/byte, i.e. {1 / c['beta'] / 1e9:.2f} GB/s per link", "",
           f"## {MODEL_LABEL}", "",
           "**Predicted, not measured.** What the cost model above says about one data-parallel step at more ranks "
           "than this study ran:", "",
           f"- every step all-reduces {_bytes(c['model_bytes'])} of gradients ({c['bytes_from']});",
           f"- compute per step: {c['compute_s'] * 1000:,.2f} ms ({c['compute_from']}), held fixed as p grows "
           "(weak scaling);",
           "- T_comm(p) = 2(p−1)·α + 2(p−1)/p · bytes · β, efficiency = compute / (compute + T_comm(p));",
           "- assumes **no overlap** of communication with computation (Horovod overlaps the all-reduce with "
           "backpropagation, so real runs can do better), one flat ring with one rank per link (no hierarchy "
           "inside a node), and no contention or stragglers (real runs can do worse).", "",
           f"(a) this machine's fitted α, β. (b) a stated {stated}: α = {c['link_alpha'] * 1e6:g} µs, "
           f"β = 8/({c['link_gbps']:g}e9) s/byte.", "",
           _row(["ranks", "(a) comm ms", "(a) efficiency", "(b) comm ms", "(b) efficiency"]),
           _row(["---:"] * 5)]
    for a, b in zip(c["machine"], c["stated"], strict=True):
        out.append(_row([str(a["ranks"]), f"{a['comm_s'] * 1000:,.2f}", f"{a['efficiency']:.1%}",
                         f"{b['comm_s'] * 1000:,.2f}", f"{b['efficiency']:.1%}"]))
    out += ["", f"Beside it, a published measurement (not like for like: GPUs, overlapped communication, another "
            f"model): Horovod reached {PUBLISHED}, and 68% for the larger, bandwidth-bound VGG-16."]
    return out


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"
