"""make bench-auto: one tiny cell runs end to end, prints the table, and a second run reads instead of rerunning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a benchmark script's whole cell: minutes of the fast suite; `make test-all` runs it
def test_bench_auto_quick_cell_prints_regret_and_cost_and_resumes(tmp_path):
    command = [sys.executable, "benchmarks/bench_auto.py", "--quick", "--dir", str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = json.loads((tmp_path / "bench_auto.json").read_text())
    assert len(rows) == 1 and rows[0]["auto_pick"] in rows[0]["ranking"]
    assert set(rows[0]["ranking"]) == {"scratch", "feature_extraction", "lp_ft", "finetune", "gradual"}
    assert isinstance(rows[0]["regret"], float) and rows[0]["cost"] > 0  # regret < 0: auto's own run scored higher
    truth = rows[0]["truth"]
    assert rows[0]["picked_on_val"] == max(truth, key=lambda s: (truth[s]["best_val_acc"], -truth[s]["fit_seconds"]))
    best = truth[rows[0]["ranking"][0]]["test_acc"]
    assert rows[0]["regret_vs_best"] == best - rows[0]["auto_test_acc"] >= rows[0]["regret"]
    assert "worst cell regret" in first.stdout and "mean cost" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "--- " not in again.stdout  # every run read back, none rerun
    assert json.loads((tmp_path / "bench_auto.json").read_text()) == rows


def test_early_stop_simulation_cuts_each_curve_after_patience_epochs_without_a_new_best(tmp_path):
    curves = {"a": [0.5, 0.6, 0.55, 0.58, 0.6, 0.7], "b": [0.5, 0.6, 0.7, 0.8]}  # a stops after 5 of 6 epochs
    for cell, curve in curves.items():
        run = tmp_path / cell / "finetune"
        run.mkdir(parents=True)
        history = [{"epoch": e, "val/acc": v} for e, v in enumerate(curve)]
        (run / "metrics.json").write_text(json.dumps({"history": history}))
    command = [sys.executable, "benchmarks/early_stop_sim.py", "--dir", str(tmp_path), "--strategies", "finetune",
               "--patience", "3"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    # a: 1/6 of its epochs saved, 10 points of best val given up; b: nothing saved, nothing given up
    expected = "patience 3: 2 runs, epochs saved 8% (0-17%), best val given up 5.00 points mean, 10.00 worst"
    assert f"finetune   {expected}" in done.stdout


def bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_auto", ROOT / "benchmarks" / "bench_auto.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_truth_picks_on_val_and_a_tie_goes_to_the_shorter_fit():
    truth = {"finetune": {"best_val_acc": 1.0, "fit_seconds": 219}, "lp_ft": {"best_val_acc": 1.0, "fit_seconds": 90},
             "feature_extraction": {"best_val_acc": 0.99, "fit_seconds": 7}}  # fmt: skip
    assert bench_module().truth_pick(truth) == "lp_ft"
    truth["feature_extraction"]["best_val_acc"] = 1.01
    assert bench_module().truth_pick(truth) == "feature_extraction"


def test_regret_is_against_the_val_pick_and_vs_best_against_the_best_on_test():
    def run(val: float, test: float, seconds: float) -> dict:
        return {"best_val_acc": val, "test": {"acc": test}, "fit_seconds": seconds,
                "dataset_sizes": {"train": 441}, "num_classes": 8}  # fmt: skip

    truth = {"feature_extraction": run(0.99, 0.978, 7), "finetune": run(1.0, 0.984, 219), "lp_ft": run(1.0, 0.978, 90)}
    auto = run(0.99, 0.973, 250) | {"auto": {"strategy": "feature_extraction", "reason": "a tie"}}
    row = bench_module().summarise({"cell": "textures", "seed": 0, "truth": truth, "auto": auto})
    assert row["picked_on_val"] == "lp_ft" and row["ranking"][0] == "finetune"
    assert row["regret"] == pytest.approx(0.005) and row["regret_vs_best"] == pytest.approx(0.011)
    assert row["cost"] == pytest.approx(250 / 316) and row["rule_pick"] == "feature_extraction"


def test_a_run_another_live_bench_process_is_making_is_left_to_it(tmp_path):
    bench = bench_module()
    out, lock = tmp_path / "cell" / "finetune", tmp_path / "cell" / ".finetune.lock"
    assert bench.claimed_elsewhere(out) is False and lock.read_text() == str(os.getpid())  # taken by this one
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        lock.write_text(str(other.pid))
        assert bench.claimed_elsewhere(out) is True
        assert bench.run(out, ["strategy=finetune"], wait=False) is None  # not started twice
        other.kill()
    other.wait()
    assert bench.claimed_elsewhere(out) is False and lock.read_text() == str(os.getpid())  # a dead taker's run
    lock.write_text("")  # a taker that died between creating the lock and writing its pid
    assert bench.claimed_elsewhere(out) is True  # for a few seconds it may still be writing
    os.utime(lock, (time.time() - 60, time.time() - 60))
    assert bench.claimed_elsewhere(out) is False and lock.read_text() == str(os.getpid())


def test_an_interrupted_run_is_resumed_and_an_attempt_with_nothing_to_resume_is_cleared(tmp_path):
    bench = bench_module()
    plain, auto, fresh = tmp_path / "finetune", tmp_path / "auto", tmp_path / "gradual"
    (plain / "checkpoints").mkdir(parents=True)
    (plain / "checkpoints" / "last.ckpt").write_text("weights")
    (auto / "pilots" / "finetune").mkdir(parents=True)  # auto keeps its winner's checkpoints under pilots/
    (auto / "config.yaml").write_text("seed: 0\n")
    assert bench.launch_args(plain, ["strategy=finetune"]) == [f"resume={plain}"]
    assert bench.launch_args(auto, ["strategy=auto"]) == ["strategy=auto", f"hydra.run.dir={auto}"]
    assert not auto.exists()
    assert bench.launch_args(fresh, ["strategy=gradual"]) == ["strategy=gradual", f"hydra.run.dir={fresh}"]
