"""Cross-validation as a run mode (`cv.folds=K`): K stratified folds over train + val, one run per fold.

Each fold is an ordinary run in `<run>/fold_<i>/` whose val split is fold i (test untouched: each fold's best
model is tested once at its end). A fold that finished is read back and an interrupted one continues from its
last.ckpt when the command is given again (`resume=<run>`), as a sweep's runs do. Every fold writes the
probabilities its best model gives its own val images, images it never trained on; the parent gathers them into
`out_of_fold.csv` (each train + val image once per repeat) and writes the mean over folds with its interval.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from tlexp.evaluation import intervals

from .atomic import write_text
from .claim import release
from .resume import RUN_CONFIG, in_place

OUT_OF_FOLD = "out_of_fold.csv"
SUMMARY = "cv_summary.json"  # written once, when every fold has finished


def is_parent(cfg: DictConfig) -> bool:
    """A command that runs every fold (cv.folds > 0, cv.fold not given)."""
    cv = cfg.get("cv") or {}
    return bool(cv.get("folds")) and cv.get("fold") is None


def saved_parent(run: Path) -> DictConfig | None:
    """The config of a cross-validation run directory (for resume=<it>), or None when it is not one."""
    path = run / RUN_CONFIG
    if not path.is_file() or (run / "checkpoints").is_dir():
        return None
    cfg = OmegaConf.load(path)
    return cfg if is_parent(cfg) else None


def resumes_parent(argv: list[str]) -> bool:
    """Whether the command line resumes a cross-validation run directory."""
    given = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    resume = given.get("resume")
    return bool(resume) and saved_parent(Path(resume).expanduser()) is not None


def fold_count(cfg: DictConfig) -> int:
    return int(cfg.cv.folds) * int(cfg.cv.get("repeats", 1))


def fold_config(cfg: DictConfig, index: int, parent: Path) -> DictConfig:
    one = copy.deepcopy(cfg)
    one.cv.fold = index
    one.output_dir = str(parent / f"fold_{index}")
    one.resume = None
    return one


def cross_validate(cfg: DictConfig, train_one: Callable[[DictConfig], dict]) -> dict:
    """Train every fold in turn (finished folds read back), then write and print the summary over folds."""
    parent = Path(str(cfg.output_dir))
    parent.mkdir(parents=True, exist_ok=True)
    parent_cfg = copy.deepcopy(cfg)
    parent_cfg.resume = None
    write_text(parent / RUN_CONFIG, OmegaConf.to_yaml(parent_cfg, resolve=True))
    release(parent)
    count = fold_count(cfg)
    print(
        f"\ncross-validation: {cfg.cv.folds} folds x {cfg.cv.get('repeats', 1)} repeat(s) = {count} runs of "
        f"strategy {cfg.strategy.name}, one per fold under {parent}. Each fold trains a whole run: head-only "
        "strategies on cached features take seconds per fold, fine-tuning ones the time of a run each. An estimate "
        "follows the first fold.",
        flush=True,
    )
    results = []
    for index in range(count):
        one, again = in_place(fold_config(cfg, index, parent))
        print(f"\n=== fold {index + 1} of {count}{f': this fold {again}' if again else ''} ===", flush=True)
        started = time.perf_counter()
        results.append(train_one(one))
        left = count - index - 1
        if left and not (again and "finished before" in again):
            # From the latest fold: the first also computes what later folds reuse (the test set's cached features).
            took = time.perf_counter() - started
            print(
                f"\ncross-validation: fold {index + 1} took {took:.0f} s; at that pace the other {left} take about "
                f"{took * left / 60:.1f} min",
                flush=True,
            )
    summary = summarise(results, gather(parent, count), parent)
    write_text(parent / SUMMARY, json.dumps(summary, indent=2))
    print_summary(summary, parent)
    return summary


def write_out_of_fold(out: Path, ids: list[str], labels, logits, class_names: list[str], fold: dict) -> Path:
    """One fold's val images with the probabilities its best model gives them (it never trained on them)."""
    probs = logits.float().softmax(1).numpy()
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["id", "label", "fold", "repeat", *(f"p_{name}" for name in class_names)])
    for image, label, p in zip(ids, np.asarray(labels), probs, strict=True):
        writer.writerow([image, class_names[int(label)], fold["part"], fold["repeat"], *(f"{v:.6f}" for v in p)])
    return write_text(out / OUT_OF_FOLD, rows.getvalue())


def gather(parent: Path, count: int) -> list[dict]:
    """Every fold's out-of-fold rows, written together as the parent's out_of_fold.csv."""
    rows, header = [], None
    for index in range(count):
        path = parent / f"fold_{index}" / OUT_OF_FOLD
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = header or reader.fieldnames
            rows += list(reader)
    if header:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        write_text(parent / OUT_OF_FOLD, text.getvalue())
    return rows


def pooled_accuracy(rows: list[dict]) -> intervals.Interval | None:
    """Out-of-fold accuracy over every train + val image of one repeat (the first): each predicted once."""
    first = [r for r in rows if int(r["repeat"]) == 0]
    if not first:
        return None
    classes = [k for k in first[0] if k.startswith("p_")]
    correct = sum(classes[int(np.argmax([float(r[c]) for c in classes]))] == f"p_{r['label']}" for r in first)
    return intervals.wilson(correct, len(first))


def summarise(results: list[dict], rows: list[dict], parent: Path) -> dict:
    """The mean over folds with its t-interval (val: the fold's own images; test: the same images every fold)."""
    val = intervals.mean([m.get("best_val_acc") for m in results], unit="folds")
    test = intervals.mean([m["test"].get("acc") for m in results], unit="folds")
    f1 = intervals.mean([m["test"].get("f1") for m in results], unit="folds")
    pooled = pooled_accuracy(rows)
    return {
        "folds": results[0]["fold"]["folds"] if results and results[0].get("fold") else None,
        "runs": len(results),
        "strategy": results[0]["strategy"] if results else None,
        "model": results[0]["model"] if results else None,
        "train_val_images": len({r["id"] for r in rows}),
        "test_images": results[0]["dataset_sizes"]["test"] if results else None,
        "val_acc": val.as_dict(),
        "best_val_acc": val.value,  # what a sweep over cross-validated runs optimises (optimize_metric)
        "out_of_fold_acc": pooled.as_dict() if pooled else None,
        "test_acc": test.as_dict(),
        "test_f1": f1.as_dict(),
        "fit_seconds": round(sum(m["fit_seconds"] for m in results), 2),
        "per_fold": [
            {
                "fold": m.get("fold"),
                "best_val_acc": m.get("best_val_acc"),
                "test_acc": m["test"].get("acc"),
                "run": str(Path(str(m.get("checkpoint") or "")).parent.parent) if m.get("checkpoint") else None,
            }
            for m in results
        ],
        "out_of_fold": str(parent / OUT_OF_FOLD),
    }


def print_summary(summary: dict, parent: Path) -> None:
    def said(key: str) -> str:
        found = summary.get(key)
        return str(intervals.Interval(**found)) if found else "-"

    rows = [
        ("cross-validation", f"{summary['runs']} folds of {summary['strategy']} ({summary['model']})"),
        ("val accuracy", f"{said('val_acc')} (each fold's best epoch, on its own val fold)"),
        ("out-of-fold acc", f"{said('out_of_fold_acc')} (every train + val image, predicted by a model that "
         "never saw it)"),
        ("test accuracy", f"{said('test_acc')} (each fold's model on the same {summary['test_images']} test images)"),
        ("test macro F1", said("test_f1")),
        ("fit time", f"{summary['fit_seconds']:.1f} s over all folds"),
        ("out-of-fold probs", summary["out_of_fold"]),
        ("run dir", str(parent)),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows) + "\n", flush=True)
