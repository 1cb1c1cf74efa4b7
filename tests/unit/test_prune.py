"""Pruning without MPI: the schedule's values, the masks' exact contents, and materialisation's equal outputs."""

import pytest
import torch
from torch import nn

from hpctrain import prune
from hpctrain.config import ConfigError, PruneConfig, from_dict


def cfg(**kw):
    return PruneConfig(**{"kind": "unstructured", "sparsity": 0.8, "start_step": 10, "end_step": 50,
                          "every_steps": 10, **kw})


def test_zhu_gupta_schedule_values():
    c = cfg()
    # s_t = 0.8 * (1 - (1 - (t - 10) / 40)^3), recomputed at 10, 20, ..., 50 only
    assert prune.sparsity_at(c, 10) == 0.0
    assert prune.sparsity_at(c, 20) == pytest.approx(0.8 * (1 - 0.75 ** 3))
    assert prune.sparsity_at(c, 30) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert prune.sparsity_at(c, 50) == pytest.approx(0.8)
    assert [prune.sparsity_at(c, t) for t in (9, 15, 51, 60)] == [None] * 4
    # an end step off the cadence is still a mask update (the target is reached exactly there)
    assert prune.sparsity_at(cfg(end_step=45), 45) == pytest.approx(0.8)


@pytest.mark.parametrize(("key", "value"), [("sparsity", 1.0), ("sparsity", -0.1), ("every_steps", 0),
                                            ("end_step", 5)])
def test_bad_prune_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"prune.{key}" if key != "end_step" else "prune.end_step"):
        from_dict({"prune": {"kind": "unstructured", "start_step": 10, "end_step": 20, key: value}})


def test_end_step_beyond_the_run_is_refused():
    with pytest.raises(ConfigError, match="prune.end_step: 500 is beyond train.steps=100"):
        from_dict({"train": {"steps": 100}, "prune": {"kind": "unstructured", "end_step": 500}})


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))


def test_unstructured_masks_the_globally_smallest_weights():
    model = mlp()
    p = prune.Pruner(cfg(sparsity=0.5, start_step=0, end_step=1, every_steps=1), model)
    weights = torch.cat([model[i].weight.detach().abs().reshape(-1) for i in (0, 2, 4)])
    drop = round(0.5 * len(weights))  # 52 of the 48 + 40 + 15 weights
    threshold = weights.sort().values[drop - 1]
    p.update(1)
    after = torch.cat([model[i].weight.detach().reshape(-1) for i in (0, 2, 4)])
    assert int((after == 0).sum()) == drop == 52
    assert bool((weights[after == 0] <= threshold).all()) and bool((weights[after != 0] > threshold).all())
    assert all(bool((model[i].bias != 0).all()) for i in (0, 2, 4))  # biases are not pruned
    # the masks keep the weights at zero after an update would have regrown them
    with torch.no_grad():
        for i in (0, 2, 4):
            model[i].weight.add_(1.0)
    p.apply()
    assert int(torch.cat([model[i].weight.reshape(-1) for i in (0, 2, 4)]).eq(0).sum()) == drop


def test_masks_round_trip_through_the_state_dict_bit_identically():
    a, b = mlp(), mlp()
    pa = prune.Pruner(cfg(sparsity=0.6, start_step=0, end_step=1, every_steps=1), a)
    pa.update(1)
    pb = prune.Pruner(cfg(sparsity=0.6, start_step=0, end_step=1, every_steps=1), b)
    pb.load_state_dict(pa.state_dict())
    assert pb.digest() == pa.digest() and pb.sparsity == pa.sparsity
    pc = prune.Pruner(cfg(sparsity=0.5, start_step=0, end_step=1, every_steps=1), mlp())
    pc.update(1)
    assert pc.digest() != pa.digest()  # control: other masks, another digest


def test_structured_rows_then_materialised_give_equal_outputs_and_smaller_layers():
    model = mlp()
    p = prune.Pruner(cfg(kind="structured", sparsity=0.5, start_step=0, end_step=1, every_steps=1), model)
    p.update(1)
    # half the rows of the two hidden Linears (not the classifier, whose rows are the classes) are zero
    assert int((model[0].weight.abs().sum(1) == 0).sum()) == 4 and int((model[2].weight.abs().sum(1) == 0).sum()) == 2
    assert int((model[4].weight.abs().sum(1) == 0).sum()) == 0
    x = torch.randn(32, 6)
    before = model(x)
    shrunk = prune.materialize(model)
    assert shrunk == {"0": (8, 4), "2": (5, 3)}
    assert model[0].weight.shape == (4, 6) and model[2].weight.shape == (3, 4) and model[4].weight.shape == (3, 3)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    # and a model rebuilt from the original architecture takes the materialised weights
    rebuilt = mlp()
    prune.resize_like(rebuilt, {n: m.weight.shape for n, m in prune.named_producers(model)})
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(x), before, rtol=0, atol=1e-6)


def test_materialising_rows_that_are_not_zero_would_change_the_outputs():
    """Control for the test above: cutting live units out does change the outputs (the check can fail)."""
    model = mlp()
    x = torch.randn(8, 6)
    before = model(x)
    with torch.no_grad():
        model[0].weight[:2] = 0
        model[0].bias[:2] = 0
    shrunk = prune.materialize(model)
    assert shrunk == {"0": (8, 6)}
    assert not torch.allclose(model(x), before, atol=1e-6)


def test_structured_conv_channels_feeding_a_conv():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    prune.Pruner(cfg(kind="structured", sparsity=0.5, start_step=0, end_step=1, every_steps=1), model).update(1)
    x = torch.randn(2, 3, 9, 9)
    before = model(x)
    assert prune.materialize(model) == {"0": (8, 4)}
    assert model[0].weight.shape == (4, 3, 3, 3) and model[2].weight.shape == (4, 4, 3, 3)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)


def test_attention_heads_masked_whole():
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.Sequential(layer)
    prune.Pruner(cfg(kind="structured", sparsity=0.5, start_step=0, end_step=1, every_steps=1), model).update(1)
    out_cols = layer.self_attn.out_proj.weight.abs().sum(0).reshape(4, 4).sum(1)  # per head
    assert int((out_cols == 0).sum()) == 2  # 2 of 4 heads
    q, k, v = layer.self_attn.in_proj_weight.abs().sum(1).reshape(3, 4, 4).sum(2)
    assert torch.equal(q == 0, out_cols == 0) and torch.equal(v == 0, out_cols == 0)
    assert int((layer.linear1.weight.abs().sum(1) == 0).sum()) == 16  # half the feed-forward rows too
    x = torch.randn(2, 5, 16)
    layer.eval()
    before = model(x)
    assert prune.materialize(model) == {"0.linear1": (32, 16)}
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)


def test_structured_pruning_of_a_model_it_cannot_shrink_names_what_it_has():
    from hpctrain.config import ModelConfig
    from hpctrain.models import build

    cnn = build(ModelConfig(name="cnn", width=8, depth=2))  # every conv feeds a GroupNorm
    with pytest.raises(ConfigError, match="structured.*Conv2d.*is followed by GroupNorm.*unstructured"):
        prune.Pruner(cfg(kind="structured"), cnn)
    with pytest.raises(ConfigError, match="no Linear or Conv layer"):
        prune.Pruner(cfg(), nn.Sequential(nn.Embedding(5, 3)))
