"""Synthetic datasets with learnable structure, deterministic from a seed.

Classification inputs are noise around one pattern per class, so the loss can fall well below chance;
regression targets are a fixed random linear map of the inputs plus noise; token sequences come from a
sparse random Markov chain, so a language model can learn next-token statistics.

The task (patterns, teacher, chain) depends on ``seed`` only; the samples on ``sample_seed`` (default: the
seed), so any range of a large dataset can be generated on its own, by any rank, identically.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _sample_rng(seed: int, sample_seed: Sequence[int] | None, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream] if sample_seed is None else [*sample_seed, stream, 99])


def class_templates(shape: tuple[int, ...], num_classes: int, seed: int) -> np.ndarray:
    """One pattern per class. Images (C, H, W) get plane waves with a class-specific frequency and
    orientation per channel, which convolutions pick up; flat vectors get random class means."""
    rng = np.random.default_rng([seed, 1])
    if len(shape) == 3:
        c, h, w = shape
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        freq = rng.uniform(0.5, 4.0, size=(num_classes, c, 2))
        phase = rng.uniform(0, 2 * np.pi, size=(num_classes, c, 1, 1))
        waves = freq[..., 0, None, None] * ii / h + freq[..., 1, None, None] * jj / w
        return np.sqrt(2) * np.sin(2 * np.pi * waves + phase)
    return rng.standard_normal((num_classes, *shape))


def classification(num_samples: int, input_shape: tuple[int, ...], num_classes: int, seed: int,
                   signal: float = 0.5, sample_seed: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    templates = class_templates(tuple(input_shape), num_classes, seed)
    rng = _sample_rng(seed, sample_seed, 1)
    y = rng.integers(0, num_classes, size=num_samples)
    x = rng.standard_normal((num_samples, *input_shape), dtype=np.float32)
    x += (signal * templates[y]).astype(np.float32)
    return x, y.astype(np.int64)


def regression(num_samples: int, input_shape: tuple[int, ...], outputs: int, seed: int, noise: float = 0.1,
               sample_seed: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    teacher = np.random.default_rng([seed, 3]).standard_normal((int(np.prod(input_shape)), outputs))
    teacher /= np.sqrt(teacher.shape[0])
    rng = _sample_rng(seed, sample_seed, 3)
    x = rng.standard_normal((num_samples, *input_shape), dtype=np.float32)
    y = x.reshape(num_samples, -1) @ teacher + noise * rng.standard_normal((num_samples, outputs))
    return x, y.astype(np.float32)


def token_sequences(num_samples: int, seq_len: int, vocab_size: int, seed: int, branching: int = 4,
                    sample_seed: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``seq[:-1]`` and next-token targets ``seq[1:]`` of a chain where each token has few successors."""
    successors = np.random.default_rng([seed, 2]).integers(0, vocab_size, size=(vocab_size, branching))
    rng = _sample_rng(seed, sample_seed, 2)
    seq = np.empty((num_samples, seq_len + 1), dtype=np.int64)
    seq[:, 0] = rng.integers(0, vocab_size, size=num_samples)
    choices = rng.integers(0, branching, size=(num_samples, seq_len))
    for t in range(seq_len):
        seq[:, t + 1] = successors[seq[:, t], choices[:, t]]
    return seq[:, :-1].copy(), seq[:, 1:].copy()


def samples(num_samples: int, input_shape: tuple[int, ...], num_classes: int, seed: int, tokens: bool,
            sample_seed: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Classification samples, or with ``tokens`` next-token sequences (``input_shape`` is ``(seq_len,)`` and
    ``num_classes`` the vocabulary): what a model with that sample shape trains on."""
    if tokens:
        return token_sequences(num_samples, input_shape[0], num_classes, seed, sample_seed=sample_seed)
    return classification(num_samples, input_shape, num_classes, seed, sample_seed=sample_seed)
