"""Synthetic in-memory datasets with learnable structure, deterministic from a seed.

Classification inputs are noise around one pattern per class, so the loss can fall well below chance;
token sequences come from a sparse random Markov chain, so a language model
can learn next-token statistics. Identical on every rank for the same seed.
"""

from __future__ import annotations

import numpy as np


def classification(num_samples: int, input_shape: tuple[int, ...], num_classes: int, seed: int,
                   signal: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise around one fixed pattern per class. Images (C, H, W) get plane-wave patterns with a
    class-specific frequency and orientation per channel, which convolutions pick up; flat vectors get
    random class means."""
    rng = np.random.default_rng([seed, 1])
    if len(input_shape) == 3:
        c, h, w = input_shape
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        freq = rng.uniform(0.5, 4.0, size=(num_classes, c, 2))
        phase = rng.uniform(0, 2 * np.pi, size=(num_classes, c, 1, 1))
        waves = freq[..., 0, None, None] * ii / h + freq[..., 1, None, None] * jj / w
        templates = np.sqrt(2) * np.sin(2 * np.pi * waves + phase)
    else:
        templates = rng.standard_normal((num_classes, *input_shape))
    y = rng.integers(0, num_classes, size=num_samples)
    x = rng.standard_normal((num_samples, *input_shape), dtype=np.float32)
    x += (signal * templates[y]).astype(np.float32)
    return x, y.astype(np.int64)


def token_sequences(num_samples: int, seq_len: int, vocab_size: int, seed: int,
                    branching: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``seq[:-1]`` and next-token targets ``seq[1:]`` of a chain where each token has few successors."""
    rng = np.random.default_rng([seed, 2])
    successors = rng.integers(0, vocab_size, size=(vocab_size, branching))
    seq = np.empty((num_samples, seq_len + 1), dtype=np.int64)
    seq[:, 0] = rng.integers(0, vocab_size, size=num_samples)
    choices = rng.integers(0, branching, size=(num_samples, seq_len))
    for t in range(seq_len):
        seq[:, t + 1] = successors[seq[:, t], choices[:, t]]
    return seq[:, :-1].copy(), seq[:, 1:].copy()
