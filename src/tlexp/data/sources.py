"""Where labelled images come from: Fashion-MNIST (Debian package), an image folder, a CSV manifest, or synthetic."""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tlexp.config.errors import DataError

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
    ignored: dict[str, int] = field(default_factory=dict)  # files passed over while scanning, by kind
    problems: list[str] = field(default_factory=list)  # structural problems noted instead of raised (inspect)
    warnings: list[str] = field(default_factory=list)  # passed over but worth a word: link loops, dead links


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
        pixels = torch.from_numpy(images.copy()).unsqueeze(1)
        splits[split] = TensorImages(pixels, labels.astype(np.int64), prefix=f"fashion_mnist:{split}")
    return Source(FASHION_MNIST_CLASSES, splits, identity=f"fashion_mnist:{base.resolve()}")


# ---------------------------------------------------------------- image folder


class _Scan:
    """Walks class folders; counts what it passes over (hidden files, non-images) and, when not strict,
    notes structural problems instead of raising them (`tlexp.inspect` reports them all at once). Linked
    folders are followed; links that loop or lead nowhere are left out and named in `warnings`."""

    def __init__(self, strict: bool = True):
        self.strict, self.ignored, self.problems, self.warnings = strict, {}, [], []

    def problem(self, message: str) -> None:
        if self.strict:
            raise DataError(message)
        self.problems.append(message)

    def images(self, folder: Path) -> list[str]:
        found = []
        for p in walk_files(folder, self.warnings, above=(os.path.realpath(folder.parent),)):
            if any(part.startswith(".") for part in p.relative_to(folder).parts):
                kind = "hidden"  # .DS_Store, ._photo.jpg from macOS, .git/...
            elif p.suffix.lower() not in IMAGE_EXTENSIONS:
                kind = "not an image"
            else:
                found.append(str(p))
                continue
            self.ignored[kind] = self.ignored.get(kind, 0) + 1
        return found

    def classes(self, folder: Path) -> dict[str, list[str]]:
        entries = [d for d in sorted(folder.iterdir()) if d.name[0] != "."]
        self.warnings += [_dead_link(d) for d in entries if _is_dead_link(d)]
        classes = {d.name: self.images(d) for d in entries if d.is_dir()}
        if not classes:
            raise DataError(
                f"no class folders in {folder}. Put one subfolder per class (e.g. {folder}/cat/*.jpg, "
                f"{folder}/dog/*.jpg), or train/ val/ test/ subfolders that each hold the class folders."
            )
        empty = [name for name, files in classes.items() if not files]
        if empty:
            self.problem(
                f"class folder(s) {empty} under {folder} hold no images (extensions: "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}, any case). Add images or remove the folder(s)."
            )
        return {name: files for name, files in classes.items() if files}

    def one_label_each(self, base: Path, scanned: dict[str, dict[str, list[str]]]) -> None:
        """A file reachable from two class folders (through a linked folder or file) would get two labels."""
        shared = _shared_files(scanned)
        if not shared:
            return
        lines = [_describe_shared(base, pair, files) for pair, files in sorted(shared.items())]
        total = sum(len(files) for files in shared.values())
        self.problem(
            f"{total} image file(s) under {base} are reachable from two class folders, so each would get two "
            "labels:\n" + "\n".join(lines) + "\nAn image needs one class: remove the link, or replace it with a "
            "real folder (or file) holding that class's own images."
        )


def walk_files(folder: Path, warnings: list[str], above: tuple[str, ...] = ()) -> list[Path]:
    """Every file under `folder`, in path order (see `iter_files`)."""
    return sorted(iter_files(folder, warnings, above))


def iter_files(folder: Path, warnings: list[str], above: tuple[str, ...] = ()) -> Iterator[Path]:
    """Files under `folder`, linked folders followed. A link back to a folder it is inside of (a loop) is not
    followed, and a link that leads nowhere is left out: both are named in `warnings`. `above`: the real paths
    of the folders `folder` is inside of."""
    above = (*above, os.path.realpath(folder))
    if above[-1] in above[:-1]:
        warnings.append(
            f"symbolic link loop: {folder} leads back to {above[-1]}, a folder it is inside of; not followed "
            f"(remove the link: `rm {folder}`)."
        )
        return
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        warnings.append(f"cannot list {folder} ({err.strerror or err}); its files are left out.")
        return
    for p in entries:
        if p.is_dir():
            yield from iter_files(p, warnings, above)
        elif p.is_file():
            yield p
        elif _is_dead_link(p):
            warnings.append(_dead_link(p))


def _is_dead_link(p: Path) -> bool:
    return p.is_symlink() and not p.exists()


def _dead_link(p: Path) -> str:
    try:
        os.stat(p)
        why = "its target changed while scanning"
    except OSError as err:
        why = err.strerror or str(err)  # "Too many levels of symbolic links" for a loop, else a missing target
    return f"{p} is a link that leads nowhere ({why}: {os.readlink(p)}); left out."


def _shared_files(scanned: dict[str, dict[str, list[str]]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(class folder, class folder) -> [(path in the first, path in the second)] for files both reach."""
    owners: dict[str, dict[str, tuple[str, str]]] = {}  # real path -> class -> (its folder, the path found)
    folders: dict[str, str] = {}  # each folder resolved once, not once per file in it
    for split, classes in scanned.items():
        for name, files in classes.items():
            folder = name if split == "pool" else f"{split}/{name}"
            for path in files:
                owners.setdefault(_real(path, folders), {}).setdefault(name, (folder, path))
    shared: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for by_class in owners.values():
        places = sorted(by_class.values())
        for (first, a), (second, b) in zip(places, places[1:], strict=False):
            shared.setdefault((first, second), []).append((a, b))
    return shared


def _real(path: str, folders: dict[str, str]) -> str:
    """os.path.realpath(path), with its folder's real path looked up in (or added to) `folders`."""
    if os.path.islink(path):
        return os.path.realpath(path)
    folder, name = os.path.split(path)
    if folder not in folders:
        folders[folder] = os.path.realpath(folder)
    return os.path.join(folders[folder], name)


def _describe_shared(base: Path, pair: tuple[str, str], files: list[tuple[str, str]]) -> str:
    a, b = files[0]
    links = [p for p in (base / pair[0], base / pair[1], Path(a), Path(b)) if p.is_symlink()]
    how = f"; {links[0]} is a link to {os.readlink(links[0])}" if links else ""
    return f"  {base / pair[0]} and {base / pair[1]}: {len(files)} file(s), e.g. {a} = {b}{how}"


def check_split_classes(names_by_split: dict[str, list[str]], where: str, scan: _Scan | None = None) -> list[str]:
    """Every split must hold the same classes, and there must be two at least; returns the class names."""
    report = scan.problem if scan else _raise
    first = "train" if "train" in names_by_split else next(iter(names_by_split))
    names = sorted(names_by_split[first])
    for split, got in names_by_split.items():
        if sorted(got) != names:
            missing, extra = sorted(set(names) - set(got)), sorted(set(got) - set(names))
            report(
                f"the classes of split '{split}' differ from those of '{first}' in {where}: "
                f"missing {missing}, extra {extra}. Every split needs the same classes."
            )
    if len(names) < 2:
        report(f"{where} holds a single class {names}; a classifier needs at least two classes.")
    return names


def _raise(message: str) -> None:
    raise DataError(message)


def image_folder(root: str, background=(255, 255, 255), strict: bool = True) -> Source:
    """One subfolder per class, or train/ val/ test/ subfolders each holding the class folders."""
    base = _existing_folder(root)
    scan = _Scan(strict)
    present = [s for s in SPLITS if (base / s).is_dir()]
    if "train" in present:
        scanned = {s: scan.classes(base / s) for s in present}
    elif present:
        raise DataError(
            f"{base} has {'/'.join(present)}/ but no train/ folder. A pre-split folder needs train/ "
            "(and optionally val/, test/), each holding the class folders."
        )
    else:
        scanned = {"pool": scan.classes(base)}
    names = check_split_classes({s: list(c) for s, c in scanned.items()}, str(base), scan)
    scan.one_label_each(base, scanned)
    splits = {s: _to_files(classes, names, background) for s, classes in scanned.items()}
    return Source(names, splits, f"folder:{base.resolve()}", scan.ignored, scan.problems, scan.warnings)


def _to_files(classes: dict[str, list[str]], names: list[str], background) -> ImageFiles:
    paths = [p for name in names for p in classes.get(name, [])]
    labels = np.array([i for i, name in enumerate(names) for _ in classes.get(name, [])], dtype=np.int64)
    return ImageFiles(paths, labels, background)


# ---------------------------------------------------------------- CSV manifest


def csv_manifest(manifest: str, background=(255, 255, 255), strict: bool = True) -> Source:
    """A CSV file with a header `path,label[,split]`; relative paths are relative to the CSV's folder."""
    file = _existing_file(manifest)
    with open(file, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
        header = [c.strip().lower() for c in (rows[0].keys() if rows else [])]
    if not {"path", "label"} <= set(header):
        raise DataError(
            f"manifest {file} needs a header line with the columns path,label (and optionally split); "
            f"found {header or 'no rows'}."
        )
    scan = _Scan(strict)
    by_split: dict[str, dict[str, list[str]]] = {}
    for n, row in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        split = row.get("split") or "pool"
        if split not in (*SPLITS, "pool"):
            raise DataError(f"{file} line {n}: split '{split}' is not one of train, val, test (or empty).")
        if not row["path"] or not row["label"]:
            raise DataError(f"{file} line {n}: empty path or label.")
        path = Path(row["path"]).expanduser()
        path = path if path.is_absolute() else file.parent / path
        by_split.setdefault(split, {}).setdefault(row["label"], []).append(str(path))
    if not by_split:
        raise DataError(f"manifest {file} lists no images.")
    if "pool" in by_split and len(by_split) > 1:
        raise DataError(f"{file}: some rows have a split and some do not; give every row a split, or none.")
    if "pool" not in by_split and "train" not in by_split:
        raise DataError(f"{file}: rows have splits but none is 'train'.")
    names = check_split_classes({s: list(c) for s, c in by_split.items()}, str(file), scan)
    splits = {s: _to_files(classes, names, background) for s, classes in by_split.items()}
    return Source(names, splits, f"csv:{file.resolve()}", scan.ignored, scan.problems)


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
    return Source(names, {"pool": TensorImages(pixels, labels.numpy(), prefix="synthetic")}, identity=ident)


def check_location(cfg: dict) -> None:
    """The folder or manifest a dataset config names exists (no image is read): a run checks it before it writes
    anything."""
    kind = cfg["source"]
    if kind == "imagefolder":
        if not cfg.get("root"):
            raise DataError("dataset=imagefolder needs a folder: add `dataset.root=/path/to/images`.")
        _existing_folder(cfg["root"])
    if kind == "csv":
        if not cfg.get("manifest"):
            raise DataError("dataset=csv needs a file: add `dataset.manifest=/path/labels.csv` (path,label[,split]).")
        _existing_file(cfg["manifest"])


def _existing_folder(root: str) -> Path:
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist. Set `dataset.root=/path/to/images`.")
    return base


def _existing_file(manifest: str) -> Path:
    file = Path(manifest).expanduser()
    if not file.is_file():
        raise DataError(f"manifest {file} does not exist. Set `dataset.manifest=/path/to/labels.csv`.")
    return file


def load_source(cfg: dict, background=(255, 255, 255), strict: bool = True) -> Source:
    check_location(cfg)
    kind = cfg["source"]
    if kind == "fashion_mnist":
        return fashion_mnist(cfg["root"])
    if kind == "imagefolder":
        return image_folder(cfg["root"], background, strict)
    if kind == "csv":
        return csv_manifest(cfg["manifest"], background, strict)
    if kind == "synthetic":
        return synthetic(cfg.get("num_classes", 4), cfg.get("images_per_class", 40), cfg.get("native_size", 32))
    raise DataError(f"unknown dataset source '{kind}'; choose fashion_mnist, imagefolder, csv or synthetic.")
