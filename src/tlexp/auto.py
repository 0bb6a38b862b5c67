"""`strategy=auto`: pick a strategy from the training-set size, and say why."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf

from .errors import ConfigError

CONF = Path(__file__).resolve().parent / "conf"  # the package tlexp.conf, in a checkout and in a wheel
CHOICES = ("feature_extraction", "gradual", "finetune")


@dataclass(frozen=True)
class Decision:
    strategy: str
    reason: str
    train_images: int
    num_classes: int
    feature_extraction_below: int
    finetune_above: int

    def as_dict(self) -> dict:
        return asdict(self)


def decide(train_images: int, num_classes: int, below: int = 500, above: int = 2000) -> Decision:
    """The playbook's rule: < below -> feature_extraction, below..above -> gradual, > above -> finetune."""
    if not 0 < below <= above:
        raise ConfigError(f"strategy=auto needs 0 < feature_extraction_below <= finetune_above, got {below}, {above}.")
    per_class = train_images / max(num_classes, 1)
    head = f"{train_images} training images, {num_classes} classes (~{per_class:.0f} per class)"
    if train_images < below:
        choice = "feature_extraction"
        why = (
            f"fewer than {below} images: too few to move pretrained weights without overfitting, so keep the "
            "backbone frozen and train only a new head"
        )
    elif train_images <= above:
        choice = "gradual"
        why = (
            f"between {below} and {above} images: enough to adapt the top of the backbone, too few to fine-tune "
            "everything at once, so unfreeze from the head down at falling learning rates"
        )
    else:
        choice = "finetune"
        why = (
            f"more than {above} images: enough to fine-tune every layer, pretrained ones at a 10x lower "
            "learning rate than the new head"
        )
    return Decision(choice, f"{head} -> {choice}, because {why}.", train_images, num_classes, below, above)


def resolve(strategy: dict, train_images: int, num_classes: int) -> tuple[dict, Decision | None]:
    """The strategy that trains: `strategy` itself, or for auto its choice from conf/strategy/<choice>.yaml."""
    if not is_auto(strategy):
        return strategy, None
    decision = decide(
        train_images,
        num_classes,
        int(strategy.get("feature_extraction_below", 500)),
        int(strategy.get("finetune_above", 2000)),
    )
    return load_strategy(decision.strategy), decision


def candidates(strategy: dict) -> list[dict]:
    """The strategies a run may train with: the one given, or every strategy auto may choose."""
    return [load_strategy(name) for name in CHOICES] if is_auto(strategy) else [strategy]


def load_strategy(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "strategy" / f"{name}.yaml"), resolve=True)


def is_auto(strategy: dict) -> bool:
    return strategy.get("name") == "auto"
