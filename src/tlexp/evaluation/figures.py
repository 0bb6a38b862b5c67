"""The report's pictures (confusion matrix, image grids, reliability diagram) as PNG files, also sent to TensorBoard."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
from PIL import Image

from tlexp.run.atomic import atomic_path


def save(fig: Figure, path: Path, tensorboard=None, tag: str | None = None, step: int = 0) -> Path:
    """Write `fig` as a PNG; log the same picture to TensorBoard (a SummaryWriter) when one is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    if tensorboard is not None and hasattr(tensorboard, "add_image"):
        with Image.open(path) as img:
            tensorboard.add_image(tag or path.stem, np.asarray(img.convert("RGB")), step, dataformats="HWC")
    return path


def confusion_figure(matrix: np.ndarray, class_names: list[str]) -> Figure:
    """Counts (left) and row-normalised (right: the share of each true class given each prediction)."""
    n = len(class_names)
    side = max(4.0, 0.45 * n + 2)
    fig = Figure(figsize=(2 * side + 1.5, side), layout="constrained")
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    for ax, values, title, fmt, top in (
        (fig.add_subplot(1, 2, 1), matrix, "counts", "d", None),
        (fig.add_subplot(1, 2, 2), normalised, "row-normalised (recall on the diagonal)", ".2f", 1.0),
    ):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set(title=title, xlabel="predicted", ylabel="true", xticks=range(n), yticks=range(n))
        ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticklabels(class_names, fontsize=8)
        if n <= 30:  # numbers stop being readable beyond that
            top = top or (values.max() if values.size else 0)
            for i in range(n):
                for j in range(n):
                    colour = "white" if top and values[i, j] > top / 2 else "black"
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=7, color=colour)
    return fig


def to_display(image) -> np.ndarray:
    """An HWC uint8 array from a CHW uint8 tensor, a CHW float tensor in [0, 1], or a PIL image."""
    if isinstance(image, torch.Tensor):
        if image.is_floating_point():
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        return image.permute(1, 2, 0).cpu().numpy()
    return np.asarray(image.convert("RGB"))


def grid_figure(images: list, titles: list[str], columns: int = 8, title: str | None = None) -> Figure:
    """Images in a grid, each with a short caption above it."""
    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    fig = Figure(figsize=(1.9 * columns, 2.2 * rows + (0.4 if title else 0)))
    if title:
        fig.suptitle(title)
    for k, (image, caption) in enumerate(zip(images, titles, strict=True)):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(to_display(image))
        ax.set_title(caption, fontsize=7)
        ax.axis("off")
    return fig


def denormalise(batch: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo the Normalize step so that a model input can be looked at (values in [0, 1])."""
    mean = torch.as_tensor(mean, dtype=batch.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=batch.dtype).view(1, -1, 1, 1)
    return (batch * std + mean).clamp(0, 1)


def reliability_figure(before: list[dict], ece_before: float, after: list[dict] | None, ece_after: float | None):
    """Accuracy against confidence per bin; the diagonal is perfect calibration. Bars: before, line: after."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot(1, 1, 1)
    width = before[0]["hi"] - before[0]["lo"]
    centres = [(b["lo"] + b["hi"]) / 2 for b in before]
    ax.bar(
        centres,
        [b["accuracy"] or 0 for b in before],
        width=width * 0.95,
        edgecolor="black",
        alpha=0.7,
        label=f"model (ECE {ece_before:.3f})",
    )
    if after is not None:
        shown = [(c, b["accuracy"]) for c, b in zip(centres, after, strict=True) if b["count"]]
        label = f"temperature-scaled (ECE {ece_after:.3f})"
        ax.plot([c for c, _ in shown], [a for _, a in shown], "o-", color="C3", label=label)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy", title="reliability")
    ax.legend(loc="upper left", fontsize=8)
    return fig
