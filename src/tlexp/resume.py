"""Resuming a run and not losing work: the run's own config, exact RNG state, a checkpoint on Ctrl-C / SIGTERM.

`python -m tlexp.train resume=<run dir>` continues that run in that directory: same config (read from the
`config.yaml` every run writes), Lightning restores weights, optimizer state, epoch and global step from
`checkpoints/last.ckpt`, PhaseSchedule restores the phase, and RunState restores the random number generators,
so that an end-of-epoch resume draws the same shuffles, crops and dropout masks as an uninterrupted run.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError

RUN_CONFIG = "config.yaml"  # the resolved config of a run, written at its start; resume reads it
LAST = "last.ckpt"

# conf/train.yaml uses this to put a resumed run's Hydra files (log, .hydra/resume) in the run's own directory.
OmegaConf.register_new_resolver(
    "tlexp_if_resume", lambda resume, if_set, if_unset: if_set if resume else if_unset, replace=True
)


def resume_config(cfg: DictConfig) -> tuple[DictConfig, Path]:
    """The config of the run in `cfg.resume` and the checkpoint to continue from."""
    run = Path(str(cfg.resume)).expanduser()
    saved, last = run / RUN_CONFIG, run / "checkpoints" / LAST
    if not run.is_dir():
        raise ConfigError(f"resume={cfg.resume}: no such directory. Pass the run directory of an earlier run.")
    if not saved.is_file():
        raise ConfigError(f"resume={run}: no {RUN_CONFIG} there, so it is not a tlexp run directory.")
    if not last.is_file():
        raise ConfigError(
            f"resume={run}: no {last.relative_to(run)} yet (the run stopped before its first epoch ended). "
            "Start it again as a new run."
        )
    resumed = OmegaConf.load(saved)
    resumed.output_dir = str(run)
    resumed.resume = str(run)
    return resumed, last


def check_resume_overrides(overrides: list[str]) -> None:
    """A resumed run keeps its own config; any other override would silently change it half-way."""
    extra = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith(("resume", "hydra"))]
    if extra:
        raise ConfigError(
            f"resume continues a run with the config it started with; drop these overrides: {' '.join(extra)}. "
            "To train differently, start a new run."
        )


def _rng_states() -> dict:
    # Tensors and plain values only, so that Lightning's weights_only checkpoint loading accepts them.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    states = {"torch": torch.get_rng_state(), "numpy": numpy, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class RunState(Callback):
    """RNG states in every checkpoint; `last.ckpt` written when Ctrl-C or SIGTERM stops the run.

    Lightning turns SIGTERM into a stop at the end of the current batch and Ctrl-C into a shutdown, but saves
    nothing in either case; this does. Other errors (a NaN loss, a crash) leave the last good checkpoint alone.
    """

    def __init__(self, run_dir: str | Path, last_path: str | Path):
        self.run_dir = Path(run_dir)
        self.last_path = Path(last_path)

    def state_dict(self) -> dict:
        return {"rng": _rng_states()}

    def load_state_dict(self, state: dict) -> None:
        if "rng" in state:
            _set_rng_states(state["rng"])

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        trainer.save_checkpoint(self.last_path)
        if trainer.is_global_zero:
            what = "Ctrl-C" if isinstance(exception, KeyboardInterrupt) else "SIGTERM"
            print(
                f"\ntlexp: stopped by {what} at epoch {trainer.current_epoch}, global step {trainer.global_step}; "
                f"saved {self.last_path}.\nContinue with: python -m tlexp.train resume={self.run_dir}\n",
                file=sys.stderr,
                flush=True,
            )
