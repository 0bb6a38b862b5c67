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


def train_transform(size: int, mean, std, interpolation: str, aug: dict, on_device: bool = False) -> v2.Compose:
    """RandomResizedCrop, horizontal flip, rotation, ColorJitter, normalisation; each set by `aug`.

    Grey images stay one channel through the pixel work and become RGB only before the float conversion: a
    third of the work, same result (saturation jitter leaves grey unchanged either way).

    `on_device`: only the crop (uint8 out); `batch_augment.BatchAugment` does the rest on the training device.
    """
    crop = v2.RandomResizedCrop(
        size, scale=(aug.get("scale_min", 0.08), 1.0), interpolation=interpolation_mode(interpolation), antialias=True
    )
    steps = [v2.ToImage(), crop]
    if on_device:
        return v2.Compose([*steps, v2.RGB()])
    hflip = aug.get("hflip", 0.5)
    if hflip:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if aug.get("rotation", 0):
        steps.append(v2.RandomRotation(aug["rotation"]))
    jitter = aug.get("color_jitter", 0.0)
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    steps += [v2.RGB(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def eval_transform(size: int, mean, std, interpolation: str, crop_pct: float, on_device: bool = False) -> v2.Compose:
    """Resize to size / crop_pct, centre-crop to size, normalise (timm's eval recipe); `on_device`: uint8 out."""
    resize = int(round(size / crop_pct))
    steps = [v2.ToImage(), v2.Resize(resize, interpolation=interpolation_mode(interpolation), antialias=True)]
    steps += [v2.CenterCrop(size), v2.RGB()]
    if not on_device:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)
