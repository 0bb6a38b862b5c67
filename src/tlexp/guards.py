"""Stop a run whose loss is no longer a number, before the bad step touches the weights."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from .errors import TrainingDiverged
from .phases import PhaseSchedule


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
