"""`key=value` command lines for evaluate / predict / export, composed with Hydra from conf/<name>.yaml.

Paths (`ckpt`, `input`, `out`) are taken verbatim: Lightning's checkpoint names hold '=' (best-epoch=03.ckpt)
and globs hold '*', both of which Hydra's override grammar rejects. Everything else is a Hydra override,
so `dataset=imagefolder dataset.root=...` composes the same dataset configs as training.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

CONF = Path(__file__).resolve().parent / "conf"  # the package tlexp.conf, in a checkout and in a wheel
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
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{err} (in: {' '.join(overrides)})") from err
    for key, value in verbatim.items():
        cfg[key] = value
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing {', '.join(f'{k}=...' for k in missing)}. Usage:{usage}")
    return cfg


def run_dir_of(ckpt: Path) -> Path:
    """A training run's directory from one of its checkpoints (<run>/checkpoints/x.ckpt)."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
