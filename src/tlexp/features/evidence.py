"""Cheap evidence from frozen features, in seconds: a cross-validated linear probe and a kNN accuracy.

Kornblith et al. (2019) and the recent transfer literature use these two as the robust baselines for "how well
do this backbone's features fit this data": the probe is feature extraction's converged accuracy, kNN a second
opinion that needs no fitting. Both are cross-validated over train + val, so their spread over folds says how
much a single figure can be trusted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from tlexp.data.splits import fold_of

from .probe import fit_probe

FOLDS = 5  # folds of the CV evidence unless the caller asks for others (advise and auto: `cv.folds` when set)


@dataclass(frozen=True)
class FeatureEvidence:
    """What the frozen features predict: the probe on the train/val split, and CV probe / kNN over train + val."""

    val_acc: float  # probe fitted on train, L2 chosen on val: feature_extraction's starting (and converged) head
    l2: float
    cv_acc: float  # mean over folds
    cv_std: float
    knn_acc: float
    knn_std: float
    folds: int
    k: int
    seconds: float
    val_correct: torch.Tensor = field(repr=False)  # per val image: the probe got it right (for paired noise)
    val_loss: float = float("nan")  # the probe's val log-loss: breaks exact ties on val accuracy
    cv_accs: tuple[float, ...] = ()  # per fold: the raw material of the interval over folds
    knn_accs: tuple[float, ...] = ()

    def as_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "val_correct"}
        counts = {"val_right": int(self.val_correct.sum()), "val_images": len(self.val_correct)}
        return {**{k: _rounded(v) for k, v in values.items()}, **counts}


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, tuple):
        return [_rounded(v) for v in value]
    return value


def stratified_folds(labels: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """Fold index per sample: the data module's cross-validation folds (`data.splits.fold_of`), as a tensor."""
    return torch.as_tensor(fold_of(labels.numpy(), folds, seed))


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, query: torch.Tensor, num_classes: int, k: int):
    """Cosine kNN, votes weighted by similarity (as in DINO's kNN evaluation, without the temperature)."""
    sims = F.normalize(query.float(), dim=1) @ F.normalize(train_x.float(), dim=1).T
    top, index = sims.topk(min(k, len(train_y)), dim=1)
    votes = torch.zeros(len(query), num_classes).scatter_add_(1, train_y[index], top.clamp_min(0) + 1e-6)
    return votes.argmax(1)


def feature_evidence(
    train, val, num_classes: int, folds: int = FOLDS, k: int = 10, seed: int = 0
) -> FeatureEvidence:  # fmt: skip
    """train/val: (features, labels). The probe's L2 is chosen once on val, then kept fixed across the folds
    (at most as many folds as the rarest class has images over train + val, at least 2)."""
    started = time.perf_counter()
    probe = fit_probe(train, val, num_classes)
    val_correct = (val[0].float() @ probe["weight"].T + probe["bias"]).argmax(1) == val[1]
    x, y = torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]])
    folds = max(2, min(folds, int(torch.bincount(y).min())))  # every fold needs each class at least once
    fold = stratified_folds(y, folds, seed)
    probe_accs, knn_accs = [], []
    for f in range(folds):
        held, kept = fold == f, fold != f
        fitted = fit_probe((x[kept], y[kept]), (x[held], y[held]), num_classes, grid=(probe["l2"],))
        probe_accs.append(fitted["val_acc"])
        knn_accs.append((knn_predict(x[kept], y[kept], x[held], num_classes, k) == y[held]).float().mean().item())
    cv, nn_ = torch.tensor(probe_accs), torch.tensor(knn_accs)
    return FeatureEvidence(
        val_acc=probe["val_acc"],
        l2=probe["l2"],
        cv_acc=cv.mean().item(),
        cv_std=cv.std().item(),
        knn_acc=nn_.mean().item(),
        knn_std=nn_.std().item(),
        folds=folds,
        k=k,
        seconds=time.perf_counter() - started,
        val_correct=val_correct,
        val_loss=probe["val_loss"],
        cv_accs=tuple(probe_accs),
        knn_accs=tuple(knn_accs),
    )
