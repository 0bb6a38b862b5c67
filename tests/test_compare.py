"""strategy=auto, the advise command, and the comparison report (aggregation on made-up run dirs, and for real)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from scipy import stats
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
    # two seeds: the mean with its t-interval (t = 12.7 on one degree of freedom; cut at 100%), the std in the JSON
    assert ("| gradual | 90 s | 82 [57, 100] on 2 seeds | 0.81 [0.56, 1.00] on 2 seeds | 82 [57, 100] on 2 seeds "
            "| 1,000 of 5,000 | 4 | 3 | 2 | 90-93% |") in text  # fmt: skip
    # one run: its own Wilson interval on its 500 test images (F1 without an interval in these older metrics)
    assert "| feature_extraction | 60 s (cold cache) | 86 [83, 89] on 500 images | 0.85 on 500 images |" in text
    assert "| auto (picked finetune x1) | 60 s | 85 [82, 88] on 500 images | 0.84 on 500 images |" in text
    assert "Every test figure rests on 500 test images" in text
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


# Figures with their 95% intervals and counts, cross-validation folds, paired differences (made-up run dirs).

Z = 1.959963984540054  # the normal quantile of 0.975


def _wilson_by_hand(correct: int, n: int) -> tuple[float, float]:
    p, z2 = correct / n, Z * Z
    centre, half = p + z2 / (2 * n), Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (centre - half) / (1 + z2 / n), (centre + half) / (1 + z2 / n)


def _fold_run(root: Path, name: str, strategy: str, fold: int, val: float, folds: int = 5, seed: int = 0,
              test: float = 0.8, nested: bool = False, **more):  # fmt: skip
    """One finished fold run of a cross-validated sweep (cv.fold=i), with the new metrics.json keys."""
    run = root / name
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    config = f"strategy:\n  name: {strategy}\nseed: {seed}\ncv:\n  folds: {folds}\n  repeats: 1\n  fold: {fold}\n"
    (run / ".hydra" / "config.yaml").write_text(config)
    where = run / f"fold_{fold}" if nested else run
    where.mkdir(exist_ok=True)
    metrics = {
        "strategy": strategy, "seed": seed, "num_classes": 4, "dataset": "synthetic",
        "dataset_sizes": {"train": 800 + fold % 2, "val": 200 - fold % 2, "test": 300},  # folds differ by an image
        "test": {"acc": test, "f1": test - 0.02}, "best_val_acc": val, "fit_seconds": 10.0, "test_seconds": 1.0,
        "trainable_params": 10, "total_params": 50, "epochs": 2, "best_epoch": 1,
        "fold": {"index": fold, "part": fold, "folds": folds, "repeat": 0}, **more,  # as the datamodule writes it
    }  # fmt: skip
    (where / "metrics.json").write_text(json.dumps(metrics))


def test_a_group_of_three_seeds_shows_the_mean_with_its_t_interval(tmp_path):
    runs = tmp_path / "runs"
    for seed, acc in enumerate([0.80, 0.84, 0.85]):
        _fake_run(runs, f"{seed}_gradual_m", "gradual", seed, acc)
    report = write_report(runs, tmp_path)
    (s,) = report["summary"]
    # by hand: mean 0.83, s.d. sqrt(0.0007) = 0.026458, s.e.m. 0.015275, t(0.975, 2 d.f.) = 4.302653
    half = stats.t.ppf(0.975, 2) * math.sqrt(0.0007) / math.sqrt(3)
    assert half == pytest.approx(0.065724, abs=1e-6)
    assert s["test_acc_mean"] == pytest.approx(0.83)
    assert s["test_acc_low"] == pytest.approx(0.83 - half) and s["test_acc_high"] == pytest.approx(0.83 + half)
    assert s["test_acc_interval"]["n"] == 3 and s["test_acc_interval"]["unit"] == "seeds"
    assert s["test_acc_std"] == pytest.approx(math.sqrt(0.0007))  # kept beside the interval
    text = (tmp_path / "comparison.md").read_text()
    assert "| gradual | 2.0 min | 83 [76, 90] on 3 seeds |" in text  # the half-width of 6.6 points: no decimals
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["summary"][0]["test_acc_low"] == pytest.approx(0.7643, abs=1e-4)


def test_a_single_run_shows_its_own_wilson_interval(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "0_finetune_m", "finetune", 0, 1.0, dataset_sizes={"train": 100, "val": 20, "test": 30})
    report = write_report(runs, tmp_path)
    low, high = _wilson_by_hand(30, 30)
    assert low == pytest.approx(0.8865, abs=1e-4) and high == 1.0
    (row,), (s,) = report["rows"], report["summary"]
    assert (row["test_acc_low"], row["test_acc_high"], row["test_n"]) == (pytest.approx(low, abs=1e-4), 1.0, 30)
    assert s["test_acc_interval"]["method"] == "wilson" and s["test_acc_low"] == pytest.approx(low, abs=1e-4)
    assert "| finetune | 60 s | 100 [89, 100] on 30 images |" in (tmp_path / "comparison.md").read_text()
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert float(rows[0]["test_acc_low"]) == pytest.approx(low, abs=1e-4) and rows[0]["test_n"] == "30"


def test_old_metrics_without_the_new_keys_still_report_and_new_ones_are_used(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "0_gradual_m", "gradual", 0, 0.80)  # no test_intervals, best_val_interval, fold
    saved = {"value": 0.81, "low": 0.70, "high": 0.90, "n": 500, "method": "wilson", "unit": "images"}
    f1 = {"value": 0.80, "low": 0.75, "high": 0.83, "n": 500, "method": "bootstrap", "unit": "images"}
    val = {"value": 0.80, "low": 0.61, "high": 0.99, "n": 100, "method": "wilson", "unit": "images"}
    _fake_run(runs, "1_finetune_m", "finetune", 0, 0.81, test_intervals={"acc": saved, "f1": f1},
              best_val_interval=val, fold=None)  # fmt: skip
    report = write_report(runs, tmp_path)
    old, new = report["rows"]
    # the fallback: Wilson from round(0.80 x 500) = 400 of 500 test images, 80 of 100 val images; no F1 interval
    assert (old["test_acc_low"], old["test_acc_high"]) == tuple(pytest.approx(x, abs=1e-4) for x in
                                                                _wilson_by_hand(400, 500))  # fmt: skip
    assert old["best_val_acc_low"] == pytest.approx(_wilson_by_hand(80, 100)[0], abs=1e-4) and old["val_n"] == 100
    assert old["test_f1_low"] is None and old["fold"] is None
    # what the run recorded wins over the recomputation
    assert (new["test_acc_low"], new["test_acc_high"]) == (0.7, 0.9)
    assert (new["test_f1_low"], new["test_f1_high"]) == (0.75, 0.83)
    assert new["best_val_acc_low"] == 0.61
    text = (tmp_path / "comparison.md").read_text()
    assert "| finetune | 60 s | 81 [70, 90] on 500 images | 0.80 [0.75, 0.83] on 500 images |" in text
    assert "| gradual | 60 s | 80 [76, 83] on 500 images | 0.79 on 500 images |" in text


def test_compare_sweeps_every_fold_and_counts_strategies_x_folds(tmp_path, monkeypatch, capsys):
    from omegaconf import OmegaConf

    from tlexp import compare as compare_module

    cfg = OmegaConf.create({"strategies": ["feature_extraction", "finetune", "lp_ft"], "seeds": [0], "sizes": None,
                            "size_unit": "per_class", "cv": {"folds": 5, "repeats": 1, "fold": None}})  # fmt: skip
    command, total = compare_module.sweep_command(cfg, ["cv.folds=5"], tmp_path)
    assert "cv.fold=0,1,2,3,4" in command and total == 15
    assert command.index("cv.fold=0,1,2,3,4") < command.index("strategy=feature_extraction,finetune,lp_ft")
    cfg.cv.repeats, cfg.seeds = 2, [0, 1]
    command, total = compare_module.sweep_command(cfg, [], tmp_path)
    assert "cv.fold=0,1,2,3,4,5,6,7,8,9" in command and total == 3 * 10 * 2
    cfg.cv.fold = 3  # the user named one fold: it passes through, nothing more is swept
    command, total = compare_module.sweep_command(cfg, ["cv.fold=3"], tmp_path)
    assert not any(c.startswith("cv.fold=0") for c in command) and total == 3 * 2
    cfg.cv.folds, cfg.cv.fold = 0, None
    command, total = compare_module.sweep_command(cfg, [], tmp_path)
    assert not any(c.startswith("cv.fold") for c in command) and total == 3 * 2

    # the real compare config, the sweep itself replaced: the cost is said first, then the count of runs
    with initialize_config_module(config_module="tlexp.conf", version_base="1.3"):
        real = compose(config_name="compare", overrides=[f"dir={tmp_path}", "cv.folds=5", "seeds=[0]",
                                                         "strategies=[feature_extraction,finetune,lp_ft]"])  # fmt: skip
    launched = []
    monkeypatch.setattr(
        compare_module.subprocess,
        "run",
        lambda cmd, env: launched.append((cmd, env)) or subprocess.CompletedProcess(cmd, 0),
    )
    monkeypatch.setattr(compare_module, "write_report", lambda root, out: {"markdown": ""})  # fmt: skip
    compare_module.compare(real)
    out = capsys.readouterr().out
    assert "compare: 15 runs into" in out and "cv.fold=0,1,2,3,4" in out
    assert "fine-tuning costs 5 runs where one split costs 1" in out
    assert out.index("fine-tuning costs 5 runs") < out.index("compare: 15 runs")
    assert launched[0][1]["TLEXP_SWEEP_TOTAL"] == "15" and "cv.fold=0,1,2,3,4" in launched[0][0]


def test_folds_report_their_mean_over_folds_and_the_paired_difference(tmp_path):
    runs = tmp_path / "runs"
    best = [0.80, 0.85, 0.78, 0.90, 0.82]
    mixed = [-0.05, 0.04, -0.03, 0.05, -0.02]  # other - best disagrees in sign from fold to fold
    steady = [-0.10, -0.12, -0.09, -0.11, -0.10]  # always about 10 points below
    job = 0
    for fold in range(5):  # folds vary slower than strategies, as compare sweeps them
        for strategy, val in (("lp_ft", best[fold]), ("finetune", best[fold] + mixed[fold]),
                              ("gradual", best[fold] + steady[fold])):  # fmt: skip
            _fold_run(runs, f"{job}_{strategy}_m", strategy, fold, val, test=val - 0.05)
            job += 1
    report = write_report(runs, tmp_path)
    assert len(report["rows"]) == 15 and sorted({r["fold"] for r in report["rows"]}) == [0, 1, 2, 3, 4]
    assert {r["train_images"] for r in report["rows"]} == {800, 801}  # the folds' train counts differ ...
    assert len(report["summary"]) == 3  # ... and still make one cell
    lp_ft = next(s for s in report["summary"] if s["strategy"] == "lp_ft")
    by_hand = stats.t.interval(0.95, 4, loc=np.mean(best) - 0.05, scale=stats.sem(best))
    assert lp_ft["test_acc_interval"]["unit"] == "folds" and lp_ft["test_acc_interval"]["n"] == 5
    assert (lp_ft["test_acc_low"], lp_ft["test_acc_high"]) == pytest.approx(by_hand)
    assert (lp_ft["best_val_acc_low"], lp_ft["best_val_acc_high"]) == pytest.approx(
        stats.t.interval(0.95, 4, loc=np.mean(best), scale=stats.sem(best)))  # fmt: skip

    paired = {p["other"]: p for p in report["paired"]}
    assert set(paired) == {"finetune", "gradual"} and all(p["best"] == "lp_ft" for p in paired.values())
    assert paired["finetune"]["over"] == "folds" and paired["finetune"]["pairs"] == 5
    assert not paired["finetune"]["distinguishable"]
    diff = -np.asarray(steady)
    low, high = stats.t.interval(0.95, 4, loc=diff.mean(), scale=stats.sem(diff))
    assert paired["gradual"]["distinguishable"]
    assert paired["gradual"]["difference"]["value"] == pytest.approx(0.104)
    assert (paired["gradual"]["difference"]["low"], paired["gradual"]["difference"]["high"]) == (
        pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))  # fmt: skip
    text = (tmp_path / "comparison.md").read_text()
    assert "### synthetic: about 800 training images per fold (5-fold cross-validation over train + val)" in text
    assert "Paired on the same folds: **lp_ft**" in text
    assert "- lp_ft - finetune: +0 [-5, +6] on 5 folds: not distinguishable on this data" in text
    assert "- lp_ft - gradual: +10 [+9, +12] on 5 folds: lp_ft ahead" in text
    assert "on 5 folds" in text.split("| lp_ft |")[1].split("\n")[0]
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert [r["fold"] for r in rows[:3]] == ["0", "0", "0"] and rows[0]["folds"] == "5"


def test_folds_run_inside_one_train_command_are_read_from_their_fold_dirs(tmp_path):
    runs = tmp_path / "runs"
    for strategy, vals in (("lp_ft", [0.8, 0.9, 0.85]), ("finetune", [0.7, 0.8, 0.75])):
        run = f"{strategy}_m"
        for fold, val in enumerate(vals):
            _fold_run(runs, run, strategy, fold, val, folds=3, nested=True)
        (runs / run / "cv_summary.json").write_text(json.dumps({"folds": 3}))  # the parent: their mean, no metrics
        (runs / run / "config.yaml").write_text(f"strategy:\n  name: {strategy}\nseed: 0\ncv:\n  folds: 3\n")
    report = write_report(runs, tmp_path)
    assert [r["run"] for r in report["rows"]] == [f"{s}_m/fold_{i}" for s in ("finetune", "lp_ft") for i in range(3)]
    assert not report["failed"] and len(report["summary"]) == 2
    (p,) = report["paired"]
    assert p["best"] == "lp_ft" and p["difference"]["value"] == pytest.approx(0.1) and p["distinguishable"]


def test_paired_over_seeds_without_folds_says_the_seeds_share_one_split(tmp_path):
    runs = tmp_path / "runs"
    job = 0
    for seed in range(3):
        for strategy, acc in (("finetune", 0.80 + 0.01 * seed), ("gradual", 0.82 - 0.02 * seed)):
            _fake_run(runs, f"{job}_{strategy}_m", strategy, seed, acc)
            job += 1
    report = write_report(runs, tmp_path)
    (p,) = report["paired"]
    assert p["over"] == "seeds" and p["pairs"] == 3 and p["best"] == "finetune"
    assert p["difference"]["value"] == pytest.approx(0.01) and not p["distinguishable"]
    text = (tmp_path / "comparison.md").read_text()
    assert "Paired over seeds (no folds; the seeds share one split" in text
    assert "- finetune - gradual: " in text and "on 3 seeds: not distinguishable on this data" in text


def test_accuracy_vs_size_draws_the_95_interval_not_the_std(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from tlexp.comparison.plots import plot_accuracy_vs_size

    drawn = []
    errorbar = Axes.errorbar
    monkeypatch.setattr(Axes, "errorbar", lambda ax, x, y, **kw: drawn.append(kw["yerr"]) or errorbar(ax, x, y, **kw))
    summary = [
        {"dataset": "d", "train_images": size, "strategy": "finetune", "picked": {}, "test_acc_mean": 0.8,
         "test_acc_std": 0.01, "test_acc_low": 0.7, "test_acc_high": 0.85}
        for size in (100, 1000)
    ]  # fmt: skip
    assert plot_accuracy_vs_size(summary, tmp_path / "size.png")
    ((below, above),) = drawn
    assert below == pytest.approx([10.0, 10.0]) and above == pytest.approx([5.0, 5.0])


def test_runs_that_all_scored_the_same_show_one_runs_interval(tmp_path):
    runs = tmp_path / "runs"
    for seed in range(3):  # no spread between the seeds: no t-interval, but the test set's own uncertainty remains
        _fake_run(runs, f"{seed}_finetune_m", "finetune", seed, 0.9)
    (s,) = write_report(runs, tmp_path)["summary"]
    low, high = _wilson_by_hand(450, 500)
    assert (s["test_acc_low"], s["test_acc_high"]) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))
    assert (
        s["unit"] == "images"
        and "| finetune | 2.0 min | 90 [87, 92] on 500 images |" in (tmp_path / "comparison.md").read_text()
    )
