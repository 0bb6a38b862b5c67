"""Gradual unfreezing under DDP (trainer=ddp_cpu: 2 processes, gloo): replicas identical, frozen groups unmoved."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = ["stem", "stage1", "stage2", "stage3", "stage4"]


def test_gradual_unfreezing_under_ddp_keeps_replicas_in_step(tmp_path, tiny_weights):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path), str(tiny_weights)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert "world size 2 > 1: freezing by zero learning rate and zero weight decay" in log
    assert "freezing by zero_lr" in log  # the audit table's heading
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "evaluation").is_dir()
    assert log.count("test accuracy") == 1  # one summary, from rank 0

    def load(rank: int, tag: str) -> dict:
        return torch.load(tmp_path / f"rank{rank}_{tag}.pt", weights_only=False)

    start = load(0, "start")
    assert start["world_size"] == 2

    group_of = {name: g for g, names in start["groups"].items() for name in names}

    frozen_after = {0: BACKBONE, 1: BACKBONE[:-1], 2: []}  # phase -> groups that must not have moved
    for phase, frozen in frozen_after.items():
        r0, r1 = load(0, f"end{phase}"), load(1, f"end{phase}")
        for name, tensor in r0["params"].items():
            assert torch.equal(tensor, r1["params"][name]), f"ranks differ in {name} after phase {phase + 1}"
        for name, tensor in r0["params"].items():
            moved = not torch.equal(tensor, start["params"][name])
            if group_of[name] in frozen:
                assert not moved, f"frozen {name} moved in phase {phase + 1}"
        assert any(not torch.equal(r0["params"][n], start["params"][n]) for n in r0["params"] if n.startswith("head"))
        mid = load(1, f"epoch{phase}_batch0")
        assert all(mid["requires_grad"].values())  # zero_lr: gradients flow everywhere
        assert all(mid["lr"][g] == 0.0 for g in frozen) and mid["lr"]["head"] > 0
    end = load(0, "end2")["params"]
    assert any(not torch.equal(end[n], start["params"][n]) for n in start["groups"]["stem"])  # all trains at last
