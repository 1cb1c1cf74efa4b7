"""The rank-aware reader on real HDF5 shards: partitioning, determinism, exact resume, bad input."""

import json
import shutil

import numpy as np
import pytest

from hpctrain.data.format import DataError
from hpctrain.data.plan import EpochPlan, block_ranges, partition, window_shuffle
from hpctrain.data.reader import ReaderOptions, ShardedReader, ShardFiles, eval_ids, open_dataset
from hpctrain.data.stage import stage, staged_path
from tests.data_helpers import ids_of, make_dataset


def readers(root, m, world, batch=5, seed=3, **kw):
    return [ShardedReader(root, m, ReaderOptions(r, world, batch, seed, **kw)) for r in range(world)]


def take(rs, steps):
    """Per rank, the sample ids of ``steps`` steps."""
    out = [[] for _ in rs]
    for _ in range(steps):
        for r, reader in enumerate(rs):
            out[r] += ids_of(reader.next_fields()["x"])
    return out


def test_blocks_never_cross_shards_and_cover_everything():
    blocks = block_ranges([10, 7, 5], 4)
    assert blocks.tolist() == [[0, 4], [4, 8], [8, 10], [10, 14], [14, 17], [17, 21], [21, 22]]


def test_partition_and_window_shuffle_keep_the_samples():
    order = np.arange(23)
    parts = partition(order, world=2, batch=5, remainder="drop")
    assert [len(p) for p in parts] == [10, 10] and np.array_equal(np.concatenate(parts), np.arange(20))
    padded = partition(order, world=2, batch=5, remainder="pad")
    assert [len(p) for p in padded] == [15, 15] and set(np.concatenate(padded).tolist()) == set(range(23))
    shuffled = window_shuffle(np.arange(20), 8, seed=1, epoch=0, generation=0, rank=0)
    for a in (0, 8, 16):  # each window keeps its own samples
        assert sorted(shuffled[a:a + 8].tolist()) == list(range(a, min(20, a + 8)))
    assert not np.array_equal(shuffled, np.arange(20))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_get_disjoint_equal_parts_and_cover_the_epoch(tmp_path, world):
    root, m = make_dataset(tmp_path)  # 300 samples, 3 shards, chunks of 8
    rs = readers(root, m, world, window=32)
    steps = rs[0].steps_per_epoch()
    assert steps == 300 // (5 * world)
    parts = take(rs, steps)
    assert len({len(p) for p in parts}) == 1  # equal: every rank runs the same number of steps
    seen = [i for p in parts for i in p]
    assert len(seen) == len(set(seen)) == steps * 5 * world  # disjoint
    assert set(seen) <= set(range(300)) and 300 - len(seen) < 5 * world  # complete but for the remainder
    assert all(r.state_dict()["epoch"] == 1 for r in rs)
    for r in rs:
        r.close()


def test_order_is_deterministic_per_epoch_and_reshuffled_each_epoch(tmp_path):
    root, m = make_dataset(tmp_path)
    a, b = readers(root, m, 1, window=16)[0], readers(root, m, 1, window=16)[0]
    epoch0, epoch1 = take([a], 60)[0], take([a], 60)[0]
    assert take([b], 60)[0] == epoch0
    assert sorted(epoch0) == sorted(epoch1) == list(range(300)) and epoch0 != epoch1
    other_seed = readers(root, m, 1, seed=4, window=16)[0]
    assert take([other_seed], 60)[0] != epoch0
    # block shuffling keeps runs of the chunk size together before the window shuffle mixes them
    unshuffled = readers(root, m, 1, window=1)[0]
    ids = take([unshuffled], 60)[0]
    assert all(ids[i + 1] == ids[i] + 1 for i in range(0, 296, 8))
    for r in (a, b, other_seed, unshuffled):
        r.close()


def test_exact_resume_at_the_same_world_size(tmp_path):
    root, m = make_dataset(tmp_path)
    uninterrupted = readers(root, m, 2, window=32)
    reference = take(uninterrupted, 50)  # crosses into epoch 1 (30 steps per epoch)
    first = readers(root, m, 2, window=32)
    before = take(first, 17)
    state = first[0].state_dict()
    assert state["steps"] == 17 and state == {**first[1].state_dict()}
    for r in first:
        r.close()  # the prefetcher had read ahead: that must not matter
    resumed = readers(root, m, 2, window=32)
    for r in resumed:
        r.load_state_dict(state)
    after = take(resumed, 33)
    assert [b + a for b, a in zip(before, after, strict=True)] == reference


@pytest.mark.parametrize("old_world, new_world, new_batch", [(2, 3, 5), (3, 1, 5), (2, 2, 7), (1, 4, 3)])
def test_resume_with_another_world_size_sees_the_rest_of_the_epoch_once(tmp_path, old_world, new_world,
                                                                        new_batch):
    root, m = make_dataset(tmp_path)
    old = readers(root, m, old_world, window=32)
    seen = [i for part in take(old, 7) for i in part]
    state = old[0].state_dict()
    new = [ShardedReader(root, m, ReaderOptions(r, new_world, new_batch, 3, window=32)) for r in range(new_world)]
    for r in new:
        r.load_state_dict(state)
    plan = new[0].plan()
    steps = plan.steps(new_world, new_batch)
    rest = [i for part in take(new, steps) for i in part]
    assert all(r.state_dict()["epoch"] == 1 for r in new)  # the epoch ended for everyone together
    assert len(seen + rest) == len(set(seen + rest))  # no sample twice
    # every sample is seen but for the two remainders dropped: the old world's and the new world's
    missing = set(range(300)) - set(seen) - set(rest)
    assert len(missing) < 300 % (5 * old_world) + new_world * new_batch
    # and a second resume replays the history to the same place
    again = [ShardedReader(root, m, ReaderOptions(r, new_world, new_batch, 3, window=32)) for r in range(new_world)]
    for r in again:
        r.load_state_dict(state)
    assert [i for part in take(again, steps) for i in part] == rest


def test_pad_policy_gives_full_batches(tmp_path):
    root, m = make_dataset(tmp_path, samples=101, shards=2)
    rs = readers(root, m, 2, batch=10, remainder="pad", window=8)
    parts = take(rs, rs[0].steps_per_epoch())
    assert rs[0].steps_per_epoch() == 6 and set(parts[0] + parts[1]) == set(range(101))


def test_plan_history_is_pure():
    blocks = block_ranges([50, 50], 8)
    a = EpochPlan(blocks, 1, 0, 16, "drop", [(2, 5, 3)])
    b = EpochPlan(blocks, 1, 0, 16, "drop", [(2, 5, 3)])
    assert np.array_equal(a.stream(0, 3, 4), b.stream(0, 3, 4)) and len(a.remaining) == 100 - 30


def test_threaded_reads_equal_single_threaded_reads(tmp_path):
    root, m = make_dataset(tmp_path, shape=(2048,))  # 8 KiB samples: the scatter path
    ids = np.random.default_rng(0).permutation(300)[:200]
    one = ShardFiles(root, m, threads=1).read(ids)
    three = ShardFiles(root, m, threads=3).read(ids)
    assert ids_of(one["x"]) == ids.tolist()
    for k in one:
        np.testing.assert_array_equal(one[k], three[k])


def test_compressed_shards_read_through_hdf5(tmp_path):
    root, m = make_dataset(tmp_path, compression="gzip")
    files = ShardFiles(root, m, threads=2)
    assert files._shard(0).chunk_offsets["x"] is None  # no raw fast path for compressed chunks
    ids = np.array([5, 299, 17, 150])
    assert ids_of(files.read(ids)["x"]) == ids.tolist()


def test_eval_split_counts_every_sample_once():
    parts = [eval_ids(103, r, 4) for r in range(4)]
    assert np.array_equal(np.concatenate(parts), np.arange(103))


def test_too_small_for_one_global_batch(tmp_path):
    root, m = make_dataset(tmp_path, samples=20, shards=1)
    with pytest.raises(DataError, match="cannot fill one global batch of 24"):
        ShardedReader(root, m, ReaderOptions(0, 2, 12, 1))


def test_a_shard_that_vanishes_mid_run_is_a_clear_error(tmp_path):
    root, m = make_dataset(tmp_path)
    r = readers(root, m, 1, window=1, prefetch=1)[0]
    (root / "shard-00002.h5").unlink()
    with pytest.raises(DataError, match="shard-00002.h5: cannot open shard"):
        take([r], 60)
    r.close()


def test_open_dataset_checks(tmp_path):
    root, m = make_dataset(tmp_path)
    assert open_dataset(root, "checksum") == m
    (root / "shard-00000.h5").write_bytes(b"garbage")
    open_dataset(root, "none")  # manifest only
    with pytest.raises(DataError, match="shard-00000.h5: 7 bytes but the manifest says"):
        open_dataset(root, "size")


def test_stage_copies_once_verifies_and_reuses(tmp_path):
    root, m = make_dataset(tmp_path)
    calls = []
    local = stage(root, tmp_path / "node", local_rank=0, barrier=lambda: calls.append(1))
    assert local == staged_path(root, tmp_path / "node") and calls == [1]
    assert open_dataset(local, "checksum").num_samples == 300
    mtime = (local / "shard-00000.h5").stat().st_mtime_ns
    assert stage(root, tmp_path / "node", 0, lambda: None) == local  # reused, not copied again
    assert (local / "shard-00000.h5").stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "node").iterdir()] == [local.name]  # no temporary left
    with pytest.raises(DataError, match="variable in it is not set"):
        stage(root, "$HPCTRAIN_NO_SUCH_VAR/x", 0, lambda: None)


def test_stage_replaces_a_stale_or_partial_copy(tmp_path):
    """A copy from an earlier job that lost a shard's tail (a full disk, a killed copy renamed by hand) or
    whose manifest differs is replaced by a fresh, checksummed copy, not reused and not an error."""
    root, _ = make_dataset(tmp_path)
    local = stage(root, tmp_path / "node", 0, lambda: None)
    shard = local / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes()[:-100])
    assert stage(root, tmp_path / "node", 0, lambda: None) == local
    assert open_dataset(local, "checksum").num_samples == 300
    (local / "manifest.json").write_text((local / "manifest.json").read_text() + " ")
    stage(root, tmp_path / "node", 0, lambda: None)
    assert (local / "manifest.json").read_bytes() == (root / "manifest.json").read_bytes()
    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == [local.name]


def test_two_jobs_staging_on_one_node_never_corrupt_each_others_copy(tmp_path):
    """The second job to finish its copy finds the first one's complete copy in place and keeps it (a job
    may already read it); a stale copy is moved aside, so a reader's open file stays whole."""
    from hpctrain.data.stage import _install, copy_verified

    root, _ = make_dataset(tmp_path)
    first = copy_verified(root, tmp_path / "node")
    inode = (first / "shard-00000.h5").stat().st_ino
    late = tmp_path / "node" / ".late.tmp"
    shutil.copytree(root, late)
    _install(late, root, first)  # the slower job's copy arrives after the first is in place
    assert (first / "shard-00000.h5").stat().st_ino == inode  # kept; copy_verified then removes the late one
    with open(first / "shard-00002.h5", "rb") as reader:  # a job reading the copy when it turns stale
        before = reader.read(64)
        (first / "shard-00000.h5").write_bytes(b"x")
        again = copy_verified(root, tmp_path / "node")
        reader.seek(0)
        assert reader.read(64) == before
    assert open_dataset(again, "checksum").num_samples == 300
    assert json.loads((again / ".staged.json").read_text())["local_rank"] == 0
