"""ZeRO stages 1 and 2 (optim.zero_stage) on real ranks: the same parameters as the replicated optimizer,
optimizer state split exactly across ranks, sharded checkpoints resumed at the same and at other world sizes
and stages, clipping and fp16 loss scaling with shards, LAMB and LARS (trust ratios of whole layers over parts
of them), and the refusals."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from hpctrain import checkpoint
from tests.launch import HPCTRAIN, QUIET, REPO, env, logged_step, mpirun, rank_pid, run, summary, wait_for

K = 8
COMMON = [f"train.steps={K}", "model.name=mlp", "model.width=64", "data.samples=512", "train.batch_size=16",
          "run.log_every=4", "optim.lr=0.01", *QUIET]
SGD = ["optim.name=sgd", "optim.momentum=0.9", "optim.weight_decay=0.01"]
ADAMW = ["optim.name=adamw", "optim.weight_decay=0.1"]


def train(tmp_path, name, ranks, *args, check=True):
    d = tmp_path / name
    proc = run(mpirun(ranks, HPCTRAIN, "train", *COMMON, *args, f"run.dir={d}"), check=check)
    return d, proc


def weights(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)


def max_abs_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("opt", [SGD, ADAMW], ids=["sgd", "adamw"])
def test_two_ranks_stage_1_and_2_bit_identical_to_stage_0(tmp_path, opt):
    """fp32, 2 ranks: the averaged gradient is the same sum either way and the update is element-wise, so
    the parameters must agree to the bit. Also: each rank holds exactly half of stage 0's optimizer state."""
    ref, _ = train(tmp_path, "z0", 2, *opt, "optim.zero_stage=0")
    replicated = summary(ref)["memory"]["per_rank"][0]["optimizer_state_bytes"]
    assert replicated > 0
    for stage, bucket_mb in ((1, 25), (2, 0.004)):  # stage 2: 4 KiB buckets, so several are in flight at once
        d, _ = train(tmp_path, f"z{stage}", 2, *opt, f"optim.zero_stage={stage}", f"optim.zero_bucket_mb={bucket_mb}")
        s = summary(d)
        assert s["params_sha256"] == summary(ref)["params_sha256"] and s["replicas_identical"]
        state = [r["optimizer_state_bytes"] for r in s["memory"]["per_rank"]]
        assert sum(state) == replicated  # every value owned by exactly one rank
        # each rank half, up to the 64-value alignment of shard cuts (6 parameter tensors here)
        assert all(abs(b - replicated / 2) <= 6 * 64 * 4 * 2 for b in state), state


def test_three_ranks_within_1e_6_and_a_control_that_differs(tmp_path):
    """3 ranks (SGD): the reduce-scatter adds in another order than the all-reduce, so only close. (AdamW
    amplifies such last-bit differences where gradients are near its eps: measured 5e-6 after 8 steps.) The
    control (fp16 on the wire through the reduce-scatter) must land outside the tolerance."""
    ref, _ = train(tmp_path, "z0", 3, *SGD, "optim.zero_stage=0")
    two, _ = train(tmp_path, "z2", 3, *SGD, "optim.zero_stage=2")
    fp16, _ = train(tmp_path, "z2fp16", 3, *SGD, "optim.zero_stage=2", "comm.compression=fp16")
    print("3 ranks, stage 2 vs 0:", max_abs_diff(weights(two), weights(ref)), "fp16 control:",
          max_abs_diff(weights(fp16), weights(ref)))
    assert max_abs_diff(weights(two), weights(ref)) < 1e-6
    assert max_abs_diff(weights(fp16), weights(ref)) > 1e-6


def test_stage_2_with_accumulation_clipping_and_fp16_matches_stage_0(tmp_path):
    """Gradient accumulation, clipping (the global norm from the shards) and fp16 loss scaling with a scale
    that overflows at first (the ranks must agree to skip): the same steps skipped, the same last norm, and
    parameters within rounding of stage 0 (the norm is summed in another order)."""
    opts = [*ADAMW, "train.grad_accum=2", "train.clip_norm=0.5", "train.precision=fp16",
            "train.loss_scale=4194304"]  # 2^22: the first steps overflow in fp16, later ones do not
    ref, _ = train(tmp_path, "z0", 2, *opts, "optim.zero_stage=0")
    two, _ = train(tmp_path, "z2", 2, *opts, "optim.zero_stage=2")
    a, b = summary(ref), summary(two)
    print("skipped", b["skipped_steps_per_rank"], "norms", a["grad_norm_per_rank"], b["grad_norm_per_rank"])
    assert a["skipped_steps_per_rank"] == b["skipped_steps_per_rank"] and 0 < b["skipped_steps_per_rank"][0] < K
    assert b["grad_norm_per_rank"][0] == pytest.approx(a["grad_norm_per_rank"][0], rel=1e-5)
    assert b["replicas_identical"]
    assert max_abs_diff(weights(two), weights(ref)) < 1e-5


# One launch: LAMB (clipped) and LARS on 2 ranks at stages 0, 1, 2, and the control: stage 2 with each part's
# own norms (its parameter's ndim still). Rank 0 prints every rank's max |difference| from stage 0 over
# all parameters.
LAYERS_SCRIPT = """
import json
import horovod.torch as hvd
import torch
from torch import nn
from hpctrain import optim, runtime
from hpctrain.config import CommConfig, OptimConfig
from hpctrain.optim.large_batch import Layers

rt = runtime.init(CommConfig())
CLIP = 0.05


class PerPart(Layers):  # the control: each part's own norms (Layers'), its parameter's ndim (ShardedLayers')
    def __init__(self, sharded):
        self.ndim = sharded.ndim


def train(name, stage, per_part=False, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(13, 40), nn.Tanh(), nn.Linear(40, 24), nn.Tanh(), nn.Linear(24, 3))
    # stage 2: 4 KiB buckets, so several reduce-scatters are in flight and buckets end inside layers too
    cfg = OptimConfig(name=name, zero_stage=stage, zero_bucket_mb=0.004 if stage == 2 else 25.0, **kw)
    opt = optim.build(model, cfg, CommConfig())
    if per_part:
        opt.inner.layers = PerPart(opt.inner.layers)
    optim.broadcast_state(model, opt)
    cut = sum(p.hi - p.lo < p.segment.numel for p in opt.parts) if stage else 0
    data = torch.Generator().manual_seed(1 + rt.rank)
    target = torch.randn(13, 3, generator=torch.Generator().manual_seed(2))
    clipped = 0
    for _ in range(25):
        x = torch.randn(16, 13, generator=data)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), x @ target).backward()
        opt.synchronize()
        if name == "lamb":
            clipped += optim.clip_grad_norm(opt, model, CLIP) > CLIP
        with opt.skip_synchronize():
            opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), cut, clipped


out = {"rank": rt.rank}
for name, kw in (("lamb", dict(lr=0.01, weight_decay=0.01)), ("lars", dict(lr=0.1, momentum=0.9, weight_decay=1e-4))):
    ref, _, clipped = train(name, 0, **kw)
    r = {"clipped_steps": clipped, "cut_layers": []}
    for key, stage, per_part in (("stage1", 1, False), ("stage2", 2, False), ("per_part", 2, True)):
        w, cut, _ = train(name, stage, per_part, **kw)
        r[key] = float((w - ref).abs().max())
        r["cut_layers"].append(cut)
    out[name] = r
every = hvd.allgather_object(out)  # one line from rank 0: lines from two ranks can interleave
if rt.rank == 0:
    print("RESULT " + json.dumps(every), flush=True)
"""


def test_lamb_and_lars_sharded_match_stage_0_and_per_part_norms_do_not():
    """Trust ratios from whole-layer norms, summed from the parts each rank owns: stages 1 and 2 end within
    1e-6 of stage 0 after 25 steps. The norms differ only in rounding (float64 sums of squares of the parts
    against fp32 ``p.norm()``; the 2-rank averaged gradient is the same sum either way): measured 4.5e-8
    (LAMB) and 4.3e-8 (LARS). The control, each part's own norms, must miss by ten times the tolerance or
    more (measured 2.4e-3 and 1.9e-4), and every rank must own part of a layer cut between the ranks, else
    the control proves nothing."""
    out = run(mpirun(2, sys.executable, "-c", LAYERS_SCRIPT), timeout=90).stdout
    results = next(json.loads(ln.split(" ", 1)[1]) for ln in out.splitlines() if ln.startswith("RESULT "))
    assert [r["rank"] for r in results] == [0, 1], out
    for r in results:
        print(f"rank {r['rank']}:", {k: r[k] for k in ("lamb", "lars")})
        assert r["lamb"]["clipped_steps"] > 0  # the clipping really scales the sharded gradient
        for name in ("lamb", "lars"):
            assert all(c > 0 for c in r[name]["cut_layers"]), r
            assert r[name]["stage1"] < 1e-6 and r[name]["stage2"] < 1e-6, r
            assert r[name]["per_part"] > 1e-5, r


def test_lamb_bf16_and_pruning_at_stage_2_with_clipping_match_stage_0_through_the_cli(tmp_path):
    """The configuration is accepted, and the trainer's clipped step (the gradient norm, about 0.5, is above
    train.clip_norm) over sharded LAMB state, under bf16 autocast and with gradual magnitude pruning (its
    masks multiply the parameters in place, which stage 2 keeps as views into its buckets), ends within
    rounding of stage 0, with the same weights pruned."""
    opts = ["optim.name=lamb", "optim.weight_decay=0.01", "train.clip_norm=0.1", "train.precision=bf16",
            "prune.kind=unstructured", "prune.sparsity=0.5", "prune.end_step=6", "prune.every_steps=2"]
    ref, _ = train(tmp_path, "z0", 2, *opts, "optim.zero_stage=0")
    two, _ = train(tmp_path, "z2", 2, *opts, "optim.zero_stage=2", "optim.zero_bucket_mb=0.004")
    a, b = summary(ref), summary(two)
    w0, w2 = weights(ref), weights(two)
    print("norms", a["grad_norm_per_rank"], b["grad_norm_per_rank"], "stage 2 vs 0:", max_abs_diff(w2, w0))
    assert b["grad_norm_per_rank"][0] == pytest.approx(a["grad_norm_per_rank"][0], rel=1e-5)
    assert max_abs_diff(w2, w0) < 1e-6
    zeros = {k: int((w0[k] == 0).sum()) for k in w0 if k.endswith("weight")}
    assert sum(zeros.values()) > 0.4 * sum(w0[k].numel() for k in zeros)  # pruned to about half
    assert zeros == {k: int((w2[k] == 0).sum()) for k in zeros}


STOP_RUN = ["model.name=mlp", "model.width=64", "data.samples=4096", "train.batch_size=16", "run.log_every=10",
            "train.steps=600", *ADAMW, "optim.lr=0.001", *QUIET]


def test_sigusr1_stop_exit_75_and_sharded_resume_bit_identical(tmp_path):
    """One manifest over every rank's shard; the resumed run ends where the uninterrupted one does."""
    ref = tmp_path / "ref"
    run(mpirun(2, HPCTRAIN, "train", *STOP_RUN, "optim.zero_stage=2", f"run.dir={ref}", "checkpoint.at_end=false"))
    d = tmp_path / "stopped"
    proc = subprocess.Popen(mpirun(2, HPCTRAIN, "train", *STOP_RUN, "optim.zero_stage=2", f"run.dir={d}"),
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_step(d) >= 100, what="step 100")
    os.kill(rank_pid(proc, 1), signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-3000:]
    saved = checkpoint.candidates(d / "checkpoints")
    assert len(saved) == 1 and checkpoint.verify(saved[0]) is None
    names = sorted(p.name for p in saved[0].iterdir())
    assert "optimizer-shard-00000-of-00002.pt" in names and "optimizer-shard-00001-of-00002.pt" in names
    assert not list((d / "checkpoints").glob(".*"))  # no staging left behind
    run(mpirun(2, HPCTRAIN, "train", *STOP_RUN, "optim.zero_stage=2", f"run.dir={d}"))
    assert summary(d)["params_sha256"] == summary(ref)["params_sha256"]




def _continued(tmp_path, name, ranks, stage, start):
    """Resume ``start``'s step-4 checkpoint in a new run dir and train to step 8."""
    d = tmp_path / name
    run(mpirun(ranks, HPCTRAIN, "train", *COMMON, *ADAMW, f"optim.zero_stage={stage}", f"run.dir={d}",
               "--resume", str(start / "checkpoints" / "step-00000004")))
    return weights(d)


@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory):
    """2 ranks, stage 2, AdamW, checkpoints at steps 4 and 8."""
    d, _ = train(tmp_path_factory.mktemp("stage2"), "run", 2, *ADAMW, "optim.zero_stage=2",
                 "checkpoint.every_steps=4")
    return d


def test_a_damaged_shard_fails_verification(tmp_path, stage2_run):
    copy = tmp_path / "step-00000008"
    shutil.copytree(stage2_run / "checkpoints" / copy.name, copy)
    assert checkpoint.verify(copy) is None
    shard = copy / "optimizer-shard-00001-of-00002.pt"
    shard.write_bytes(shard.read_bytes()[:50])
    assert "optimizer-shard-00001-of-00002.pt does not match its SHA-256" in checkpoint.verify(copy)


def test_resume_across_stages_bit_identical(tmp_path, stage2_run):
    """A stage-2 checkpoint resumed at stage 0, and a stage-0 checkpoint at stage 2 (2 ranks): the state
    moves between the layouts without losing a bit, so both end where the uninterrupted run does."""
    z0, _ = train(tmp_path, "full0", 2, *ADAMW, "optim.zero_stage=0", "checkpoint.every_steps=4")
    assert max_abs_diff(_continued(tmp_path, "2to0", 2, 0, stage2_run), weights(stage2_run)) == 0.0
    assert max_abs_diff(_continued(tmp_path, "0to2", 2, 2, z0), weights(stage2_run)) == 0.0


@pytest.mark.parametrize("ranks", [1, 4])
def test_resume_at_another_world_size_reshards(tmp_path, stage2_run, ranks):
    """The 2-rank stage-2 checkpoint resumed on 1 and 4 ranks: resharded at stage 2 (each rank cuts the
    ranges it now owns from the old shards) and converted whole at stage 0 end alike (within summation
    order; the tolerance's control is the fp16 case of the 3-rank test)."""
    sharded = _continued(tmp_path, "z2", ranks, 2, stage2_run)
    replicated = _continued(tmp_path, "z0", ranks, 0, stage2_run)
    assert max_abs_diff(sharded, replicated) < 1e-6


@pytest.mark.parametrize("args, key", [
    (["fault.elastic=true", "optim.zero_stage=2"], "optim.zero_stage"),
])
def test_unsupported_combinations_exit_2_naming_the_key(tmp_path, args, key):
    _, proc = train(tmp_path, "bad", 2, *args, check=False)
    assert proc.returncode == 2
    line = [ln for ln in proc.stderr.splitlines() if key in ln]
    assert line, proc.stderr[-2000:]
