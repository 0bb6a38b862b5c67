"""`strategy=auto` with a budget: the probe, then successive halving over pilots of the candidate strategies.

A candidate that trains only the head (feature_extraction) is judged by the linear probe on frozen features:
its converged result, in seconds. Every other candidate is a real run of its own (`build_run`) in
`<run dir>/pilots/<strategy>/`, trained for the first `strategy.budget` of its own schedule's backbone epochs
(equal progress through each schedule: the learning rates are at the same point of their decay) and judged by
its best val epoch so far (the one its best checkpoint holds). Each rung keeps the better half and doubles
their share, resuming them from their last.ckpt, until two are left. Against the converged probe, a pilot that
does not yet lead beyond the noise trains on up to `strategy.pilot_cap` of its schedule (`auto.still_open`);
then `auto.choose` judges. The winner
then trains on to the end of its schedule from where its pilot stopped: no epoch of the winner is thrown away,
and its linear-probe head (LP-FT) is the one it started from. Only the val split is read; test is first
touched by the winner's final test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from tlexp import auto
from tlexp.config.errors import ConfigError
from tlexp.features.cache import eval_feature_cache
from tlexp.features.evidence import FeatureEvidence, feature_evidence
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
    """Which val images the pilot got right at its best val epoch so far (the epoch its best checkpoint holds)."""

    def __init__(self):
        self.correct: torch.Tensor | None = None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        correct = pl_module.val_correct()
        if self.correct is None or correct.sum() > self.correct.sum():
            self.correct = correct


class Pilot:
    """One candidate's run, trained a rung at a time: `advance(f)` brings it to a fraction f of its schedule."""

    def __init__(self, name: str, run: Run, best: BestVal):
        self.name, self.run, self.best = name, run, best
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
        full = self.seconds * self.total / self.epochs
        return Standing(self.name, self.best.correct, self.epochs, self.seconds, full, epochs / self.total)

    def continuation(self, out: Path, decision: Decision) -> Run:
        """The winner's run, to be fitted on to the end of its schedule from its last.ckpt, recorded in `out`."""
        self.run.trainer.fit_loop.max_epochs = self.run.schedule.total_epochs
        self.run.schedule.current = None
        last = self.run.out / "checkpoints" / LAST
        return dataclasses.replace(self.run, out=out, resume_from=last, decision=decision)


def candidate_cfg(cfg: DictConfig, name: str, out: Path) -> DictConfig:
    """The run config of one candidate: the user's, with the candidate's strategy, in <out>/pilots/<name>."""
    return replaced(cfg, strategy=auto.load_strategy(name), output_dir=str(out / "pilots" / name), resume=None)


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
    found = feature_evidence(features.features("train"), features.features("val"), dm.num_classes)
    seconds = time.perf_counter() - started
    return Standing(name, found.val_correct, 0, seconds, seconds), found


def successive_halving(pilots: dict[str, Pilot], standings: dict[str, Standing], budget: float, cap: float):
    """Every pilot to `budget` of its schedule, then the better half to twice that, until two are left; then a
    pilot within the noise of the probe trains on up to `cap`. Returns the finalists and every rung's standings."""
    fraction = budget
    for name, pilot in pilots.items():
        standings[name] = pilot.advance(fraction)
    alive = list(standings.values())
    rungs = [[s.as_dict() for s in alive]]
    while len(alive) > 2:
        alive = auto.better_half(alive)
        fraction *= 2
        alive = [pilots[s.strategy].advance(fraction) if s.strategy in pilots else s for s in alive]
        rungs.append([s.as_dict() for s in alive])
    while (pending := auto.still_open(alive, cap)) is not None:
        alive = [pilots[s.strategy].advance(min(2 * s.share, cap)) if s is pending else s for s in alive]
        rungs.append([s.as_dict() for s in alive])
    return alive, rungs


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
    runs, built_rng = {}, {}
    for name in names:
        runs[name] = build_run(candidate_cfg(cfg, name, out), [*(callbacks or []), best[name]])
        built_rng[name] = rng_states()  # where a plain run of this strategy starts its fit
    if next(iter(runs.values())).trainer.world_size > 1:  # each rank would judge its own shard of val
        raise ConfigError(auto.ONE_PROCESS)
    head_only = [n for n in names if head_only_epochs(runs[n]) == runs[n].schedule.total_epochs]
    pilots = {n: Pilot(n, runs[n], best[n]) for n in names if n not in head_only}
    standings, features = {}, None
    for name in head_only:  # before any pilot trains: the probe sees the pretrained backbone
        standings[name], features = probe_standing(name, runs[name])
    if not head_only:
        _, features = probe_standing("probe", next(iter(runs.values())))
    alive, rungs = successive_halving(pilots, standings, float(spec["budget"]), float(spec["pilot_cap"]))
    winner, runner_up = auto.choose(alive)
    dm = next(iter(runs.values())).datamodule
    sizes = dm.sizes()
    decision = Decision(
        strategy=winner.strategy,
        reason=f"{sizes['train']} training images, {dm.num_classes} classes: "
        + auto.explain(winner, runner_up, sizes["val"]),
        train_images=sizes["train"],
        num_classes=dm.num_classes,
        method="evidence",
        runner_up=runner_up.strategy if runner_up else None,
        evidence=[s.as_dict(auto.paired_noise(winner, s)) for s in alive],
        features=features.as_dict(),
        seconds=round(time.perf_counter() - started, 2),
        rungs=rungs,
    )
    write_text(out / DECISION, json.dumps(decision.as_dict(), indent=2))
    log.info("strategy=auto: %s", decision.reason)
    if winner.strategy in pilots:
        return pilots[winner.strategy].continuation(out, decision)
    set_rng_states(built_rng[winner.strategy])  # the pilots drew from the generators: train as a plain run would
    return dataclasses.replace(runs[winner.strategy], out=out, decision=decision)
