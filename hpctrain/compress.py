"""``hpctrain compress``: post-training compression of a checkpoint into a new verified checkpoint (and an
export for inference without hpctrain).

Steps, in this order, each optional: cut structured-pruned rows and channels out (``--materialize``: smaller
layers, real speed), then int8 dynamic quantisation of the Linear layers (``--quantize int8``) or fp16/bf16
weights (``--dtype``), then a ``torch.export`` program (``--export``: ``model.pt2``) whose outputs are checked
against the compressed model. The outputs of the compressed model against the original are measured on
evaluation samples and recorded (``compress.json`` and the checkpoint's ``compression`` record).

Everything is written into a temporary directory beside ``--out`` and renamed into place at the end: on any
error nothing is left in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpctrain.config import CommConfig
from hpctrain.errors import UserError

log = logging.getLogger(__name__)

# |exported - eager| / max(1, max |eager|) allowed (the same graph of the same kernels: rounding only)
EXPORT_TOLERANCE = 1e-5


class CompressError(UserError):
    """A checkpoint cannot be compressed as asked; the message says why and what to do."""


@dataclass(frozen=True)
class CompressOptions:
    out: Path
    quantize: str = "none"  # "none" | "int8"
    dtype: str = "fp32"  # "fp32" | "fp16" | "bf16"
    materialize: bool = False
    export: bool = False
    data: str = ""
    overwrite: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory (or a checkpoints directory: "
                                                            "its newest good one)")
    p.add_argument("--out", required=True, help="directory to create: a verified checkpoint (+ model.pt2)")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: dynamic quantisation of every Linear (weights int8, activations per batch)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="weights' precision")
    p.add_argument("--materialize", action="store_true",
                   help="cut the rows/channels zeroed by prune.kind=structured out of the layers")
    p.add_argument("--export", action="store_true", help="also write model.pt2 (torch.export), output-checked")
    p.add_argument("--data", default="", help="samples for the output checks (default: the checkpoint's "
                                               "validation data)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (atomically)")


def check_options(opts: CompressOptions) -> None:
    if opts.quantize == "int8" and opts.dtype != "fp32":
        raise CompressError(f"--quantize int8 --dtype {opts.dtype}: int8 dynamic quantisation takes fp32 layers; "
                            "choose one of the two")
    if opts.quantize == "int8" and opts.export:
        raise CompressError("--quantize int8 --export: torch.export in torch 2.13 cannot trace the int8 packed "
                            "weights of quantize_dynamic; export the fp32/bf16 model, or drop --export")
    if opts.quantize == "none" and opts.dtype == "fp32" and not opts.materialize and not opts.export:
        raise CompressError("nothing to do: give --quantize int8, --dtype fp16|bf16, --materialize and/or --export")
    if opts.out.exists() and not opts.overwrite and (not opts.out.is_dir() or any(opts.out.iterdir())):
        raise CompressError(f"--out {opts.out}: exists; choose a new directory or add --overwrite")


def _max_rel_diff(a: Any, b: Any) -> float:
    from hpctrain import models

    x, y = models.logits_of(a).float(), models.logits_of(b).float()
    return float((x - y).abs().max()) / max(1.0, float(y.abs().max()))


def compress(src: str, opts: CompressOptions) -> dict[str, Any]:
    """Write the compressed checkpoint to ``opts.out``; the record of what was done and measured."""
    import torch

    from hpctrain import checkpoint, inference, models, prune, runtime

    check_options(opts)
    ckpt, tensors, state = inference.open_checkpoint(Path(src), "CHECKPOINT")
    if state.get("compression"):
        done = state["compression"]
        raise CompressError(f"CHECKPOINT {ckpt}: is already compressed (quantize {done.get('quantize')}, dtype "
                            f"{done.get('dtype')}, from {done.get('source')}); compress the original instead")
    original = inference.rebuild(ckpt, tensors, state, "CHECKPOINT")
    cfg = inference.config_of(ckpt, state)
    rt = runtime.init(CommConfig())
    val, _ = inference.validation(cfg, opts.data, rt, str(ckpt))
    try:
        inputs = inference.first_inputs(val, min(256, cfg.eval.batch_size))
    finally:
        val.close()
    model = inference.rebuild(ckpt, tensors, state, "CHECKPOINT")  # a second copy, changed in place
    record: dict[str, Any] = {"source": str(ckpt), "quantize": opts.quantize, "dtype": opts.dtype}
    if opts.materialize:
        shrunk = prune.materialize(model)
        if not shrunk:
            raise CompressError(f"--materialize: {ckpt} has no all-zero rows or channels to cut out: train it "
                                "with prune.kind = \"structured\" first")
        record["materialized"] = {name: list(v) for name, v in shrunk.items()}
        record["shapes"] = {name: list(m.weight.shape) for name, m in prune.named_producers(model)}
    if opts.quantize == "int8":
        if not any(isinstance(m, torch.nn.Linear) for m in model.modules()):
            raise CompressError(f"--quantize int8: the model of {ckpt} ({cfg.model.name}) has no nn.Linear layer "
                                "to quantise")
        model = inference.quantize_int8(model)
    elif opts.dtype != "fp32":
        model = model.to(inference.DTYPES[opts.dtype])
    model.eval()
    runnable = inference.CastInputs(model, inference.DTYPES[opts.dtype]) if opts.dtype != "fp32" else model
    with torch.inference_mode():
        before, after = original(*inputs), runnable(*inputs)
    checks: dict[str, Any] = {"samples": len(inputs[0]), "max_rel_diff_vs_original": _max_rel_diff(after, before)}
    if cfg.train.loss != "mse":
        top1 = models.logits_of(after).argmax(-1) == models.logits_of(before).argmax(-1)
        checks["top1_agreement"] = float(top1.float().mean())
    record["checks"] = checks
    new_state = {**state, "compression": record}
    tmp = opts.out.parent / f".{opts.out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_into(tmp, int(state["step"]), {"model.pt": model.state_dict(), "optimizer.pt": {},
                                                        "extra.pt": {}}, new_state)
        if opts.export:
            checks["export"] = export(runnable, inputs, tmp / inference.EXPORT_FILE)
        from hpctrain import files

        files.write_atomic(tmp / "compress.json", (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
        files.fsync_dir(tmp)
        files.replace_dir(tmp, opts.out, str(os.getpid()))
        files.fsync_dir(opts.out.parent)
    except OSError as e:
        raise CompressError(f"--out {opts.out}: cannot write ({e.strerror or e}); nothing was left there") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def export(model: Any, inputs: tuple[Any, ...], path: Path) -> dict[str, Any]:
    """``torch.export`` ``model`` with a dynamic batch dimension to ``path``, loaded back and checked: the
    program's outputs against the eager model's on ``inputs`` (and on one sample, another batch size)."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        program = torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
    except Exception as e:  # noqa: BLE001 - the tracer's many errors: one line, and what to do
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompressError(f"--export: torch.export cannot trace this model ({type(e).__name__}: {first}); "
                            "compress without --export") from None
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    worst = 0.0
    with torch.inference_mode():
        for x in (inputs, tuple(t[:1] for t in inputs)):
            worst = max(worst, _max_rel_diff(loaded(*x), model(*x)))
    if worst > EXPORT_TOLERANCE:
        raise CompressError(f"--export: the exported program's outputs differ from the model's by {worst:.2e} "
                            f"(relative; tolerance {EXPORT_TOLERANCE:g}): compress without --export")
    return {"file": path.name, "max_rel_diff": worst, "tolerance": EXPORT_TOLERANCE}


def main(args: argparse.Namespace) -> int:
    opts = CompressOptions(Path(args.out), args.quantize, args.dtype, args.materialize, args.export, args.data,
                           args.overwrite)
    record = compress(args.checkpoint, opts)
    checks = record["checks"]
    parts = [f"quantize {record['quantize']}", f"dtype {record['dtype']}"]
    if "materialized" in record:
        parts.append("materialized " + ", ".join(f"{k} {a}->{b}" for k, (a, b) in record["materialized"].items()))
    print(f"{args.out}: compressed ({'; '.join(parts)}); outputs vs the original on {checks['samples']} samples: "
          f"max relative difference {checks['max_rel_diff_vs_original']:.2e}"
          + (f", top-1 agreement {checks['top1_agreement']:.4f}" if "top1_agreement" in checks else "")
          + (f"; export {checks['export']['file']} matches within {checks['export']['max_rel_diff']:.1e}"
             if "export" in checks else ""))
    return 0
