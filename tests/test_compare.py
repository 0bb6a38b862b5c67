"""strategy=auto, the advise command, and the comparison report (aggregation on made-up run dirs, and for real)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tlexp.auto import decide
from tlexp.comparison.report import write_report
from tlexp.config.errors import ConfigError
from tlexp.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("images", "expected"),
    [(1, "feature_extraction"), (499, "feature_extraction"), (500, "gradual"), (1000, "gradual"),
     (2000, "gradual"), (2001, "finetune"), (60000, "finetune")],
)  # fmt: skip
def test_auto_decision_at_and_around_each_threshold(images, expected):
    decision = decide(images, 10)
    assert decision.strategy == expected
    assert decision.reason.startswith(f"{images} training images, 10 classes") and f"-> {expected}, because" in (
        decision.reason
    )


def test_auto_thresholds_are_configurable_and_checked():
    assert decide(150, 3, below=100, above=200).strategy == "gradual"
    assert decide(201, 3, below=100, above=200).strategy == "finetune"
    with pytest.raises(ConfigError, match="0 < feature_extraction_below <= finetune_above"):
        decide(10, 2, below=300, above=200)


def test_auto_run_logs_its_decision_everywhere(tiny_cfg):
    cfg = tiny_cfg("strategy=auto", "strategy.budget=0", "epoch_scale=0.1")
    metrics = train(cfg)
    assert metrics["strategy"] == "feature_extraction"  # 104 training images < 500
    assert metrics["auto"]["strategy"] == "feature_extraction" and metrics["auto"]["train_images"] == 104
    assert "104 training images, 4 classes" in metrics["auto"]["reason"]
    assert metrics["epochs"] == 2  # 20 epochs x 0.1
    events = EventAccumulator(str(Path(cfg.output_dir) / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    assert "strategy/auto/text_summary" in events.Tags()["tensors"]


def test_advise_with_budget_zero_prints_the_size_rule_without_training():
    proc = subprocess.run(
        [sys.executable, "-m", "tlexp.advise", "dataset=synthetic", "dataset.images_per_class=200",
         "strategy.budget=0"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "advice: 512 training images, 4 classes (~128 per class) -> gradual" in proc.stdout
    # the command keeps the user's dataset overrides, so it runs as printed
    command = "python -m tlexp.train strategy=gradual dataset=synthetic dataset.images_per_class=200"
    assert f"run it: {command}" in proc.stdout


def _fake_run(
    root: Path, name: str, strategy: str, seed: int, acc: float | None, train_images: int = 1000, **more
):  # fmt: skip
    """A finished run's files; `more` goes into metrics.json (auto's pick as `picked`, feature_cache, ...)."""
    run = root / name
    picked = more.pop("picked", strategy)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"strategy:\n  name: {strategy}\nseed: {seed}\n")
    if acc is None:
        return
    phases = [{"name": "a", "epochs": 2}, {"name": "b", "epochs": 2}]
    history = [{"epoch": e, "phase": e // 2, "val/acc": acc - 0.1 + 0.02 * e} for e in range(4)]
    metrics = {
        "strategy": picked, "seed": seed, "dataset_sizes": {"train": train_images, "val": 100, "test": 500},
        "num_classes": 10, "test": {"acc": acc, "f1": acc - 0.01}, "fit_seconds": 60.0 * (seed + 1),
        "test_seconds": 5.0, "trainable_params": 1000, "total_params": 5000, "epochs": 4, "best_epoch": 3,
        "best_val_acc": acc, "phases": phases, "history": history, "dataset": "fashion_mnist", **more,
    }  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_report_aggregates_seeds_and_lists_failed_runs(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "0_gradual_m", "gradual", 0, 0.80)
    _fake_run(runs, "1_gradual_m", "gradual", 1, 0.84)
    cold = {"loaded": [], "computed": ["train/eval", "val/eval", "test/eval"]}
    _fake_run(runs, "2_feature_extraction_m", "feature_extraction", 0, 0.86, feature_cache=cold)
    _fake_run(runs, "5_auto_m", "auto", 0, 0.85, picked="finetune", machine="x86_64, 2 CPU cores, 1 threads")
    _fake_run(runs, "3_scratch_m", "scratch", 0, None)
    (runs / "3_scratch_m" / "error.json").write_text(json.dumps({"error": "out of memory"}))
    _fake_run(runs, "4_finetune_m", "finetune", 0, None)  # killed: neither metrics nor error
    report = write_report(runs, tmp_path)
    text = (tmp_path / "comparison.md").read_text()
    assert "### fashion_mnist: 1000 training images, 10 classes" in text
    assert "| gradual | 90 s | 82.0% ± 2.8 | 0.810 ± 0.028 | 1,000 of 5,000 | 4 | 3 | 2 | 90-93% |" in text
    assert "| feature_extraction | 60 s (cold cache) | 86.0% | 0.850 |" in text
    assert "| auto (picked finetune x1) | 60 s | 85.0% | 0.840 |" in text
    assert "`auto`, choosing on val by probe and pilots, has a regret of 1.0 points against the best " in text
    assert "recorded (metrics.json `machine`): x86_64, 2 CPU cores, 1 threads." in text
    assert "This cell: 4 runs, 5.0 min of fit" in text
    assert "size rule (`strategy=auto strategy.budget=0`) would pick **gradual**; the best here was " in text
    assert "**feature_extraction** (4.0 points" in text
    assert "Not above feature_extraction (a head on the frozen backbone) here: gradual." in text
    assert "| 3_scratch_m | scratch | 0 | out of memory |" in text
    assert "| 4_finetune_m | finetune | 0 | no metrics.json" in text
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert [r["run"] for r in rows] == ["0_gradual_m", "1_gradual_m", "2_feature_extraction_m", "5_auto_m"]
    assert [r["cache"] for r in rows] == ["", "", "cold", ""] and rows[3]["picked"] == "finetune"
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert len(saved["failed"]) == 2 and len(saved["summary"]) == 3
    assert (tmp_path / "accuracy_vs_time.png").stat().st_size > 1000
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000
    assert not (tmp_path / "accuracy_vs_size.png").exists() and len(report["plots"]) == 2


def test_report_with_sizes_plots_the_crossover(tmp_path):
    for i, (size, acc) in enumerate([(100, 0.6), (1000, 0.8), (3000, 0.9)]):
        _fake_run(tmp_path / "runs", f"{i}_gradual_m", "gradual", 0, acc, train_images=size)
    write_report(tmp_path / "runs", tmp_path)
    assert (tmp_path / "accuracy_vs_size.png").stat().st_size > 1000
    text = (tmp_path / "comparison.md").read_text()
    assert "### fashion_mnist: 100 training images" in text and "### fashion_mnist: 3000 training images" in text


def test_report_only_on_an_empty_dir_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tlexp.compare", "report_only=true", f"dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and f"no tlexp runs (folders with .hydra/config.yaml) under {tmp_path}" in proc.stderr


def test_compare_runs_the_sweep_and_writes_every_report_file(tmp_path, tiny_weights):
    command = [
        sys.executable, "-m", "tlexp.compare", f"dir={tmp_path}", "seeds=[0,1]", "sizes=[10,20]",
        "strategies=[scratch,feature_extraction]", "model=test_resnet", f"model.weights={tiny_weights}",
        "dataset=synthetic", "data.num_workers=0", "trainer.enable_progress_bar=false", "epoch_scale=0.05",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "=== run 8 of 8:" in proc.stdout
    for name in ("comparison.md", "comparison.csv", "comparison.json", "accuracy_vs_time.png",
                 "learning_curves.png", "accuracy_vs_size.png"):  # fmt: skip
        assert (tmp_path / name).is_file(), name
    summary = json.loads((tmp_path / "comparison.json").read_text())
    assert len(summary["runs"]) == 8 and not summary["failed"]
    assert {s["train_images"] for s in summary["summary"]} == {40, 80}

    # the same command again: finished runs are read back, an interrupted one continues from its last.ckpt
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    written = {run: (run / "metrics.json").stat().st_mtime_ns for run in runs}
    (runs[0] / "metrics.json").unlink()  # as if killed after its last checkpoint, before the end
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("read back, not trained again") == 7
    assert again.stdout.count(f"interrupted in {runs[0]}: continuing from its last.ckpt") == 1
    assert all((run / "metrics.json").stat().st_mtime_ns == written[run] for run in runs[1:])
    assert json.loads((runs[0] / "metrics.json").read_text())["resumed"] is True
    assert len(json.loads((tmp_path / "comparison.json").read_text())["runs"]) == 8


def test_report_reads_the_runs_own_config_and_says_when_epochs_were_scaled(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "0_gradual_m", "gradual", 0, 0.80)
    _fake_run(runs, "1_gradual_m", "gradual", 1, 0.84)
    for name in ("0_gradual_m", "1_gradual_m"):  # Hydra's copy was rewritten by a later start; tlexp's was not
        (runs / name / "config.yaml").write_text("strategy:\n  name: gradual\nseed: 0\nepoch_scale: 0.25\n")
        (runs / name / ".hydra" / "config.yaml").write_text("strategy:\n  name: finetune\nseed: 0\n")
    write_report(runs, tmp_path)
    text = (tmp_path / "comparison.md").read_text()
    assert "Shortened runs: every phase's epochs x0.25 (epoch_scale)." in text
    assert "| gradual |" in text and "| finetune |" not in text
    rows = json.loads((tmp_path / "comparison.json").read_text())["runs"]
    assert [r["epoch_scale"] for r in rows] == [0.25, 0.25]
