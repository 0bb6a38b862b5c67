"""What a run shows while it works: plain progress lines where there is no terminal, and no start-up noise."""

from __future__ import annotations

import logging
import sys
import time

from lightning.pytorch.callbacks import Callback

# Lightning's start-up lines that say nothing about this run: advertisements, absent hardware, the meaning of
# `limit_*=1`. Matched by their start, on the one logger that emits them, so every other message still shows.
NOISE = ("💡 Tip:", "GPU available:", "TPU available:", "HPU available:", "`Trainer(limit_", "`Trainer(val_check")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE)


def quiet_lightning() -> None:
    """Drop Lightning's start-up tips and hardware lines (idempotent; call once at start-up)."""
    # rank_zero_info logs through whichever of the two last set lightning_utilities' module logger.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())


class PlainProgress(Callback):
    """One line per epoch (phase, epoch i/n, train loss, val acc, seconds), and a line at most every
    `interval` seconds inside a long epoch, for logs that a progress bar would fill with carriage returns."""

    def __init__(self, schedule=None, interval: float = 60.0, stream=None):
        self.schedule, self.interval, self.stream = schedule, interval, stream
        self._epoch_start = self._last_line = 0.0
        self._loss_sum, self._batches = 0.0, 0

    def _print(self, trainer, text: str) -> None:
        if trainer.is_global_zero:
            print(text, file=self.stream or sys.stdout, flush=True)

    def _where(self, trainer) -> str:
        epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        if self.schedule is None or self.schedule.current is None:
            return epoch
        return f"phase {self.schedule.phases[self.schedule.current].name}  {epoch}"

    def on_train_start(self, trainer, pl_module) -> None:
        # A run resumed mid-epoch starts inside an epoch: Lightning calls no on_train_epoch_start for it.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._last_line = time.perf_counter()
        self._loss_sum, self._batches = 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:  # summed as a tensor: a float() per batch would wait for the GPU every step
            self._loss_sum, self._batches = self._loss_sum + getattr(loss, "detach", lambda: loss)(), self._batches + 1
        now = time.perf_counter()
        if now - self._last_line >= self.interval:
            self._last_line = now
            mean = float(self._loss_sum) / max(self._batches, 1)
            total = trainer.num_training_batches
            self._print(
                trainer,
                f"  {self._where(trainer)}  batch {batch_idx + 1}/{total}  train loss {mean:.4f}  "
                f"{now - self._epoch_start:.0f} s",
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = trainer.callback_metrics
        parts = [self._where(trainer)]
        for key, name in (("train/loss", "train loss"), ("val/loss", "val loss"), ("val/acc", "val acc")):
            if key in metrics:
                parts.append(f"{name} {float(metrics[key]):.4f}")
        parts.append(f"{time.perf_counter() - self._epoch_start:.1f} s")
        self._print(trainer, "  ".join(parts))


def plain_progress(trainer_args: dict, schedule=None) -> list[Callback]:
    """[PlainProgress] with the progress bar turned off in `trainer_args` when stdout is not a terminal (CI,
    nohup, SLURM: the bar would show nothing until the end); [] on a terminal, where the bar is better."""
    if sys.stdout.isatty():
        return []
    trainer_args["enable_progress_bar"] = False
    return [PlainProgress(schedule)]
