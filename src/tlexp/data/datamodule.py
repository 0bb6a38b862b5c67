"""The LightningDataModule: loads a source, makes stratified seeded splits, owns augmentation."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from tlexp.config.errors import ConfigError, DataError

from .balance import BALANCE, balanced_sampler, class_weights, imbalance_ratio
from .balance import class_counts as _counts
from .batch_augment import BatchAugment
from .duplicates import drop_leaks, duplicate_groups
from .images import ImageFiles, ImageSet, TensorImages, TransformedImages, concat
from .preflight import Probe, preflight
from .sources import Source, load_source
from .splits import Fold, fold_of, holdout, subsample
from .transforms import eval_transform, train_transform

log = logging.getLogger(__name__)


class TransferDataModule(L.LightningDataModule):
    """Train/val/test splits of one source, with the playbook's augmentation and the backbone's preprocessing."""

    def __init__(
        self,
        dataset: dict,
        image_size: int,
        mean: tuple,
        std: tuple,
        interpolation: str = "bilinear",
        crop_pct: float = 0.875,
        augment: dict | None = None,
        batch_size: int = 64,
        num_workers: int | str = "auto",
        on_bad_image: str = "skip",
        balance: str = "none",
        background: tuple = (255, 255, 255),
        drop_leaks: bool = True,
        preflight_cache: str | None = "~/.cache/tlexp/preflight",
        strict: bool = True,
        augment_on: str = "cpu",
        gpus: int = 0,
        cv: dict | None = None,
        exclude: str | None = None,
    ):
        super().__init__()
        self.cfg = dict(dataset)
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.interpolation, self.crop_pct = interpolation, float(crop_pct)
        self.augment = dict(augment or {})
        self.batch_size, self.gpus = int(batch_size), int(gpus)  # gpus: the GPUs training on this node, 0 = CPU
        if num_workers != "auto" and not (str(num_workers).isdigit()):
            raise ConfigError(f"data.num_workers must be auto or a count >= 0, got '{num_workers}'.")
        self.workers_setting = num_workers
        if on_bad_image not in ("skip", "error"):
            raise ConfigError(f"data.on_bad_image={on_bad_image}: choose skip or error.")
        if balance not in BALANCE:
            raise ConfigError(f"data.balance={balance}: choose one of {', '.join(BALANCE)}.")
        self.on_bad_image, self.balance, self.background = on_bad_image, balance, tuple(background)
        self.drop_leaks, self.preflight_cache, self.strict = bool(drop_leaks), preflight_cache, bool(strict)
        if augment_on not in ("cpu", "device"):
            raise ConfigError(f"data.augment_on must be cpu or device, got '{augment_on}'.")
        # device: loaders yield uint8 crops; flip/rotation/jitter/normalise run per batch after the transfer.
        self.on_device = augment_on == "device"
        self.batch_augment = BatchAugment(self.mean, self.std, self.augment) if self.on_device else None
        self.fold = Fold.of(cv)  # cross-validation: the fold that validates (None: the one train/val split)
        self.exclude = exclude  # a file of image ids (paths) left out of every split
        self.source: Source | None = None
        self.splits: dict[str, ImageSet] = {}
        self.probes: dict[str, Probe] = {}  # pre-flight verdict per file (file sources only)
        self.checks: dict = {}  # what the checks found: the data part of metrics.json
        self.failures_file: str | None = None  # files that broke during training, one "path<TAB>reason" a line
        self.features = None  # a features.FeatureCache: serves cached features in head-only phases
        self._image_loaders: dict[str, DataLoader] = {}

    # ------------------------------------------------------------ splits

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.source = load_source(self.cfg, self.background, self.strict)
        names = self.source.class_names
        given = self._without_bad_files(self.source.splits)
        try:
            splits = make_splits(given, self.cfg, names, self.fold)
        except DataError as err:
            if self.strict:
                raise
            self.source.problems.append(str(err))  # inspect: report it and show the splits as given
            splits = dict(given)
        leaks: list[dict] = []
        sha1 = {p: r.sha1 for p, r in self.probes.items()}
        if self.drop_leaks:
            splits, leaks = drop_leaks(splits, sha1)
        # After the splits are drawn: leaving images out must not redraw val/test or refill the training subset.
        self.splits = self._without_excluded(splits)
        counts = {k: _counts(v.labels, len(names)) for k, v in splits.items()}
        self.checks.update(
            ignored_files=dict(self.source.ignored),
            problems=list(self.source.problems),
            scan_warnings=list(self.source.warnings),
            duplicates=duplicate_groups(given, sha1, names),
            leaks_removed=leaks,
            class_counts=counts,
            imbalance_ratio=imbalance_ratio(counts.get("train") or counts["pool"]),
        )
        if self.source.warnings:
            log.warning("passed over while scanning:\n%s", "\n".join(f"  {w}" for w in self.source.warnings))
        if self.source.ignored:
            log.info("ignored while scanning: %s", ", ".join(f"{n} {k}" for k, n in self.source.ignored.items()))
        if leaks:
            log.warning(
                "removed %d image(s) from val/test whose exact copy is in an earlier split (data.drop_leaks=true)",
                len(leaks),
            )
        log.info(
            "dataset %s: %s, %d classes; train class counts %s, imbalance ratio %.2f (data.balance=%s)",
            self.cfg.get("name", self.cfg["source"]),
            ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()),
            len(names),
            dict(zip(names, counts.get("train") or counts["pool"], strict=True)),
            self.checks["imbalance_ratio"],
            self.balance,
        )

    def _without_bad_files(self, given: dict[str, ImageSet]) -> dict[str, ImageSet]:
        """Pre-flight every file; drop the unreadable ones (skip) or stop with the list (error)."""
        paths = [p for images in given.values() if isinstance(images, ImageFiles) for p in images.paths]
        self.checks["bad_files"] = []
        if not paths:
            return given
        cache = None
        if self.preflight_cache:
            ident = hashlib.sha1(self.source.identity.encode()).hexdigest()[:16]
            cache = Path(self.preflight_cache).expanduser() / f"{ident}.json"
        self.probes = preflight(paths, cache)
        bad = sorted((p, r.reason) for p, r in self.probes.items() if r.reason)
        self.checks["bad_files"] = [{"path": p, "reason": why} for p, why in bad]
        if not bad:
            return given
        listing = "\n".join(f"  {p}: {why}" for p, why in bad[:30])
        listing += f"\n  ... and {len(bad) - 30} more (all in metrics.json)" if len(bad) > 30 else ""
        if self.on_bad_image == "error":
            raise DataError(
                f"{len(bad)} unreadable image file(s) (data.on_bad_image=error):\n{listing}\n"
                "Fix or delete them, or set data.on_bad_image=skip to train without them."
            )
        log.warning("skipping %d unreadable image file(s):\n%s", len(bad), listing)
        names = self.source.class_names
        kept = {}
        for split, images in given.items():
            if isinstance(images, ImageFiles):
                good = np.asarray([i for i, p in enumerate(images.paths) if not self.probes[p].reason], dtype=np.int64)
                images = images.subset(good)
                empty = [names[c] for c in range(len(names)) if not np.any(images.labels == c)]
                if empty:
                    message = (
                        f"after skipping unreadable files, class(es) {empty} have no images left in "
                        f"{'the folder' if split == 'pool' else f'split {split!r}'}. Add readable images."
                    )
                    if self.strict:
                        raise DataError(message)
                    self.source.problems.append(message)
            kept[split] = images
        return kept

    def _without_excluded(self, given: dict[str, ImageSet]) -> dict[str, ImageSet]:
        """data.exclude: leave the images the file names (one id a line: a path, or audit.csv's id) out of the
        splits already drawn; the other images stay where they were."""
        self.checks["excluded"] = []
        if not self.exclude:
            return given
        listed = excluded_ids(self.exclude)
        kept = {}
        for split, images in given.items():
            ids = [_normal(i) for i in images.ids()]
            drop = [i for i, name in enumerate(ids) if name in listed]
            self.checks["excluded"] += [images.ids()[i] for i in drop]
            keep = np.setdiff1d(np.arange(len(images)), np.asarray(drop, dtype=np.int64))
            kept[split] = images.subset(keep) if drop else images
        unmatched = len(listed) - len({_normal(i) for i in self.checks["excluded"]})
        log.info("data.exclude=%s: left out %d image(s)", self.exclude, len(self.checks["excluded"]))
        if unmatched:
            log.warning(
                "data.exclude=%s: %d of its %d entries name no image of this dataset (another dataset's list?)",
                self.exclude,
                unmatched,
                len(listed),
            )
        return kept

    @property
    def class_names(self) -> list[str]:
        self.setup()
        return list(self.source.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_workers(self) -> int:
        if self.workers_setting != "auto":
            return int(self.workers_setting)
        self.setup()
        in_memory = all(isinstance(images, TensorImages) for images in self.splits.values())
        return auto_workers(in_memory, self.gpus)

    def sizes(self) -> dict[str, int]:
        self.setup()
        return {k: len(v) for k, v in self.splits.items()}

    # ------------------------------------------------------------ transforms and loaders

    @property
    def augmented(self) -> bool:
        """Whether training images are augmented (augment.enabled); if not, they take the eval transform."""
        return bool(self.augment.get("enabled", True))

    @property
    def train_transform(self):
        if not self.augmented:
            return self.eval_transform
        return train_transform(self.image_size, self.mean, self.std, self.interpolation, self.augment, self.on_device)

    @property
    def eval_transform(self):
        return eval_transform(self.image_size, self.mean, self.std, self.interpolation, self.crop_pct, self.on_device)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.batch_augment is None:
            return batch
        x, *rest = batch
        return [self.batch_augment(x, train=self.trainer is not None and self.trainer.training), *rest]

    def _loader(self, split: str, train: bool) -> DataLoader:
        self.setup()
        if self.failures_file is None:  # written only when a file breaks
            self.failures_file = str(Path(tempfile.mkdtemp(prefix="tlexp-data-")) / "broken.tsv")
        transform = self.train_transform if train else self.eval_transform
        data = TransformedImages(self.splits[split], transform, self.failures_file)
        sampler = None
        if train and self.balance == "sampler":
            sampler = balanced_sampler(data.images.labels, self.num_classes, int(self.cfg.get("split_seed", 0)))
        workers = self.num_workers  # resolved once: `auto` looks at the splits
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            # A last batch of one image breaks BatchNorm in training mode; drop it only when there are others.
            drop_last=train and len(data) > self.batch_size,
            num_workers=workers,
            # Fresh workers every epoch, seeded from the main process's RNG, which checkpoints carry: a resumed run
            # draws the same augmentations as an uninterrupted one. Persistent workers keep the streams they
            # were seeded with at the first epoch, which a resumed run cannot reproduce.
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),  # page-locked batches: faster, asynchronous copies to the GPU
        )

    # ------------------------------------------------------------ balance and the record

    def loss_weights(self) -> list[float] | None:
        """Per-class weights for the training loss when data.balance=weights, else None."""
        if self.balance != "weights":
            return None
        return class_weights(_counts(self.splits["train"].labels, self.num_classes))

    def broken_during_training(self) -> list[dict]:
        if not self.failures_file or not Path(self.failures_file).is_file():
            return []
        rows = [line.split("\t", 1) for line in Path(self.failures_file).read_text().splitlines() if line]
        return [{"path": p, "reason": why} for p, why in dict(rows).items()]

    def report(self) -> dict:
        """What the data checks found, for metrics.json: skipped files, leaks removed, counts, imbalance."""
        self.setup()
        broken = self.broken_during_training()
        return {
            "bad_files_skipped": len(self.checks["bad_files"]),
            "bad_files": self.checks["bad_files"],
            "broken_during_training": broken,
            "ignored_files": self.checks["ignored_files"],
            "scan_warnings": self.checks["scan_warnings"],
            "duplicate_groups": len(self.checks["duplicates"]),
            "leaks_removed": len(self.checks["leaks_removed"]),
            "excluded": len(self.checks.get("excluded", [])),  # data.exclude
            "fold": self.fold.as_dict() if self.fold else None,  # cross-validation
            "class_counts": self.checks["class_counts"],
            "imbalance_ratio": self.checks["imbalance_ratio"],
            "balance": self.balance,
        }

    def _serve(self, split: str) -> DataLoader:
        # The phase of the current epoch decides: cached features (head-only phases) or images. Loaders are
        # requested again every epoch when they can change; the image loaders are kept, with their workers.
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        if self.features is not None and self.features.serves(split, epoch):
            return self.features.loader(split, epoch)
        if split not in self._image_loaders:
            self._image_loaders[split] = self._loader(split, train=split == "train")
        return self._image_loaders[split]

    def evaluation_loader(self, split: str) -> DataLoader:
        """Un-augmented, unshuffled batches of `split` for the model as trained: cached features when no phase
        changed the backbone (the features are still its own), else images."""
        if self.features is not None and self.features.all_cached:
            return self.features.loader(split, None)
        return self._loader(split, train=False)

    def train_dataloader(self) -> DataLoader:
        return self._serve("train")

    def val_dataloader(self) -> DataLoader:
        return self._serve("val")

    def test_dataloader(self) -> DataLoader:
        return self._serve("test")


def auto_workers(in_memory: bool, gpus: int, cpus: int | None = None) -> int:
    """How many loader processes `data.num_workers=auto` starts (per training process).

    Training on the CPU (gpus=0), the model's threads already use every core and a worker process only takes
    cores away from them: for images decoded once into memory the transforms run in the main process (0 workers;
    measured in the docs' performance page), files get one worker so that decoding overlaps the step. On GPUs the main
    process only feeds its device: the node's cores are shared by the `gpus` training processes, one core each
    kept for the process itself, at most 8 workers each.
    """
    cpus = cpus or len(os.sched_getaffinity(0))
    if gpus <= 0:
        return 0 if in_memory else 1
    return max(1, min(8, cpus // gpus - 1))


def _normal(image_id: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(image_id)))


def excluded_ids(path: str) -> set[str]:
    """The ids an exclude list names: one a line, blank lines and # comments ignored."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"data.exclude={path}: no such file. Pass a text file of image paths, one a line (python -m tlexp.audit "
            "writes one as exclude.txt), or data.exclude=null."
        )
    lines = (line.strip() for line in file.read_text(errors="replace").splitlines())
    return {_normal(line) for line in lines if line and not line.startswith("#")}


def make_splits(
    given: dict[str, ImageSet], cfg: dict, names: list[str] | None = None, fold: Fold | None = None
) -> dict[str, ImageSet]:
    """train/val/test from what the source gives: a pool, or some of the splits already made.

    Held-out splits come first and do not depend on `per_class`/`train_size`, so runs at different
    training-set sizes are evaluated on the same images. The test split is never used for selection.
    With a `fold`, train + val (as above) are pooled and split into stratified folds: the fold validates.
    """
    seed = int(cfg.get("split_seed", 0))
    splits = dict(given)
    train = splits.pop("pool", None) or splits.pop("train")
    if "test" not in splits:
        fraction, per_class = cfg.get("test_fraction", 0.15), cfg.get("test_per_class")
        kept, held = holdout(train.labels, seed, fraction, per_class, "test", names)
        splits["test"], train = train.subset(held), train.subset(kept)
    elif cfg.get("test_per_class"):  # a smaller, still stratified, test set for quick comparisons
        splits["test"] = splits["test"].subset(subsample(splits["test"].labels, seed, cfg["test_per_class"], None))
    if "val" not in splits:
        fraction, per_class = cfg.get("val_fraction", 0.15), cfg.get("val_per_class")
        kept, held = holdout(train.labels, seed + 7, fraction, per_class, "val", names)
        splits["val"], train = train.subset(held), train.subset(kept)
    chosen = subsample(train.labels, seed, cfg.get("per_class"), cfg.get("train_size"))
    if len(chosen) < len(train):
        train = train.subset(chosen)
    if fold is not None:  # cross-validation: fold i of train + val validates, the other folds train
        pool = concat(train, splits["val"])
        which = fold_of(pool.labels, fold.folds, seed, fold.repeat, names)
        return {
            "train": pool.subset(np.flatnonzero(which != fold.part)),
            "val": pool.subset(np.flatnonzero(which == fold.part)),
            "test": splits["test"],
        }
    return {"train": train, "val": splits["val"], "test": splits["test"]}
