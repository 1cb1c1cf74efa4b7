"""The model registry: name -> builder, plus what one sample looks like to that model.

Every model returns logits whose last dimension is the class (or vocabulary) axis, so one loss,
``cross_entropy(logits.reshape(-1, C), target.reshape(-1))``, serves classification and language modelling.
Normalisation is GroupNorm, not BatchNorm: batch statistics would make a 2-rank run differ from a 1-rank
run over the same global batch, and per-rank running buffers would drift apart between ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class ModelSpec(Protocol):  # the subset of hpctrain.config.ModelConfig the builders read
    name: str
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
        x = self.embed(tokens) + self.pos[:t]
        x = self.layers(x, mask=self.mask[:t, :t], is_causal=True)
        return self.out(self.norm(x))


REGISTRY: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "mlp": mlp,
    "cnn": SmallResNet,
    "transformer": TinyLM,
}


def sample_spec(cfg: ModelSpec) -> SampleSpec:
    if cfg.name == "mlp":
        return SampleSpec((cfg.input_dim,), torch.float32, (), cfg.num_classes)
    if cfg.name == "cnn":
        return SampleSpec((cfg.in_channels, cfg.image_size, cfg.image_size), torch.float32, (), cfg.num_classes)
    if cfg.name == "transformer":
        return SampleSpec((cfg.seq_len,), torch.int64, (cfg.seq_len,), cfg.vocab_size)
    raise KeyError(f"unknown model {cfg.name!r}; registered: {', '.join(REGISTRY)}")


def build(cfg: ModelSpec) -> nn.Module:
    """Build a registered model; initialisation draws from torch's global RNG (seed it first)."""
    try:
        builder = REGISTRY[cfg.name]
    except KeyError:
        raise KeyError(f"unknown model {cfg.name!r}; registered: {', '.join(REGISTRY)}") from None
    return builder(cfg)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every predicted position (one per sample, or one per token); mean squared
    error where the targets are real numbers (regression)."""
    if target.is_floating_point():
        return F.mse_loss(logits, target)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
