"""Where the model looks: Grad-CAM (Selvaraju et al. 2017) on the backbone's last feature map, as overlays.

tlexp's own ~40 lines instead of `grad-cam` (pytorch-grad-cam) or `captum`: grad-cam pulls OpenCV, ttach and
scikit-learn for what is a weighted sum of one feature map, and captum another large package; neither knows timm's
`forward_features` / `forward_head` split, which is all Grad-CAM needs here.

How: the backbone's feature map A [N, C, h, w] (timm's `forward_features`: the last stage's output of a CNN) is
computed without gradients and made a leaf; only the pooling and the head run with autograd, so the gradient of
the class score y_c by A costs a few small matrix products, not a backward pass through the backbone. The map is
ReLU(sum_k mean_hw(dy_c/dA_k) A_k), upsampled to the input size and scaled to [0, 1] per image. Vision
Transformers (token outputs [N, T, C]) use the input of the last block's attention (`blocks[-1].norm1`, the usual
choice: with class-token pooling, the final patch tokens get no gradient), reshaped to the patch grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps

from . import figures

ALPHA = 0.6  # weight of the heat map in an overlay where the map is at its maximum


def _feature_map_and_logits(module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, logits) with A a leaf that requires grad and logits computed from it (CNNs: timm's split)."""
    backbone = module.backbone
    if hasattr(backbone, "num_prefix_tokens") and hasattr(backbone, "blocks"):  # a ViT: [N, T, C] tokens
        return _token_map_and_logits(module, x)
    with torch.no_grad():
        features = backbone.forward_features(x)
    features = features.detach().requires_grad_(True)
    return features, module.head(backbone.forward_head(features, pre_logits=True))


def _token_map_and_logits(module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ViT-style backbones: the tokens entering the last block's attention, as a leaf (a forward hook swaps it in)."""
    target = module.backbone.blocks[-1].norm1
    kept: list[torch.Tensor] = []

    def swap(_module, _inputs, output):
        leaf = output.detach().requires_grad_(True)
        kept.append(leaf)
        return leaf

    handle = target.register_forward_hook(swap)
    try:
        logits = module(x)
    finally:
        handle.remove()
    prefix = getattr(module.backbone, "num_prefix_tokens", 1)
    return _TokenGrid(kept[0], prefix), logits


class _TokenGrid:
    """The patch tokens of a ViT as a [N, C, side, side] map; their gradient reshaped alike."""

    def __init__(self, tokens: torch.Tensor, prefix: int):
        self.tokens, self.prefix = tokens, prefix
        self.side = math.isqrt(tokens.shape[1] - prefix)

    def _grid(self, t: torch.Tensor) -> torch.Tensor:
        patches = t[:, self.prefix : self.prefix + self.side * self.side]
        return patches.transpose(1, 2).reshape(len(t), -1, self.side, self.side)

    def value(self) -> torch.Tensor:
        return self._grid(self.tokens.detach())

    def gradient(self) -> torch.Tensor:
        return self._grid(self.tokens.grad)


def gradcam(module, x: torch.Tensor, target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps [N, H, W] in [0, 1] at the input's size, for class `target` (default: the predicted one),
    and the logits. `module` is a TransferModule (a timm backbone and a head); `x` a normalised batch."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    x = x.to(device)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            found, logits = _feature_map_and_logits(module, x)
            target = logits.argmax(dim=1) if target is None else torch.as_tensor(target, device=device).view(-1)
            logits.gather(1, target[:, None]).sum().backward()
            if isinstance(found, _TokenGrid):
                activations, grads = found.value(), found.gradient()
            else:
                activations, grads = found.detach(), found.grad
    finally:
        module.train(was_training)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cams = F.relu((weights * activations).sum(dim=1, keepdim=True))
    cams = F.interpolate(cams, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    top = cams.flatten(1).max(dim=1).values.clamp_min(1e-12)
    return (cams / top[:, None, None]).cpu(), logits.detach().float().cpu()


def overlay(image: torch.Tensor, cam: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """A CHW float image in [0, 1] with the map drawn over it in the 'jet' colours, each pixel's heat weighted by the
    map itself: where the model did not look, the image shows as it is."""
    heat = torch.from_numpy(colormaps["jet"](cam.numpy())[..., :3]).permute(2, 0, 1).float()
    weight = alpha * cam.float()[None]
    return ((1 - weight) * image.float() + weight * heat).clamp(0, 1)


def overlays(module, x: torch.Tensor, preprocessing, target=None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Overlays of the model input (denormalised, so the map lines up with the crop the model saw), and logits."""
    cams, logits = gradcam(module, x, target)
    images = figures.denormalise(x.detach().cpu().float(), preprocessing.mean, preprocessing.std)
    return [overlay(img, cam) for img, cam in zip(images, cams, strict=True)], logits


def save_top_losses_gradcam(
    module, images, indices: list[int], probs, labels, names, out: Path, tensorboard=None, device=None
) -> Path | None:
    """`top_losses_gradcam.png`: the top-loss images (same order as top_losses.png) with the map of the class the
    model predicted, i.e. where it looked to make its mistake. None when there is nothing to show."""
    if not indices:
        return None
    if device is not None:
        module.to(device)
    pre = module.eval_preprocessing()
    transform = pre.eval_transform()
    x = torch.stack([transform(images.image(i)) for i in indices])
    predicted = probs.argmax(dim=1)
    shown, _ = overlays(module, x, pre, predicted[indices])
    captions = [f"true: {names[labels[i]]}\npred: {names[predicted[i]]} ({probs[i].max():.2f})" for i in indices]
    grid = figures.grid_figure(shown, captions, title="most confidently wrong: where the model looked (Grad-CAM)")
    return figures.save(grid, Path(out) / "top_losses_gradcam.png", tensorboard, "eval/top_losses_gradcam")


def peak(cam: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """(row, column) of a map's maximum: the centre of the pixels at the maximum, since upsampling a coarse map
    (7x7 for 224 px on a ResNet) leaves flat tops at the image's edges, where a plain argmax picks the corner."""
    cam = torch.as_tensor(cam)
    rows, cols = torch.nonzero(cam >= cam.max() - 1e-6, as_tuple=True)
    return float(rows.float().mean()), float(cols.float().mean())
