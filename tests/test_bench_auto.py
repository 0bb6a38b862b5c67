"""make bench-auto: one tiny cell runs end to end, prints the table, and a second run reads instead of rerunning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_auto_quick_cell_prints_regret_and_cost_and_resumes(tmp_path):
    command = [sys.executable, "benchmarks/bench_auto.py", "--quick", "--dir", str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = json.loads((tmp_path / "bench_auto.json").read_text())
    assert len(rows) == 1 and rows[0]["auto_pick"] in rows[0]["ranking"]
    assert set(rows[0]["ranking"]) == {"feature_extraction", "lp_ft", "finetune", "gradual"}
    assert isinstance(rows[0]["regret"], float) and rows[0]["cost"] > 0  # regret < 0: auto's own run scored higher
    assert "worst regret" in first.stdout and "mean cost" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "--- " not in again.stdout  # every run read back, none rerun
    assert json.loads((tmp_path / "bench_auto.json").read_text()) == rows
