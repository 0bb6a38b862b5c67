"""One torch thread vs two on this machine, now: a Lite0 training step at 96 px, batch 32, side by side.

Run it on a quiet machine and again with other jobs on the cores: `threads=auto` (accel.resolve_threads)
should pick the faster count in both cases. Prints the load and what auto would pick.
    python benchmarks/threads.py
"""

from __future__ import annotations

import os
import statistics
import time

import timm
import torch

from tlexp.run.accel import busy_cores, resolve_threads


def main(steps: int = 6, repeats: int = 2) -> None:
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x, y = torch.randn(32, 3, 96, 96), torch.randint(0, 10, (32,))

    def step() -> float:
        started = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter() - started

    print(f"load {os.getloadavg()[0]:.2f}, other processes running {busy_cores()}, "
          f"threads=auto picks {resolve_threads('auto', 'cpu')}")  # fmt: skip
    medians: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):  # interleaved, so a change in load hits both counts
        for n in medians:
            torch.set_num_threads(n)
            step()  # warm-up
            medians[n].append(statistics.median(step() for _ in range(steps)))
    for n, values in medians.items():
        print(f"threads {n}: median step {min(values) * 1000:.0f} ms (repeats: {[round(v * 1000) for v in values]})")


if __name__ == "__main__":
    main()
