"""Activation checkpointing (hpctrain.recompute): the same gradients, blocks really recomputed, the same
parameter names, and one-line errors for names that match nothing."""

import pytest
import torch

from hpctrain import models, recompute
from hpctrain.config import ConfigError, ModelConfig


def grads(cfg, x, y, names=None):
    torch.manual_seed(0)
    model = models.build(cfg)
    calls = []

    def counted(forward):
        def run(*args, **kwargs):
            calls.append(1)
            return forward(*args, **kwargs)
        return run

    for m in model.modules():
        if type(m).__name__ in recompute.BUILTIN_BLOCKS[cfg.name]:
            m.forward = counted(m.forward)
    if names is not None:
        recompute.apply(model, names)
    torch.nn.functional.cross_entropy(model(x).reshape(-1, cfg.num_classes if cfg.name != "transformer"
                                                       else cfg.vocab_size), y.reshape(-1)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls), model


@pytest.mark.parametrize("name", ["transformer", "cnn", "mlp"])
def test_gradients_identical_and_blocks_recomputed(name):
    cfg = ModelConfig(name=name, width=16, depth=2, seq_len=8, image_size=8, heads=2, vocab_size=32)
    g = torch.Generator().manual_seed(1)
    if name == "transformer":
        x = torch.randint(0, 32, (4, 8), generator=g)
        y = torch.randint(0, 32, (4, 8), generator=g)
    elif name == "cnn":
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    else:
        x, y = torch.randn(4, 64, generator=g), torch.randint(0, 10, (4,), generator=g)
    plain, plain_calls, plain_model = grads(cfg, x, y)
    again, calls, model = grads(cfg, x, y, recompute.blocks_for(name, [], builtin=True))
    assert plain.keys() == again.keys()
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    assert calls == 2 * plain_calls > 0  # control: each block's forward ran again in backward
    assert list(model.state_dict()) == list(plain_model.state_dict())


def test_module_name_patterns_and_unmatched_names():
    model = models.build(ModelConfig(name="transformer", width=16, depth=3, heads=2))
    assert recompute.apply(model, ["layers.layers.*"]) == ["layers.layers.0", "layers.layers.1", "layers.layers.2"]
    with pytest.raises(ConfigError, match=r"^model.recompute_modules: \['Nope'\] names no module"):
        recompute.apply(models.build(ModelConfig(name="mlp")), ["Nope"])
    with pytest.raises(ConfigError, match="^model.recompute_modules: name the blocks"):
        recompute.blocks_for("pkg.mod:build", [], builtin=False)
