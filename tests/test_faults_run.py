"""Faults of a run as a user starts it (issue 27): multi-process training from the command line, refusals that
write nothing, and claims on a run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tlexp.config.errors import ConfigError
from tlexp.run.claim import CLAIM, claim_run_dir

from .test_cli import ROOT, run_cli

TINY_RUN = ("model=test_resnet", "dataset=synthetic", "data.batch_size=16", "trainer.enable_progress_bar=false")


def _tree(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_ddp_from_the_command_line_trains_and_resumes_after_kill_9(tmp_path, tiny_weights):
    """`trainer=ddp_cpu` as a user types it: Lightning starts rank 1 by running the command again into the same
    run directory; killed after its first epoch, `resume=` continues it to the end under two processes again."""
    run = tmp_path / "run"
    args = [
        *TINY_RUN,
        "trainer=ddp_cpu",
        f"model.weights={tiny_weights}",
        "strategy=feature_extraction",
        "strategy.phases.0.epochs=3",
        "cache.mode=off",
        "report.enabled=false",
        f"hydra.run.dir={run}",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "tlexp.train", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # both ranks: they share the session
    _, err = first.communicate()
    assert last.is_file(), err[-3000:]
    assert not (run / "metrics.json").exists(), "the run finished before it could be killed"

    resumed = run_cli(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["world_size"] == 2
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1 ran, in the same directory
    assert not (run / CLAIM).exists()


def test_a_refused_run_leaves_the_hydra_files_and_log_of_the_run_it_refused(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    for name, text in {
        "config.yaml": "seed: 3\n",
        ".hydra/config.yaml": "dataset: {name: mine}\n",
        ".hydra/overrides.yaml": "- seed=3\n",
        ".hydra/hydra.yaml": "hydra: {}\n",
        "train.log": "the first run's log\n",
    }.items():
        (run / name).write_text(text)
    before = _tree(run)
    proc = run_cli("dataset=synthetic", f"hydra.run.dir={run}", timeout=60)
    assert proc.returncode == 2 and "already holds an interrupted run" in proc.stderr
    assert "nothing was written" in proc.stderr
    assert _tree(run) == before


def test_a_bad_value_writes_no_run_directory(tmp_path):
    proc = run_cli("strategy=finetune", "epoch_scale=0", f"hydra.run.dir={tmp_path / 'run'}", timeout=60)
    assert proc.returncode == 2 and "epoch_scale" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_directory_claimed_by_a_running_process_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / CLAIM).write_text(f"{os.uname().nodename} {os.getpid()}\n")  # this test's process: alive
    with pytest.raises(ConfigError, match=f"claimed a moment ago by another run that is still running.*{os.getpid()}"):
        claim_run_dir([f"hydra.run.dir={run}"])
    assert os.listdir(run) == [CLAIM]


def test_a_claim_left_by_a_process_that_ended_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / CLAIM).write_text(f"{os.uname().nodename} {gone.stdout.strip()}\n")
    assert claim_run_dir([f"hydra.run.dir={run}"]) == [f"hydra.run.dir={run}"]
    assert (run / CLAIM).read_text().split() == [os.uname().nodename, str(os.getpid())]


def test_two_runs_in_the_same_second_get_two_default_directories(tmp_path, monkeypatch):
    from tlexp.run import claim

    monkeypatch.chdir(tmp_path)
    assert claim.default_run_dir(["strategy=finetune"]).endswith("_finetune_efficientnet_lite0")  # Hydra's pattern
    monkeypatch.setattr(claim, "default_run_dir", lambda argv: "outputs/2026-01-01/10-00-00_finetune_m")  # one second
    runs = [claim_run_dir(["strategy=finetune"])[-1] for _ in range(3)]
    base = "hydra.run.dir=outputs/2026-01-01/10-00-00_finetune_m"
    assert runs == [base, f"{base}_2", f"{base}_3"]
    assert all(Path(r.split("=", 1)[1], CLAIM).is_file() for r in runs)


def test_ranks_above_zero_join_the_directory_rank_zero_claimed(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 1\n")  # rank 0 has started the run
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert claim_run_dir([f"hydra.run.dir={run}"]) == [f"hydra.run.dir={run}"]


def test_evaluate_reads_the_dataset_from_the_runs_own_config_not_hydras(tmp_path):
    from omegaconf import OmegaConf

    from tlexp.evaluate import dataset_config

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "config.yaml").write_text("dataset: {name: synthetic, source: synthetic}\n")
    (run / ".hydra" / "config.yaml").write_text("dataset: {name: imagefolder, root: /elsewhere}\n")  # a later start
    assert dataset_config(OmegaConf.create({}), run / "checkpoints" / "best.ckpt")["name"] == "synthetic"


# ------------------------------------------------------------ resume and the run's config.yaml


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_weights) -> Path:
    """A run stopped after its last epoch's checkpoint, before its record (metrics.json) was written."""
    from tlexp.train import train

    from .conftest import compose_cfg

    tmp = tmp_path_factory.mktemp("interrupted")
    cfg = compose_cfg(
        *TINY_RUN,
        f"model.weights={tiny_weights}",
        "data.num_workers=0",
        "report.enabled=false",
        "report.train_batch_preview=0",
        "strategy=feature_extraction",
        "strategy.phases.0.epochs=1",
        "cache.mode=off",
        "trainer.limit_train_batches=2",
        f"output_dir={tmp / 'run'}",
    )
    train(cfg)
    (tmp / "run" / "metrics.json").unlink()
    return tmp / "run"


@pytest.fixture
def stopped(interrupted, tmp_path) -> Path:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    return run


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda t: t.replace("test_resnet.r160_in1k", "resnet18"), "model.name differ from the config saved"),
        (lambda t: t + "strategy: [unclosed\n", "is not valid YAML"),
    ],
    ids=["another_model", "invalid_yaml"],
)
def test_resume_after_config_yaml_was_edited_is_refused_and_writes_nothing(stopped, edit, said):
    config = stopped / "config.yaml"
    config.write_text(edit(config.read_text()))
    before = _tree(stopped)
    proc = run_cli(f"resume={stopped}", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert said in proc.stderr and "delete it (resume then restores the config saved in last.ckpt)" in proc.stderr
    assert _tree(stopped) == before


def test_resume_after_config_yaml_was_deleted_restores_it_from_the_checkpoint(stopped, interrupted):
    (stopped / "config.yaml").unlink()
    proc = run_cli(f"resume={stopped}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{stopped / 'config.yaml'} was missing; restored from last.ckpt" in proc.stderr
    assert (stopped / "config.yaml").read_text() == (interrupted / "config.yaml").read_text()
    assert json.loads((stopped / "metrics.json").read_text())["resumed"] is True


def test_resume_of_a_folder_with_neither_config_nor_checkpoints_says_it_is_not_a_run(tmp_path):
    proc = run_cli(f"resume={tmp_path}", timeout=60)
    assert proc.returncode == 2 and "neither config.yaml nor checkpoints/ there" in proc.stderr


def test_the_first_epoch_after_a_mid_epoch_resume_is_timed_from_the_start_of_training(monkeypatch, capsys):
    from types import SimpleNamespace

    from tlexp.run import progress

    clock = iter([1000.0, 1002.5])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    trainer = SimpleNamespace(is_global_zero=True, current_epoch=3, max_epochs=5, callback_metrics={})
    bar = progress.PlainProgress()
    bar.on_train_start(trainer, None)  # resumed inside epoch 4: no on_train_epoch_start comes
    bar.on_train_epoch_end(trainer, None)
    assert capsys.readouterr().out.strip() == "epoch 4/5  2.5 s"


# ------------------------------------------------------------ the command line


@pytest.mark.parametrize("metric", ["test_acc", "best_val_accuracy"])
def test_a_sweep_value_wrong_for_every_trial_is_refused_once_before_the_sweep(tmp_path, metric):
    proc = run_cli(
        "-m", "hparams_search=gradual_optuna", f"optimize_metric={metric}", f"hydra.sweep.dir={tmp_path / 's'}"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"tlexp error: optimize_metric={metric}: must be one of best_val_acc, fit_seconds" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_a_sweep_of_several_values_still_checks_its_fixed_ones(tmp_path):
    proc = run_cli("-m", "strategy=finetune,gradual", "epoch_scale=0", f"hydra.sweep.dir={tmp_path / 's'}")
    assert proc.returncode == 2 and "epoch_scale=0: must be a number > 0" in proc.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value", ["~/photos", "/data/fötos"])
def test_a_value_hydra_cannot_read_unquoted_gets_the_quoted_override_to_copy(tmp_path, value):
    proc = run_cli("dataset=imagefolder", f"dataset.root={value}", f"hydra.run.dir={tmp_path / 'run'}", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"Quote it, with single quotes around for the shell: 'dataset.root=\"{value}\"'" in proc.stderr
    quoted = run_cli("dataset=imagefolder", f'dataset.root="{value}"', f"hydra.run.dir={tmp_path / 'run'}", timeout=60)
    assert quoted.returncode == 2 and "does not exist" in quoted.stderr  # read now: the folder is just not there
    assert not (tmp_path / "run").exists()  # checked before Hydra writes the run's files


# ------------------------------------------------------------ the machine: a stop signal, a full disk


def _tiny(tmp_path, tiny_weights, *overrides):
    from .conftest import compose_cfg

    return compose_cfg(
        *TINY_RUN,
        f"model.weights={tiny_weights}",
        "data.num_workers=0",
        "report.enabled=false",
        "report.train_batch_preview=0",
        "trainer.limit_train_batches=2",
        f"output_dir={tmp_path / 'run'}",
        f"cache.dir={tmp_path / 'cache'}",
        *overrides,
    )


def test_sigterm_during_the_probe_is_one_message_with_what_to_do(tmp_path, tiny_weights, monkeypatch, capsys):
    from tlexp import train as train_module
    from tlexp.config.errors import exit_on_user_error

    real = train_module.init_head

    def probe_then_sigterm(run):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, while the probe fits
        return real(run)

    monkeypatch.setattr(train_module, "init_head", probe_then_sigterm)
    cfg = _tiny(tmp_path, tiny_weights, "strategy=lp_ft", "strategy.phases.0.epochs=1")
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(train_module.train)(cfg)
    assert stop.value.code == 143
    err = capsys.readouterr().err
    assert "tlexp error: stopped by SIGTERM outside the training loop. No checkpoint had been written" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_a_full_disk_during_a_checkpoint_save_is_one_message_and_the_last_checkpoint_stays_whole(
    tmp_path, tiny_weights, monkeypatch, capsys
):
    import errno

    import torch

    from tlexp.config.errors import exit_on_user_error
    from tlexp.run import atomic
    from tlexp.run.resume import damaged
    from tlexp.train import train

    saves, real_save = [], torch.save

    def save_until_full(obj, path):
        saves.append(path)
        if len(saves) > 2:  # epoch 0 wrote best and last whole; the disk is full from epoch 1 on
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path)

    monkeypatch.setattr(atomic.torch, "save", save_until_full)
    cfg = _tiny(tmp_path, tiny_weights, "strategy=feature_extraction", "strategy.phases.0.epochs=3", "cache.mode=off")
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(train)(cfg)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    run = tmp_path / "run"
    assert "tlexp error: No space left on device while writing" in err and "Traceback" not in err
    assert f"Continue with: python -m tlexp.train resume={run}" in err
    last = run / "checkpoints" / "last.ckpt"
    assert damaged(last) is None and torch.load(last, weights_only=False)["epoch"] == 0
    assert not list((run / "checkpoints").glob(".*tmp*"))  # no temp file left behind


def test_a_new_run_on_a_folder_it_cannot_write_is_one_message_before_hydra_writes(tmp_path):
    proc = run_cli("hydra.run.dir=/sys/tlexp_run", timeout=60)  # sysfs refuses new files, even to root
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "tlexp error: cannot write to /sys (" in proc.stderr and "Pass hydra.run.dir=<a writable folder>" in proc.stderr
    )


def test_a_resume_onto_a_full_disk_is_refused_before_anything_is_written(stopped, monkeypatch, capsys):
    from types import SimpleNamespace

    from tlexp.config import validate
    from tlexp.run.resume import check_resume_argv

    monkeypatch.setattr(validate.shutil, "disk_usage", lambda p: SimpleNamespace(free=2**20, total=2**30))
    before = _tree(stopped)
    with pytest.raises(SystemExit) as refused:
        check_resume_argv([f"resume={stopped}"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert f"{stopped} is full: 1.0 MB free" in err and f"then resume={stopped} again" in err
    assert _tree(stopped) == before


def test_predict_on_an_auto_runs_missing_checkpoints_folder_names_the_winners_checkpoint(tmp_path):
    run = tmp_path / "run"
    best = run / "pilots" / "finetune" / "checkpoints" / "best-epoch=01.ckpt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"weights")
    (run / "metrics.json").write_text(json.dumps({"checkpoint": str(best)}))
    (tmp_path / "a.png").write_bytes(b"")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlexp.predict",
            f"ckpt={run}/checkpoints/best-epoch=01.ckpt",
            f"input={tmp_path}/a.png",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"The best checkpoint of the run in {run} is {best}: pass ckpt={best}" in proc.stderr
