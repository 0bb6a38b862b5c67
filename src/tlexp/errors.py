"""User-facing errors: one clear message (what, where, how to fix), never a wall of traceback."""

from __future__ import annotations

import functools
import logging
import sys

log = logging.getLogger("tlexp")


class TlexpError(Exception):
    """An error caused by the user's input or environment; its message says what, where and how to fix."""


class ConfigError(TlexpError):
    """The composed configuration asks for something that does not exist or cannot work."""


class WeightsUnavailable(TlexpError):
    """Pretrained weights were asked for and cannot be had; tlexp never falls back to random weights."""


class DataError(TlexpError):
    """The dataset is missing, empty or malformed."""


class TrainingDiverged(TlexpError):
    """The training loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


def exit_on_user_error(fn):
    """Run `fn`; turn a TlexpError into a one-paragraph message on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TlexpError as err:
            print(f"\ntlexp error: {err}\n", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
