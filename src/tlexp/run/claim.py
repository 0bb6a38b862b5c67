"""A new run's directory, chosen and claimed before Hydra writes anything into it.

Hydra writes `.hydra/config.yaml`, `overrides.yaml`, `hydra.yaml` and the log into the run directory before the
task function runs, so a check inside the run comes too late: a refused run would already have rewritten the files
of the run it refused. `claim_run_dir` resolves the directory Hydra is about to use, claims it with an exclusive
file create (two runs started into one directory at the same moment cannot both get it), and pins it on the
command line so that Hydra, and Lightning's DDP processes that re-run this command, use exactly that directory.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from lightning.fabric.utilities.rank_zero import _get_rank

from tlexp.config.cli import compose_config
from tlexp.config.errors import ConfigError
from tlexp.config.validate import check_writable

from .resume import METRICS, RUN_CONFIG

CLAIM = ".tlexp-claim"  # "<host> <pid>" of the process that claimed the directory; removed once config.yaml is there


def claim_run_dir(argv: list[str]) -> list[str]:
    """The command line with the claimed run directory pinned (`hydra.run.dir=...`), or unchanged where there is
    nothing to claim: a resume (its own directory), a multirun or a Hydra flag, or a process of rank > 0 (the DDP
    processes Lightning starts, or SLURM's tasks, join the directory rank 0 claimed)."""
    given = dict(a.split("=", 1) for a in argv if "=" in a)
    if any(a.startswith("-") for a in argv) or given.get("resume", "null").lower() not in ("null", "none", "~"):
        return argv
    if (_get_rank() or 0) > 0:
        return argv
    named = given.get("output_dir") or given.get("hydra.run.dir")  # the user's own folder: claimed as it is
    if named:
        claim(Path(named.strip("\"'")).expanduser())
        return argv
    chosen = claim_free(Path(default_run_dir(argv)))
    return [*argv, f"hydra.run.dir={chosen}"]


def default_run_dir(argv: list[str]) -> str:
    """The directory Hydra would make for this command line (conf/train.yaml's `hydra.run.dir`)."""
    return str(compose_config("train", argv, hydra=True).hydra.run.dir)


def claim_free(base: Path) -> Path:
    """The default directory, or `<it>_2`, `_3`, ... when a run started in the same second holds it."""
    for n in range(1, 1000):
        candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
        if not (candidate / RUN_CONFIG).exists() and _try_claim(candidate):
            if not (candidate / RUN_CONFIG).exists():  # a run may have written it between the look and the claim
                return candidate
            release(candidate)
    raise ConfigError(f"no free run directory next to {base}: pass hydra.run.dir=<a new folder>.")


def claim(out: Path) -> None:
    """Claim `out`, a directory the user named, for a new run, or refuse with what is there and what to do."""
    held = not _try_claim(out)
    if (out / RUN_CONFIG).is_file():
        if not held:
            release(out)
        state = "a finished run" if (out / METRICS).is_file() else "an interrupted run"
        raise ConfigError(
            f"{out} already holds {state} (its {RUN_CONFIG} is there); a new run would mix its files with that "
            f"run's, so nothing was written. To continue that run: resume={out}. To train again: pass another "
            f"hydra.run.dir=..., or remove {out}."
        )
    if held:
        raise ConfigError(
            f"{out} was claimed a moment ago by another run that is still running ({_holder(out)}); two runs in "
            "one directory would mix their files, so nothing was written. Pass another hydra.run.dir=..."
        )


def _try_claim(out: Path) -> bool:
    """Create `out/.tlexp-claim` exclusively; a claim left by a process that no longer runs is taken over."""
    check_writable(out, "Pass hydra.run.dir=<a writable folder>.")  # before Hydra, whose mkdir would raise
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create the run directory {out}: {err.strerror or err}. Pass hydra.run.dir=<a writable folder>."
        ) from err
    marker = out / CLAIM
    for _ in range(2):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _alive(marker):
                return False
            marker.unlink(missing_ok=True)  # its process ended before the run wrote its config (a refused start)
            continue
        except OSError as err:
            raise ConfigError(
                f"cannot write in the run directory {out}: {err.strerror or err}. "
                "Pass hydra.run.dir=<a writable folder>."
            ) from err
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")
        return True
    return False


def abandon(out: Path) -> None:
    """A new run that stopped before it wrote its config.yaml (weights or data not to be had) leaves nothing: the
    directory it claimed goes, if it holds only what Hydra and the claim wrote (Hydra's files and logs)."""
    if (out / RUN_CONFIG).exists() or not (out / CLAIM).is_file():
        return
    if all(p.name in (".hydra", CLAIM) or p.suffix == ".log" for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


def release(out: Path) -> None:
    """Drop the claim: the run's config.yaml marks the directory from now on."""
    (out / CLAIM).unlink(missing_ok=True)


def _holder(out: Path) -> str:
    host, _, pid = (out / CLAIM).read_text().strip().partition(" ")
    return f"process {pid} on {host}"


def _alive(marker: Path) -> bool:
    """Whether the process named in a claim still runs (on another host: assumed so, it cannot be asked)."""
    try:
        host, _, pid = marker.read_text().strip().partition(" ")
    except OSError:
        return True
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
