"""A check that fails on one rank only must end every rank the same way, not leave the others waiting."""

import sys

import pytest

from tests.launch import mpirun, run

SCRIPT = """
from hpctrain import dist, runtime
from hpctrain.config import CommConfig
from hpctrain.errors import UserError
rt = runtime.init(CommConfig())

def check():
    if rt.rank == rt.size - 1:
        raise UserError("/data/shard-00001.h5: missing on this node")
    return "ok"

try:
    dist.agree(check)
    print(f"rank {rt.rank}: no error", flush=True)
except UserError as e:
    print(f"rank {rt.rank}: agreed={e.agreed}: {e}", flush=True)
"""


@pytest.mark.parametrize("world", [2, 3])
def test_an_error_on_one_rank_is_raised_on_every_rank(world):
    """The last rank alone fails; with 3 ranks, a rank that neither failed nor is rank 0 hears of it too."""
    out = run(mpirun(world, sys.executable, "-c", SCRIPT), timeout=60).stdout
    for rank in range(world):
        assert f"rank {rank}: agreed=True: /data/shard-00001.h5: missing on this node" in out, out
    assert "no error" not in out
