"""Checkpoint files: atomic write, verification, fallback, pruning, RNG capture, signal flag, watchdog."""

import os
import signal
import threading

import numpy as np
import pytest
import torch

from hpctrain import checkpoint
from hpctrain.checkpoint import RESET_PHASE, CheckpointError, StopFlag, Watchdog
from hpctrain.config import CheckpointConfig, FaultConfig
from tests.data_helpers import SmallDisk


def payload(value: float, size: int = 10):
    tensors = {"model.pt": {"w": torch.full((size,), value)}, "optimizer.pt": {"state": {}, "param_groups": []},
               "extra.pt": {"rng": [checkpoint.capture_rng()]}}
    return tensors, {"step": int(value), "data": {"epoch": 0}}


def test_write_verify_load_round_trip(tmp_path):
    path = checkpoint.write(tmp_path, 7, *payload(7.0))
    assert path.name == "step-00000007" and checkpoint.verify(path) is None
    tensors, state = checkpoint.load(path)
    assert torch.equal(tensors["model.pt"]["w"], torch.full((10,), 7.0)) and state["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000007"]  # no temporary left


@pytest.mark.parametrize("damage, reason", [
    ("truncate", "model.pt does not match its SHA-256"),
    ("tamper", "optimizer.pt does not match its SHA-256"),
    ("no-manifest", "no MANIFEST.json"),
    ("missing-file", "extra.pt is missing"),
])
def test_newest_damaged_checkpoint_falls_back_to_the_previous(tmp_path, damage, reason):
    checkpoint.write(tmp_path, 10, *payload(10.0))
    newest = checkpoint.write(tmp_path, 20, *payload(20.0))
    if damage == "truncate":
        data = (newest / "model.pt").read_bytes()
        (newest / "model.pt").write_bytes(data[: len(data) // 2])
    elif damage == "tamper":
        data = bytearray((newest / "optimizer.pt").read_bytes())
        data[len(data) // 2] ^= 0x01
        (newest / "optimizer.pt").write_bytes(bytes(data))
    elif damage == "no-manifest":
        (newest / "MANIFEST.json").unlink()
    else:
        (newest / "extra.pt").unlink()
    path, skipped = checkpoint.latest_good(tmp_path)
    assert path == tmp_path / "step-00000010"
    assert len(skipped) == 1 and reason in skipped[0] and "step-00000020" in skipped[0]


def test_prune_keeps_the_newest_and_removes_dead_temporaries(tmp_path):
    for step in (1, 2, 3, 4):
        checkpoint.write(tmp_path, step, *payload(float(step)))
    stale = tmp_path / ".step-00000005.tmp-999999999"
    stale.mkdir()
    checkpoint.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-00000004"]


def test_rewriting_a_complete_step_keeps_it(tmp_path):
    first = checkpoint.write(tmp_path, 5, *payload(5.0))
    stamp = (first / "MANIFEST.json").stat().st_mtime_ns
    checkpoint.write(tmp_path, 5, *payload(5.0))
    assert (first / "MANIFEST.json").stat().st_mtime_ns == stamp


def test_disk_full_keeps_the_previous_checkpoint(tmp_path):
    disk = SmallDisk(tmp_path / "small")
    if not disk.mounted:
        pytest.skip(f"cannot mount a tmpfs here ({disk.why}); CI runs as root and can")
    try:
        big = 150_000  # ~600 KB per checkpoint: the second one does not fit in 1 MiB beside the first
        checkpoint.write(disk.path, 1, *payload(1.0, big))
        with pytest.raises(CheckpointError, match="step-00000002: writing the checkpoint failed "
                                                  r"\(No space left on device\); the previous checkpoint is intact"):
            checkpoint.write(disk.path, 2, *payload(2.0, big))
        assert [p.name for p in disk.path.iterdir()] == ["step-00000001"]
        assert checkpoint.verify(disk.path / "step-00000001") is None
    finally:
        disk.close()


def test_async_writer_never_overlaps_and_reports_errors(tmp_path):
    cp = checkpoint.Checkpointer(CheckpointConfig(async_write=True, keep=5), tmp_path / "ck", is_root=True)
    tensors, state = payload(1.0)
    assert cp.save(1, tensors, state) is None
    tensors["model.pt"]["w"].fill_(99.0)  # training goes on: the snapshot must not see this
    assert cp.save(2, *payload(2.0)) is None  # waits for step 1 first
    assert cp.wait() is None
    assert torch.equal(checkpoint.load(tmp_path / "ck" / "step-00000001")[0]["model.pt"]["w"], torch.ones(10))
    blocked = checkpoint.Checkpointer(CheckpointConfig(async_write=True), tmp_path / "file", is_root=True)
    (tmp_path / "file").write_text("not a directory")
    blocked.save(3, *payload(3.0))
    assert "writing the checkpoint failed" in blocked.wait()


def test_rng_state_round_trip():
    import random

    state = checkpoint.capture_rng()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    checkpoint.restore_rng(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_signal_only_sets_a_flag():
    flag = StopFlag()
    flag.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.signum == signal.SIGUSR1
    finally:
        flag.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_watchdog_fires_only_without_progress(capsys):
    """The decision, on a clock the test moves: steady beats never fire; the first check at or past
    watchdog_s without a beat fires once, naming the rank, the last step and the phase."""
    now = [100.0]
    fired = []
    dog = Watchdog(FaultConfig(watchdog_s=0.6), rank=3, abort=lambda: fired.append(now[0]), clock=lambda: now[0])
    for step in range(6):  # steady progress: no alarm
        now[0] += 0.5
        assert not dog.check()
        dog.beat(step, "collective")
    dog.enter("data")
    now[0] += 0.59
    assert not dog.check() and not fired  # control: just under the limit
    now[0] += 0.01
    assert dog.check() and fired == [now[0]]
    err = capsys.readouterr().err
    assert "rank 3" in err and "after step 5, stuck in data (this rank itself is stuck)" in err


def test_peer_timeout_ends_a_wait_for_the_others_but_not_slow_work_or_the_first_step(capsys):
    """fault.peer_timeout_s bounds one wait in the all-reduce (a lost node); a rank busy with its own data or
    compute for as long is left to fault.watchdog_s, and so is the first step (compilation, warm-up). On a
    clock the test moves."""
    now = [0.0]
    fired = []
    dog = Watchdog(FaultConfig(watchdog_s=30, peer_timeout_s=0.5), rank=1, abort=lambda: fired.append(now[0]),
                   clock=lambda: now[0])
    dog.enter("all-reduce")  # the first step's wait: not judged by the peer timeout
    now[0] = 1.0
    assert not dog.check()
    dog.beat(1, "collective")
    dog.enter("data")  # this rank's own slow work
    now[0] = 2.0
    assert not dog.check()
    dog.beat(2, "collective")
    dog.enter("all-reduce")
    now[0] = 2.25
    assert not dog.check() and not fired  # control: under the limit
    now[0] = 2.5
    assert dog.check() and fired == [2.5]
    assert "waited 0.5 s for the other ranks in the all-reduce after step 2 (fault.peer_timeout_s=0.5)" in \
        capsys.readouterr().err


def test_an_elastic_reset_is_bounded_by_the_watchdog_not_the_peer_timeout(capsys):
    """A rank whose all-reduce failed (Horovod elastic) waits for the new rendezvous for as long as the
    launcher takes to give up on the lost workers: that is no wait for a peer's data."""
    now = [0.0]
    fired = []
    dog = Watchdog(FaultConfig(watchdog_s=30, peer_timeout_s=0.5), rank=0, abort=lambda: fired.append(now[0]),
                   clock=lambda: now[0])
    dog.beat(1, "collective")
    dog.beat(2, "collective")
    dog.enter("all-reduce")
    now[0] = 2.4
    dog.enter(RESET_PHASE)
    now[0] = 20.0
    assert not dog.check() and not fired
    now[0] = 32.0  # no step completed for 30 s
    assert dog.check() and "after step 2, stuck in elastic reset" in capsys.readouterr().err


def test_watchdog_thread_ends_the_job_when_nothing_beats():
    """The real thread on the real clock: it calls abort by itself (waited for on an event, not a sleep)."""
    fired = threading.Event()
    dog = Watchdog(FaultConfig(watchdog_s=0.2), rank=0, abort=fired.set)
    dog.start()
    try:
        assert fired.wait(timeout=10)
    finally:
        dog.stop()
