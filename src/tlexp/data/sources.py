"""Where labelled images come from: Fashion-MNIST (Debian package), an image folder, or a synthetic set."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .images import ImageFiles, ImageSet, TensorImages

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")


@dataclass
class Source:
    """What a source yields: a pool to split, or splits given by the source; and the class names."""

    class_names: list[str]
    splits: dict[str, ImageSet] = field(default_factory=dict)  # any of train / val / test
    identity: str = ""  # what identifies the data (for caches and the run record)


# ---------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise DataError(f"idx file {path} is truncated: {array.size} values for shape {dims}")
    return array.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Fashion-MNIST file '{stem}(.gz)' not found under {root}. Install the Debian package "
        "(`sudo apt-get install dataset-fashion-mnist`, or `make install` as root), or point "
        "`dataset.root=` at a folder holding the four idx files."
    )


def fashion_mnist(root: str) -> Source:
    """Fashion-MNIST from idx files: 60k train, 10k test, 28x28 grey, 10 classes."""
    base = Path(root)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_find_idx(base, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find_idx(base, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise DataError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels in {base}")
        splits[split] = TensorImages(torch.from_numpy(images.copy()).unsqueeze(1), labels.astype(np.int64))
    return Source(FASHION_MNIST_CLASSES, splits, identity=f"fashion_mnist:{base.resolve()}")


# ---------------------------------------------------------------- image folder


def _list_images(folder: Path) -> list[str]:
    return sorted(
        str(p)
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_classes(folder: Path) -> dict[str, list[str]]:
    classes = {d.name: _list_images(d) for d in _class_folders(folder)}
    if not classes:
        raise DataError(
            f"no class folders in {folder}. Put one subfolder per class (e.g. {folder}/cat/*.jpg, "
            f"{folder}/dog/*.jpg), or train/ val/ test/ subfolders that each hold the class folders."
        )
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DataError(
            f"class folder(s) {empty} under {folder} hold no images (extensions: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}). Add images or remove the folder(s)."
        )
    return classes


def image_folder(root: str) -> Source:
    """One subfolder per class, or train/ val/ test/ subfolders each holding the class folders."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist. Set `dataset.root=/path/to/images`.")
    present = [s for s in SPLITS if (base / s).is_dir()]
    if "train" in present:
        scanned = {s: _scan_classes(base / s) for s in present}
        names = sorted(scanned["train"])
        for split, classes in scanned.items():
            if sorted(classes) != names:
                raise DataError(
                    f"the class folders of {base / split} {sorted(classes)} differ from those of "
                    f"{base / 'train'} {names}. Every split needs the same class folders."
                )
        splits = {s: _to_files(classes, names) for s, classes in scanned.items()}
    else:
        classes = _scan_classes(base)
        names = sorted(classes)
        splits = {"pool": _to_files(classes, names)}
    if len(names) < 2:
        raise DataError(f"{base} holds a single class {names}; a classifier needs at least two class folders.")
    return Source(names, splits, identity=f"folder:{base.resolve()}")


def _to_files(classes: dict[str, list[str]], names: list[str]) -> ImageFiles:
    paths = [p for name in names for p in classes[name]]
    labels = np.array([i for i, name in enumerate(names) for _ in classes[name]], dtype=np.int64)
    return ImageFiles(paths, labels)


# ---------------------------------------------------------------- synthetic


def synthetic(num_classes: int = 4, per_class: int = 40, image_size: int = 32, seed: int = 0) -> Source:
    """A small learnable set for tests: each class is a colour and a stripe direction, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    n = num_classes * per_class
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    yy, xx = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")
    images = torch.empty(n, 3, image_size, image_size)
    for c in range(num_classes):
        angle = torch.tensor(np.pi * c / num_classes)
        stripes = torch.sin((xx * torch.cos(angle) + yy * torch.sin(angle)) * 0.8)
        colour = torch.tensor([(c * 0.37) % 1.0, (c * 0.61 + 0.3) % 1.0, (c * 0.17 + 0.6) % 1.0])
        images[labels == c] = colour[:, None, None] * (0.6 + 0.4 * stripes)
    images += 0.15 * torch.randn(images.shape, generator=gen)
    pixels = (images.clamp(0, 1) * 255).to(torch.uint8)
    names = [f"class_{c}" for c in range(num_classes)]
    ident = f"synthetic:{num_classes}x{per_class}@{image_size}px,seed{seed}"
    return Source(names, {"pool": TensorImages(pixels, labels.numpy())}, identity=ident)


def load_source(cfg: dict) -> Source:
    kind = cfg["source"]
    if kind == "fashion_mnist":
        return fashion_mnist(cfg["root"])
    if kind == "imagefolder":
        if not cfg.get("root"):
            raise DataError("dataset=imagefolder needs a folder: add `dataset.root=/path/to/images`.")
        return image_folder(cfg["root"])
    if kind == "synthetic":
        return synthetic(cfg.get("num_classes", 4), cfg.get("images_per_class", 40), cfg.get("native_size", 32))
    raise DataError(f"unknown dataset source '{kind}'; choose fashion_mnist, imagefolder or synthetic.")
