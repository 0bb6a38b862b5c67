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
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from tlexp.auto.pilots import select
from tlexp.config.cli import compose_config
from tlexp.config.errors import Stopped, exit_on_user_error
from tlexp.features.probe import linear_probe
from tlexp.run import folds
from tlexp.run.atomic import write_text
from tlexp.run.build import Run, build_run, check_config, init_head, plain
from tlexp.run.claim import abandon, claim_run_dir
from tlexp.run.guards import stop_cleanly
from tlexp.run.lr_find import find_lr
from tlexp.run.record import Outcome, record
from tlexp.run.resume import check_resume_argv, check_resume_overrides, finished_run, in_place

from .auto import uses_pilots
from .evaluation import unknown as unknown_inputs
from .evaluation.report import collect_logits, evaluate

log = logging.getLogger("tlexp")


def train(cfg: DictConfig, callbacks: list | None = None) -> dict:
    """Train and test one configuration; returns the metrics also written to `metrics.json`.

    `callbacks` are added to the Trainer (tests use them to watch phases epoch by epoch).
    With `resume=<run dir>`, the run continues from its `checkpoints/last.ckpt` with its own config.
    """
    if cfg.get("resume") and (saved := folds.saved_parent(Path(str(cfg.resume)).expanduser())) is not None:
        saved.output_dir = str(Path(str(cfg.resume)).expanduser())
        return folds.cross_validate(saved, train)  # finished folds are read back, an interrupted one continues
    if folds.is_parent(cfg):
        return folds.cross_validate(cfg, train)
    if cfg.get("resume") and (done := finished_run(cfg.resume)) is not None:
        return done  # a finished run: its files stay as they are
    with stop_cleanly(Path(str(cfg.get("resume") or cfg.output_dir)).expanduser()):
        # strategy=auto with a budget chooses by probe and pilots; with budget 0 build_run applies the size rule
        run = select(cfg, callbacks) if uses_pilots(plain(cfg.strategy)) else build_run(cfg, callbacks)
        return record(run, fit_and_test(run))


def fit_and_test(run: Run) -> Outcome:
    """Fit with the phase schedule, test the best checkpoint, then the evaluation report and the probe."""
    trainer, module, datamodule = run.trainer, run.module, run.datamodule
    if run.decision is not None:
        run.logger.experiment.add_text("strategy/auto", run.decision.reason, 0)
    started = time.perf_counter()
    head_init = init_head(run)  # part of the fit: LP-FT's linear probe
    lr_found = find_lr(run) if run.cfg.get("lr_find") and run.resume_from is None else None  # not part of it
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=run.resume_from)
    except SIGTERMException:  # a SystemExit with status 0: a stopped run must not look like a finished one
        sys.exit(128 + signal.SIGTERM)
    fit_seconds = time.perf_counter() - started - (lr_found["seconds"] if lr_found else 0.0)
    # Copied before test(): restoring the best checkpoint restores callback state too.
    phase_history, epochs = list(run.schedule.history), list(run.curves.rows)
    best, best_loss, tied = run.best.best_model_path or None, run.best.best_loss, run.best.tied
    started = time.perf_counter()
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test_seconds = time.perf_counter() - started
    logits = run.module.test_logits() if trainer.world_size == 1 else None  # under DDP a rank holds a shard
    if run.datamodule.fold is not None and trainer.is_global_zero:
        out_of_fold(run)
    found_unknown = unknown(run, best)  # before the report: it reads val with the best weights, as the report does
    return Outcome(
        fit_seconds,
        test_seconds,
        best,
        test,
        phase_history,
        epochs,
        report(run),
        probe(run),
        head_init,
        lr_found,
        logits,
        best_loss,
        tied,
        unknown=found_unknown,
    )


def out_of_fold(run: Run) -> None:
    """cv.fold: the probabilities the best model gives its val fold, images it never trained on."""
    dm = run.datamodule
    val_logits, labels = collect_logits(
        run.module, dm.evaluation_loader("val"), run.trainer.strategy.root_device, run.trainer.limit_val_batches
    )
    ids = dm.splits["val"].ids()[: len(labels)]
    folds.write_out_of_fold(run.out, ids, labels, val_logits, dm.class_names, dm.fold.as_dict())


def report(run: Run) -> dict | None:
    """The evaluation report of the best checkpoint (the module holds its weights since trainer.test)."""
    cfg, trainer = run.cfg.report, run.trainer
    if not (cfg.enabled and trainer.is_global_zero):  # under DDP the report comes from rank 0 alone
        return None
    evaluation = evaluate(
        run.module,
        run.datamodule,
        run.out / "evaluation",
        run.logger.experiment,
        "test",
        cfg.temperature,
        cfg.top_losses,
        device=trainer.strategy.root_device,  # Lightning hands the module back on the CPU after test
        limits={"test": trainer.limit_test_batches, "val": trainer.limit_val_batches},
        # The test pass's own logits; under DDP each rank holds a shard, so the report runs its own pass.
        logits=run.module.test_logits() if trainer.world_size == 1 else None,
        gradcam=bool(cfg.get("gradcam", True)),  # top_losses_gradcam.png
    )
    return {k: v for k, v in evaluation.items() if k != "reliability_bins"}


def unknown(run: Run, best: str | None) -> dict | None:
    """The 'unknown' threshold of the best model, chosen on val only (report.unknown_reject of it rejected), kept in
    its checkpoint with the training features it measures to; rank 0, where a best checkpoint exists."""
    reject, trainer, dm = float(run.cfg.report.get("unknown_reject", 0.0)), run.trainer, run.datamodule
    if not (reject > 0 and best and trainer.is_global_zero):
        return None
    prepare = (lambda x: dm.batch_augment(x, train=False)) if dm.batch_augment is not None else None
    val = unknown_inputs.collect(
        run.module, dm.evaluation_loader("val"), trainer.strategy.root_device, trainer.limit_val_batches, prepare
    )
    bank = unknown_inputs.training_bank(run.module, dm, run.cache, run.cfg.seed, trainer.limit_train_batches)
    found = unknown_inputs.fit(val[1], val[2], reject, str(run.cfg.report.get("unknown_score", "knn")), val[0], bank)
    unknown_inputs.write_into_checkpoint(best, found, bank)
    return found


def probe(run: Run) -> dict | None:
    """linear_probe=true: an L-BFGS logistic regression on the cached features, a baseline row."""
    if not run.cfg.get("linear_probe"):
        return None
    return linear_probe(*(run.cache.features(s) for s in ("train", "val", "test")), run.datamodule.num_classes)


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
        cfg, again = in_place(cfg)
        if again:
            print(f"this run {again}", flush=True)
        return objective(cfg, train(cfg))
    except Stopped:  # SIGTERM stops the sweep, not just this run
        raise
    except Exception as err:  # noqa: BLE001 - any failure of one run is recorded, not raised
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        failure = {"error": str(err), "type": type(err).__name__, "traceback": traceback.format_exc()}
        write_text(out / "error.json", json.dumps(failure, indent=2))
        log.error("run %s failed (%s): %s; the sweep goes on", out, type(err).__name__, err)
        return None


def start(argv: list[str]) -> list[str]:
    """Before Hydra writes anything: every check that can refuse the command line (a bad value, a resume that
    cannot or need not run, a directory that holds a run), then the command line with the claimed run directory.
    A multirun is checked once on its fixed values (a value wrong for every run is refused before the sweep);
    Hydra's other flags (--cfg, --help, ...) are left to Hydra."""
    if not folds.resumes_parent(argv):  # resume=<a cross-validation run>: its folds say what is left
        check_resume_argv(argv)
    flags = {a for a in argv if a.startswith("-")}
    if flags - {"-m", "--multirun"}:
        return argv
    config = compose_config("train", fixed_values(argv))
    if not config.get("resume"):
        check_config(config)
    return argv if flags else claim_run_dir(argv)


def fixed_values(argv: list[str]) -> list[str]:
    """The overrides that are one value (not a sweep's comma list, range or interval)."""
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return overrides  # composing them gives the message, with a hint to quote
    return [o.input_line for o in parsed if not o.is_sweep_override()]


@hydra.main(version_base="1.3", config_path="pkg://tlexp.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("resume"):
        exit_on_user_error(check_resume_overrides)(list(HydraConfig.get().overrides.task))
    if _in_sweep():
        return exit_on_user_error(train_in_sweep)(cfg)
    try:
        return objective(cfg, exit_on_user_error(train)(cfg))
    finally:
        abandon(Path(str(cfg.output_dir)))


if __name__ == "__main__":
    sys.argv[1:] = exit_on_user_error(start)(sys.argv[1:])
    main()
