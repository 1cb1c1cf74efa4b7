"""Sharded optimizer state without MPI: the layout (every value owned by exactly one rank, cuts on 64-value
boundaries) and checkpoint state moved between stage 0 and any world size without losing a bit. The
collectives themselves are tested on real ranks in tests/mpi/test_zero.py."""

import pytest
import torch
from torch import nn

from hpctrain.optim import zero


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 33), nn.ReLU(), nn.Linear(33, 5))


def stage0_state():
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        m(torch.randn(4, 7)).sum().backward()
        opt.step()
    return opt.state_dict()


def sharded(rank, size, saved=None):
    opt = zero.ShardedOptimizer(model(), lambda ps: torch.optim.AdamW(ps, lr=0.01),
                                zero.ZeroOptions(stage=2, rank=rank, size=size, bucket_bytes=400))
    if saved is not None:
        opt.load_state_dict(saved)
    return opt


def as_checkpoint(opts):
    return {**opts[0].state_dict(), "shards": [o.shard_state() for o in opts]}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for i in a:
        assert a[i].keys() == b[i].keys()
        for k in a[i]:
            assert torch.equal(a[i][k], b[i][k]), (i, k)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_every_value_owned_once_on_aligned_cuts(size):
    opts = [sharded(r, size) for r in range(size)]
    owned = {}
    for o in opts:
        for part in o.parts:
            s = part.segment
            assert (part.lo - s.offset) % zero.ALIGN == 0 or part.lo == s.offset
            owned.setdefault(s.index, []).append((part.lo - s.offset, part.hi - s.offset))
    numels = [p.numel() for p in model().parameters()]
    for index, ranges in owned.items():
        ranges.sort()
        assert ranges[0][0] == 0 and ranges[-1][1] == numels[index]
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert len(owned) == len(numels)


def test_stage0_to_shards_to_other_world_sizes_and_back_bit_exact():
    full = stage0_state()
    three = [sharded(r, 3, full) for r in range(3)]
    two = [sharded(r, 2, as_checkpoint(three)) for r in range(2)]  # 3 -> 2 ranks
    back = zero.full_state_dict(as_checkpoint(two), model(), full["param_groups"])
    assert_same(back["state"], full["state"])
    # control: one shard missing is an error, not silently zero state
    with pytest.raises(ValueError, match="1 shard file"):
        zero.full_state_dict({**as_checkpoint(two), "shards": as_checkpoint(two)["shards"][:1]}, model(),
                             full["param_groups"])


def test_sharded_state_per_rank_adds_up_to_the_replicated_state():
    full = stage0_state()
    replicated = sum(t.numel() * t.element_size() for st in full["state"].values() for t in st.values()
                     if t.dim() > 0)
    per_rank = [sharded(r, 3, full).state_bytes() for r in range(3)]
    assert sum(per_rank) == replicated
