"""Aggregate run directories into the strategy comparison: table, CSV/JSON, and plots.

Every figure carries its 95% interval and the count it rests on (`tlexp.evaluation.intervals`): one run's test
accuracy its Wilson interval on the test images, a group of runs the mean with its t-interval over seeds or over
cross-validation folds, and the paired differences of val accuracy between strategies over the same folds (or seeds).
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from tlexp.auto import decide
from tlexp.config.errors import ConfigError
from tlexp.evaluation import intervals
from tlexp.evaluation.intervals import Interval
from tlexp.run.atomic import atomic_open, write_text
from tlexp.run.resume import RUN_CONFIG

COLUMNS = [
    "run", "dataset", "strategy", "picked", "seed", "fold", "repeat", "folds", "train_images", "test_acc",
    "test_acc_low", "test_acc_high", "test_n", "test_f1", "test_f1_low", "test_f1_high", "fit_seconds", "cache",
    "test_seconds", "trainable_params", "total_params", "epochs", "epoch_scale", "best_epoch", "best_val_acc",
    "best_val_acc_low", "best_val_acc_high", "val_n", "machine",
]  # fmt: skip
ORDER = ["scratch", "feature_extraction", "finetune", "gradual", "lp_ft", "auto"]
# The playbook's test accuracy per strategy (its ten-class equipment photos, about 1,000 training images), shown
# beside each row for comparison; other data need not come near it.
PLAYBOOK = {"scratch": "60-70%", "feature_extraction": "85-90%", "finetune": "92-95%", "gradual": "90-93%"}
FOLD_DIR = re.compile(r"^fold_(\d+)$")
NOT_DISTINGUISHABLE = "not distinguishable on this data"


def collect(root: Path) -> tuple[list[dict], list[dict]]:
    """One row per finished run under `root` (one per fold of a cross-validated run); failed or unfinished runs
    listed apart, never dropped."""
    rows, failed = [], []
    configs = sorted(root.rglob(".hydra/config.yaml"), key=lambda p: _natural(p.parent.parent.name))
    runs = [config.parent.parent for config in configs]
    known = set(runs)
    for config, run in zip(configs, runs, strict=True):
        name = run.relative_to(root).as_posix()  # unique also where runs sit in folders of their own
        own = run / RUN_CONFIG  # tlexp's record of the run; Hydra's copy only where the run failed before it
        cfg = OmegaConf.load(own if own.is_file() else config)
        folds = [d for d in _fold_dirs(run) if d not in known]
        if folds:  # cv.fold=null: every fold in <run>/fold_<i>/; the run's own metrics.json is their mean
            for fold in folds:
                fold_cfg = OmegaConf.load(fold / RUN_CONFIG) if (fold / RUN_CONFIG).is_file() else cfg
                index = int(FOLD_DIR.match(fold.name).group(1))
                _read(fold, f"{name}/{fold.name}", fold_cfg, rows, failed, fold_index=index, parent=run)
        else:
            _read(run, name, cfg, rows, failed)
    _assign_cells(rows)
    return rows, failed


def _fold_dirs(run: Path) -> list[Path]:
    found = [d for d in run.iterdir() if d.is_dir() and FOLD_DIR.match(d.name)] if run.is_dir() else []
    return sorted(found, key=lambda d: int(FOLD_DIR.match(d.name).group(1)))


def _read(run: Path, name: str, cfg, rows: list, failed: list, fold_index=None, parent: Path | None = None):
    strategy = str(OmegaConf.select(cfg, "strategy.name", default="?"))
    seed = OmegaConf.select(cfg, "seed", default=None)
    metrics_file = run / "metrics.json"
    if metrics_file.is_file():
        rows.append(run_row(name, cfg, json.loads(metrics_file.read_text()), strategy, seed, fold_index))
        return
    errors = [d / "error.json" for d in (run, parent) if d is not None and (d / "error.json").is_file()]
    reason = (
        json.loads(errors[0].read_text()).get("error", "?")
        if errors
        else "no metrics.json: the run crashed, was killed, or is still running"
    )
    failed.append({"run": name, "strategy": strategy, "seed": seed, "error": reason.splitlines()[0][:300]})


def run_row(name: str, cfg, m: dict, strategy: str, seed, fold_index: int | None = None) -> dict:
    """One finished run's row: its figures with their 95% intervals and counts (older metrics.json: recomputed)."""
    sizes = m.get("dataset_sizes") or {}
    test, val = accuracy_on_test(m), accuracy_on_val(m)
    f1 = ((m.get("test_intervals") or {}).get("f1")) or {}
    fold = m.get("fold") or ({"index": fold_index} if fold_index is not None else None)
    folds = int(OmegaConf.select(cfg, "cv.folds", default=0) or 0)
    return {
        "run": name,
        "dataset": dataset_label(cfg, m),
        "strategy": strategy if strategy == "auto" else m["strategy"],
        "picked": m["strategy"] if strategy == "auto" else None,  # auto's choice
        "seed": m.get("seed", seed),
        "fold": fold["index"] if fold else None,
        "repeat": fold.get("repeat", 0) if fold else None,
        "folds": (fold.get("folds") or folds or None) if fold else None,
        "repeats": (fold.get("repeats") or OmegaConf.select(cfg, "cv.repeats", default=1)) if fold else None,
        "requested_size": requested_size(cfg),
        "train_images": sizes["train"],
        "num_classes": m.get("num_classes"),
        "test_acc": m["test"].get("acc"),
        "test_acc_low": _r4(test.low) if test else None,
        "test_acc_high": _r4(test.high) if test else None,
        "test_n": test.n if test else sizes.get("test"),
        "test_f1": m["test"].get("f1"),
        "test_f1_low": _r4(f1.get("low")),
        "test_f1_high": _r4(f1.get("high")),
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
        "best_val_acc_low": _r4(val.low) if val else None,
        "best_val_acc_high": _r4(val.high) if val else None,
        "val_n": val.n if val else sizes.get("val"),
        "history": m.get("history", []),
        "phase_epochs": [p["epochs"] for p in m.get("phases", [])],
    }


def _r4(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _saved(d: dict | None) -> Interval | None:
    if not d or d.get("value") is None:
        return None
    return Interval(d["value"], d.get("low"), d.get("high"), int(d.get("n") or 0), d.get("method", "wilson"),
                    d.get("unit", "images"))  # fmt: skip


def accuracy_on_test(m: dict) -> Interval | None:
    """Test accuracy with its Wilson interval: `test_intervals.acc`, or from the accuracy and the test count."""
    saved = _saved((m.get("test_intervals") or {}).get("acc"))
    if saved:
        return saved
    acc, n = m.get("test", {}).get("acc"), (m.get("dataset_sizes") or {}).get("test")
    return intervals.wilson(round(acc * n), n) if acc is not None and n else None


def accuracy_on_val(m: dict) -> Interval | None:
    """The best epoch's val accuracy with its Wilson interval: `best_val_interval`, or from the val count."""
    saved = _saved(m.get("best_val_interval"))
    if saved:
        return saved
    acc, n = m.get("best_val_acc"), (m.get("dataset_sizes") or {}).get("val")
    return intervals.wilson(round(acc * n), n) if acc is not None and n else None


def requested_size(cfg) -> str:
    """The size the config asked for (the same for every fold of a cell, whose train counts differ by a few)."""
    asked = [f"{k}={OmegaConf.select(cfg, f'dataset.{k}', default=None)}" for k in ("per_class", "train_size")]
    return ", ".join(asked)


def _assign_cells(rows: list[dict]) -> None:
    """`cell_images`, the training-set size a row's cell is known by: its own count, or for cross-validation folds
    (whose train counts differ by a few images) the median over the folds that split the same data."""
    pools = defaultdict(list)
    for r in rows:
        if r["fold"] is not None:
            pools[_pool(r)].append(r["train_images"])
    for r in rows:
        r["cell_images"] = statistics.median_low(pools[_pool(r)]) if r["fold"] is not None else r["train_images"]


def _pool(r: dict) -> tuple:
    return r.get("dataset", ""), r["folds"], r["repeats"], r["requested_size"]


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


def group_interval(rs: list[dict], key: str, unit: str, method: str = "wilson") -> Interval | None:
    """A group's figure: one run's own interval (Wilson, F1 bootstrapped), several runs' mean with its t-interval.

    Runs that all scored the same give no spread to make a t-interval from: they show one run's own interval."""
    values = [r.get(key) for r in rs if r.get(key) is not None]
    if len(rs) == 1 or (len(values) > 1 and len(set(values)) == 1):
        r = next((r for r in rs if r.get(key) is not None), None)
        if r is None:
            return None
        n = r.get("val_n" if key == "best_val_acc" else "test_n") or 0
        known = r.get(f"{key}_low") is not None and r.get(f"{key}_high") is not None
        return Interval(r[key], r.get(f"{key}_low"), r.get(f"{key}_high"), n, method if known else "none")
    iv = intervals.mean(values, unit=unit)
    return None if iv.n == 0 else iv  # a share's interval stays in 0..1


def _as_dict(iv: Interval | None) -> dict | None:
    return iv.as_dict() if iv is not None else None


def aggregate(rows: list[dict]) -> list[dict]:
    """Per (dataset, training-set size, folds, strategy): the mean with its 95% interval over seeds or folds (one
    run: its own interval), the std beside it, and the counts the figures rest on."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        key = (r.get("dataset", ""), r.get("cell_images", r["train_images"]), r.get("folds") or 0, r["strategy"])
        groups[key].append(r)
    summary = []
    for (dataset, size, folds, strategy), rs in groups.items():
        unit = "folds" if folds else "seeds"
        acc, acc_sd = _mean_std([r["test_acc"] for r in rs])
        f1, f1_sd = _mean_std([r["test_f1"] for r in rs])
        acc_iv = group_interval(rs, "test_acc", unit)
        f1_iv = group_interval(rs, "test_f1", unit, method="bootstrap")
        val_iv = group_interval(rs, "best_val_acc", unit)
        summary.append(
            {
                "dataset": dataset,
                "train_images": size,
                "folds": folds,
                "repeats": max((r.get("repeats") or 1) for r in rs) if folds else None,
                "num_classes": rs[0].get("num_classes"),
                "strategy": strategy,
                "runs": len(rs),
                "seeds": len({r.get("seed") for r in rs}),
                "unit": acc_iv.unit if acc_iv else unit,  # images: one run's own interval
                "test_images": _most_common([r.get("test_n") for r in rs]),
                "val_images": _most_common([r.get("val_n") for r in rs]),
                "test_acc_mean": acc,
                "test_acc_std": acc_sd,
                "test_acc_low": acc_iv.low if acc_iv else None,
                "test_acc_high": acc_iv.high if acc_iv else None,
                "test_acc_interval": _as_dict(acc_iv),
                "test_f1_mean": f1,
                "test_f1_std": f1_sd,
                "test_f1_low": f1_iv.low if f1_iv else None,
                "test_f1_high": f1_iv.high if f1_iv else None,
                "test_f1_interval": _as_dict(f1_iv),
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
                "best_val_acc_std": _mean_std([r.get("best_val_acc") for r in rs])[1],
                "best_val_acc_low": val_iv.low if val_iv else None,
                "best_val_acc_high": val_iv.high if val_iv else None,
                "best_val_acc_interval": _as_dict(val_iv),
            }
        )
    rank = {s: i for i, s in enumerate(ORDER)}
    return sorted(
        summary,
        key=lambda s: (s["dataset"], s["train_images"], s["folds"], rank.get(s["strategy"], 99), s["strategy"]),
    )


def _most_common(values: list) -> int | None:
    values = [v for v in values if v]
    return Counter(values).most_common(1)[0][0] if values else None


def _cell_key(s: dict) -> tuple:
    return s["dataset"], s["train_images"], s.get("folds") or 0


def paired_differences(rows: list[dict], summary: list[dict]) -> list[dict]:
    """Per cell, the strategy best on val (mean best_val_acc over its folds, or seeds) against each other one: the
    per-fold differences of val accuracy matched on (fold, repeat, seed), their mean with its t-interval over folds.
    Without folds but with several seeds, the same matched on seed (the seeds share one split)."""
    found = []
    for cell in sorted({_cell_key(s) for s in summary}):
        here = [s for s in summary if _cell_key(s) == cell and s["best_val_acc_mean"] == s["best_val_acc_mean"]]
        folds = cell[2]
        over = "folds" if folds else "seeds"
        if len(here) < 2 or (not folds and max(s["seeds"] for s in here) < 2):
            continue
        best = max(here, key=lambda s: s["best_val_acc_mean"])  # the first in ORDER on a tie
        matched = {}
        for s in here:
            matched[s["strategy"]] = {
                ((r["fold"], r["repeat"], r["seed"]) if folds else (r["seed"],)): r["best_val_acc"]
                for r in rows
                if (r.get("dataset", ""), r["cell_images"], r.get("folds") or 0) == cell
                and r["strategy"] == s["strategy"]
                and r.get("best_val_acc") is not None
            }
        ours = matched[best["strategy"]]
        for s in here:
            if s is best:
                continue
            theirs = matched[s["strategy"]]
            common = sorted(set(ours) & set(theirs), key=str)
            diff = intervals.mean([ours[k] - theirs[k] for k in common], unit=over, bounds=(-1.0, 1.0))
            found.append(
                {
                    "dataset": cell[0],
                    "train_images": cell[1],
                    "folds": folds,
                    "over": over,
                    "metric": "best_val_acc",
                    "best": best["strategy"],
                    "best_val_acc_mean": best["best_val_acc_mean"],
                    "best_val_acc": best["best_val_acc_interval"],
                    "other": s["strategy"],
                    "pairs": len(common),
                    "difference": diff.as_dict(),
                    "distinguishable": diff.excludes_zero,
                    "text": diff.text(scale=100, signed=True) if common else "no matched runs",
                }
            )
    return found


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


def markdown(summary: list[dict], failed: list[dict], paired: list[dict] | None = None) -> str:
    lines = []
    for cell in sorted({_cell_key(s) for s in summary}):
        here = [s for s in summary if _cell_key(s) == cell]
        lines += cell_markdown(here, [p for p in paired or [] if _cell_key(p) == cell])
    if failed:
        lines += ["### Runs that did not finish", "", "| run | strategy | seed | error |", "|---|---|---|---|"]
        lines += [f"| {f['run']} | {f['strategy']} | {f['seed']} | {f['error']} |" for f in failed]
        lines.append("")
    return "\n".join(lines)


def figure(s: dict, key: str, scale: float = 1.0) -> str:
    """`84 [82, 86] on 3 seeds`: the figure with its 95% interval, only the digits the interval supports."""
    iv = s.get(f"{key}_interval", s.get(key))
    if not iv or iv.get("value") is None or iv["value"] != iv["value"]:
        return "-"
    return Interval(**iv).text(scale=scale)


def _heading(here: list[dict]) -> str:
    s = here[0]
    dataset, size, classes, folds = s["dataset"], s["train_images"], s.get("num_classes") or 0, s.get("folds")
    title = f"{dataset}: " if dataset else ""
    if not folds:
        return f"### {title}{size} training images" + (f", {classes} classes" if classes else "")
    repeats = max(t.get("repeats") or 1 for t in here)
    cv = f"{folds}-fold cross-validation over train + val" + (f", {repeats} repeats" if repeats > 1 else "")
    return f"### {title}about {size} training images per fold ({cv})" + (f", {classes} classes" if classes else "")


def counts_note(here: list[dict]) -> str:
    """What the figures rest on: the test images (one run's Wilson half-width there), the val images, the unit."""
    tests = sorted({s["test_images"] for s in here if s.get("test_images")})
    vals = sorted({s["val_images"] for s in here if s.get("val_images")})
    folds = here[0].get("folds")
    over = (
        f"over the {folds} folds' models (folds overlap in training data: the interval is somewhat narrow)"
        if folds
        else "over seeds (the seeds share one split and one test set: the interval is the spread between "
        "training runs, not a fresh sample of images)"
    )
    text = f"Figures with their 95% interval: for several runs the mean with its t-interval {over}; for one run "
    text += "its own interval (Wilson; F1 bootstrapped where the run recorded it)."
    if tests:
        acc = max(s["test_acc_mean"] for s in here if s["test_acc_mean"] == s["test_acc_mean"])
        one = intervals.wilson(round(acc * tests[-1]), tests[-1])
        half = 100 * (one.high - one.low) / 2
        images = " / ".join(str(n) for n in tests)
        text += f" Every test figure rests on {images} test images: one run's accuracy there is about "
        text += f"±{half:.{0 if half >= 2 else 1}f} points (Wilson)."
    if vals:
        images = " / ".join(str(n) for n in vals)
        text += f" Val accuracy (the best epoch's{', out of fold' if folds else ''}) rests on {images} val images."
    return text


def paired_markdown(paired: list[dict]) -> list[str]:
    if not paired:
        return []
    p = paired[0]
    best = f"**{p['best']}** (the best mean val accuracy, %: {figure(p, 'best_val_acc', 100)})"
    if p["over"] == "folds":
        head = (
            f"Paired on the same folds: {best} minus each other strategy, per fold (matched on fold, repeat and "
            "seed), the mean difference of out-of-fold val accuracy with its 95% t-interval, in points:"
        )
    else:
        head = (
            "Paired over seeds (no folds; the seeds share one split, so this is training noise on the same val "
            f"images, not a fresh sample of data): {best} minus each other strategy, matched on seed, the mean "
            "difference of val accuracy with its 95% t-interval, in points:"
        )
    lines = ["", head, ""]
    for p in paired:
        verdict = f"{p['best']} ahead" if p["distinguishable"] else NOT_DISTINGUISHABLE
        if p["distinguishable"] and p["difference"]["value"] < 0:
            verdict = f"{p['other']} ahead"
        alone = f" (one matched {p['over'].rstrip('s')}: no interval)" if p["pairs"] == 1 else ""
        if p["pairs"] > 1 and p["difference"]["low"] is None:
            alone = f" (the same difference on every {p['over'].rstrip('s')}: no spread to make an interval from)"
        lines.append(f"- {p['best']} - {p['other']}: {p['text']}{alone}: {verdict}")
    return lines


def cell_markdown(here: list[dict], paired: list[dict] | None = None) -> list[str]:
    """One dataset x size: the table, what the size rule and auto made of it, and what the cell cost."""
    size, classes = here[0]["train_images"], here[0].get("num_classes") or 0
    scales = sorted({x for s in here for x in s.get("epoch_scales", [1.0]) if x != 1.0})
    lines = [
        _heading(here),
        "",
        *(
            [f"Shortened runs: every phase's epochs x{', x'.join(f'{x:g}' for x in scales)} (epoch_scale).", ""]
            if scales
            else []
        ),  # fmt: skip
        "| approach | fit time | test accuracy, % [95%] | macro F1 [95%] | val accuracy, % [95%] | trainable params "
        "| epochs | best epoch | runs | playbook |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in here:
        lines.append(
            f"| {_approach(s)} | {_fit_time(s)} | {figure(s, 'test_acc', 100)} | {figure(s, 'test_f1')} "
            f"| {figure(s, 'best_val_acc', 100)} | {s['trainable_params']:,} of {s['total_params']:,} | {s['epochs']} "
            f"| {s['best_epoch_mean']:.0f} | {s['runs']} | {PLAYBOOK.get(s['strategy'], '-')} |"
        )
    lines += ["", counts_note(here), *paired_markdown(paired or [])]
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
    paired = paired_differences(rows, summary)
    text = markdown(summary, failed, paired)
    machines = sorted({r["machine"] for r in rows if r.get("machine")})
    head = f"Machines the runs recorded (metrics.json `machine`): {'; '.join(machines)}.\n\n" if machines else ""
    write_text(out / "comparison.md", "# Strategy comparison\n\n" + head + text)
    with atomic_open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    flat = [{k: v for k, v in r.items() if k != "history"} for r in rows]
    saved = {"runs": flat, "summary": summary, "paired": paired, "failed": failed}
    write_text(out / "comparison.json", json.dumps(saved, indent=2))
    from .plots import plot_accuracy_vs_size, plot_accuracy_vs_time, plot_learning_curves

    plots = [plot_accuracy_vs_time(rows, out / "accuracy_vs_time.png")]
    plots.append(plot_learning_curves(rows, out / "learning_curves.png"))
    plots.append(plot_accuracy_vs_size(summary, out / "accuracy_vs_size.png"))
    return {
        "markdown": text, "rows": rows, "summary": summary, "paired": paired, "failed": failed,
        "plots": [p for p in plots if p],
    }  # fmt: skip
