"""Data: the Fashion-MNIST reader, stratified seeded splits, small-data subsets, transforms, image folders."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlexp.config.errors import DataError
from tlexp.data import TransferDataModule
from tlexp.data.sources import FASHION_MNIST_CLASSES, fashion_mnist, image_folder
from tlexp.data.transforms import eval_transform, train_transform

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def small_fmnist(tmp_path) -> Path:
    """Fashion-MNIST-format idx files, made here: 20 train and 10 test images per class."""
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 20), ("t10k", 10)):
        labels = np.repeat(np.arange(10), per_class)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (len(labels), 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path


def test_idx_reader_shapes_and_labels(small_fmnist):
    source = fashion_mnist(str(small_fmnist))
    train, test = source.splits["train"], source.splits["test"]
    assert train.pixels.shape == (200, 1, 28, 28) and train.pixels.dtype == torch.uint8
    assert np.bincount(train.labels).tolist() == [20] * 10 and len(test) == 100
    assert train.image(0).shape == (1, 28, 28)  # grey stays one channel until the transforms end
    assert source.class_names == FASHION_MNIST_CLASSES


def test_grey_images_become_rgb_after_the_pixel_work_with_the_same_pixels(small_fmnist):
    grey = fashion_mnist(str(small_fmnist)).splits["train"].image(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    augment = {"scale_min": 0.5, "hflip": 0.5, "rotation": 10, "color_jitter": 0.2}
    for transform in (
        train_transform(96, mean, std, "bilinear", augment),
        eval_transform(96, mean, std, "bilinear", 0.875),
        train_transform(96, mean, std, "bilinear", augment, on_device=True),
    ):
        outputs = []
        for image in (grey, grey.expand(3, -1, -1)):  # one channel, and the same grey as three
            torch.manual_seed(3)
            outputs.append(transform(image))
        assert outputs[0].shape == (3, 96, 96)
        # Equal up to one grey level (jitter rounds the 3-channel grey through its luma once more).
        assert (outputs[0].float() - outputs[1].float()).abs().max() <= 1.01 / 255 / min(std) + 1e-6


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_has_60k_train_10k_test_balanced():
    source = fashion_mnist(str(FMNIST))
    assert source.splits["train"].pixels.shape == (60000, 1, 28, 28)
    assert source.splits["test"].pixels.shape == (10000, 1, 28, 28)
    assert np.bincount(source.splits["train"].labels).tolist() == [6000] * 10
    assert np.bincount(source.splits["test"].labels).tolist() == [1000] * 10


def test_truncated_idx_file_is_a_clear_error(small_fmnist):
    path = small_fmnist / "t10k-images-idx3-ubyte.gz"
    data = gzip.open(path).read()
    with gzip.open(path, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(DataError, match="truncated"):
        fashion_mnist(str(small_fmnist))


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(str(tmp_path))


def _module(cfg: dict, setup: bool = True, **options) -> TransferDataModule:
    options.setdefault("preflight_cache", None)
    dm = TransferDataModule(cfg, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, **options)
    if setup:
        dm.setup()
    return dm


def test_per_class_subset_is_stratified_and_held_out_splits_do_not_move(small_fmnist):
    base = {"source": "fashion_mnist", "root": str(small_fmnist), "val_per_class": 5, "split_seed": 3}
    full, small = _module(base), _module({**base, "per_class": 4})
    assert full.sizes() == {"train": 150, "val": 50, "test": 100}
    assert small.sizes() == {"train": 40, "val": 50, "test": 100}
    assert np.bincount(small.splits["train"].labels).tolist() == [4] * 10
    assert torch.equal(full.splits["val"].pixels, small.splits["val"].pixels)
    again = _module({**base, "per_class": 4})
    assert torch.equal(again.splits["train"].pixels, small.splits["train"].pixels)  # same seed, same subset


def test_train_size_takes_a_stratified_total(small_fmnist):
    dm = _module({"source": "fashion_mnist", "root": str(small_fmnist), "val_per_class": 5, "train_size": 30})
    dm.setup()
    assert np.bincount(dm.splits["train"].labels).tolist() == [3] * 10


def _folder(root: Path, classes: dict[str, int], size=(40, 30)) -> Path:
    """Distinct images (noise seeded by folder, class and index: no accidental duplicates)."""
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng(zlib.crc32(f"{root}/{name}/{i}".encode()))
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"img{i}.JPG")
    return root


def test_image_folder_splits_do_not_overlap(tmp_path):
    root = _folder(tmp_path / "photos", {"cat": 20, "dog": 20, "owl": 20})
    (root / "cat" / "notes.txt").write_text("not an image")
    dm = _module({"source": "imagefolder", "root": str(root), "val_fraction": 0.2, "test_fraction": 0.2})
    splits = {k: set(v.paths) for k, v in dm.splits.items()}
    assert dm.class_names == ["cat", "dog", "owl"]
    assert sum(len(s) for s in splits.values()) == 60
    assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"] or splits["val"] & splits["test"])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6


def test_presplit_image_folder_is_used_as_given(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        _folder(tmp_path / split, {"a": n, "b": n})
    dm = _module({"source": "imagefolder", "root": str(tmp_path)})
    assert dm.sizes() == {"train": 12, "val": 4, "test": 6}


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "no class folders"),
        ({"a": 3, "b": 0}, r"\['b'\].*hold no images"),
        ({"a": 5}, "single class"),
        ({"a": 1, "b": 5}, "class 'a' has 1 images"),
    ],
)
def test_bad_image_folders_are_clear_errors(tmp_path, layout, message):
    root = tmp_path / "imgs"
    root.mkdir()
    for name, n in layout.items():
        (root / name).mkdir()
        _folder(root, {name: n})
    with pytest.raises(DataError, match=message):
        _module({"source": "imagefolder", "root": str(root)})


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist. Set `dataset.root="):
        image_folder(str(tmp_path / "nowhere"))


def test_eval_transform_is_deterministic_and_train_transform_augments(small_fmnist):
    dm = _module({"source": "fashion_mnist", "root": str(small_fmnist), "val_per_class": 5})
    image = dm.splits["train"].image(0)
    assert torch.equal(dm.eval_transform(image), dm.eval_transform(image))
    torch.manual_seed(0)
    views = [dm.train_transform(image) for _ in range(3)]
    assert not torch.equal(views[0], views[1])


def test_test_per_class_takes_a_stratified_subset_of_a_given_test_split(small_fmnist):
    dm = _module({"source": "fashion_mnist", "root": str(small_fmnist), "val_per_class": 5, "test_per_class": 3})
    assert np.bincount(dm.splits["test"].labels).tolist() == [3] * 10


def test_drop_leaks_removes_from_test_a_copy_of_a_val_image_and_keeps_trains_copies():
    import numpy as np

    from tlexp.data.duplicates import drop_leaks
    from tlexp.data.images import ImageFiles

    def files(*names):
        return ImageFiles(list(names), np.zeros(len(names), dtype=np.int64))

    splits = {"train": files("t1", "t2"), "val": files("v1", "v2"), "test": files("x1", "x2", "x3")}
    sha1 = {"t1": "A", "t2": "B", "v1": "C", "v2": "A", "x1": "C", "x2": "D", "x3": "B"}
    kept, removed = drop_leaks(splits, sha1)
    assert kept["train"].paths == ["t1", "t2"]
    assert kept["val"].paths == ["v1"]  # v2 copies a training image
    assert kept["test"].paths == ["x2"]  # x1 copies a val image, x3 a training image
    assert removed == [{"split": "test", "path": "x1"}, {"split": "test", "path": "x3"}, {"split": "val", "path": "v2"}]
