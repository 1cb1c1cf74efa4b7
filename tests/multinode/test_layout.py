"""What differs across nodes, on the two-node cluster of conftest.py: who each rank is on every node (under
srun, with the even 2+2 and the uneven 3+1 layout, and under mpirun and horovodrun across the node hostnames),
data-parallel equivalence across nodes, one staged copy of the data per node, and a checkpoint written on one
node resumed on the other.

The nodes share this machine's two cores, so `os.cpu_count()` is 2 on each: the threads per rank expected
below follow from that, as they would from a real node's core count."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from hpctrain.data.format import validate
from hpctrain.data.stage import RECORD, staged_path
from tests.data_helpers import make_dataset
from tests.launch import HPCTRAIN, QUIET, run, summary
from tests.mpi.test_equivalence import COMMON, B, max_abs_diff, weights

ROW = re.compile(r"rank (\d+)/(\d+)\s+local (\d+)/(\d+)\s+host (\S+)\s+node (\d+)/(\d+)\s+.*threads (\d+)")


def ranks_of(report: str) -> list[dict]:
    rows = [dict(zip(("rank", "size", "local_rank", "local_size", "host", "node", "nodes", "threads"), m.groups(),
                     strict=True))
            for m in ROW.finditer(report)]
    return [{k: v if k == "host" else int(v) for k, v in r.items()} for r in rows]


def expected(hosts: list[str]) -> list[dict]:
    """Each rank's local rank, local size and threads from the hosts the ranks landed on, in rank order."""
    cores, nodes = os.cpu_count() or 1, sorted(set(hosts), key=hosts.index)
    return [{"rank": r, "size": len(hosts), "local_rank": hosts[:r].count(h), "local_size": hosts.count(h),
             "host": h, "node": nodes.index(h), "nodes": len(nodes), "threads": max(1, cores // hosts.count(h))}
            for r, h in enumerate(hosts)]


LAUNCHES = {
    "srun 2 nodes x 2": (["srun", "-N2", "--ntasks-per-node=2", "--mpi=pmix"], ["n1", "n1", "n2", "n2"]),
    # -N2 -n4 on nodes of 4 CPUs: Slurm places 3+1 and leaves SLURM_NTASKS_PER_NODE unset
    "srun -N2 -n4 (3+1)": (["srun", "-N2", "-n4", "--mpi=pmix"], ["n1", "n1", "n1", "n2"]),
    "mpirun -H n1:2,n2:2": (["mpirun", "-np", "4", "-H", "n1:2,n2:2"], ["n1", "n1", "n2", "n2"]),
    "horovodrun -H n2:1,n1:3": (["horovodrun", "-np", "4", "-H", "n2:1,n1:3"], ["n2", "n1", "n1", "n1"]),
}


@pytest.mark.parametrize("launch", LAUNCHES)
def test_every_rank_knows_its_place_on_every_node(cluster, launch):
    cmd, hosts = LAUNCHES[launch]
    out = cluster.sh(*cmd, HPCTRAIN, "info", timeout=240).stdout
    out = re.sub(r"^\[\d+,\d+\]<stdout>:", "", out, flags=re.M)  # horovodrun's --tag-output prefixes
    assert ranks_of(out) == expected(hosts), out
    nodes = sorted(set(hosts), key=hosts.index)
    assert re.search(r"^hosts\s+" + r",?\s+".join(f"{h} \\(ranks? [0-9,-]+\\)" for h in nodes), out, re.M), out


FOUR = ["srun", "-N2", "--ntasks-per-node=2", "--mpi=pmix", HPCTRAIN, "train", *COMMON, f"train.batch_size={B}"]


@pytest.fixture(scope="module")
def four_ranks(cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("four")
    cluster.sh(*FOUR, f"run.dir={d}")
    return d


def test_four_ranks_on_two_nodes_equal_one_rank_with_four_times_the_batch(four_ranks, tmp_path):
    """tests/mpi/test_equivalence.py's property across nodes (shared memory within, TCP between); its control
    there shows a different batch lands far outside this tolerance."""
    run([HPCTRAIN, "train", *COMMON, f"train.batch_size={4 * B}", f"run.dir={tmp_path}"])
    four = summary(four_ranks)
    assert four["world_size"] == 4 and four["launcher"] == "slurm"
    assert max_abs_diff(weights(four_ranks), weights(tmp_path)) < 1e-6


def test_hierarchical_allreduce_on_cpu_is_flat_and_says_so(cluster, four_ranks, tmp_path):
    """Horovod 0.28 uses HOROVOD_HIERARCHICAL_ALLREDUCE only in its NCCL all-reduce: across two CPU nodes the
    result is bit-identical to the flat run's, and hpctrain warns that the setting does nothing."""
    err = cluster.sh(*FOUR, "comm.hierarchical=true", f"run.dir={tmp_path}").stderr
    assert "comm.hierarchical = true has no effect: this Horovod was built without NCCL" in err
    assert summary(tmp_path)["params_sha256"] == summary(four_ranks)["params_sha256"]


def test_stage_dir_makes_one_verified_copy_per_node_and_reuses_or_replaces_it(cluster, tmp_path):
    """-N2 -n4 (3+1): on each node its local rank 0 copies the dataset to the node's own scratch disk (the
    same path on both nodes); a second job reuses a complete copy and replaces a damaged one."""
    src, _ = make_dataset(tmp_path, samples=512, shards=4, shape=(64,))
    train = ["srun", "-N2", "-n4", "--mpi=pmix", HPCTRAIN, "train", "data.source=hdf5", f"data.path={src}",
             f"data.stage_dir={cluster.node_path}/data", "model.name=mlp", "model.width=16", "train.steps=10",
             "train.batch_size=8", "run.log_every=5", *QUIET]
    for n in ("n1", "n2"):  # earlier tests' copies
        for old in cluster.local(n).glob("data/*"):
            shutil.rmtree(old)
    cluster.sh(*train, f"run.dir={tmp_path / 'first'}")
    copies = {n: sorted((cluster.local(n) / "data").iterdir()) for n in ("n1", "n2")}
    target = staged_path(src, cluster.node_path / "data").name
    assert {n: [p.name for p in c] for n, c in copies.items()} == {"n1": [target], "n2": [target]}
    for n, (copy,) in copies.items():
        made = json.loads((copy / RECORD).read_text())
        assert (made["host"], made["local_rank"]) == (n, 0)
        validate(copy, checksum=True)
    assert not (cluster.node_path / "data").exists()  # nothing reached the shared disk's mount point
    n1_made = json.loads((copies["n1"][0] / RECORD).read_text())["pid"]
    shard = copies["n2"][0] / "shard-00002.h5"
    shard.write_bytes(shard.read_bytes()[:-64])  # a partial copy on n2
    cluster.sh(*train, f"run.dir={tmp_path / 'second'}")
    assert json.loads((copies["n1"][0] / RECORD).read_text())["pid"] == n1_made  # reused
    validate(copies["n2"][0], checksum=True)  # replaced by a whole copy
    assert [p.name for p in (cluster.local("n2") / "data").iterdir()] == [target]


def test_checkpoint_written_on_one_node_resumes_on_the_other_bit_identical(cluster, tmp_path):
    """Checkpoints live on the shared file system: 2 ranks on n1 stop at step 40, 2 ranks on n2 resume to 80,
    and the parameters equal those of 80 uninterrupted steps on n1 (same world size and layout)."""
    args = ["model.name=mlp", "model.width=32", "data.samples=1024", "train.batch_size=16", "run.log_every=20",
            *QUIET]
    on = {n: ["srun", "-N1", "-n2", f"--nodelist={n}", "--mpi=pmix", HPCTRAIN, "train", *args] for n in ("n1", "n2")}
    cluster.sh(*on["n1"], "train.steps=80", f"run.dir={tmp_path / 'whole'}")
    cluster.sh(*on["n1"], "train.steps=40", f"run.dir={tmp_path / 'cut'}")
    out = cluster.sh(*on["n2"], "train.steps=80", f"run.dir={tmp_path / 'cut'}").stderr
    resumed = summary(tmp_path / "cut")
    assert resumed["resumed_from"] and resumed["resumed_from"].endswith("step-00000040"), out[-2000:]
    assert resumed["params_sha256"] == summary(tmp_path / "whole")["params_sha256"]
