"""A trained model ready for inference, from a checkpoint or an export alone: rebuilt with its compression
(materialised pruning, fp16/bf16 weights, int8 dynamic quantisation), its validation data, and its size.

A compressed checkpoint (written by ``hpctrain compress``) is an ordinary verified checkpoint whose
``train_state.json`` carries a ``compression`` record; the model is rebuilt from the original architecture
(:func:`hpctrain.checkpoint.rebuild_model`), reshaped and converted as the record says, then its weights are
loaded (``weights_only``: no code runs from the file). A ``.pt2`` file is a ``torch.export`` program, read with
the verified checkpoint beside it for its config.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpctrain import checkpoint, models, prune
from hpctrain.checkpoint import CheckpointError
from hpctrain.config import Config, ConfigError, from_dict
from hpctrain.data import pipeline

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXPORT_FILE = "model.pt2"


class CastInputs(nn.Module):
    """A model whose weights are fp16/bf16, taking and returning fp32 like the original (one input)."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, x: torch.Tensor) -> Any:
        out = self.inner(x.to(self.dtype) if x.is_floating_point() else x)
        return out.float() if isinstance(out, torch.Tensor) else out


def quantize_int8(model: nn.Module) -> nn.Module:
    """int8 dynamic quantisation of every nn.Linear (weights int8 per tensor, activations quantised per batch
    at run time), with torch.ao's ``quantize_dynamic`` (docs/compression.md says why not torchao)."""
    with warnings.catch_warnings():  # torch 2.13 warns on every call that the API will move to torchao
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        torch.backends.mha.set_fastpath_enabled(False)  # the fast path crashes on quantised projections
    return quantized


def is_quantized_linear(m: nn.Module) -> bool:
    return isinstance(m, torch.ao.nn.quantized.dynamic.Linear)


def rebuild(ckpt: Path, tensors: dict[str, Any], state: dict[str, Any], key: str) -> nn.Module:
    """The checkpoint's model in eval mode, with the compression its ``train_state.json`` records."""
    record = state.get("compression") or {}
    model = checkpoint.rebuild_model(ckpt, state, key)
    shapes = record.get("shapes") or {}
    if shapes:
        prune.resize_like(model, {name: torch.Size(shape) for name, shape in shapes.items()})
    dtype = DTYPES[record.get("dtype", "fp32")]
    if dtype != torch.float32:
        model = model.to(dtype)
    if record.get("quantize") == "int8":
        model = quantize_int8(model)
    try:
        with warnings.catch_warnings():  # int8 weights: torch 2.13 warns that quantised tensors will move
            warnings.simplefilter("ignore")
            model.load_state_dict(tensors["model.pt"])
    except RuntimeError as e:
        raise CheckpointError(f"{key} {ckpt}: its weights do not fit the model it names "
                              f"({str(e).strip().splitlines()[0]})") from None
    model.eval()
    return CastInputs(model, dtype).eval() if dtype != torch.float32 else model


@dataclass
class Loaded:
    """One model to measure: where it came from, the config it was trained with, and its bytes on disk."""

    path: Path
    model: nn.Module
    cfg: Config
    state: dict[str, Any]
    bytes: int  # model.pt (the weights; optimizer state is not needed for inference) or the .pt2 file
    kind: str  # "checkpoint" | "export"
    compression: dict[str, Any] = field(default_factory=dict)


def open_checkpoint(path: Path, key: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A checkpoint the user named (or a checkpoints directory's newest good one), verified and loaded."""
    ckpt, reason = checkpoint.resolve(path)
    if ckpt is None:
        raise CheckpointError(f"{key} {path}: {reason}")
    tensors, state = checkpoint.load(ckpt)
    return ckpt, tensors, state


def load(path: Path, key: str = "CHECKPOINT") -> Loaded:
    """A checkpoint directory, a checkpoints directory (its newest good checkpoint) or a ``.pt2`` export."""
    if path.suffix == ".pt2":
        if not path.is_file():
            raise CheckpointError(f"{key} {path}: no such export file")
        ckpt, _, state = open_checkpoint(path.parent, f"{key} {path}: the checkpoint beside it,")
        try:
            program = torch.export.load(str(path))
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file: say which
            raise CheckpointError(f"{key} {path}: cannot load the export ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
        return Loaded(path, program.module(), config_of(ckpt, state), state, path.stat().st_size, "export",
                      state.get("compression") or {})
    ckpt, tensors, state = open_checkpoint(path, key)
    model = rebuild(ckpt, tensors, state, key)
    return Loaded(ckpt, model, config_of(ckpt, state), state, (ckpt / "model.pt").stat().st_size, "checkpoint",
                  state.get("compression") or {})


def config_of(ckpt: Path, state: dict[str, Any]) -> Config:
    return from_dict(state["config"], str(ckpt / checkpoint.STATE_FILE))


def weights_of(model: nn.Module) -> list[torch.Tensor]:
    """Every weight tensor of ``model`` once (tied ones once), int8 ones as their integer values."""
    seen: set[int] = set()
    out = []
    for m in model.modules():
        if is_quantized_linear(m):
            w, b = m.weight(), m.bias()  # type: ignore[operator]  # methods on quantised Linear
            tensors = [w.int_repr(), *([b] if b is not None else [])]
        else:
            tensors = [p.detach() for p in m.parameters(recurse=False)]
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def count_parameters(model: nn.Module) -> tuple[int, int, int]:
    """(parameters, non-zero parameters, bytes of those values) of ``model``: quantised layers' weights and
    biases included, an int8 weight at one byte a value. The bytes are what the weights occupy in memory;
    the file adds its container's overhead, which weighs on small models."""
    weights = weights_of(model)
    return (sum(t.numel() for t in weights), sum(int(torch.count_nonzero(t)) for t in weights),
            sum(t.numel() * t.element_size() for t in weights))


def sample_shape(cfg: Config) -> pipeline.SampleShape | None:
    """A built-in model's sample (what the data is checked against); None for a user's model."""
    if not models.is_builtin(cfg.model.name):
        return None
    s = models.sample_spec(cfg.model)
    return pipeline.SampleShape(s.input_shape, s.input_dtype == torch.int64, s.num_classes)


def validation(cfg: Config, data_dir: str, rt: pipeline.World, key: str) -> tuple[pipeline.ValidationSet, dict]:
    """This rank's share of the evaluation data: ``--data DIR``, else the checkpoint's own validation data."""
    opts = pipeline.BatchOptions(cfg.train.batch_size, cfg.eval.batch_size, cfg.train.seed)
    found = pipeline.validation_only(cfg.data, opts, rt, sample_shape(cfg), cfg.model.name, data_dir)
    if found is None:
        raise ConfigError(f"--data: {key} was trained without validation data (no data.val_path or "
                          "data.val_samples in its config): give a dataset directory with --data DIR")
    return found


def first_inputs(val: pipeline.ValidationSet, n: int) -> tuple[torch.Tensor, ...]:
    """``n`` samples of the evaluation data as model inputs (this rank's first ones, repeated as needed)."""
    batch = val.first(n)
    if batch is None:
        raise ConfigError("--data: the evaluation data has no samples")
    inputs = tuple(torch.as_tensor(x) for x in batch[0])
    reps = -(-n // len(inputs[0]))
    return tuple(x.repeat(reps, *[1] * (x.dim() - 1))[:n] for x in inputs)
