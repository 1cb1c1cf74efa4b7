"""A check that fails on one rank only must end every rank the same way, not leave the others waiting."""

import sys

from tests.launch import mpirun, run

SCRIPT = """
from hpctrain import dist, runtime
from hpctrain.config import CommConfig
from hpctrain.errors import UserError
rt = runtime.init(CommConfig())

def check():
    if rt.rank == 1:
        raise UserError("/data/shard-00001.h5: missing on this node")
    return "ok"

try:
    dist.agree(check)
    print(f"rank {rt.rank}: no error", flush=True)
except UserError as e:
    print(f"rank {rt.rank}: agreed={e.agreed}: {e}", flush=True)
"""


def test_an_error_on_one_rank_is_raised_on_every_rank():
    out = run(mpirun(2, sys.executable, "-c", SCRIPT), timeout=60).stdout
    assert "rank 0: agreed=True: /data/shard-00001.h5: missing on this node" in out
    assert "rank 1: agreed=True: /data/shard-00001.h5: missing on this node" in out
