"""`hpctrain info`: what a user needs to debug a launch, from every rank."""

from __future__ import annotations

import os

from hpctrain.config import CommConfig
from hpctrain.runtime import init


def rank_ranges(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"ranks 0-2,5"``; ``[3]`` -> ``"rank 3"``."""
    spans: list[list[int]] = []
    for r in sorted(ranks):
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    text = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return ("rank " if len(ranks) == 1 else "ranks ") + text


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
    rows = hvd.allgather_object((socket.gethostname(), row), name="hpctrain.info")  # dist
    if not rt.is_root:
        return None
    hosts = [host for host, _ in rows]
    nodes = sorted(set(hosts), key=hosts.index)  # node k: the k-th host in rank order
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
            "HOROVOD_CPU_OPERATIONS", "HOROVOD_HIERARCHICAL_ALLREDUCE")),
        "hosts       " + ", ".join(f"{h} ({rank_ranges([r for r, x in enumerate(hosts) if x == h])})"
                                  for h in nodes),
        *(row.replace(f"host {h}  ", f"host {h}  node {nodes.index(h)}/{len(nodes)}  ", 1) for h, row in rows),
    ]
    return "\n".join(lines)
