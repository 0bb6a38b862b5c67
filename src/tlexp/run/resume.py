"""Resuming a run and not losing work: the run's own config, exact RNG state, a checkpoint on Ctrl-C / SIGTERM.

`python -m tlexp.train resume=<run dir>` continues that run in that directory: same config (read from the
`config.yaml` every run writes), Lightning restores weights, optimizer state, epoch and global step from
`checkpoints/last.ckpt`, PhaseSchedule restores the phase, and RunState restores the random number generators,
so that an end-of-epoch resume draws the same shuffles, crops and dropout masks as an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import sys
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from tlexp.config.errors import ConfigError
from tlexp.config.validate import check_writable

from .atomic import write_text

RUN_CONFIG = "config.yaml"  # the resolved config of a run, written at its start; resume reads it
LAST = "last.ckpt"

# conf/train.yaml uses this to put a resumed run's Hydra files (log, .hydra/resume) in the run's own directory.
OmegaConf.register_new_resolver(
    "tlexp_if_resume", lambda resume, if_set, if_unset: if_set if resume else if_unset, replace=True
)


METRICS = "metrics.json"  # written once, at the very end of a run: its presence means the run is finished


def finished_message(run: Path) -> str | None:
    """The message for a run that has nothing left to resume, or None when it is not finished."""
    metrics = run / METRICS
    if not metrics.is_file():
        return None
    written = datetime.fromtimestamp(metrics.stat().st_mtime).isoformat(sep=" ", timespec="seconds")
    return (
        f"run {run} is finished ({METRICS} written {written}); nothing to resume, nothing changed. "
        "To train again, start a new run (without resume=)."
    )


def in_place(cfg: DictConfig) -> tuple[DictConfig, str | None]:
    """A sweep launched again into the same directories (`tlexp.compare dir=<same dir>`): what to do with this
    run's directory. A run that wrote its config before is resumed (a finished one is read back, an interrupted
    one continues from its last.ckpt); an interrupted strategy=auto run starts again, its pilots cleared (they
    are short, and a pilot resumed under a new rung schedule would not match it). Returns the config to train
    and a line saying what happened, or None for a new run."""
    out = Path(str(cfg.output_dir))
    if not (out / RUN_CONFIG).is_file():
        return cfg, None
    changed = changed_keys(OmegaConf.load(out / RUN_CONFIG), cfg)
    if changed:  # e.g. an Optuna sweep launched again into a fixed dir: trial N is another configuration
        raise ConfigError(
            f"{out} holds a run made with another config ({', '.join(changed[:4])} differ), so it is not this "
            "sweep's run. Launch the sweep into a new directory (compare's dir=..., or hydra.sweep.dir=...)."
        )
    if (out / METRICS).is_file():
        return _with_resume(cfg, out), f"finished before in {out}: read back, not trained again"
    if OmegaConf.select(cfg, "strategy.name") == "auto":  # the saved config's too: no key differs
        clear_auto_attempt(out)
        return cfg, f"strategy=auto stopped before its end in {out}: starting it again"
    if (out / "checkpoints" / LAST).is_file():
        return _with_resume(cfg, out), f"interrupted in {out}: continuing from its last.ckpt"
    return cfg, f"stopped before its first checkpoint in {out}: starting it again"


def clear_auto_attempt(out: Path) -> bool:
    """Remove what an earlier strategy=auto run in `out` left (its pilots, its decision) before it starts again:
    a pilot's last.ckpt from that attempt is further on than the new attempt's first rung. True if any was there."""
    found = (out / "pilots").exists() or (out / "auto.json").exists()
    shutil.rmtree(out / "pilots", ignore_errors=True)
    (out / "auto.json").unlink(missing_ok=True)
    return found


def changed_keys(saved: DictConfig, cfg: DictConfig) -> list[str]:
    """The dotted keys whose values differ between a run's saved config and `cfg` (where it runs, aside)."""
    flat = [_flatten(OmegaConf.to_container(c, resolve=True)) for c in (saved, cfg)]
    where = {"output_dir", "resume", "resume_from"}
    return sorted(k for k in flat[0].keys() | flat[1].keys() if k not in where and flat[0].get(k) != flat[1].get(k))


def _flatten(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    return {k: v for key, value in node.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}


def _with_resume(cfg: DictConfig, run: Path) -> DictConfig:
    again = copy.deepcopy(cfg)
    again.resume = str(run)
    return again


def finished_run(resume) -> dict | None:
    """The recorded metrics of a finished run (saying so on stderr), so that resuming it changes nothing."""
    run = Path(str(resume)).expanduser()
    message = finished_message(run)
    if message is None:
        return None
    print(f"\ntlexp: {message}\n", file=sys.stderr, flush=True)
    return json.loads((run / METRICS).read_text())


def damaged(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be loaded (truncated, corrupt), or None when it reads whole.

    torch checkpoints are zip files: the directory sits at the end, so a cut-off file fails to open, and every
    member has a CRC, so testzip catches bytes changed in the middle, without unpickling anything.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"{type(err).__name__}: {err}"
    return None if bad is None else f"member {bad} fails its CRC check"


def _intact_best(run: Path) -> Path | None:
    """The newest best-*.ckpt of the run that reads whole."""
    found = sorted((run / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in found if damaged(p) is None), None)


def resume_checkpoint(run: Path, resume_from: str = "last") -> Path:
    """The checkpoint a resume of `run` continues from; ConfigError (one message) when there is none to use."""
    if not run.is_dir():
        raise ConfigError(f"resume={run}: no such directory. Pass the run directory of an earlier run.")
    if not (run / RUN_CONFIG).is_file() and not (run / "checkpoints").is_dir():
        raise ConfigError(
            f"resume={run}: neither {RUN_CONFIG} nor checkpoints/ there, so it is not a tlexp run directory. "
            "Pass the directory a run printed as its run dir."
        )
    if resume_from not in ("last", "best"):
        raise ConfigError(f"resume_from={resume_from}: choose last (the default) or best.")
    if resume_from == "best":
        best = _intact_best(run)
        if best is None:
            raise ConfigError(f"resume={run} resume_from=best: no intact checkpoints/best-*.ckpt there.")
        return best
    last = run / "checkpoints" / LAST
    if not last.is_file() and (run / "pilots").is_dir():
        raise ConfigError(auto_resume_message(run))
    if not last.is_file():
        raise ConfigError(
            f"resume={run}: no {last.relative_to(run)} yet (the run stopped before its first epoch ended). "
            "Start it again as a new run."
        )
    problem = damaged(last)
    if problem is not None:
        best = _intact_best(run)
        offer = (
            f"The best checkpoint {best.name} is intact: continue from it (the epochs after it are trained again) "
            f"with `python -m tlexp.train resume={run} resume_from=best`, or start a new run."
            if best is not None
            else "No intact best-*.ckpt either: start a new run."
        )
        raise ConfigError(f"resume={run}: {last} is damaged ({problem}), so it cannot be resumed from. {offer}")
    return last


def auto_resume_message(run: Path) -> str:
    """A strategy=auto run trains its winner in pilots/<strategy>/: that is the run to resume."""
    decision = run / "auto.json"
    if not decision.is_file():
        return (
            f"resume={run}: this strategy=auto run stopped while its pilots were running, before it chose a "
            "strategy. Start it again as a new run (the pilots are short)."
        )
    winner = json.loads(decision.read_text())["strategy"]
    return (
        f"resume={run}: this strategy=auto run chose {winner}, which trains in {run / 'pilots' / winner}. "
        f"Resume that run: python -m tlexp.train resume={run / 'pilots' / winner}"
    )


def resume_config(cfg: DictConfig) -> tuple[DictConfig, Path]:
    """The config of the run in `cfg.resume` and the checkpoint to continue from."""
    run = Path(str(cfg.resume)).expanduser()
    ckpt = resume_checkpoint(run, str(cfg.get("resume_from") or "last"))
    resumed = run_config(run, ckpt)
    resumed.output_dir = str(run)
    resumed.resume = str(run)
    return resumed, ckpt


def started_config(ckpt: Path) -> str | None:
    """The run's config.yaml as it was when the run started, from its checkpoint (None in checkpoints that
    predate this record)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
    return (state.get("callbacks") or {}).get(RunState.__qualname__, {}).get("config") or None


def run_config(run: Path, ckpt: Path) -> DictConfig:
    """The config a resume continues with: the run's config.yaml, unless it differs from the one the run started
    with. An edited file is refused (a resume continues a run as it started; half a run under other values would
    be recorded as one run); a deleted one is restored from the checkpoint."""
    path, started = run / RUN_CONFIG, started_config(ckpt)
    how = f"restore it, or delete it (resume then restores the config saved in {ckpt.name})"
    if not path.is_file():
        if started is None:
            raise ConfigError(
                f"resume={run}: its {RUN_CONFIG} is gone and {ckpt.name} predates the copy tlexp keeps in "
                f"checkpoints, so the run's config is unknown. Start a new run with the same overrides "
                f"(they are listed in {run / '.hydra' / 'overrides.yaml'})."
            )
        write_text(path, started)
        print(f"tlexp: {path} was missing; restored from {ckpt.name}.", file=sys.stderr, flush=True)
        return OmegaConf.create(started)
    try:
        current = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - yaml's and OmegaConf's parse errors alike
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"resume={run}: {path} is not valid YAML ({first}); {how}.") from err
    changed = changed_keys(OmegaConf.create(started), current) if started is not None else []
    if changed:
        raise ConfigError(
            f"resume={run}: {path} was edited after the run started ({', '.join(changed[:6])} differ from the "
            f"config saved in {ckpt.name}). A resume continues a run with the config it started with: {how}. "
            "To train with the new values, start a new run."
        )
    return current


def check_resume_argv(argv: list[str]) -> None:
    """Before Hydra runs (it creates the run dir and appends to its log): a resume that cannot or need not run
    says so and exits, leaving every file as it was: exit 0 for a finished run, 2 for a missing or damaged one.

    A finished run exits 0: the state asked for (the run trained to its end) holds, so a requeue script that
    resumes whatever was preempted neither loops nor reports a failure.
    """
    given = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    resume, resume_from = given.get("resume"), given.get("resume_from", "last")
    if not resume or resume.lower() in ("null", "none", "~") or "${" in resume:
        return
    run = Path(resume).expanduser()
    message = finished_message(run)
    if message is not None:
        print(f"\ntlexp: {message}\n", file=sys.stderr, flush=True)
        sys.exit(0)
    try:
        run_config(run, resume_checkpoint(run, resume_from))
        check_writable(run, f"The run's files are intact: free space there, then resume={run} again.")
    except ConfigError as err:
        print(f"\ntlexp error: {err}\n", file=sys.stderr, flush=True)
        sys.exit(2)


def check_resume_overrides(overrides: list[str]) -> None:
    """A resumed run keeps its own config; any other override would silently change it half-way."""
    extra = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith(("resume", "hydra"))]
    if extra:
        raise ConfigError(
            f"resume continues a run with the config it started with; drop these overrides: {' '.join(extra)}. "
            "To train differently, start a new run."
        )


def rng_states() -> dict:
    # Tensors and plain values only, so that Lightning's weights_only checkpoint loading accepts them.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    states = {"torch": torch.get_rng_state(), "numpy": numpy, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
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

    Not Lightning's OnExceptionCheckpoint: it saves on every exception (a NaN-diverged run's weights would
    replace the last good last.ckpt) and its teardown deletes its file at the end of every fit and test, which
    would delete the last.ckpt that the every-epoch ModelCheckpoint shares; undoing both is no shorter than this.
    """

    def __init__(self, run_dir: str | Path, last_path: str | Path, config: str = ""):
        self.run_dir = Path(run_dir)
        self.last_path = Path(last_path)
        self.config = config  # the run's config.yaml as it started: resume checks the file against it

    def state_dict(self) -> dict:
        return {"rng": rng_states(), "config": self.config}

    def load_state_dict(self, state: dict) -> None:
        if "rng" in state:
            set_rng_states(state["rng"])

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
