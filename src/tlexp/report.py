"""Aggregate run directories into the strategy comparison: table, CSV/JSON, and plots."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from .atomic import atomic_open, write_text
from .auto import decide
from .errors import ConfigError

COLUMNS = [
    "run", "strategy", "seed", "train_images", "test_acc", "test_f1", "fit_seconds", "test_seconds",
    "trainable_params", "total_params", "epochs", "best_epoch", "best_val_acc",
]  # fmt: skip
ORDER = ["scratch", "feature_extraction", "finetune", "gradual"]


def collect(root: Path) -> tuple[list[dict], list[dict]]:
    """One row per finished run under `root`; failed or unfinished runs listed apart, never dropped."""
    rows, failed = [], []
    configs = sorted(root.rglob(".hydra/config.yaml"), key=lambda p: _natural(p.parent.parent.name))
    for config in configs:
        run = config.parent.parent
        cfg = OmegaConf.load(config)
        strategy = str(OmegaConf.select(cfg, "strategy.name", default="?"))
        seed = OmegaConf.select(cfg, "seed", default=None)
        metrics_file, error_file = run / "metrics.json", run / "error.json"
        if metrics_file.is_file():
            m = json.loads(metrics_file.read_text())
            chosen = m["strategy"] if strategy != "auto" else f"auto ({m['strategy']})"
            rows.append(
                {
                    "run": run.name,
                    "strategy": chosen,
                    "seed": m.get("seed", seed),
                    "train_images": m["dataset_sizes"]["train"],
                    "num_classes": m.get("num_classes"),
                    "test_acc": m["test"].get("acc"),
                    "test_f1": m["test"].get("f1"),
                    "fit_seconds": m["fit_seconds"],
                    "test_seconds": m.get("test_seconds"),
                    "trainable_params": m["trainable_params"],
                    "total_params": m["total_params"],
                    "epochs": m["epochs"],
                    "best_epoch": m.get("best_epoch"),
                    "best_val_acc": m.get("best_val_acc"),
                    "history": m.get("history", []),
                    "phase_epochs": [p["epochs"] for p in m.get("phases", [])],
                }
            )
        else:
            reason = (
                json.loads(error_file.read_text()).get("error", "?")
                if error_file.is_file()
                else "no metrics.json: the run crashed, was killed, or is still running"
            )
            failed.append({"run": run.name, "strategy": strategy, "seed": seed, "error": reason.splitlines()[0][:300]})
    return rows, failed


def _natural(name: str) -> tuple:
    head = name.split("_", 1)[0]
    return (int(head), name) if head.isdigit() else (10**9, name)


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds for each (training-set size, strategy)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["train_images"], r["strategy"])].append(r)
    summary = []
    for (size, strategy), rs in groups.items():
        acc, acc_sd = _mean_std([r["test_acc"] for r in rs])
        f1, _ = _mean_std([r["test_f1"] for r in rs])
        fit, _ = _mean_std([r["fit_seconds"] for r in rs])
        best, _ = _mean_std([r["best_epoch"] for r in rs])
        summary.append(
            {
                "train_images": size,
                "num_classes": rs[0].get("num_classes"),
                "strategy": strategy,
                "runs": len(rs),
                "test_acc_mean": acc,
                "test_acc_std": acc_sd,
                "test_f1_mean": f1,
                "fit_seconds_mean": fit,
                "trainable_params": rs[0]["trainable_params"],
                "total_params": rs[0]["total_params"],
                "epochs": rs[0]["epochs"],
                "best_epoch_mean": best,
            }
        )
    rank = {s: i for i, s in enumerate(ORDER)}
    return sorted(summary, key=lambda s: (s["train_images"], rank.get(s["strategy"], 99), s["strategy"]))


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def markdown(summary: list[dict], failed: list[dict]) -> str:
    lines = []
    for size in sorted({s["train_images"] for s in summary}):
        here = [s for s in summary if s["train_images"] == size]
        classes = here[0].get("num_classes") or 0
        lines += [
            f"### {size} training images" + (f", {classes} classes" if classes else ""),
            "",
            "| approach | training wall time | test accuracy | macro F1 | trainable params | epochs "
            "| best epoch | runs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in here:
            lines.append(
                f"| {s['strategy']} | {_duration(s['fit_seconds_mean'])} | {100 * s['test_acc_mean']:.1f}% "
                f"± {100 * s['test_acc_std']:.1f} | {s['test_f1_mean']:.3f} | {s['trainable_params']:,} "
                f"of {s['total_params']:,} | {s['epochs']} | {s['best_epoch_mean']:.0f} | {s['runs']} |"
            )
        plain = [s for s in here if not s["strategy"].startswith("auto")]
        if plain and classes:
            best = max(plain, key=lambda s: s["test_acc_mean"])
            lines += ["", size_rule_verdict(plain, best, decide(size, classes).strategy)]
            for a in (s for s in here if s["strategy"].startswith("auto")):
                gap = 100 * (best["test_acc_mean"] - a["test_acc_mean"])
                lines.append(f"`{a['strategy']}`, chosen on val by probe and pilots: {gap:.1f} points below the best.")
        lines.append("")
    if failed:
        lines += ["### Runs that did not finish", "", "| run | strategy | seed | error |", "|---|---|---|---|"]
        lines += [f"| {f['run']} | {f['strategy']} | {f['seed']} | {f['error']} |" for f in failed]
        lines.append("")
    return "\n".join(lines)


def size_rule_verdict(plain: list[dict], best: dict, pick: str) -> str:
    """What the playbook's size rule (strategy=auto with strategy.budget=0) would have picked here."""
    rule = "The playbook's size rule (`strategy=auto strategy.budget=0`)"
    picked = next((s for s in plain if s["strategy"] == pick), None)
    if picked is None:
        return f"{rule} would pick **{pick}**, which this comparison did not run."
    if picked is best:
        return f"{rule} would pick **{pick}**: the best strategy here."
    gap = 100 * (best["test_acc_mean"] - picked["test_acc_mean"])
    best_is = f"the best here was **{best['strategy']}** ({gap:.1f} points higher test accuracy)"
    return f"{rule} would pick **{pick}**; {best_is}."


def write_report(root: Path, out: Path) -> dict:
    """Write comparison.md/.csv/.json and the plots into `out`; return what was written."""
    rows, failed = collect(root)
    if not rows and not failed:
        raise ConfigError(f"no tlexp runs (folders with .hydra/config.yaml) under {root}.")
    out.mkdir(parents=True, exist_ok=True)
    summary = aggregate(rows)
    text = markdown(summary, failed)
    write_text(out / "comparison.md", "# Strategy comparison\n\n" + text)
    with atomic_open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    flat = [{k: v for k, v in r.items() if k != "history"} for r in rows]
    write_text(out / "comparison.json", json.dumps({"runs": flat, "summary": summary, "failed": failed}, indent=2))
    from .plots import plot_accuracy_vs_size, plot_accuracy_vs_time, plot_learning_curves

    plots = [plot_accuracy_vs_time(rows, out / "accuracy_vs_time.png")]
    plots.append(plot_learning_curves(rows, out / "learning_curves.png"))
    if len({r["train_images"] for r in rows}) > 1:
        plots.append(plot_accuracy_vs_size(summary, out / "accuracy_vs_size.png"))
    return {"markdown": text, "rows": rows, "summary": summary, "failed": failed, "plots": [p for p in plots if p]}
