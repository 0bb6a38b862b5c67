"""Pre-flight check speed, side by side in one run: one thread vs all cores, and a second (cached) pass.

python benchmarks/bench_preflight.py [--files 400] [--size 320]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tlexp.data.preflight import preflight


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--size", type=int, default=320)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.files):
            pixels = rng.integers(0, 256, (args.size * 3 // 4, args.size, 3), dtype=np.uint8)
            path = Path(tmp) / f"{i}.jpg"
            Image.fromarray(pixels).save(path, quality=90)
            paths.append(str(path))
        cores = os.cpu_count() or 1
        timings = {}
        for label, workers, cache in (
            ("1 thread", 1, None),
            (f"{cores} threads", cores, Path(tmp) / "cache.json"),
            ("cached", cores, Path(tmp) / "cache.json"),
        ):
            started = time.perf_counter()
            preflight(paths, cache, workers=workers)
            timings[label] = time.perf_counter() - started
    base = timings["1 thread"]
    print(f"pre-flight of {args.files} JPEGs {args.size}x{args.size * 3 // 4}, {cores} cores:")
    for label, seconds in timings.items():
        print(f"  {label:<12} {seconds:7.3f} s  {args.files / seconds:8.0f} files/s  x{base / seconds:.1f}")


if __name__ == "__main__":
    main()
