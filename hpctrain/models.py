"""Models and losses: the built-in registry, users' models and losses by import path, and what one sample
looks like to a built-in model.

Every built-in model returns logits whose last dimension is the class (or vocabulary) axis, so one loss,
``cross_entropy(logits.reshape(-1, C), target.reshape(-1))``, serves classification and language modelling.
Their normalisation is GroupNorm, not BatchNorm: batch statistics would make a 2-rank run differ from a
1-rank run over the same global batch (users' BatchNorm models can use ``model.sync_batchnorm``).

Users' models may return a tensor, a tuple or list (the first element is the logits), a dict with
``"logits"``, or an object with ``.logits`` (Hugging Face outputs); the built-in losses and the accuracy
read the logits from any of these, a user's loss gets the outputs as the model returned them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from hpctrain import components
from hpctrain.config import ConfigError


class ModelSpec(Protocol):  # the subset of hpctrain.config.ModelConfig the builders read
    name: str
    args: dict[str, Any]
    width: int
    depth: int
    num_classes: int
    input_dim: int
    in_channels: int
    image_size: int
    vocab_size: int
    seq_len: int
    heads: int


@dataclass(frozen=True)
class SampleSpec:
    """Shape and dtype of one input sample and its target; the data pipeline produces exactly this."""

    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    target_shape: tuple[int, ...]  # () for one class label per sample
    num_classes: int  # classes, or vocabulary size for token targets


def mlp(cfg: ModelSpec) -> nn.Module:
    layers: list[nn.Module] = []
    dim = cfg.input_dim
    for _ in range(cfg.depth):
        layers += [nn.Linear(dim, cfg.width), nn.ReLU()]
        dim = cfg.width
    layers.append(nn.Linear(dim, cfg.num_classes))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(min(8, channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(min(8, channels), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(y)))


class SmallResNet(nn.Module):
    """A ResNet-style CNN: stem, ``depth`` residual blocks in two stages, global pooling, classifier."""

    def __init__(self, cfg: ModelSpec) -> None:
        super().__init__()
        c = cfg.width
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, c, 3, padding=1, bias=False),
                                  nn.GroupNorm(min(8, c), c), nn.ReLU())
        first = max(1, cfg.depth // 2)
        blocks: list[nn.Module] = [ResidualBlock(c) for _ in range(first)]
        blocks += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False), nn.GroupNorm(min(8, 2 * c), 2 * c),
                   nn.ReLU()]
        blocks += [ResidualBlock(2 * c) for _ in range(cfg.depth - first)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * c, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


class TinyLM(nn.Module):
    """A decoder-only Transformer language model (causal self-attention, learned positions)."""

    def __init__(self, cfg: ModelSpec) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos = nn.Parameter(torch.zeros(cfg.seq_len, cfg.width))
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, dim_feedforward=4 * cfg.width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, cfg.vocab_size)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(cfg.seq_len),
                             persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        mask: torch.Tensor = self.mask  # type: ignore[assignment]  # a registered buffer
        x = self.embed(tokens) + self.pos[:t]
        x = self.layers(x, mask=mask[:t, :t], is_causal=True)
        return self.out(self.norm(x))


REGISTRY: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "mlp": mlp,
    "cnn": SmallResNet,
    "transformer": TinyLM,
}


def is_builtin(name: str) -> bool:
    return name in REGISTRY


def sample_spec(cfg: ModelSpec) -> SampleSpec:
    """What one sample of a built-in model looks like (users' models are checked by a forward instead)."""
    if cfg.name == "mlp":
        return SampleSpec((cfg.input_dim,), torch.float32, (), cfg.num_classes)
    if cfg.name == "cnn":
        return SampleSpec((cfg.in_channels, cfg.image_size, cfg.image_size), torch.float32, (), cfg.num_classes)
    if cfg.name == "transformer":
        return SampleSpec((cfg.seq_len,), torch.int64, (cfg.seq_len,), cfg.vocab_size)
    raise KeyError(f"unknown model {cfg.name!r}; registered: {', '.join(REGISTRY)}")


def build(cfg: ModelSpec) -> nn.Module:
    """Build a registered model, or call the user's ``module:callable`` with ``model.args``; initialisation
    draws from torch's global RNG (seed it first)."""
    if cfg.name in REGISTRY:
        return REGISTRY[cfg.name](cfg)
    fn = components.resolve(cfg.name, "model.name")
    args = ", ".join(f"{k}={v!r}" for k, v in cfg.args.items())
    model = components.call(fn, "model.name", f"{cfg.name}({args})", **cfg.args)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {cfg.name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def logits_of(outputs: Any, key: str = "model.name") -> torch.Tensor:
    """The logits in whatever a model's forward returned (see the module docstring)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"]
    if isinstance(getattr(outputs, "logits", None), torch.Tensor):
        return outputs.logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise ConfigError(f"{key}: the model returned {type(outputs).__name__}, where the built-in losses need a "
                      "tensor of logits, a tuple/list starting with one, a dict with 'logits' or an object "
                      "with .logits: return one of these, or set train.loss to your own \"module:callable\"")


def cross_entropy(outputs: Any, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every predicted position (one per sample, or one per token)."""
    logits = logits_of(outputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def mse(outputs: Any, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(logits_of(outputs), target)


def loss_fn(outputs: Any, target: torch.Tensor) -> torch.Tensor:
    """``train.loss = "auto"``: cross-entropy for class or token targets, mean squared error where the
    targets are real numbers (regression)."""
    return mse(outputs, target) if target.is_floating_point() else cross_entropy(outputs, target)


LOSSES: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "auto": loss_fn,
    "cross_entropy": cross_entropy,
    "mse": mse,
}


def build_loss(name: str) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """``train.loss``: a built-in name or the user's ``module:callable``."""
    return LOSSES[name] if name in LOSSES else components.resolve(name, "train.loss")


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch: per-channel sums, sums of squares
    and counts are all-reduced across ranks (autograd flows through the all-reduce, so the gradients are
    those of BatchNorm over the whole global batch). Horovod's own ``hvd.SyncBatchNorm`` runs on GPUs only;
    this one runs wherever Horovod's all-reduce does. In eval mode it is plain BatchNorm."""

    def __init__(self, *args: Any, name: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sync_name = name  # the all-reduce's name: the layer's place in the model, the same on every rank

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects at least 2-D input (batch, channels, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return super().forward(x)
        import horovod.torch as hvd

        dims = [0, *range(2, x.dim())]
        xf = x.float()
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims),
                           torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)])
        total = hvd.allreduce(local, op=hvd.Sum, name=f"hpctrain.syncbn.{self.sync_name}")  # dist
        c = x.shape[1]
        count = total[-1]
        mean = total[:c] / count
        var = (total[c:2 * c] / count - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                tracked: torch.Tensor = self.num_batches_tracked  # type: ignore[assignment]  # a buffer
                tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * count / max(float(count) - 1, 1.0))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def to_sync_batchnorm(model: nn.Module, prefix: str = "") -> nn.Module:
    """Replace every BatchNorm layer by :class:`SyncBatchNorm`, keeping its parameters and running buffers."""
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not isinstance(model, SyncBatchNorm):
        sync = SyncBatchNorm(model.num_features, model.eps, model.momentum, model.affine,
                             model.track_running_stats, name=prefix or "root")
        sync.load_state_dict(model.state_dict())
        sync.train(model.training)
        return sync
    for name, child in model.named_children():
        setattr(model, name, to_sync_batchnorm(child, f"{prefix}.{name}" if prefix else name))
    return model


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
