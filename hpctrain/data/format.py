"""The sharded HDF5 dataset format (docs/data-format.md): a directory of ``shard-NNNNN.h5`` files and a
``manifest.json`` describing fields, shards, sizes and checksums. Reading, checking and hashing live here;
writing is in ``writer.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpctrain.errors import UserError
from hpctrain.files import sha256_file

FORMAT_NAME = "hpctrain.sharded-hdf5"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
COMPRESSIONS = ("none", "lzf", "gzip")


class DataError(UserError):
    """A dataset is missing, malformed or does not match its manifest; the message names the file."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[int, ...]  # per sample; () for a scalar

    @property
    def sample_bytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class ShardInfo:
    file: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    fields: list[FieldSpec]
    shards: list[ShardInfo]
    chunk_samples: int
    compression: str = "none"
    inputs: str = "x"  # field fed to the model
    targets: str = "y"  # field the loss compares against
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for f in d["fields"]:
            f["shape"] = list(f["shape"])
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "num_samples": self.num_samples, **d}

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str) -> Manifest:
        try:
            if d.get("format") != FORMAT_NAME:
                raise DataError(f"{source}: not an hpctrain dataset manifest (format={d.get('format')!r})")
            if d.get("version") != FORMAT_VERSION:
                raise DataError(f"{source}: manifest version {d.get('version')} is not supported "
                                f"(this hpctrain reads version {FORMAT_VERSION})")
            fields = [FieldSpec(f["name"], str(np.dtype(f["dtype"])), tuple(int(n) for n in f["shape"]))
                      for f in d["fields"]]
            shards = [ShardInfo(str(s["file"]), int(s["samples"]), int(s["bytes"]), str(s["sha256"]))
                      for s in d["shards"]]
            m = cls(fields, shards, int(d["chunk_samples"]), str(d.get("compression", "none")),
                    str(d.get("inputs", "x")), str(d.get("targets", "y")), dict(d.get("metadata", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{source}: malformed manifest ({type(e).__name__}: {e})") from None
        names = [f.name for f in m.fields]
        for role, name in (("inputs", m.inputs), ("targets", m.targets)):
            if name not in names:
                raise DataError(f"{source}: {role} field {name!r} is not among the fields {names}")
        if m.num_samples == 0 or not m.shards:
            raise DataError(f"{source}: the dataset is empty (no samples); regenerate it")
        if "num_samples" in d and int(d["num_samples"]) != m.num_samples:
            raise DataError(f"{source}: num_samples {d['num_samples']} != sum of shard samples {m.num_samples}")
        return m


def _not_a_dataset_dir(path: Path) -> str:
    """What ``path`` is instead of a dataset directory, and what to pass."""
    if not path.exists():
        return "dataset directory not found (relative paths are relative to the working directory)"
    if path.name == MANIFEST:
        return f"is the manifest file: pass its directory, {path.parent}"
    if path.suffix in (".h5", ".hdf5") and (path.parent / MANIFEST).exists():
        return f"is one shard of a dataset: pass the dataset directory, {path.parent}"
    if path.suffix in (".npy", ".npz", ".h5", ".hdf5"):
        return (f"is a {path.suffix} file, not a dataset directory: convert it first with "
                f"`hpctrain data shard DIR --field x={path.name}...`, then pass DIR")
    return "is a file, not a dataset directory (a directory of shard-*.h5 files and manifest.json)"


def read_manifest(root: str | Path) -> Manifest:
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise DataError(f"{root}: {_not_a_dataset_dir(Path(root))}")
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: manifest not found; is {root} an hpctrain dataset? "
                        "(create one with `hpctrain data shard` or `hpctrain data synth`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: manifest is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: manifest is not a JSON object")
    return Manifest.from_json(d, str(path))


def check_shard(root: Path, manifest: Manifest, shard: ShardInfo, checksum: bool) -> None:
    """Raise DataError naming the shard if it is missing, truncated, not HDF5, or differs from the manifest."""
    import h5py

    path = root / shard.file
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: shard listed in the manifest is missing") from None
    if size != shard.bytes:
        raise DataError(f"{path}: {size} bytes but the manifest says {shard.bytes} (truncated or replaced)")
    try:
        with h5py.File(path, "r") as f:
            for spec in manifest.fields:
                if spec.name not in f:
                    raise DataError(f"{path}: field {spec.name!r} is missing")
                d = f[spec.name]
                if str(d.dtype) != spec.dtype or tuple(d.shape[1:]) != spec.shape:
                    raise DataError(f"{path}: field {spec.name!r} is {d.dtype}{list(d.shape[1:])}, the manifest "
                                    f"says {spec.dtype}{list(spec.shape)}")
                if d.shape[0] != shard.samples:
                    raise DataError(f"{path}: field {spec.name!r} has {d.shape[0]} samples, the manifest says "
                                    f"{shard.samples}")
    except OSError as e:
        raise DataError(f"{path}: cannot be read as HDF5 ({e})") from None
    if checksum and sha256_file(path) != shard.sha256:  # after the layout: a garbage file says "not HDF5"
        raise DataError(f"{path}: SHA-256 does not match the manifest (corrupted or modified)")


def validate(root: str | Path, checksum: bool = True) -> Manifest:
    """Check the manifest against every shard; returns the manifest or raises DataError naming the file."""
    root = Path(root)
    manifest = read_manifest(root)
    seen = set()
    for shard in manifest.shards:
        if shard.file in seen or os.sep in shard.file or shard.file.startswith("."):
            raise DataError(f"{root / MANIFEST}: bad shard file name {shard.file!r}")
        seen.add(shard.file)
        check_shard(root, manifest, shard, checksum)
    return manifest


def describe(root: str | Path) -> str:
    """Human summary for ``hpctrain data inspect``."""
    m = read_manifest(root)
    lines = [f"dataset {root}: {m.num_samples:,} samples in {len(m.shards)} shard(s), "
             f"{m.num_bytes / 2**20:,.1f} MiB on disk, chunks of {m.chunk_samples} samples, "
             f"compression {m.compression}"]
    for f in m.fields:
        role = " (inputs)" if f.name == m.inputs else " (targets)" if f.name == m.targets else ""
        lines.append(f"  field {f.name}{role}: {f.dtype} {list(f.shape)}, {f.sample_bytes} bytes/sample")
    if m.metadata:
        lines.append("  metadata: " + json.dumps(m.metadata, sort_keys=True))
    sizes = [s.samples for s in m.shards]
    lines.append(f"  shards: {m.shards[0].file} .. {m.shards[-1].file}, {min(sizes)}-{max(sizes)} samples each")
    return "\n".join(lines)
