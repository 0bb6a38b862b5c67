"""The LightningDataModule: loads a source, makes stratified seeded splits, owns augmentation."""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

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
    ):
        super().__init__()
        self.cfg = dict(dataset)
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.interpolation, self.crop_pct = interpolation, float(crop_pct)
        self.augment = dict(augment or {})
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.source: Source | None = None
        self.splits: dict[str, ImageSet] = {}
        self.features = None  # a features.FeatureCache: serves cached features in head-only phases
        self._image_loaders: dict[str, DataLoader] = {}

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
        if not self.augment.get("enabled", True):
            return self.eval_transform
        return train_transform(self.image_size, self.mean, self.std, self.interpolation, self.augment)

    @property
    def eval_transform(self):
        return eval_transform(self.image_size, self.mean, self.std, self.interpolation, self.crop_pct)

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
            pin_memory=torch.cuda.is_available(),
        )

    def _serve(self, split: str) -> DataLoader:
        # The phase of the current epoch decides: cached features (head-only phases) or images. Loaders are
        # requested again every epoch when they can change; the image loaders are kept, with their workers.
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        if self.features is not None and self.features.serves(split, epoch):
            return self.features.loader(split, epoch)
        if split not in self._image_loaders:
            self._image_loaders[split] = self._loader(split, train=split == "train")
        return self._image_loaders[split]

    def train_dataloader(self) -> DataLoader:
        return self._serve("train")

    def val_dataloader(self) -> DataLoader:
        return self._serve("val")

    def test_dataloader(self) -> DataLoader:
        return self._serve("test")


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
    if "val" not in splits:
        kept, held = holdout(train.labels, seed + 7, cfg.get("val_fraction", 0.15), cfg.get("val_per_class"), "val")
        splits["val"], train = train.subset(held), train.subset(kept)
    chosen = subsample(train.labels, seed, cfg.get("per_class"), cfg.get("train_size"))
    if len(chosen) < len(train):
        train = train.subset(chosen)
    return {"train": train, "val": splits["val"], "test": splits["test"]}


def class_counts(images: ImageSet, num_classes: int) -> list[int]:
    return np.bincount(images.labels, minlength=num_classes).tolist()
