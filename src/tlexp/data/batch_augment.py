"""Augmentation of a whole batch on the device it trains on (`data.augment_on=device`).

The loader only crops (RandomResizedCrop, uint8); flip, rotation, colour jitter and normalisation run here on the
batch tensor. torchvision's v2 transforms draw one set of random parameters per call, so on a batch every image
would get the same flip and angle; these ops draw them per image instead, vectorised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high).view(n, 1, 1, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


class BatchAugment:
    """uint8 [B, C, H, W] -> float, normalised; with `train`, per-image flip, rotation and jitter as in `augment`."""

    def __init__(self, mean, std, augment: dict | None = None):
        self.mean, self.std = list(mean), list(std)
        aug = dict(augment or {})
        self.hflip = float(aug.get("hflip", 0.5) or 0)
        self.rotation = float(aug.get("rotation", 0) or 0)
        self.jitter = float(aug.get("color_jitter", 0.0) or 0)

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.float().div_(255)
        if train:
            x = self.augment(x)
        return TF.normalize(x, self.mean, self.std)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        n, device = len(x), x.device
        if self.hflip:
            flip = torch.rand(n, device=device).view(n, 1, 1, 1) < self.hflip
            x = torch.where(flip, x.flip(-1), x)
        if self.rotation:
            angle = _uniform(n, -self.rotation, self.rotation, device).view(n) * (math.pi / 180)
            cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
            theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.jitter:  # brightness, contrast, saturation, each factor in [1 - j, 1 + j] (fixed order)
            low, high = max(0.0, 1 - self.jitter), 1 + self.jitter
            x = (x * _uniform(n, low, high, device)).clamp_(0, 1)
            grey = TF.rgb_to_grayscale(x) if x.shape[1] == 3 else x
            x = _blend(x, grey.mean(dim=(1, 2, 3), keepdim=True), _uniform(n, low, high, device))
            if x.shape[1] == 3:
                x = _blend(x, TF.rgb_to_grayscale(x), _uniform(n, low, high, device))
        return x
