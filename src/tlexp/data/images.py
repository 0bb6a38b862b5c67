"""Labelled image collections: decoded tensors in memory, or files on disk decoded on demand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps


class ImageSet:
    """A labelled collection of images; `image(i)` returns a uint8 CHW tensor or an RGB PIL image."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int):
        raise NotImplementedError

    def subset(self, indices: np.ndarray) -> ImageSet:
        raise NotImplementedError


class TensorImages(ImageSet):
    """Images already decoded into one uint8 tensor [N, C, H, W] (C = 1 or 3): decode once, reuse."""

    def __init__(self, pixels: torch.Tensor, labels: np.ndarray):
        assert pixels.dtype == torch.uint8 and pixels.ndim == 4, "pixels must be uint8 [N, C, H, W]"
        self.pixels, self.labels = pixels, np.asarray(labels, dtype=np.int64)

    def image(self, i: int) -> torch.Tensor:
        img = self.pixels[i]
        return img.expand(3, -1, -1) if img.shape[0] == 1 else img  # grey -> 3 channels, no copy

    def subset(self, indices: np.ndarray) -> TensorImages:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return TensorImages(self.pixels[idx], self.labels[np.asarray(indices)])


def open_rgb(path: str | Path) -> Image.Image:
    """Decode a file to RGB with its EXIF orientation applied."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")


class ImageFiles(ImageSet):
    """Image files on disk, decoded when asked for."""

    def __init__(self, paths: list[str], labels: np.ndarray):
        self.paths, self.labels = list(paths), np.asarray(labels, dtype=np.int64)

    def image(self, i: int) -> Image.Image:
        return open_rgb(self.paths[i])

    def subset(self, indices: np.ndarray) -> ImageFiles:
        return ImageFiles([self.paths[i] for i in indices], self.labels[np.asarray(indices)])


class TransformedImages(torch.utils.data.Dataset):
    """(transform(image), label) pairs for a DataLoader."""

    def __init__(self, images: ImageSet, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images.image(i)), int(self.images.labels[i])
