import pytest
import torch

from hpctrain import config, models


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
    cfg.name = "vgg"
    with pytest.raises(KeyError, match="registered: mlp, cnn, transformer"):
        models.build(cfg)
