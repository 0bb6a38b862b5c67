"""The model: backbones and weights, the LightningModule, phases, EMA, metrics, loading a trained one."""
