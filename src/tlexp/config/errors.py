"""User-facing errors: one clear message (what, where, how to fix), never a wall of traceback."""

from __future__ import annotations

import errno
import functools
import logging
import sys

log = logging.getLogger("tlexp")


class TlexpError(Exception):
    """An error caused by the user's input or environment; its message says what, where and how to fix."""

    exit_status = 2  # the user's mistake; the machine's (a full disk, a stop signal) say otherwise


class ConfigError(TlexpError):
    """The composed configuration asks for something that does not exist or cannot work."""


class WeightsUnavailable(TlexpError):
    """Pretrained weights were asked for and cannot be had; tlexp never falls back to random weights."""


class DataError(TlexpError):
    """The dataset is missing, empty or malformed."""


class TrainingDiverged(TlexpError):
    """The training loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class OutOfSpace(TlexpError):
    """A write failed for want of space, quota or a writable disk; what was written before is whole."""

    exit_status = 1


class Stopped(TlexpError):
    """SIGTERM arrived outside Lightning's fit loop (data checks, feature pass, probe, test, report)."""

    exit_status = 128 + 15  # what a shell reports for a process ended by SIGTERM


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def out_of_space(err: OSError, what_survives: str = "") -> OutOfSpace:
    """One message for a write the disk refused: which file, why, and that earlier files are intact."""
    where = f" while writing {err.filename}" if err.filename else ""
    return OutOfSpace(
        f"{err.strerror or err}{where}. Free space on that disk (or write elsewhere: hydra.run.dir=..., out=...) "
        f"and run again. tlexp writes every file whole or not at all, so what was written before is intact."
        + (f" {what_survives}" if what_survives else "")
    )


def exit_on_user_error(fn):
    """Run `fn`; turn a TlexpError (or a full or read-only disk) into a one-paragraph message on stderr and its
    exit status: 2 for the user's mistakes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OSError as err:
            if err.errno not in DISK_ERRNOS:
                raise
            error: TlexpError = out_of_space(err)
        except TlexpError as err:
            error = err
        print(f"\ntlexp error: {error}\n", file=sys.stderr, flush=True)
        sys.exit(error.exit_status)

    return wrapper
