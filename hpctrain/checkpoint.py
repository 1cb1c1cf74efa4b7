"""Atomic, verified checkpoints; choosing the one to resume from; the stop flag set by signals; the watchdog.

A checkpoint is a directory ``<dir>/step-00001000/`` holding ``model.pt``, ``optimizer.pt``, ``extra.pt``
(RNG states of every rank, an empty ``lr_scheduler`` dict since the schedule is a function of the
samples trained on, and the loss scaler) and ``train_state.json`` (step, samples seen, data position, world
size, config, versions), plus ``MANIFEST.json`` with the SHA-256 of every file, written last. Rank 0 writes
it under a temporary name, fsyncs every file and the directory, and renames it into place: a directory
named ``step-*`` with a matching manifest is complete, anything else is ignored. With sharded optimizer
state (``optim.zero_stage``) every rank also writes its ``optimizer-shard-RRRRR-of-NNNNN.pt`` into a staging
directory first; rank 0 moves them in before the manifest, which lists them too. Loading never runs code
from the file (``torch.load(weights_only=True)`` and JSON).
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hpctrain import files
from hpctrain.config import CheckpointConfig, FaultConfig
from hpctrain.errors import UserError

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")
TENSOR_FILES = ("model.pt", "optimizer.pt", "extra.pt")
STATE_FILE = "train_state.json"
SHARD_FILE = re.compile(r"^optimizer-shard-\d{5}-of-\d{5}\.pt$")  # sharded optimizer state, one per rank


class CheckpointError(UserError):
    """A checkpoint cannot be written or read; the message says where and why."""


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def _torch_bytes(obj: Any) -> bytes:
    # serialised in memory and written by Python: a full disk then raises ENOSPC, where torch.save to a
    # file reports only "unexpected pos"
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def shard_staging(root: Path, step: int) -> Path:
    """Where every rank writes its shard of a sharded optimizer's state before rank 0 moves the shards into the
    checkpoint (same file system: a rename)."""
    return root / f".{step_dir(root, step).name}.shards"


def write_shard(root: Path, step: int, name: str, content: Any) -> tuple[str | None, str | None]:
    """This rank's shard into the staging directory of ``step``: (SHA-256, None), or (None, why not)."""
    staging = shard_staging(root, step)
    try:
        staging.mkdir(parents=True, exist_ok=True)
        return files.write_synced(staging / name, _torch_bytes(content)), None
    except OSError as e:
        return None, (f"{step_dir(root, step)}: writing the optimizer shard {name} failed ({e.strerror or e}); "
                      "the previous checkpoint is intact. Free space or fix permissions")


def write(root: Path, step: int, tensors: dict[str, Any], state: dict[str, Any],
          shards: dict[str, str] | None = None) -> Path:
    """Write a complete checkpoint for ``step`` atomically; an existing complete one is kept as it is.
    ``shards`` (file name -> SHA-256) were written by every rank into :func:`shard_staging` and move in too."""
    final = step_dir(root, step)
    staging = shard_staging(root, step)
    if final.exists() and verify(final) is None:
        shutil.rmtree(staging, ignore_errors=True)
        return final  # the same step's state, already safely on disk (e.g. at the end right after a save)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        root.mkdir(parents=True, exist_ok=True)
        moved_in = {name: (staging / name, digest) for name, digest in (shards or {}).items()}
        write_into(tmp, step, tensors, state, moved_in)
        if final.exists():  # an incomplete leftover of a crashed writer: nothing worth keeping
            shutil.rmtree(final)
        os.replace(tmp, final)
        files.fsync_dir(root)
        shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{final}: writing the checkpoint failed ({e.strerror or e}); "
                              "the previous checkpoint is intact. Free space or fix permissions") from None
    return final


def write_into(path: Path, step: int, tensors: dict[str, Any], state: dict[str, Any],
               moved_in: dict[str, tuple[Path, str]] | None = None) -> None:
    """The files of a checkpoint in the new directory ``path``, each fsynced, the manifest last (the caller
    renames ``path`` into place). ``moved_in``: files already written and synced elsewhere on the same file
    system (name -> (where, SHA-256)), renamed in: the ranks' optimizer shards."""
    path.mkdir()
    digests = {}
    for name in TENSOR_FILES:
        digests[name] = files.write_synced(path / name, _torch_bytes(tensors[name]))
    digests[STATE_FILE] = files.write_synced(path / STATE_FILE, json.dumps(state, indent=1, sort_keys=True).encode())
    for name, (where, digest) in (moved_in or {}).items():
        os.replace(where, path / name)
        digests[name] = digest
    manifest = {"step": step, "files": digests, "written_at": time.time()}
    files.write_synced(path / MANIFEST, json.dumps(manifest, indent=1).encode())
    files.fsync_dir(path)


def verify(path: Path) -> str | None:
    """None if ``path`` is a complete checkpoint whose files match their SHA-256, else the reason."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        digests = manifest["files"]
    except FileNotFoundError:
        return "no MANIFEST.json (incomplete: the writer did not finish)"
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return f"unreadable MANIFEST.json ({e})"
    for name in (*TENSOR_FILES, STATE_FILE, *sorted(set(digests) - {*TENSOR_FILES, STATE_FILE})):
        if name not in digests:
            return f"{name} missing from the manifest"
        f = path / name
        if not f.exists():
            return f"{name} is missing"
        if files.sha256_file(f) != digests[name]:
            return f"{name} does not match its SHA-256 (truncated or modified)"
    return None


def candidates(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, newest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)), reverse=True)  # type: ignore


def latest_good(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies, and why each newer one was passed over."""
    skipped: list[str] = []
    for path in candidates(root):
        reason = verify(path)
        if reason is None:
            return path, skipped
        skipped.append(f"{path}: {reason}")
    return None, skipped


def resolve(path: Path) -> tuple[Path | None, str | None]:
    """A checkpoint the user named: ``path`` itself, or for a checkpoints directory its newest good one
    (logging why newer ones were passed over). (checkpoint, None) if it verifies, else (None, why not)."""
    if path.is_dir() and not (path / MANIFEST).exists() and candidates(path):
        newest, skipped = latest_good(path)  # verified already: no second pass over the files
        for reason in skipped:
            log.warning("passing over %s", reason)
        return (newest, None) if newest is not None else (None, "no good checkpoint in it")
    why = verify(path)
    return (path, None) if why is None else (None, why)


def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensors and train state of a verified checkpoint; never unpickles arbitrary objects."""
    try:
        tensors = {name: torch.load(path / name, map_location="cpu", weights_only=True) for name in TENSOR_FILES}
        state = json.loads((path / STATE_FILE).read_text())
        shards = sorted(p for p in json.loads((path / MANIFEST).read_text())["files"] if SHARD_FILE.match(p))
        if shards:  # mapped, not read: a rank copies only the ranges it owns
            tensors["optimizer.pt"]["shards"] = [torch.load(path / name, map_location="cpu", weights_only=True,
                                                            mmap=True) for name in shards]
    except (OSError, RuntimeError, json.JSONDecodeError, pickle.UnpicklingError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot load checkpoint ({first})") from None
    return tensors, state


def rebuild_model(path: Path, state: dict[str, Any], key: str) -> torch.nn.Module:
    """The model a checkpoint was trained with, from its recorded config alone (a built-in name, or the
    user's import path and args); a path that no longer imports fails naming the checkpoint."""
    from hpctrain import config as config_mod
    from hpctrain import models

    saved = state.get("model_given")
    if saved == "object":
        raise CheckpointError(f"{key} {path}: its model was handed to hpctrain.fit as an object, so the checkpoint "
                              "cannot rebuild it: pass the model again (or train it by import path)", agreed=True)
    cfg = config_mod.from_dict(state["config"], str(path / STATE_FILE)).model
    try:
        return models.build(cfg)
    except UserError as e:
        raise CheckpointError(f"{key} {path}: {e}", agreed=True) from None


def prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; remove older ones and stale temporaries."""
    complete = [p for p in candidates(root) if (p / MANIFEST).exists()]
    for old in complete[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(".step-*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True)


def snapshot(obj: Any) -> Any:
    """A host-memory copy of nested state (tensors cloned to CPU), safe to write while training goes on."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


@dataclass
class WriteStats:
    count: int = 0
    stall_s: float = 0.0  # time the training loop waited for checkpoints (snapshot, or the whole write)
    write_s: float = 0.0  # time spent writing, in the loop or in the background
    errors: list[str] = field(default_factory=list)


class Checkpointer:
    """Writes checkpoints on rank 0, synchronously or from a background thread (one at a time)."""

    def __init__(self, cfg: CheckpointConfig, root: Path, is_root: bool) -> None:
        self.cfg = cfg
        self.root = root
        self.is_root = is_root
        self.stats = WriteStats()
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._last_time = time.monotonic()
        self._last_step: int | None = None  # the step last saved (on every rank: saving is collective)

    def due(self, step: int) -> bool:
        """Step-based trigger (the same on every rank)."""
        return bool(self.cfg.every_steps) and step % self.cfg.every_steps == 0

    def has(self, step: int) -> bool:
        """True when this run already saved ``step`` (the end of training right after a periodic save)."""
        return self._last_step == step

    def time_due(self) -> bool:
        """Time-based trigger as this rank sees it; the ranks agree on it before acting (see StopFlag)."""
        return bool(self.cfg.every_minutes) and time.monotonic() - self._last_time >= 60 * self.cfg.every_minutes

    def save(self, step: int, tensors: dict[str, Any], state: dict[str, Any], sync: bool = False,
             shard: tuple[str, Any] | None = None) -> str | None:
        """Start (async) or do (sync) a checkpoint of ``step`` on rank 0. Returns the error of this or the
        previous write, if any (rank 0 only). With ``shard`` (file name, content: this rank's part of a sharded
        optimizer state; a collective then) every rank first writes its own, synchronously."""
        self._last_time = time.monotonic()
        self._last_step = step
        shards: dict[str, str] | None = None
        shard_error = None
        if shard is not None:
            import horovod.torch as hvd

            t0 = time.perf_counter()
            digest, why = write_shard(self.root, step, *shard)
            written = hvd.allgather_object((shard[0], digest, why), name="hpctrain.ckpt_shards")  # dist
            self.stats.stall_s += time.perf_counter() - t0
            shard_error = next((w for _, _, w in written if w), None)
            shards = {name: d for name, d, _ in written if d}
        if not self.is_root:
            return None
        t0 = time.perf_counter()
        error = self.wait()  # dist: never two checkpoints in flight; the older one is on disk first
        if shard_error is not None:
            shutil.rmtree(shard_staging(self.root, step), ignore_errors=True)
            error = error or shard_error
        elif self.cfg.async_write and not sync:
            tensors = snapshot(tensors)
            self._thread = threading.Thread(target=self._write, args=(step, tensors, state, shards), daemon=True,
                                            name="hpctrain-checkpoint")
            self._thread.start()
        else:
            self._write(step, tensors, state, shards)
            error = error or self._take_error()
        self.stats.stall_s += time.perf_counter() - t0
        return error

    def _write(self, step: int, tensors: dict[str, Any], state: dict[str, Any],
               shards: dict[str, str] | None = None) -> None:
        t0 = time.perf_counter()
        try:
            path = write(self.root, step, tensors, state, shards)
            prune(self.root, self.cfg.keep)
            self.stats.count += 1
            log.info("checkpoint %s written (%.2f s)", path, time.perf_counter() - t0)
        except CheckpointError as e:
            self._error = str(e)
            self.stats.errors.append(str(e))
        self.stats.write_s += time.perf_counter() - t0

    def _take_error(self) -> str | None:
        error, self._error = self._error, None
        return error

    def wait(self) -> str | None:
        """Block until the background write (if any) is on disk; its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self._take_error()


def capture_rng() -> dict[str, Any]:
    """This rank's RNG states (torch, numpy, python) as tensors and plain lists (weights_only-loadable)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "numpy_rest": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}


def restore_rng(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    kind, pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state((kind, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class StopFlag:
    """Set by SIGUSR1/SIGTERM (Slurm's --signal and pre-emption) and Ctrl-C (a second one stops at once); only
    sets a flag, the ranks act on it together at a step boundary."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            if sig == signal.SIGINT and signal.getsignal(sig) is signal.SIG_IGN:
                continue  # nohup and background jobs ignore Ctrl-C: keep it so
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the checkpoint
        self.signum = signum

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class StopVote:
    """Every ``fault.signal_check_every`` steps the ranks agree on the stop signal any rank got (0 for none)
    and whether a time-based checkpoint is due on any rank, with one tiny all-reduce. It is started at one
    check and read at the next, so it travels with the next step's gradients instead of costing a round
    trip of its own; every rank reads the same result at the same step: decided together."""

    def __init__(self, every: int, flag: StopFlag, checkpointer: Checkpointer) -> None:
        self.every, self.flag, self.checkpointer = every, flag, checkpointer
        self.size = 1
        self._handle: int | None = None  # the flags all-reduce in flight

    def join(self, size: int) -> None:
        """At the start and after an elastic reset: an all-reduce of the old world never completes."""
        self.size, self._handle = size, None

    def vote(self, step: int) -> tuple[int, bool]:
        """(signal number or 0, time-based checkpoint due) as agreed by every rank after ``step``."""
        if step % self.every:
            return 0, False
        if self.size == 1:  # nothing to agree on; a collective would still cost a Horovod cycle
            return self.flag.signum or 0, self.checkpointer.time_due()
        import horovod.torch as hvd

        stop_signal, timed = self.drain()
        if not (stop_signal or timed):  # else the caller stops or checkpoints now: flags start afresh next check
            flags = torch.tensor([self.flag.signum or 0, self.checkpointer.time_due()], dtype=torch.int32)
            self._handle = hvd.allreduce_async(flags, op=hvd.Max, name="hpctrain.flags")  # dist
        return stop_signal, timed

    def drain(self) -> tuple[int, bool]:
        """The vote in flight, if any (call before leaving the loop: no collective may be left pending)."""
        if self._handle is None:
            return 0, False
        import horovod.torch as hvd

        flags, self._handle = hvd.synchronize(self._handle), None  # dist
        return int(flags[0]), bool(flags[1])


def select_resume(resume: str, root: Path, is_root: bool, elastic: bool) -> Path | None:
    """Rank 0 picks the checkpoint (newest that verifies, saying why newer ones were passed over) and
    broadcasts the choice; a collective (in elastic runs every rank picks, from the same files)."""
    choice: tuple[str | None, str | None] = (None, None)  # (path, error)
    if (is_root or elastic) and resume != "never":
        if resume == "auto":
            newest, skipped = latest_good(root)
            for why in skipped:
                log.warning("not resuming from %s", why)
            choice = (str(newest) if newest else None, None)
        else:
            named, reason = resolve(Path(resume))
            choice = (str(named), None) if reason is None else (None, f"--resume {resume}: {reason}")
    if not elastic:  # dist: elastic ranks each choose (same files, same choice): a joining worker may not broadcast
        import horovod.torch as hvd

        choice = hvd.broadcast_object(choice, root_rank=0, name="hpctrain.resume")
    chosen, error = choice
    if error is not None:
        raise CheckpointError(error, agreed=True)
    return Path(chosen) if chosen else None


# Settings whose change makes a checkpoint's tensors not fit: named in the error instead of a KeyError.
STATE_SHAPING = ("model", "optim.name")


def config_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first setting (of :data:`STATE_SHAPING`) that differs between a checkpoint's config and this run's,
    as ``key: checkpoint value -> this run's``; None when they agree."""
    for key in STATE_SHAPING:
        section, _, name = key.partition(".")
        a, b = saved.get(section, {}), current.get(section, {})
        if name:
            a, b = {name: a.get(name)}, {name: b.get(name)}
        for k in sorted(set(a) | set(b)):
            if k in ("sync_batchnorm", "activation_checkpointing", "recompute_modules"):  # the same tensors either way
                continue
            if a.get(k) != b.get(k):
                return f"{section}.{k} was {a.get(k)!r} in the checkpoint, {b.get(k)!r} now"
    return None


def check_writable(directory: Path, need_bytes: int, key: str) -> str | None:
    """Why ``directory`` cannot take a checkpoint (created if missing; a probe file written and removed; free
    space against ``need_bytes``), or None when it can."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".hpctrain-probe-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        return f"{key}: {directory} is not writable ({e.strerror or e}): fix its permissions or choose another"
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        return (f"{key}: {directory} has {free / 2**20:.0f} MiB free, a checkpoint needs about "
                f"{need_bytes / 2**20:.0f} MiB: free space or choose another directory")
    return None


RESET_PHASE = "elastic reset"  # Horovod elastic re-forming the world after a lost or added worker


class Watchdog:
    """Ends the job when this rank completes no step for ``timeout_s`` seconds (a hung or dead peer leaves
    the others blocked in an all-reduce forever, burning the allocation). Says which phase this rank is
    stuck in: ranks stuck in the all-reduce are waiting for one that is not.

    A lost node is found sooner by ``peer_timeout_s``: the time one wait for the other ranks (a step's
    all-reduce, the step-boundary collectives) may take. Neither MPI's TCP links nor Horovod notice a peer
    whose host vanished (no connection reset comes; TCP retransmits for ~15 minutes), and Slurm notices only
    after its SlurmdTimeout (300 s by default): measured in docs/fault-tolerance.md. It applies from the
    second step on, so a first step that compiles or warms up is judged by ``timeout_s`` alone. An elastic
    reset (:data:`RESET_PHASE`) is not such a wait: its rendezvous waits for the launcher to give up on the
    lost workers, so only ``timeout_s`` bounds it."""

    WAITS = ("all-reduce", "collective")  # phases in which this rank waits for the others

    def __init__(self, cfg: FaultConfig, rank: int, abort: Any, clock: Any = time.monotonic) -> None:
        self.timeout = cfg.watchdog_s
        self.peer_timeout = cfg.peer_timeout_s
        self.rank = rank
        self.abort = abort
        self.clock = clock  # seconds, monotonic; tests pass their own to decide without waiting
        self.phase = "start-up"
        self.step = 0
        self._first_step: int | None = None
        self._beat = self._entered = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.timeout > 0 or self.peer_timeout > 0:
            self._beat = self._entered = self.clock()
            self._thread = threading.Thread(target=self._run, daemon=True, name="hpctrain-watchdog")
            self._thread.start()

    def beat(self, step: int, phase: str) -> None:
        if self._first_step is None:
            self._first_step = step
        self.step, self.phase, self._beat = step, phase, self.clock()
        self._entered = self._beat

    def enter(self, phase: str) -> None:
        self.phase, self._entered = phase, self.clock()

    def check(self) -> bool:
        """End the job (True) if no step completed for ``timeout_s``, or this rank has waited for the others
        for ``peer_timeout_s``, by the clock now."""
        now = self.clock()
        idle, waited, phase = now - self._beat, now - self._entered, self.phase
        if self.timeout and idle >= self.timeout:
            waiting = "waiting for another rank" if phase in self.WAITS else "this rank itself is stuck"
            why = (f"no step completed for {idle:.0f} s (fault.watchdog_s={self.timeout:g}) after step "
                   f"{self.step}, stuck in {phase} ({waiting})")
        elif self.peer_timeout and phase in self.WAITS and waited >= self.peer_timeout \
                and self._first_step is not None and self.step > self._first_step:
            why = (f"waited {waited:.1f} s for the other ranks in the {phase} after step {self.step} "
                   f"(fault.peer_timeout_s={self.peer_timeout:g}): a rank or its node is lost or stuck")
        else:
            return False
        print(f"hpctrain: error (rank {self.rank}): watchdog: {why}; ending the job", file=sys.stderr, flush=True)
        self.abort()
        return True

    def _run(self) -> None:
        limits = [t for t in (self.timeout, self.peer_timeout) if t > 0]
        while not self._stop.wait(min(1.0, min(limits) / 4)):
            if self.check():
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
