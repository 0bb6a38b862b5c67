"""Runs that cannot fail quietly: no training is an error, what ran is recorded, finished runs and written
files are never overwritten, and long runs say what they are doing."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from tlexp.config.errors import ConfigError
from tlexp.evaluation.calibration import calibrate, fit_temperature, nll
from tlexp.run import atomic
from tlexp.run.atomic import AtomicCheckpointIO, atomic_open, atomic_path, write_text
from tlexp.run.guards import RequireTraining, no_training_reason
from tlexp.run.resume import check_resume_argv
from tlexp.train import train

from .conftest import compose_cfg
from .test_cli import ROOT

FAST = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1")
ONE_EPOCH = ("strategy=feature_extraction", "strategy.phases.0.epochs=1", "cache.mode=off")


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _cfg(tmp: Path, tiny_weights: Path, *overrides: str):
    return compose_cfg(
        "model=test_resnet",
        f"model.weights={tiny_weights}",
        "dataset=synthetic",
        "data.batch_size=16",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        "report.enabled=false",
        "report.train_batch_preview=0",
        f"output_dir={tmp / 'run'}",
        f"cache.dir={tmp / 'feature_cache'}",
        *overrides,
    )


class SeeCheckpointIO(Callback):
    def on_train_start(self, trainer, pl_module):
        self.io = trainer.strategy.checkpoint_io


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_weights) -> tuple[Path, SeeCheckpointIO]:
    """A finished 2-epoch run (metrics.json, config.yaml, best and last checkpoints)."""
    tmp = tmp_path_factory.mktemp("finished")
    seen = SeeCheckpointIO()
    cfg = _cfg(tmp, tiny_weights, "strategy=feature_extraction", "strategy.phases.0.epochs=2", *FAST)
    train(cfg, callbacks=[seen])
    return Path(cfg.output_dir), seen


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    run = tmp_path / "copy"
    shutil.copytree(finished[0], run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(finished[0]), str(run)))
    return run


# ------------------------------------------------------------ 1. a run that trains nothing fails


def test_limit_train_batches_zero_is_an_error_not_an_untrained_result(tiny_cfg):
    cfg = tiny_cfg(*ONE_EPOCH, "trainer.limit_train_batches=0")
    with pytest.raises(ConfigError, match=r"trainer.limit_train_batches=0: no training batch was run"):
        train(cfg)
    assert not (Path(cfg.output_dir) / "metrics.json").exists()


class _Linear(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_train_set_smaller_than_a_batch_under_drop_last_is_an_error_with_the_figures(tmp_path):
    data = TensorDataset(torch.randn(10, 2), torch.randint(0, 2, (10,)))
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[RequireTraining()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ConfigError) as err:
        trainer.fit(_Linear(), DataLoader(data, batch_size=16, drop_last=True))
    message = str(err.value)
    assert "10 training images over 1 process(es) (world size) is 10 per rank, batch size 16" in message
    assert "drop_last=True" in message and "0 batches an epoch" in message
    assert "Lower data.batch_size" in message and "fewer devices" in message


def test_the_reason_names_the_per_rank_share_under_ddp():
    data = TensorDataset(torch.randn(40, 2), torch.zeros(40, dtype=torch.long))
    loader = DataLoader(data, batch_size=16, drop_last=True, sampler=DistributedSampler(data, num_replicas=8, rank=0))
    trainer = SimpleNamespace(limit_train_batches=1.0, train_dataloader=loader, world_size=8, num_training_batches=0)
    message = no_training_reason(trainer)
    assert "40 training images over 8 process(es) (world size) is 5 per rank, batch size 16" in message


# ------------------------------------------------------------ 2. record what ran, warn when data is short


def test_metrics_record_the_precision_that_ran_and_the_real_counts_with_a_warning(tiny_cfg, caplog):
    # 16-mixed on a CPU: Lightning runs bf16-mixed (with its own warning); metrics.json must say bf16-mixed.
    cfg = tiny_cfg(*ONE_EPOCH, *FAST, "dataset.per_class=1000", "trainer.precision=16-mixed")
    with caplog.at_level(logging.WARNING, logger="tlexp"):
        metrics = train(cfg)
    written = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    assert written["precision"] == "bf16-mixed" and written["precision_requested"] == "16-mixed"
    assert written["dataset_requested"]["per_class"] == 1000
    counts = written["data_checks"]["class_counts"]["train"]
    assert sum(counts) == metrics["dataset_sizes"]["train"] and max(counts) < 1000
    warned = [r.getMessage() for r in caplog.records if "dataset.per_class=1000" in r.getMessage()]
    assert warned and "4 of 4 classes have fewer" in warned[0] and f"uses {sum(counts)} images" in warned[0]


# ------------------------------------------------------------ 3. resume never rewrites what was written


def test_resuming_a_finished_run_says_so_and_changes_nothing(run_copy, tiny_weights, capsys):
    before = _files(run_copy)
    with pytest.raises(SystemExit) as stop:
        check_resume_argv([f"resume={run_copy}"])  # the CLI's check, before Hydra touches the run dir
    assert stop.value.code == 0
    again = train(_cfg(run_copy.parent, tiny_weights, f"resume={run_copy}"))  # in-process callers too
    err = capsys.readouterr().err
    assert f"run {run_copy} is finished (metrics.json written " in err and "start a new run" in err
    assert again == json.loads(before["metrics.json"])
    assert _files(run_copy) == before


def test_resume_of_a_missing_dir_creates_nothing(tmp_path):
    missing = tmp_path / "no" / "such" / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "tlexp.train", f"resume={missing}"], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no such directory" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "no").exists()


def test_resume_from_a_truncated_last_ckpt_names_it_and_offers_the_best_one(run_copy, tiny_weights):
    (run_copy / "metrics.json").unlink()
    last = run_copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    best = next((run_copy / "checkpoints").glob("best-*.ckpt"))
    with pytest.raises(ConfigError) as err:
        train(_cfg(run_copy.parent, tiny_weights, f"resume={run_copy}"))
    message = str(err.value)
    assert f"{last} is damaged" in message and f"resume={run_copy} resume_from=best" in message
    assert best.name in message
    metrics = train(_cfg(run_copy.parent, tiny_weights, f"resume={run_copy}", "resume_from=best"))
    assert metrics["resumed"] and torch.load(last, weights_only=False)["epoch"] == 1  # last.ckpt whole again


# ------------------------------------------------------------ 4. atomic writes


def _save_half_then_fail(obj, f, *args, **kwargs):
    with open(f, "wb") as out:
        out.write(b"PK\x03\x04 half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_checkpoint_write_that_fails_leaves_no_file_under_its_name(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.torch, "save", _save_half_then_fail)
    new, old = tmp_path / "best-epoch=01.ckpt", tmp_path / "last.ckpt"
    old.write_bytes(b"the good one")
    for path in (new, old):
        with pytest.raises(OSError, match="No space left"):
            AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)
    assert not new.exists() and old.read_bytes() == b"the good one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left behind


def test_failed_text_writes_keep_the_old_file_and_good_ones_get_the_usual_mode(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half")
        raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png"  # same folder; the format stays readable
        raise RuntimeError
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_training_saves_checkpoints_through_the_atomic_writer(finished):
    assert isinstance(finished[1].io, AtomicCheckpointIO)


# ------------------------------------------------------------ 6, 8. what users see


def test_a_run_without_a_terminal_prints_a_line_per_epoch_and_no_lightning_noise(tiny_cfg, capfd, caplog):
    caplog.set_level(logging.INFO, logger="lightning")  # what Lightning's own handler would show outside pytest
    train(tiny_cfg("strategy=feature_extraction", "strategy.phases.0.epochs=2", *FAST))
    out, err = capfd.readouterr()
    err += caplog.text
    assert "`Trainer.fit` stopped: `max_epochs=2` reached" in err  # Lightning's other messages still show
    lines = [line for line in out.splitlines() if "epoch " in line and " s" in line]
    assert len(lines) == 2 and "phase head  epoch 1/2" in lines[0] and "epoch 2/2" in lines[1]
    assert "train loss " in lines[1] and "val acc " in lines[1]
    for noise in ("Tip", "litlogger", "GPU available", "TPU available", "HPU available"):
        assert noise not in out + err


# ------------------------------------------------------------ 7. temperature scaling


def test_temperature_scaling_is_skipped_on_a_perfect_val_set_and_says_why():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=gen)
    logits = torch.randn(200, 4, generator=gen) + 3 * nn.functional.one_hot(labels, 4)
    perfect = logits + 10 * nn.functional.one_hot(labels, 4)
    assert fit_temperature(perfect, labels) < 1  # the fit can only sharpen: on to the floor, given the steps
    assert "classified perfectly" in calibrate(perfect, labels)["temperature_skipped"]
    assert "too few" in calibrate(logits[:20], labels[:20])["temperature_skipped"]
    noise = 100 * torch.randn(200, 4, generator=gen)  # confident and unrelated to the labels: T runs to its ceiling
    assert "ran to its bound" in calibrate(noise, labels)["temperature_skipped"]
    fitted = calibrate(logits, labels)
    assert "temperature_skipped" not in fitted and nll(logits, labels, fitted["temperature"]) <= nll(logits, labels)
