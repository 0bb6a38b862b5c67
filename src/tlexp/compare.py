"""`python -m tlexp.compare`: run strategies x seeds (x sizes) (x cross-validation folds) as one Hydra multirun,
then write the report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tlexp.comparison.report import write_report
from tlexp.config.cli import precheck
from tlexp.config.errors import ConfigError, exit_on_user_error
from tlexp.config.validate import validate_config

OWN_KEYS = {"strategies", "seeds", "sizes", "size_unit", "report_only", "dir"}
SIZE_KEYS = {"per_class": "dataset.per_class", "total": "dataset.train_size"}


def _listed(values) -> list[str]:
    return [str(v) for v in (OmegaConf.to_container(values) if not isinstance(values, list) else values)]


def fold_runs(cfg: DictConfig) -> int:
    """How many fold runs each (strategy, seed, size) makes: K x repeats with `cv.folds=K` (one per fold, swept as
    `cv.fold=0,1,...`), 1 without folds or where the user named one fold (`cv.fold=i`)."""
    folds = int(OmegaConf.select(cfg, "cv.folds", default=0) or 0)
    if folds <= 0 or OmegaConf.select(cfg, "cv.fold", default=None) is not None:
        return 1
    return folds * int(OmegaConf.select(cfg, "cv.repeats", default=1) or 1)


def sweep_command(cfg: DictConfig, passthrough: list[str], runs_dir: Path) -> tuple[list[str], int]:
    """The `python -m tlexp.train -m ...` command line and how many runs it makes.

    With `cv.folds=K > 0` every fold is a run of its own (`cv.fold=0,...,K x repeats - 1`), so that the sweep
    launcher spreads the folds and a killed sweep resumes fold by fold: strategies x folds (x seeds x sizes) runs.
    """
    if cfg.size_unit not in SIZE_KEYS:
        raise ConfigError(f"size_unit must be one of {', '.join(SIZE_KEYS)}, got '{cfg.size_unit}'.")
    strategies, seeds = _listed(cfg.strategies), _listed(cfg.seeds)
    if not strategies or not seeds:
        raise ConfigError("compare needs at least one strategy and one seed (strategies=[...] seeds=[...]).")
    # Seeds vary slowest, so every strategy has a finished run early on.
    sweep = [f"seed={','.join(seeds)}"]
    total = len(strategies) * len(seeds)
    if cfg.sizes:
        sizes = _listed(cfg.sizes)
        sweep.append(f"{SIZE_KEYS[cfg.size_unit]}={','.join(sizes)}")
        if cfg.size_unit == "total":
            sweep.append("dataset.per_class=null")
        total *= len(sizes)
    folds = fold_runs(cfg)
    if folds > 1:  # folds vary slower than strategies: every strategy has its fold 0 early on
        sweep.append(f"cv.fold={','.join(str(i) for i in range(folds))}")
        total *= folds
    sweep.append(f"strategy={','.join(strategies)}")
    command = [sys.executable, "-m", "tlexp.train", "-m", *sweep, *passthrough, f"hydra.sweep.dir={runs_dir}"]
    return command, total


def folds_note(cfg: DictConfig) -> str | None:
    """What cross-validation costs, said before the sweep starts."""
    runs = fold_runs(cfg)
    if runs <= 1:
        return None
    folds, repeats = int(cfg.cv.folds), int(OmegaConf.select(cfg, "cv.repeats", default=1) or 1)
    times = f"{folds} folds" + (f" x {repeats} repeats" if repeats > 1 else "")
    return (
        f"compare: cv.folds={folds}: every strategy trains once per fold ({times} = {runs} runs) for each seed and "
        f"size, so fine-tuning costs {runs} runs where one split costs 1; the report's intervals and paired "
        "differences are over folds (seeds=[0] for folds only)."
    )


def passthrough_overrides() -> list[str]:
    """The command line's overrides meant for training (everything but compare's own keys)."""
    task = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return [o for o in task if o.split("=", 1)[0].lstrip("+~") not in OWN_KEYS]


def compare(cfg: DictConfig) -> dict:
    validate_config(cfg)
    out = Path(cfg.dir)
    runs_dir = out / "runs"
    if cfg.report_only:
        if not runs_dir.is_dir() and not out.is_dir():
            raise ConfigError(f"report_only=true: no run directory at {out}. Pass dir=<a compare output dir>.")
    else:
        command, total = sweep_command(cfg, passthrough_overrides(), runs_dir)
        note = folds_note(cfg)
        if note:
            print(note, flush=True)
        print(f"compare: {total} runs into {runs_dir}\n  {' '.join(command)}", flush=True)
        env = {**os.environ, "TLEXP_SWEEP_TOTAL": str(total)}
        finished = subprocess.run(command, env=env)
        if finished.returncode != 0:
            print(f"compare: the sweep exited with status {finished.returncode}; reporting what finished.")
    report = write_report(runs_dir if runs_dir.is_dir() else out, out)
    print(f"\n{report['markdown']}\nreport: {out}/comparison.md (+ .csv, .json, PNG plots)\n", flush=True)
    return report


@hydra.main(version_base="1.3", config_path="pkg://tlexp.conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(compare)(cfg)


if __name__ == "__main__":
    precheck("compare")
    main()
