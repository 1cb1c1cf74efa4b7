"""Small real datasets for the data tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from hpctrain.data import convert, writer


def make_dataset(root: Path, samples: int = 300, shards: int = 3, chunk: int = 8, shape=(4,),
                 compression: str = "none", name: str = "ds"):
    """A 'vectors' dataset whose x[i, 0] == i, so every sample read back names its own id."""
    fields, read, meta = convert.synthetic_input("vectors", samples, seed=1, shape=shape)

    def numbered(a, b):
        arrays = read(a, b)
        arrays["x"][:, 0] = np.arange(a, b)
        return arrays

    m = writer.write_dataset(root / name, fields, numbered, samples, writer.WriteOptions(
        shards, compression, chunk, metadata=meta))
    return root / name, m


def ids_of(x: np.ndarray) -> list[int]:
    return [int(v) for v in x[:, 0]]


class SmallDisk:
    """A real 1 MiB tmpfs (a real ENOSPC, not a simulated one); needs root, as CI has."""

    def __init__(self, path: Path, size: str = "1m") -> None:
        self.path = path
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        self.mounted = proc.returncode == 0
        self.why = proc.stderr.strip()

    def close(self) -> None:
        if self.mounted:
            import gc

            gc.collect()  # close HDF5 files still referenced by a caught exception's frames
            subprocess.run(["umount", str(self.path)], check=True)


class ReadOnlyDir:
    """A real read-only file system (a tmpfs mounted ro): root, as CI runs, can write anywhere else."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                              capture_output=True, text=True)
        self.mounted = proc.returncode == 0
        self.why = proc.stderr.strip()

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.path)], check=True)
