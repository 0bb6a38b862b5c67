"""Aggregate run directories into the strategy comparison: table, CSV/JSON, and plots."""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from tlexp.auto import decide
from tlexp.config.errors import ConfigError
from tlexp.run.atomic import atomic_open, write_text
from tlexp.run.resume import RUN_CONFIG

COLUMNS = [
    "run", "dataset", "strategy", "picked", "seed", "train_images", "test_acc", "test_f1", "fit_seconds", "cache",
    "test_seconds", "trainable_params", "total_params", "epochs", "epoch_scale", "best_epoch", "best_val_acc",
    "machine",
]  # fmt: skip
ORDER = ["scratch", "feature_extraction", "finetune", "gradual", "lp_ft", "auto"]
# The playbook's test accuracy per strategy (its ten-class equipment photos, about 1,000 training images), shown
# beside each row for comparison; other data need not come near it.
PLAYBOOK = {"scratch": "60-70%", "feature_extraction": "85-90%", "finetune": "92-95%", "gradual": "90-93%"}


def collect(root: Path) -> tuple[list[dict], list[dict]]:
    """One row per finished run under `root`; failed or unfinished runs listed apart, never dropped."""
    rows, failed = [], []
    configs = sorted(root.rglob(".hydra/config.yaml"), key=lambda p: _natural(p.parent.parent.name))
    for config in configs:
        run = config.parent.parent
        name = run.relative_to(root).as_posix()  # unique also where runs sit in folders of their own
        own = run / RUN_CONFIG  # tlexp's record of the run; Hydra's copy only where the run failed before it
        cfg = OmegaConf.load(own if own.is_file() else config)
        strategy = str(OmegaConf.select(cfg, "strategy.name", default="?"))
        seed = OmegaConf.select(cfg, "seed", default=None)
        metrics_file, error_file = run / "metrics.json", run / "error.json"
        if metrics_file.is_file():
            m = json.loads(metrics_file.read_text())
            rows.append(
                {
                    "run": name,
                    "dataset": dataset_label(cfg, m),
                    "strategy": strategy if strategy == "auto" else m["strategy"],
                    "picked": m["strategy"] if strategy == "auto" else None,  # auto's choice
                    "seed": m.get("seed", seed),
                    "train_images": m["dataset_sizes"]["train"],
                    "num_classes": m.get("num_classes"),
                    "test_acc": m["test"].get("acc"),
                    "test_f1": m["test"].get("f1"),
                    "fit_seconds": m["fit_seconds"],
                    "cache": cache_state(m.get("feature_cache")),
                    "machine": m.get("machine"),
                    "test_seconds": m.get("test_seconds"),
                    "trainable_params": m["trainable_params"],
                    "total_params": m["total_params"],
                    "epochs": m["epochs"],
                    "epoch_scale": float(OmegaConf.select(cfg, "epoch_scale", default=1.0)),
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
            failed.append({"run": name, "strategy": strategy, "seed": seed, "error": reason.splitlines()[0][:300]})
    return rows, failed


def dataset_label(cfg, metrics: dict) -> str:
    """The data a run used: the dataset config's name, or for a folder of images the folder's name."""
    name = str(metrics.get("dataset") or OmegaConf.select(cfg, "dataset.name", default="?"))
    root = OmegaConf.select(cfg, "dataset.root", default=None)
    return Path(str(root)).name if name in ("imagefolder", "csv") and root else name


def cache_state(cache: dict | None) -> str | None:
    """'cold' when the run computed its train features, 'warm' when it loaded them; None without a cache."""
    if not cache:
        return None
    return "warm" if any(split.startswith("train") for split in cache.get("loaded", [])) else "cold"


def _natural(name: str) -> tuple:
    head = name.split("_", 1)[0]
    return (int(head), name) if head.isdigit() else (10**9, name)


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds for each (dataset, training-set size, strategy)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r.get("dataset", ""), r["train_images"], r["strategy"])].append(r)
    summary = []
    for (dataset, size, strategy), rs in groups.items():
        acc, acc_sd = _mean_std([r["test_acc"] for r in rs])
        f1, f1_sd = _mean_std([r["test_f1"] for r in rs])
        summary.append(
            {
                "dataset": dataset,
                "train_images": size,
                "num_classes": rs[0].get("num_classes"),
                "strategy": strategy,
                "runs": len(rs),
                "test_acc_mean": acc,
                "test_acc_std": acc_sd,
                "test_f1_mean": f1,
                "test_f1_std": f1_sd,
                "fit_seconds_mean": _mean_std([r["fit_seconds"] for r in rs])[0],
                "fit_seconds_by_cache": {
                    state: _mean_std([r["fit_seconds"] for r in rs if r.get("cache") == state])[0]
                    for state in ("cold", "warm")
                    if any(r.get("cache") == state for r in rs)
                },
                "picked": dict(Counter(r["picked"] for r in rs if r.get("picked"))),
                "trainable_params": rs[0]["trainable_params"],
                "total_params": rs[0]["total_params"],
                "epochs": rs[0]["epochs"],
                "epoch_scales": sorted({r.get("epoch_scale", 1.0) for r in rs}),
                "best_epoch_mean": _mean_std([r["best_epoch"] for r in rs])[0],
                "best_val_acc_mean": _mean_std([r.get("best_val_acc") for r in rs])[0],
            }
        )
    rank = {s: i for i, s in enumerate(ORDER)}
    return sorted(summary, key=lambda s: (s["dataset"], s["train_images"], rank.get(s["strategy"], 99), s["strategy"]))


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _fit_time(s: dict) -> str:
    by_cache = s["fit_seconds_by_cache"]
    if not by_cache:
        return _duration(s["fit_seconds_mean"])
    return ", ".join(f"{_duration(seconds)} ({state} cache)" for state, seconds in by_cache.items())


def _approach(s: dict) -> str:
    if not s["picked"]:
        return s["strategy"]
    picks = ", ".join(f"{name} x{n}" for name, n in sorted(s["picked"].items(), key=lambda kv: -kv[1]))
    return f"{s['strategy']} (picked {picks})"


def markdown(summary: list[dict], failed: list[dict]) -> str:
    lines = []
    for dataset, size in sorted({(s["dataset"], s["train_images"]) for s in summary}):
        lines += cell_markdown([s for s in summary if (s["dataset"], s["train_images"]) == (dataset, size)])
    if failed:
        lines += ["### Runs that did not finish", "", "| run | strategy | seed | error |", "|---|---|---|---|"]
        lines += [f"| {f['run']} | {f['strategy']} | {f['seed']} | {f['error']} |" for f in failed]
        lines.append("")
    return "\n".join(lines)


def cell_markdown(here: list[dict]) -> list[str]:
    """One dataset x size: the table, what the size rule and auto made of it, and what the cell cost."""
    dataset, size, classes = here[0]["dataset"], here[0]["train_images"], here[0].get("num_classes") or 0
    title = f"{dataset}: " if dataset else ""
    scales = sorted({x for s in here for x in s.get("epoch_scales", [1.0]) if x != 1.0})
    lines = [
        f"### {title}{size} training images" + (f", {classes} classes" if classes else ""),
        "",
        *(
            [f"Shortened runs: every phase's epochs x{', x'.join(f'{x:g}' for x in scales)} (epoch_scale).", ""]
            if scales
            else []
        ),  # fmt: skip
        "| approach | fit time | test accuracy | macro F1 | trainable params | epochs | best epoch | runs | playbook |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in here:
        acc = _spread(s, "test_acc", "{:.1%}", "{:.1f}", 100)
        lines.append(
            f"| {_approach(s)} | {_fit_time(s)} | {acc} | {_spread(s, 'test_f1', '{:.3f}', '{:.3f}')} "
            f"| {s['trainable_params']:,} of {s['total_params']:,} | {s['epochs']} | {s['best_epoch_mean']:.0f} "
            f"| {s['runs']} | {PLAYBOOK.get(s['strategy'], '-')} |"
        )
    plain = [s for s in here if s["strategy"] != "auto"]
    if plain and classes:
        best = max(plain, key=lambda s: s["test_acc_mean"])
        lines += ["", size_rule_verdict(plain, best, decide(size, classes).strategy)]
        lines += below_feature_extraction(plain)
        for a in (s for s in here if s["strategy"] == "auto"):
            gap = 100 * (best["test_acc_mean"] - a["test_acc_mean"])
            times = a["fit_seconds_mean"] / best["fit_seconds_mean"]
            lines.append(
                f"`auto`, choosing on val by probe and pilots, has a regret of {gap:.1f} points against the best "
                f"({best['strategy']}), at {times:.2f}x its fit time."
            )
    runs, total = sum(s["runs"] for s in here), sum(s["fit_seconds_mean"] * s["runs"] for s in here)
    return [*lines, "", f"This cell: {runs} run{'s' * (runs > 1)}, {_duration(total)} of fit time.", ""]


def _spread(s: dict, key: str, mean_format: str, std_format: str, scale: float = 1.0) -> str:
    """mean ± std over a cell's runs; the mean alone for a single run (one run has no spread to show)."""
    mean = mean_format.format(s[f"{key}_mean"])
    return mean if s["runs"] < 2 else f"{mean} ± {std_format.format(scale * s[f'{key}_std'])}"


def below_feature_extraction(plain: list[dict]) -> list[str]:
    """The fine-tuning strategies that did not beat the frozen backbone's head: their time bought nothing here."""
    frozen = next((s for s in plain if s["strategy"] == "feature_extraction"), None)
    if frozen is None:
        return []
    below = [s["strategy"] for s in plain if s["strategy"] not in ("feature_extraction", "scratch")
             and s["test_acc_mean"] <= frozen["test_acc_mean"]]  # fmt: skip
    if not below:
        return []
    return [f"Not above feature_extraction (a head on the frozen backbone) here: {', '.join(below)}."]


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
    machines = sorted({r["machine"] for r in rows if r.get("machine")})
    head = f"Machines the runs recorded (metrics.json `machine`): {'; '.join(machines)}.\n\n" if machines else ""
    write_text(out / "comparison.md", "# Strategy comparison\n\n" + head + text)
    with atomic_open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    flat = [{k: v for k, v in r.items() if k != "history"} for r in rows]
    write_text(out / "comparison.json", json.dumps({"runs": flat, "summary": summary, "failed": failed}, indent=2))
    from .plots import plot_accuracy_vs_size, plot_accuracy_vs_time, plot_learning_curves

    plots = [plot_accuracy_vs_time(rows, out / "accuracy_vs_time.png")]
    plots.append(plot_learning_curves(rows, out / "learning_curves.png"))
    plots.append(plot_accuracy_vs_size(summary, out / "accuracy_vs_size.png"))
    return {"markdown": text, "rows": rows, "summary": summary, "failed": failed, "plots": [p for p in plots if p]}
