"""Pieces of hpctrain.train that need no ranks."""

import torch

from hpctrain.train import PHASES, describe_summary, transform_generator


def test_summary_text_of_a_run_with_no_measured_step():
    """An elastic reset at the last step (or a resume with nothing left) leaves no throughput and maybe no
    loss: the summary still reads, instead of failing on None."""
    s = {"samples_per_sec": float("nan"), "samples_per_sec_per_rank": {"mean": float("nan")},
         "breakdown_ms": dict.fromkeys(PHASES, 0.0), "model": "mlp", "steps": 20, "world_size": 2,
         "launcher": "openmpi", "controller": "mpi", "compression": "none", "initial_loss": None,
         "final_loss": None, "step_time_ms": {"mean": float("nan")}, "untimed_steps": -1, "measured_steps": 0,
         "params_sha256": "ab"}
    text = describe_summary(s, "runs/x")
    assert "loss n/a -> n/a" in text and "no step measured after the untimed steps" in text


def test_transform_generator_is_a_function_of_seed_rank_and_step():
    draw = [torch.rand(4, generator=transform_generator(1, r, k)) for r, k in ((0, 5), (0, 5), (1, 5), (0, 6))]
    assert torch.equal(draw[0], draw[1])
    assert not torch.equal(draw[0], draw[2]) and not torch.equal(draw[0], draw[3])
