"""ema=<horizon>: validation, the best checkpoint and test see the weight average; a resumed run continues both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tlexp.config.errors import ConfigError
from tlexp.train import train

from .test_resume import FAST, _ckpt, whole_crashed_resumed

HEAD = "head.1.weight"
# 2 epochs x 2 steps = 4 steps; horizon 0.5 -> a time constant of 2 steps -> decay 0.5 per step
EMA_RUN = ("strategy=finetune", "strategy.phases.0.epochs=2", "ema=0.5", "trainer.deterministic=true", *FAST)


class HeadWatch(Callback):
    """The head's weights after every optimizer step, when validation runs, and when test runs."""

    def __init__(self):
        self.steps, self.at_val, self.at_test = [], [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(pl_module.state_dict()[HEAD].clone())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and not trainer.sanity_checking:
            self.at_val.append(pl_module.state_dict()[HEAD].clone())

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self.at_test = pl_module.state_dict()[HEAD].clone()


def ema_of(steps: list[torch.Tensor], decay: float) -> torch.Tensor:
    average = steps[0]  # the first update copies the weights
    for w in steps[1:]:
        average = decay * average + (1 - decay) * w
    return average


def test_validation_and_checkpoints_hold_the_ema_of_the_weights_after_each_step(tiny_cfg):
    watch = HeadWatch()
    cfg = tiny_cfg(*EMA_RUN)
    train(cfg, [watch])
    assert len(watch.steps) == 4
    assert torch.allclose(watch.at_val[0], ema_of(watch.steps[:2], 0.5), atol=1e-6)  # epoch 0 validates the average
    assert torch.allclose(watch.at_val[1], ema_of(watch.steps, 0.5), atol=1e-6)
    last = _ckpt(Path(cfg.output_dir))
    assert torch.allclose(last["state_dict"][HEAD], ema_of(watch.steps, 0.5), atol=1e-6)  # the model to load
    assert torch.equal(last["current_model_state"][HEAD], watch.steps[-1])  # the raw weights, for resume
    assert not torch.allclose(watch.steps[-1], ema_of(watch.steps, 0.5))


def test_test_runs_on_the_average_from_the_best_checkpoint(tiny_cfg):
    watch = HeadWatch()
    cfg = tiny_cfg(*EMA_RUN)
    metrics = train(cfg, [watch])
    best = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)
    assert torch.equal(watch.at_test, best["state_dict"][HEAD])
    assert not torch.equal(watch.at_test, best["current_model_state"][HEAD])


def test_a_resumed_run_continues_the_average_and_the_raw_weights_exactly(tiny_cfg, tmp_path):
    a, crashed, b = whole_crashed_resumed(tiny_cfg, tmp_path, *EMA_RUN)
    assert crashed["global_step"] == 2  # 2 of the 4 steps
    for key in ("state_dict", "current_model_state"):
        assert torch.equal(a[key][HEAD], b[key][HEAD]), key


def test_ema_outside_0_1_is_a_clear_error(tiny_cfg):
    with pytest.raises(ConfigError, match="ema=1.5"):
        train(tiny_cfg("ema=1.5"))
