"""Stratified, seeded splits and the small-data subsets (`per_class` / `train_size`) the playbook talks about."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tlexp.config.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """Cross-validation fold `part` of `folds`, in repeat `repeat`: run i of cv.folds x cv.repeats."""

    part: int
    folds: int
    repeat: int = 0

    @property
    def index(self) -> int:
        return self.repeat * self.folds + self.part

    @classmethod
    def of(cls, cv: dict | None) -> Fold | None:
        """The fold a run trains on (cv.fold set), or None (no cross-validation, or the parent of the folds)."""
        if not cv or not cv.get("folds") or cv.get("fold") is None:
            return None
        folds, index = int(cv["folds"]), int(cv["fold"])
        if index >= folds * int(cv.get("repeats", 1)):
            raise ConfigError(
                f"cv.fold={index}: there are cv.folds x cv.repeats = {folds * int(cv.get('repeats', 1))} folds, "
                "numbered from 0."
            )
        return cls(index % folds, folds, index // folds)

    def as_dict(self) -> dict:
        return {"index": self.index, "part": self.part, "folds": self.folds, "repeat": self.repeat}


def _take(per_class_idx: dict[int, np.ndarray], counts: dict[int, int]) -> tuple[np.ndarray, dict]:
    taken, rest = [], {}
    for c, idx in per_class_idx.items():
        taken.append(idx[: counts[c]])
        rest[c] = idx[counts[c] :]
    return np.sort(np.concatenate(taken)) if taken else np.array([], dtype=np.int64), rest


def _by_class(labels: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    return {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}


def _counts(per_class_idx, fraction: float | None, per_class: int | None, what: str, names: list[str] | None):
    counts = {}
    for c, idx in per_class_idx.items():
        n = per_class if per_class is not None else int(round(fraction * len(idx)))
        n = max(n, 1)
        if n >= len(idx):
            raise DataError(
                f"class '{names[c] if names else c}' has {len(idx)} images, too few to hold {n} back for {what} "
                "and keep some for training. Add images to it, or lower the held-out share "
                f"(dataset.{what}_fraction / dataset.{what}_per_class), or supply a {what}/ split."
            )
        counts[c] = n
    return counts


def holdout(labels: np.ndarray, seed: int, fraction, per_class, what: str, names: list[str] | None = None):
    """Split indices into (kept, held out), stratified by class and reproducible from the seed."""
    rng = np.random.default_rng(seed)
    by_class = _by_class(labels, rng)
    held, rest = _take(by_class, _counts(by_class, fraction, per_class, what, names))
    kept = np.sort(np.concatenate(list(rest.values())))
    return kept, held


def subsample(labels: np.ndarray, seed: int, per_class: int | None, total: int | None) -> np.ndarray:
    """A stratified subset of at most `per_class` images of each class, or `total` images in proportion."""
    if per_class is None and total is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed + 1)
    by_class = _by_class(labels, rng)
    if per_class is not None:
        counts = {c: min(per_class, len(idx)) for c, idx in by_class.items()}
    else:
        counts = {c: max(1, int(round(total * len(idx) / len(labels)))) for c, idx in by_class.items()}
        counts = {c: min(n, len(by_class[c])) for c, n in counts.items()}
    _warn_if_short(by_class, counts, per_class, total)
    taken, _ = _take(by_class, counts)
    return taken


def _warn_if_short(by_class: dict[int, np.ndarray], counts: dict[int, int], per_class, total) -> None:
    """A subset smaller than asked for trains on what there is, and says so: the run must not look like n-shot."""
    got = sum(counts.values())
    if per_class is not None:
        short = {c: len(by_class[c]) for c in by_class if len(by_class[c]) < per_class}
        if short:
            log.warning(
                "dataset.per_class=%d: %d of %d classes have fewer training images (available, by class index: %s), "
                "so training uses %d images, not %d",
                per_class,
                len(short),
                len(by_class),
                short,
                got,
                per_class * len(by_class),
            )
    elif total > sum(len(idx) for idx in by_class.values()):
        log.warning(
            "dataset.train_size=%d asks for more images than the training pool holds; training uses %d", total, got
        )


def fold_of(labels: np.ndarray, folds: int, seed: int, repeat: int = 0, names: list[str] | None = None) -> np.ndarray:
    """The fold (0 .. folds-1) of each image: each class shuffled (seeded per repeat), then dealt round-robin,
    so that every fold holds each class in proportion and the same seed gives the same folds."""
    rng = np.random.default_rng([seed, 7919, repeat])
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < folds:
            name = names[c] if names else c
            raise DataError(
                f"cv.folds={folds}: class '{name}' has {len(members)} train + val images, fewer than the folds, so "
                f"some fold would have none of it to validate on. Lower cv.folds (at most {len(members)}) or add "
                "images to that class."
            )
        fold[members] = np.arange(len(members)) % folds
    return fold
