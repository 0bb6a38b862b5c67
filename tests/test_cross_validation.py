"""Cross-validation as a run mode: folds over train + val, out-of-fold predictions, resume per fold; the exclude
list; the best checkpoint's tie on val accuracy."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tlexp.config.errors import ConfigError, DataError
from tlexp.data import TransferDataModule
from tlexp.data.splits import fold_of
from tlexp.train import train

from .conftest import short_phases

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = {
    "name": "synthetic",
    "source": "synthetic",
    "num_classes": 3,
    "images_per_class": 20,
    "split_seed": 0,
    "val_fraction": 0.2,
    "test_fraction": 0.2,
}


def data(**kwargs) -> TransferDataModule:
    dm = TransferDataModule(SYNTHETIC, 32, (0.5,) * 3, (0.5,) * 3, **kwargs)
    dm.setup()
    return dm


def test_folds_are_stratified_disjoint_covering_and_seeded():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    fold = fold_of(labels, 5, seed=3)
    for c, size in zip((0, 1, 2), (10, 20, 30), strict=True):  # every fold holds each class in proportion
        assert (np.bincount(fold[labels == c], minlength=5) == size // 5).all()
    assert (fold_of(labels, 5, seed=3) == fold).all()
    assert not (fold_of(labels, 5, seed=3, repeat=1) == fold).all()  # a repeat reshuffles
    with pytest.raises(DataError, match="cv.folds=11: class '0' has 10"):
        fold_of(labels, 11, seed=0)


def test_each_fold_validates_on_its_part_of_train_plus_val_and_test_stays_out():
    plain = data()
    pool = set(plain.splits["train"].ids()) | set(plain.splits["val"].ids())
    test = plain.splits["test"].ids()
    seen = []
    for i in range(4):
        dm = data(cv={"folds": 4, "repeats": 1, "fold": i})
        train_ids, val_ids = set(dm.splits["train"].ids()), dm.splits["val"].ids()
        assert not train_ids & set(val_ids)
        assert train_ids | set(val_ids) == pool
        assert dm.splits["test"].ids() == test  # the same test images, never in a fold
        seen += val_ids
    assert sorted(seen) == sorted(pool)  # every train + val image validates exactly once


def test_fold_index_past_the_folds_is_refused():
    with pytest.raises(ConfigError, match="cv.fold=6: there are cv.folds x cv.repeats = 6 folds"):
        data(cv={"folds": 3, "repeats": 2, "fold": 6})


def test_exclude_list_leaves_its_images_out_of_every_split(tmp_path):
    plain = data()
    dropped = plain.splits["train"].ids()[:2] + plain.splits["test"].ids()[:1]
    listing = tmp_path / "exclude.txt"
    listing.write_text("# reviewed\n" + "\n".join(dropped) + "\n\nnot-an-image-of-this-set\n")
    dm = data(exclude=str(listing))
    kept = {i for split in dm.splits.values() for i in split.ids()}
    assert not kept & set(dropped)
    assert sum(dm.sizes().values()) == sum(plain.sizes().values()) - 3
    assert dm.report()["excluded"] == 3
    for split in ("train", "val", "test"):  # the others stay in their splits: nothing redrawn or refilled
        assert dm.splits[split].ids() == [i for i in plain.splits[split].ids() if i not in dropped]
    with pytest.raises(ConfigError, match="data.exclude=.*no such file"):
        data(exclude=str(tmp_path / "missing.txt"))


def test_best_checkpoint_breaks_a_val_accuracy_tie_by_val_loss(tiny_cfg):
    # Synthetic data is easy: val accuracy saturates early while the val loss goes on falling.
    metrics = train(
        tiny_cfg("strategy=feature_extraction", "strategy.head_init=none", short_phases("feature_extraction", 6))
    )
    history = metrics["history"]
    top = max(h["val/acc"] for h in history)
    tied = [h for h in history if h["val/acc"] == top]
    assert len(tied) > 1, "the data no longer ties: make the check on data that does"
    lowest = min(tied, key=lambda h: h["val/loss"])
    assert metrics["best_epoch"] == lowest["epoch"]
    assert metrics["best_epoch_tied_on_val_acc"] == len(tied) - 1


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tlexp.train", *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cross_validation_from_the_command_line_predicts_each_image_once_and_resumes_per_fold(tmp_path, tiny_weights):
    out = tmp_path / "cv"
    args = [
        "model=test_resnet",
        f"model.weights={tiny_weights}",
        "dataset=synthetic",
        "dataset.images_per_class=12",
        "strategy=feature_extraction",
        short_phases("feature_extraction", 1),
        "data.num_workers=0",
        "report.enabled=false",
        "report.train_batch_preview=0",
        f"cache.dir={tmp_path / 'cache'}",
        "cv.folds=3",
    ]
    proc = run_cli(*args, f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cross-validation: 3 folds x 1 repeat(s) = 3 runs" in proc.stdout
    assert "out-of-fold acc" in proc.stdout and "on 3 folds" in proc.stdout
    rows = read_csv(out / "out_of_fold.csv")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))  # each train + val image once
    for i in range(3):
        fold = json.loads((out / f"fold_{i}" / "metrics.json").read_text())
        assert fold["fold"]["index"] == i
        # the images a fold predicts are its val split: never in the split it trained on
        dm = TransferDataModule(
            {"name": "synthetic", "source": "synthetic", "images_per_class": 12, "split_seed": 0},
            32,
            (0.5,) * 3,
            (0.5,) * 3,
            cv={"folds": 3, "repeats": 1, "fold": i},
        )
        dm.setup()
        predicted = [r["id"] for r in read_csv(out / f"fold_{i}" / "out_of_fold.csv")]
        assert predicted and not set(predicted) & set(dm.splits["train"].ids())
        assert sorted(predicted) == sorted(dm.splits["val"].ids())
    pool = TransferDataModule(
        {"name": "synthetic", "source": "synthetic", "images_per_class": 12, "split_seed": 0},
        32,
        (0.5,) * 3,
        (0.5,) * 3,
    )
    pool.setup()
    assert sorted(ids) == sorted(pool.splits["train"].ids() + pool.splits["val"].ids())
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["runs"] == 3 and summary["test_acc"]["n"] == 3 and summary["test_acc"]["unit"] == "folds"

    # Resume: fold 0 finished (read back, untouched), fold 2 lost (trained again).
    kept = (out / "fold_0" / "metrics.json").stat().st_mtime_ns
    for path in sorted((out / "fold_2").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (out / "fold_2").rmdir()
    (out / "cv_summary.json").unlink()
    again = run_cli(f"resume={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "fold_0" / "metrics.json").stat().st_mtime_ns == kept
    assert (out / "fold_2" / "metrics.json").is_file() and (out / "cv_summary.json").is_file()
    assert "this fold finished before" in again.stdout
