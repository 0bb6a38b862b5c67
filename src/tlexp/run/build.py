"""Build a run from its config: every object a training run needs, each decision made once, here.

`build_run` reads as the steps: resume or start, check the config, load the weights (a missing file fails in
seconds, before any data is read), resolve the phases, read the data, choose the strategy (auto), build the
module and the Trainer, then decide the feature cache (it needs the world size, known once the Trainer exists).
`inspect`, `advise` and the benchmarks use the same builders (`preprocessing`, `build_datamodule`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from tlexp import auto
from tlexp.config.errors import ConfigError
from tlexp.config.validate import check_writable, validate_config
from tlexp.data import TransferDataModule
from tlexp.data.sources import check_location
from tlexp.features.cache import FeatureCache, FeatureStore, eval_feature_cache, feature_cache_for
from tlexp.features.probe import set_head_to_probe
from tlexp.model.backbones import block_map, check_model_name, create_backbone
from tlexp.model.ema import WeightEMA
from tlexp.model.module import TransferModule
from tlexp.model.phases import Phase, PhaseSchedule, build_phases
from tlexp.model.preprocessing import Preprocessing

from .accel import (
    gpus_on_node,
    prepare_backbone,
    processes_per_run,
    resolve_channels_last,
    resolve_precision,
    resolve_threads,
)
from .atomic import AtomicCheckpointIO, write_text
from .best import BestOnVal
from .claim import release
from .guards import RequireTraining, StopOnNonFinite
from .history import EpochHistory
from .preview import TrainBatchPreview
from .progress import plain_progress, quiet_lightning
from .resume import LAST, RUN_CONFIG, RunState, resume_config

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Run:
    """Everything one training run is made of, built from its config by `build_run`."""

    cfg: DictConfig
    out: Path
    resume_from: Path | None  # last.ckpt of the run being resumed; None for a new run
    weights_id: str
    strategy: dict  # the strategy that trains (auto's choice when strategy=auto)
    decision: auto.Decision | None
    phases: list[Phase]
    preprocessing: dict
    datamodule: TransferDataModule
    module: TransferModule
    schedule: PhaseSchedule
    curves: EpochHistory
    best: ModelCheckpoint
    cache: FeatureCache | None
    channels_last: bool
    trainer: L.Trainer

    @property
    def logger(self) -> TensorBoardLogger:
        return self.trainer.logger


def plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def replaced(cfg: DictConfig, **values) -> DictConfig:
    """A deep copy of `cfg` with these top-level keys set (a candidate's strategy, a model, an output dir)."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for key, value in values.items():
            out[key] = value
    return out


def build_run(cfg: DictConfig, callbacks: list | None = None) -> Run:
    """The run a config describes; `callbacks` are added to the Trainer (tests watch phases with them)."""
    resume_from = None
    if cfg.get("resume"):
        cfg, resume_from = resume_config(cfg)
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    set_threads(cfg)
    backbone, weights_id = load_backbone(cfg)
    blocks = block_map(backbone)
    groups = [*blocks, "head"]
    for candidate in auto.candidates(plain(cfg.strategy)):  # a bad phase list fails before any data is read
        resolve_phases(cfg, candidate, groups)
    pre = preprocessing(cfg, backbone)
    datamodule = build_datamodule(cfg, pre)
    datamodule.setup()
    strategy, decision = auto.resolve(plain(cfg.strategy), datamodule.sizes()["train"], datamodule.num_classes)
    phases = resolve_phases(cfg, strategy, groups)
    module = build_module(cfg, backbone, blocks, datamodule, pre)
    channels_last = resolve_channels_last(cfg.get("channels_last", False), cfg.trainer.accelerator, backbone)
    prepare_backbone(module.backbone, channels_last, bool(cfg.get("compile", False)))
    schedule = PhaseSchedule(phases, freeze_mode=cfg.freeze_mode)
    curves = EpochHistory(schedule.phase_index)
    out = start_output(cfg, resume_from)  # once the weights and the data are there: a refused run leaves no record
    best = BestOnVal(out / "checkpoints")
    trainer = build_trainer(cfg, out, schedule, best, [curves, *(callbacks or [])])
    cache = decide_cache(cfg, strategy, phases, schedule.mode(trainer), datamodule, backbone, trainer)
    return Run(
        cfg=cfg, out=out, resume_from=resume_from, weights_id=weights_id, strategy=strategy, decision=decision,
        phases=phases, preprocessing=pre, datamodule=datamodule, module=module, schedule=schedule, curves=curves,
        best=best, cache=cache, channels_last=channels_last, trainer=trainer,
    )  # fmt: skip


# ---------------------------------------------------------------- the steps


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked before any weights or data are loaded (and before a run writes anything)."""
    validate_config(cfg)
    check_model_name(cfg.model.name)
    # Values, the phase list and auto's thresholds are validate_config's; what follows needs more than one key.
    strategy = plain(cfg.strategy)
    if auto.uses_pilots(strategy) and processes_per_run(plain(cfg.trainer)) > 1:  # before the data is scanned
        raise ConfigError(auto.ONE_PROCESS)
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
    check_location(plain(cfg.dataset))  # last: a wrong value above is the message to see first
    if cfg.cache.mode != "off":
        FeatureStore(cfg.cache.dir).check()


def set_threads(cfg: DictConfig) -> None:
    threads = resolve_threads(cfg.get("threads", "auto"), cfg.trainer.accelerator)
    if threads is not None:
        torch.set_num_threads(threads)
        log.info("threads=%s: %d torch thread(s)", cfg.get("threads", "auto"), threads)


def start_output(cfg: DictConfig, resume_from: Path | None) -> Path:
    """The run directory, with the resolved config a resume reads back (a resumed run keeps its own)."""
    out = Path(cfg.output_dir)
    check_writable(out, "Pass hydra.run.dir=<a writable folder> (or output_dir=...).")
    out.mkdir(parents=True, exist_ok=True)
    if resume_from is None:
        write_text(out / RUN_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
        release(out)  # config.yaml marks the directory as a run's from now on
    return out


def load_backbone(cfg: DictConfig) -> tuple[nn.Module, str]:
    """The backbone with the weights the strategy starts from (random for scratch)."""
    pretrained = bool(plain(cfg.strategy).get("pretrained", True))
    return create_backbone(cfg.model.name, cfg.model.weights if pretrained else None, image_size_hint(cfg))


def image_size_hint(cfg: DictConfig) -> int | None:
    """The input size the user or the dataset asks for (ViT-style backbones resample their position embedding)."""
    for source in (cfg.get("preprocess") or {}, cfg.dataset.get("preprocess") or {}):
        if source.get("image_size"):
            return source.get("image_size")
    return None


def scale_epochs(strategy: dict, factor: float) -> dict:
    """The strategy with every phase's epochs multiplied by `factor` (at least 1): for quick comparisons."""
    if factor == 1.0:
        return strategy
    phases = [{**p, "epochs": max(1, round(p["epochs"] * factor))} for p in strategy["phases"]]
    return {**strategy, "phases": phases}


def resolve_phases(cfg: DictConfig, strategy: dict, groups: list[str]) -> list[Phase]:
    scaled = scale_epochs(strategy, float(cfg.get("epoch_scale", 1.0)))
    return build_phases(scaled, groups, float(cfg.optimizer.weight_decay))


def preprocessing(cfg: DictConfig, backbone: nn.Module) -> Preprocessing:
    """The backbone's own preprocessing; the dataset config may lower the input size; the user may override."""
    pre = Preprocessing.of_backbone(backbone)
    for source in (cfg.dataset.get("preprocess") or {}, cfg.get("preprocess") or {}):
        pre = pre.overridden(plain(source))
    return pre


def build_datamodule(cfg: DictConfig, pre: Preprocessing, **overrides) -> TransferDataModule:
    """The DataModule a config describes, with the preprocessing `pre`; `overrides` replace any argument."""
    data = cfg.data
    kwargs = {
        "dataset": plain(cfg.dataset),
        **pre.as_dict(),
        "augment": plain(cfg.augment),
        "batch_size": data.batch_size,
        "num_workers": data.num_workers,
        "on_bad_image": data.on_bad_image,
        "balance": data.balance,
        "background": tuple(data.background),
        "drop_leaks": data.drop_leaks,
        "preflight_cache": data.preflight_cache,
        "augment_on": data.get("augment_on", "cpu"),
        "cv": plain(cfg.cv) if cfg.get("cv") else None,
        "exclude": data.get("exclude"),
        "gpus": gpus_on_node(cfg.trainer.get("accelerator", "cpu"), cfg.trainer.get("devices", 1)),
    }
    return TransferDataModule(**{**kwargs, **overrides})


def build_module(cfg: DictConfig, backbone: nn.Module, blocks: dict, datamodule, pre: dict) -> TransferModule:
    """The LightningModule, from plain values (its checkpoint loads without the config) plus the built backbone."""
    return TransferModule(
        model_name=cfg.model.name,
        num_classes=datamodule.num_classes,
        weights=str(cfg.model.weights),
        class_names=datamodule.class_names,
        image_size=image_size_hint(cfg),
        head_dropout=cfg.model.head_dropout,
        optimizer=cfg.optimizer.name,
        weight_decay=cfg.optimizer.weight_decay,
        momentum=cfg.optimizer.get("momentum", 0.9),
        label_smoothing=cfg.optimizer.get("label_smoothing", 0.0),
        class_weights=datamodule.loss_weights(),
        preprocessing=pre.as_dict(),  # saved in the checkpoint: predict/export need nothing else
        backbone=backbone,
        blocks=blocks,
    )


def build_trainer(cfg: DictConfig, out: Path, schedule: PhaseSchedule, best: ModelCheckpoint, extra: list) -> L.Trainer:
    """The Trainer, with the callbacks that keep a run's work: last.ckpt every epoch, RNG state, the NaN stop."""
    args = plain(cfg.trainer)
    args["precision"] = resolve_precision(args.get("precision", "32-true"), args["accelerator"])
    last = out / "checkpoints" / LAST
    # last.ckpt at every epoch end (Lightning's save_last only writes it in epochs where the best one improved);
    # after `best` (Lightning keeps checkpoint callbacks in their order, after the others), so that it holds the
    # best-so-far state of this epoch too.
    every_epoch = ModelCheckpoint(dirpath=last.parent, filename=last.stem, enable_version_counter=False)
    keep = [
        every_epoch,
        RunState(out, last, (out / RUN_CONFIG).read_text()),
        StopOnNonFinite(schedule, last),
        RequireTraining(),
    ]
    ema = [WeightEMA(cfg.ema, schedule.total_epochs)] if cfg.get("ema") else []
    progress = plain_progress(args, schedule)  # off a terminal: a line per epoch instead of the bar
    shown = cfg.report.train_batch_preview
    preview = [TrainBatchPreview(out / "train_batch.png", shown)] if shown else []
    logger = TensorBoardLogger(save_dir=str(out), name="tensorboard", version="", default_hp_metric=False)
    quiet_lightning()  # before the Trainer prints its tips and device lines (train, pilots, advise alike)
    return L.Trainer(
        **args,
        max_epochs=schedule.total_epochs,
        callbacks=[schedule, best, *keep, *ema, *preview, *progress, *extra],
        plugins=[AtomicCheckpointIO()],  # a checkpoint is whole under its name, or not there
        logger=logger,
        default_root_dir=str(out),
    )


def decide_cache(cfg, strategy: dict, phases, freeze_mode: str, datamodule, backbone, trainer) -> FeatureCache | None:
    """Whether head-only phases train on features computed once (features.py), decided with the world size known.

    Under DDP `freeze_mode` resolves to zero_lr (gradients flow through frozen groups), which no cached phase
    allows; with data.augment_on=device the eval loaders yield un-normalised uint8 images, so no cache either.
    """
    cache = None
    if not datamodule.on_device:
        cache = feature_cache_for(plain(cfg.cache), phases, freeze_mode, datamodule, backbone, cfg.model.name)
    if cfg.get("linear_probe") and (cache is None or not cache.all_cached):
        raise ConfigError(
            "linear_probe=true needs a strategy whose phases all train the head alone on a frozen backbone "
            f"(strategy=feature_extraction); '{strategy['name']}' trains the backbone."
        )
    if cache is not None and cache.needs_reload():
        trainer.reload_dataloaders_every_n_epochs = 1  # the DataModule serves per epoch: view or images
    return cache


def init_head(run: Run) -> dict | None:
    """head_init: probe (LP-FT): the new head starts as the L-BFGS probe on frozen train features, L2 chosen on val.

    The probe is the converged head-only solution, found in seconds; fine-tuning then starts from a head
    that fits the features instead of a random one. A resumed run has its head in the checkpoint already.
    """
    if run.strategy.get("head_init", "none") != "probe" or run.resume_from is not None:
        return None
    cfg, dm = run.cfg, run.datamodule
    if dm.on_device:  # its eval loaders yield un-normalised uint8 crops: no features to probe
        why = "data.augment_on=device normalises the eval images on the device: no probe, the head starts random"
        log.warning("head_init=probe skipped: %s", why)
        return {"skipped": why}
    features = run.cache or eval_feature_cache(plain(cfg.cache), dm, run.module.backbone, cfg.model.name)
    views = int(run.strategy.get("probe_views", 0)) if dm.augmented else 0
    train = probe_train_set(features, views)
    result = set_head_to_probe(run.module.head[-1], train, features.features("val"), dm.num_classes)
    log.info("head_init=probe: head set to the linear probe (L2 %.0e, val acc %.4f, %d augmented views, %.1f s)",
             result["l2"], result["val_acc"], views, result["seconds"])  # fmt: skip
    return {**result, "views": views}


def probe_train_set(features: FeatureCache, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The train features the probe fits: the eval transform's, plus `views` augmented views of each image.

    A head that goes on to train on augmented images must fit them too: a probe fitted on clean images alone
    can be sure and wrong on augmented ones, and its first large losses wreck the pretrained features.
    """
    parts = [features.features("train"), *(features.features("train", view) for view in range(views))]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
