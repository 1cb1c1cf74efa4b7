"""A scaling study across the two-node cluster of conftest.py: `hpctrain scaling run --slurm --nodes 1,2`
records where each run's ranks were, `bench allreduce` measures each level of links (two ranks on one node,
one rank on each node), and `hpctrain scaling report` separates the cost between nodes and fits the two-level
model from them. The nodes share this machine's cores: the figures are for correctness, not performance."""

from __future__ import annotations

import json
import subprocess

from tests.launch import HPCTRAIN, QUIET

RUN = ["model.name=mlp", "model.width=64", "data.samples=2048", "train.steps=30", "run.log_every=10", *QUIET]


def test_a_study_over_nodes_records_placement_and_reports_both_levels(cluster, tmp_path):
    records = tmp_path / "weak.jsonl"
    cluster.sh(HPCTRAIN, "scaling", "run", "--slurm", "--mode", "weak", "--nodes", "1,2", "--ranks", "2",
               "--repeats", "2", "--out", str(records), *RUN, timeout=400)
    recs = [json.loads(line) for line in records.read_text().splitlines()]
    # what the summaries say of where the ranks ran, not what was asked
    assert [(r["world_size"], r["nodes"], sorted(r["hosts"].values())) for r in recs] == \
        [(2, 1, [2]), (2, 2, [1, 1])] * 2
    assert {h for r in recs if r["nodes"] == 2 for h in r["hosts"]} == {"n1", "n2"}

    bench = {}
    for level, layout in (("intra", ["-N1", "-n2"]), ("inter", ["-N2", "--ntasks-per-node=1"])):
        bench[level] = tmp_path / f"{level}.json"
        cluster.sh("srun", *layout, "--mpi=pmix", HPCTRAIN, "bench", "allreduce", "--max-size", "1MB",
                   "--rounds", "1", "--iters", "20", "--impl", "horovod,mpi", "--json", str(bench[level]))
    out = tmp_path / "report"
    cluster.sh(HPCTRAIN, "scaling", "report", str(records), "--out", str(out), "--allreduce", str(bench["intra"]),
               "--allreduce-inter", str(bench["inter"]), "--fit-impl", "mpi", "--compute-s", "0.05",
               "--link-gbps", "200")
    text = (out / "report.md").read_text()
    assert "| ranks | nodes | runs |" in text
    placement = text.split("### Weak scaling: within a node and between nodes")[1]
    assert "\n| 2 | 2 | " in placement, placement
    two_level = text.split("## Two-level communication model (a model, not a measurement)")[1]
    assert "ranks on n1 ×1, n2 ×1" in two_level and "to the raw MPI timings" in two_level, two_level
    assert "\n| 1024 | 128 | " in two_level

    # the control: the one-node run given as the between-node level is refused, naming the file
    p = subprocess.run([HPCTRAIN, "scaling", "report", str(records), "--out", str(tmp_path / "bad"),
                        "--allreduce", str(bench["intra"]), "--allreduce-inter", str(bench["intra"]),
                        "--fit-impl", "mpi", "--compute-s", "0.05"],
                       env=cluster.env, capture_output=True, text=True)
    assert p.returncode == 2 and f"{bench['intra']}: hosts: " in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
