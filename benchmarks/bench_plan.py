"""`make bench-plan`: are the labelling plan's forecasts right, and does its ranking beat labelling at random?

(a) Forecast. `python -m tlexp.plan` (as a user types it, defaults unchanged) on Fashion-MNIST from 100 and from 300
    training images (dataset.per_class=10 / 30) and on the digits from half their training set (dataset.train_size=
    650 of 1,299); its curve (plan.json holds every bootstrap refit) forecasts the accuracy at the larger sizes, and
    the forecast is compared with what is really reached there:
    - the probe: the linear probe fitted on the starting images plus more drawn at random from the rest of the
      training set (stratified, as the plan's subsets; 3 draws, their mean), L2 chosen on val, scored on test;
    - finetune (--finetune): the plan with plan.strategy=finetune and a training budget (its runs at 1/8 .. all of the
      starting images, 3 seeds); realised = the full-length truth runs' test accuracy in docs/results/comparison.csv
      (3 seeds at 100/300/1,000/3,000 images); sizes missing there (the digits' 1,299) are run only with
      --run-missing (python -m tlexp.train strategy=finetune, 3 seeds).
    Targets: mean absolute error <= 1.5 points at ~3x the data and <= 3 points at ~10x, for each curve; the realised
    accuracy inside the forecast's 90% interval in >= 80% of the cases (rows beyond 10x are shown, not judged).
(b) Selection. From 100 Fashion-MNIST images (10 per class, 3 seeds), the pool = the rest of the training set with its
    labels hidden; two rounds of +200 images chosen by the plan's ranking (planning/pool.py with plan.yaml's defaults:
    margin uncertainty, plan.batch = 200 clusters, one image each) against +200 at random; the probe's test accuracy
    after each round. Ablations ride along: the probe's uncertainty alone (top margin), distance alone (k-center
    greedy, Sener & Savarese 2018) and uncertainty x distance (k-center greedy weighted by the margin).
    Target: the ranking ahead of random by >= 1 point at equal labels after two rounds.
Every measured figure is kept in <dir>/bench_plan.json and read back, so an interrupted bench continues.

    python benchmarks/datasets.py --root outputs/datasets          # the digits (once; make bench-datasets)
    python benchmarks/bench_plan.py                                # (a) probe + (b): minutes once features are cached
    python benchmarks/bench_plan.py --parts forecast --finetune --budget-minutes 120   # + finetune's curves (hours)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tlexp.run.accel import machine_and_load as machine

ROOT = Path(__file__).resolve().parents[1]
COMPARISON = ROOT / "docs" / "results" / "comparison.csv"
DIGITS = ["dataset=imagefolder", "dataset.preprocess.image_size=96"]  # as bench_auto: 96 px on the CPU
FMNIST = ["dataset=fashion_mnist", "dataset.per_class=null"]  # the whole training set: 59,500 images
CELLS = {  # name -> (overrides of the starting set, overrides of the whole training set, larger sizes to forecast)
    "fmnist_100": (["dataset=fashion_mnist", "dataset.per_class=10"], FMNIST, [300, 1000, 3000]),
    "fmnist_300": (["dataset=fashion_mnist", "dataset.per_class=30"], FMNIST, [1000, 3000]),
    "digits_650": ([*DIGITS, "dataset.train_size=650"], DIGITS, [None]),  # None: the whole training set
}
TARGET_3X, TARGET_10X, TARGET_COVERAGE, TARGET_AHEAD = 1.5, 3.0, 0.8, 1.0
DRAWS = 3  # random extensions of the starting set per larger size (the probe's realised accuracy is their mean)


class Store:
    """Measured figures by key, in one JSON file written after each (an interrupted bench keeps what it measured)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str, measure):
        if key not in self.data:
            value = measure()
            # what another bench process wrote meanwhile is kept: read again, add this figure, replace atomically
            self.data = {**(json.loads(self.path.read_text()) if self.path.is_file() else {}), **self.data, key: value}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(self.data, indent=1))
            tmp.replace(self.path)
        return self.data[key]


# ---------------------------------------------------------------- features (tlexp's own builders and cache)


def compose(overrides: list[str], data_root: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    root = [f"dataset.root={data_root}/digits"] if "dataset=imagefolder" in overrides else []
    with initialize_config_module(config_module="tlexp.conf", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=[*overrides, *root, "strategy=feature_extraction"])


_FEATURES: dict[str, dict] = {}


def features(overrides: list[str], data_root: str, threads: int) -> dict:
    """train / val / test features and the train images' ids of a dataset config (from the cache when there)."""
    key = " ".join(overrides)
    if key not in _FEATURES:
        from tlexp.features.cache import eval_feature_cache
        from tlexp.run.build import build_datamodule, load_backbone, plain, preprocessing

        cfg = compose(overrides, data_root)
        torch.set_num_threads(threads)
        backbone, _ = load_backbone(cfg)
        dm = build_datamodule(cfg, preprocessing(cfg, backbone), augment_on="cpu")
        dm.setup()
        cache = eval_feature_cache(plain(cfg.cache), dm, backbone, cfg.model.name)
        _FEATURES[key] = {split: cache.features(split) for split in ("train", "val", "test")}
        _FEATURES[key]["ids"] = list(dm.splits["train"].ids())
        _FEATURES[key]["classes"] = dm.class_names
    return _FEATURES[key]


def probe_test_acc(train, val, test, num_classes: int) -> float:
    from tlexp.features.probe import linear_probe

    return float(linear_probe(train, val, test, num_classes)["test"]["acc"])


def extension(start: np.ndarray, labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The starting images plus randomly drawn others, stratified (each class in proportion) to `size` in all."""
    rng = np.random.default_rng([seed, 2718])
    chosen = [start]
    classes = np.unique(labels)
    for c in classes:
        want = int(round(size * (labels == c).sum() / len(labels)))
        have = int((labels[start] == c).sum())
        rest = np.setdiff1d(np.flatnonzero(labels == c), start)
        chosen.append(rng.choice(rest, size=max(0, min(len(rest), want - have)), replace=False))
    return np.sort(np.concatenate(chosen))


# ---------------------------------------------------------------- (a) forecasts


def run_plan(cell: str, overrides: list[str], work: Path, data_root: str, extra: list[str], threads: int) -> dict:
    """`python -m tlexp.plan` as a user types it; plan.json read back when an earlier bench wrote it."""
    out = work / "plans" / cell
    done = out / "plan.json"
    if not done.is_file():
        root = [f"dataset.root={data_root}/digits"] if "dataset=imagefolder" in overrides else []
        command = [sys.executable, "-m", "tlexp.plan", *overrides, *root, f"out={out}", f"threads={threads}", *extra]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(done.read_text())


def truth(strategy: str = "finetune") -> dict[int, list[float]]:
    """Test accuracies of the full-length truth runs on Fashion-MNIST, by training images."""
    found: dict[int, list[float]] = {}
    with COMPARISON.open() as f:
        for row in csv.DictReader(f):
            if row["dataset"] == "fashion_mnist" and row["strategy"] == strategy:
                found.setdefault(int(row["train_images"]), []).append(float(row["test_acc"]))
    return found


def forecast_rows(store: Store, args) -> list[dict]:
    from tlexp.planning.curve import Curve

    rows = []
    for cell in args.cells:
        start_o, whole_o, sizes = CELLS[cell]
        extra = ["plan.strategy=finetune", f"plan.budget_minutes={args.budget_minutes}"] if args.finetune else []
        work = Path(args.dir) / ("finetune" if args.finetune else "probe")
        summary = run_plan(cell, start_o, work, args.data_root, extra, args.threads)
        whole = features(whole_o, args.data_root, args.threads)
        start = features(start_o, args.data_root, args.threads)
        position = {name: i for i, name in enumerate(whole["ids"])}
        start_idx = np.asarray([position[i] for i in start["ids"]])
        labels = whole["train"][1].numpy()
        n0 = len(start_idx)
        curves = [("probe", summary["probe"])]
        if args.finetune and (summary.get("strategy") or {}).get("curve"):
            curves.append(("finetune", summary["strategy"]))
        for name, s in curves:
            fitted = Curve.from_dict(s["curve"])
            for size in [n0, *sizes]:  # n0: the fit now (from val) against the test accuracy now, not judged
                size = size or len(labels)
                value, low, high = fitted.forecast(size)
                realised = realised_acc(store, name, cell, size, start_idx, whole, args)
                rows.append({"set": cell, "curve": name, "from": n0, "to": size, "times": size / n0, "forecast": value,
                             "low": low, "high": high, "realised": realised})  # fmt: skip
    return rows


def realised_acc(store: Store, curve: str, cell: str, size: int, start_idx, whole: dict, args) -> float | None:
    if curve == "probe":
        labels = whole["train"][1].numpy()
        accs = []
        draws = DRAWS if len(start_idx) < size < len(labels) else 1  # the start, or the whole set: one draw is all
        for seed in range(draws):

            def measure(seed=seed):
                idx = torch.as_tensor(extension(start_idx, labels, size, seed))
                x, y = whole["train"]
                return probe_test_acc((x[idx], y[idx]), whole["val"], whole["test"], len(whole["classes"]))

            accs.append(store.get(f"forecast/{cell}/probe/realised/{size}/draw{seed}", measure))
        return float(np.mean(accs))
    runs = truth(curve).get(size)
    if runs:
        return float(np.mean(runs))
    if not args.run_missing:
        return None
    accs = [store.get(f"forecast/{cell}/{curve}/realised/{size}/seed{s}", lambda s=s: train_run(cell, curve, s, args))
            for s in range(3)]  # fmt: skip
    return float(np.mean(accs))


def train_run(cell: str, strategy: str, seed: int, args) -> float:
    """A full-length run on the whole training set (the sizes the truth runs lack): its test accuracy."""
    _, whole_o, _ = CELLS[cell]
    out = Path(args.dir) / "train" / f"{cell}_{strategy}_s{seed}"
    metrics = out / "metrics.json"
    if not metrics.is_file():
        root = [f"dataset.root={args.data_root}/digits"] if "dataset=imagefolder" in whole_o else []
        command = [sys.executable, "-m", "tlexp.train", *whole_o, *root, f"strategy={strategy}", f"seed={seed}",
                   f"hydra.run.dir={out}", f"threads={args.threads}", "report.enabled=false",
                   "trainer.enable_progress_bar=false"]  # fmt: skip
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    return float(json.loads(metrics.read_text())["test_acc"])


def print_forecasts(rows: list[dict]) -> dict:
    print("\n(a) forecast vs realised (test accuracy, %; forecast [90% interval]; error = forecast - realised)")
    print(f"  {'set':<11} {'curve':<9} {'from':>5} {'to':>5} {'x':>5}  {'forecast [90% interval]':<24} {'realised':>8} "
          f"{'error':>6} {'inside':>6}")  # fmt: skip
    judged = {}
    for r in rows:
        text = f"{100 * r['forecast']:.1f} [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"
        if r["realised"] is None:
            print(f"  {r['set']:<11} {r['curve']:<9} {r['from']:>5} {r['to']:>5} {r['times']:>5.1f}  {text:<24} "
                  f"{'not run':>8}")  # fmt: skip
            continue
        error = 100 * (r["forecast"] - r["realised"])
        inside = r["low"] <= r["realised"] <= r["high"]
        judge = 1.5 <= r["times"] <= 12
        mark = "" if judge else ("  (now: not judged)" if r["times"] < 1.5 else "  (beyond 10x: not judged)")
        print(f"  {r['set']:<11} {r['curve']:<9} {r['from']:>5} {r['to']:>5} {r['times']:>5.1f}  {text:<24} "
              f"{100 * r['realised']:>8.1f} {error:>+6.1f} {'yes' if inside else 'no':>6}{mark}")  # fmt: skip
        if judge:
            group = "~10x" if r["times"] >= 8 else ("~3x" if r["times"] >= 2.5 else "~2x")
            judged.setdefault(r["curve"], []).append((group, abs(error), inside))
    verdicts = {}
    for curve, found in judged.items():
        line = [f"  {curve}:"]
        for group, bound in (("~2x", None), ("~3x", TARGET_3X), ("~10x", TARGET_10X)):
            errors = [e for g, e, _ in found if g == group]
            if errors:
                mae = float(np.mean(errors))
                verdict = "" if bound is None else f" (target <= {bound}: {'met' if mae <= bound else 'missed'})"
                line.append(f"MAE at {group} {mae:.1f} points over {len(errors)}{verdict};")
                verdicts[f"{curve}/{group}"] = mae
        share = float(np.mean([inside for *_, inside in found]))
        met = "met" if share >= TARGET_COVERAGE else "missed"
        line.append(f"inside the 90% interval {sum(i for *_, i in found)}/{len(found)} = {100 * share:.0f}% "
                    f"(target >= {100 * TARGET_COVERAGE:.0f}%: {met})")  # fmt: skip
        verdicts[f"{curve}/coverage"] = share
        print(" ".join(line))
    return verdicts


# ---------------------------------------------------------------- (b) selection


def kcenter_greedy(probs, feats, labelled_feats, k: int, weighted: bool) -> np.ndarray:
    """The ablation: k-center greedy on unit features (Sener & Savarese 2018), each step the pool image farthest
    from every labelled or taken one; `weighted`: its distance times the probe's margin uncertainty."""
    from tlexp.planning.pool import uncertainty

    pool = torch.nn.functional.normalize(feats.double(), dim=1)
    labelled = torch.nn.functional.normalize(labelled_feats.double(), dim=1)
    u = uncertainty(probs, "margin").clamp_min(1e-3) if weighted else torch.ones(len(pool), dtype=torch.float64)
    dist = torch.cat([(2 - 2 * (chunk @ labelled.T).max(1).values).clamp_min(0).sqrt() for chunk in pool.split(4096)])
    taken = []
    for _ in range(k):
        score = u * dist
        score[taken] = -1
        j = int(score.argmax())
        taken.append(j)
        dist = torch.minimum(dist, (2 - 2 * (pool @ pool[j])).clamp_min(0).sqrt())
    return np.asarray(taken)


def select(method: str, probs, feats, labelled_feats, k: int, rng, seed: int) -> np.ndarray:
    """Pool positions of the k images `method` labels next."""
    from tlexp.planning.pool import rank_pool, uncertainty

    if method == "random":
        return rng.choice(len(feats), size=k, replace=False)
    if method == "ranking":  # the plan's own, with plan.yaml's defaults (margin; plan.batch = the round's k)
        return rank_pool(probs, feats, labelled_feats, k, "margin", seed=seed).order[:k]
    if method == "uncertainty":
        return torch.argsort(uncertainty(probs, "margin"), descending=True)[:k].numpy()
    if method == "k-center":
        return kcenter_greedy(probs, feats, labelled_feats, k, weighted=False)
    if method == "k-center x u":
        return kcenter_greedy(probs, feats, labelled_feats, k, weighted=True)
    raise ValueError(method)


def selection_rows(store: Store, args) -> list[dict]:
    from tlexp.features.probe import fit_probe
    from tlexp.planning.curve import nested_subsets

    whole = features(CELLS["fmnist_100"][1], args.data_root, args.threads)
    (x, y), val, test = whole["train"], whole["val"], whole["test"]
    classes = len(whole["classes"])

    def score(idx):
        i = torch.as_tensor(idx)
        return probe_test_acc((x[i], y[i]), val, test, classes)

    rows = []
    for seed in args.seeds:
        start = nested_subsets(y.numpy(), [10 * classes / len(y), 1.0], seed)[0]  # 10 per class, seeded
        for method in args.methods:
            labelled = start
            acc0 = store.get(f"selection/s{seed}/start", lambda labelled=labelled: score(labelled))
            rows.append({"seed": seed, "method": method, "round": 0, "images": len(labelled), "acc": acc0})
            for r in range(1, args.rounds + 1):
                key = f"selection/s{seed}/{method}/round{r}"

                def measure(labelled=labelled, r=r, seed=seed, method=method):
                    pool = np.setdiff1d(np.arange(len(y)), labelled)
                    i = torch.as_tensor(labelled)
                    fitted = fit_probe((x[i], y[i]), val, classes)
                    probs = torch.softmax(x[pool] @ fitted["weight"].T + fitted["bias"], dim=1)
                    rng = np.random.default_rng([seed, r, 99])
                    picked = pool[select(method, probs, x[pool], x[i], args.per_round, rng, seed)]
                    assert len(set(picked.tolist())) == len(picked) and not set(picked) & set(labelled.tolist())
                    grown = np.sort(np.concatenate([labelled, picked]))
                    return {"labelled": grown.tolist(), "acc": score(grown)}

                found = store.get(key, measure)
                labelled = np.asarray(found["labelled"])
                rows.append({"seed": seed, "method": method, "round": r, "images": len(labelled), "acc": found["acc"]})
    return rows


def print_selection(rows: list[dict], rounds: int) -> dict:
    print("\n(b) selection: probe test accuracy (%) after each round of +200 labels from 100 Fashion-MNIST images; "
          "mean over seeds (each seed's value in brackets)")  # fmt: skip
    methods = list(dict.fromkeys(r["method"] for r in rows))
    print(f"  {'method':<12} " + " ".join(f"{'round ' + str(k):>26}" for k in range(rounds + 1)))
    means = {}
    for m in methods:
        cells = []
        for k in range(rounds + 1):
            accs = [r["acc"] for r in rows if r["method"] == m and r["round"] == k]
            means[(m, k)] = float(np.mean(accs))
            cells.append(f"{100 * np.mean(accs):.1f} ({', '.join(f'{100 * a:.1f}' for a in accs)})")
        print(f"  {m:<12} " + " ".join(f"{c:>26}" for c in cells))
    verdict = {}
    if ("ranking", rounds) in means and ("random", rounds) in means:
        ahead = 100 * (means[("ranking", rounds)] - means[("random", rounds)])
        final = {(r["method"], r["seed"]): r["acc"] for r in rows if r["round"] == rounds}
        per_seed = [100 * (final[("ranking", s)] - final[("random", s)]) for m, s in final if m == "ranking"]
        print(f"  ranking - random after {rounds} rounds: {ahead:+.1f} points (per seed "
              f"{', '.join(f'{d:+.1f}' for d in per_seed)}; target >= +{TARGET_AHEAD:.0f}: "
              f"{'met' if ahead >= TARGET_AHEAD else 'missed'})")  # fmt: skip
        verdict["ahead"] = ahead
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="outputs/bench_plan")
    parser.add_argument("--data-root", default="outputs/datasets")
    parser.add_argument("--parts", nargs="+", default=["forecast", "selection"], choices=["forecast", "selection"])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--finetune", action="store_true", help="(a) also the finetune curve (plan.budget_minutes)")
    parser.add_argument("--budget-minutes", type=float, default=120.0)
    parser.add_argument("--run-missing", action="store_true", help="(a) train the sizes the truth runs lack")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-round", type=int, default=200)
    parser.add_argument(
        "--methods", nargs="+", default=["ranking", "random", "uncertainty", "k-center", "k-center x u"]
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if "digits_650" in args.cells and "forecast" in args.parts and not (Path(args.data_root) / "digits").is_dir():
        sys.exit(f"{args.data_root}/digits is missing: run `make bench-datasets` (or leave --cells digits_650 out)")
    store = Store(Path(args.dir) / "bench_plan.json")
    started = time.perf_counter()
    print(f"machine: {machine()}", flush=True)
    verdicts = {}
    if "forecast" in args.parts:
        verdicts.update(print_forecasts(forecast_rows(store, args)))
    if "selection" in args.parts:
        verdicts.update(print_selection(selection_rows(store, args), args.rounds))
    print(f"\nmachine: {machine()}; {time.perf_counter() - started:.0f} s; figures kept in {store.path}")


if __name__ == "__main__":
    main()
