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
With two or more runs at a world size and at p0, its efficiency also gets a 95% interval: Welch's t-interval
of the ratio of the geometric-mean step times T_p0/T_p (hpctrain.intervals.unpaired_ratio; the runs at p0 and
at p are separate runs, so they are not paired), times p0/p for strong scaling, with a verdict against ideal
scaling: ``behind`` (below 1), ``tie`` (1 inside the interval), ``ahead`` (super-linear).
"""

from __future__ import annotations

import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hpctrain import intervals
from hpctrain.errors import UserError
from hpctrain.files import read_jsonl, read_text, write_atomic
from hpctrain.plots import label_log_axis
from hpctrain.scaling import comm_model
from hpctrain.scaling.values import is_number, is_positive, is_whole

MODES = ("strong", "weak")
# What each mode holds fixed as ranks are added; a study that changes it is not that kind of study.
HELD_FIXED = {"strong": "global_batch_size", "weak": "batch_size"}
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
        if not is_whole(need(key)) or record[key] < 1:
            raise ScalingError(f"{where}: {key}: expected a positive integer, got {record[key]!r}")
    if not is_positive(need("samples_per_sec")):
        raise ScalingError(f"{where}: samples_per_sec: expected a positive number, got {record['samples_per_sec']!r}")
    steps = need("step_time_ms")
    if not isinstance(steps, dict) or not all(is_positive(steps.get(k)) for k in ("min", "mean", "max")):
        raise ScalingError(f"{where}: step_time_ms: expected {{\"min\", \"mean\", \"max\"}} positive numbers, "
                           f"got {steps!r}")
    breakdown = record.get("breakdown_ms")
    if breakdown is not None and not (isinstance(breakdown, dict) and all(
            isinstance(k, str) and is_number(v) and v >= 0 for k, v in breakdown.items())):
        raise ScalingError(f"{where}: breakdown_ms: expected phase names mapped to milliseconds, got {breakdown!r}")
    for key in ("num_parameters", "threads_per_rank", "nodes", "ranks_per_node"):
        if key in record and not (is_whole(record[key]) and record[key] >= 1):
            raise ScalingError(f"{where}: {key}: expected a positive integer, got {record[key]!r}")
    for key in ("model", "compression", "launcher", "command"):
        if key in record and not isinstance(record[key], str):
            raise ScalingError(f"{where}: {key}: expected a string, got {record[key]!r}")
    if "host" in record and not isinstance(record["host"], dict):
        raise ScalingError(f"{where}: host: expected {{\"hostname\", \"cpus\"}}, got {record['host']!r}")
    if "time" in record and not is_number(record["time"]):
        raise ScalingError(f"{where}: time: expected seconds since the epoch, got {record['time']!r}")


def efficiency_table(records: Sequence[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """One row per world size and node count of the ``mode`` study, smallest first (formulas in the module
    docstring); records without ``nodes`` ran on one.

    Each row: ``ranks``, ``nodes``, ``runs`` (repeats), ``samples_per_sec`` and ``step_time_ms`` (medians of the
    repeats; the step time is the slowest rank's), ``step_times_ms`` (each repeat's), ``speedup``,
    ``efficiency`` (fractions), ``breakdown_ms`` (median per phase, or None when no run recorded one) and
    ``baseline_ranks`` (p0, the world size the others are compared with: 1 unless the study has no 1-rank
    run; on the fewest nodes).

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
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["world_size"], r.get("nodes", 1)), []).append(r)
    rows = [{"ranks": p,
             "nodes": n,
             "runs": len(group),
             "samples_per_sec": statistics.median(r["samples_per_sec"] for r in group),
             "step_time_ms": statistics.median(r["step_time_ms"]["max"] for r in group),
             "step_times_ms": [r["step_time_ms"]["max"] for r in group],
             "breakdown_ms": _median_breakdown(group)}
            for (p, n), group in sorted(groups.items())]
    base = rows[0]
    p0, t0, x0 = base["ranks"], base["step_time_ms"], base["samples_per_sec"]
    for row in rows:
        p, t = row["ranks"], row["step_time_ms"]
        row["speedup"] = row["samples_per_sec"] / x0
        # Strong: p ranks share the baseline's work, so ideal T_p = p0*T_p0/p. Weak: each rank keeps its work,
        # so ideal T_p = T_p0.
        row["efficiency"] = p0 * t0 / (p * t) if mode == "strong" else t0 / t
        row["baseline_ranks"] = p0
        row["efficiency_ci"] = None  # the baseline's is 1 by definition
        if row is not base:
            ci = intervals.unpaired_ratio(base["step_times_ms"], row["step_times_ms"])
            row["efficiency_ci"] = (ci.scaled(p0 / p) if mode == "strong" else ci).as_dict()
    return rows


def placement_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each rank count run both on one node and on more: what spreading the same ranks over nodes cost.

    The runs differ only in where the ranks are (same ranks, same per-rank work), so T(p, 1 node) / T(p, n
    nodes), the speed of the spread runs against the one-node runs, is what the links between nodes cost
    beyond the shared memory they replace; the all-reduce wait's two values show how much of it is
    communication. The ratio gets Welch's interval, as the efficiencies do, and a verdict: ``behind``
    (spreading is slower), ``tie`` or ``ahead``.

    Returns:
        One dict per (p, n > 1): ``ranks``, ``nodes``, ``step_ms`` and ``one_node_step_ms``, ``speed``,
        ``ci`` (an interval dict), ``allreduce_wait_ms`` and ``one_node_allreduce_wait_ms`` (None unrecorded).
    """
    one = {r["ranks"]: r for r in rows if r["nodes"] == 1}
    out = []
    for r in rows:
        if r["nodes"] == 1 or r["ranks"] not in one:
            continue
        ref = one[r["ranks"]]
        ci = intervals.unpaired_ratio(ref["step_times_ms"], r["step_times_ms"])
        out.append({"ranks": r["ranks"], "nodes": r["nodes"], "step_ms": r["step_time_ms"],
                    "one_node_step_ms": ref["step_time_ms"], "speed": ref["step_time_ms"] / r["step_time_ms"],
                    "ci": ci.as_dict(), "allreduce_wait_ms": (r["breakdown_ms"] or {}).get("allreduce_wait"),
                    "one_node_allreduce_wait_ms": (ref["breakdown_ms"] or {}).get("allreduce_wait")})
    return out


def _median_breakdown(group: list[dict[str, Any]]) -> dict[str, float] | None:
    parts = [r["breakdown_ms"] for r in group if r.get("breakdown_ms")]
    if not parts:
        return None
    names = list(dict.fromkeys(k for part in parts for k in part))
    return {k: statistics.median(part[k] for part in parts if k in part) for k in names}


# ----------------------------------------------------------------------------------------- communication model

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


@dataclass(frozen=True)
class ModelInputs:
    """What the report's communication model is fitted from and what it states (`hpctrain scaling report`'s
    options). ``allreduce``: a `bench allreduce --json` run on one node (the one-level fit; the within-node
    level of the two-level model). ``allreduce_inter``: one with one rank on each of several nodes (the
    between-node level); with it the report adds flat against hierarchical rings."""

    allreduce: Path | None = None
    allreduce_inter: Path | None = None
    link_gbps: float = comm_model.LINK_GBPS  # stated link between nodes, per node
    link_latency_us: float = comm_model.LINK_LATENCY_US
    intra_gbps: float = comm_model.INTRA_GBPS  # stated link within a node
    intra_latency_us: float = comm_model.INTRA_LATENCY_US
    gpus_per_node: int = comm_model.GPUS_PER_NODE
    impl: str = "horovod"  # whose timings are fitted: horovod (cycle time included) or mpi (the transport)
    model_bytes: float | None = None  # default: num_parameters x 4 (x 2 with fp16 compression)
    compute_s: float | None = None  # default: the 1-rank step time


def _placed(path: Path, level: str) -> dict[str, Any]:
    bench = _load_allreduce(path)
    try:
        comm_model.check_placement(bench, level)
    except comm_model.ModelError as e:
        raise ScalingError(f"{path}: {e}") from None
    return bench


def _fit(path: Path, bench: dict[str, Any], impl: str) -> comm_model.Level:
    try:
        return comm_model.Level(*comm_model.fit_alpha_beta(bench["results"], bench["world_size"], impl))
    except comm_model.ModelError as e:
        raise ScalingError(f"{path}: {e}") from None


def _comm_model(records: list[dict[str, Any]], tables: dict[str, list[dict[str, Any]]], records_path: Path,
                inputs: ModelInputs) -> dict[str, Any]:
    assert inputs.allreduce is not None
    # Both placements are checked before either fit, so that a wrong file fails alone: a fit may warn.
    bench = _placed(inputs.allreduce, "intra")
    inter_bench = None if inputs.allreduce_inter is None else _placed(inputs.allreduce_inter, "inter")
    fitted = _fit(inputs.allreduce, bench, inputs.impl)
    sizes = sorted({r["bytes"] for r in bench["results"] if r.get("impl") == inputs.impl})
    link = comm_model.link_alpha_beta(inputs.link_gbps, inputs.link_latency_us)

    model_bytes = inputs.model_bytes
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
    compute_s = inputs.compute_s
    if compute_s is None:
        base = next(((m, row) for m in ("weak", "strong") for row in tables.get(m, []) if row["ranks"] == 1), None)
        if base is None:
            raise ScalingError(f"{records_path}: no 1-rank run to take the compute time from; give it (--compute-s)")
        compute_s = base[1]["step_time_ms"] / 1000
        compute_from = f"the 1-rank step time of the {base[0]}-scaling study"
    else:
        compute_from = "given"
    out = {"path": inputs.allreduce, "world_size": bench["world_size"], "sizes": sizes, "impl": inputs.impl,
           "memcpy_GBps": bench.get("memcpy_GBps"), "alpha": fitted.alpha, "beta": fitted.beta,
           "link_gbps": inputs.link_gbps, "link_alpha": link[0], "link_beta": link[1],
           "model_bytes": model_bytes, "bytes_from": bytes_from, "compute_s": compute_s,
           "compute_from": compute_from,
           "machine": comm_model.predict_efficiency(fitted.alpha, fitted.beta, model_bytes, compute_s),
           "stated": comm_model.predict_efficiency(*link, model_bytes, compute_s),
           "two_level": None}
    if inputs.allreduce_inter is not None and inter_bench is not None:
        inter = _fit(inputs.allreduce_inter, inter_bench, inputs.impl)
        stated_intra = comm_model.Level(*comm_model.link_alpha_beta(inputs.intra_gbps, inputs.intra_latency_us))
        g = inputs.gpus_per_node
        ranks = [p for p in comm_model.PREDICTION_RANKS if p >= g and p % g == 0]
        out["two_level"] = {
            "inter_path": inputs.allreduce_inter, "inter_hosts": inter_bench["hosts"],
            "intra_hosts": bench.get("hosts"), "intra": fitted, "inter": inter, "gpus_per_node": g,
            "intra_gbps": inputs.intra_gbps, "intra_latency_us": inputs.intra_latency_us,
            "fitted": comm_model.predict_two_level(fitted, inter, model_bytes, compute_s, g, ranks),
            "stated": comm_model.predict_two_level(stated_intra, comm_model.Level(*link), model_bytes, compute_s,
                                                   g, ranks)}
    return out


# ------------------------------------------------------------------------------------------------------ report

def write_report(records_path: str | Path, out_dir: str | Path, model: ModelInputs | None = None) -> Path:
    """Write ``out_dir/report.md`` and, per mode present, ``throughput-<mode>.png`` and ``efficiency-<mode>.png``.

    With ``model.allreduce`` the report adds the α/β fitted to this machine's all-reduce and a communication
    model at 8..1024 ranks for that link and for a stated one (``link_gbps``, ``link_latency_us``); with
    ``model.allreduce_inter`` too, the two-level model (flat against hierarchical rings, fitted and stated).
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
    model = model or ModelInputs()
    if model.allreduce_inter is not None and model.allreduce is None:
        raise ScalingError("--allreduce-inter: the two-level model also needs --allreduce (a run on one node)")
    comm = None
    if model.allreduce is not None:
        comm = _comm_model(records, tables, records_path, model)
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
    ranks = sorted({r["ranks"] for r in rows})
    p0, x0 = rows[0]["ranks"], rows[0]["samples_per_sec"]
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(ranks, [x0 * p / p0 for p in ranks], "--", color="grey", label=f"ideal (linear from {p0} rank)")
    for label, line in _lines(rows):
        ax.plot([r["ranks"] for r in line], [r["samples_per_sec"] for r in line], "o-", label=label)
    _rank_axis(ax, ranks)
    ax.set_yscale("log")
    label_log_axis(ax.yaxis)
    ax.set_ylabel("samples/s (global)")
    ax.set_title(f"{mode.capitalize()} scaling: throughput")
    ax.legend()
    return fig


def efficiency_figure(mode: str, rows: list[dict[str, Any]]) -> Any:
    """Scaling efficiency against ranks, with the ideal 1.0 (a matplotlib Figure, not saved)."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.axhline(1.0, linestyle="--", color="grey", label="ideal")
    for label, line in _lines(rows):
        ax.plot([r["ranks"] for r in line], [r["efficiency"] for r in line], "o-", label=label)
    _rank_axis(ax, sorted({r["ranks"] for r in rows}))
    ax.set_ylim(0, max(1.1, max(r["efficiency"] for r in rows) * 1.05))
    ax.set_ylabel("efficiency")
    ax.set_title(f"{mode.capitalize()} scaling: efficiency")
    ax.legend(loc="lower left")
    return fig


def _lines(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The rows as plotted: one line per node count when the study has several."""
    counts = sorted({r.get("nodes", 1) for r in rows})
    if len(counts) == 1:
        return [("measured (median)", rows)]
    return [(f"measured, {n} node{'s' * (n > 1)} (median)", [r for r in rows if r.get("nodes", 1) == n])
            for n in counts]


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
    nodes = list(dict.fromkeys(h for r in records if isinstance(r.get("hosts"), dict) for h in r["hosts"]))
    if len(nodes) > 1:
        out.append(f"- nodes the ranks ran on: {', '.join(f'`{h}`' for h in nodes)}")
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
        spread = any(r["nodes"] > 1 for r in rows)
        head = ["ranks", *(["nodes"] if spread else []), "runs", "samples/s", "speedup", "efficiency", "95% CI",
                "verdict", "step ms", *(f"{k} ms" for k in phases)]
        out += ["", _row(head), _row(["---:"] * len(head))]
        for r in rows:
            bd = r["breakdown_ms"] or {}
            ci = r["efficiency_ci"]
            out.append(_row([str(r["ranks"]), *([str(r["nodes"])] if spread else []), str(r["runs"]),
                             f"{r['samples_per_sec']:,.1f}", f"{r['speedup']:.2f}",
                             f"{r['efficiency']:.1%}", _ci_text(ci), "baseline" if ci is None else ci["verdict"],
                             f"{r['step_time_ms']:,.1f}", *(f"{bd[k]:,.1f}" if k in bd else "–" for k in phases)]))
        out += ["", _interval_note(rows)]
        if spread:
            out += _render_placement(mode, placement_table(rows))
        out += ["", f"![{mode} scaling: throughput against ranks](throughput-{mode}.png)",
                f"![{mode} scaling: efficiency against ranks](efficiency-{mode}.png)"]

    if comm is not None:
        out += _render_comm(comm)
    return "\n".join(out) + "\n"


def _render_placement(mode: str, rows: list[dict[str, Any]]) -> list[str]:
    out = ["", f"### {mode.capitalize()} scaling: within a node and between nodes", ""]
    if not rows:
        return out + ["No rank count was run both on one node and on several, so the cost between nodes cannot "
                      "be told from the cost within one: add the same rank count on one node (`--nodes 1,2`)."]
    out += ["The same ranks on one node and spread over several: the cost within a node is in the table above "
            "(each rank count on one node against the baseline); what spreading adds is here. Speed = "
            "T(p, 1 node) / T(p, n nodes), with Welch's 95% interval; below 1 spreading is slower (`behind`).",
            "", _row(["ranks", "nodes", "step ms", "1-node step ms", "speed", "95% CI", "verdict",
                      "allreduce_wait ms", "1-node allreduce_wait ms"]), _row(["---:"] * 9)]
    for r in rows:
        ci = r["ci"]
        waits = [f"{w:,.1f}" if w is not None else "–" for w in (r["allreduce_wait_ms"],
                                                                   r["one_node_allreduce_wait_ms"])]
        out.append(_row([str(r["ranks"]), str(r["nodes"]), f"{r['step_ms']:,.1f}", f"{r['one_node_step_ms']:,.1f}",
                         f"{r['speed']:.2f}x", "–" if ci["low"] is None else f"{ci['low']:.2f}–{ci['high']:.2f}",
                         ci["verdict"], *waits]))
    return out


def _ci_text(ci: dict[str, Any] | None) -> str:
    if ci is None:
        return "–"
    return "–" if ci["low"] is None else f"{ci['low']:.1%}–{ci['high']:.1%}"


def _interval_note(rows: list[dict[str, Any]]) -> str:
    note = ("95% CI: Welch's t-interval of the efficiency from the repeated runs at that rank count and at the "
            "baseline (not paired: separate runs); verdict against ideal scaling (1.0): behind = below it, tie = "
            "cannot be told from it, ahead = above it.")
    single = [str(r["ranks"]) for r in rows if r["efficiency_ci"] is not None and r["efficiency_ci"]["low"] is None]
    if single or rows[0]["runs"] < 2:
        note += (" **No interval** (–) where the baseline or that rank count has a single run: one run says nothing "
                 "about run-to-run spread; record at least 2, better 3 (`hpctrain scaling run --repeats 3`).")
    return note


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _render_comm(c: dict[str, Any]) -> list[str]:
    sizes = c["sizes"]
    memcpy = f"; memcpy on this machine: {c['memcpy_GBps']:.1f} GB/s" if is_number(c["memcpy_GBps"]) else ""
    stated = f"{c['link_gbps']:g} Gb/s link" + (" (InfiniBand EDR)" if c["link_gbps"] == 100 else "")
    out = ["", "## All-reduce on this machine (measured)", "",
           f"From `{c['path']}`: {'raw MPI' if c['impl'] == 'mpi' else 'Horovod'} all-reduce on p = "
           f"{c['world_size']} ranks, {len(sizes)} message sizes "
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
    if c["two_level"] is not None:
        out += _render_two_level(c, c["two_level"])
    return out


def _render_two_level(c: dict[str, Any], t: dict[str, Any]) -> list[str]:
    intra, inter, g = t["intra"], t["inter"], t["gpus_per_node"]

    def hosts(h: Any) -> str:
        return ", ".join(f"{k} ×{v}" for k, v in h.items()) if isinstance(h, dict) else "one machine"

    out = ["", f"## Two-level {MODEL_LABEL[0].lower()}{MODEL_LABEL[1:]}", "",
           "**Predicted, not measured.** Two levels of links, each with its own α and β: within a node and between "
           f"nodes. Each level fitted as above to the {'raw MPI' if c['impl'] == 'mpi' else 'Horovod'} timings "
           "(t(n) = 2(p−1)·α + 2(p−1)/p · n·β):", "",
           f"- within a node, from `{c['path']}` (ranks on {hosts(t['intra_hosts'])}): α = {intra.alpha * 1e6:.2f} µs, "
           f"β = {1 / intra.beta / 1e9:.2f} GB/s",
           f"- between nodes, from `{t['inter_path']}` (ranks on {hosts(t['inter_hosts'])}): "
           f"α = {inter.alpha * 1e6:.2f} µs, β = {1 / inter.beta / 1e9:.2f} GB/s per node", "",
           f"With N nodes of G = {g} ranks (p = N·G), n = {_bytes(c['model_bytes'])} of gradients and "
           f"{c['compute_s'] * 1000:,.2f} ms of compute a step:", "",
           "- **flat**: one ring over all p ranks, placed node by node. Its 2(p−1) steps each move n/p bytes on "
           "every edge at once; some edges cross between nodes, so a step takes the slower level's α + n/p·β.",
           "- **hierarchical** (Horovod's `HOROVOD_HIERARCHICAL_ALLREDUCE`, `comm.hierarchical`; NCCL builds only): "
           "reduce-scatter within the node, all-reduce of each rank's n/G piece between nodes (G rings at once "
           "sharing the node's link), all-gather within the node: 2(G−1)·(α_in + n/G·β_in) + "
           "2(N−1)·(α_out + n/N·β_out).",
           "- same assumptions as above: no overlap with compute, no contention, no stragglers; β between nodes is "
           "what one node can send into the network.", "",
           f"(a) the fitted levels. (b) stated: within a node {t['intra_gbps']:g} Gb/s, α = "
           f"{t['intra_latency_us']:g} µs (NVLink 3 moves 300 GB/s each way); between nodes {c['link_gbps']:g} Gb/s "
           f"per node, α = {c['link_alpha'] * 1e6:g} µs.", "",
           _row(["ranks", "nodes", "(a) flat ms", "(a) hier. ms", "(b) flat ms", "(b) flat eff.", "(b) hier. ms",
                 "(b) hier. eff."]), _row(["---:"] * 8)]
    for a, b in zip(t["fitted"], t["stated"], strict=True):
        out.append(_row([str(a["ranks"]), str(a["nodes"]), f"{a['flat_s'] * 1000:,.2f}",
                         f"{a['hierarchical_s'] * 1000:,.2f}", f"{b['flat_s'] * 1000:,.2f}",
                         f"{b['flat_efficiency']:.1%}", f"{b['hierarchical_s'] * 1000:,.2f}",
                         f"{b['hierarchical_efficiency']:.1%}"]))
    out += ["", f"Beside it, as above: Horovod reached {PUBLISHED}."]
    return out


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"
