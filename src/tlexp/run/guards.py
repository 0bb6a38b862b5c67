"""Stop a run that goes wrong: a loss that is no longer a number, a fit that trained nothing."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from tlexp.config.errors import DISK_ERRNOS, ConfigError, Stopped, TrainingDiverged, out_of_space
from tlexp.model.phases import PhaseSchedule


class StopOnNonFinite(Callback):
    """A NaN / inf training loss stops the run with the epoch, step, phase and the last good checkpoint.

    Checked before backward, so the weights and the checkpoints on disk never see the bad step.
    """

    def __init__(self, schedule: PhaseSchedule, last_path: str | Path):
        self.schedule = schedule
        self.last_path = Path(last_path)

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss).all()):
            return
        index = self.schedule.current or 0
        phase = self.schedule.phases[index]
        lrs = ", ".join(f"{g} {lr:.1e}" for g, lr in phase.lr.items())
        if self.last_path.is_file():
            kept = f"The last good checkpoint is {self.last_path}; it is kept."
        else:
            kept = "No checkpoint had been written yet (the first epoch had not finished)."
        raise TrainingDiverged(
            f"the training loss became {loss.item()} at epoch {trainer.current_epoch}, global step "
            f"{trainer.global_step}, in phase {index + 1} '{phase.name}' (lr {lrs}). Training stopped. {kept} "
            f"Lower this phase's learning rate (strategy.phases.{index}.lr) or check the data for bad values."
        )


class RequireTraining(Callback):
    """A fit that ran no optimizer step is an error, not an untrained model tested and recorded as a result.

    Lightning skips training without a word when every rank's loader is empty (a rank's share of the images
    smaller than a batch with drop_last, more devices than the data can feed) or `limit_train_batches=0`.
    """

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.global_step == 0:
            raise ConfigError(no_training_reason(trainer))


def no_training_reason(trainer) -> str:
    """Why a fit ran no step, with the figures that decide it and what to change."""
    limit = trainer.limit_train_batches
    if limit == 0:
        return (
            f"trainer.limit_train_batches={limit}: no training batch was run, so there is no trained model to test. "
            "Set trainer.limit_train_batches to a fraction > 0 or a count >= 1 (1.0 = every batch)."
        )
    loader = trainer.train_dataloader
    world = trainer.world_size
    images = len(loader.dataset) if loader is not None and hasattr(loader, "dataset") else None
    sampler = getattr(loader, "sampler", None)
    share = len(sampler) if hasattr(sampler, "__len__") else (math.ceil(images / world) if images else None)
    batch = getattr(loader, "batch_size", None)
    drop_last = getattr(loader, "drop_last", None)
    return (
        f"no training step ran: {images} training images over {world} process(es) (world size) is {share} per "
        f"rank, batch size {batch}, drop_last={drop_last}, trainer.limit_train_batches={limit}, so each rank has "
        f"{trainer.num_training_batches} batches an epoch. Lower data.batch_size (to at most the per-rank share), "
        "train on fewer devices (trainer.devices), or use more training images (dataset.per_class / train_size)."
    )


@contextmanager
def stop_cleanly(out: Path) -> Iterator[None]:
    """SIGTERM outside Lightning's fit loop (data checks, the feature pass, the probe, test, the report) and a disk
    that refuses a write end the run with one message saying what survives in `out` and how to go on.

    Inside fit, Lightning installs its own SIGTERM handler (which calls this one too): there it stops at the end of
    the batch and RunState saves last.ckpt, so this handler stands aside.
    """

    def on_sigterm(signum, frame) -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            raise Stopped(f"stopped by SIGTERM outside the training loop. {what_survives(out)}")

    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    try:
        yield
    except OSError as err:
        if err.errno in DISK_ERRNOS:
            raise out_of_space(err, what_survives(out)) from err
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def what_survives(out: Path) -> str:
    """How to go on from what a stopped run left in `out`."""
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        return f"Its last checkpoint is {last}. Continue with: python -m tlexp.train resume={out}"
    return (
        f"No checkpoint had been written in {out} yet, so there is nothing to resume: start the run again "
        "(features already computed are cached and reused)."
    )
