import numpy as np
import pytest

from hpctrain.data.sampler import GlobalBatchSampler, epoch_permutation


def steps(sampler, n):
    return [sampler.next_indices() for _ in range(n)]


def test_ranks_get_disjoint_equal_parts_covering_the_epoch():
    n, b, w = 103, 4, 3
    samplers = [GlobalBatchSampler(n, b, r, w, seed=1) for r in range(w)]
    per_epoch = samplers[0].steps_per_epoch()
    assert per_epoch == n // (b * w)
    parts = [np.concatenate(steps(s, per_epoch)) for s in samplers]
    assert all(len(p) == per_epoch * b for p in parts)
    seen = np.concatenate(parts)
    assert len(set(seen.tolist())) == len(seen)  # disjoint
    assert len(seen) == n - n % (b * w)  # complete but for the dropped remainder
    assert set(seen.tolist()) <= set(range(n))


def test_pad_fills_the_last_batch_and_covers_everything():
    n, b, w = 10, 2, 2
    samplers = [GlobalBatchSampler(n, b, r, w, seed=1, remainder="pad") for r in range(w)]
    per_epoch = samplers[0].steps_per_epoch()
    assert per_epoch == 3
    seen = np.concatenate([np.concatenate(steps(s, per_epoch)) for s in samplers])
    assert set(seen.tolist()) == set(range(n)) and len(seen) == 12


def test_order_is_deterministic_per_epoch_and_changes_between_epochs():
    a = GlobalBatchSampler(64, 8, 0, 2, seed=5)
    b = GlobalBatchSampler(64, 8, 0, 2, seed=5)
    ea, eb = steps(a, 8), steps(b, 8)  # two epochs of 4 steps
    assert all(np.array_equal(x, y) for x, y in zip(ea, eb, strict=True))
    assert not np.array_equal(np.concatenate(ea[:4]), np.concatenate(ea[4:]))
    assert a.state_dict()["epoch"] == 2
    assert not np.array_equal(epoch_permutation(64, 5, 0), epoch_permutation(64, 6, 0))


def test_two_ranks_see_what_one_rank_with_double_batch_sees():
    one = GlobalBatchSampler(50, 6, 0, 1, seed=3)
    two = [GlobalBatchSampler(50, 3, r, 2, seed=3) for r in range(2)]
    for _ in range(20):  # crosses epoch boundaries
        assert np.array_equal(one.next_indices(), np.concatenate([s.next_indices() for s in two]))


@pytest.mark.parametrize("new_world", [1, 2, 4])
def test_resume_with_another_world_size_continues_the_same_global_order(new_world):
    n, seed = 96, 11
    before = [GlobalBatchSampler(n, 4, r, 2, seed) for r in range(2)]
    consumed = np.concatenate([np.concatenate([s.next_indices() for s in before]) for _ in range(3)])
    state = before[0].state_dict()
    after = [GlobalBatchSampler(n, 4, r, new_world, seed) for r in range(new_world)]
    for s in after:
        s.load_state_dict(state)
    rest = []
    while after[0].state_dict()["epoch"] == 0:
        rest.append(np.concatenate([s.next_indices() for s in after]))
    seen = np.concatenate([consumed, *rest])
    assert np.array_equal(seen, epoch_permutation(n, seed, 0)[: len(seen)])  # the uninterrupted order
    assert len(seen) == n - (n - 24) % (4 * new_world)  # only the new world's remainder is dropped


def test_state_for_another_dataset_is_refused():
    s = GlobalBatchSampler(20, 2, 0, 1, seed=1)
    with pytest.raises(ValueError, match="sampler state is for 30 samples"):
        s.load_state_dict({"epoch": 0, "consumed": 4, "num_samples": 30, "seed": 1})


def test_too_few_samples_for_one_global_batch():
    with pytest.raises(ValueError, match="cannot fill one global batch of 16"):
        GlobalBatchSampler(10, 8, 0, 2, seed=1)
