"""What `hpctrain data shard` and `hpctrain data synth` convert into a dataset: arrays on disk, synthetic tasks.

Each source is ``(fields, num_samples, read)`` with ``read(start, stop)`` returning only that range, so
conversion memory stays bounded whatever the input size.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hpctrain.data import synthetic
from hpctrain.data.format import DataError, FieldSpec

ArrayReader = Callable[[int, int], np.ndarray]


def _npy_member(zf: zipfile.ZipFile, member: str, origin: str) -> tuple[np.dtype, tuple[int, ...], ArrayReader]:
    """Stream rows of one array inside a .npz (compressed or not) without loading it whole."""
    try:
        info = zf.getinfo(member + ".npy")
    except KeyError:
        names = [n.removesuffix(".npy") for n in zf.namelist()]
        raise DataError(f"{origin}: no array {member!r} in the archive (has: {', '.join(names)})") from None
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DataError(f"{origin}: array {member!r} uses .npy format {version}; save it with numpy.savez")
        offset = f.tell()
    if fortran:
        raise DataError(f"{origin}: array {member!r} is Fortran-ordered; save it C-ordered")
    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    # A compressed member is a stream: a seek decompresses everything before the target, from the start
    # when it goes back. Writers read in increasing order, so one open stream makes a conversion linear,
    # not quadratic, and keeps each read short enough for an interrupt to be seen soon after.
    stream: list[Any] = []

    def read(a: int, b: int) -> np.ndarray:
        if not stream or stream[0].tell() > offset + a * row:
            if stream:
                stream.pop().close()
            stream.append(zf.open(info))
        f = stream[0]
        f.seek(offset + a * row)
        buf = f.read((b - a) * row)
        return np.frombuffer(buf, dtype=dtype).reshape((b - a, *shape[1:]))

    return dtype, tuple(shape), read


def open_array(spec: str) -> tuple[np.dtype, tuple[int, ...], ArrayReader]:
    """``file.npy``, ``file.npz:name`` or ``file.h5:/dataset`` -> (dtype, shape, read(start, stop))."""
    path, _, member = spec.partition(":")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: input file not found")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, mmap_mode="r")
            return arr.dtype, arr.shape, lambda a, b: np.asarray(arr[a:b])
        if p.suffix == ".npz":
            if not member:
                raise DataError(f"{spec}: name the array inside the .npz as {path}:NAME")
            return _npy_member(zipfile.ZipFile(p), member, path)
        if p.suffix in (".h5", ".hdf5", ".hdf"):
            import h5py

            if not member:
                raise DataError(f"{spec}: name the HDF5 dataset as {path}:/NAME")
            f = h5py.File(p, "r")
            if member not in f or not isinstance(f[member], h5py.Dataset):
                raise DataError(f"{path}: no dataset {member!r} in the file")
            d = f[member]
            return d.dtype, d.shape, lambda a, b: d[a:b]
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read input ({e})") from None
    raise DataError(f"{path}: unsupported input type {p.suffix!r}; use .npy, .npz:NAME or .h5:/NAME")


def from_arrays(specs: dict[str, str]) -> tuple[list[FieldSpec], int, Callable[[int, int], dict]]:
    """Fields from ``{"x": "features.npy", "y": "data.npz:labels"}``; all must have the same sample count."""
    opened = {name: open_array(spec) for name, spec in specs.items()}
    counts = {name: shape[0] if shape else 0 for name, (_, shape, _) in opened.items()}
    if len(set(counts.values())) != 1:
        raise DataError("input arrays differ in sample count: "
                        + ", ".join(f"{n}={c} ({specs[n]})" for n, c in counts.items()))
    n = next(iter(counts.values()))
    if n == 0:
        raise DataError(f"{next(iter(specs.values()))}: input is empty (0 samples)")
    fields = [FieldSpec(name, str(dtype), tuple(shape[1:])) for name, (dtype, shape, _) in opened.items()]

    def read(a: int, b: int) -> dict[str, np.ndarray]:
        return {name: r(a, b) for name, (_, _, r) in opened.items()}

    return fields, n, read


SYNTH_TASKS = ("images", "vectors", "regression", "tokens")


SPLITS = ("train", "val", "test")


def synthetic_input(task: str, num_samples: int, seed: int, shape: tuple[int, ...] | None = None,
                     num_classes: int = 10, split: str = "train") -> tuple[list[FieldSpec], Callable, dict]:
    """A deterministic synthetic task; any range of samples can be generated on its own (parallel writes).

    The task itself (class patterns, teacher, chain) depends on ``seed``; ``split`` draws disjoint samples
    of the same task, so a validation set measures generalisation rather than memory."""
    if split not in SPLITS:
        raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    split_id = SPLITS.index(split)
    if task == "images":
        shape = shape or (3, 32, 32)
    elif task in ("vectors", "regression"):
        shape = shape or (64,)
    elif task == "tokens":
        shape = shape or (64,)
    else:
        raise DataError(f"task {task!r}: expected one of {', '.join(SYNTH_TASKS)}")

    if task in ("images", "vectors"):
        fields = [FieldSpec("x", "float32", shape), FieldSpec("y", "int64", ())]
        meta = {"task": task, "num_classes": num_classes}

        def read(a: int, b: int) -> dict[str, np.ndarray]:
            x, y = synthetic.classification(b - a, shape, num_classes, seed, sample_seed=(seed, split_id, a))
            return {"x": x, "y": y}
    elif task == "regression":
        fields = [FieldSpec("x", "float32", shape), FieldSpec("y", "float32", (num_classes,))]
        meta = {"task": task, "outputs": num_classes}

        def read(a: int, b: int) -> dict[str, np.ndarray]:
            x, y = synthetic.regression(b - a, shape, num_classes, seed, sample_seed=(seed, split_id, a))
            return {"x": x, "y": y}
    else:
        fields = [FieldSpec("x", "int64", shape), FieldSpec("y", "int64", shape)]
        meta = {"task": task, "vocab_size": 256}

        def read(a: int, b: int) -> dict[str, np.ndarray]:
            x, y = synthetic.token_sequences(b - a, shape[0], 256, seed, sample_seed=(seed, split_id, a))
            return {"x": x, "y": y}
    return fields, read, meta
