"""No lost work: last.ckpt every epoch and on Ctrl-C / SIGTERM, resume into the same phase, NaN stops cleanly."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from tlexp.config.errors import ConfigError, TrainingDiverged
from tlexp.run.resume import check_resume_overrides
from tlexp.train import train

from .conftest import short_phases

FAST = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1")


class StopAt(Callback):
    """Stops the run at (epoch, batch) the way a user or a cluster would."""

    def __init__(self, epoch: int, batch: int, how: str):
        self.epoch, self.batch, self.how = epoch, batch, how

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            if self.how == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning stops at the end of this batch


class FirstBatchSteps(Callback):
    """AdamW's step count of a group's parameters at the first batch a run trains (after the phase is applied)."""

    def __init__(self, group: str):
        self.group, self.steps = group, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.steps is None:
            state = trainer.optimizers[0].state
            self.steps = [float(state[p]["step"]) if "step" in state[p] else 0.0 for p in pl_module.groups[self.group]]


def _ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


class Crash(Callback):
    """Dies as a killed process would, right after epoch 0's checkpoint: nothing more is saved."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise MemoryError("killed")


def whole_crashed_resumed(tiny_cfg, tmp_path: Path, *overrides: str) -> tuple[dict, dict, dict]:
    """last.ckpt of an uninterrupted run; of the same run crashed after epoch 0; and of that run resumed."""
    whole = tiny_cfg(*overrides, f"output_dir={tmp_path / 'whole'}")
    train(whole)
    cut = tiny_cfg(*overrides, f"output_dir={tmp_path / 'cut'}")
    with pytest.raises(MemoryError):
        train(cut, callbacks=[Crash()])
    crashed = _ckpt(Path(cut.output_dir))
    train(tiny_cfg(f"resume={cut.output_dir}"))
    return _ckpt(Path(whole.output_dir)), crashed, _ckpt(Path(cut.output_dir))


def test_ctrl_c_saves_last_ckpt_and_resume_lands_in_the_same_phase(tiny_cfg, capsys):
    cfg = tiny_cfg("strategy=gradual", short_phases("gradual", epochs=1), *FAST)
    run = Path(cfg.output_dir)
    with pytest.raises(SystemExit):
        train(cfg, callbacks=[StopAt(epoch=1, batch=1, how="ctrl-c")])  # mid-epoch, in phase 2
    ckpt = _ckpt(run)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 3
    assert ckpt["callbacks"]["PhaseSchedule"]["phase_index"] == 1
    assert f"resume={run}" in capsys.readouterr().err
    assert not (run / "metrics.json").exists()

    first = FirstBatchSteps("stage4")
    metrics = train(tiny_cfg(f"resume={run}"), callbacks=[first])
    # Resumed inside phase 2's first epoch: stage4's optimizer state from that epoch's first step is kept, not reset
    # as at a phase's start (the phase index in the checkpoint says the phase had begun).
    assert first.steps and set(first.steps) == {1.0}
    assert metrics["resumed"] and _ckpt(run)["global_step"] == 3 * 2
    history = metrics["phase_history"]
    assert [(h["epoch"], h["phase"]) for h in history] == [(0, 0), (1, 1), (2, 2)]
    assert history[1]["trainable"]["stage4"] and not history[1]["trainable"]["stage3"]
    assert all(history[2]["trainable"].values()) and history[2]["lr"]["stem"] == pytest.approx(1e-5)


def test_sigterm_stops_after_the_batch_and_saves_last_ckpt(tiny_cfg, capsys):
    cfg = tiny_cfg("strategy=feature_extraction", "strategy.phases.0.epochs=2", *FAST)
    with pytest.raises(SystemExit) as stop:
        train(cfg, callbacks=[StopAt(epoch=1, batch=0, how="sigterm")])
    assert stop.value.code == 128 + signal.SIGTERM  # 143, as a shell reports a SIGTERM'd process; not 0
    ckpt = _ckpt(Path(cfg.output_dir))
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 3  # batch 0 of epoch 1 finished, then the stop
    assert "stopped by SIGTERM at epoch 1" in capsys.readouterr().err


def test_resume_continues_in_the_run_dir_from_the_last_epoch(tiny_cfg):
    cfg = tiny_cfg("strategy=feature_extraction", "strategy.phases.0.epochs=2", "strategy.phases.0.lr=1e-9", *FAST)
    run = Path(cfg.output_dir)
    train(cfg)  # with lr ~0, val/acc cannot improve after epoch 0: last.ckpt must still follow every epoch
    assert _ckpt(run)["epoch"] == 1
    first = json.loads((run / "metrics.json").read_text())
    again = train(tiny_cfg(f"resume={run}"))  # a finished run: nothing left to train, same test result
    assert again["test"] == first["test"] and again["epochs"] == 2
    assert _ckpt(run)["global_step"] == 2 * 2


def test_resume_errors_are_clear(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="not a tlexp run directory"):
        train(tiny_cfg(f"resume={tmp_path}"))
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="checkpoints/last.ckpt yet"):
        train(tiny_cfg(f"resume={tmp_path}"))
    with pytest.raises(ConfigError, match="drop these overrides: data.batch_size=8"):
        check_resume_overrides(["resume=/x", "data.batch_size=8", "hydra.run.dir=/y"])


def test_nan_loss_stops_naming_epoch_step_phase_and_keeps_the_last_checkpoint(tiny_cfg):
    class Poison(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 1:
                with torch.no_grad():
                    pl_module.head[1].weight.fill_(float("nan"))

    cfg = tiny_cfg("strategy=feature_extraction", "strategy.phases.0.epochs=2", *FAST)
    last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(TrainingDiverged) as err:
        train(cfg, callbacks=[Poison()])
    message = str(err.value)
    assert "became nan at epoch 1, global step 3, in phase 1 'head'" in message
    assert f"last good checkpoint is {last}" in message
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_a_sweep_run_again_in_place_reads_back_resumes_or_restarts(tmp_path):
    from tlexp.run.resume import in_place

    def run_dir(name: str, strategy: str, *files: str) -> DictConfig:
        out = tmp_path / name
        cfg = OmegaConf.create({"output_dir": str(out), "resume": None, "strategy": {"name": strategy}})
        for f in ("config.yaml", *files):
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            (out / f).write_text(OmegaConf.to_yaml(cfg) if f == "config.yaml" else "{}")
        return cfg

    new = OmegaConf.create({"output_dir": str(tmp_path / "new"), "resume": None})
    assert in_place(new) == (new, None)
    other = run_dir("other", "finetune", "metrics.json")
    other.strategy.name = "gradual"  # the same dir, another configuration: not this sweep's run
    with pytest.raises(ConfigError, match=r"holds a run made with another config \(strategy.name differ"):
        in_place(other)
    cfg, said = in_place(run_dir("done", "finetune", "metrics.json"))
    assert cfg.resume == str(tmp_path / "done") and "read back" in said
    cfg, said = in_place(run_dir("killed", "finetune", "checkpoints/last.ckpt"))
    assert cfg.resume == str(tmp_path / "killed") and "continuing from its last.ckpt" in said
    # an auto run's pilots would resume under another rung schedule: it starts again, its pilots cleared
    cfg, said = in_place(run_dir("auto", "auto", "auto.json", "pilots/finetune/checkpoints/last.ckpt"))
    assert cfg.resume is None and "starting it again" in said
    assert not (tmp_path / "auto" / "pilots").exists() and not (tmp_path / "auto" / "auto.json").exists()
