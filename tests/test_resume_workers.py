"""A run resumed after a crash equals the uninterrupted run when loader worker processes draw the augmentation."""

from __future__ import annotations

import torch

from .test_resume import FAST, whole_crashed_resumed

RUN = ("strategy=finetune", "strategy.phases.0.epochs=2", "data.num_workers=1", "trainer.deterministic=true", *FAST)


def test_a_run_resumed_with_loader_workers_trains_on_the_same_augmented_images(tiny_cfg, tmp_path):
    whole, _, resumed = whole_crashed_resumed(tiny_cfg, tmp_path, *RUN)
    a, b = whole["state_dict"], resumed["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run drew other augmentations or another order"
