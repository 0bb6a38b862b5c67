"""A run resumed after a crash equals the uninterrupted run when loader worker processes draw the augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tlexp.train import train

from .test_ema import Crash
from .test_resume import FAST, _ckpt

RUN = ("strategy=finetune", "strategy.phases.0.epochs=2", "data.num_workers=1", "trainer.deterministic=true", *FAST)


def test_a_run_resumed_with_loader_workers_trains_on_the_same_augmented_images(tiny_cfg, tmp_path):
    whole = tiny_cfg(*RUN, f"output_dir={tmp_path / 'whole'}")
    train(whole)
    cut = tiny_cfg(*RUN, f"output_dir={tmp_path / 'cut'}")
    with pytest.raises(MemoryError):
        train(cut, callbacks=[Crash()])  # dies after epoch 0's checkpoint
    train(tiny_cfg(f"resume={cut.output_dir}"))
    a, b = _ckpt(Path(whole.output_dir))["state_dict"], _ckpt(Path(cut.output_dir))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run drew other augmentations or another order"
