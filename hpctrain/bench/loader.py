"""`hpctrain bench loader`: the hpctrain HDF5 reader against the practical limit and the naive alternative.

Three ways to read the same dataset, interleaved and repeated, on one rank:
  raw     sequential read() of the shard files' bytes, 8 MiB at a time: the storage/page-cache limit;
  hpctrain  ShardedReader (block reads, shuffle window, prefetch thread), steady state: whole epochs timed
            after one untimed epoch (the first batch's latency is reported apart);
  naive   torch.utils.data.DataLoader over a Dataset doing one h5py read per index (shuffle=True).
Warm: the page cache holds the files (read once before). Cold: each file's cached pages are dropped
first with posix_fadvise(DONTNEED) (no root needed); the reported figure is then a lower bound of the disk.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hpctrain.data import convert, writer
from hpctrain.data import format as fmt
from hpctrain.data.reader import ReaderOptions, ShardedReader
from hpctrain.files import write_atomic


def drop_cache(root: Path, manifest: fmt.Manifest) -> None:
    for shard in manifest.shards:
        fd = os.open(root / shard.file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(root: Path, manifest: fmt.Manifest) -> float:
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    start = time.perf_counter()
    for shard in manifest.shards:
        with open(root / shard.file, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
    return time.perf_counter() - start


def reader_read(root: Path, manifest: fmt.Manifest, batch: int, window: int, epochs: int,
                cold: bool = False) -> tuple[float, int, float]:
    """Steady state: ``epochs`` epochs timed after one untimed epoch (opening shards, first touch of the
    read buffers). Also returns the first batch's latency."""
    r = ShardedReader(root, manifest, ReaderOptions(0, 1, batch, seed=0, window=window))
    per_epoch = r.steps_per_epoch()
    if cold:
        drop_cache(root, manifest)
    t0 = time.perf_counter()
    r.next_batch()
    first = time.perf_counter() - t0
    for _ in range(per_epoch - 1):
        r.next_batch()
    if cold:
        drop_cache(root, manifest)
    start = time.perf_counter()
    for _ in range(per_epoch * epochs):
        x, y = r.next_batch()
        if cold and r.steps == 0:  # a new epoch: make it cold again (the files fit in the page cache)
            drop_cache(root, manifest)
    elapsed = time.perf_counter() - start
    r.close()
    return elapsed, per_epoch * epochs * batch, first


def naive_read(root: Path, manifest: fmt.Manifest, batch: int, limit: int) -> tuple[float, int]:
    import h5py
    import torch
    from torch.utils.data import DataLoader, Dataset

    starts = np.cumsum([0] + [s.samples for s in manifest.shards])

    class PerSample(Dataset):
        def __init__(self) -> None:
            self.files: dict[int, Any] = {}

        def __len__(self) -> int:
            return manifest.num_samples

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            s = int(np.searchsorted(starts, i, side="right") - 1)
            if s not in self.files:
                self.files[s] = h5py.File(root / manifest.shards[s].file, "r")
            f = self.files[s]
            j = i - starts[s]
            return torch.from_numpy(f[manifest.inputs][j]), torch.as_tensor(f[manifest.targets][j])

    loader = DataLoader(PerSample(), batch_size=batch, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    n = 0
    start = time.perf_counter()
    for x, _ in loader:
        n += len(x)
        if n >= limit:
            break
    return time.perf_counter() - start, n


def run(path: str | None, samples: int, shards: int, batch: int, window: int, repeats: int, naive_samples: int,
        cold: bool, epochs: int = 3) -> dict[str, Any]:
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="hpctrain-bench-")
        root = Path(tmp.name) / "ds"
        fields, read, meta = convert.synthetic_input("images", samples, seed=0)
        writer.write_dataset(root, fields, read, samples, writer.WriteOptions(shards, metadata=meta))
    else:
        root = Path(path)
    manifest = fmt.validate(root, checksum=False)
    sample_bytes = manifest.field(manifest.inputs).sample_bytes + manifest.field(manifest.targets).sample_bytes
    file_bytes = manifest.num_bytes
    results: dict[str, Any] = {"dataset": {"samples": manifest.num_samples, "shards": len(manifest.shards),
                                           "file_mib": file_bytes / 2**20, "sample_bytes": sample_bytes,
                                           "chunk_samples": manifest.chunk_samples,
                                           "compression": manifest.compression},
                               "batch": batch, "window": window, "repeats": repeats, "epochs": epochs,
                               "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                                        "python": platform.python_version()}}
    modes = ["warm"] + (["cold"] if cold else [])
    for mode in modes:
        rates: dict[str, list[float]] = {"raw": [], "hpctrain": [], "naive": []}
        latency: list[float] = []
        raw_read(root, manifest)  # warm the page cache (and the code paths)
        for _ in range(repeats):  # interleaved, so drift in the machine's state hits all three alike
            if mode == "cold":
                drop_cache(root, manifest)
            t = raw_read(root, manifest)
            rates["raw"].append(manifest.num_samples / t)
            t, n, first = reader_read(root, manifest, batch, window, epochs, cold=mode == "cold")
            rates["hpctrain"].append(n / t)
            latency.append(first)
            if mode == "cold":
                drop_cache(root, manifest)
            t, n = naive_read(root, manifest, batch, naive_samples)
            rates["naive"].append(n / t)
        med = {k: statistics.median(v) for k, v in rates.items()}
        results[mode] = {
            "samples_per_sec": med,
            "mib_per_sec": {"raw": med["raw"] * file_bytes / manifest.num_samples / 2**20,
                            "hpctrain": med["hpctrain"] * sample_bytes / 2**20,
                            "naive": med["naive"] * sample_bytes / 2**20},
            "all_runs": rates,
            "hpctrain_first_batch_s": statistics.median(latency),
            "hpctrain_vs_raw": med["hpctrain"] / med["raw"],
            "hpctrain_vs_naive": med["hpctrain"] / med["naive"],
        }
    if tmp is not None:
        tmp.cleanup()
    return results


def report(results: dict[str, Any]) -> str:
    d = results["dataset"]
    lines = [f"dataset: {d['samples']:,} samples x {d['sample_bytes']:,} B in {d['shards']} shards "
             f"({d['file_mib']:,.0f} MiB, chunks of {d['chunk_samples']}, compression {d['compression']}); "
             f"batch {results['batch']}, shuffle window {results['window']}, median of {results['repeats']}",
             f"{'cache':<6}{'reader':<10}{'samples/s':>14}{'MiB/s':>10}"]
    for mode in ("warm", "cold"):
        if mode not in results:
            continue
        r = results[mode]
        for name in ("raw", "hpctrain", "naive"):
            lines.append(f"{mode:<6}{name:<10}{r['samples_per_sec'][name]:>14,.0f}{r['mib_per_sec'][name]:>10,.0f}")
        lines.append(f"{mode:<6}ratios: hpctrain/raw = {r['hpctrain_vs_raw']:.2f}x   "
                     f"hpctrain/naive = {r['hpctrain_vs_naive']:.1f}x   "
                     f"(hpctrain first batch after {r['hpctrain_first_batch_s'] * 1000:.0f} ms)")
    return "\n".join(lines)


def add_arguments(parser: Any) -> None:
    parser.add_argument("--path", help="existing dataset (default: generate synthetic images in a temp dir)")
    parser.add_argument("--samples", type=int, default=20_000, help="generated dataset size (12 KiB/sample)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--window", type=int, default=4096, help="reader shuffle window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs the hpctrain reader is timed over")
    parser.add_argument("--naive-samples", type=int, default=5_000, help="samples timed for the naive loader")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache measurement")
    parser.add_argument("--json", help="also write the results to this file")


def main(args: Any) -> None:
    results = run(args.path, args.samples, args.shards, args.batch, args.window, args.repeats,
                  args.naive_samples, not args.no_cold, args.epochs)
    print(report(results))
    if args.json:
        write_atomic(Path(args.json), (json.dumps(results, indent=2) + "\n").encode())
