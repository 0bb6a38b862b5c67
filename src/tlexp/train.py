"""`python -m tlexp.train`: compose the config, train with the chosen strategy, test the best checkpoint."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from . import auto
from .accel import gpus_on_node, precision_ran, prepare_backbone, resolve_channels_last, resolve_precision
from .atomic import AtomicCheckpointIO, write_text
from .backbones import block_map, check_model_name, create_backbone, data_config
from .data import TransferDataModule
from .errors import ConfigError, exit_on_user_error
from .evaluate import evaluate
from .features import feature_cache_for
from .guards import RequireTraining, StopOnNonFinite
from .history import EpochHistory
from .linear_probe import linear_probe
from .module import TransferModule
from .phases import PhaseSchedule, build_phases, check_strategy
from .preview import TrainBatchPreview
from .progress import plain_progress, quiet_lightning
from .resume import LAST, RUN_CONFIG, RunState, check_resume_argv, check_resume_overrides, finished_run, resume_config

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


def build_datamodule(cfg: DictConfig, pre: dict, **overrides) -> TransferDataModule:
    """The DataModule a config describes, with the preprocessing `pre`; `overrides` replace any argument."""
    data = cfg.data
    kwargs = {
        "dataset": _plain(cfg.dataset),
        **{k: pre[k] for k in ("image_size", "mean", "std", "interpolation", "crop_pct")},
        "augment": _plain(cfg.augment),
        "batch_size": data.batch_size,
        "num_workers": data.num_workers,
        "on_bad_image": data.on_bad_image,
        "balance": data.balance,
        "background": tuple(data.background),
        "drop_leaks": data.drop_leaks,
        "preflight_cache": data.preflight_cache,
        "augment_on": data.get("augment_on", "cpu"),
        "gpus": gpus_on_node(cfg.trainer.get("accelerator", "cpu"), cfg.trainer.get("devices", 1)),
    }
    return TransferDataModule(**{**kwargs, **overrides})


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked before any weights or data are loaded."""
    check_model_name(cfg.model.name)
    strategy = _plain(cfg.strategy)
    if auto.is_auto(strategy):
        auto.decide(1, 1, strategy.get("feature_extraction_below", 500), strategy.get("finetune_above", 2000))
    else:
        check_strategy(strategy)
    if not float(cfg.get("epoch_scale", 1.0)) > 0:
        raise ConfigError(f"epoch_scale must be > 0, got {cfg.epoch_scale}.")
    if str(cfg.get("optimize_metric", "best_val_acc")).startswith("test"):
        raise ConfigError(
            f"optimize_metric={cfg.optimize_metric}: a sweep must select on validation, never on the test set. "
            "Use best_val_acc (the default)."
        )
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
    With `resume=<run dir>`, the run continues from its `checkpoints/last.ckpt` with its own config.
    """
    quiet_lightning()
    ckpt_path = None
    if cfg.get("resume") and (done := finished_run(cfg.resume)) is not None:
        return done  # a finished run: its files stay as they are
    if cfg.get("resume"):
        cfg, ckpt_path = resume_config(cfg)
    check_config(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if ckpt_path is None:
        write_text(out / RUN_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)
    strategy = _plain(cfg.strategy)
    pretrained = bool(strategy.get("pretrained", True))

    # Weights first: a missing file fails in seconds, before any data is read.
    size_hint = (cfg.dataset.get("preprocess") or {}).get("image_size")
    weights = cfg.model.weights if pretrained else None
    backbone, weights_id = create_backbone(cfg.model.name, weights, size_hint)
    groups = [*block_map(backbone), "head"]
    weight_decay = float(cfg.optimizer.weight_decay)
    epoch_scale = float(cfg.get("epoch_scale", 1.0))
    if not auto.is_auto(strategy):  # resolved now, so a bad phase list fails before any data is read
        phases = build_phases(scale_epochs(strategy, epoch_scale), groups, weight_decay)

    pre = preprocessing(cfg, backbone)
    datamodule = build_datamodule(cfg, pre)
    datamodule.setup()
    decision = None
    if auto.is_auto(strategy):
        strategy, decision = auto.resolve(strategy, datamodule.sizes()["train"], datamodule.num_classes)
        log.info("strategy=auto: %s", decision.reason)
        phases = build_phases(scale_epochs(strategy, epoch_scale), groups, weight_decay)
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
        class_weights=datamodule.loss_weights(),
        preprocessing=pre,  # saved in the checkpoint: predict/export need nothing else
        backbone=backbone,
    )

    trainer_args = _plain(cfg.trainer)
    trainer_args["precision"] = resolve_precision(trainer_args.get("precision", "32-true"), trainer_args["accelerator"])
    channels_last = resolve_channels_last(cfg.get("channels_last", False), trainer_args["accelerator"], backbone)
    prepare_backbone(module.backbone, channels_last, bool(cfg.get("compile", False)))

    schedule = PhaseSchedule(phases, freeze_mode=cfg.freeze_mode)
    curves = EpochHistory(schedule.phase_index)
    # Head-only phases with a frozen backbone train on features computed once (features.py).
    # (Not with data.augment_on=device: its eval loaders yield un-normalised uint8 images.)
    cache = None
    if not datamodule.on_device:
        cache = feature_cache_for(_plain(cfg.cache), phases, cfg.freeze_mode, datamodule, backbone, cfg.model.name)
    if cfg.get("linear_probe") and (cache is None or not cache.all_cached):
        raise ConfigError(
            "linear_probe=true needs a strategy whose phases all train the head alone on a frozen backbone "
            f"(strategy=feature_extraction); '{strategy['name']}' trains the backbone."
        )
    if cache is not None and cache.needs_reload():
        trainer_args["reload_dataloaders_every_n_epochs"] = 1  # the DataModule serves per epoch: view or images
    checkpoints = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="best-{epoch:02d}", monitor="val/acc", mode="max"
    )
    # last.ckpt at every epoch end (Lightning's save_last only writes it in epochs where the best one improved);
    # listed after `checkpoints` so that it holds the best-so-far state of this epoch too.
    last = out / "checkpoints" / LAST
    every_epoch = ModelCheckpoint(dirpath=out / "checkpoints", filename=last.stem, enable_version_counter=False)
    guards = [every_epoch, RunState(out, last), StopOnNonFinite(schedule, last), RequireTraining()]
    progress = plain_progress(trainer_args, schedule)
    logger = TensorBoardLogger(save_dir=str(out), name="tensorboard", version="", default_hp_metric=False)
    report = cfg.report
    shown = report.train_batch_preview
    preview = [TrainBatchPreview(out / "train_batch.png", shown)] if shown else []
    trainer = L.Trainer(
        **trainer_args,
        max_epochs=schedule.total_epochs,
        callbacks=[schedule, checkpoints, curves, *guards, *preview, *progress, *(callbacks or [])],
        plugins=[AtomicCheckpointIO()],
        logger=logger,
        default_root_dir=str(out),
    )

    if decision is not None:
        logger.experiment.add_text("strategy/auto", decision.reason, 0)

    if cache is not None and trainer.world_size > 1:
        if cfg.cache.mode == "on":
            raise ConfigError("cache.mode=on works in one process only; use cache.mode=auto or off under DDP.")
        cache = datamodule.features = None  # DDP: frozen groups keep gradients (zero_lr); run on images

    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:  # a SystemExit with status 0: a stopped run must not look like a finished one
        sys.exit(128 + signal.SIGTERM)
    fit_seconds = time.perf_counter() - started
    # Copied before test(): restoring the best checkpoint restores callback state too.
    history, epochs = list(schedule.history), list(curves.rows)
    best = checkpoints.best_model_path or None
    started = time.perf_counter()
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test_seconds = time.perf_counter() - started
    evaluation = None
    # The module holds the best checkpoint's weights since trainer.test(ckpt_path=best). Under DDP every rank
    # gets here; the report, metrics.json and the summary come from rank 0 alone.
    if report.enabled and trainer.is_global_zero:
        evaluation = evaluate(
            module,
            datamodule,
            out / "evaluation",
            logger.experiment,
            "test",
            report.temperature,
            report.top_losses,
            device=trainer.strategy.root_device,  # Lightning hands the module back on the CPU after test
            limits={"test": trainer.limit_test_batches, "val": trainer.limit_val_batches},
            # The test pass's own logits; under DDP each rank holds a shard, so the report runs its own pass.
            logits=module.test_logits() if trainer.world_size == 1 else None,
        )
        evaluation = {k: v for k, v in evaluation.items() if k != "reliability_bins"}

    probe = None
    if cfg.get("linear_probe"):
        probe = linear_probe(*(cache.features(s) for s in ("train", "val", "test")), datamodule.num_classes)

    metrics = {
        "model": cfg.model.name,
        "weights": weights_id,
        "strategy": strategy["name"],
        "auto": decision.as_dict() if decision else None,
        "phases": [p.as_dict() for p in phases],
        "dataset": cfg.dataset.name,
        "dataset_sizes": datamodule.sizes(),
        "dataset_requested": {k: cfg.dataset.get(k) for k in ("per_class", "train_size")},
        "num_classes": datamodule.num_classes,
        "class_names": datamodule.class_names,
        "preprocessing": pre,
        "precision": precision_ran(trainer),
        "precision_requested": str(cfg.trainer.get("precision", "32-true")),
        "channels_last": channels_last,
        "compile": bool(cfg.get("compile", False)),
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
        "resumed": ckpt_path is not None,
        "history": epochs,
        "phase_history": history,
        "data_checks": datamodule.report(),  # skipped/broken files, leaks removed, class counts, imbalance
        "evaluation": evaluation,
        "feature_cache": cache.report() if cache is not None else None,
        "linear_probe": probe,
    }
    if trainer.is_global_zero:
        write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    hparams = {
        "model": cfg.model.name,
        "strategy": strategy["name"],
        "train_images": metrics["dataset_sizes"]["train"],
        "seed": cfg.seed,
        **{f"lr/{p.name}": max(p.lr.values()) for p in phases},
    }
    final = {f"hparams/test_{k}": v for k, v in metrics["test"].items()}
    if evaluation:
        final["hparams/test_ece"] = evaluation["ece"]
    logger.log_hyperparams(hparams, final)  # rank 0 only (Lightning)
    if trainer.is_global_zero:
        print_summary(metrics, out)
    return metrics


def scale_epochs(strategy: dict, factor: float) -> dict:
    """The strategy with every phase's epochs multiplied by `factor` (at least 1): for quick comparisons."""
    if factor == 1.0:
        return strategy
    phases = [{**p, "epochs": max(1, round(p["epochs"] * factor))} for p in strategy["phases"]]
    return {**strategy, "phases": phases}


def _best_epoch(path: str | None) -> int | None:
    if not path or "epoch=" not in path:
        return None
    return int(Path(path).stem.split("epoch=")[1].split("-")[0])


def print_summary(metrics: dict, out: Path) -> None:
    test = metrics["test"]
    rows = [
        ("model", metrics["model"]),
        ("strategy", f"{metrics['strategy']} ({' -> '.join(p['name'] for p in metrics['phases'])})"),
        *([("auto", metrics["auto"]["reason"])] if metrics.get("auto") else []),
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


def objective(cfg: DictConfig, metrics: dict) -> float | None:
    """The value a Hydra sweeper optimises: `optimize_metric`, a key of metrics.json (dotted for nested ones)."""
    value = metrics
    for key in str(cfg.get("optimize_metric", "best_val_acc")).split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return None if value is None else float(value)


def _in_sweep() -> bool:
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def train_in_sweep(cfg: DictConfig) -> float | None:
    """One run of a multirun: a failure is written to error.json and logged, and the sweep goes on.

    A failed run returns None: the Optuna sweeper cannot cast it to float, records a failed trial, logs it
    and goes on (a NaN would make it call study.tell(FAIL) with a value, which raises and ends the sweep).
    """

    job = HydraConfig.get().job
    total = os.environ.get("TLEXP_SWEEP_TOTAL")
    print(f"\n=== run {job.num + 1}{f' of {total}' if total else ''}: {job.override_dirname} ===", flush=True)
    try:
        return objective(cfg, train(cfg))
    except Exception as err:  # noqa: BLE001 - any failure of one run is recorded, not raised
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        record = {"error": str(err), "type": type(err).__name__, "traceback": traceback.format_exc()}
        write_text(out / "error.json", json.dumps(record, indent=2))
        log.error("run %s failed (%s): %s; the sweep goes on", out, type(err).__name__, err)
        return None


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("resume"):
        exit_on_user_error(check_resume_overrides)(list(HydraConfig.get().overrides.task))
    if _in_sweep():
        return train_in_sweep(cfg)
    return objective(cfg, exit_on_user_error(train)(cfg))


if __name__ == "__main__":
    check_resume_argv(sys.argv[1:])  # before Hydra, which creates the run dir and appends to its log
    main()
