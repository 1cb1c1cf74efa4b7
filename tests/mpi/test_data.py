"""The HDF5 pipeline on real ranks: parallel writes, 2-rank training from shards, bad input on every rank,
and the digits example's accuracy."""

import json
import signal
import subprocess
import sys
import time

import pytest

from hpctrain.data import writer
from tests.data_helpers import make_dataset
from tests.launch import HPCTRAIN, QUIET, REPO, env, mpirun, run, summary, wait_for


@pytest.mark.parametrize("world", [2, 3])
def test_parallel_synth_writes_the_same_bytes_as_serial(tmp_path, world):
    """2 ranks share 3 shards unevenly; 3 ranks write one each."""
    args = ["data", "synth", "--task", "images", "--samples", "600", "--shards", "3", "--seed", "9"]
    run([HPCTRAIN, *args, str(tmp_path / "serial")])
    run(mpirun(world, HPCTRAIN, *args, str(tmp_path / "parallel")))
    for f in sorted((tmp_path / "serial").iterdir()):
        assert f.read_bytes() == (tmp_path / "parallel" / f.name).read_bytes(), f.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parallel", "serial"]  # no temporaries left



def test_ctrl_c_of_mpirun_during_a_parallel_write_leaves_nothing(tmp_path):
    """mpirun turns Ctrl-C into SIGTERM for every rank and SIGKILLs them one second later
    (odls_base_sigkill_timeout). The ranks stop at their next block and rank 0 removes the temporary
    directory at once; a rank still inside one long piece of input when the SIGKILL comes leaves it
    behind, and then the next writer of the dataset removes it. Either way nothing partial stays."""
    out = tmp_path / "ds"
    proc = subprocess.Popen(mpirun(2, HPCTRAIN, "data", "synth", str(out), "--samples", "12000", "--shards", "6",
                                   "--compression", "gzip"), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".ds.tmp-*/shard-*")):  # mid-write: a shard is there, others still to come
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and not out.exists()
    left = list(tmp_path.iterdir())
    if not left:
        assert "hpctrain: interrupted: removed partial output" in err or "hpctrain" not in err, err
    else:
        (tmp,) = left
        pid = int(tmp.name.split("tmp-")[1].split("@")[0])
        wait_for(lambda: not writer._runs(pid), timeout=30, what=f"the killed rank {pid} to end")
        again = run(mpirun(2, HPCTRAIN, "data", "synth", str(out), "--samples", "100", "--shards", "2"))
        assert f"removed {tmp}: partial output of a writer that no longer runs" in again.stderr
        assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_two_rank_training_reads_staged_hdf5_shards(tmp_path):
    for split, n in (("train", 2048), ("val", 256)):
        run([HPCTRAIN, "data", "synth", str(tmp_path / split), "--task", "vectors", "--samples", str(n),
             "--shards", "4", "--split", split, "--compression", "lzf"])
    run_dir = tmp_path / "run"
    run(mpirun(2, HPCTRAIN, "train", "data.source=hdf5", f"data.path={tmp_path / 'train'}",
               f"data.val_path={tmp_path / 'val'}", f"data.stage_dir={tmp_path / 'node'}", "train.steps=60",
               "train.batch_size=16", "data.shuffle_window=128", f"run.dir={run_dir}", "run.log_every=20", *QUIET))
    s = summary(run_dir)
    assert s["world_size"] == 2 and s["val_samples"] == 256 and s["val_accuracy"] > 0.5
    assert s["final_loss"] < s["initial_loss"]
    staged = list((tmp_path / "node").iterdir())
    assert len(staged) == 2 and all((d / "manifest.json").exists() for d in staged)


@pytest.mark.parametrize("damage, message", [
    ("missing", "shard-00001.h5: shard listed in the manifest is missing"),
    ("truncated", "shard-00001.h5: .* bytes but the manifest says"),
    ("not-hdf5", "shard-00001.h5: cannot be read as HDF5"),
    ("no-manifest", "manifest.json: manifest not found"),
])
def test_bad_dataset_exits_2_on_every_rank_naming_the_file(tmp_path, damage, message):
    import re

    root, _ = make_dataset(tmp_path, samples=200, shards=2, shape=(64,))
    shard = root / "shard-00001.h5"
    if damage == "missing":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:1000])
    elif damage == "not-hdf5":
        shard.write_bytes(b"\0" * shard.stat().st_size)
    else:
        (root / "manifest.json").unlink()
    proc = run(mpirun(2, HPCTRAIN, "train", "data.source=hdf5", f"data.path={root}", "train.steps=5",
                      f"run.dir={tmp_path / 'run'}"), check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if "hpctrain: error:" in ln]
    assert len(errors) == 1 and re.search(message, errors[0]), proc.stderr[-2000:]
    assert "MPI_ABORT" not in proc.stderr and "Traceback" not in proc.stderr


def test_model_that_does_not_fit_the_data_exits_2(tmp_path):
    root, _ = make_dataset(tmp_path, samples=64, shards=1, shape=(4,))
    proc = run(mpirun(2, HPCTRAIN, "train", "data.source=hdf5", f"data.path={root}", "model.input_dim=64",
                      f"run.dir={tmp_path / 'run'}"), check=False, timeout=60)
    assert proc.returncode == 2
    assert "field 'x' has samples of shape [4] but model 'mlp' takes [64]" in proc.stderr


def test_validate_cli(tmp_path):
    root, _ = make_dataset(tmp_path)
    ok = run([HPCTRAIN, "data", "validate", str(root)])
    assert "OK (300 samples, 3 shards, checksums verified)" in ok.stdout
    data = bytearray((root / "shard-00002.h5").read_bytes())
    data[-10] ^= 1
    (root / "shard-00002.h5").write_bytes(bytes(data))
    bad = run([HPCTRAIN, "data", "validate", str(root)], check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"hpctrain: error: {root}/shard-00002.h5: SHA-256 does not match the manifest " \
                                 "(corrupted or modified)"


def test_digits_reach_95_percent_on_two_ranks(tmp_path):
    """scikit-learn's bundled digits, converted by data/digits.py, trained by configs/digits.toml."""
    out = tmp_path / "digits"
    run([sys.executable, str(REPO / "data" / "digits.py"), "--out", str(out)])
    run_dir = tmp_path / "run"
    run(mpirun(2, HPCTRAIN, "train", "--config", str(REPO / "configs" / "digits.toml"),
               f"data.path={out / 'train'}", f"data.val_path={out / 'val'}", f"run.dir={run_dir}", *QUIET))
    s = summary(run_dir)
    assert s["val_samples"] == 359 and s["val_accuracy"] >= 0.95, json.dumps(s, indent=1)
