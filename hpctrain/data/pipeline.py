"""The data side of a run, built from its ``[data]`` section: what each rank trains and validates on.

:func:`build` resolves the training data (synthetic arrays, a sharded HDF5 dataset, a user's in-memory
arrays or a map-style ``torch.utils.data.Dataset``) into one *train source* and, when there is validation
data, a :class:`ValidationSet`. Every source hands out batches as ``(inputs, targets)``, ``inputs`` being a
tuple of the model's positional inputs, and keeps an exact position (``state_dict``) so that a run resumes
on the very next sample, with the same or another number of ranks.

Checks that may differ between ranks (a path visible on one node only) run through ``rt.agree``, so every
rank fails with the same one-line error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hpctrain.config import ConfigError, DataConfig
from hpctrain.data import synthetic
from hpctrain.data.format import DataError, Manifest
from hpctrain.data.reader import ReaderOptions, ShardedReader, ShardFiles, eval_ids, open_dataset
from hpctrain.data.sampler import GlobalBatchSampler
from hpctrain.data.stage import stage

log = logging.getLogger(__name__)

Batch = tuple[tuple[Any, ...], Any]  # (model inputs, targets): numpy arrays, or tensors from a Dataset
LABEL_SCAN_MAX_BYTES = 256 << 20  # label ranges are checked up front for target fields up to this size


@dataclass(frozen=True)
class BatchOptions:
    """What the data needs from outside its section (``train.batch_size``, ``eval.batch_size``, ``train.seed``)."""

    batch_size: int  # per rank
    eval_batch_size: int
    seed: int


@dataclass(frozen=True)
class SampleShape:
    """One sample as the data produces it, for synthetic data (hpctrain.models.SampleSpec fits this)."""

    input_shape: tuple[int, ...]
    tokens: bool
    num_classes: int


class World(Protocol):  # the part of hpctrain.runtime.Runtime the data needs
    rank: int
    size: int
    local_rank: int

    def agree(self, fn: Callable[[], Any]) -> Any: ...


class TrainSource(Protocol):
    def next_batch(self) -> Batch: ...
    def first(self, n: int) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def _sampler(n: int, opts: BatchOptions, rt: World, remainder: str, key: str) -> GlobalBatchSampler:
    try:
        return GlobalBatchSampler(n, opts.batch_size, rt.rank, rt.size, opts.seed, remainder)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


class SampledSource:
    """A source whose position is a GlobalBatchSampler's (arrays in memory, a user's Dataset)."""

    sampler: GlobalBatchSampler

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def close(self) -> None:
        pass


class ArraySource(SampledSource):
    """Arrays held in memory by every rank (synthetic data, a user's arrays), batched by a GlobalBatchSampler.

    Random access is free here, so the sampler interleaves ranks within each global batch: W ranks with
    batch B train on exactly the samples one rank with batch W*B would (the data-parallel equivalence
    tests rely on it)."""

    def __init__(self, inputs: Sequence[np.ndarray], targets: np.ndarray, sampler: GlobalBatchSampler) -> None:
        self.inputs, self.targets, self.sampler = tuple(inputs), targets, sampler

    def next_batch(self) -> Batch:
        idx = self.sampler.next_indices()
        return tuple(a[idx] for a in self.inputs), self.targets[idx]

    def first(self, n: int) -> Batch:
        return tuple(a[:n] for a in self.inputs), self.targets[:n]


def collate(items: list[Any], key: str) -> Batch:
    """Stack a Dataset's items (``(input, ..., target)`` tuples) into one batch, as DataLoader would."""
    from torch.utils.data import default_collate

    if not items or not isinstance(items[0], (tuple, list)) or len(items[0]) < 2:
        got = type(items[0]).__name__ if items else "nothing"
        raise ConfigError(f"{key}: a Dataset item must be a tuple (input, ..., target); got {got}")
    batch = default_collate(items)
    return tuple(batch[:-1]), batch[-1]


def read_items(dataset: Any, ids: Sequence[int] | np.ndarray, key: str) -> Batch:
    """Items ``ids`` of a user's Dataset as one batch; what its ``__getitem__`` raises names ``key``."""
    from hpctrain import components

    items = components.call(lambda: [dataset[int(i)] for i in ids], key, "Dataset.__getitem__")
    return collate(items, key)


class DatasetSource(SampledSource):
    """A user's map-style ``torch.utils.data.Dataset`` (``len`` and ``[i]``), partitioned by the same global
    sampler as in-memory arrays, so every rank takes its share and a resume continues mid-epoch exactly."""

    def __init__(self, dataset: Any, sampler: GlobalBatchSampler, key: str = "train_data") -> None:
        self.dataset, self.sampler, self.key = dataset, sampler, key

    def next_batch(self) -> Batch:
        return read_items(self.dataset, self.sampler.next_indices(), self.key)

    def first(self, n: int) -> Batch:
        return read_items(self.dataset, range(min(n, len(self.dataset))), self.key)


class FileSource:
    """A sharded HDF5 dataset read by this rank's ShardedReader, with the fields the config chose."""

    def __init__(self, reader: ShardedReader, inputs: list[str], target: str) -> None:
        self.reader, self.inputs, self.target = reader, inputs, target

    def next_batch(self) -> Batch:
        fields = self.reader.next_fields()
        return tuple(fields[n] for n in self.inputs), fields[self.target]

    def first(self, n: int) -> Batch:
        fields = self.reader.files.read(np.arange(min(n, self.reader.num_samples)))
        return tuple(fields[k] for k in self.inputs), fields[self.target]

    def state_dict(self) -> dict[str, Any]:
        return self.reader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reader.load_state_dict(state)

    def close(self) -> None:
        self.reader.close()


class ValidationSet:
    """This rank's share of the validation samples: disjoint, together every sample exactly once."""

    def __init__(self, batch_size: int, ids: np.ndarray, read: Callable[[np.ndarray], Batch],
                 close: Callable[[], None] = lambda: None) -> None:
        self.batch_size, self.ids, self._read, self._close = batch_size, ids, read, close

    def first(self, n: int) -> Batch | None:
        """This rank's first ``n`` validation samples (None when it has none)."""
        return self._read(self.ids[:n]) if len(self.ids) else None

    def batches(self) -> Iterator[Batch]:
        for a in range(0, len(self.ids), self.batch_size):
            yield self._read(self.ids[a:a + self.batch_size])

    def close(self) -> None:
        self._close()


@dataclass
class DataPipeline:
    train: TrainSource
    val: ValidationSet | None
    description: dict[str, Any]  # what data the run used, for the log and summary.json

    def close(self) -> None:
        self.train.close()
        if self.val is not None:
            self.val.close()


def field_names(cfg: DataConfig, manifest: Manifest, path: str) -> tuple[list[str], str]:
    """(input fields, target field) chosen by data.inputs/data.targets, else declared by the manifest."""
    inputs = cfg.inputs or [manifest.inputs]
    target = cfg.targets or manifest.targets
    have = [f.name for f in manifest.fields]
    for key, names in (("data.inputs", inputs), ("data.targets", [target])):
        missing = [n for n in names if n not in have]
        if missing:
            raise ConfigError(f"{key}: {path} has no field {missing[0]!r}; its fields are {', '.join(have)}")
    return inputs, target


def check_shapes(model: str, spec: SampleShape, manifest: Manifest, inputs: list[str], target: str,
                 path: str) -> None:
    """A built-in model's sample shape against the dataset (users' models are checked by a forward)."""
    x, y = manifest.field(inputs[0]), manifest.field(target)
    if len(inputs) > 1:
        raise ConfigError(f"data.inputs: the built-in model {model!r} takes one input field, not {len(inputs)}")
    if tuple(x.shape) != spec.input_shape:
        raise ConfigError(f"{path}: field {x.name!r} has samples of shape {list(x.shape)} but model "
                          f"{model!r} takes {list(spec.input_shape)}: adjust the [model] section")
    if np.dtype(x.dtype).kind not in ("iu" if spec.tokens else "f"):
        raise ConfigError(f"{path}: field {x.name!r} is {x.dtype}, model {model!r} takes "
                          f"{'integer tokens' if spec.tokens else 'real numbers'}")
    target_shape = spec.input_shape if spec.tokens else ()
    if np.dtype(y.dtype).kind in "iu" and tuple(y.shape) != target_shape:
        raise ConfigError(f"{path}: target field {y.name!r} has shape {list(y.shape)}, model {model!r} "
                          f"predicts {list(target_shape)}")


def label_range(files: ShardFiles, target: str) -> tuple[int, int] | None:
    """(min, max) of an integer target field, read in chunks; None for real targets or very large fields."""
    spec = files.manifest.field(target)
    if np.dtype(spec.dtype).kind not in "iu" or files.manifest.num_samples * spec.sample_bytes > LABEL_SCAN_MAX_BYTES:
        return None
    lows, highs = [], []
    step = max(1, (8 << 20) // max(1, spec.sample_bytes))
    for a in range(0, files.manifest.num_samples, step):
        y = files.read(np.arange(a, min(a + step, files.manifest.num_samples)))[target]
        lows.append(int(y.min()))
        highs.append(int(y.max()))
    return (min(lows), max(highs)) if lows else None


def stage_paths(cfg: DataConfig, rt: World, barrier: Callable[[], None]) -> tuple[str, str]:
    """Dataset paths to read from: in place, or staged to node-local storage first (collective)."""
    if not cfg.stage_dir:
        return cfg.path, cfg.val_path
    def staged(path: str) -> str:
        return str(rt.agree(lambda: stage(path, cfg.stage_dir, rt.local_rank, barrier))) if path else ""

    return staged(cfg.path), staged(cfg.val_path)


class Given:
    """Data handed over by a user's script instead of named in the config (see :func:`hpctrain.fit`)."""

    def __init__(self, value: Any, key: str) -> None:
        self.value, self.key = value, key

    def kind(self) -> str:
        v = self.value
        if isinstance(v, (str, Path)):
            return "path"
        if isinstance(v, (tuple, list)):
            return "arrays"
        if hasattr(v, "__getitem__") and hasattr(v, "__len__"):
            return "dataset"
        raise ConfigError(f"{self.key}: expected a dataset directory, a tuple of arrays (inputs..., targets) or "
                          f"a map-style torch.utils.data.Dataset; got {type(v).__name__}")

    def arrays(self) -> tuple[list[np.ndarray], np.ndarray]:
        arrays = [np.asarray(a) for a in self.value]
        if len(arrays) < 2:
            raise ConfigError(f"{self.key}: give at least two arrays: inputs..., targets")
        n = {len(a) for a in arrays}
        if len(n) > 1:
            raise ConfigError(f"{self.key}: the arrays have different lengths {sorted(n)}")
        return arrays[:-1], arrays[-1]


def _label_facts(rng: tuple[int, int] | None, manifest: Manifest) -> dict[str, Any]:
    """A dataset's label range (when scanned) and declared class count, for the description."""
    out: dict[str, Any] = {}
    if rng is not None:
        out["label_range"] = list(rng)
    if isinstance(manifest.metadata.get("num_classes"), int):
        out["num_classes"] = manifest.metadata["num_classes"]
    return out


def _array_labels(targets: np.ndarray) -> dict[str, Any]:
    """The label range of targets held in memory, when they are class labels."""
    if targets.dtype.kind in "iu" and len(targets):
        return {"label_range": [int(targets.min()), int(targets.max())]}
    return {}


def build(cfg: DataConfig, opts: BatchOptions, rt: World, spec: SampleShape | None, model: str,
          barrier: Callable[[], None], train: Given | None = None, val: Given | None = None) -> DataPipeline:
    """The run's training source and validation set (``spec``: a built-in model's sample shape, else None).

    ``train``/``val`` are a script's own data; otherwise the config's synthetic or HDF5 data is used."""
    desc: dict[str, Any] = {}
    train_path, val_path = stage_paths(cfg, rt, barrier) if train is None else ("", "")
    if train is not None and train.kind() == "path":
        train_path = str(train.value)
    if val is not None and val.kind() == "path":
        val_path = str(val.value)

    if train is not None and train.kind() != "path":
        source, desc["train"] = _given_source(train, opts, rt, cfg.remainder)
    elif train_path:
        source, desc["train"] = _file_source(cfg, opts, rt, spec, model, train_path)
    else:
        shape = _synthetic_shape(cfg, spec)
        x, y = synthetic.samples(cfg.samples, shape.input_shape, shape.num_classes, opts.seed, shape.tokens)
        source = ArraySource([x], y, rt.agree(lambda: _sampler(len(x), opts, rt, cfg.remainder, "data.samples")))
        desc["train"] = {"source": "synthetic", "samples": cfg.samples, "input_shape": list(shape.input_shape),
                         "kind": "tokens" if shape.tokens else "classes", "num_classes": shape.num_classes,
                         **_array_labels(y)}

    validation = None
    if val is not None and val.kind() != "path":
        validation, desc["val"] = _given_validation(val, opts, rt)
    elif val_path:
        validation, desc["val"] = _file_validation(cfg, opts, rt, spec, model, val_path)
    elif train is None and not train_path and cfg.val_samples > 0:
        validation, desc["val"] = _synthetic_validation(cfg, opts, rt, spec)
    return DataPipeline(source, validation, desc)


def validation_only(cfg: DataConfig, opts: BatchOptions, rt: World, spec: SampleShape | None, model: str,
                    path: str) -> tuple[ValidationSet, dict[str, Any]] | None:
    """A validation set alone, no training source opened (``hpctrain evaluate``, ``compress``): the dataset
    directory ``path``, else the section's validation data (``data.val_path``, or synthetic
    ``data.val_samples``); None when there is none."""
    path = path or cfg.val_path
    if path:
        return _file_validation(cfg, opts, rt, spec, model, path)
    if not cfg.reads_files and cfg.val_samples > 0:
        return _synthetic_validation(cfg, opts, rt, spec)
    return None


def _synthetic_validation(cfg: DataConfig, opts: BatchOptions, rt: World,
                          spec: SampleShape | None) -> tuple[ValidationSet, dict[str, Any]]:
    shape = _synthetic_shape(cfg, spec)
    arrays = synthetic.samples(cfg.val_samples, shape.input_shape, shape.num_classes, opts.seed,
                               shape.tokens, sample_seed=(opts.seed, 7_000_003))
    validation = ValidationSet(opts.eval_batch_size, eval_ids(cfg.val_samples, rt.rank, rt.size),
                               lambda ids: ((arrays[0][ids],), arrays[1][ids]))
    return validation, {"source": "synthetic", "samples": cfg.val_samples}


def _synthetic_shape(cfg: DataConfig, spec: SampleShape | None) -> SampleShape:
    if cfg.sample_shape:
        classes = cfg.num_classes or (spec.num_classes if spec else 0)
        if classes < 1:
            raise ConfigError("data.num_classes: synthetic data for this model needs the number of classes "
                              "(or the vocabulary for data.sample_kind = \"tokens\")")
        return SampleShape(tuple(cfg.sample_shape), cfg.sample_kind == "tokens", classes)
    if spec is None:
        raise ConfigError("data.sample_shape: a model given by import path trains on synthetic data only with "
                          "data.sample_shape (and data.num_classes) set; or give a dataset in data.path")
    return spec


def _open_fields(cfg: DataConfig, rt: World, spec: SampleShape | None, model: str,
                 path: str) -> tuple[Manifest, list[str], str]:
    """A dataset's manifest and the fields the run reads from it, checked against a built-in model (agreed)."""
    manifest = rt.agree(lambda: open_dataset(path, cfg.verify))
    inputs, target = rt.agree(lambda: field_names(cfg, manifest, path))
    if spec is not None:
        rt.agree(lambda: check_shapes(model, spec, manifest, inputs, target, path))
    return manifest, inputs, target


def _file_source(cfg: DataConfig, opts: BatchOptions, rt: World, spec: SampleShape | None, model: str,
                 path: str) -> tuple[FileSource, dict[str, Any]]:
    manifest, inputs, target = _open_fields(cfg, rt, spec, model, path)
    reader = rt.agree(lambda: ShardedReader(path, manifest, ReaderOptions(
        rt.rank, rt.size, opts.batch_size, opts.seed, cfg.remainder, cfg.shuffle_window, cfg.block_samples,
        cfg.prefetch, cfg.read_threads)))
    rng = rt.agree(lambda: _read_labels(reader.files, target, path))
    desc = {"source": "hdf5", "path": str(Path(path).resolve()), "samples": manifest.num_samples,
            "inputs": inputs, "targets": target, **_label_facts(rng, manifest)}
    return FileSource(reader, inputs, target), desc


def _read_labels(files: ShardFiles, target: str, path: str) -> tuple[int, int] | None:
    try:
        return label_range(files, target)
    except OSError as e:
        raise DataError(f"{path}: cannot read field {target!r} ({e})") from None


def _file_validation(cfg: DataConfig, opts: BatchOptions, rt: World, spec: SampleShape | None, model: str,
                     path: str) -> tuple[ValidationSet, dict[str, Any]]:
    manifest, inputs, target = _open_fields(cfg, rt, spec, model, path)
    files = ShardFiles(Path(path), manifest, [*inputs, target])
    rng = rt.agree(lambda: _read_labels(files, target, path))

    def read(ids: np.ndarray) -> Batch:
        fields = files.read(ids)
        return tuple(fields[n] for n in inputs), fields[target]

    desc = {"source": "hdf5", "path": str(Path(path).resolve()), "samples": manifest.num_samples,
            **_label_facts(rng, manifest)}
    return ValidationSet(opts.eval_batch_size, eval_ids(manifest.num_samples, rt.rank, rt.size), read,
                         files.close), desc


def _given_source(given: Given, opts: BatchOptions, rt: World, remainder: str) -> tuple[TrainSource, dict]:
    if given.kind() == "arrays":
        inputs, targets = given.arrays()
        sampler = rt.agree(lambda: _sampler(len(targets), opts, rt, remainder, given.key))
        desc = {"source": "arrays", "samples": len(targets), "inputs": len(inputs), **_array_labels(targets)}
        return ArraySource(inputs, targets, sampler), desc
    n = len(given.value)
    sampler = rt.agree(lambda: _sampler(n, opts, rt, remainder, given.key))
    return DatasetSource(given.value, sampler, given.key), {"source": "dataset", "samples": n,
                                                            "class": type(given.value).__name__}


def _given_validation(given: Given, opts: BatchOptions, rt: World) -> tuple[ValidationSet, dict[str, Any]]:
    if given.kind() == "arrays":
        inputs, targets = given.arrays()
        desc = {"source": "arrays", "samples": len(targets), **_array_labels(targets)}
        return ValidationSet(opts.eval_batch_size, eval_ids(len(targets), rt.rank, rt.size),
                             lambda ids: (tuple(a[ids] for a in inputs), targets[ids])), desc
    n = len(given.value)
    return ValidationSet(opts.eval_batch_size, eval_ids(n, rt.rank, rt.size),
                         lambda ids: read_items(given.value, ids, given.key)), \
        {"source": "dataset", "samples": n, "class": type(given.value).__name__}
