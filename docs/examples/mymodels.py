"""A user's own models and batch transform, trained by import path (see docs/own-model.md).

    PYTHONPATH=docs/examples mpirun -np 2 hpctrain train --config docs/examples/convnet.toml
    PYTHONPATH=docs/examples mpirun -np 2 hpctrain train --config docs/examples/gpt2.toml
"""

import torch
from torch import nn


class ConvNet(nn.Module):
    """A small CNN with BatchNorm, the way people write them (not hpctrain's GroupNorm built-in)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def gpt2(vocab_size: int = 256, seq_len: int = 64, width: int = 64, layers: int = 2, heads: int = 2) -> nn.Module:
    """Hugging Face's GPT-2 architecture at a small size, built from a config (no weights downloaded). Its
    forward takes the token ids and returns an output object whose ``.logits`` hpctrain's loss reads."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=seq_len, n_embd=width, n_layer=layers,
                                      n_head=heads))


def flip_and_jitter(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
    """data.transform: random horizontal flips and brightness jitter, drawn from the generator hpctrain seeds
    from (seed, rank, step), so a resumed run augments exactly as the uninterrupted one did."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images + 0.1 * torch.randn(len(images), 1, 1, 1, generator=generator), labels
