"""`strategy=auto`: choose a strategy from evidence measured on the user's own train/val split, and say why.

The evidence (pilots.py gathers it): the linear probe on frozen features, which is feature_extraction's
converged result, and short pilots of the fine-tuning candidates, kept or dropped by successive halving. Here
is the judgement, on made-up evidence as well as real: the best val accuracy wins (exact ties: the lower val
log-loss), unless a cheaper candidate is within the noise of it; noise is one standard error of the *paired*
difference on the same val images. No pilot trains where no training could make it lead the probe beyond that
noise on this val set (`stop_rule`). Figures are said with their 95% intervals; cost has one definition
(`epochs_seconds`, `priced`). `strategy.budget=0` falls back to the playbook's size rule (`decide`), and says so.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import asdict, dataclass, field

import torch
from omegaconf import OmegaConf

from tlexp.conf import CONF
from tlexp.config.errors import ConfigError
from tlexp.config.validate import config_names
from tlexp.evaluation import intervals

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
    val_images: int | None = None
    stopped: str | None = None  # the stop rule fired: why no pilot could lead the probe on this val set
    tie: str | None = None  # the choice rested on an exact tie on val accuracy: what broke it
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

SMALL_VAL = 200  # below this many val images one split's count of the probe's errors is a rough estimate of its
# error rate (at 26 images a probe wrong 8% of the time misses 0 to 4 of them): the CV over train + val is steadier


@dataclass
class Standing:
    """One candidate's evidence so far: its val accuracy, which val images it gets right, and what it costs."""

    strategy: str
    correct: torch.Tensor = field(repr=False)  # bool per val image, in the same order for every candidate
    epochs: int  # backbone epochs trained so far (0: the probe on frozen features)
    seconds: float  # spent on it so far
    full_seconds: float  # its whole run, as the cost section below defines it (the same in train and advise)
    share: float = 1.0  # of its schedule's backbone epochs trained so far; the probe is converged: 1
    val_loss: float | None = None  # val log-loss where its verdicts come from: breaks exact ties on val accuracy

    @property
    def val_acc(self) -> float:
        """From the per-image verdicts, for every candidate alike: equal counts are an exact tie."""
        return self.correct.double().mean().item()

    @property
    def right(self) -> int:
        return int(self.correct.sum())

    @property
    def errors(self) -> int:
        return len(self.correct) - self.right

    def val_interval(self) -> intervals.Interval:
        return intervals.wilson(self.right, len(self.correct))

    def as_dict(self, against: Standing | None = None) -> dict:
        """Its row in auto.json; against the winner, also the paired noise and the difference with its interval."""
        row = {
            "strategy": self.strategy,
            "val_acc": round(self.val_acc, 4),
            "val": self.val_interval().as_dict(),
            "val_loss": None if self.val_loss is None else round(self.val_loss, 4),
            "epochs": self.epochs,
            "share": round(self.share, 3),
            "seconds": round(self.seconds, 1),
            "full_seconds_est": round(self.full_seconds, 1),
        }
        if against is None:
            return row
        difference = intervals.paired_difference(self.correct.numpy(), against.correct.numpy())
        return {**row, "noise": round(paired_noise(self, against), 4), "difference": difference.as_dict()}


def paired_noise(a: Standing, b: Standing) -> float:
    """One standard error of val_acc(a) - val_acc(b), paired over the same val images (0 for a with itself).

    Two candidates that start from the same features agree on most images; the unpaired binomial error would
    call most real differences noise.
    """
    if a is b:
        return 0.0
    diff = a.correct.float() - b.correct.float()
    return diff.std().item() / math.sqrt(len(diff)) if len(diff) > 1 else 1.0


def beyond_noise(wins: int, losses: int) -> bool:
    """W images only a gets right, L only b does: a leads b by more than 1 s.e. of the paired difference iff
    W > L and (W - L)^2 > W + L."""
    return wins > losses and (wins - losses) ** 2 > wins + losses


def leads(a: Standing, b: Standing) -> bool:
    """Whether a's val accuracy is above b's by more than `paired_noise`, decided exactly on image counts.

    In floats a lead of one image (W=1, L=0) equals its s.e. up to rounding, and rounding, not the evidence,
    would decide it.
    """
    return beyond_noise(int((a.correct & ~b.correct).sum()), int((b.correct & ~a.correct).sum()))


def can_be_led(errors: int) -> bool:
    """Whether anything could lead a candidate that gets `errors` val images wrong, on this val set.

    The best a challenger can do is get right every image the candidate gets wrong and lose none (W = errors,
    L = 0), whatever it gets right now: a lead iff errors^2 > errors, i.e. at least 2 errors.
    """
    return beyond_noise(errors, 0)


def stop_rule(probe: Standing, cv_acc: float | None = None, folds: int = 0) -> str | None:
    """Why no pilot can be expected to lead the converged probe beyond the noise on this val set, or None.

    The errors counted are the probe's on val (E). On a val set under SMALL_VAL images, also the errors its
    cross-validated accuracy over train + val predicts for a val set of this size, (1 - cv_acc) x n rounded half
    up, and the smaller of the two counts: one small val split may hold more of the probe's errors than it makes,
    and a pilot that must win all of them and lose none to lead is a lottery ticket, not worth a fine-tuning
    schedule. Stop iff `can_be_led` is false for the count (fewer than 2). Deterministic: counts, no sampling.
    """
    n, missed = len(probe.correct), probe.errors
    said = f"the probe misses {missed} of {n} val images"
    if not can_be_led(missed):
        return f"{said}: no pilot can lead it beyond the noise on this val set"
    if cv_acc is None or n >= SMALL_VAL:
        return None
    expected = math.floor((1 - cv_acc) * n + 0.5)
    if can_be_led(expected):
        return None
    return (
        f"{said}, but at its cross-validated accuracy ({cv_acc:.3f}, {folds} folds over train + val) it would miss "
        f"about {expected} on a val set this size: no pilot can be expected to lead it beyond the noise here"
    )


def _ranked(s: Standing) -> tuple:
    """Val accuracy first; exact ties broken by the lower val log-loss (unknown: last), then by cost."""
    return -s.val_acc, math.inf if s.val_loss is None else s.val_loss, s.full_seconds


def better_half(standings: list[Standing]) -> list[Standing]:
    """Successive halving's cut: the better half by val accuracy (ties: lower val loss, then cheaper), at least one."""
    ranked = sorted(standings, key=_ranked)
    return ranked[: max(1, math.ceil(len(ranked) / 2))]


def choose(standings: list[Standing]) -> tuple[Standing, Standing | None]:
    """The winner and the runner-up: the best val accuracy (exact ties: the lower val loss), unless a cheaper
    candidate is within its noise."""
    best = min(standings, key=_ranked)
    within = [s for s in standings if not leads(best, s)]
    winner = min(within, key=lambda s: (s.full_seconds, _ranked(s)))
    others = sorted((s for s in standings if s is not winner), key=_ranked)
    runner_up = best if winner is not best else next(iter(others), None)
    return winner, runner_up


def tie(winner: Standing, runner_up: Standing | None) -> str | None:
    """What broke it, when the choice rested on an exact tie on val accuracy (equal counts), else None."""
    if runner_up is None or winner.right != runner_up.right:
        return None
    head = (
        f"{winner.strategy} and {runner_up.strategy} tie on val accuracy ({winner.right} of {len(winner.correct)} "
        "images each)"
    )
    if winner.full_seconds < runner_up.full_seconds:
        return f"{head}: the tie goes to the cheaper, {winner.strategy}"
    losses = f"{_loss(winner)} vs {_loss(runner_up)}"
    return f"{head}: the lower val log-loss ({losses}) breaks it: {winner.strategy}"


def _loss(s: Standing) -> str:
    return "unknown" if s.val_loss is None else f"{s.val_loss:.3f}"


def still_open(finalists: list[Standing], cap: float) -> Standing | None:
    """The pilot that should train on before the choice, or None when the evidence suffices.

    A pilot of a fine-tuning strategy dips below the probe in its first epochs (its new learning rates knock the
    head and features off their start) and climbs past it later. So against a converged candidate, a pilot that
    does not lead it beyond the noise trains on, its share doubling, until it does or reaches `cap` of its
    schedule; its epochs are the start of its own run, so they are lost only if the probe wins. It does not when
    no training could make it lead: the probe misses fewer than 2 val images (`can_be_led`).
    """
    if len(finalists) != 2:
        return None
    done = [s for s in finalists if s.share >= 1.0]
    pilot = next((s for s in finalists if s.share < cap), None)
    if len(done) != 1 or pilot is None or not can_be_led(done[0].errors):
        return None
    return None if leads(pilot, done[0]) else pilot


# ---------------------------------------------------------------- cost: one definition, in train and advise


def epochs_seconds(measured: list[float], epochs: int) -> float:
    """The seconds of `epochs` epochs from those measured so far: their median (one slow first epoch, worker
    start-up or a load spike, moves it little) times the count."""
    return statistics.median(measured) * epochs if measured and epochs else 0.0


def feature_pass_seconds(seconds_per_image: float, images: int) -> float:
    """feature_extraction's run in full: one eval forward over its train and val images (features are computed
    once; its head's epochs on them cost next to nothing and are left out)."""
    return seconds_per_image * images


def priced(probe: Standing, seconds_per_image: float | None, images: int) -> Standing:
    """The probe with its full run priced from the eval speed the pilots measured on their val passes.

    The probe's own seconds are no price: they are the seconds its features took to read when cached (advise ran
    first) or to compute when not, plus the CV and kNN evidence, which no feature_extraction run spends.
    """
    if seconds_per_image is None:
        return probe
    return dataclasses.replace(probe, full_seconds=feature_pass_seconds(seconds_per_image, images))


def _times(ratio: float) -> str:
    """`66x`, `3700x`, `1.4x`: two significant figures, what seconds measured on a busy machine support."""
    if ratio < 10:
        return f"{ratio:.1f}x"
    digits = max(0, math.floor(math.log10(ratio)) - 1)
    return f"{round(ratio / 10**digits) * 10**digits:.0f}x"


def cheaper(winner: Standing, other: Standing) -> str:
    return f"about {_times(other.full_seconds / max(winner.full_seconds, 1e-9))} cheaper to run in full"


# ---------------------------------------------------------------- the decision and its sentence


def said(s: Standing) -> str:
    """`feature_extraction (the linear probe) val 0.96 [0.81, 0.99] on 26 images`"""
    what = "the linear probe" if s.epochs == 0 else f"its pilot after {s.epochs} backbone epoch(s)"
    return f"{s.strategy} ({what}) val {s.val_interval().text()}"


def difference(a: Standing, b: Standing) -> str:
    """`-4 [-12, +0]` (points): a - b with its 95% paired bootstrap interval, never a bare +/-0."""
    return intervals.paired_difference(a.correct.numpy(), b.correct.numpy()).text(100, signed=True, on=False)


def explain(winner: Standing, runner_up: Standing | None, stopped: str | None = None) -> str:
    """One sentence: the choice, the figures behind it with their intervals, and why."""
    if stopped is not None:
        if runner_up is None:
            return f"{stopped}, so no pilot trains: {said(winner)}: {winner.strategy}, the cheaper."
        return (
            f"{stopped}, so {runner_up.strategy}'s pilot stops after {runner_up.epochs} backbone epoch(s): "
            f"{said(winner)} vs {said(runner_up)}: {winner.strategy}, the cheaper, {cheaper(winner, runner_up)}."
        )
    if runner_up is None:
        return f"{said(winner)}: the only candidate left."
    gap = f"difference {difference(winner, runner_up)} points (95% interval, paired over the same images)"
    broken = tie(winner, runner_up)
    if broken is not None:
        cost = f", {cheaper(winner, runner_up)}" if winner.full_seconds < runner_up.full_seconds else ""
        return f"{said(winner)} vs {said(runner_up)}, {gap}: {broken}{cost}."
    if leads(winner, runner_up):
        return f"{said(winner)} vs {said(runner_up)}: {gap}, more than 1 paired s.e. (the noise): {winner.strategy}."
    return (
        f"{said(winner)} is within the noise (1 paired s.e.) of {said(runner_up)}, {gap}: {winner.strategy}, "
        f"{cheaper(winner, runner_up)}."
    )


def judge(
    alive: list[Standing],
    *,
    train_images: int,
    num_classes: int,
    features: dict | None = None,
    rungs: list[list[dict]] | None = None,
    seconds: float = 0.0,
    stopped: str | None = None,
) -> Decision:
    """The decision on the last standings: `choose`, its sentence, and the record (train and advise alike)."""
    winner, runner_up = choose(alive)
    return Decision(
        strategy=winner.strategy,
        reason=f"{train_images} training images, {num_classes} classes: " + explain(winner, runner_up, stopped),
        train_images=train_images,
        num_classes=num_classes,
        method="evidence",
        runner_up=runner_up.strategy if runner_up else None,
        evidence=[s.as_dict(against=winner) for s in alive],
        features=features,
        rungs=rungs if rungs is not None else [[s.as_dict() for s in alive]],
        seconds=round(seconds, 2),
        val_images=len(winner.correct),
        stopped=stopped,
        tie=tie(winner, runner_up),
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
