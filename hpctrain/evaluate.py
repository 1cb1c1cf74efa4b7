"""``hpctrain evaluate``: what a trained (and maybe compressed) model costs and how well it does, measured side
by side with others.

For each checkpoint or export: loss and accuracy (or ``eval.metric``) on an evaluation set, parameters and
non-zero parameters, bytes on disk and bytes of weights in memory, and CPU inference latency (p50/p99 of
single calls) at each ``--batch`` size, with samples/s. The evaluation set is split over the ranks (each
sample once; the sums all-reduced in float64, so N ranks give 1 rank's figures to rounding). Latency is timed
on rank 0 alone after that, the variants interleaved round by round (the order rotated each round) so that
load from elsewhere on the machine falls on all of them alike; each figure is the median over every timed call
after warm-up, and ``spread`` is (max - min) / median of the per-round medians: how stable it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpctrain.config import CommConfig, ConfigError

if TYPE_CHECKING:  # torch and the models load only when the command runs, not for `hpctrain --help`
    import torch

    from hpctrain.inference import Loaded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimingOptions:
    batches: tuple[int, ...] = (1, 64)
    rounds: int = 5  # interleaved rounds; the order of the variants is rotated each round
    min_time_s: float = 0.2  # per variant, batch size and round (at least min_calls calls)
    min_calls: int = 10
    warmup_calls: int = 20  # per variant and batch size, before the first round
    threads: int = 1  # intra-op threads while timing


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="checkpoint directories (or a checkpoints directory: its newest good one), compressed "
                        "ones from `hpctrain compress`, or .pt2 exports; ratios are to the first")
    p.add_argument("--data", default="", help="evaluation dataset directory (default: each checkpoint's "
                                               "validation data, data.val_path or synthetic data.val_samples)")
    p.add_argument("--batch", default="1,64", help="comma list of batch sizes timed (default 1,64)")
    p.add_argument("--rounds", type=int, default=TimingOptions.rounds, help="interleaved timing rounds")
    p.add_argument("--min-time", type=float, default=TimingOptions.min_time_s,
                   help="seconds timed per model, batch size and round (default 0.2)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads while timing (default 1: single-"
                                                         "thread latency, steadier on a shared machine)")
    p.add_argument("--labels", help="comma list of names for the table (default: the paths)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--markdown", help="also write the table to this file")
    p.add_argument("--no-timing", action="store_true", help="accuracy, sizes and counts only")


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        batches = ()
    if not batches or min(batches) < 1:
        raise ConfigError(f"--batch {text!r}: expected a comma list of batch sizes >= 1, e.g. 1,64")
    return batches


def score(loaded: Loaded, val: Any) -> dict[str, float]:
    """Sums over this rank's share of the evaluation set: loss, correct, predictions, samples, metric."""
    import torch

    with torch.inference_mode():
        return _score(loaded, val)


def _score(loaded: Loaded, val: Any) -> dict[str, float]:
    import torch

    from hpctrain import components, models

    cfg = loaded.cfg
    loss_fn = models.build_loss(cfg.train.loss)
    metric_fn = components.resolve(cfg.eval.metric, "eval.metric") if cfg.eval.metric else None
    totals = torch.zeros(5, dtype=torch.float64)
    for inputs, target in val.batches():
        x = tuple(torch.as_tensor(a) for a in inputs)
        y = torch.as_tensor(target)
        outputs = components.call(loaded.model, "CHECKPOINT", f"the model of {loaded.path}", *x)
        n = len(y)
        totals[0] += float(loss_fn(outputs, y)) * n
        totals[3] += n
        if not y.is_floating_point() and cfg.train.loss != "mse":
            totals[1] += float((models.logits_of(outputs).argmax(-1) == y).sum())
            totals[2] += y.numel()
        if metric_fn is not None:
            totals[4] += float(metric_fn(outputs, y)) * n
    return dict(zip(("loss_sum", "correct", "predictions", "samples", "metric_sum"), totals.tolist(), strict=True))


def finish_scores(t: dict[str, float], has_metric: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"val_samples": int(t["samples"]), "val_loss": t["loss_sum"] / t["samples"]}
    if t["predictions"] > 0:
        out["val_accuracy"] = t["correct"] / t["predictions"]
        out["val_correct"] = int(t["correct"])
    if has_metric:
        out["val_metric"] = t["metric_sum"] / t["samples"]
    return out


def _call_times(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], min_time: float,
                min_calls: int) -> list[float]:
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_time:
        t0 = time.perf_counter_ns()
        model(*inputs)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def time_models(models_: list[torch.nn.Module], inputs: dict[int, list[tuple[torch.Tensor, ...]]],
                opts: TimingOptions) -> list[dict[str, Any]]:
    """Latency per model and batch size, interleaved: ``inputs[b][i]`` is model i's input batch of size b."""
    import torch

    with torch.inference_mode():
        return _time_models(models_, inputs, opts)


def _time_models(models_: list[torch.nn.Module], inputs: dict[int, list[tuple[torch.Tensor, ...]]],
                 opts: TimingOptions) -> list[dict[str, Any]]:
    n = len(models_)
    for b in opts.batches:
        for i, m in enumerate(models_):
            _call_times(m, inputs[b][i], 0.0, opts.warmup_calls)
    calls: list[dict[int, list[float]]] = [{b: [] for b in opts.batches} for _ in range(n)]
    rounds: list[dict[int, list[float]]] = [{b: [] for b in opts.batches} for _ in range(n)]
    for r in range(opts.rounds):
        for b in opts.batches:
            for k in range(n):
                i = (k + r) % n  # rotate: no model always runs first (or right after another's caches)
                t = _call_times(models_[i], inputs[b][i], opts.min_time_s, opts.min_calls)
                calls[i][b] += t
                rounds[i][b].append(statistics.median(t))
    out = []
    for i in range(n):
        per_batch = {}
        for b in opts.batches:
            p50 = statistics.median(calls[i][b])
            medians = rounds[i][b]
            per_batch[str(b)] = {"p50_ms": p50, "p99_ms": _quantile(calls[i][b], 0.99), "calls": len(calls[i][b]),
                                 "samples_per_s": b / (p50 / 1e3), "round_p50_ms": medians,
                                 "spread": (max(medians) - min(medians)) / statistics.median(medians)}
        out.append(per_batch)
    return out


def describe(loaded: Loaded, label: str) -> dict[str, Any]:
    from hpctrain import inference

    params, nonzero, weight_bytes = inference.count_parameters(loaded.model)
    return {"label": label, "path": str(loaded.path), "kind": loaded.kind, "model": loaded.cfg.model.name,
            "compression": loaded.compression, "step": loaded.state.get("step"), "params": params,
            "nonzero_params": nonzero, "bytes": loaded.bytes, "weight_bytes": weight_bytes}


def ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's figures against the first row's, in place: x smaller, x faster, accuracy points."""
    base = rows[0]
    for row in rows:
        r: dict[str, Any] = {"smaller": base["bytes"] / row["bytes"],
                             "smaller_weights": base["weight_bytes"] / row["weight_bytes"],
                             "fewer_nonzero": base["nonzero_params"] / max(1, row["nonzero_params"])}
        if "val_accuracy" in row and "val_accuracy" in base:
            r["accuracy_points"] = 100 * (row["val_accuracy"] - base["val_accuracy"])
        if "val_metric" in row and "val_metric" in base:
            r["metric_delta"] = row["val_metric"] - base["val_metric"]
        r["faster"] = {b: base["latency"][b]["p50_ms"] / t["p50_ms"] for b, t in row.get("latency", {}).items()
                       if b in base.get("latency", {})}
        row["vs_first"] = r


def markdown(result: dict[str, Any]) -> str:
    rows = result["variants"]
    batches = list(rows[0].get("latency", {}))
    head = ["model", "params", "non-zero", "MB on disk", "x smaller", "MB of weights", "x smaller (weights)",
            "accuracy", "points vs first"]
    if "val_metric" in rows[0]:
        head.append("metric")
    for b in batches:
        head += [f"p50 ms (b={b})", f"p99 ms (b={b})", f"samples/s (b={b})", f"x faster (b={b})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        v = row["vs_first"]
        cells = [row["label"], f"{row['params']:,}", f"{row['nonzero_params']:,}", f"{row['bytes'] / 1e6:.3f}",
                 f"{v['smaller']:.2f}", f"{row['weight_bytes'] / 1e6:.3f}", f"{v['smaller_weights']:.2f}",
                 f"{row['val_accuracy']:.4f}" if "val_accuracy" in row else "-",
                 f"{v['accuracy_points']:+.2f}" if "accuracy_points" in v else "-"]
        if "val_metric" in rows[0]:
            cells.append(f"{row.get('val_metric', float('nan')):.4f}")
        for b in batches:
            t = row["latency"][b]
            cells += [f"{t['p50_ms']:.4f}", f"{t['p99_ms']:.4f}", f"{t['samples_per_s']:,.0f}", f"{v['faster'][b]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    m = result["machine"]
    lines.append("")
    lines.append(f"{rows[0]['val_samples']} evaluation samples over {m['world_size']} rank(s); latency on rank 0 "
                 f"with {m['threads']} thread(s) of {m['cpus']} CPU(s), {m['rounds']} interleaved rounds"
                 + (f", spread (max-min)/median of the round medians at most {m['max_spread']:.2f}"
                    if m.get("max_spread") is not None else "") + ". " + m["note"])
    return "\n".join(lines)


def evaluate(paths: list[str], labels: list[str], data: str, timing: TimingOptions | None, rt: Any) -> dict[str, Any]:
    """Collective: every rank scores its share of each model's evaluation set; rank 0 times them. The
    result on every rank."""
    import horovod.torch as hvd
    import torch

    from hpctrain import inference

    loaded, vals = [], []
    for path in paths:
        item = rt.agree(lambda p=path: inference.load(Path(p)))
        loaded.append(item)
        vals.append(rt.agree(lambda item=item: inference.validation(item.cfg, data, rt, str(item.path))))
    rows = []
    for i, (item, label, (val, desc)) in enumerate(zip(loaded, labels, vals, strict=True)):
        sums = rt.agree(lambda item=item, val=val: score(item, val))
        t = torch.tensor(list(sums.values()), dtype=torch.float64)
        if rt.size > 1:
            t = hvd.allreduce(t, op=hvd.Sum, name=f"hpctrain.evaluate.{i}")  # dist: each sample once
        row = describe(item, label)
        row.update(finish_scores(dict(zip(sums, t.tolist(), strict=True)), bool(item.cfg.eval.metric)))
        row["data"] = desc.get("path") or desc.get("source")
        rows.append(row)
    result: dict[str, Any] = {"variants": rows}
    threads = torch.get_num_threads()
    if rt.is_root and timing is not None:
        torch.set_num_threads(timing.threads)
        inputs = {b: [inference.first_inputs(val, b) for val, _ in vals] for b in timing.batches}
        for row, lat in zip(rows, time_models([x.model for x in loaded], inputs, timing), strict=True):
            row["latency"] = lat
        torch.set_num_threads(threads)
    for val, _ in vals:
        val.close()
    ratios(rows)
    spreads = [t["spread"] for r in rows for t in r.get("latency", {}).values()]
    result["machine"] = {"cpus": os.cpu_count(), "threads": timing.threads if timing else threads,
                         "world_size": rt.size, "rounds": timing.rounds if timing else 0,
                         "max_spread": max(spreads) if spreads else None,
                         "torch": torch.__version__,
                         "note": os.environ.get("HPCTRAIN_BENCH_NOTE", "")}
    if rt.size > 1:
        result = hvd.broadcast_object(result, root_rank=0, name="hpctrain.evaluate.result")  # dist
    return result


def main(args: argparse.Namespace) -> int:
    from hpctrain import files, runtime

    batches = parse_batches(args.batch)
    labels = args.labels.split(",") if args.labels else list(args.checkpoints)
    if len(labels) != len(args.checkpoints):
        raise ConfigError(f"--labels: {len(labels)} names for {len(args.checkpoints)} checkpoints")
    if args.rounds < 1 or args.min_time < 0:
        raise ConfigError("--rounds must be >= 1 and --min-time >= 0")
    timing = None if args.no_timing else TimingOptions(batches, args.rounds, args.min_time, threads=args.threads)
    if args.threads < 1:
        raise ConfigError("--threads must be >= 1")
    rt = runtime.init(CommConfig())
    result = evaluate(args.checkpoints, labels, args.data, timing, rt)
    result["options"] = {"data": args.data, **(asdict(timing) if timing else {})}
    if rt.is_root:
        table = markdown(result) if timing else markdown_counts(result)
        print(table)
        if args.json:
            files.write_atomic(Path(args.json), (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
        if args.markdown:
            files.write_atomic(Path(args.markdown), (table + "\n").encode())
    return 0


def markdown_counts(result: dict[str, Any]) -> str:
    """The table without latency columns (``--no-timing``)."""
    for row in result["variants"]:
        row.setdefault("latency", {})
    return markdown(result)
