"""SIGKILL a gradual run in a subprocess, resume it, and get exactly the uninterrupted run (deterministic, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .test_cli import ROOT, run_cli

pytestmark = pytest.mark.slow

PHASES = (
    "strategy.phases=[{name: head, epochs: 2, train: [head], lr: 1e-3},"
    " {name: last_block, epochs: 2, train: [head, last], lr: 3e-4},"
    " {name: all, epochs: 2, train: [all], lr: 1e-4}]"
)


def _args(tiny_weights, run: Path) -> list[str]:
    return [
        "strategy=gradual",
        PHASES,
        "model=test_resnet",
        f"model.weights={tiny_weights}",
        "dataset=synthetic",
        "dataset.images_per_class=120",  # epochs long enough (~1 s) for the kill to land where it should
        "data.batch_size=16",
        "data.num_workers=0",
        "trainer.deterministic=true",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run}",
    ]


def _last(run: Path) -> dict | None:
    try:
        return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    except Exception:  # not written yet
        return None


def _kill_after_epoch(tiny_weights, run: Path, epoch: int, wait: float) -> int:
    """Start a run, SIGKILL it `wait` seconds after the checkpoint of `epoch` appears; return the epoch saved."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlexp.train", *_args(tiny_weights, run)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            ckpt = _last(run)
            if ckpt is not None and ckpt["epoch"] >= epoch:
                time.sleep(wait)
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    return _last(run)["epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_weights) -> Path:
    run = tmp_path_factory.mktemp("reference")
    proc = run_cli(*_args(tiny_weights, run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def _same_run(reference: Path, resumed: Path) -> None:
    ref, res = (json.loads((r / "metrics.json").read_text()) for r in (reference, resumed))
    assert res["resumed"] and not ref["resumed"]
    # same phase sequence, trainable flags, lrs and weight decay at every epoch
    assert res["phase_history"] == ref["phase_history"]
    assert [h["phase"] for h in ref["phase_history"]] == [0, 0, 1, 1, 2, 2]
    a, b = _last(reference), _last(resumed)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for name, tensor in a["state_dict"].items():
        assert torch.allclose(tensor.float(), b["state_dict"][name].float(), rtol=0, atol=1e-6), name
    assert ref["best_epoch"] == res["best_epoch"]
    assert res["best_val_acc"] == pytest.approx(ref["best_val_acc"], abs=1e-6)
    for key, value in ref["test"].items():
        assert res["test"][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize(
    ("after_epoch", "wait", "where"),
    # Kill soon after a checkpoint: epochs of the tiny run take well under a second on a quiet machine.
    [(2, 0.1, "mid phase 2"), (1, 0.0, "between phases 1 and 2")],
)
def test_sigkill_then_resume_equals_the_uninterrupted_run(reference, tmp_path, tiny_weights, after_epoch, wait, where):
    run = tmp_path / "run"
    saved = _kill_after_epoch(tiny_weights, run, after_epoch, wait)
    assert saved == after_epoch, f"the kill came too late to land {where}"
    assert not (run / "metrics.json").exists()
    proc = run_cli(f"resume={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_run(reference, run)
