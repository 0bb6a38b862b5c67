"""Where weights come from: bundled packages, files (timm / torchvision / Lightning), the hub cache; and the
clear stop when none can be had."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from matplotlib import cbook
from safetensors.torch import save_file

from tlexp.config.errors import ConfigError, WeightsUnavailable
from tlexp.data.images import open_rgb
from tlexp.data.transforms import eval_transform
from tlexp.model.backbones import block_map, create_backbone
from tlexp.model.preprocessing import Preprocessing
from tlexp.model.weights import load_bundled

ROOT = Path(__file__).resolve().parents[1]
TINY = "test_resnet.r160_in1k"


def test_bundled_lite0_recognises_a_photo():
    # Grace Hopper in uniform (matplotlib's sample photo): ImageNet class 652 is "military uniform".
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    load_bundled(model, "tf_efficientnet_lite0")
    cfg = Preprocessing.of_backbone(model)
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.5, 0.5, 0.5) and cfg.image_size == 224
    image = open_rgb(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    x = eval_transform(cfg.image_size, cfg.mean, cfg.std, cfg.interpolation, cfg.crop_pct)(image)
    with torch.no_grad():
        probs = model.eval()(x[None]).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert 652 in top5, f"top-5 ImageNet classes {top5} miss 'military uniform' (652)"


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_bundled_lite1_lite2_load_with_every_shape_checked(name):
    model, weights_id = create_backbone(name, "bundled")
    assert weights_id.startswith("bundled:") and model.num_features == 1280


def test_bundled_weights_for_another_model_are_refused():
    with pytest.raises(WeightsUnavailable, match="has no bundled weights"):
        create_backbone(TINY, "bundled")


def test_torchvision_resnet_state_dict_loads_into_timm_resnet(tmp_path):
    source = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18-tv.pth"
    torch.save(source.state_dict(), path)
    model, weights_id = create_backbone("resnet18.tv_in1k", str(path))
    assert weights_id == f"file:{path}"
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_lightning_checkpoint_backbone_is_extracted(tmp_path):
    ref = timm.create_model(TINY, num_classes=0)
    ckpt = {
        "state_dict": {**{f"backbone.{k}": v for k, v in ref.state_dict().items()}, "head.1.weight": torch.zeros(3, 3)}
    }
    path = tmp_path / "run.ckpt"
    torch.save(ckpt, path)
    model, _ = create_backbone(TINY, str(path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True))


def test_keys_the_backbone_does_not_have_are_named_not_dropped_silently(tmp_path, caplog):
    ref = timm.create_model(TINY, num_classes=0)
    path = tmp_path / "more.pth"
    extra = {"aux.proj.weight": torch.ones(2, 2), "aux.proj.bias": torch.ones(2), "fc.weight": torch.ones(3, 8)}
    torch.save({**ref.state_dict(), **extra}, path)
    with caplog.at_level(logging.WARNING, logger="tlexp.model.weights"):
        model, _ = create_backbone(TINY, str(path))
    assert (
        "2 keys this backbone does not have were not loaded (e.g. ['aux.proj.weight', 'aux.proj.bias'])" in caplog.text
    )
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True))


def test_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(timm.create_model(TINY, num_classes=0).state_dict(), path)
    with pytest.raises(WeightsUnavailable, match="does not fit model 'resnet18.tv_in1k'"):
        create_backbone("resnet18.tv_in1k", str(path))


def test_missing_file_names_the_file_and_the_fixes(tmp_path):
    with pytest.raises(WeightsUnavailable) as err:
        create_backbone("resnet50.tv_in1k", str(tmp_path / "nope.pth"))
    assert "nope.pth does not exist" in str(err.value) and "model.weights=" in str(err.value)


def _fake_hub_cache(cache: Path, repo: str, state: dict) -> Path:
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    return snapshot / "model.safetensors"


def test_imagenet_weights_load_from_the_local_hub_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    torch.manual_seed(1)
    state = timm.create_model(TINY, num_classes=1000).state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    file = _fake_hub_cache(tmp_path, f"timm/{TINY}", state)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, weights_id = create_backbone(TINY, "imagenet")
    assert weights_id == f"imagenet:{file.name}"
    assert torch.equal(model.conv1[0].weight, state["conv1.0.weight"])


def test_imagenet_weights_offline_and_uncached_stop_with_the_message(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    dialled = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: dialled.append(address))
    with pytest.raises(WeightsUnavailable) as err:
        create_backbone("resnet50.tv_in1k", "imagenet")
    message = str(err.value)
    assert dialled == []  # offline means offline: no connection tried, so no timeout to wait for
    for needed in ("resnet50.tv_in1k", "timm/resnet50.tv_in1k", "resnet50-0676ba61.pth", "model.weights=", "online"):
        assert needed in message


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet5O'.*Did you mean"):
        create_backbone("resnet5O", None)


def test_block_map_covers_every_parameter_once():
    for name in (TINY, "tf_efficientnet_lite0", "vit_base_patch16_224"):
        model = (
            timm.create_model(name, num_classes=0)
            if name != "vit_base_patch16_224"
            else timm.create_model(name, num_classes=0, img_size=32)
        )
        groups = block_map(model)
        names = [n for ns in groups.values() for n in ns]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())
        assert next(iter(groups)) == "stem" and len(groups) >= 4


def test_main_command_without_weights_stops_before_the_data_with_the_message(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.run(
        [sys.executable, "-m", "tlexp.train", "strategy=gradual", "model=resnet50", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "tlexp error: model 'resnet50.tv_in1k' needs ImageNet weights" in proc.stderr
    assert "Traceback" not in proc.stderr
    # fast because nothing else is done first: the data is never read, only the listed caches are looked in
    assert "tlexp.data" not in proc.stdout + proc.stderr and "dataset fashion_mnist" not in proc.stdout
    assert f"(cache {tmp_path / 'hf' / 'hub'})" in proc.stderr and f"(cache {tmp_path / 'torch'}" in proc.stderr
    assert not (tmp_path / "run").exists()  # a refused run leaves nothing behind
