"""Class imbalance: counts, the imbalance ratio, loss weights and a weighted sampler."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

BALANCE = ("none", "weights", "sampler")


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def imbalance_ratio(counts: list[int]) -> float:
    """Largest class over smallest class (1.0 = balanced)."""
    present = [c for c in counts if c > 0]
    return round(max(present) / min(present), 2) if present else 1.0


def class_weights(counts: list[int]) -> list[float]:
    """Inverse-frequency loss weights, scaled so that the average weight over the samples is 1."""
    counts_a = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    return (counts_a.sum() / (len(counts_a) * counts_a)).round(6).tolist()


def balanced_sampler(labels: np.ndarray, num_classes: int, seed: int) -> WeightedRandomSampler:
    """Draws every class equally often on average (with replacement), one epoch = len(labels) draws."""
    counts = np.maximum(np.asarray(class_counts(labels, num_classes), dtype=np.float64), 1.0)
    weights = torch.as_tensor(1.0 / counts[np.asarray(labels)], dtype=torch.double)
    return WeightedRandomSampler(weights, len(labels), replacement=True, generator=torch.Generator().manual_seed(seed))
