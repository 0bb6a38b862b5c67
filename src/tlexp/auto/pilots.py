"""`strategy=auto` with a budget: the probe, then successive halving over pilots of the candidate strategies.

A candidate that trains only the head (feature_extraction) is judged by the linear probe on frozen features:
its converged result, in seconds. Every other candidate is a real run of its own (`build_run`) in
`<run dir>/pilots/<strategy>/`, trained for the first `strategy.budget` of its own schedule's backbone epochs
(equal progress through each schedule: the learning rates are at the same point of their decay) and judged by
its best val epoch so far (the one its best checkpoint holds). Each rung keeps the better half and doubles
their share, resuming them from their last.ckpt, until two are left. Against the converged probe, a pilot that
does not yet lead beyond the noise trains on up to `strategy.pilot_cap` of its schedule (`auto.still_open`);
then `auto.choose` judges. Before any pilot trains, and each time one would train on, the stop rule
(`auto.stop_rule`) asks whether any training could make a pilot lead the probe on this val set; where not, no
(more) pilot epochs are paid for and the cheaper probe is kept. Each candidate's cost is its whole run priced
from its measured seconds per epoch (`EpochTimes`; the probe from the pilots' eval speed). The winner
then trains on to the end of its schedule from where its pilot stopped: no epoch of the winner is thrown away,
and its linear-probe head (LP-FT) is the one it started from. Only the val split is read; test is first
touched by the winner's final test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from tlexp import auto
from tlexp.config.errors import ConfigError
from tlexp.features.cache import eval_feature_cache
from tlexp.features.evidence import FOLDS, FeatureEvidence, feature_evidence
from tlexp.run.atomic import write_text
from tlexp.run.build import Run, build_run, check_config, init_head, plain, replaced, start_output
from tlexp.run.resume import LAST, clear_auto_attempt, rng_states, set_rng_states

from . import Decision, Standing

log = logging.getLogger(__name__)

DECISION = "auto.json"  # written in the auto run's dir once the choice is made


def head_only_epochs(run: Run) -> int:
    """Epochs of the leading phases that train the head alone: on cached features they cost next to nothing."""
    epochs = 0
    for phase in run.phases:
        if phase.train != ["head"]:
            break
        epochs += phase.epochs
    return epochs


class BestVal(Callback):
    """Which val images the pilot got right at its best val epoch so far (the epoch its best checkpoint holds),
    and its val log-loss there (the module's epoch mean of `val/loss`): the tie-break on equal val accuracy."""

    def __init__(self):
        self.correct: torch.Tensor | None = None
        self.loss: float | None = None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        correct = pl_module.val_correct()
        if self.correct is None or correct.sum() > self.correct.sum():  # the earliest best, as ModelCheckpoint
            loss = trainer.callback_metrics.get("val/loss")  # this epoch's mean: Lightning reduced it before the hook
            self.correct, self.loss = correct, None if loss is None else float(loss)


class EpochTimes(Callback):
    """Seconds of each training epoch (its val pass included) and of each val pass, by epoch: what `auto`'s one
    definition of cost reads. Trainer start-up, the LP-FT head fit and the feature pass fall outside them."""

    def __init__(self):
        self.train: dict[int, float] = {}
        self.val: dict[int, float] = {}
        self._started = self._val_started = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.train[trainer.current_epoch] = time.perf_counter() - self._started

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val_started = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val[trainer.current_epoch] = time.perf_counter() - self._val_started


class Pilot:
    """One candidate's run, trained a rung at a time: `advance(f)` brings it to a fraction f of its schedule."""

    def __init__(self, name: str, run: Run, best: BestVal, times: EpochTimes):
        self.name, self.run, self.best, self.times = name, run, best, times
        self.free = head_only_epochs(run)
        self.total = run.schedule.total_epochs - self.free  # backbone epochs of the full schedule
        self.epochs = 0
        self.seconds = 0.0

    def advance(self, fraction: float) -> Standing:
        """Train on to `fraction` of its backbone epochs (at least one more than before), resumed from last.ckpt."""
        run, trainer = self.run, self.run.trainer
        started = time.perf_counter()
        if self.epochs == 0:
            init_head(run)  # LP-FT's probe head, fitted once: later rungs resume with it in the checkpoint
        epochs = min(self.total, max(self.epochs + 1, round(fraction * self.total)))
        last = run.out / "checkpoints" / LAST
        trainer.fit_loop.max_epochs = self.free + epochs
        run.schedule.current = None  # re-applied from the checkpoint's phase, as in a resumed process
        trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=last if last.is_file() else None)
        self.epochs = epochs
        self.seconds += time.perf_counter() - started
        return Standing(
            self.name, self.best.correct, self.epochs, self.seconds, self.full_seconds(), epochs / self.total,
            val_loss=self.best.loss,
        )  # fmt: skip

    def full_seconds(self) -> float:
        """Its whole run: the median head-only epoch x its head-only epochs + the median backbone epoch x its
        backbone epochs (auto's one definition of cost)."""
        head = [s for e, s in self.times.train.items() if e < self.free]
        backbone = [s for e, s in self.times.train.items() if e >= self.free]
        return auto.epochs_seconds(head, self.free) + auto.epochs_seconds(backbone, self.total)

    def seconds_per_val_image(self) -> float | None:
        """Eval speed on images: its median val pass in backbone epochs (not served from cached features)."""
        passes = [s for e, s in self.times.val.items() if e >= self.free]
        images = len(self.best.correct) if self.best.correct is not None else 0
        return auto.epochs_seconds(passes, 1) / images if passes and images else None

    def continuation(self, out: Path, decision: Decision) -> Run:
        """The winner's run, to be fitted on to the end of its schedule from its last.ckpt, recorded in `out`."""
        self.run.trainer.fit_loop.max_epochs = self.run.schedule.total_epochs
        self.run.schedule.current = None
        last = self.run.out / "checkpoints" / LAST
        return dataclasses.replace(self.run, out=out, resume_from=last, decision=decision)


def candidate_cfg(cfg: DictConfig, name: str, out: Path) -> DictConfig:
    """The run config of one candidate: the user's, with the candidate's strategy, in <out>/pilots/<name>."""
    return replaced(cfg, strategy=auto.load_strategy(name), output_dir=str(out / "pilots" / name), resume=None)


def cv_folds(cfg: DictConfig) -> int:
    """Folds of the cross-validated probe evidence: `cv.folds` when set (K >= 2), else evidence's default."""
    folds = int(OmegaConf.select(cfg, "cv.folds", default=0) or 0)
    return folds if folds >= 2 else FOLDS


def probe_standing(name: str, run: Run) -> tuple[Standing, FeatureEvidence]:
    """feature_extraction's evidence: the probe (and kNN, CV) on the frozen backbone's train/val features."""
    started = time.perf_counter()
    dm = run.datamodule
    if dm.on_device:
        raise ConfigError(
            "strategy=auto measures a linear probe on frozen features, which data.augment_on=device does not "
            "provide. Use data.augment_on=cpu, or strategy.budget=0 (the size rule)."
        )
    features = eval_feature_cache(plain(run.cfg.cache), dm, run.module.backbone, run.cfg.model.name)
    found = feature_evidence(
        features.features("train"), features.features("val"), dm.num_classes, folds=cv_folds(run.cfg)
    )
    seconds = time.perf_counter() - started
    # full_seconds: a placeholder until the pilots have measured the eval speed that prices it (`auto.priced`)
    return Standing(name, found.val_correct, 0, seconds, seconds, val_loss=found.val_loss), found


def converged(standings) -> Standing | None:
    """The probe among the standings (judged on frozen features, nothing left to train), if any."""
    return next((s for s in standings if s.epochs == 0 and s.share >= 1.0), None)


def stop_rule(standings, features: FeatureEvidence) -> str | None:
    """`auto.stop_rule` on the probe among `standings`, with its cross-validated accuracy; None without a probe."""
    probe = converged(standings)
    return None if probe is None else auto.stop_rule(probe, features.cv_acc, features.folds)


def measure(
    pilots: dict[str, Pilot], standings: dict[str, Standing], budget: float, cap: float, features: FeatureEvidence,
    images: int,
):  # fmt: skip
    """The stop rule before any pilot trains (where the probe cannot be led on this val set, none does: that saves
    every pilot's cost), else `successive_halving`. Returns the finalists, the rungs (None: no pilot trained) and
    the stop rule's reason."""
    if pilots and (stopped := stop_rule(standings.values(), features)) is not None:
        return list(standings.values()), None, stopped
    return successive_halving(pilots, standings, budget, cap, features, images)


def successive_halving(
    pilots: dict[str, Pilot], standings: dict[str, Standing], budget: float, cap: float, features: FeatureEvidence,
    images: int,
):  # fmt: skip
    """Every pilot to `budget` of its schedule, then the better half to twice that, until two are left; then a
    pilot within the noise of the probe trains on up to `cap`, unless the stop rule says no training could make it
    lead there. `images`: train + val, what the probe's full run reads. Returns the finalists, every rung's
    standings and the stop rule's reason (None when it did not fire)."""
    fraction = budget
    for name, pilot in pilots.items():
        standings[name] = pilot.advance(fraction)
    speeds = [v for p in pilots.values() if (v := p.seconds_per_val_image()) is not None]
    speed = statistics.median(speeds) if speeds else None  # one eval speed for every probe: the pilots' median
    standings = {n: auto.priced(s, speed, images) if n not in pilots else s for n, s in standings.items()}
    alive = list(standings.values())
    rungs = [[s.as_dict() for s in alive]]
    while len(alive) > 2:
        alive = auto.better_half(alive)
        fraction *= 2
        alive = [pilots[s.strategy].advance(fraction) if s.strategy in pilots else s for s in alive]
        rungs.append([s.as_dict() for s in alive])
    while (pending := auto.still_open(alive, cap)) is not None:
        if (stopped := stop_rule(alive, features)) is not None:  # asked each time a pilot would train on
            return alive, rungs, stopped
        alive = [pilots[s.strategy].advance(min(2 * s.share, cap)) if s is pending else s for s in alive]
        rungs.append([s.as_dict() for s in alive])
    return alive, rungs, None


def select(cfg: DictConfig, callbacks: list | None = None) -> Run:
    """Measure, choose, and return the winner's run ready to fit on (its decision attached)."""
    started = time.perf_counter()
    check_config(cfg)
    spec = plain(cfg.strategy)
    out = start_output(cfg, None)
    if clear_auto_attempt(out):
        log.warning("strategy=auto: %s held the pilots of an earlier auto run; they are cleared and measured again "
                    "(to continue an interrupted winner instead: resume=<that dir>/pilots/<winner>)", out)  # fmt: skip
    names = [c["name"] for c in auto.candidates(spec)]
    best = {name: BestVal() for name in names}
    times = {name: EpochTimes() for name in names}
    runs, built_rng = {}, {}
    for name in names:
        runs[name] = build_run(candidate_cfg(cfg, name, out), [*(callbacks or []), best[name], times[name]])
        built_rng[name] = rng_states()  # where a plain run of this strategy starts its fit
    if next(iter(runs.values())).trainer.world_size > 1:  # each rank would judge its own shard of val
        raise ConfigError(auto.ONE_PROCESS)
    head_only = [n for n in names if head_only_epochs(runs[n]) == runs[n].schedule.total_epochs]
    pilots = {n: Pilot(n, runs[n], best[n], times[n]) for n in names if n not in head_only}
    standings, features = {}, None
    for name in head_only:  # before any pilot trains: the probe sees the pretrained backbone
        standings[name], features = probe_standing(name, runs[name])
    if not head_only:
        _, features = probe_standing("probe", next(iter(runs.values())))
    dm = next(iter(runs.values())).datamodule
    sizes = dm.sizes()
    budget, cap, images = float(spec["budget"]), float(spec["pilot_cap"]), sizes["train"] + sizes["val"]
    alive, rungs, stopped = measure(pilots, standings, budget, cap, features, images)
    decision = auto.judge(
        alive,
        train_images=sizes["train"],
        num_classes=dm.num_classes,
        features=features.as_dict(),
        rungs=rungs,
        seconds=time.perf_counter() - started,
        stopped=stopped,
    )
    write_text(out / DECISION, json.dumps(decision.as_dict(), indent=2))
    log.info("strategy=auto: %s", decision.reason)
    winner = decision.strategy
    if winner in pilots and pilots[winner].epochs:
        return pilots[winner].continuation(out, decision)
    set_rng_states(built_rng[winner])  # the pilots drew from the generators: train as a plain run would
    return dataclasses.replace(runs[winner], out=out, decision=decision)
