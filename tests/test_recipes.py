"""The recipe study's configs compose, one tiny cell runs, and a finished cell is read instead of rerun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import recipes  # noqa: E402


def test_every_recipe_composes_with_the_real_config():
    for name, overrides in recipes.RECIPES.items():
        cfg = compose_cfg(*overrides, "dataset.per_class=30")
        assert cfg.strategy.name == name and cfg.dataset.per_class == 30


def test_one_tiny_cell_runs_and_a_finished_cell_is_not_rerun(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "recipes.py"), "--quick", "--dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = json.loads((tmp_path / "recipes.json").read_text())
    assert [r["recipe"] for r in rows] == ["lp_ft"] and "<- chosen on val" in first.stdout
    stamp = (tmp_path / "lp_ft_pc20" / "metrics.json").stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "--- lp_ft" not in again.stdout  # read from its metrics.json
    assert (tmp_path / "lp_ft_pc20" / "metrics.json").stat().st_mtime_ns == stamp
