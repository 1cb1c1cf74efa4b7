"""The MPI world as hpctrain's collective checks see it: its rank and size once MPI is up, ending all of it
at once, the `agree` check, and the communicators tools without Horovod use (dataset writers)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hpctrain.errors import UserError
from hpctrain.launchers import LaunchError, check_launch, detect_launcher

T = TypeVar("T")


def mpi_comm() -> Any:
    """MPI.COMM_WORLD for tools that use MPI without Horovod (dataset writers), or None for one process."""
    info = detect_launcher(os.environ)
    check_launch(info, os.environ)
    if info.size == 1:
        return None
    if info.launcher == "horovodrun-gloo":
        raise LaunchError("this command uses MPI: launch it with mpirun or srun, not horovodrun --gloo")
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _mpi_world() -> Any:
    """MPI.COMM_WORLD if this process initialised MPI and has not finalised it, else None."""
    if "mpi4py.MPI" not in sys.modules:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.Is_initialized() and not MPI.Is_finalized() else None


def world_size() -> int:
    world = _mpi_world()
    return world.Get_size() if world is not None else 1


def world_rank() -> int:
    world = _mpi_world()
    return world.Get_rank() if world is not None else 0


def abort_world(code: int) -> None:
    """End every rank of the MPI job now, with ``code``; returns only when there is no MPI world."""
    world = _mpi_world()
    if world is not None and world.Get_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        world.Abort(code)


def agree(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it raises a UserError on any rank, every rank raises the first one.

    For checks whose outcome may differ between ranks (a file visible on one node only): the job then
    ends with exit code 2 on every rank instead of one rank failing while the others wait in a collective.
    """
    import horovod.torch as hvd

    result, error = None, None
    try:
        result = fn()
    except UserError as e:
        error = str(e)
    errors = hvd.allgather_object(error, name="hpctrain.agree")  # dist: named, or ranks with
    # and without an error (str vs NoneType, Horovod's default name) would wait in different collectives
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise UserError(first, agreed=True)
    return result  # type: ignore[return-value]


def node_comm(comm: Any) -> Any:
    """The ranks of ``comm`` on this node (shared memory), or None for one process: node-local work such as
    staging a dataset copy is done by its rank 0."""
    if comm is None:
        return None
    from mpi4py import MPI

    return comm.Split_type(MPI.COMM_TYPE_SHARED)
