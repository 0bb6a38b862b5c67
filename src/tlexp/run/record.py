"""What a finished run leaves behind: metrics.json, the TensorBoard hparams row, the console summary."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from tlexp.evaluation import intervals
from tlexp.evaluation import unknown as unknown_inputs

from .accel import precision_ran
from .atomic import write_text
from .build import Run


@dataclass
class Outcome:
    """What fit and test measured: timings, the best checkpoint, test metrics, the report and the probe."""

    fit_seconds: float
    test_seconds: float
    best: str | None  # path of the best checkpoint (None when no validation ran)
    test: dict
    phase_history: list[dict]
    epochs: list[dict]
    evaluation: dict | None
    probe: dict | None
    head_init: dict | None = None  # head_init: probe: the probe the head started from
    lr_find: dict | None = None  # lr_find=true: the range test's suggestion (not applied)
    test_logits: tuple | None = None  # (logits, labels) of the test pass: intervals for its figures
    best_val_loss: float | None = None
    best_tied: int = 0  # epochs whose val accuracy equalled the best one's: the val loss chose among them
    unknown: dict | None = None  # the 'unknown' threshold chosen on val (evaluation/unknown.py)


def machine(trainer) -> str:
    """Where the fit time was measured: the CPU (and GPU), and the torch threads the run used."""
    device = trainer.strategy.root_device
    gpu = [torch.cuda.get_device_name(device)] if device.type == "cuda" else []
    return ", ".join([platform.machine(), f"{os.cpu_count()} CPU cores", *gpu, f"{torch.get_num_threads()} threads"])


def metrics_of(run: Run, outcome: Outcome) -> dict:
    """The run record written to metrics.json (the compare report and `objective` read it)."""
    cfg, module, phases, dm = run.cfg, run.module, run.phases, run.datamodule
    best_score = run.best.best_model_score
    return {
        "model": cfg.model.name,
        "weights": run.weights_id,
        "strategy": run.strategy["name"],
        "auto": run.decision.as_dict() if run.decision else None,
        "phases": [p.as_dict() for p in phases],
        "dataset": cfg.dataset.name,
        "dataset_sizes": dm.sizes(),
        "dataset_requested": {k: cfg.dataset.get(k) for k in ("per_class", "train_size")},
        "num_classes": dm.num_classes,
        "class_names": dm.class_names,
        "preprocessing": run.preprocessing.as_dict(),
        "precision": precision_ran(run.trainer),
        "precision_requested": str(cfg.trainer.get("precision", "32-true")),
        "world_size": run.trainer.world_size,  # processes that trained (DDP); the batch is per process
        "channels_last": run.channels_last,
        "compile": bool(cfg.get("compile", False)),
        "seed": cfg.seed,
        "epochs": run.schedule.total_epochs,
        "best_epoch": best_epoch(outcome.best),
        "best_val_acc": float(best_score) if best_score is not None else None,
        "best_val_loss": outcome.best_val_loss,
        "best_epoch_tied_on_val_acc": outcome.best_tied,  # > 0: that many epochs tied with it; the val loss chose
        # strategy=auto: choosing (probe, pilots) is part of what the run cost
        "fit_seconds": round(outcome.fit_seconds + (run.decision.seconds if run.decision else 0.0), 2),
        "machine": machine(run.trainer),
        "test_seconds": round(outcome.test_seconds, 2),
        "trainable_params": max(module.trainable_parameters(p.train) for p in phases),
        "trainable_params_per_phase": [module.trainable_parameters(p.train) for p in phases],
        "total_params": module.total_parameters(),
        "test": {k.removeprefix("test/"): float(v) for k, v in outcome.test.items()},
        "test_intervals": test_intervals(outcome, dm.num_classes, dm.sizes()["test"], cfg.seed),
        "best_val_interval": val_interval(best_score, dm.sizes()["val"]),
        "fold": dm.fold.as_dict() if dm.fold else None,  # cv.fold: this run validated on that fold
        "checkpoint": outcome.best,
        "resumed": bool(cfg.get("resume")),
        "history": outcome.epochs,
        "phase_history": outcome.phase_history,
        "data_checks": dm.report(),  # skipped/broken files, leaks removed, class counts, imbalance
        "evaluation": outcome.evaluation,
        "feature_cache": run.cache.report() if run.cache is not None else None,
        "linear_probe": outcome.probe,
        "head_init": outcome.head_init,
        "lr_find": outcome.lr_find,
        "unknown": outcome.unknown,  # score, temperature, threshold, reject_rate, val_images (also in the checkpoint)
    }


def test_intervals(outcome: Outcome, num_classes: int, test_images: int, seed: int) -> dict:
    """95% intervals of the test figures: from the test pass's logits, or (DDP: each rank holds a shard) Wilson
    from the accuracy over the whole test split."""
    if outcome.test_logits is not None:
        logits, labels = outcome.test_logits
        found = intervals.of_logits(logits.numpy(), labels.numpy(), num_classes, seed)
    else:
        acc = float(outcome.test.get("test/acc", float("nan")))
        found = {"acc": intervals.wilson(round(acc * test_images), test_images)} if acc == acc else {}
    top5 = outcome.test.get("test/acc_top5")
    if top5 is not None and found:  # a share of the same images as the accuracy: Wilson on its count
        n = found["acc"].n
        found["acc_top5"] = intervals.wilson(round(float(top5) * n), n)
    return {k: v.as_dict() for k, v in found.items()}


def val_interval(best_score, val_images: int) -> dict | None:
    if best_score is None:
        return None
    return intervals.wilson(round(float(best_score) * val_images), val_images).as_dict()


def figure(metrics: dict, key: str) -> str:
    """A test figure as `0.84 [0.83, 0.85] on 10000 images`, or its plain value where no interval was made."""
    found = (metrics.get("test_intervals") or {}).get(key)
    if found:
        return str(intervals.Interval(**found))
    value = metrics["test"].get(key, float("nan"))
    return f"{value:.4f}"


def record(run: Run, outcome: Outcome) -> dict:
    """Write the run's record (rank 0 under DDP), log its hparams row, print its summary; returns the metrics."""
    metrics = metrics_of(run, outcome)
    if run.trainer.is_global_zero:
        write_text(run.out / "metrics.json", json.dumps(metrics, indent=2))
    hparams = {
        "model": metrics["model"],
        "strategy": metrics["strategy"],
        "train_images": metrics["dataset_sizes"]["train"],
        "seed": metrics["seed"],
        **{f"lr/{p.name}": max(p.lr.values()) for p in run.phases},
    }
    final = {f"hparams/test_{k}": v for k, v in metrics["test"].items()}
    if outcome.evaluation:
        final["hparams/test_ece"] = outcome.evaluation["ece"]
    run.logger.log_hyperparams(hparams, final)  # rank 0 only (Lightning)
    if run.trainer.is_global_zero:
        print_summary(metrics, run.out)
    return metrics


def best_epoch(path: str | None) -> int | None:
    if not path or "epoch=" not in path:
        return None
    return int(Path(path).stem.split("epoch=")[1].split("-")[0])


def best_said(metrics: dict) -> str:
    tied = metrics.get("best_epoch_tied_on_val_acc") or 0
    return f"{metrics['best_epoch']}" + (
        f", its val accuracy tied by {tied} other epoch(s): lowest val loss" if tied else ""
    )


def print_summary(metrics: dict, out: Path) -> None:
    test = metrics["test"]
    rows = [
        ("model", metrics["model"]),
        ("strategy", f"{metrics['strategy']} ({' -> '.join(p['name'] for p in metrics['phases'])})"),
        *([("auto", metrics["auto"]["reason"])] if metrics.get("auto") else []),
        ("train / val / test", " / ".join(str(metrics["dataset_sizes"][k]) for k in ("train", "val", "test"))),
        ("trainable params", f"{metrics['trainable_params']:,} of {metrics['total_params']:,}"),
        ("fit time", f"{metrics['fit_seconds']:.1f} s ({metrics['epochs']} epochs, best {best_said(metrics)})"),
        ("test accuracy", figure(metrics, "acc")),
        ("test macro F1", figure(metrics, "f1")),
    ]
    if metrics.get("best_val_interval"):
        rows.insert(-2, ("best val accuracy", str(intervals.Interval(**metrics["best_val_interval"]))))
    if "acc_top5" in test:
        rows.append(("test top-5 acc", figure(metrics, "acc_top5")))
    cache = metrics.get("feature_cache")
    if cache:
        done = f"{len(cache['computed'])} computed, {len(cache['loaded'])} loaded"
        rows.append(("feature cache", f"{cache['cached_epochs']} epochs on cached features ({done})"))
    probe = metrics.get("linear_probe")
    if probe:
        how = f"L-BFGS, L2 {probe['l2']:g} chosen on val, {probe['seconds']} s"
        n = metrics["dataset_sizes"]["test"]
        rows.append(("linear probe acc", f"{intervals.wilson(round(probe['test']['acc'] * n), n)} ({how})"))
    if metrics.get("checkpoint"):
        rows.append(("best checkpoint", metrics["checkpoint"]))  # for predict / evaluate / export
    if metrics.get("unknown"):
        rows.append(("unknown", unknown_inputs.describe(metrics["unknown"])))
    rows.append(("run dir", str(out)))
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows) + "\n", flush=True)
