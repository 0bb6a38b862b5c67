"""`make bench-auto`: does `strategy=auto` pick well, and what does picking cost? Regret and cost per cell.

For every cell (a dataset at a training-set size, one seed):
- the truth: every strategy a default `tlexp.compare` runs (conf/compare.yaml: scratch, feature_extraction,
  finetune, gradual, lp_ft), each at its full default schedule, one `python -m tlexp.train` run each;
- `strategy=auto` on the same split, with a feature cache of its own (cold: it pays its own feature pass).
Regret = the test accuracy of the truth's pick minus auto's; the truth picks as a user of a full `tlexp.compare`
would, by best val accuracy (a tie to the strategy with the shorter fit). `vs best` is the stricter regret
against the best test accuracy of any strategy, which no choice made on val can promise. Cost = auto's fit time
(probe + pilots + the rest of the winner's run) over the truth runs' fit times added up (what a one-seed
`tlexp.compare` costs, the user's alternative to trusting auto). `x winner` = auto's fit time over the fit time
of the strategy it picked. The targets are judged per cell, on its mean over the seeds run.
Every run has its own dir under `--dir`; a finished one (metrics.json) is read, not rerun, so an interrupted
bench continues where it stopped. The table goes to the console and `<dir>/bench_auto.json`.

    python benchmarks/datasets.py --root outputs/datasets        # digits/ and textures/ (once)
    python benchmarks/bench_auto.py --cells fmnist_100 fmnist_1000 textures digits_500 --set threads=1
    python benchmarks/bench_auto.py --quick                     # a tiny cell on synthetic data (the test runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from tlexp.auto import CONF, decide
from tlexp.run.accel import cpu_model

# The truth: what a one-seed `tlexp.compare` runs at its defaults (the user's alternative to trusting auto).
TRUTH = list(OmegaConf.load(CONF / "compare.yaml").strategies)
FINE_TUNING = {"lp_ft", "finetune", "gradual"}  # the target on auto's time over the winner's own run is for these
COMMON = ["report.enabled=false", "trainer.enable_progress_bar=false"]


def cells(data_root: str) -> dict[str, list[str]]:
    folder = ["dataset=imagefolder", "dataset.preprocess.image_size=96"]
    return {
        **{f"fmnist_{10 * n}": ["dataset=fashion_mnist", f"dataset.per_class={n}"] for n in (10, 30, 100, 300)},
        "textures": [*folder, f"dataset.root={data_root}/textures"],
        "digits_500": [*folder, f"dataset.root={data_root}/digits", "dataset.train_size=500"],
    }


def quick_cells(work: Path) -> dict[str, list[str]]:
    """A smoke test: synthetic data, the tiny test ResNet with random weights saved as its 'pretrained' file."""
    weights = work / "test_resnet_random.pth"
    if not weights.is_file():
        import timm
        import torch

        work.mkdir(parents=True, exist_ok=True)
        torch.save(timm.create_model("test_resnet.r160_in1k", num_classes=0).state_dict(), weights)
    return {"synthetic": ["dataset=synthetic", "model=test_resnet", f"model.weights={weights}", "epoch_scale=0.1"]}


def claimed_elsewhere(out: Path) -> bool:
    """Another live bench process is making this run (two processes may share a cell's runs: each run is taken
    with a lock file holding the taker's pid; a dead taker's lock is taken over)."""
    lock = out.parent / f".{out.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(lock, "x") as f:  # exclusive create: one taker
            f.write(str(os.getpid()))
        return False
    except FileExistsError:
        pass
    try:
        text = lock.read_text()
        if not text and time.time() - lock.stat().st_mtime < 10:
            return True  # its taker is writing its pid (an empty lock stays empty when the taker died first)
        owner = int(text)
        if owner == os.getpid():
            return False
        os.kill(owner, 0)
        return True
    except (ValueError, ProcessLookupError, FileNotFoundError):
        lock.unlink(missing_ok=True)  # its taker died: try again
        return claimed_elsewhere(out)


def launch_args(out: Path, overrides: list[str]) -> list[str]:
    """tlexp.train's arguments for the run in `out`: an interrupted plain run continues from its last.ckpt;
    what any other interrupted attempt left (an auto run, a run stopped before its first epoch) is cleared,
    since tlexp.train refuses a new run in a directory that holds one."""
    if (out / "checkpoints" / "last.ckpt").is_file():
        return [f"resume={out}"]
    if out.exists():
        print(f"    {out}: an interrupted attempt with nothing to resume from, cleared", flush=True)
        shutil.rmtree(out)
    return [*overrides, f"hydra.run.dir={out}"]


def run(out: Path, overrides: list[str], wait: bool = True) -> dict | None:
    """One tlexp.train run in `out` (read back when already finished); a failure is recorded, not raised.
    A run another process is making is waited for and read, or with wait=False, None."""
    metrics = out / "metrics.json"
    while not metrics.is_file() and claimed_elsewhere(out):
        if not wait:
            return None
        time.sleep(30)
    if metrics.is_file():
        return json.loads(metrics.read_text())
    command = [sys.executable, "-m", "tlexp.train", *launch_args(out, overrides)]
    print(f"--- {out} (load {os.getloadavg()[0]:.2f}): {' '.join(command[3:])}", flush=True)
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0 or not metrics.is_file():
        print(f"    failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:] or ''}", flush=True)
        return {"error": done.stderr[-2000:]}
    return json.loads(metrics.read_text())


def measure(work: Path, cell: str, overrides: list[str], seed: int, candidates: list[str], part: str) -> dict:
    base = work / f"{cell}_s{seed}"
    shared = [*COMMON, *overrides, f"seed={seed}"]
    auto, truth = None, {}
    if part in ("all", "auto"):  # first, on a cold feature cache of its own
        auto = run(base / "auto", ["strategy=auto", *shared, f"cache.dir={base / 'auto_cache'}"])
    if part in ("all", "truth"):

        def truth_run(s: str, wait: bool) -> dict | None:
            return run(base / s, [f"strategy={s}", *shared, f"cache.dir={base / 'cache'}"], wait)

        # first the runs no other process is making, then those it is: two processes can share a cell
        made = {s: truth_run(s, wait=False) for s in candidates}
        truth = {s: made[s] if made[s] is not None else truth_run(s, wait=True) for s in candidates}
    return {"cell": cell, "seed": seed, "truth": truth, "auto": auto}


def truth_pick(ok: dict[str, dict]) -> str:
    """The strategy a full comparison picks: best val accuracy, a tie to the shorter fit."""
    return max(ok, key=lambda s: (ok[s]["best_val_acc"], -ok[s]["fit_seconds"]))


def summarise(result: dict) -> dict:
    ok = {s: m for s, m in result["truth"].items() if "error" not in m}
    ranking = sorted(ok, key=lambda s: -ok[s]["test"]["acc"])
    row = {
        "cell": result["cell"],
        "seed": result["seed"],
        "train": next(iter(ok.values()))["dataset_sizes"]["train"] if ok else None,
        "truth": {
            s: {k: ok[s][k] for k in ("best_val_acc", "fit_seconds")} | {"test_acc": ok[s]["test"]["acc"]}
            for s in ranking
        },  # fmt: skip
        "ranking": ranking,
        "picked_on_val": truth_pick(ok) if ok else None,
        "failed": sorted(set(result["truth"]) - set(ok)),
    }
    if not ok:
        return row
    picked, best = ok[row["picked_on_val"]]["test"]["acc"], ok[ranking[0]]["test"]["acc"]
    rule = decide(row["train"], next(iter(ok.values()))["num_classes"]).strategy
    if rule in ok:  # what the playbook's size rule (strategy.budget=0) would have scored
        row |= {"rule_pick": rule, "rule_regret": picked - ok[rule]["test"]["acc"]}
    auto = result["auto"]
    if auto and "error" not in auto:
        pick = auto["auto"]["strategy"]
        row |= {
            "auto_pick": pick,
            "auto_test_acc": auto["test"]["acc"],
            "auto_fit_seconds": auto["fit_seconds"],
            "regret": picked - auto["test"]["acc"],
            "regret_vs_best": best - auto["test"]["acc"],
            # over the truth's fit times: a whole compare's where --truth is left at its default
            "cost": auto["fit_seconds"] / sum(ok[s]["fit_seconds"] for s in ok),
            "x_winner": auto["fit_seconds"] / ok[pick]["fit_seconds"] if pick in ok else None,
            "reason": auto["auto"]["reason"],
        }
    return row


def print_table(rows: list[dict]) -> None:
    print(f"\n{'cell':<12} {'seed':>4} {'train':>5}  {'truth ranking (test acc)':<66} {'truth pick':<18} "
          f"{'auto pick':<18} {'regret':>6} {'vs best':>7} {'cost':>5} {'x winner':>8}  size rule")  # fmt: skip
    for r in rows:
        truth = ", ".join(f"{s} {r['truth'][s]['test_acc']:.3f}" for s in r["ranking"])
        if "auto_pick" in r:
            x = f"{r['x_winner']:.2f}" if r["x_winner"] is not None and r["auto_pick"] in FINE_TUNING else "-"
            auto = (f"{r['auto_pick']:<18} {shown(r['regret'], 100):>6} {shown(r['regret_vs_best'], 100):>7} "
                    f"{shown(r['cost']):>5} {x:>8}")  # fmt: skip
        else:
            auto = f"{'(not run)':<50}"
        rule = f"{r['rule_pick']} ({100 * r['rule_regret']:.2f})" if "rule_pick" in r else "-"
        print(f"{r['cell']:<12} {r['seed']:>4} {r['train']!s:>5}  {truth:<66} {r['picked_on_val']:<18} {auto}  {rule}")
    done = [r for r in rows if "auto_pick" in r]
    if done:
        print_cells(done)


def average(values: list) -> float:
    """The mean of the values measured (nan where none was: a part of the truth not run)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else float("nan")


def shown(value: float | None, scale: float = 1.0) -> str:
    return "-" if value is None or value != value else f"{scale * value:.2f}"


def print_cells(done: list[dict]) -> None:
    """Each cell's means over its seeds, and the targets judged on them."""
    by_cell: dict[str, list[dict]] = {}
    for r in done:
        by_cell.setdefault(r["cell"], []).append(r)
    print(f"\n{'cell':<12} {'seeds':>5} {'regret':>6} {'vs best':>7} {'cost':>5}  size rule regret")
    means = {}
    for cell, rs in by_cell.items():
        keys = ("regret", "regret_vs_best", "cost", "rule_regret")
        means[cell] = mean = {k: average([r.get(k) for r in rs]) for k in keys}
        print(f"{cell:<12} {len(rs):>5} {shown(mean['regret'], 100):>6} {shown(mean['regret_vs_best'], 100):>7} "
              f"{shown(mean['cost']):>5}  {shown(mean['rule_regret'], 100)}")  # fmt: skip
    worst = 100 * max(m["regret"] for m in means.values())
    worst_best = 100 * max(m["regret_vs_best"] for m in means.values())
    mean_cost = average([r["cost"] for r in done])
    worst_rule = 100 * max(m["rule_regret"] for m in means.values())
    tuned = [r["x_winner"] for r in done if r["auto_pick"] in FINE_TUNING and r["x_winner"] is not None]
    probe = [r["x_winner"] for r in done if r["auto_pick"] == "feature_extraction" and r["x_winner"] is not None]
    print(f"\nworst cell regret {worst:.2f} points (target <= 1; {worst_best:.2f} against the best on test), "
          f"mean cost {mean_cost:.2f} (target <= 0.25), x winner when a fine-tuning strategy won "
          f"{max(tuned, default=float('nan')):.2f} (target <= 1.5), when feature_extraction won "
          f"{max(probe, default=float('nan')):.2f} (target <= 3), {len(means)} cells, {len(done)} runs; "
          f"the size rule's worst cell regret {worst_rule:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="outputs/bench_auto", help="run dirs (resumable)")
    parser.add_argument("--data-root", default="outputs/datasets", help="where benchmarks/datasets.py wrote its sets")
    parser.add_argument("--cells", nargs="+", default=["fmnist_100", "fmnist_300", "fmnist_1000", "textures"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--part", choices=["all", "truth", "auto"], default="all",
                        help="truth = only the candidates' full runs, auto = only strategy=auto (two processes "
                        "can share the work); the table needs both")  # fmt: skip
    parser.add_argument(
        "--truth",
        nargs="+",
        default=TRUTH,
        choices=TRUTH,
        help="the truth's strategies (default: all a compare runs; cost and regret need them all)",
    )
    parser.add_argument("--quick", action="store_true", help="one tiny cell on synthetic data (a smoke test)")
    parser.add_argument("--set", nargs="+", default=[], dest="overrides", help="Hydra overrides for every run")
    args = parser.parse_args()
    work = Path(args.dir)
    table = quick_cells(work) if args.quick else cells(args.data_root)
    unknown = [c for c in args.cells if c not in table and not args.quick]
    if unknown:
        parser.error(f"unknown cells {unknown}; choose from {', '.join(table)}")
    names = list(table) if args.quick else args.cells
    started = time.perf_counter()
    rows = []
    for cell in names:
        for seed in args.seeds:
            result = measure(work, cell, [*table[cell], *args.overrides], seed, args.truth, args.part)
            rows.append(summarise(result))
    print(f"\nbench-auto on {cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
          f"{time.perf_counter() - started:.0f} s (finished runs under {work} are read, not rerun)")  # fmt: skip
    print_table([r for r in rows if r["ranking"]])
    work.mkdir(parents=True, exist_ok=True)
    (work / "bench_auto.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
