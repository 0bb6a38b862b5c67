"""The epoch metrics a run reports are the metrics of all its batches, whatever the first batch looks like."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from tlexp.model.metrics import classification_metrics
from tlexp.model.module import TransferModule

from .conftest import TINY


@pytest.mark.parametrize(
    "collection",
    [
        lambda classes: TransferModule(TINY, num_classes=classes, weights="none").test_metrics,
        lambda classes: classification_metrics(classes, prefix="test/"),  # the linear probe's
    ],
    ids=["module", "probe"],
)
def test_macro_f1_counts_a_mistake_made_after_a_perfect_first_batch(collection):
    classes = 8  # > 5: top-5 accuracy is reported too
    metrics = collection(classes)
    y = torch.arange(classes).repeat(8)
    noise = torch.randn(len(y), classes, generator=torch.Generator().manual_seed(0)) * 0.1
    logits = torch.nn.functional.one_hot(y, classes).float() * 6 + noise
    logits[-1] = torch.nn.functional.one_hot((y[-1] + 1) % classes, classes).float() * 9  # the one mistake, last
    for batch in range(0, len(y), 16):  # the first batch is all right
        metrics.update(logits[batch : batch + 16], y[batch : batch + 16])
    got = {k.removeprefix("test/"): float(v) for k, v in metrics.compute().items()}
    f1 = float(multiclass_f1_score(logits, y, classes, average="macro"))
    assert f1 < 1 and got["f1"] == pytest.approx(f1)
    assert got["acc"] == pytest.approx(float(multiclass_accuracy(logits, y, classes, average="micro")))
    assert got["acc_top5"] == 1.0
