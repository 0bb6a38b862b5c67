"""Per-epoch record of a run (phase, train/val loss and accuracy) for metrics.json and learning curves."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback


class EpochHistory(Callback):
    """Collects the epoch-level metrics Lightning has logged, one row per finished training epoch."""

    KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/f1")

    def __init__(self, phase_of_epoch):
        self.phase_of_epoch = phase_of_epoch
        self.rows: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        logged = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch, "phase": self.phase_of_epoch(trainer.current_epoch)}
        row.update({k: round(float(logged[k]), 6) for k in self.KEYS if k in logged})
        self.rows.append(row)

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state.get("rows", []))
