"""Early stopping on val, simulated on finished runs' own val curves: the epochs it saves, the best val it gives up.

    python benchmarks/early_stop_sim.py --dir outputs/bench_auto      # the truth runs of make bench-auto

Nothing is trained: each run's val curve (metrics.json `history`) is cut where `patience` epochs have passed
without a new best. Its learning-rate schedule is the full run's, so this is what stopping a run early would
have kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def stop_epoch(curve: list[float], patience: int) -> int:
    """How many epochs run before `patience` epochs in a row bring no new best (all of them if never)."""
    best, since = float("-inf"), 0
    for epoch, value in enumerate(curve):
        if value > best:
            best, since = value, 0
        else:
            since += 1
            if since >= patience:
                return epoch + 1
    return len(curve)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="outputs/bench_auto")
    parser.add_argument("--strategies", nargs="+", default=["finetune", "lp_ft", "gradual"])
    parser.add_argument("--patience", type=int, nargs="+", default=[3, 5, 8])
    args = parser.parse_args()
    for strategy in args.strategies:
        curves = []
        for metrics in sorted(Path(args.dir).glob(f"*/{strategy}/metrics.json")):
            history = json.loads(metrics.read_text())["history"]
            curves.append([row["val/acc"] for row in history if "val/acc" in row])
        for patience in args.patience if curves else []:
            stops = [stop_epoch(c, patience) for c in curves]
            saved = [1 - s / len(c) for s, c in zip(stops, curves, strict=True)]
            lost = [100 * (max(c) - max(c[:s])) for s, c in zip(stops, curves, strict=True)]
            mean_saved, mean_lost = 100 * sum(saved) / len(saved), sum(lost) / len(lost)
            print(f"{strategy:10} patience {patience}: {len(curves)} runs, epochs saved {mean_saved:.0f}% "
                  f"({100 * min(saved):.0f}-{100 * max(saved):.0f}%), best val given up {mean_lost:.2f} "
                  f"points mean, {max(lost):.2f} worst")  # fmt: skip


if __name__ == "__main__":
    main()
