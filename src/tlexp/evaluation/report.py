"""The evaluation report of a model on one split: confusion matrix, per-class report, top losses, calibration.

Written to `<run>/evaluation/` after test (train.py), or by `python -m tlexp.evaluate` for any checkpoint.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError, MulticlassConfusionMatrix

from tlexp.data import TransferDataModule
from tlexp.run.atomic import write_text

from . import calibration, figures, intervals
from .gradcam import save_top_losses_gradcam as save_gradcam

BINS = 15


@torch.no_grad()  # not inference_mode: temperature fitting needs autograd on these logits
def collect_logits(module, loader, device=None, limit: float | int = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a loader, in loader order, with the module in eval mode on `device`.

    `limit` reads like Lightning's `limit_test_batches`: a count of batches (int) or a fraction (float).
    """
    batches = limit if isinstance(limit, int) else math.ceil(float(limit) * len(loader))
    was_training = module.training
    module.eval().to(device or module.device)
    logits, labels = [], []
    for x, y in itertools.islice(loader, batches):
        logits.append(module(x.to(module.device)).float().cpu())
        labels.append(y)
    module.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    return MulticlassConfusionMatrix(num_classes)(predicted, labels).numpy()


def ece(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Expected calibration error over BINS equal-width confidence bins (top-1, L1)."""
    return float(MulticlassCalibrationError(probs.shape[1], n_bins=BINS, norm="l1")(probs, labels))


def per_class_report(matrix: np.ndarray, class_names: list[str]) -> list[dict]:
    """Precision, recall, F1 and support per class, then macro and support-weighted averages."""
    tp = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0)
    rows = [
        {"class": name, "precision": p, "recall": r, "f1": f, "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
    ]
    weights = support / max(1, support.sum())
    for name, w in (("macro avg", np.full(len(tp), 1 / len(tp))), ("weighted avg", weights)):
        rows.append(
            {
                "class": name,
                "precision": float(precision @ w),
                "recall": float(recall @ w),
                "f1": float(f1 @ w),
                "support": int(support.sum()),
            }
        )
    return rows


def recall_intervals(matrix: np.ndarray) -> list[intervals.Interval]:
    """Each class's recall with its Wilson interval: on a few images per class it is the loosest figure."""
    return [intervals.wilson(int(matrix[c, c]), int(matrix[c].sum())) for c in range(len(matrix))]


def write_report(rows: list[dict], figures_: dict[str, intervals.Interval], recalls, out: Path) -> None:
    with open(out / "classification_report.csv", "w", newline="") as f:
        fields = ["class", "precision", "recall", "recall_low", "recall_high", "f1", "support"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for i, r in enumerate(rows):
            bounds = recalls[i] if i < len(recalls) else None
            low = "" if bounds is None or bounds.low is None else f"{bounds.low:.4f}"
            high = "" if bounds is None or bounds.high is None else f"{bounds.high:.4f}"
            writer.writerow(
                {
                    **r,
                    **{k: f"{r[k]:.4f}" for k in ("precision", "recall", "f1")},
                    "recall_low": low,
                    "recall_high": high,
                }
            )
    lines = [
        f"accuracy: {figures_['acc']} (95% interval: Wilson)",
        f"macro F1: {figures_['f1']} (95% interval: bootstrap over images)",
        "",
        "| class | precision | recall [95% interval] | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rows):
        recall = recalls[i].text(on=False) if i < len(recalls) else f"{r['recall']:.2f}"
        lines.append(f"| {r['class']} | {r['precision']:.2f} | {recall} | {r['f1']:.2f} | {r['support']} |")
    write_text(out / "classification_report.md", "\n".join(lines) + "\n")


def top_losses(probs: torch.Tensor, labels: torch.Tensor, count: int) -> list[int]:
    """Indices of the most confidently wrong predictions (highest probability on a wrong class) first."""
    confidence, predicted = probs.max(dim=1)
    wrong = torch.nonzero(predicted != labels).flatten()
    order = confidence[wrong].argsort(descending=True)
    return wrong[order][:count].tolist()


def evaluate(
    module,
    datamodule: TransferDataModule,
    out: Path,
    tensorboard=None,
    split: str = "test",
    temperature: bool = True,
    top_loss_count: int = 16,
    device=None,
    limits: dict | None = None,
    logits: tuple[torch.Tensor, torch.Tensor] | None = None,
    gradcam: bool = True,
) -> dict:
    """Write the report files for `split` into `out`; returns the summary also written to `summary.json`.

    `limits` ({split: batches or fraction}) keeps the report on the same batches as the trainer's test (smoke runs).
    `logits`: (logits, labels) of `split` in loader order when the caller has them (train.py: from trainer.test),
    so the split is not run through the model a second time.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = datamodule.class_names
    limits = limits or {}
    if logits is None:
        logits = collect_logits(module, datamodule.evaluation_loader(split), device, limits.get(split, 1.0))
    logits, labels = logits
    probs = logits.softmax(dim=1)
    predicted = probs.argmax(dim=1)
    matrix = confusion_matrix(labels, predicted, len(names))
    accuracy = float(np.trace(matrix) / max(1, matrix.sum()))
    rows = per_class_report(matrix, names)
    found = intervals.of_logits(logits.numpy(), labels.numpy(), len(names))
    write_report(rows, found, recall_intervals(matrix), out)
    figures.save(figures.confusion_figure(matrix, names), out / "confusion_matrix.png", tensorboard, "eval/confusion")

    save_top_losses(datamodule, split, probs, labels, top_loss_count, out, tensorboard)
    worst = top_losses(probs, labels, top_loss_count) if gradcam else []
    if worst:  # top_losses_gradcam.png: the same images, with where the model looked for its wrong class
        save_gradcam(module, datamodule.splits[split], worst, probs, labels, names, out, tensorboard, device)
    bins = calibration.reliability_bins(probs, labels, BINS)
    summary = {
        "split": split,
        "images": int(len(labels)),
        "accuracy": accuracy,
        "macro_f1": rows[-2]["f1"],
        "intervals": {k: v.as_dict() for k, v in found.items()},
        "ece": ece(probs, labels),
        "nll": calibration.nll(logits, labels),
        "misclassified": int((predicted != labels).sum()),
        "worst_classes_by_recall": [r["class"] for r in sorted(rows[: len(names)], key=lambda r: r["recall"])[:3]],
    }
    scaled_bins = None
    if temperature and split != "val":
        val = collect_logits(module, datamodule.evaluation_loader("val"), device, limits.get("val", 1.0))
        scaled_bins = temperature_scaling(val, (logits, labels), summary)
    fig = figures.reliability_figure(bins, summary["ece"], scaled_bins, summary.get("ece_scaled"))
    figures.save(fig, out / "reliability.png", tensorboard, "eval/reliability")
    summary["reliability_bins"] = bins
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def save_top_losses(datamodule, split: str, probs, labels, count: int, out: Path, tensorboard) -> None:
    """The grid of the most confidently wrong images of the split, most confident first."""
    worst = top_losses(probs, labels, count)
    if not worst:
        return
    images, names = datamodule.splits[split], datamodule.class_names
    predicted = probs.argmax(dim=1)
    captions = [f"true: {names[labels[i]]}\npred: {names[predicted[i]]} ({probs[i].max():.2f})" for i in worst]
    grid = figures.grid_figure([images.image(i) for i in worst], captions, title=f"most confidently wrong ({split})")
    figures.save(grid, out / "top_losses.png", tensorboard, "eval/top_losses")


def temperature_scaling(val: tuple, judged: tuple, summary: dict) -> list[dict] | None:
    """Temperature fitted on val, judged on the evaluated split (the test set never tunes anything): the fitted
    values go into `summary`; returns the reliability bins after scaling, or None when fitting was skipped."""
    fitted = calibration.calibrate(*val)  # skipped (and why) where T would mean nothing
    summary.update(fitted)
    if "temperature" not in fitted:
        return None
    (logits, labels), t = judged, fitted["temperature"]
    scaled = F.softmax(logits / t, dim=1)
    summary.update(ece_scaled=ece(scaled, labels), nll_scaled=calibration.nll(logits, labels, t))
    return calibration.reliability_bins(scaled, labels, BINS)
