"""Labelled image collections: decoded tensors in memory, or files on disk decoded on demand."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from tlexp.config.errors import DataError

log = logging.getLogger(__name__)


class ImageSet:
    """A labelled collection of images; `image(i)` returns a uint8 CHW tensor or an RGB PIL image."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int):
        raise NotImplementedError

    def subset(self, indices: np.ndarray) -> ImageSet:
        raise NotImplementedError

    def ids(self) -> list[str]:
        """A stable name per image (its path, or `<source>:<split>:<index>`): what audits and exclude lists name."""
        raise NotImplementedError


class TensorImages(ImageSet):
    """Images already decoded into one uint8 tensor [N, C, H, W] (C = 1 or 3): decode once, reuse."""

    def __init__(self, pixels: torch.Tensor, labels: np.ndarray, prefix: str = "images", index=None):
        assert pixels.dtype == torch.uint8 and pixels.ndim == 4, "pixels must be uint8 [N, C, H, W]"
        self.pixels, self.labels = pixels, np.asarray(labels, dtype=np.int64)
        # Where each image sits in the source as loaded, so that its id survives splits and subsets.
        self.prefix = prefix
        self.index = np.arange(len(self.labels)) if index is None else np.asarray(index, dtype=np.int64)

    def image(self, i: int) -> torch.Tensor:
        return self.pixels[i]  # grey stays [1, H, W]: the transforms make it RGB after the pixel work

    def subset(self, indices: np.ndarray) -> TensorImages:
        indices = np.asarray(indices, dtype=np.int64)
        idx = torch.as_tensor(indices)
        return TensorImages(self.pixels[idx], self.labels[indices], self.prefix, self.index[indices])

    def ids(self) -> list[str]:
        return [f"{self.prefix}:{i}" for i in self.index]


def concat(a: ImageSet, b: ImageSet) -> ImageSet:
    """Two image sets of one source as one (cross-validation pools train and val)."""
    if isinstance(a, ImageFiles) and isinstance(b, ImageFiles):
        return ImageFiles(a.paths + b.paths, np.concatenate([a.labels, b.labels]), a.background)
    if isinstance(a, TensorImages) and isinstance(b, TensorImages) and a.prefix == b.prefix:
        pixels = torch.cat([a.pixels, b.pixels])
        return TensorImages(pixels, np.concatenate([a.labels, b.labels]), a.prefix, np.concatenate([a.index, b.index]))
    raise DataError(
        "cross-validation pools train and val, but they come from different kinds of source here "
        f"({type(a).__name__}, {type(b).__name__}). Give the images as one folder, or set cv.folds=0."
    )


class BadImage(Exception):
    """A file that cannot be decoded to an image; `reason` says why in a few words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def to_rgb(img: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Any PIL mode -> 3-channel 8-bit RGB; transparency is composited on `background`."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, tuple(int(c) for c in background))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit or float grey: convert("RGB") would clip everything above 255 to white; rescale instead.
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        if img.mode == "F":
            lo, hi = float(a.min()), float(a.max())
            a, top = a - lo, (hi - lo) or 1.0
        grey = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def open_rgb(path: str | Path, background=(255, 255, 255)) -> Image.Image:
    """Decode a file fully to RGB with its EXIF orientation applied; any failure is a BadImage with the reason."""
    try:
        with Image.open(path) as img:
            img.load()  # decode everything now: a truncated file fails here, not inside a transform
            img = ImageOps.exif_transpose(img)
            return to_rgb(img, background)
    except FileNotFoundError:
        raise BadImage(path, "file not found") from None
    except Image.DecompressionBombError as err:
        raise BadImage(path, f"too many pixels ({err})") from None
    except Image.UnidentifiedImageError:
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise BadImage(path, "empty file (0 bytes)" if size == 0 else "not an image PIL can read") from None
    except Exception as err:  # noqa: BLE001 - whatever a broken file makes PIL raise, it is a bad file
        text = str(err) or type(err).__name__
        reason = "truncated" if "truncated" in text.lower() else "cannot decode"
        raise BadImage(path, f"{reason}: {text}") from None


class ImageFiles(ImageSet):
    """Image files on disk, decoded when asked for; transparent pixels land on `background`."""

    def __init__(self, paths: list[str], labels: np.ndarray, background=(255, 255, 255)):
        self.paths, self.labels = list(paths), np.asarray(labels, dtype=np.int64)
        self.background = tuple(background)

    def image(self, i: int) -> Image.Image:
        return open_rgb(self.paths[i], self.background)

    def subset(self, indices: np.ndarray) -> ImageFiles:
        return ImageFiles([self.paths[i] for i in indices], self.labels[np.asarray(indices)], self.background)

    def ids(self) -> list[str]:
        return list(self.paths)


class NoReadableImages(DataError):
    """Every image of a split became unreadable during training: there is nothing left to stand in for them."""

    def __init__(self, message: str):
        # A DataLoader re-raises a worker's exception as its type, with the worker's traceback as the message:
        # keep our own paragraph only, so the user never sees a traceback.
        super().__init__(message.rsplit(f"{type(self).__name__}: ", 1)[-1].strip())


class TransformedImages(torch.utils.data.Dataset):
    """(transform(image), label) pairs for a DataLoader.

    A file that breaks while training (changed on disk since the pre-flight check) must not end a long run:
    its sample is replaced by the next readable one, and the failure is logged and appended to `failures`
    (a text file, so that DataLoader worker processes can report it too). However many files break, the run
    goes on while one image of the split is readable; when none is, it stops with one DataError.
    """

    def __init__(self, images: ImageSet, transform, failures: str | Path | None = None):
        self.images, self.transform, self.failures = images, transform, failures
        self.broken: dict[int, BadImage] = {}  # found unreadable in this process: not decoded again
        self._said: set[str] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        n = len(self.images)
        for step in range(n):
            j = (i + step) % n
            if j in self.broken:
                continue
            try:
                return self.transform(self.images.image(j)), int(self.images.labels[j])
            except BadImage as bad:
                self.broken[j] = bad
                self._record(bad)
        raise NoReadableImages(self._none_readable())

    def _none_readable(self) -> str:
        shown = [f"  {bad.path}: {bad.reason}" for bad in list(self.broken.values())[:10]]
        more = f"\n  ... and {len(self.broken) - 10} more" if len(self.broken) > 10 else ""
        listed = f" (all listed in {self.failures})" if self.failures else ""
        return (
            f"all {len(self.images)} images of a split became unreadable during training{listed}, though they "
            "passed the pre-flight check:\n" + "\n".join(shown) + more + "\nThe folder was moved, unmounted or "
            "changed while the run read it. Make the files readable again, then start the run again (or continue "
            "it with `resume=<its run folder>` when it has saved a checkpoint)."
        )

    def _record(self, bad: BadImage) -> None:
        if self._said is None:  # what this run listed already, in this process or another (epochs, workers)
            self._said = self._listed()
        if bad.path in self._said:
            return  # said once per file, not once per epoch or worker
        self._said.add(bad.path)
        log.warning("skipped unreadable image during training: %s (%s)", bad.path, bad.reason)
        if self.failures:
            try:
                with open(self.failures, "a", encoding="utf-8") as f:
                    f.write(f"{bad.path}\t{bad.reason}\n")
            except OSError as err:  # the warning above still names it; the run must not end over the list
                log.warning("cannot add it to %s (%s)", self.failures, err.strerror or err)

    def _listed(self) -> set[str]:
        try:
            text = Path(self.failures).read_text(encoding="utf-8") if self.failures else ""
        except OSError:
            return set()
        return {line.split("\t", 1)[0] for line in text.splitlines()}
