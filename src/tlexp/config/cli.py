"""`key=value` command lines for evaluate / predict / export, composed with Hydra from conf/<name>.yaml.

Paths (`ckpt`, `input`, `out`) are taken verbatim: Lightning's checkpoint names hold '=' (best-epoch=03.ckpt)
and globs hold '*', both of which Hydra's override grammar rejects. Everything else is a Hydra override,
so `dataset=imagefolder dataset.root=...` composes the same dataset configs as training.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tlexp.conf import CONF

from .errors import ConfigError, exit_on_user_error
from .validate import user_keys, validate_config

VERBATIM = ("ckpt", "input", "out")


def parse_args(argv: list[str], config_name: str, usage: str) -> DictConfig:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage)
        raise SystemExit(0)
    verbatim, overrides = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"argument '{arg}' is not key=value. Usage:{usage}")
        if key in VERBATIM:
            verbatim[key] = value
        else:
            overrides.append(arg)
    _check_dataset_choice(config_name, overrides)
    cfg = compose_config(config_name, overrides)
    for key, value in verbatim.items():
        cfg[key] = value
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing {', '.join(f'{k}=...' for k in missing)}. Usage:{usage}")
    validate_config(cfg)
    return cfg


def _check_dataset_choice(config_name: str, overrides: list[str]) -> None:
    """evaluate has no dataset config unless one is chosen: `dataset.root=...` alone has nothing to set."""
    keys = [o.split("=", 1)[0] for o in overrides]
    if config_name != "evaluate" or "dataset" in keys or not any(k.startswith("dataset.") for k in keys):
        return
    given = " ".join(o for o in overrides if o.startswith("dataset."))
    raise ConfigError(
        f"{given}: choose the dataset config as well, e.g. `dataset=imagefolder {given}` (or dataset=csv, "
        "fashion_mnist, synthetic); without dataset=..., the run's own dataset config is used as saved."
    )


def compose_config(config_name: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """conf/<config_name>.yaml with `overrides` (and Hydra's own settings, `hydra`, when asked for); Hydra's and
    OmegaConf's errors become one ConfigError line."""
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra)
    except (HydraException, OmegaConfBaseException) as err:
        hint = _quote_hint(overrides) if isinstance(err, HydraException) else None
        where = f" (in: {' '.join(overrides)})"
        raise ConfigError(hint or f"{one_line(err)}{_close_keys(err, config_name)}{where}") from err


def _quote_hint(overrides: list[str]) -> str | None:
    """Hydra's grammar takes unquoted values of letters, digits and a few signs: a path with `~`, a space or a
    non-ASCII letter must be quoted. Name the override it could not read and show it quoted."""
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException:
            key, _, value = override.partition("=")
            home = " (or $HOME/... instead of ~/..., which the shell expands)" if value.startswith("~") else ""
            return (
                f"{override}: Hydra's override grammar cannot read this value unquoted. Quote it, with single quotes "
                f"around for the shell: '{key}=\"{value}\"'{home}."
            )
    return None


def one_line(err: Exception) -> str:
    """An OmegaConf/Hydra message on one line, without its `full_key:` / `object_type=` trailer."""
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else None
    text = f"{err}\n{cause}" if cause is not None and str(cause) not in str(err) else str(err)
    lines = [line.strip() for line in text.splitlines()]
    kept = [line for line in lines if line and not line.startswith(("full_key:", "object_type=", "reference_type="))]
    return " ".join(line if line.endswith((".", ":")) else f"{line}." for line in kept).rstrip(".")


def _close_keys(err: Exception, config_name: str) -> str:
    """`; did you mean data.batch_size?` for an unknown key, from the keys of the default config."""
    key = getattr(err, "full_key", None) or getattr(err.__cause__, "full_key", None)
    if not key or "not in struct" not in one_line(err):
        return ""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        known = user_keys(compose(config_name=config_name))
    close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def precheck(config_name: str, argv: list[str] | None = None) -> None:
    """Before `@hydra.main` runs: compose and validate the command line, so that an unknown key or a bad value
    is one line and exit status 2, and Hydra has not made a run directory yet. Flags (-m, --cfg, --help) are
    left to Hydra: a sweep's comma lists do not compose as one config."""
    argv = sys.argv[1:] if argv is None else argv
    if not any(a.startswith("-") for a in argv):
        exit_on_user_error(lambda: validate_config(compose_config(config_name, argv)))()


def run_dir_of(ckpt: Path) -> Path:
    """A training run's directory from one of its checkpoints (<run>/checkpoints/x.ckpt)."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
