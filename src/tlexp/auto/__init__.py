"""`strategy=auto`: choose a strategy from evidence measured on the user's own train/val split, and say why.

The evidence (pilots.py gathers it): the linear probe on frozen features, which is feature_extraction's
converged result, and short pilots of the fine-tuning candidates, kept or dropped by successive halving. Here
is the judgement, on made-up evidence as well as real: the best val accuracy wins, unless a cheaper candidate
is within the noise of it; noise is one standard error of the *paired* difference on the same val images.
`strategy.budget=0` falls back to the playbook's size rule (`decide`), and says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from omegaconf import OmegaConf

from tlexp.conf import CONF
from tlexp.config.errors import ConfigError
from tlexp.config.validate import config_names

CHOICES = ("feature_extraction", "gradual", "finetune")  # the size rule's three answers


@dataclass(frozen=True)
class Decision:
    strategy: str
    reason: str
    train_images: int
    num_classes: int
    method: str = "size rule"  # or "evidence": the probe and the pilots
    runner_up: str | None = None
    evidence: list[dict] = field(default_factory=list)  # each candidate's last standing (val, noise, cost)
    features: dict | None = None  # the probe / kNN evidence (evidence.FeatureEvidence)
    rungs: list[list[dict]] = field(default_factory=list)  # successive halving: every candidate at every rung
    seconds: float = 0.0  # what choosing cost: the probe and the pilots (part of the run's fit time)
    feature_extraction_below: int | None = None
    finetune_above: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- the size rule (strategy.budget=0)


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
    reason = f"{head} -> {choice}, because {why} (the playbook's size rule: strategy.budget=0, nothing measured)."
    return Decision(choice, reason, train_images, num_classes, feature_extraction_below=below, finetune_above=above)


# ---------------------------------------------------------------- judging evidence


@dataclass
class Standing:
    """One candidate's evidence so far: its val accuracy, which val images it gets right, and what it costs."""

    strategy: str
    correct: torch.Tensor = field(repr=False)  # bool per val image, in the same order for every candidate
    epochs: int  # backbone epochs trained so far (0: the probe on frozen features)
    seconds: float  # spent on it so far
    full_seconds: float  # its whole run, estimated from what it has cost so far
    share: float = 1.0  # of its schedule's backbone epochs trained so far; the probe is converged: 1

    @property
    def val_acc(self) -> float:
        """From the per-image verdicts, for every candidate alike: equal counts are an exact tie."""
        return self.correct.double().mean().item()

    def as_dict(self, noise: float | None = None) -> dict:
        row = {
            "strategy": self.strategy,
            "val_acc": round(self.val_acc, 4),
            "epochs": self.epochs,
            "share": round(self.share, 3),
            "seconds": round(self.seconds, 1),
            "full_seconds_est": round(self.full_seconds, 1),
        }
        return row if noise is None else {**row, "noise": round(noise, 4)}


def paired_noise(a: Standing, b: Standing) -> float:
    """One standard error of val_acc(a) - val_acc(b), paired over the same val images (0 for a with itself).

    Two candidates that start from the same features agree on most images; the unpaired binomial error would
    call most real differences noise.
    """
    if a is b:
        return 0.0
    diff = a.correct.float() - b.correct.float()
    return diff.std().item() / math.sqrt(len(diff)) if len(diff) > 1 else 1.0


def leads(a: Standing, b: Standing) -> bool:
    """Whether a's val accuracy is above b's by more than `paired_noise`, decided exactly on image counts.

    With W images only a gets right and L only b does, lead > 1 s.e. of the paired difference comes down to
    W > L and (W - L)^2 > W + L. In floats a lead of one image (W=1, L=0) equals its s.e. up to rounding, and
    rounding, not the evidence, would decide it.
    """
    wins = int((a.correct & ~b.correct).sum())
    losses = int((b.correct & ~a.correct).sum())
    return wins > losses and (wins - losses) ** 2 > wins + losses


def better_half(standings: list[Standing]) -> list[Standing]:
    """Successive halving's cut: the better half by val accuracy (ties to the cheaper), at least one."""
    ranked = sorted(standings, key=lambda s: (-s.val_acc, s.full_seconds))
    return ranked[: max(1, math.ceil(len(ranked) / 2))]


def choose(standings: list[Standing]) -> tuple[Standing, Standing | None]:
    """The winner and the runner-up: the best val accuracy, unless a cheaper candidate is within its noise."""
    best = max(standings, key=lambda s: (s.val_acc, -s.full_seconds))
    tied = [s for s in standings if not leads(best, s)]
    winner = min(tied, key=lambda s: s.full_seconds)
    others = [s for s in standings if s is not winner]
    runner_up = best if winner is not best else max(others, key=lambda s: s.val_acc, default=None)
    return winner, runner_up


def still_open(finalists: list[Standing], cap: float) -> Standing | None:
    """The pilot that should train on before the choice, or None when the evidence suffices.

    A pilot of a fine-tuning strategy dips below the probe in its first epochs (its new learning rates knock the
    head and features off their start) and climbs past it later. So against a converged candidate, a pilot that
    does not lead it beyond the noise trains on, its share doubling, until it does or reaches `cap` of its
    schedule; its epochs are the start of its own run, so they are lost only if the probe wins.
    """
    if len(finalists) != 2:
        return None
    done = [s for s in finalists if s.share >= 1.0]
    pilot = next((s for s in finalists if s.share < cap), None)
    if len(done) != 1 or pilot is None or done[0].val_acc >= 1.0:  # a perfect probe cannot be beaten on val
        return None
    return None if leads(pilot, done[0]) else pilot


def explain(winner: Standing, runner_up: Standing | None, val_images: int) -> str:
    """One sentence: the choice, the figures behind it with their noise, and why."""

    def said(s: Standing) -> str:
        what = "the linear probe" if s.epochs == 0 else f"its pilot after {s.epochs} backbone epoch(s)"
        return f"{s.strategy} ({what}) val {s.val_acc:.3f}"

    if runner_up is None:
        return f"{said(winner)}: the only candidate left."
    noise = paired_noise(winner, runner_up)
    gap = 100 * (winner.val_acc - runner_up.val_acc)
    on = f"noise +/-{100 * noise:.1f} points (1 s.e., paired over {val_images} val images)"
    if leads(winner, runner_up):
        return f"{said(winner)} vs {said(runner_up)}: {gap:+.1f} points, more than the {on}: {winner.strategy}."
    cheaper = runner_up.full_seconds / max(winner.full_seconds, 1e-9)
    return (
        f"{said(winner)} is within the {on} of {said(runner_up)}: {winner.strategy}, about {cheaper:.0f}x cheaper "
        f"to run in full."
    )


# ---------------------------------------------------------------- strategies


def candidates(strategy: dict) -> list[dict]:
    """The strategies a run may train with: the one given, or every strategy auto may choose."""
    if not is_auto(strategy):
        return [strategy]
    names = CHOICES if not uses_pilots(strategy) else strategy.get("candidates") or CHOICES
    return [load_strategy(name) for name in names]


ONE_PROCESS = (
    "strategy=auto's pilots judge per-image val verdicts in one process; with more than one (DDP) pick the "
    "strategy yourself, run `python -m tlexp.advise` on one device first, or use strategy.budget=0."
)


def uses_pilots(strategy: dict) -> bool:
    return is_auto(strategy) and float(strategy.get("budget", 0)) > 0


def load_strategy(name: str) -> dict:
    path = CONF / "strategy" / f"{name}.yaml"
    if name == "auto" or not path.is_file():
        known = ", ".join(config_names("strategy", but="auto"))
        raise ConfigError(f"strategy.candidates: '{name}' is not a strategy; choose from {known}.")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def is_auto(strategy: dict) -> bool:
    return strategy.get("name") == "auto"


def resolve(strategy: dict, train_images: int, num_classes: int) -> tuple[dict, Decision | None]:
    """The strategy that trains: `strategy` itself, or for auto by the size rule its choice's YAML."""
    if not is_auto(strategy):
        return strategy, None
    below, above = int(strategy.get("feature_extraction_below", 500)), int(strategy.get("finetune_above", 2000))
    decision = decide(train_images, num_classes, below, above)
    return load_strategy(decision.strategy), decision
