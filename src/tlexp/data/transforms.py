"""Train-time augmentation from the playbook and the eval transform, built from the backbone's preprocessing."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def interpolation_mode(name: str) -> InterpolationMode:
    return _INTERPOLATION.get(name, InterpolationMode.BILINEAR)


def train_transform(size: int, mean, std, interpolation: str, aug: dict) -> v2.Compose:
    """RandomResizedCrop, horizontal flip, rotation, ColorJitter, normalisation; each set by `aug`."""
    crop = v2.RandomResizedCrop(
        size, scale=(aug.get("scale_min", 0.08), 1.0), interpolation=interpolation_mode(interpolation), antialias=True
    )
    steps = [v2.ToImage(), crop]
    hflip = aug.get("hflip", 0.5)
    if hflip:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if aug.get("rotation", 0):
        steps.append(v2.RandomRotation(aug["rotation"]))
    jitter = aug.get("color_jitter", 0.0)
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def eval_transform(size: int, mean, std, interpolation: str, crop_pct: float) -> v2.Compose:
    """Resize to size / crop_pct, centre-crop to size, normalise (timm's eval recipe)."""
    resize = int(round(size / crop_pct))
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, interpolation=interpolation_mode(interpolation), antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
