"""`python -m tlexp.compare`: run strategies x seeds (x sizes) as one Hydra multirun, then write the report."""

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


def sweep_command(cfg: DictConfig, passthrough: list[str], runs_dir: Path) -> tuple[list[str], int]:
    """The `python -m tlexp.train -m ...` command line and how many runs it makes."""
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
    sweep.append(f"strategy={','.join(strategies)}")
    command = [sys.executable, "-m", "tlexp.train", "-m", *sweep, *passthrough, f"hydra.sweep.dir={runs_dir}"]
    return command, total


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
