"""An exponential moving average (EMA) of the weights (`ema=<horizon>`): validated, saved as the model, resumed."""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)


class WeightEMA(WeightAveraging):
    """Lightning's weight averaging with an EMA whose window is a fraction of the whole schedule's optimizer steps.

    A fixed per-step decay (timm's 0.9998) is a different window at every data size: 100 images make 30 steps
    in a 30-epoch run at batch 64, and a decay of 0.999 would keep the starting weights. Here the time constant,
    1 / (1 - decay) steps, is `horizon` times the steps of the whole schedule (every phase), so it means the same
    at any size. Every parameter and buffer is averaged, frozen ones too (they do not move, so the average is them).

    From Lightning: validation (and so the best checkpoint) sees the averaged weights; a checkpoint holds the
    average as its `state_dict`, which test, evaluate, predict and export load, and the raw weights under
    `current_model_state`, from which a resumed fit trains on.
    """

    def __init__(self, horizon: float, total_epochs: int):
        super().__init__(avg_fn=self._average)
        self.horizon, self.total_epochs = horizon, total_epochs
        self.decay = 0.0

    def _average(self, averaged, current, num_averaged):
        return self.decay * averaged + (1.0 - self.decay) * current

    def on_train_start(self, trainer, pl_module) -> None:
        steps = max(1, trainer.num_training_batches // trainer.accumulate_grad_batches) * self.total_epochs
        self.decay = 1.0 - 1.0 / max(1.0, self.horizon * steps)
        log.info("ema=%g: weight EMA, decay %.4f per step (%d steps in the schedule)", self.horizon, self.decay, steps)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Only a fit restores the raw weights. Lightning calls this for test(ckpt_path=...) as well, where it would
        # swap the raw weights in for the average that the checkpoint's state_dict already holds.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
