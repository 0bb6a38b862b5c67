"""tlexp: transfer-learning experiments for image classification.

    import tlexp
    run = tlexp.fit(strategy="feature_extraction", dataset="synthetic")   # as `python -m tlexp.train ...`
    model = tlexp.load(run.checkpoint)                                    # a .ckpt, .onnx or .pt file
    model.predict(["photo.jpg"])                                          # class names, or "unknown"

The API (docs/api.md) imports torch, Lightning and Hydra only when called: `import tlexp` stays fast.
"""

__version__ = "0.1.0"

from .api import FitResult, Model, fit, load  # noqa: E402 - after __version__, which submodules import
from .config.errors import ConfigError, DataError, TlexpError, WeightsUnavailable  # noqa: E402

__all__ = [
    "fit",
    "load",
    "FitResult",
    "Model",
    "TlexpError",
    "ConfigError",
    "DataError",
    "WeightsUnavailable",
    "__version__",
]
