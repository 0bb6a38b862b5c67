"""Image sizes against the model's input: a note when the images are far smaller than what the model sees."""

from __future__ import annotations

import numpy as np

from .preflight import Probe


def shorter_sides(probes: list[Probe]) -> list[int]:
    return [min(p.width, p.height) for p in probes if not p.reason]


def small_images(sides: list[int], image_size: int) -> str | None:
    """A note when the typical image is far smaller than the input size: each is upscaled several times, and
    costs the compute of a full-size image while holding the detail of a small one."""
    if not sides:
        return None
    side, image_size = int(np.median(sides)), int(image_size)
    if side * 3 >= image_size:
        return None
    smaller = min(max(32, -(-2 * side // 32) * 32), image_size // 2)  # about twice the side, in steps of 32
    return (
        f"the images are small for the input size: median shorter side {side} px, the model's input "
        f"{image_size} px, so each image is upscaled {image_size / side:.1f}x. A smaller input trains faster "
        f"per image: `dataset.preprocess.image_size={smaller}` (compare val accuracy: upscaling can still help "
        "fine-tuning, docs/recipes.md Study 14)."
    )
