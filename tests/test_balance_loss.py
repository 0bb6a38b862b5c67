"""data.balance=weights: the training loss is weighted by inverse class frequency; val and test losses are not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from PIL import Image

from tlexp.train import train

COUNTS = {"red": 36, "green": 12, "blue": 12}  # imbalanced: the weights differ from 1


def _folder(root) -> None:
    rng = np.random.default_rng(0)
    for name, count in COUNTS.items():
        (root / name).mkdir(parents=True)
        channel = list(COUNTS).index(name)
        for i in range(count):
            pixels = rng.integers(0, 80, (16, 16, 3), dtype=np.uint8)
            pixels[..., channel] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")


class Losses(Callback):
    """The loss Lightning optimises and logs, beside weighted and plain cross-entropy computed here."""

    def __init__(self):
        self.train, self.val = [], {"plain": [], "weighted": [], "n": []}

    def _expected_weights(self, trainer) -> torch.Tensor:
        counts = np.bincount(trainer.datamodule.splits["train"].labels, minlength=len(COUNTS))
        return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)  # n / (C * n_c)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch
        with torch.no_grad():  # head only on cached features, no dropout: the step's own logits
            logits = pl_module(x)
        self.expected = F.cross_entropy(logits, y, weight=self._expected_weights(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train.append((float(outputs["loss"]), float(self.expected)))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        with torch.no_grad():
            logits = pl_module(x)
        self.val["plain"].append(float(F.cross_entropy(logits, y, reduction="sum")))
        self.val["weighted"].append(float(F.cross_entropy(logits, y, weight=self._expected_weights(trainer))))
        self.val["n"].append(len(y))

    def on_validation_epoch_end(self, trainer, pl_module):
        self.val_logged = float(trainer.callback_metrics["val/loss"])


def test_class_weights_reach_the_training_loss_and_not_the_val_loss(tiny_cfg, tmp_path):
    _folder(tmp_path / "images")
    cfg = tiny_cfg(
        "dataset=imagefolder",
        f"dataset.root={tmp_path / 'images'}",
        "dataset.preprocess.image_size=16",
        "strategy=feature_extraction",
        "strategy.phases.0.epochs=1",
        "model.head_dropout=0.0",
        "data.balance=weights",
    )
    seen = Losses()
    train(cfg, callbacks=[seen])
    assert seen.train and all(got == pytest.approx(want, rel=1e-5) for got, want in seen.train)
    plain = sum(seen.val["plain"]) / sum(seen.val["n"])
    assert seen.val_logged == pytest.approx(plain, rel=1e-5)
    assert seen.val_logged != pytest.approx(np.mean(seen.val["weighted"]), rel=1e-3)  # the weights would show
