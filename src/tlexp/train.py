"""`python -m tlexp.train`: compose the config, train with the chosen strategy, test the best checkpoint."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from .backbones import block_map, check_model_name, create_backbone, data_config
from .data import TransferDataModule
from .errors import ConfigError, exit_on_user_error
from .features import feature_cache_for
from .linear_probe import linear_probe
from .module import TransferModule
from .phases import PhaseSchedule, build_phases, check_strategy

log = logging.getLogger("tlexp")


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def preprocessing(cfg: DictConfig, backbone) -> dict:
    """The backbone's own preprocessing; the dataset config may lower the input size; the user may override."""
    native = data_config(backbone)
    pre = {
        "image_size": native.input_size,
        "mean": list(native.mean),
        "std": list(native.std),
        "interpolation": native.interpolation,
        "crop_pct": native.crop_pct,
    }
    for source in (cfg.dataset.get("preprocess") or {}, cfg.get("preprocess") or {}):
        pre.update({k: v for k, v in _plain(source).items() if v is not None})
    return pre


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked before any weights or data are loaded."""
    check_model_name(cfg.model.name)
    strategy = _plain(cfg.strategy)
    check_strategy(strategy)
    if cfg.get("linear_probe") and (not strategy.get("pretrained", True) or cfg.cache.mode == "off"):
        raise ConfigError(
            "linear_probe=true fits a logistic regression on cached features of the pretrained backbone: it needs "
            f"a pretrained strategy (this one: {strategy['name']}) and the feature cache (cache.mode=auto or on)."
        )
    if strategy.get("pretrained", True) and str(cfg.model.weights).lower() in ("none", "random", "null"):
        raise ConfigError(
            f"strategy '{strategy['name']}' starts from pretrained weights, but model.weights={cfg.model.weights}. "
            "Use strategy=scratch to train from random weights, or set model.weights."
        )


def train(cfg: DictConfig, callbacks: list | None = None) -> dict:
    """Train and test one configuration; returns the metrics also written to `metrics.json`.

    `callbacks` are added to the Trainer (tests use them to watch phases epoch by epoch).
    """
    check_config(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    strategy = _plain(cfg.strategy)
    pretrained = bool(strategy.get("pretrained", True))

    # Weights first: a missing file fails in seconds, before any data is read.
    size_hint = (cfg.dataset.get("preprocess") or {}).get("image_size")
    weights = cfg.model.weights if pretrained else None
    backbone, weights_id = create_backbone(cfg.model.name, weights, size_hint)
    groups = [*block_map(backbone), "head"]
    phases = build_phases(strategy, groups, float(cfg.optimizer.weight_decay))

    pre = preprocessing(cfg, backbone)
    datamodule = TransferDataModule(
        dataset=_plain(cfg.dataset),
        image_size=pre["image_size"],
        mean=pre["mean"],
        std=pre["std"],
        interpolation=pre["interpolation"],
        crop_pct=pre["crop_pct"],
        augment=_plain(cfg.augment),
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
    )
    datamodule.setup()
    module = TransferModule(
        model_name=cfg.model.name,
        num_classes=datamodule.num_classes,
        weights=str(weights),
        class_names=datamodule.class_names,
        image_size=size_hint,
        head_dropout=cfg.model.head_dropout,
        optimizer=cfg.optimizer.name,
        weight_decay=cfg.optimizer.weight_decay,
        momentum=cfg.optimizer.get("momentum", 0.9),
        label_smoothing=cfg.optimizer.get("label_smoothing", 0.0),
        backbone=backbone,
    )

    schedule = PhaseSchedule(phases, freeze_mode=cfg.freeze_mode)
    # Head-only phases with a frozen backbone train on features computed once (features.py).
    cache = feature_cache_for(_plain(cfg.cache), phases, cfg.freeze_mode, datamodule, backbone, cfg.model.name)
    if cfg.get("linear_probe") and (cache is None or not cache.all_cached):
        raise ConfigError(
            "linear_probe=true needs a strategy whose phases all train the head alone on a frozen backbone "
            f"(strategy=feature_extraction); '{strategy['name']}' trains the backbone."
        )
    trainer_args = _plain(cfg.trainer)
    if cache is not None and cache.needs_reload():
        trainer_args["reload_dataloaders_every_n_epochs"] = 1  # the DataModule serves per epoch: view or images
    checkpoints = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best-{epoch:02d}",
        monitor="val/acc",
        mode="max",
        save_last=True,
    )
    logger = TensorBoardLogger(save_dir=str(out), name="tensorboard", version="", default_hp_metric=False)
    trainer = L.Trainer(
        **trainer_args,
        max_epochs=schedule.total_epochs,
        callbacks=[schedule, checkpoints, *(callbacks or [])],
        logger=logger,
        default_root_dir=str(out),
    )

    if cache is not None and trainer.world_size > 1:
        if cfg.cache.mode == "on":
            raise ConfigError("cache.mode=on works in one process only; use cache.mode=auto or off under DDP.")
        cache = datamodule.features = None  # DDP: frozen groups keep gradients (zero_lr); run on images

    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - started
    best = checkpoints.best_model_path or None
    started = time.perf_counter()
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test_seconds = time.perf_counter() - started
    probe = None
    if cfg.get("linear_probe"):
        probe = linear_probe(*(cache.features(s) for s in ("train", "val", "test")), datamodule.num_classes)

    metrics = {
        "model": cfg.model.name,
        "weights": weights_id,
        "strategy": strategy["name"],
        "phases": [p.as_dict() for p in phases],
        "dataset": cfg.dataset.name,
        "dataset_sizes": datamodule.sizes(),
        "num_classes": datamodule.num_classes,
        "class_names": datamodule.class_names,
        "preprocessing": pre,
        "seed": cfg.seed,
        "epochs": schedule.total_epochs,
        "best_epoch": _best_epoch(best),
        "best_val_acc": float(checkpoints.best_model_score) if checkpoints.best_model_score is not None else None,
        "fit_seconds": round(fit_seconds, 2),
        "test_seconds": round(test_seconds, 2),
        "trainable_params": max(module.trainable_parameters(p.train) for p in phases),
        "trainable_params_per_phase": [module.trainable_parameters(p.train) for p in phases],
        "total_params": module.total_parameters(),
        "test": {k.removeprefix("test/"): float(v) for k, v in test.items()},
        "checkpoint": best,
        "feature_cache": cache.report() if cache is not None else None,
        "linear_probe": probe,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    hparams = {
        "model": cfg.model.name,
        "strategy": strategy["name"],
        "train_images": metrics["dataset_sizes"]["train"],
        "seed": cfg.seed,
        **{f"lr/{p.name}": max(p.lr.values()) for p in phases},
    }
    logger.log_hyperparams(hparams, {f"hparams/test_{k}": v for k, v in metrics["test"].items()})
    print_summary(metrics, out)
    return metrics


def _best_epoch(path: str | None) -> int | None:
    if not path or "epoch=" not in path:
        return None
    return int(Path(path).stem.split("epoch=")[1].split("-")[0])


def print_summary(metrics: dict, out: Path) -> None:
    test = metrics["test"]
    rows = [
        ("model", metrics["model"]),
        ("strategy", f"{metrics['strategy']} ({' -> '.join(p['name'] for p in metrics['phases'])})"),
        ("train / val / test", " / ".join(str(metrics["dataset_sizes"][k]) for k in ("train", "val", "test"))),
        ("trainable params", f"{metrics['trainable_params']:,} of {metrics['total_params']:,}"),
        ("fit time", f"{metrics['fit_seconds']:.1f} s ({metrics['epochs']} epochs, best {metrics['best_epoch']})"),
        ("test accuracy", f"{test.get('acc', float('nan')):.4f}"),
        ("test macro F1", f"{test.get('f1', float('nan')):.4f}"),
    ]
    if "acc_top5" in test:
        rows.append(("test top-5 acc", f"{test['acc_top5']:.4f}"))
    cache = metrics.get("feature_cache")
    if cache:
        done = f"{len(cache['computed'])} computed, {len(cache['loaded'])} loaded"
        rows.append(("feature cache", f"{cache['cached_epochs']} epochs on cached features ({done})"))
    probe = metrics.get("linear_probe")
    if probe:
        how = f"L-BFGS, L2 {probe['l2']:g} chosen on val, {probe['seconds']} s"
        rows.append(("linear probe acc", f"{probe['test']['acc']:.4f} ({how})"))
    rows.append(("run dir", str(out)))
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows) + "\n", flush=True)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics["test"].get("acc")


if __name__ == "__main__":
    main()
