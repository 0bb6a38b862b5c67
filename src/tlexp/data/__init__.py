"""Image sources, splits, transforms and the LightningDataModule that ties them together."""

from .datamodule import TransferDataModule

__all__ = ["TransferDataModule"]
