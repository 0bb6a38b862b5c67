"""Real image sets beside Fashion-MNIST for the benchmarks, built offline from images that PyPI packages ship.

    python benchmarks/datasets.py --root outputs/datasets      # writes digits/ and textures/ as image folders

- digits: scikit-learn's 1,797 handwritten digits (UCI), 8x8 grey, 10 classes: far below ImageNet's
  resolution (a resolution shift). One folder per class; tlexp makes the splits.
- textures: material patches cut from scikit-image's sample photos (brick, grass, gravel, the moon's surface,
  the Hubble deep field, an immunohistochemistry stain, a retina, a cat's fur), 40x40 px, 8 classes: texture
  and colour statistics instead of objects (a texture shift). Pre-split by region of each photo (top 60% of
  the rows train, next 20% val, last 20% test), so no test patch overlaps a training patch; near-flat patches
  (std < 4 grey levels: black borders) are dropped, since they name no material; at most 60 / 20 / 25
  patches a class per split, spread evenly over the band, so that the large photos do not swamp the others.
Both need `scikit-learn` and `scikit-image` (the `bench` extra: `make bench-datasets` installs it). An existing
folder is left as is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

PATCH = 40
CAP = {"train": 60, "val": 20, "test": 25}  # patches per class and split
TEXTURES = {  # class -> scikit-image sample
    "brick": "brick",
    "grass": "grass",
    "gravel": "gravel",
    "moon": "moon",
    "stars": "hubble_deep_field",
    "stain": "immunohistochemistry",
    "retina": "retina",
    "fur": "chelsea",
}


def build_digits(root: Path) -> Path:
    from sklearn.datasets import load_digits

    out = root / "digits"
    if out.is_dir():
        return out
    digits = load_digits()
    tmp = out.with_suffix(".tmp")
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = tmp / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * (255 / 16)).round().astype(np.uint8), "L").save(folder / f"{i:04d}.png")
    tmp.rename(out)
    return out


def patches(image: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Non-overlapping PATCH x PATCH tiles, split by row band: train (top 60%), val (20%), test (20%)."""
    rows, cols = image.shape[0] // PATCH, image.shape[1] // PATCH
    bands = {"train": range(0, int(rows * 0.6)), "val": range(int(rows * 0.6), int(rows * 0.8))}
    bands["test"] = range(int(rows * 0.8), rows)
    out = {}
    for split, band in bands.items():
        tiles = [image[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] for r in band for c in range(cols)]
        kept = [t for t in tiles if t.std() >= 4]
        picks = np.linspace(0, len(kept) - 1, min(CAP[split], len(kept))).round().astype(int) if kept else []
        out[split] = [kept[i] for i in picks]
    return out


def build_textures(root: Path) -> Path:
    from skimage import data

    out = root / "textures"
    if out.is_dir():
        return out
    tmp = out.with_suffix(".tmp")
    for label, sample in TEXTURES.items():
        image = np.asarray(getattr(data, sample)())
        for split, tiles in patches(image).items():
            folder = tmp / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i, tile in enumerate(tiles):
                Image.fromarray(tile).save(folder / f"{i:04d}.png")
    tmp.rename(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="outputs/datasets")
    root = Path(parser.parse_args().root)
    for build in (build_digits, build_textures):
        folder = build(root)
        counts = {p.name: sum(1 for _ in p.rglob("*.png")) for p in sorted(folder.iterdir())}
        print(f"{folder}: {counts}")


if __name__ == "__main__":
    main()
