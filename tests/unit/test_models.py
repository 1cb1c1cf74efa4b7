import pytest
import torch

from hpctrain import config, models
from hpctrain.config import ConfigError


@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_every_model_trains_one_step(name):
    cfg = config.load(None, [f"model.name={name}", "model.width=16", "model.image_size=8", "model.seq_len=12"]).model
    spec = models.sample_spec(cfg)
    torch.manual_seed(0)
    model = models.build(cfg)
    if spec.input_dtype == torch.int64:
        x = torch.randint(0, spec.num_classes, (3, *spec.input_shape))
    else:
        x = torch.randn(3, *spec.input_shape)
    y = torch.randint(0, spec.num_classes, (3, *spec.target_shape))
    logits = model(x)
    assert logits.shape == (3, *spec.target_shape, spec.num_classes)
    loss = models.loss_fn(logits, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


def test_build_is_deterministic_under_a_seed():
    cfg = config.load(None, ["model.name=cnn", "model.width=8"]).model
    torch.manual_seed(7)
    a = models.build(cfg)
    torch.manual_seed(7)
    b = models.build(cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_transformer_is_causal():
    cfg = config.load(None, ["model.name=transformer", "model.width=16", "model.seq_len=10"]).model
    model = models.build(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (1, 10))
    y = x.clone()
    y[0, 7:] = (y[0, 7:] + 1) % cfg.vocab_size  # change only the future of position 6
    with torch.no_grad():
        assert torch.allclose(model(x)[0, :7], model(y)[0, :7], atol=1e-5)
        assert not torch.allclose(model(x)[0, 7:], model(y)[0, 7:])


def test_unknown_model():
    cfg = config.load(None).model
    cfg.name = "vgg"  # bypasses the config's own check, which refuses it earlier
    with pytest.raises(ConfigError, match="model.name: 'vgg' is not an import path"):
        models.build(cfg)


def test_registry_names_are_the_configs():
    assert tuple(models.REGISTRY) == config.BUILTIN_MODELS
    assert tuple(models.LOSSES) == config.BUILTIN_LOSSES


def test_user_model_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def wide(width=3, out=2):\n    return torch.nn.Linear(width, out)\n"
        "def not_a_module():\n    return 42\n"
        "def broken(**kw):\n    raise ValueError('width must be even')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config.load(None, ["model.name=mymodels:wide", "model.args.width=5", "model.args.out=7"]).model
    model = models.build(cfg)
    assert (model.in_features, model.out_features) == (5, 7)
    cfg.name = "mymodels:not_a_module"
    cfg.args = {}
    with pytest.raises(ConfigError, match="model.name: mymodels:not_a_module returned int, not a torch.nn.Module"):
        models.build(cfg)
    cfg.name = "mymodels:broken"
    with pytest.raises(ConfigError) as e:
        models.build(cfg)
    first, *rest = str(e.value).splitlines()
    assert first == "model.name: mymodels:broken() raised ValueError: width must be even"
    assert "Traceback of your code" in rest[0] and "mymodels.py" in str(e.value)
    assert "hpctrain/" not in "\n".join(rest)  # only the user's frames follow the line
    cfg.name = "mymodels:nothing"
    with pytest.raises(ConfigError, match="model.name: 'mymodels' has no attribute 'nothing' \\(it has: broken"):
        models.build(cfg)
    cfg.name = "nosuchpackage.mod:fn"
    with pytest.raises(ConfigError, match="cannot import module 'nosuchpackage.mod'.*PYTHONPATH"):
        models.build(cfg)


@pytest.mark.parametrize("wrap", [
    lambda t: t, lambda t: (t, "aux"), lambda t: [t], lambda t: {"logits": t, "loss": None},
    lambda t: type("Output", (), {"logits": t})(),
])
def test_losses_read_logits_from_any_output(wrap):
    logits, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 0])
    expected = torch.nn.functional.cross_entropy(logits, target)
    assert torch.equal(models.cross_entropy(wrap(logits), target), expected)
    assert torch.equal(models.loss_fn(wrap(logits), target), expected)


def test_unusable_output_is_refused():
    with pytest.raises(ConfigError, match="the model returned set, where the built-in losses need"):
        models.cross_entropy({1, 2}, torch.tensor([0]))


def test_sync_batchnorm_conversion_keeps_state():
    import horovod.torch as hvd

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.BatchNorm2d(4),
                              torch.nn.Sequential(torch.nn.BatchNorm1d(3)))
    net[1].running_mean.fill_(0.5)
    converted = models.to_sync_batchnorm(net)
    bns = [m for m in converted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 2 and all(isinstance(m, hvd.SyncBatchNorm) for m in bns)
    assert torch.equal(converted[1].running_mean, torch.full((4,), 0.5))
