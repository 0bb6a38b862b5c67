"""The block map of every shipped backbone: `last` is the last real stage of blocks, `last:N` walks back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
import yaml

from tlexp.model.backbones import block_map
from tlexp.model.phases import _selector_groups

MODELS = sorted((Path(__file__).resolve().parents[1] / "conf" / "model").glob("*.yaml"))


def _backbone(conf: Path):
    with torch.device("meta"):  # names and shapes only: every backbone builds in milliseconds
        return timm.create_model(yaml.safe_load(conf.read_text())["name"], pretrained=False, num_classes=0)


def _holds_block(backbone, names: list[str]) -> bool:
    """A real stage: a parameter of the matcher's blocks, and a weight matrix or kernel (not norms alone)."""
    params = dict(backbone.named_parameters())
    patterns = backbone.group_matcher(coarse=True)["blocks"]
    patterns = [p if isinstance(p, str) else p[0] for p in ([patterns] if isinstance(patterns, str) else patterns)]
    return any(re.match(p, n) for p in patterns for n in names) and any(params[n].ndim >= 2 for n in names)


@pytest.mark.parametrize("conf", MODELS, ids=[m.stem for m in MODELS])
def test_every_parameter_in_one_group_and_every_stage_holds_a_block(conf):
    backbone = _backbone(conf)
    groups = block_map(backbone)
    names = [n for names in groups.values() for n in names]
    assert sorted(names) == sorted(n for n, _ in backbone.named_parameters())
    stages = [g for g in groups if g != "stem"]
    for n in range(1, len(stages) + 1):
        chosen = _selector_groups(f"last:{n}", [*groups, "head"])
        assert chosen == stages[-n:]
        assert all(_holds_block(backbone, groups[g]) for g in chosen), (conf.stem, n, chosen)


@pytest.mark.parametrize(
    ("model", "last_holds", "also_holds"),
    [
        ("convnext_tiny", "stages.3.blocks.0.conv_dw.weight", "head.norm.weight"),
        ("mobilenetv3_large", "blocks.6.0.conv.weight", "conv_head.weight"),
        ("efficientnet_lite0", "blocks.6.0.conv_pw.weight", "conv_head.weight"),
    ],
)
def test_trailing_groups_without_blocks_fold_into_the_last_stage(model, last_holds, also_holds):
    groups = block_map(_backbone(Path(__file__).resolve().parents[1] / "conf" / "model" / f"{model}.yaml"))
    last = groups[_selector_groups("last", [*groups, "head"])[0]]
    assert last_holds in last and also_holds in last
