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
    (tmp_path / "unit_usermods.py").write_text(
        "import torch\n"
        "def wide(width=3, out=2):\n    return torch.nn.Linear(width, out)\n"
        "def not_a_module():\n    return 42\n"
        "def broken(**kw):\n    raise ValueError('width must be even')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config.load(None, ["model.name=unit_usermods:wide", "model.args.width=5", "model.args.out=7"]).model
    model = models.build(cfg)
    assert (model.in_features, model.out_features) == (5, 7)
    cfg.name = "unit_usermods:not_a_module"
    cfg.args = {}
    with pytest.raises(ConfigError, match="model.name: unit_usermods:not_a_module returned int, not a torch.nn.Module"):
        models.build(cfg)
    cfg.name = "unit_usermods:broken"
    with pytest.raises(ConfigError) as e:
        models.build(cfg)
    first, *rest = str(e.value).splitlines()
    assert first == "model.name: unit_usermods:broken() raised ValueError: width must be even"
    assert "Traceback of your code" in rest[0] and "unit_usermods.py" in str(e.value)
    assert "hpctrain/" not in "\n".join(rest)  # only the user's frames follow the line
    cfg.name = "unit_usermods:nothing"
    with pytest.raises(ConfigError, match="model.name: 'unit_usermods' has no attribute 'nothing' \\(it has: broken"):
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
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.BatchNorm2d(4),
                              torch.nn.Sequential(torch.nn.BatchNorm1d(3)))
    net[1].running_mean.fill_(0.5)
    converted = models.to_sync_batchnorm(net)
    bns = [m for m in converted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 2 and all(isinstance(m, models.SyncBatchNorm) for m in bns)
    assert [m.sync_name for m in bns] == ["1", "2.0"]
    assert torch.equal(converted[1].running_mean, torch.full((4,), 0.5))


def test_sync_batchnorm_on_one_rank_is_batchnorm():
    """On one rank the global batch is the local one: outputs, gradients and running statistics match
    torch's BatchNorm2d (the 2-rank case is tests/mpi/test_user_models.py)."""
    import horovod.torch as hvd

    hvd.init()
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.uniform_()
        ref.bias.uniform_()
    sync = models.to_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))
    sync.load_state_dict({f"0.{k}": v for k, v in ref.state_dict().items()})
    x = torch.randn(8, 3, 5, 5, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    (ref(x) ** 2).sum().backward()
    (sync(x2) ** 2).sum().backward()
    assert torch.allclose(ref(x.detach()), sync(x2.detach()), atol=1e-5)
    assert torch.allclose(x.grad, x2.grad, atol=1e-4)
    assert torch.allclose(ref.running_var, sync[0].running_var, atol=1e-6)
