"""Hydra configs. Shipped in the wheel as the package `tlexp.conf` (src/tlexp/conf links here): `pkg://tlexp.conf`."""
