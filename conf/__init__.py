"""Hydra configs. Shipped in the wheel as the package `tlexp.conf` (src/tlexp/conf links here): `pkg://tlexp.conf`."""

from pathlib import Path

CONF = Path(__file__).resolve().parent  # this folder, in a checkout and in a wheel alike
