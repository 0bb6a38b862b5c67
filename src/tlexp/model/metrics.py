"""The classification metrics of every figure tlexp reports (the module's splits and the linear probe): one factory."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


def classification_metrics(num_classes: int, prefix: str | None = None) -> MetricCollection:
    """Accuracy, macro F1 and (over five classes) top-5 accuracy.

    No compute groups: torchmetrics merges metrics whose states match after the first batch (top-5 accuracy and
    macro F1 when that batch is all right), and the merged F1 then reads top-5's counts.
    """
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)
