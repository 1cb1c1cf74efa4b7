"""Message sizes and implementation lists of `hpctrain bench allreduce` (no MPI)."""

import argparse

import pytest

from hpctrain.bench.allreduce import add_arguments, bus_factor, format_size, parse_impls, parse_size, sizes
from hpctrain.errors import UserError


@pytest.mark.parametrize("text, nbytes", [
    ("4096", 4096), ("4KB", 4096), ("4kb", 4096), ("4K", 4096), ("4KiB", 4096), ("1MB", 2**20),
    ("256MB", 256 * 2**20), ("1GB", 2**30), ("0.5MB", 2**19), (" 8 KB ", 8192), ("64B", 64),
])
def test_parse_size(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", ["", "KB", "4TB", "-4KB", "4 K B", "1.3KB", "4MBs"])
def test_parse_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


@pytest.mark.parametrize("nbytes", [64, 4096, 12288, 2**20, 256 * 2**20, 2**30, 1000])
def test_format_size_round_trips(nbytes):
    assert parse_size(format_size(nbytes)) == nbytes


def test_default_sizes_are_4kb_to_256mb_by_4():
    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args([])
    got = sizes(a.min_size, a.max_size, a.factor)
    assert [format_size(s) for s in got] == ["4KB", "16KB", "64KB", "256KB", "1MB", "4MB", "16MB", "64MB", "256MB"]
    assert a.impl == ["horovod", "horovod-fp16", "mpi"] and a.iters == 0 and a.warmup == 2 and a.json is None


def test_sizes_stop_at_max_on_the_grid():
    assert sizes(4096, 100_000, 4) == [4096, 16384, 65536]
    assert sizes(4096, 4096, 2) == [4096]


@pytest.mark.parametrize("args", [(4096, 1024, 4), (4095, 8192, 4), (0, 8192, 4), (4096, 8192, 1)])
def test_sizes_rejects(args):
    with pytest.raises(UserError):
        sizes(*args)


def test_parse_impls():
    assert parse_impls("mpi,horovod,mpi") == ["mpi", "horovod"]
    with pytest.raises(argparse.ArgumentTypeError, match="horovod-fp16"):
        parse_impls("horovod,nccl")


def test_bus_factor():
    assert (bus_factor(1), bus_factor(2), bus_factor(4)) == (0.0, 1.0, 1.5)
