"""`python -m tlexp.advise dataset=...`: which strategy `auto` would pick for this data, and why; no training."""

from __future__ import annotations

import shlex

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from . import auto
from .cli import precheck
from .data import TransferDataModule
from .errors import exit_on_user_error
from .validate import validate_config


def advise(cfg: DictConfig) -> auto.Decision:
    validate_config(cfg)
    strategy = OmegaConf.to_container(cfg.strategy, resolve=True)
    if not auto.is_auto(strategy):  # thresholds come from conf/strategy/auto.yaml unless given
        strategy = OmegaConf.to_container(OmegaConf.load(auto.CONF / "strategy" / "auto.yaml"))
    # Only the split sizes are needed: no images are decoded, so the transform settings do not matter.
    data = TransferDataModule(OmegaConf.to_container(cfg.dataset, resolve=True), 32, (0.5,) * 3, (0.5,) * 3)
    sizes = data.sizes()
    _, decision = auto.resolve(strategy, sizes["train"], data.num_classes)
    print(f"\ndataset {cfg.dataset.name}: train {sizes['train']}, val {sizes['val']}, test {sizes['test']}")
    print(f"advice: {decision.reason}")
    print(f"run it: {train_command(decision.strategy)}  (or strategy=auto)\n", flush=True)
    return decision


def train_command(strategy: str) -> str:
    """The train command for this advice, keeping the user's own overrides (dataset, model, ...)."""
    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    kept = [o for o in given if not o.lstrip("+~").startswith("strategy")]
    return shlex.join(["python", "-m", "tlexp.train", f"strategy={strategy}", *kept])


@hydra.main(version_base="1.3", config_path="pkg://tlexp.conf", config_name="advise")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(advise)(cfg)


if __name__ == "__main__":
    precheck("advise")
    main()
