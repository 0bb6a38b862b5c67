"""`python -m tlexp.plan dataset=...`: how many more images, and of which classes; with `pool=`, which ones to label.

1. The frozen backbone's eval-view features of train and val, through the feature cache (seconds when cached).
2. The linear probe's learning curve (planning/curve.py): nested stratified subsets of the training set
   (`plan.fractions`) over `plan.seeds` seeds, each val image scored by a probe whose L2 the other half of val chose;
   a saturating power law fitted to it, with bootstrap intervals; the same per class (recall).
3. With `plan.budget_minutes` > 0, the strategy's curve as well (`plan.strategy`, or auto's choice): training runs
   built as `python -m tlexp.train` builds them (run.build), at `dataset.per_class` / `dataset.train_size` of the
   nested sizes, `plan.train_seeds` seeds, fitted only (no test pass), as many as the budget allows.
4. The plan: the expected accuracy at `plan.at` x the current images, the images needed for `target`, the classes that
   gain most per labelled image; `plan.json`, `curve.png` (and TensorBoard), the plan in words.
5. With `pool=<folder>`: every image there ranked by what its label would teach (planning/pool.py): `ranking.csv`,
   `pool_sheet.png`, and how many of each class the first `plan.batch` are expected to hold.
Test is never read: every figure comes from train and val.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

import hydra
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from matplotlib.figure import Figure
from omegaconf import DictConfig

from tlexp import auto
from tlexp.config.cli import precheck
from tlexp.config.errors import ConfigError, DataError, exit_on_user_error
from tlexp.config.validate import check_writable
from tlexp.data.images import ImageFiles
from tlexp.evaluation import figures
from tlexp.evaluation.intervals import decimals_for
from tlexp.features.cache import (
    cache_key,
    eval_feature_cache,
    extract,
    forward_numerics,
    images_fingerprint,
    library_versions,
    transform_steps,
    weights_fingerprint,
)
from tlexp.features.probe import fit_probe
from tlexp.model.backbones import create_backbone
from tlexp.planning import curve as curves
from tlexp.planning.pool import expected_counts, rank_pool, scan_pool
from tlexp.run.atomic import write_text
from tlexp.run.build import (
    build_datamodule,
    build_run,
    check_config,
    image_size_hint,
    init_head,
    plain,
    preprocessing,
    replaced,
    set_threads,
)

CLASSES_SHOWN = 5  # classes listed on the console (plan.json holds them all)
CHECKED_UP_TO = 10  # forecasts beyond this multiple of the current images were not checked by the bench


def plan(cfg: DictConfig) -> dict:
    """Features, the curves, the plan, the pool's ranking; returns what plan.json holds."""
    started = time.perf_counter()
    check_config(cfg)
    out = output_dir(cfg)
    check_writable(out, "Pass out=<a writable folder>.")
    out.mkdir(parents=True, exist_ok=True)
    set_threads(cfg)
    if str(cfg.model.weights).lower() in ("none", "random", "null"):
        raise ConfigError("the plan measures the pretrained backbone's features: set model.weights (not none).")
    if cfg.get("pool") and not Path(str(cfg.pool)).expanduser().is_dir():  # before minutes of work, not after
        raise DataError(f"pool={cfg.pool}: no such folder. Point pool= at a folder of unlabelled images (any depth).")
    p = cfg.plan
    backbone, _ = create_backbone(cfg.model.name, cfg.model.weights, image_size_hint(cfg))
    pre = preprocessing(cfg, backbone)
    dm = build_datamodule(cfg, pre, augment_on="cpu")  # features use the eval transform, normalised in the loader
    dm.setup()
    cache = eval_feature_cache(plain(cfg.cache), dm, backbone, cfg.model.name)
    train, val = cache.features("train"), cache.features("val")  # never test
    names, level, seed = dm.class_names, float(p.level), int(cfg.seed)
    measured = curves.measure_probe(train, val, len(names), list(p.fractions), int(p.seeds), seed)
    probe = summarise_curve(measured, names, train[1], cfg, "linear probe (frozen features)")
    probe["how"] = (f"the linear probe of features/probe.py on nested subsets, {int(p.seeds)} seeds; each val image "
                    "scored by a probe whose L2 the other half of val chose")  # fmt: skip
    summary = {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "classes": names,
        "images": {"train": len(train[1]), "val": len(val[1])},
        "train_counts": dict(zip(names, np.bincount(train[1].numpy(), minlength=len(names)).tolist(), strict=True)),
        "level": level,
        "target": None if cfg.get("target") is None else float(cfg.target),
        "probe": probe,
        "strategy": None,
        "pool": None,
    }
    if float(p.budget_minutes) > 0:
        summary["strategy"] = strategy_curve(cfg, dm, names, train[1], out, started)
    if cfg.get("pool"):
        summary["pool"] = rank_images(cfg, dm, cache, train, val, out)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    writer = tensorboard_writer(out)
    figures.save(curve_figure(summary), out / "curve.png", writer, "plan/curve")
    if writer is not None:
        writer.close()
    write_text(out / "plan.json", json.dumps(summary, indent=2))
    print(format_plan(summary, out), flush=True)
    return summary


def output_dir(cfg: DictConfig) -> Path:
    """`out`, resolved once (its default holds the time: a second read could name the next second)."""
    if cfg.get("out"):
        return Path(str(cfg.out)).expanduser()
    return Path("outputs/plan") / f"{datetime.now():%Y-%m-%d/%H-%M-%S}_{cfg.dataset.name}"


def tensorboard_writer(out: Path):
    """A SummaryWriter in <out>/tensorboard, or None when TensorBoard is not installed (the PNG is written anyway)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


# ---------------------------------------------------------------- curves -> the plan


def summarise_curve(measured: curves.Measured, names: list[str], train_labels, cfg: DictConfig, label: str) -> dict:
    """One curve (overall and per class) fitted, and what it says: forecasts, images for the target, class gains."""
    p = cfg.plan
    level, replicates, seed = float(p.level), int(p.bootstrap), int(cfg.seed)
    overall = curves.fit(measured, replicates, level, seed)
    n0 = measured.n0
    forecasts = []
    for k in p.at:
        n = int(round(float(k) * n0))
        value, low, high = overall.forecast(n)
        forecasts.append({"times": float(k), "images": n, "acc": value, "low": low, "high": high})
    found = {
        "label": label,
        "curve": overall.as_dict(replicates=True),
        "now": dict(zip(("acc", "low", "high"), overall.forecast(n0), strict=True)),
        "forecasts": forecasts,
        "target": target_plan(overall, cfg),
        "classes": class_gains(measured, names, train_labels, cfg),
        "seconds": round(measured.seconds, 1),
    }
    return found


def target_plan(curve: curves.Curve, cfg: DictConfig) -> dict | None:
    """The images needed for `target`, or why they cannot be given."""
    if cfg.get("target") is None:
        return None
    target = float(cfg.target)
    a, a_low, a_high = curve.asymptote()
    n, low, high = curve.images_for(target)
    found = {"target": target, "asymptote": [a, a_low, a_high], "images": n, "low": low, "high": high}
    now = curve.forecast(curve.n0)
    if now[0] >= target:
        found["verdict"] = "reached"
    elif a_high < target:
        found["verdict"] = "not reachable"  # even the asymptote's upper bound falls short
    elif not math.isfinite(high):
        found["verdict"] = "maybe not reachable"  # some refits never reach it
    else:
        found["verdict"] = "reachable"
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in found.items()}


def class_gains(measured: curves.Measured, names: list[str], train_labels, cfg: DictConfig) -> list[dict]:
    """Per class: recall now and at 2x, and what one more image of the class is worth, most valuable first.

    The gain of doubling every class is put down to each class's own new images: the accuracy it adds is the
    class's recall gain times its share of val, per image of it added. Classes learn from each other's images too,
    so this ranks the classes; it does not add up to the overall forecast exactly."""
    p = cfg.plan
    level, replicates, seed = float(p.level), int(p.bootstrap), int(cfg.seed)
    counts = np.bincount(np.asarray(train_labels), minlength=len(names))
    n0 = measured.n0
    rows = []
    for c, name in enumerate(names):
        mask = measured.val_labels == c
        if not mask.any():
            continue
        fitted = curves.fit(measured, replicates, level, seed + 1 + c, mask=mask)
        gain, g_low, g_high = fitted.gain(n0, 2 * n0)
        share = float(mask.mean())
        points = [100 * share * g for g in (gain, g_low, g_high)]  # accuracy points its doubling adds
        rows.append({
            "class": name,
            "train_images": int(counts[c]),
            "val_images": int(mask.sum()),
            "recall_now": fitted.forecast(n0),
            "recall_2x": fitted.forecast(2 * n0),
            "recall_gain_2x": [gain, g_low, g_high],
            "asymptote": list(fitted.asymptote()),
            "accuracy_points_2x": points,  # for its train_images more images of it
            "accuracy_points_per_image": points[0] / max(int(counts[c]), 1),
        })  # fmt: skip
    return sorted(rows, key=lambda r: -r["accuracy_points_per_image"])


# ---------------------------------------------------------------- the strategy's curve (plan.budget_minutes > 0)


class ValVerdicts(Callback):
    """Which val images each epoch's model gets right (the module keeps them for auto's paired noise)."""

    def __init__(self):
        self.epochs: list[np.ndarray] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.epochs.append(pl_module.val_correct().numpy().astype(bool))


def chosen_strategy(cfg: DictConfig, dm, out: Path) -> tuple[dict, str]:
    """The strategy whose curve is measured: plan.strategy, the config's own, or auto's choice (its size rule with
    strategy.budget=0, else its pilots on the whole training set, in a temporary folder)."""
    if cfg.plan.get("strategy"):
        return auto.load_strategy(str(cfg.plan.strategy)), "plan.strategy"
    strategy = plain(cfg.strategy)
    if not auto.is_auto(strategy):
        return strategy, "strategy="
    if not auto.uses_pilots(strategy):
        return auto.resolve(strategy, len(dm.splits["train"]), dm.num_classes)[0], "auto's size rule"
    from tlexp.auto.pilots import select  # the pilots import the candidates' machinery: only when asked for

    with tempfile.TemporaryDirectory(prefix="tlexp-plan-", dir=out) as tmp:
        report = {**plain(cfg.report), "train_batch_preview": 0}
        decision = select(replaced(cfg, output_dir=tmp, report=report)).decision
    return auto.load_strategy(decision.strategy), f"auto's pilots: {decision.reason}"


def point_dataset(cfg: DictConfig, fraction: float, n0: int) -> dict:
    """The dataset config of a nested subset: per_class or train_size scaled (the same seeded shuffle per class
    draws every size, so each holds the smaller ones and every class keeps its share)."""
    dataset = plain(cfg.dataset)
    if dataset.get("per_class"):
        dataset["per_class"] = max(1, math.floor(fraction * dataset["per_class"] + 0.5))
    else:
        dataset["train_size"] = max(1, math.floor(fraction * (dataset.get("train_size") or n0) + 0.5))
    return dataset


def strategy_curve(cfg: DictConfig, dm, names: list[str], train_labels, out: Path, started: float) -> dict:
    """Training runs at the nested sizes, seed by seed, while `plan.budget_minutes` lasts; their curve."""
    p = cfg.plan
    budget = 60 * float(p.budget_minutes)
    strategy, chosen_by = chosen_strategy(cfg, dm, out)
    n0, val_labels = len(train_labels), dm.splits["val"].labels
    half = curves.halves(val_labels, int(cfg.seed))
    fractions = sorted(float(f) for f in p.fractions)
    points, skipped, spent = {}, [], time.perf_counter() - started
    rate = None  # seconds per (training image + a third of a val image), from the runs so far
    for s in range(int(p.train_seeds)):
        for f in fractions:
            dataset = point_dataset(cfg, f, n0)
            where = out / "strategy" / f"{strategy['name']}_f{f:g}_s{s}"
            done = where / "point.json"
            if done.is_file():  # an earlier plan into the same out measured it
                point = json.loads(done.read_text())
            else:
                guess = None if rate is None else rate * (n0 * f + len(val_labels) / 3)
                elapsed = time.perf_counter() - started
                if guess is not None and elapsed + guess > budget:
                    skipped.append({"fraction": f, "seed": s, "estimated_seconds": round(guess)})
                    continue
                point = train_point(cfg, strategy, dataset, int(cfg.seed) + s, where, half)
                if len(point["val_labels"]) != len(val_labels) or any(np.asarray(point["val_labels"]) != val_labels):
                    raise RuntimeError("a training run's val split differs from the plan's: the curve would mix them")
                write_text(done, json.dumps(point))
            points[(f, s)] = point
            per = point["seconds"] / (point["train_images"] + len(val_labels) / 3)
            rate = per if rate is None else max(rate, per)
    found = {"name": strategy["name"], "chosen_by": chosen_by, "skipped": skipped,
             "how": f"training runs as python -m tlexp.train builds them (fit only, no test pass), at "
                    f"{'dataset.per_class' if cfg.dataset.get('per_class') else 'dataset.train_size'} of each "
                    "nested size (one subset per size, drawn with dataset.split_seed; the seeds vary the training); "
                    "each val image scored at the epoch the other half of val chose",
             "points": [{"fraction": f, "seed": s, "train_images": v["train_images"], "val_acc":
                         round(float(np.mean(v["verdicts"])), 4), "seconds": v["seconds"]}
                        for (f, s), v in sorted(points.items())]}  # fmt: skip
    seeds_done = [s for s in range(int(p.train_seeds)) if all((f, s) in points for f in fractions)]
    if not seeds_done or len({points[(f, seeds_done[0])]["train_images"] for f in fractions}) < 3:
        found["note"] = (
            f"plan.budget_minutes={p.budget_minutes} measured no complete curve (a curve needs one run at every size "
            "of plan.fractions); raise it: the runs done are kept in out= for the next try"
        )
        return found
    sizes = [points[(f, seeds_done[0])]["train_images"] for f in fractions]
    verdicts = [np.stack([points[(f, s)]["verdicts"] for s in seeds_done]) for f in fractions]
    measured = curves.Measured(sizes, verdicts, val_labels, seconds=sum(v["seconds"] for v in points.values()))
    found.update(summarise_curve(measured, names, train_labels, cfg, strategy["name"]))
    found["seeds"] = len(seeds_done)
    found["spent_seconds"] = round(spent + measured.seconds)
    return found


def train_point(cfg: DictConfig, strategy: dict, dataset: dict, seed: int, where: Path, half) -> dict:
    """One training run on a nested subset, fitted (never tested); which val images it gets right."""
    started = time.perf_counter()
    shutil.rmtree(where, ignore_errors=True)  # an interrupted earlier attempt: its checkpoints are not this run's
    point_cfg = replaced(cfg, strategy=strategy, dataset=dataset, seed=seed, output_dir=str(where))
    point_cfg.report.train_batch_preview = 0
    verdicts = ValVerdicts()
    run = build_run(point_cfg, callbacks=[verdicts])
    init_head(run)
    run.trainer.fit(run.module, datamodule=run.datamodule)
    shutil.rmtree(where / "checkpoints", ignore_errors=True)  # the verdicts are what the plan needs
    right = np.stack(verdicts.epochs)
    return {
        "train_images": run.datamodule.sizes()["train"],
        "seed": seed,
        "epochs": len(right),
        "verdicts": curves.cross_choose(right, None, half).astype(int).tolist(),
        "val_labels": run.datamodule.splits["val"].labels.tolist(),
        "seconds": round(time.perf_counter() - started, 1),
    }


# ---------------------------------------------------------------- the pool


def rank_images(cfg: DictConfig, dm, cache, train, val, out: Path) -> dict:
    """The pool's images in the order to label them: ranking.csv, pool_sheet.png, and the expected class counts."""
    p = cfg.plan
    labelled = {}
    for split in ("train", "val"):
        for path in getattr(dm.splits[split], "paths", []):
            found = dm.probes.get(path)
            if found is not None and found.sha1:
                labelled[found.sha1] = path
    preflight_cache = None
    if cfg.data.get("preflight_cache"):
        preflight_cache = Path(str(cfg.data.preflight_cache)).expanduser() / "pool.json"
    scan = scan_pool(cfg.pool, cfg.data.on_bad_image, labelled, preflight_cache)
    files = ImageFiles(scan.paths, np.zeros(len(scan.paths), dtype=np.int64), tuple(cfg.data.background))
    features = pool_features(files, dm, cache)
    fitted = fit_probe(train, val, dm.num_classes)
    probs = torch.softmax(features @ fitted["weight"].T + fitted["bias"], dim=1)
    ranking = rank_pool(probs, features, train[0], int(p.batch), str(p.uncertainty), seed=int(cfg.seed))
    names = dm.class_names
    predicted = probs.argmax(1).numpy()
    rows = []
    for r, i in enumerate(ranking.order):
        rows.append({
            "rank": r + 1, "path": scan.paths[i], "predicted": names[predicted[i]],
            "confidence": round(float(probs[i].max()), 4), "score": round(float(ranking.uncertainty[r]), 4),
            "cluster": int(ranking.cluster[r]), "cluster_size": int(ranking.cluster_size[r]),
            "round": int(ranking.round[r]), "batch": int(r < ranking.batch),
        })  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["rank", "path"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "ranking.csv", buffer.getvalue())
    shown = rows[: int(p.show)]
    if shown:
        pictures = [files.image(int(i)) for i in ranking.order[: len(shown)]]
        captions = [f"#{r['rank']} {r['predicted'][:14]} ({r['confidence']:.2f})" for r in shown]
        sheet = figures.grid_figure(pictures, captions, columns=8, title=f"the first {len(shown)} to label")
        figures.save(sheet, out / "pool_sheet.png")
    left_out = scan.left_out + [{"path": scan.paths[i], "reason": why} for i, why in ranking.left_out.items()]
    return {
        "folder": str(scan.root),
        "images": len(scan.paths),
        "ranked": len(ranking.order),
        "batch": ranking.batch,
        "uncertainty": str(p.uncertainty),
        "method": "k-means clusters of the frozen features, from each its most uncertain typical image",
        "probe_val_acc": round(fitted["val_acc"], 4),
        "bad_files": scan.bad_files,
        "left_out": left_out,
        "ignored_files": scan.ignored,
        "warnings": scan.warnings,
        "batch_counts": expected_counts(probs, predicted, ranking.order[: ranking.batch], names),
        "first": rows[: min(10, len(rows))],
    }


def pool_features(files: ImageFiles, dm, cache) -> torch.Tensor:
    """The pool's eval-view features from the backbone the plan uses, kept in the feature cache's store."""
    backbone = cache.backbone
    key = cache_key({
        "pool": images_fingerprint(files), "backbone": cache.model_name, "weights": weights_fingerprint(backbone),
        "forward": forward_numerics(backbone), "versions": library_versions(),
        "preprocess": {"image_size": dm.image_size, "mean": list(dm.mean), "std": list(dm.std),
                       "interpolation": dm.interpolation, "crop_pct": dm.crop_pct, "background": list(dm.background)},
        "transform": transform_steps(dm.eval_transform),
    })  # fmt: skip
    stored = cache.store.load(key)
    if stored is not None and len(stored["features"]) == len(files):
        return stored["features"]
    features, labels = extract(backbone, files, dm.eval_transform, dm.batch_size, dm.num_workers, seed=1000)
    cache.store.save(key, {"features": features, "labels": labels})
    return features


# ---------------------------------------------------------------- the picture and the words


def curve_figure(summary: dict) -> Figure:
    """The measured points with their intervals, the fitted curve and its band out to the forecasts, the target."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    drawn = [(summary["probe"], "C0")] + ([(summary["strategy"], "C3")] if (summary["strategy"] or {}).get("curve")
                                         else [])  # fmt: skip
    right = max(max(f["images"] for f in s["forecasts"]) for s, _ in drawn)
    target = summary.get("target")
    for s, colour in drawn:
        fitted = curves.Curve.from_dict(s["curve"])
        if target is not None and s["target"] and s["target"]["images"] and s["target"]["images"] < 100 * fitted.n0:
            right = max(right, s["target"]["images"] * 1.2)
        grid = np.geomspace(min(fitted.sizes), right, 120)
        band = np.array([fitted.forecast(n) for n in grid])
        ax.plot(grid, band[:, 0], color=colour, label=f"{s['label']}: fit")
        ax.fill_between(grid, band[:, 1], band[:, 2], color=colour, alpha=0.15,
                        label=f"{round(100 * summary['level'])}% interval")  # fmt: skip
        low = np.subtract(fitted.measured, fitted.measured_low)
        high = np.subtract(fitted.measured_high, fitted.measured)
        ax.errorbar(fitted.sizes, fitted.measured, yerr=[low, high], fmt="o", color=colour, capsize=3,
                    label=f"{s['label']}: measured (val)")  # fmt: skip
    n0 = summary["images"]["train"]
    ax.axvline(n0, color="grey", linestyle=":", label=f"now: {n0} images")
    if target is not None:
        ax.axhline(target, color="black", linestyle="--", label=f"target {target:g}")
    ax.set_xscale("log")
    ax.set(xlabel="training images", ylabel="accuracy", title=f"learning curve: {summary['dataset']}")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def span(value: float, low: float, high: float, scale: float = 1.0) -> str:
    """`0.84 [0.80, 0.88]`, with the digits the interval supports."""
    d = max(0, decimals_for(round(low, 6), round(high, 6)) - (2 if scale == 100 else 0))
    return f"{value * scale:.{d}f} [{low * scale:.{d}f}, {high * scale:.{d}f}]"


def count(n: float) -> str:
    if n is None or not math.isfinite(n):
        return "never"
    return f"{n:,.0f}" if n < 1e7 else f"{n:.1e}"


def curve_lines(s: dict, summary: dict) -> list[str]:
    level = f"{round(100 * summary['level'])}%"
    c = s["curve"]
    lines = [f"{s['label']}: {s['how']}"]
    lines.append(f"  {'images':>8}  val accuracy [{level} interval]")
    for point in c["points"]:
        lines.append(f"  {point['n']:>8}  {span(point['acc'], point['low'], point['high'])}")
    a = c["asymptote"]
    lines.append(f"  fit: acc(n) = a - b (n / {c['n0']})^-c with a = {span(*a)} (the ceiling), "
                 f"b = {c['b']:.3f}, c = {c['c']:.2f}")  # fmt: skip
    now = s["now"]
    lines.append(f"  now, {c['n0']} images: {span(now['acc'], now['low'], now['high'])} (the fit)")
    for f in s["forecasts"]:
        flag = "  (beyond what the bench checked)" if f["times"] > CHECKED_UP_TO else ""
        lines.append(f"  at {f['times']:g}x, {f['images']:,} images: {span(f['acc'], f['low'], f['high'])}{flag}")
    t = s["target"]
    if t:
        lines.append("  " + target_sentence(t, c["n0"], level))
    lines.append("  classes that gain most per labelled image (recall now -> with twice its images; what those images "
                 "add to the accuracy, in points):")  # fmt: skip
    for row in s["classes"][:CLASSES_SHOWN]:
        now, two, points = row["recall_now"], row["recall_2x"], row["accuracy_points_2x"]
        lines.append(f"    {row['class']:<14} {span(*now)} -> {span(*two)}   {span(*points)} points for "
                     f"{row['train_images']} more")  # fmt: skip
    if len(s["classes"]) > CLASSES_SHOWN:
        lines.append(f"    ... {len(s['classes']) - CLASSES_SHOWN} more in plan.json")
    return lines


def target_sentence(t: dict, n0: int, level: str) -> str:
    a = t["asymptote"]
    ceiling = f"ceiling a = {span(a[0], a[1], a[2])} ({level})"
    if t["verdict"] == "reached":
        return f"target {t['target']:g}: already reached at {n0} images (the fit)."
    if t["verdict"] == "not reachable":
        return (
            f"target {t['target']:g}: not reachable with this backbone and this curve's strategy: its {ceiling} lies "
            "below it. More images of the same kind will not get there; another backbone or strategy might."
        )
    if t["verdict"] == "maybe not reachable" and t["images"] is None:
        return (
            f"target {t['target']:g}: not reached by the fit, whose {ceiling} lies below it; the interval reaches "
            f"above it, so it may be reached, if at all, with {count(t['low'])} images or more."
        )
    if t["verdict"] == "maybe not reachable":
        return (
            f"target {t['target']:g}: about {count(t['images'])} images by the fit, at least {count(t['low'])} "
            f"({level}); it may not be reachable at all: the curve's {ceiling} includes values below it."
        )
    return (
        f"target {t['target']:g}: about {count(t['images'])} images [{count(t['low'])}, {count(t['high'])}] "
        f"({level}), {t['images'] / n0:.1f}x the current {n0}."
    )


def format_plan(summary: dict, out: Path) -> str:
    lines = [
        "",
        f"labelling plan: dataset {summary['dataset']}, {summary['images']['train']} training images, "
        f"{len(summary['classes'])} classes, {summary['images']['val']} val images; frozen {summary['model']} "
        "features. Test is not read.",
        "",
        *curve_lines(summary["probe"], summary),
    ]
    s = summary["strategy"]
    if s:
        lines.append("")
        if s.get("curve"):
            lines.append(f"strategy {s['name']} ({s['chosen_by']}), {s['seeds']} seed(s):")
            lines += curve_lines(s, summary)
        else:
            lines.append(f"strategy {s['name']} ({s['chosen_by']}): {s['note']}")
        if s["skipped"]:
            rest = sum(x["estimated_seconds"] for x in s["skipped"])
            lines.append(f"  {len(s['skipped'])} run(s) left out by plan.budget_minutes (about {rest / 60:.0f} min "
                         "more would run them)")  # fmt: skip
    pool = summary["pool"]
    if pool:
        lines += [
            "",
            f"pool {pool['folder']}: {pool['images']} images ranked ({pool['method']}, {pool['uncertainty']} "
            f"uncertainty); the first {pool['batch']} to label, by predicted class:",
        ]
        counts = [c for c in pool["batch_counts"] if c["predicted"] or c["expected"] >= 0.5]
        lines.append("  " + ", ".join(f"{c['class']} {c['predicted']} (expected {c['expected']:g})" for c in counts))
        lines.append(f"  unreadable files skipped: {len(pool['bad_files'])}")
        lines += [f"    {b['path']}: {b['reason']}" for b in pool["bad_files"][:10]]
        if len(pool["bad_files"]) > 10:
            lines.append(f"    ... {len(pool['bad_files']) - 10} more in plan.json")
        if pool["left_out"]:
            lines.append(f"  left out as already labelled or copies: {len(pool['left_out'])} (plan.json lists them)")
        lines.append("  ranking.csv (every image, first to label first), pool_sheet.png (the first ones)")
    lines += ["", f"plan.json, curve.png in {out} ({summary['seconds']:.0f} s)"]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://tlexp.conf", config_name="plan")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(plan)(cfg)


if __name__ == "__main__":
    precheck("plan")
    main()
