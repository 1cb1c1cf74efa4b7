"""`hpctrain info`: what a user needs to debug a launch, from every rank."""

from __future__ import annotations

import os

from hpctrain.config import CommConfig
from hpctrain.runtime import init


def info_report(comm: CommConfig) -> str | None:
    """What a user needs to debug a launch; collective (every rank reports), returned on rank 0 only."""
    import platform
    import socket

    import h5py
    import horovod
    import horovod.torch as hvd
    import mpi4py
    import numpy as np
    import torch

    rt = init(comm)
    row = (f"rank {rt.rank}/{rt.size}  local {rt.local_rank}/{rt.local_size}  host {socket.gethostname()}  "
           f"pid {os.getpid()}  device {rt.device}  threads {rt.threads}")
    rows = hvd.allgather_object(row, name="hpctrain.info")  # dist
    if not rt.is_root:
        return None
    mpi_lib = "n/a (Gloo controller)"
    if rt.controller == "mpi":
        from mpi4py import MPI

        # Open MPI ends its version string with a NUL byte, which would make the report binary to grep
        mpi_lib = MPI.Get_library_version().replace("\0", "").splitlines()[0].strip()
    built = {"mpi": hvd.mpi_built(), "gloo": hvd.gloo_built(), "nccl": hvd.nccl_built(),
             "cuda": hvd.cuda_built()}
    lines = [
        f"hpctrain    {__import__('hpctrain').__version__} (python {platform.python_version()})",
        f"torch       {torch.__version__} (cuda available: {torch.cuda.is_available()})",
        f"horovod     {horovod.__version__} built with: "
        + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in built.items()),
        f"mpi4py      {mpi4py.__version__}; MPI library: {mpi_lib}",
        f"numpy       {np.__version__}; h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version})",
        f"launcher    {rt.launch.launcher}; controller {rt.controller}; world size {rt.size}",
        "settings    " + "  ".join(f"{k}={os.environ.get(k, '-')}" for k in (
            "HOROVOD_FUSION_THRESHOLD", "HOROVOD_CYCLE_TIME", "OMPI_MCA_mpi_yield_when_idle",
            "HOROVOD_CPU_OPERATIONS")),
        *rows,
    ]
    return "\n".join(lines)
