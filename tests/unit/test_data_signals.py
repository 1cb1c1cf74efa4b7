"""Ctrl-C and kills during `hpctrain data shard` / `synth`: real processes, real signals, real HDF5 files."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from hpctrain.data import format as fmt
from hpctrain.data import writer
from tests.launch import HPCTRAIN, env

SAMPLES, SHARDS = 6000, 6  # 74 MB of float32 images: a gzip write takes seconds here, an uncompressed one ~1 s


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    root = tmp_path_factory.mktemp("input")
    rng = np.random.default_rng(0)
    np.save(root / "x.npy", rng.random((SAMPLES, 3, 32, 32), dtype=np.float32))  # random: gzip cannot shortcut
    np.save(root / "y.npy", rng.integers(0, 10, SAMPLES))
    return root


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([HPCTRAIN, "data", *args], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_mid_write(proc: subprocess.Popen, out: Path, timeout: float = 60) -> Path:
    """The writer's temporary directory, once its first shard file is there and the others are still to come."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shards = list(out.parent.glob(f".{out.name}.tmp-*/shard-*"))
        if shards:
            return shards[0].parent
        assert proc.poll() is None, f"the writer ended before writing a shard: {proc.communicate()}"
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("no shard file appeared")


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, str, float]:
    proc.send_signal(sig)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.monotonic() - sent


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_ctrl_c_during_shard_removes_the_partial_output_and_exits_130(tmp_path, arrays, compression):
    out = tmp_path / "out" / "ds"
    proc = start("shard", str(out), "--field", f"x={arrays / 'x.npy'}", "--field", f"y={arrays / 'y.npy'}",
                 "--shards", str(SHARDS), "--compression", compression)
    tmp = wait_mid_write(proc, out)
    code, err, seconds = interrupt(proc)
    assert code == 130, err
    assert err.strip() == f"hpctrain: interrupted: removed partial output {tmp}; {out} was not written"
    assert seconds < 5, "the interrupt waited for the rest of the write"
    assert list(out.parent.iterdir()) == []


def test_interrupted_overwrite_keeps_the_existing_dataset(tmp_path):
    out = tmp_path / "ds"
    subprocess.run([HPCTRAIN, "data", "synth", str(out), "--samples", "100", "--shards", "1"], env=env(), check=True,
                   capture_output=True)
    before = fmt.validate(out)
    proc = start("synth", str(out), "--samples", str(SAMPLES), "--shards", str(SHARDS), "--compression", "gzip",
                 "--overwrite")
    tmp = wait_mid_write(proc, out)
    code, err, _ = interrupt(proc)
    assert code == 130, err
    assert err.strip() == f"hpctrain: interrupted: removed partial output {tmp}; the existing {out} is unchanged"
    assert fmt.validate(out) == before and [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_sigterm_is_honoured_the_same_way(tmp_path):
    """What the ranks get when mpirun itself is interrupted (it sends them SIGTERM) or a job is cancelled."""
    out = tmp_path / "ds"
    proc = start("synth", str(out), "--samples", str(SAMPLES), "--shards", str(SHARDS))
    wait_mid_write(proc, out)
    code, err, _ = interrupt(proc, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM and err.startswith("hpctrain: interrupted: removed partial output"), err
    assert list(tmp_path.iterdir()) == []


def test_next_writer_removes_what_a_killed_one_left(tmp_path):
    out = tmp_path / "ds"
    proc = start("synth", str(out), "--samples", str(SAMPLES), "--shards", str(SHARDS))
    tmp = wait_mid_write(proc, out)
    proc.kill()  # no chance to clean up
    proc.communicate(timeout=60)
    assert tmp.is_dir()
    done = subprocess.run([HPCTRAIN, "data", "synth", str(out), "--samples", "100", "--shards", "1"], env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"removed {tmp}: partial output of a writer that no longer runs (PID {proc.pid})" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["ds"] and fmt.validate(out).num_samples == 100


def test_leftovers_of_a_writer_that_may_still_run_are_named_not_removed(tmp_path, caplog):
    out = tmp_path / "ds"
    running = tmp_path / f".ds.tmp-{os.getpid()}@{socket.gethostname()}"  # this process: it runs
    elsewhere = tmp_path / ".ds.tmp-12345@some-other-node"  # cannot tell from here
    moved_aside = tmp_path / ".ds.old-999999999"  # the old dataset an --overwrite killed mid-way moved aside
    unrelated = tmp_path / ".ds-notes.tmp-999999999"
    for d in (running, elsewhere, moved_aside, unrelated):
        d.mkdir()
    with caplog.at_level(logging.WARNING, logger="hpctrain"):
        assert writer.clean_leftovers(out) == []
    assert all(d.is_dir() for d in (running, elsewhere, moved_aside, unrelated))
    text = caplog.text
    assert f"{running}: left by another writer of {out} (PID {os.getpid()}" in text
    assert f"{elsewhere}: left by another writer of {out} (PID 12345 on some-other-node)" in text
    assert f"{moved_aside}: the previous ds, moved aside" in text and str(unrelated) not in text
