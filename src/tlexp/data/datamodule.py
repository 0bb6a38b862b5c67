"""The LightningDataModule: loads a source, makes stratified seeded splits, owns augmentation."""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError
from .batch_augment import BatchAugment
from .images import ImageSet, TransformedImages
from .sources import Source, load_source
from .splits import holdout, subsample
from .transforms import eval_transform, train_transform

log = logging.getLogger(__name__)


class TransferDataModule(L.LightningDataModule):
    """Train/val/test splits of one source, with the playbook's augmentation and the backbone's preprocessing."""

    def __init__(
        self,
        dataset: dict,
        image_size: int,
        mean: tuple,
        std: tuple,
        interpolation: str = "bilinear",
        crop_pct: float = 0.875,
        augment: dict | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        augment_on: str = "cpu",
    ):
        super().__init__()
        self.cfg = dict(dataset)
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.interpolation, self.crop_pct = interpolation, float(crop_pct)
        self.augment = dict(augment or {})
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        if augment_on not in ("cpu", "device"):
            raise ConfigError(f"data.augment_on must be cpu or device, got '{augment_on}'.")
        # device: loaders yield uint8 crops; flip/rotation/jitter/normalise run per batch after the transfer.
        self.on_device = augment_on == "device"
        self.batch_augment = BatchAugment(self.mean, self.std, self.augment) if self.on_device else None
        self.source: Source | None = None
        self.splits: dict[str, ImageSet] = {}

    # ------------------------------------------------------------ splits

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.source = load_source(self.cfg)
        self.splits = make_splits(self.source.splits, self.cfg)
        log.info(
            "dataset %s: %s, %d classes",
            self.cfg.get("name", self.cfg["source"]),
            ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()),
            len(self.class_names),
        )

    @property
    def class_names(self) -> list[str]:
        self.setup()
        return list(self.source.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def sizes(self) -> dict[str, int]:
        self.setup()
        return {k: len(v) for k, v in self.splits.items()}

    # ------------------------------------------------------------ transforms and loaders

    @property
    def train_transform(self):
        return train_transform(self.image_size, self.mean, self.std, self.interpolation, self.augment, self.on_device)

    @property
    def eval_transform(self):
        return eval_transform(self.image_size, self.mean, self.std, self.interpolation, self.crop_pct, self.on_device)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.batch_augment is None:
            return batch
        x, *rest = batch
        return [self.batch_augment(x, train=self.trainer is not None and self.trainer.training), *rest]

    def _loader(self, split: str, train: bool) -> DataLoader:
        self.setup()
        data = TransformedImages(self.splits[split], self.train_transform if train else self.eval_transform)
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=train,
            # A last batch of one image breaks BatchNorm in training mode; drop it only when there are others.
            drop_last=train and len(data) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),  # page-locked batches: faster, asynchronous copies to the GPU
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


def make_splits(given: dict[str, ImageSet], cfg: dict) -> dict[str, ImageSet]:
    """train/val/test from what the source gives: a pool, or some of the splits already made.

    Held-out splits come first and do not depend on `per_class`/`train_size`, so runs at different
    training-set sizes are evaluated on the same images. The test split is never used for selection.
    """
    seed = int(cfg.get("split_seed", 0))
    splits = dict(given)
    train = splits.pop("pool", None) or splits.pop("train")
    if "test" not in splits:
        kept, held = holdout(train.labels, seed, cfg.get("test_fraction", 0.15), cfg.get("test_per_class"), "test")
        splits["test"], train = train.subset(held), train.subset(kept)
    elif cfg.get("test_per_class"):  # a smaller, still stratified, test set for quick comparisons
        splits["test"] = splits["test"].subset(subsample(splits["test"].labels, seed, cfg["test_per_class"], None))
    if "val" not in splits:
        kept, held = holdout(train.labels, seed + 7, cfg.get("val_fraction", 0.15), cfg.get("val_per_class"), "val")
        splits["val"], train = train.subset(held), train.subset(kept)
    chosen = subsample(train.labels, seed, cfg.get("per_class"), cfg.get("train_size"))
    if len(chosen) < len(train):
        train = train.subset(chosen)
    return {"train": train, "val": splits["val"], "test": splits["test"]}


def class_counts(images: ImageSet, num_classes: int) -> list[int]:
    return np.bincount(images.labels, minlength=num_classes).tolist()
