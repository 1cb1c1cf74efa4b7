"""The run configuration: one typed dataclass tree, loaded from TOML, overridden by ``section.key=value``.

Every check a user can fail happens here, before any rank communicates, and raises :class:`ConfigError`
naming the offending key; ``hpctrain.cli`` turns that into one line on stderr and exit code 2.

Each section is owned by the component that uses it (the optimizer gets ``cfg.optim``, the checkpointer
``cfg.checkpoint``, the data builder ``cfg.data``...); the ``Trainer`` composes them and so holds the whole
tree. Field help lives in ``metadata["help"]`` so that ``hpctrain config --keys`` and
``docs/configuration.md`` come from the same source.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpctrain.errors import UserError


class ConfigError(UserError):
    """A configuration key, type or value is wrong; the message names the key."""


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    if isinstance(default, (dict, list)):  # a fresh table or list per instance
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


BUILTIN_MODELS = ("mlp", "cnn", "transformer")  # the names hpctrain.models.REGISTRY resolves (unit-tested)
BUILTIN_LOSSES = ("auto", "cross_entropy", "mse")  # hpctrain.models.LOSSES


def is_import_path(text: str) -> bool:
    """``package.module:callable`` (the callable may be dotted: ``module:Class.factory``)."""
    module, sep, attr = text.partition(":")
    return bool(sep) and all(part.isidentifier() for part in (*module.split("."), *attr.split(".")))


def _check_component(value: str, key: str, builtin: tuple[str, ...], empty_ok: bool = False) -> None:
    ok = value in builtin or is_import_path(value) or (empty_ok and value == "")
    names = ", ".join(builtin)
    _check(ok, key, f"{value!r} is neither one of {names} nor an import path \"package.module:callable\"")


@dataclass
class RunConfig:
    dir: str = _f("runs/default", "run directory: metrics.jsonl, summary.json, config.toml, checkpoints")
    log_every: int = _f(10, "log loss and throughput every N steps (also the metrics.jsonl cadence)")
    log_all_ranks: bool = _f(False, "log INFO messages from every rank, not only rank 0")
    progress: Literal["auto", "on", "off"] = _f("auto", "progress bar on rank 0: auto = when stderr is a terminal")
    tensorboard: bool = _f(True, "write TensorBoard event files to <run.dir>/tensorboard (rank 0)")
    timeline: bool = _f(False, "record a Horovod timeline to <run.dir>/horovod-timeline.json (large; for profiling)")
    report: bool = _f(True, "write <run.dir>/report.md and loss.png at the end of the run")
    malloc_keep_mb: int = _f(
        64, "glibc: keep freed blocks up to this many MiB for reuse instead of unmapping them, so each step's "
            "tensors do not page-fault afresh (0 = glibc's defaults)")

    def __post_init__(self) -> None:
        _check(self.dir != "", "run.dir", "must not be empty")
        _check(self.log_every >= 1, "run.log_every", "must be >= 1")
        _check(self.malloc_keep_mb >= 0, "run.malloc_keep_mb", "must be >= 0")


@dataclass
class TrainConfig:
    steps: int = _f(100, "optimizer steps to run (one step = one all-reduced update)")
    batch_size: int = _f(32, "samples per rank per step (global batch = batch_size x world size)")
    seed: int = _f(1234, "seed for model init, data order and every rank's RNG")
    untimed_steps: int = _f(5, "first steps left out of throughput figures (allocator warm-up, first all-reduce "
                               "negotiation); was train.warmup_steps")
    precision: Literal["fp32", "bf16", "fp16"] = _f(
        "fp32", "autocast precision of forward/backward; fp16 adds a loss scaler (overflow steps skipped on all ranks)")
    loss_scale: float = _f(65536.0, "fp16: initial loss scale (halved on overflow, grown after 2000 good steps)")
    grad_accum: int = _f(1, "micro-batches per step: the batch is split in this many backward passes and "
                            "all-reduced once (Horovod backward_passes_per_step)")
    clip_norm: float = _f(0.0, "clip the averaged gradients to this global L2 norm (0 = no clipping)")
    loss: str = _f("auto", "cross_entropy (class or token targets), mse (real-valued targets), auto (the one "
                           "that fits the targets' type), or \"module:callable\" taking (outputs, targets) and "
                           "returning a scalar tensor")

    def __post_init__(self) -> None:
        _check_component(self.loss, "train.loss", BUILTIN_LOSSES)
        _check(self.steps >= 1, "train.steps", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.seed >= 0, "train.seed", "must be >= 0")
        _check(self.untimed_steps >= 0, "train.untimed_steps", "must be >= 0")
        _check(self.loss_scale > 0, "train.loss_scale", "must be > 0")
        _check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        _check(self.batch_size % self.grad_accum == 0, "train.grad_accum",
               f"must divide train.batch_size={self.batch_size} (each micro-batch is batch_size / grad_accum)")
        _check(self.clip_norm >= 0, "train.clip_norm", "must be >= 0")


@dataclass
class ModelConfig:
    name: str = _f("mlp", "a built-in model (mlp, cnn, transformer) or an import path \"package.module:callable\" "
                          "returning a torch.nn.Module (built with [model.args] as keyword arguments)")
    args: dict[str, Any] = _f({}, "keyword arguments of a model given by import path (a [model.args] table; "
                                  "override one as model.args.KEY=VALUE)")
    sync_batchnorm: bool = _f(False, "convert BatchNorm layers to Horovod's SyncBatchNorm: batch statistics over "
                                     "the global batch, not each rank's part")
    width: int = _f(256, "hidden width (mlp), base channels (cnn), model dimension (transformer)")
    depth: int = _f(2, "hidden layers (mlp), residual blocks (cnn), transformer layers (transformer)")
    num_classes: int = _f(10, "output classes (mlp, cnn)")
    input_dim: int = _f(64, "input features (mlp)")
    in_channels: int = _f(3, "image channels (cnn)")
    image_size: int = _f(32, "image height and width (cnn)")
    vocab_size: int = _f(256, "vocabulary size (transformer)")
    seq_len: int = _f(64, "tokens per sample (transformer)")
    heads: int = _f(4, "attention heads (transformer); must divide width")
    activation_checkpointing: bool = _f(False, "recompute blocks' activations in backward instead of keeping "
                                               "them (less memory, about 20% more step time; docs/memory.md)")
    recompute_modules: list[str] = _f([], "activation checkpointing: class names or module names (patterns "
                                          "such as \"layers.*\") to recompute; empty = the built-in models' "
                                          "blocks")

    def __post_init__(self) -> None:
        _check_component(self.name, "model.name", BUILTIN_MODELS)
        _check(not self.args or self.name not in BUILTIN_MODELS, "model.args",
               f"is for models given by import path; the built-in {self.name!r} takes model.width, model.depth...")
        for key in ("width", "depth", "num_classes", "input_dim", "in_channels", "image_size", "vocab_size",
                    "seq_len", "heads"):
            _check(getattr(self, key) >= 1, f"model.{key}", "must be >= 1")
        if self.name == "transformer":  # the built-in's heads split its width
            _check(self.width % self.heads == 0, "model.heads", f"must divide model.width={self.width}")


@dataclass
class DataConfig:
    source: Literal["auto", "synthetic", "hdf5"] = _f(
        "auto", "auto = hdf5 when data.path is set, else synthetic; synthetic = generated in memory from "
                "train.seed; hdf5 = a sharded dataset at data.path")
    path: str = _f("", "hdf5: training dataset directory (manifest.json + shard-*.h5); relative paths are "
                       "relative to the working directory, not to the config file")
    val_path: str = _f("", "hdf5: validation dataset directory (optional)")
    samples: int = _f(8192, "synthetic: number of training samples")
    val_samples: int = _f(0, "synthetic: number of validation samples (0 = no validation)")
    remainder: Literal["drop", "pad"] = _f(
        "drop", "samples left over after an epoch's last full global batch: drop them, or pad by wrapping")
    shuffle_window: int = _f(4096, "hdf5: samples shuffled together in memory (1 = block order only)")
    block_samples: int = _f(0, "hdf5: samples per shuffled block (0 = the dataset's HDF5 chunk size)")
    prefetch: int = _f(4, "hdf5: batches read ahead by the background thread")
    read_threads: int = _f(2, "hdf5: threads copying from the files at once (the kernel copy runs without the GIL)")
    verify: Literal["size", "checksum", "none"] = _f(
        "size", "hdf5: checks at start: size = shard sizes and layout, checksum = also SHA-256 (slow)")
    stage_dir: str = _f("", "copy the datasets to this node-local directory first, once per node "
                            "($VARS expanded, e.g. $TMPDIR); empty = read in place")
    inputs: list[str] = _f([], "hdf5: the dataset fields the model takes, in order (empty = the manifest's "
                               "inputs field); several are passed positionally, or by name with "
                               "data.inputs_by_name")
    inputs_by_name: bool = _f(False, "pass the input fields as keyword arguments named like the fields")
    targets: str = _f("", "hdf5: the field the loss compares against (empty = the manifest's targets field)")
    transform: str = _f("", "\"module:callable\" applied to each training batch on its rank before the forward: "
                            "transform(inputs, targets, generator) -> (inputs, targets); the torch.Generator is "
                            "seeded from (train.seed, rank, step), so a resumed run sees the same batches")
    sample_shape: list[int] = _f([], "synthetic data for a model given by import path: shape of one input "
                                     "sample, e.g. [3, 32, 32] (built-in models know their own)")
    sample_kind: Literal["classes", "tokens"] = _f(
        "classes", "synthetic data for a model given by import path: classes = real inputs and one class "
                   "label each; tokens = token sequences and next-token targets")
    num_classes: int = _f(0, "synthetic data for a model given by import path: classes, or the vocabulary for "
                             "tokens")

    def __post_init__(self) -> None:
        _check(self.source != "synthetic" or not self.path, "data.path",
               f"is set ({self.path!r}) but data.source = \"synthetic\" ignores it: remove one of the two "
               "(data.source = \"auto\" reads the path)")
        _check_component(self.transform, "data.transform", (), empty_ok=True)
        _check(all(d >= 1 for d in self.sample_shape), "data.sample_shape", "sizes must be >= 1")
        _check(self.num_classes >= 0, "data.num_classes", "must be >= 0")
        _check(len(set(self.inputs)) == len(self.inputs), "data.inputs", "names a field twice")
        _check(self.samples >= 1, "data.samples", "must be >= 1")
        _check(self.val_samples >= 0, "data.val_samples", "must be >= 0")
        _check(self.shuffle_window >= 1, "data.shuffle_window", "must be >= 1")
        _check(self.block_samples >= 0, "data.block_samples", "must be >= 0")
        _check(self.prefetch >= 1, "data.prefetch", "must be >= 1")
        _check(self.read_threads >= 1, "data.read_threads", "must be >= 1")
        _check(self.source != "hdf5" or self.path != "", "data.path", "is required when data.source = \"hdf5\"")
        _check(not self.val_path or self.reads_files, "data.val_path",
               "needs a training dataset too: set data.path")

    @property
    def reads_files(self) -> bool:
        """True when the training data is a dataset on disk (data.source, with auto resolved)."""
        return self.source == "hdf5" or (self.source == "auto" and self.path != "")


@dataclass
class EvalConfig:
    every_steps: int = _f(0, "evaluate on the validation set every N steps (0 = only at the end)")
    batch_size: int = _f(256, "validation samples per rank per forward pass")
    metric: str = _f("", "extra validation figure: \"module:callable\" taking (outputs, targets) and returning a "
                         "scalar (a mean over the batch; hpctrain averages it over every sample); empty = accuracy "
                         "for class targets only")

    def __post_init__(self) -> None:
        _check_component(self.metric, "eval.metric", (), empty_ok=True)
        _check(self.every_steps >= 0, "eval.every_steps", "must be >= 0")
        _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw", "lamb", "lars"] = _f("sgd", "optimizer (lamb, lars: layer-wise trust ratios for "
                                                            "large batches)")
    lr: float = _f(0.05, "peak learning rate before scaling (see optim.lr_scaling)")
    momentum: float = _f(0.9, "SGD and LARS momentum")
    nesterov: bool = _f(False, "SGD: Nesterov momentum")
    weight_decay: float = _f(0.0, "weight decay")
    lr_scaling: Literal["none", "linear", "sqrt"] = _f(
        "none", "scale optim.lr by the world size: linear (SGD, Goyal et al.) or sqrt (adaptive optimizers)")
    warmup_steps: int = _f(0, "steps of linear warm-up to the (scaled) peak learning rate")
    decay: Literal["constant", "cosine", "poly", "step"] = _f("constant", "learning-rate decay after warm-up")
    min_lr: float = _f(0.0, "cosine/poly: learning rate at the last step")
    power: float = _f(1.0, "poly: exponent")
    step_size: int = _f(0, "step: decay every N steps after warm-up")
    gamma: float = _f(0.1, "step: multiply by this at every decay")
    fused: bool = _f(True, "sgd, adamw: PyTorch's fused update kernel (one pass over the parameters instead of "
                           "a loop over tensors: faster for large models, docs/performance.md)")
    zero_stage: Literal[0, 1, 2] = _f(0, "ZeRO: 0 = every rank holds all optimizer state; 1 = each rank holds and "
                                         "steps 1/N of it; 2 = gradients sharded too, reduce-scattered during "
                                         "backward (see docs/memory.md)")
    zero_bucket_mb: float = _f(25.0, "ZeRO: MiB of parameters per reduce-scatter bucket (stage 2 starts one as "
                                     "soon as backward has produced it)")

    def __post_init__(self) -> None:
        _check(self.zero_stage in (0, 1, 2), "optim.zero_stage", "must be 0, 1 or 2")
        _check(self.zero_bucket_mb > 0, "optim.zero_bucket_mb", "must be > 0")
        _check(self.lr > 0 and math.isfinite(self.lr), "optim.lr", "must be a positive number")
        _check(0.0 <= self.momentum < 1.0, "optim.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0.0, "optim.weight_decay", "must be >= 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        _check(self.min_lr >= 0.0, "optim.min_lr", "must be >= 0")
        _check(self.min_lr <= self.lr, "optim.min_lr", f"must not exceed optim.lr={self.lr} (it is the floor the "
                                                       "schedule decays to)")
        _check(self.decay != "step" or self.step_size >= 1, "optim.step_size", "must be >= 1 with decay = \"step\"")
        _check(not self.nesterov or (self.name == "sgd" and self.momentum > 0), "optim.nesterov",
               "needs optim.name = \"sgd\" and optim.momentum > 0")


@dataclass
class CommConfig:
    compression: Literal["none", "fp16"] = _f(
        "none", "gradient compression on the wire: fp16 halves bytes, pays only on bandwidth-bound links")
    fusion_threshold_mb: float = _f(64.0, "Horovod tensor-fusion buffer size in MiB (0 disables fusion)")
    cycle_time_ms: float = _f(1.0, "Horovod background-thread cycle time in milliseconds (a single rank "
                                   "uses at least 20: nothing waits on the cycle there)")
    yield_when_idle: bool = _f(
        True, "CPU runs under OpenMPI: let idle ranks yield the core instead of busy-polling")
    hierarchical: bool = _f(
        False, "Horovod's hierarchical all-reduce (HOROVOD_HIERARCHICAL_ALLREDUCE): NCCL reduce-scatter within "
               "each node, MPI all-reduce between nodes, NCCL all-gather within; only on GPUs with a NCCL build "
               "of Horovod and more than one node (elsewhere Horovod ignores it and hpctrain says so)")

    def __post_init__(self) -> None:
        _check(self.fusion_threshold_mb >= 0, "comm.fusion_threshold_mb", "must be >= 0")
        _check(self.cycle_time_ms > 0, "comm.cycle_time_ms", "must be > 0")


@dataclass
class CheckpointConfig:
    every_steps: int = _f(0, "write a checkpoint every N steps (0 = not by steps)")
    every_minutes: float = _f(0.0, "write a checkpoint every T minutes of training (0 = not by time)")
    at_end: bool = _f(True, "write a checkpoint when training finishes")
    keep: int = _f(3, "complete checkpoints to keep (older ones are deleted after a newer one is on disk)")
    dir: str = _f("", "checkpoint directory (empty = <run.dir>/checkpoints)")
    async_write: bool = _f(
        False, "copy state to host memory at the step boundary and write it from a background thread")
    on_error: Literal["stop", "continue"] = _f(
        "stop", "when a checkpoint cannot be written (disk full...): stop the job (exit 2) or train on without it")
    resume: str = _f("auto", "auto = newest good checkpoint if any, never, or a checkpoint directory path")

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, "checkpoint.every_steps", "must be >= 0")
        _check(self.every_minutes >= 0, "checkpoint.every_minutes", "must be >= 0")
        _check(self.keep >= 1, "checkpoint.keep", "must be >= 1")
        _check(self.resume != "", "checkpoint.resume", "must be auto, never or a path")


@dataclass
class FaultConfig:
    watchdog_s: float = _f(
        600.0, "end the job when a rank completes no step for this many seconds (0 = no watchdog)")
    peer_timeout_s: float = _f(
        60.0, "end the job when this rank has waited this many seconds in one step's all-reduce or step-boundary "
              "collective (a lost peer or node; applies from the second step; 0 = only fault.watchdog_s; "
              "elastic runs: Horovod's Gloo timeout is half of it, so the survivors reset first)")
    signal_check_every: int = _f(
        1, "agree on SIGUSR1/SIGTERM and time-based checkpoints every N steps (one tiny all-reduce)")
    elastic: bool = _f(False, "Horovod elastic: keep training when workers are lost or added (launch with "
                              "horovodrun --min-np/--max-np --host-discovery-script)")
    commit_every: int = _f(10, "elastic: commit state in memory every N steps (work since is redone after a loss)")

    def __post_init__(self) -> None:
        _check(self.watchdog_s >= 0, "fault.watchdog_s", "must be >= 0")
        _check(self.peer_timeout_s >= 0, "fault.peer_timeout_s", "must be >= 0")
        _check(self.signal_check_every >= 1, "fault.signal_check_every", "must be >= 1")
        _check(self.commit_every >= 1, "fault.commit_every", "must be >= 1")


@dataclass
class DistillConfig:
    teacher: str = _f("", "knowledge distillation: checkpoint directory of the teacher (its model config is "
                          "read from the checkpoint); empty = no distillation")
    temperature: float = _f(2.0, "softmax temperature of the soft targets")
    alpha: float = _f(0.5, "weight of the soft-target loss; 1 - alpha weighs the hard-label loss")

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "distill.temperature", "must be > 0")
        _check(0.0 <= self.alpha <= 1.0, "distill.alpha", "must be in [0, 1]")


@dataclass
class PruneConfig:
    kind: Literal["none", "unstructured", "structured"] = _f(
        "none", "pruning during training: unstructured = global magnitude over Linear/Conv weights; structured = "
                "whole rows, channels and attention heads (cut out later by `hpctrain compress --materialize`)")
    sparsity: float = _f(0.5, "target fraction pruned, in [0, 1): of all weights (unstructured) or of each "
                              "layer's rows, channels or heads (structured)")
    start_step: int = _f(0, "step at which pruning starts (sparsity 0 there)")
    end_step: int = _f(0, "step at which the target sparsity is reached; fine-tuning goes on after it with the "
                          "masks fixed (must not exceed train.steps)")
    every_steps: int = _f(10, "recompute the masks every N steps between start_step and end_step (Zhu & Gupta's "
                              "cubic schedule)")

    def __post_init__(self) -> None:
        _check(0.0 <= self.sparsity < 1.0, "prune.sparsity", f"must be in [0, 1), got {self.sparsity!r}")
        _check(self.start_step >= 0, "prune.start_step", "must be >= 0")
        _check(self.end_step >= self.start_step, "prune.end_step", f"must be >= prune.start_step={self.start_step}")
        _check(self.every_steps >= 1, "prune.every_steps", "must be >= 1")
        _check(self.kind == "none" or self.end_step >= 1, "prune.end_step",
               "must be >= 1 when pruning (the step at which the target sparsity is reached)")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def __post_init__(self) -> None:
        _check(self.prune.kind == "none" or self.prune.end_step <= self.train.steps, "prune.end_step",
               f"{self.prune.end_step} is beyond train.steps={self.train.steps}: the target would never be reached")
        # Staging waits for the node's local rank 0; a worker joining an elastic run cannot wait with the others.
        _check(not (self.fault.elastic and self.data.stage_dir), "data.stage_dir",
               "not supported with fault.elastic = true: stage the dataset before the job, or read it in place")
        # An elastic reset restores every rank from one worker's in-memory state; sharded state is on no one rank.
        _check(not (self.fault.elastic and self.optim.zero_stage), "optim.zero_stage",
               "not supported with fault.elastic = true (a reset restores every rank from one worker's state, "
               "which holds only its shard): use optim.zero_stage = 0, or resume from checkpoints instead")


def _default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value, whether given directly or by a factory (tables and lists)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _changed(section: Any, *keys: str) -> list[str]:
    """Those of ``keys`` set to something other than their default in ``section``."""
    fields = {f.name: f for f in dataclasses.fields(section)}
    out = []
    for key in keys:
        f = fields[key]
        if getattr(section, key) != _default(f):
            out.append(key)
    return out


def ineffective(cfg: Config, world_size: int) -> list[str]:
    """Keys set away from their default that do nothing under the other settings (a warning each, so a
    silently ignored key is not mistaken for one that took effect)."""
    notes: list[str] = []

    def note(section: str, keys: list[str], why: str) -> None:
        if keys:
            notes.append(f"{', '.join(f'{section}.{k}' for k in keys)}: no effect {why}")

    d = cfg.data
    if d.reads_files:
        note("data", _changed(d, "samples", "val_samples", "sample_shape", "sample_kind", "num_classes"),
             "when reading a dataset (data.path); they describe synthetic data")
    else:
        note("data", _changed(d, "shuffle_window", "block_samples", "prefetch", "read_threads", "verify",
                              "stage_dir", "inputs", "targets", "inputs_by_name"),
             "on synthetic data; they are for datasets read from data.path")
    if cfg.model.name in BUILTIN_MODELS:
        note("data", _changed(d, "sample_shape", "sample_kind", "num_classes"),
             f"with the built-in model {cfg.model.name!r}, which knows its own samples")
    else:
        note("model", _changed(cfg.model, "width", "depth", "num_classes", "input_dim", "in_channels",
                               "image_size", "vocab_size", "seq_len", "heads"),
             "for a model given by import path: give its arguments in [model.args]")
    if not cfg.distill.teacher:
        note("distill", _changed(cfg.distill, "temperature", "alpha"), "without distill.teacher")
    if cfg.prune.kind == "none":
        note("prune", _changed(cfg.prune, "sparsity", "start_step", "end_step", "every_steps"),
             "with prune.kind = \"none\"")
    c = cfg.checkpoint
    if not (c.every_steps or c.every_minutes or c.at_end):
        note("checkpoint", _changed(c, "keep", "async_write", "on_error", "dir"),
             "when no checkpoint is written (every_steps, every_minutes and at_end are all off); stop signals "
             "still write one")
    if world_size == 1:
        note("comm", _changed(cfg.comm, "compression", "fusion_threshold_mb"),
             "on one rank: there is no gradient all-reduce")
    if cfg.train.precision != "fp16":
        note("train", _changed(cfg.train, "loss_scale"), "unless train.precision = \"fp16\"")
    o = cfg.optim
    if o.name not in ("sgd", "lars"):
        note("optim", _changed(o, "momentum"), f"with optim.name = {o.name!r}")
    if o.decay != "poly":
        note("optim", _changed(o, "power"), "unless optim.decay = \"poly\"")
    if o.decay != "step":
        note("optim", _changed(o, "step_size", "gamma"), "unless optim.decay = \"step\"")
    if o.decay in ("constant", "step"):
        note("optim", _changed(o, "min_lr"), f"with optim.decay = {o.decay!r}")
    if o.name in ("lamb", "lars"):
        note("optim", _changed(o, "fused"), f"with optim.name = {o.name!r} (no fused kernel)")
    return notes


def _check(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {what}")


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is dict:  # a free table (model.args): its values are the user's, passed on as they are
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table ([{key}] or {key}.NAME=VALUE), got {value!r}")
        return dict(value)
    if origin is list:
        item = typing.get_args(hint)[0]
        if isinstance(value, (str, int)) and not isinstance(value, bool) and item is type(value):
            value = [value]  # a single name or size stands for a list of one
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(hint, types.UnionType):  # e.g. `str | None`
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(key, value, inner[0])
    raise TypeError(f"unsupported config annotation {hint!r} for {key}")  # a bug in this module, not user input


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


# Keys renamed so that one word means one thing: the old name still works, with a warning, until 0.3.
RENAMED_KEYS = {"train.warmup_steps": "train.untimed_steps"}


def _rename_old_keys(tree: dict[str, Any], source: str) -> None:
    for old, new in RENAMED_KEYS.items():
        section, old_key = old.split(".")
        values = tree.get(section)
        if not isinstance(values, dict) or old_key not in values:
            continue
        new_key = new.split(".")[1]
        if new_key in values:
            raise ConfigError(f"{source}: {old} and {new} are both set; {old} is the old name of {new}: keep one")
        values[new_key] = values.pop(old_key)
        from hpctrain.errors import env_rank

        if env_rank() == 0:
            logging.getLogger("hpctrain").warning("%s: %s is renamed %s; the old name stops working in 0.3",
                                                  source, old, new)


def from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    """Build and validate a :class:`Config` from nested ``{section: {key: value}}`` data."""
    _rename_old_keys(tree, source)
    sections = _sections()
    built: dict[str, Any] = {}
    for name, values in tree.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}]; {_did_you_mean(name, list(sections))}"
                              f"valid sections: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table of key = value")
        cls = sections[name]
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{name}.{key}: unknown key; {_did_you_mean(key, list(hints))}"
                                  f"valid keys in [{name}]: {', '.join(hints)}")
            kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
        built[name] = cls(**kwargs)
    return Config(**built)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` (or ``section.table.name=value`` for a table such as ``model.args``) into
    the dotted path and the value; the value is read as a TOML value, else taken as a bare string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise ConfigError(f"override {text!r}: expected section.key=value (e.g. optim.lr=0.1, or "
                          "model.args.depth=4 for a table)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words such as comm.compression=fp16
    return parts, value


def load(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Load a TOML file (or the defaults when ``path`` is None) and apply ``section.key=value`` overrides."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            tree = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory; --config takes a TOML file") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config ({getattr(e, 'strerror', None) or e})") from None
    return from_dict(apply_overrides(tree, overrides, source), source)


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str], source: str) -> dict[str, Any]:
    """``tree`` with each ``section.key=value`` (or ``section.table.name=value``) set in it."""
    for text in overrides:
        parts, value = parse_override(text)
        node = tree
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = f"[{'.'.join(parts[:i + 1])}]"
                raise ConfigError(f"{source}: {where} must be a table of key = value (override {text!r})")
        node[parts[-1]] = value
    return tree


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML; ``load`` of this text gives back an equal ``Config``."""
    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def describe() -> str:
    """Every key with its type, default and help, for ``hpctrain config`` and the docs."""
    out = []
    for section, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            origin = typing.get_origin(hint)
            if origin is Literal:
                kind = "|".join(map(str, typing.get_args(hint)))
            elif origin is dict:
                kind = "table"
            elif origin is list:
                kind = f"list of {typing.get_args(hint)[0].__name__}"
            else:
                kind = getattr(hint, "__name__", str(hint))
            out.append(f"{section}.{f.name} ({kind}, default {_default(f)!r}): {f.metadata.get('help', '')}")
    return "\n".join(out)
