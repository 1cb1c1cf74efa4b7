"""optim.base_optimizer: the fused update kernel is the default and computes what the per-tensor loop does."""

import pytest
import torch

from hpctrain import optim
from hpctrain.config import OptimConfig


def train(cfg: OptimConfig, steps: int = 5) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = optim.base_optimizer(model, cfg)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return opt, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("settings", [
    dict(name="sgd", momentum=0.9),
    dict(name="sgd", momentum=0.9, nesterov=True, weight_decay=1e-3),
    dict(name="adamw", weight_decay=1e-2),
])
def test_fused_is_the_default_and_matches_the_per_tensor_loop(settings):
    fused_opt, fused = train(OptimConfig(lr=0.05, **settings))
    loop_opt, loop = train(OptimConfig(lr=0.05, fused=False, **settings))
    assert fused_opt.param_groups[0]["fused"] is True
    assert not loop_opt.param_groups[0]["fused"]
    _, start = train(OptimConfig(lr=0.05, **settings), steps=0)
    for f, lp, s in zip(fused, loop, start, strict=True):
        assert not torch.equal(f, s)  # the steps did move the parameters
        torch.testing.assert_close(f, lp, rtol=1e-5, atol=1e-6)
