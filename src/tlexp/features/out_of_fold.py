"""Out-of-fold probabilities of the frozen-feature probe: every train + val image predicted by probes that never saw it.

The raw material of the label audit (confident learning needs out-of-sample probabilities: a model that trained on
an image has learnt its label, right or wrong). K stratified folds over train + val, seeded; each fold's images are
predicted by the probe (`fit_probe`) fitted on the other K - 1 folds alone. Repeats draw new folds (seed + r) and
average the probabilities. The probe's L2 is chosen once, by `fit_probe(train, val)` (fitted on train, selected on
val, as everywhere else in tlexp), and then held fixed over the folds, as `evidence.py` does: one scalar of the
whole set, not a fit of any image's label; choosing it per fold would cost a grid of fits per fold. Test is never
read: only the train and val features are passed in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tlexp.config.errors import DataError

from .evidence import stratified_folds
from .probe import fit_probe

log = logging.getLogger(__name__)

DEFAULT_FOLDS = 5  # when cv.folds is 0 (one train/val split for training)

# fit(train (x, y), held (x, y), num_classes, l2) -> (weight [C, D], bias [C]): the probe of one fold
Fit = Callable[[tuple, tuple, int, float], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold class probabilities of every train + val image, in the order train then val."""

    probs: torch.Tensor  # [N, C] float64, mean over repeats; each row sums to 1
    labels: torch.Tensor  # [N] the given labels
    folds: torch.Tensor  # [R, N] each image's fold in each repeat
    l2: float  # the probe's L2, chosen on val once
    seconds: float
    notes: list[str] = field(default_factory=list)  # what was changed from the request, and why

    @property
    def accuracy(self) -> float:
        """How often the out-of-fold prediction agrees with the given label."""
        return (self.probs.argmax(1) == self.labels).double().mean().item()


def fold_count(labels: torch.Tensor, folds: int) -> int:
    """`folds`, lowered to the smallest class's size (each fold's probe must see every class): at least 2."""
    counts = torch.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        rare = [int(c) for c in (counts == 1).nonzero().flatten()]
        raise DataError(
            f"class(es) {rare} hold a single train + val image: an image cannot be predicted out of fold when no "
            "other image of its class is left to learn from. Add images to those classes, or drop them."
        )
    return max(2, min(int(folds), smallest))


def fold_plan(labels: torch.Tensor, folds: int, repeats: int = 1, seed: int = 0) -> torch.Tensor:
    """[repeats, N]: each image's fold in each repeat; stratified by class, repeat r seeded with seed + r."""
    return torch.stack([stratified_folds(labels, folds, seed + r) for r in range(repeats)])


def probe_fit(train: tuple, held: tuple, num_classes: int, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe of one fold, at the fixed L2 (`held` only gives fit_probe its val figures: nothing is chosen)."""
    fitted = fit_probe(train, held, num_classes, grid=(l2,))
    return fitted["weight"], fitted["bias"]


def predict_out_of_fold(x: torch.Tensor, y: torch.Tensor, plan: torch.Tensor, num_classes: int, l2: float,
                        fit: Fit = probe_fit) -> torch.Tensor:  # fmt: skip
    """[N, C] probabilities: the images of fold f in repeat r by the model fitted on the other folds of r, averaged
    over the repeats. `fit` is the probe (tests pass a spy)."""
    probs = torch.zeros(len(y), num_classes, dtype=torch.float64)
    for fold in plan:
        for f in fold.unique():
            held, kept = fold == f, fold != f
            weight, bias = fit((x[kept], y[kept]), (x[held], y[held]), num_classes, l2)
            logits = x[held].double() @ weight.double().T + bias.double()
            probs[held] += logits.softmax(1)
    return probs / len(plan)


def out_of_fold(train: tuple, val: tuple, num_classes: int, folds: int = DEFAULT_FOLDS, repeats: int = 1,
                seed: int = 0, l2: float | None = None) -> OutOfFold:  # fmt: skip
    """train/val: (features, labels). Out-of-fold probe probabilities of every train + val image (train first).
    `l2`: the probe's L2; None = chosen by fit_probe(train, val) (fitted on train, selected on val)."""
    started = time.perf_counter()
    if l2 is None:
        l2 = fit_probe(train, val, num_classes)["l2"]  # chosen once on val, then fixed over the folds
    x, y = torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]])
    k = fold_count(y, folds)
    notes = []
    if k < folds:
        notes.append(f"{k} folds, not {folds}: the smallest class holds {k} train + val images")
        log.warning("out-of-fold: %s", notes[-1])
    plan = fold_plan(y, k, repeats, seed)
    probs = predict_out_of_fold(x, y, plan, num_classes, l2)
    return OutOfFold(probs, y, plan, l2, time.perf_counter() - started, notes)
