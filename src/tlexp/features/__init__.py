"""Frozen-backbone features: the cache and its key, the linear probe, the evidence auto reads."""
