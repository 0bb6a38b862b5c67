"""At train start, a picture of what the model really sees: augmented training images, with their labels."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from tlexp.evaluation import figures


class TrainBatchPreview(Callback):
    """Saves `count` augmented training images as `path` (PNG) and logs them to TensorBoard."""

    def __init__(self, path: Path, count: int = 32, seed: int = 0):
        self.path, self.count, self.seed = Path(path), int(count), seed

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step > 0 or not trainer.is_global_zero:  # resumed run, or another DDP rank
            return
        dm = trainer.datamodule
        images, transform = dm.splits["train"], dm.train_transform
        # Own RNG streams: drawing the preview must not shift the augmentation of the run itself.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            picks = torch.randperm(len(images))[: self.count].tolist()
            batch = torch.stack([transform(images.image(i)) for i in picks])
        shown = figures.denormalise(batch, dm.mean, dm.std)
        captions = [dm.class_names[int(images.labels[i])] for i in picks]
        fig = figures.grid_figure(list(shown), captions, title="augmented training images (model input, denormalised)")
        writer = getattr(trainer.logger, "experiment", None)
        figures.save(fig, self.path, writer, "train/augmented_batch")
