"""Where the model looks (evaluation/gradcam.py): the map finds the evidence, the report and predict draw it.

The evidence test: a set whose class is decided by a bright patch at a known place (class 0: top-left, class 1:
bottom-right, class 2: no patch, so that neither patch class can be told by the other's absence), a tiny CNN with
the timm interface Grad-CAM uses (`forward_features`, `forward_head`) fitted in the test; the map's peak must fall
inside the patch on >= 80% of the correctly classified patch images.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlexp.data.images import TensorImages
from tlexp.evaluation import gradcam, report
from tlexp.model.module import TransferModule

SIZE, PATCH = 32, 8
PLACES = {0: (2, 2), 1: (SIZE - PATCH - 2, SIZE - PATCH - 2)}  # (row, column) of the patch's top-left pixel


def patch_images(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise in [0, 0.5]; classes 0 and 1 get a white PATCH x PATCH square at their place; normalised."""
    x = torch.rand(n, 3, SIZE, SIZE, generator=gen) * 0.5
    y = torch.randint(0, 3, (n,), generator=gen)
    for i in range(n):
        if int(y[i]) in PLACES:
            r, c = PLACES[int(y[i])]
            x[i, :, r : r + PATCH, c : c + PATCH] = 1.0
    return (x - 0.5) / 0.25, y


class TinyBackbone(nn.Module):
    """Three convolutions and global average pooling, with timm's forward_features / forward_head split."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1)
        )
        self.num_features = 32

    def forward_features(self, x):
        return F.relu(self.body(x))

    def forward_head(self, features, pre_logits=False):
        return features.mean(dim=(2, 3))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.head = TinyBackbone(), nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.backbone(x))


def inside(point: tuple[float, float], label: int) -> bool:
    r0, c0 = PLACES[label]
    return r0 <= point[0] < r0 + PATCH and c0 <= point[1] < c0 + PATCH


@pytest.fixture
def one_thread():
    """Small convolutions on one thread: on a shared 2-core machine a second thread spins more than it helps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_maps_peak_falls_inside_the_patch_that_decides_the_class(one_thread):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(120):
        x, y = patch_images(64, gen)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y = patch_images(200, gen)
    model.train()  # gradcam runs in eval mode and puts the mode back
    maps, logits = gradcam.gradcam(model, x)
    assert model.training and maps.shape == (200, SIZE, SIZE) and float(maps.max()) == 1.0
    with torch.no_grad():
        torch.testing.assert_close(logits, model.eval()(x))  # the logits it returns are the model's own
    right = [i for i in range(len(y)) if logits[i].argmax() == y[i] and int(y[i]) in PLACES]
    assert len(right) >= 100, f"the tiny model learned too little ({len(right)} right patch images)"
    hits = sum(inside(gradcam.peak(maps[i]), int(y[i])) for i in right)
    assert hits / len(right) >= 0.8, f"peak inside the patch on {hits} of {len(right)} correct images"


def test_peak_is_the_centre_of_a_flat_top():
    cam = torch.zeros(10, 10)
    cam[:4, :4] = 1.0  # an upsampled coarse map at the image's corner: argmax alone would say (0, 0)
    assert gradcam.peak(cam) == (1.5, 1.5)


def test_the_report_draws_the_top_losses_with_their_maps(tmp_path, one_thread):
    """evaluate() writes top_losses_gradcam.png beside top_losses.png (an untrained model: plenty of losses)."""
    from tlexp.data import TransferDataModule

    torch.manual_seed(0)
    dm = TransferDataModule(
        dataset={"name": "synthetic", "source": "synthetic", "num_classes": 3, "images_per_class": 12,
                 "native_size": 32, "split_seed": 0, "val_fraction": 0.25, "test_fraction": 0.25},
        image_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear", crop_pct=1.0,
        batch_size=16, num_workers=0,
    )  # fmt: skip
    dm.setup()
    module = TransferModule("test_resnet.r160_in1k", 3, weights="none", class_names=dm.class_names,
                            preprocessing={"image_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3,
                                           "interpolation": "bilinear", "crop_pct": 1.0})  # fmt: skip
    summary = report.evaluate(module, dm, tmp_path, split="test", temperature=False, top_loss_count=4)
    assert summary["misclassified"] > 0
    assert (tmp_path / "top_losses.png").is_file() and (tmp_path / "top_losses_gradcam.png").stat().st_size > 0
    off = tmp_path / "off"
    report.evaluate(module, dm, off, split="test", temperature=False, top_loss_count=4, gradcam=False)
    assert (off / "top_losses.png").is_file() and not (off / "top_losses_gradcam.png").exists()


def test_overlays_and_maps_on_real_backbones(one_thread):
    """A timm CNN (its forward_features map) and a ViT (tokens before the last block's attention)."""
    torch.manual_seed(0)
    for name, size in (("test_resnet.r160_in1k", 64), ("test_vit.r160_in1k", 160)):
        module = TransferModule(name, 3, weights="none", image_size=size)
        x = torch.randn(2, 3, size, size)
        maps, logits = gradcam.gradcam(module, x, torch.tensor([0, 2]))
        with torch.no_grad():
            torch.testing.assert_close(logits, module.eval()(x), atol=1e-4, rtol=1e-4)
        assert maps.shape == (2, size, size) and 0 <= float(maps.min()) and float(maps.max()) <= 1
    pictures = TensorImages(torch.randint(0, 255, (2, 3, 40, 40), dtype=torch.uint8), torch.tensor([0, 1]).numpy())
    shown = gradcam.overlay(pictures.image(0).float() / 255, torch.rand(40, 40))
    assert shown.shape == (3, 40, 40) and 0 <= float(shown.min()) and float(shown.max()) <= 1


def test_report_gradcam_false_reaches_the_report(monkeypatch, tmp_path):
    """`report.gradcam` in train.yaml is what train.report hands the evaluation report."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from tlexp import train

    seen = []
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: seen.append(kwargs) or {})
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(root_device="cpu"), world_size=1,
                              limit_test_batches=1.0, limit_val_batches=1.0)  # fmt: skip
    for flag in (False, True):
        cfg = OmegaConf.create({"report": {"enabled": True, "temperature": False, "top_losses": 4, "gradcam": flag}})
        run = SimpleNamespace(cfg=cfg, trainer=trainer, module=SimpleNamespace(test_logits=lambda: None),
                              datamodule=None, out=tmp_path, logger=SimpleNamespace(experiment=None))  # fmt: skip
        train.report(run)
        assert seen[-1]["gradcam"] is flag
    assert OmegaConf.load(Path(train.__file__).parent / "conf" / "train.yaml").report.gradcam is True
