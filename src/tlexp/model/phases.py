"""A strategy is a list of phases; one Lightning callback applies them at epoch boundaries.

A phase names the groups that train, each group's learning rate, what BatchNorm does in frozen groups,
and the shape of its learning-rate schedule. Optimizer groups are built once (module.configure_optimizers);
a phase only flips `requires_grad`, learning rates and weight decay on groups that already exist.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field

import lightning as L
from lightning.pytorch.callbacks import Callback

from tlexp.config.errors import ConfigError

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "onecycle", "constant")
BN_MODES = ("frozen", "train", "eval")
FREEZE_MODES = ("auto", "requires_grad", "zero_lr")
_SPECIFICITY = {"all": 0, "backbone": 1}  # a named group (3) beats `last...` (2) beats these


@dataclass
class Phase:
    """One training phase. `lr` maps each trainable group to its learning rate after resolution."""

    name: str
    epochs: int
    train: list[str]
    lr: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.0
    bn: str = "frozen"
    schedule: str = "cosine"
    warmup: float = 0.0  # fraction of the phase over which the rates rise linearly to their peak first

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- parsing and validation


# The selector grammar, one home: the config check (validate.py) and the resolution below both read it.
SELECTOR = re.compile(r"all|backbone|head|stem|stage\d+|last(:\d+)?")


def _selector_groups(selector: str, groups: list[str]) -> list[str]:
    """Groups a selector names: all, backbone, head, stem, stageK, last, last:N (the last N stages)."""
    backbone = [g for g in groups if g != "head"]
    stages = [g for g in backbone if g != "stem"]
    if selector == "all":
        return list(groups)
    if selector == "backbone":
        return backbone
    match = re.fullmatch(r"last(?::(\d+))?", selector)
    if match:
        n = int(match.group(1) or 1)
        if n < 1 or n > len(stages):
            raise ConfigError(
                f"phase selector '{selector}' asks for the last {n} stage(s), but this backbone has "
                f"{len(stages)} stages ({', '.join(stages)}). Use last:1 .. last:{len(stages)}, or 'backbone'."
            )
        return stages[-n:]
    if selector in groups:
        return [selector]
    raise ConfigError(
        f"phase selector '{selector}' matches no parameter group. Valid: all, backbone, head, last, "
        f"last:N (N <= {len(stages)}), or a group of this backbone: {', '.join(groups)}."
    )


def _specificity(selector: str) -> int:
    return _SPECIFICITY.get(selector, 2 if selector.startswith("last") else 3)


def check_strategy(strategy: dict) -> None:
    """Checks that need no model: phase list shape, epochs, learning rates, schedule and BN names."""
    name = strategy.get("name", "?")
    phases = strategy.get("phases") or []
    if not phases:
        raise ConfigError(f"strategy '{name}' has no phases. Give `strategy.phases` a list of phases.")
    for i, p in enumerate(phases):
        where = f"strategy '{name}', phase {i + 1} ('{p.get('name', i + 1)}')"
        epochs = p.get("epochs")
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"{where}: epochs must be a whole number >= 1, got {epochs!r}.")
        if not p.get("train"):
            raise ConfigError(f"{where}: `train` must list the groups that train (e.g. [head] or [all]).")
        lrs = p.get("lr")
        values = lrs.values() if isinstance(lrs, dict) else [lrs]
        for v in values:
            if not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"{where}: every learning rate must be a number > 0, got {lrs!r}.")
        for key, allowed in (("schedule", SCHEDULES), ("bn", BN_MODES)):
            value = p.get(key, strategy.get(key))
            if value is not None and value not in allowed:
                raise ConfigError(f"{where}: {key} '{value}' is not one of {', '.join(allowed)}.")
        warmup = p.get("warmup", strategy.get("warmup", 0.0))
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not 0 <= warmup < 1:
            raise ConfigError(f"{where}: warmup must be a fraction of the phase, >= 0 and < 1 (e.g. 0.1): {warmup}.")
        decay = p.get("layer_decay", strategy.get("layer_decay", 1.0))
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ConfigError(f"{where}: layer_decay must be > 0 and <= 1 (1 = none, e.g. 0.8): {decay}.")


def build_phases(strategy: dict, groups: list[str], weight_decay: float) -> list[Phase]:
    """Resolve a strategy's phase list against a model's groups (head last)."""
    check_strategy(strategy)
    phases = []
    for i, p in enumerate(strategy["phases"]):
        trainable = []
        for selector in p["train"]:
            trainable += [g for g in _selector_groups(str(selector), groups) if g not in trainable]
        trainable = [g for g in groups if g in trainable]  # keep input-to-output order
        lr_spec = p["lr"] if isinstance(p["lr"], dict) else {"all": p["lr"]}
        lr, rank = {}, {}
        for selector, value in lr_spec.items():
            for g in _selector_groups(str(selector), groups):
                if g in trainable and _specificity(selector) >= rank.get(g, -1):
                    lr[g], rank[g] = float(value), _specificity(selector)
        missing = [g for g in trainable if g not in lr]
        if missing:
            raise ConfigError(f"strategy '{strategy.get('name')}', phase {i + 1}: no learning rate for {missing}.")
        lr = decayed(lr, groups, float(p.get("layer_decay", strategy.get("layer_decay", 1.0))))
        phases.append(
            Phase(
                name=str(p.get("name", f"phase{i + 1}")),
                epochs=int(p["epochs"]),
                train=trainable,
                lr=lr,
                weight_decay=float(p.get("weight_decay", weight_decay)),
                bn=str(p.get("bn", strategy.get("bn", "frozen"))),
                schedule=str(p.get("schedule", strategy.get("schedule", "cosine"))),
                warmup=float(p.get("warmup", strategy.get("warmup", 0.0))),
            )
        )
    return phases


def decayed(lr: dict[str, float], groups: list[str], decay: float) -> dict[str, float]:
    """Layer-wise learning-rate decay (ULMFiT, BEiT): the top backbone group keeps its rate, each group below it
    gets `decay` times the rate of the one above; the head is left alone. 1 = no decay."""
    backbone = [g for g in groups if g != "head"]
    depth = {g: len(backbone) - 1 - i for i, g in enumerate(backbone)}  # 0 for the top stage
    return {g: rate * decay ** depth[g] if g in depth else rate for g, rate in lr.items()}


def schedule_factor(kind: str, progress: float, warmup: float = 0.0) -> float:
    """Learning-rate multiplier at `progress` in [0, 1) through a phase.

    `warmup` > 0: the rates first rise linearly over that fraction of the phase, then the schedule runs over the
    rest. Adam's first steps move every weight by about the full learning rate whatever its gradient, which
    knocks a converged head and its pretrained features off their optimum; a warm-up keeps those steps small.
    """
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0:
        if progress < warmup:
            return max(progress / warmup, 1e-3)
        progress = (progress - warmup) / (1 - warmup)
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    warm = 0.3  # onecycle: linear warm-up over 30% from 1/25, then cosine down to 1/25e4
    if progress < warm:
        return 1 / 25 + (1 - 1 / 25) * progress / warm
    return 1e-4 / 25 + (1 - 1e-4 / 25) * 0.5 * (1 + math.cos(math.pi * (progress - warm) / (1 - warm)))


def bn_eval_groups(phase: Phase, groups: list[str]) -> list[str]:
    """The groups whose BatchNorm runs in eval mode in this phase.

    frozen = the frozen groups only; eval = everywhere (Keras's advice for fine-tuning: affine weights learn,
    statistics stay the pretrained ones); train = nowhere.
    """
    frozen = [g for g in groups if g not in phase.train]
    return {"frozen": frozen, "eval": list(groups), "train": []}[phase.bn]


# ---------------------------------------------------------------- the callback


class PhaseSchedule(Callback):
    """Applies phases at epoch boundaries and drives each phase's learning-rate schedule per step.

    Freezing modes: `requires_grad` flips gradients off in frozen groups (cheap; one process);
    `zero_lr` keeps gradients flowing and sets frozen groups' lr and weight decay to 0, which keeps
    DDP replicas in step (Lightning #20340). `auto` picks zero_lr when the world size is > 1.
    """

    def __init__(self, phases: list[Phase], freeze_mode: str = "auto"):
        if freeze_mode not in FREEZE_MODES:
            raise ConfigError(f"freeze_mode '{freeze_mode}' is not one of {', '.join(FREEZE_MODES)}.")
        self.phases = phases
        self.freeze_mode = freeze_mode
        self.starts = [sum(p.epochs for p in phases[:i]) for i in range(len(phases))]
        self.total_epochs = sum(p.epochs for p in phases)
        self.current: int | None = None  # index of the phase applied to the model now
        self.restored: int | None = None  # phase index in the checkpoint we resumed from (None: fresh run)
        # What the model looked like at each epoch's first step: trainable flags, lrs (metrics.json, resume checks)
        self.history: list[dict] = []

    # ------------------------------------------------------------ lookups

    def phase_index(self, epoch: int) -> int:
        for i in reversed(range(len(self.phases))):
            if epoch >= self.starts[i]:
                return i
        return 0

    def mode(self, trainer: L.Trainer) -> str:
        if self.freeze_mode != "auto":
            return self.freeze_mode
        return "zero_lr" if trainer.world_size > 1 else "requires_grad"

    # ------------------------------------------------------------ hooks

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.mode(trainer) == "zero_lr":
            why = f"world size {trainer.world_size} > 1" if self.freeze_mode == "auto" else "freeze_mode=zero_lr"
            log.info(
                f"{why}: freezing by zero learning rate and zero weight decay; gradients still flow through "
                "frozen groups so that DDP replicas stay in step"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._ensure_phase(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        self._ensure_phase(trainer, pl_module)  # Lightning skips on_train_epoch_start when resuming mid-epoch
        self._set_lrs(trainer, pl_module, batch_idx)
        if not self.history or self.history[-1]["epoch"] != trainer.current_epoch:
            self.history.append(self._snapshot(trainer, pl_module))

    def _ensure_phase(self, trainer: L.Trainer, pl_module) -> None:
        index = self.phase_index(trainer.current_epoch)
        if index != self.current:
            # A phase is entered at its first epoch, unless the checkpoint we resumed from was saved inside
            # that phase (an interrupt mid-epoch): then its optimizer state is already the phase's own.
            entering = trainer.current_epoch == self.starts[index] and self.restored != index
            self.apply(trainer, pl_module, index, entering=entering)

    def _snapshot(self, trainer: L.Trainer, pl_module) -> dict:
        groups = trainer.optimizers[0].param_groups
        return {
            "epoch": trainer.current_epoch,
            "phase": self.current,
            "trainable": {g: all(p.requires_grad for p in ps) for g, ps in pl_module.groups.items()},
            "lr": {group["name"]: group["lr"] for group in groups},
            "weight_decay": {group["name"]: group["weight_decay"] for group in groups if group.get("decay", 1.0)},
        }

    def _set_lrs(self, trainer: L.Trainer, pl_module, batch_idx: int) -> None:
        index = self.current
        phase = self.phases[index]
        per_epoch = max(1, int(trainer.num_training_batches))
        progress = (trainer.current_epoch - self.starts[index] + batch_idx / per_epoch) / phase.epochs
        factor = schedule_factor(phase.schedule, progress, phase.warmup)
        values = {}
        for group in trainer.optimizers[0].param_groups:
            base = phase.lr.get(group["name"], 0.0)
            group["lr"] = base * factor
            values[f"lr/{group['name']}"] = group["lr"]
        values["phase"] = float(index)
        # Straight to the logger every log_every_n_steps, from step 0 on, as Lightning's LearningRateMonitor
        # does: self.log costs ~0.5 ms a value, which is most of a step on cached features.
        if trainer.logger is not None and trainer.global_step % trainer.log_every_n_steps == 0:
            trainer.logger.log_metrics(values, step=trainer.global_step)

    def apply(self, trainer: L.Trainer, pl_module, index: int, entering: bool) -> None:
        """Make phase `index` the model's state: trainable flags, lrs, weight decay, BN modes.

        `entering` is true at a phase's first epoch (also when resuming exactly there): groups that were
        frozen in the previous phase start with fresh optimizer state, as they would in a single run.
        """
        phase = self.phases[index]
        mode = self.mode(trainer)
        optimizer = trainer.optimizers[0]
        previous = set(self.phases[index - 1].train) if index > 0 else set()
        for group in optimizer.param_groups:
            trains = group["name"] in phase.train
            for p in group["params"]:
                p.requires_grad_(trains or mode == "zero_lr")
                if entering and index > 0 and trains and group["name"] not in previous:
                    optimizer.state.pop(p, None)
            group["lr"] = phase.lr.get(group["name"], 0.0)
            group["weight_decay"] = phase.weight_decay * group.get("decay", 1.0) if trains else 0.0
        pl_module.set_frozen_bn(bn_eval_groups(phase, pl_module.group_names))
        self.current = index
        pl_module.audit_groups(optimizer, phase, index, mode)

    # ------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict:
        return {"phase_index": self.current, "phases": [p.as_dict() for p in self.phases], "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        saved = [p["name"] for p in state.get("phases", [])]
        mine = [p.name for p in self.phases]
        if saved and saved != mine:
            raise ConfigError(
                f"the checkpoint was trained with phases {saved}, this run has {mine}. Resume with the "
                "same strategy, or start a new run."
            )
        self.restored = state.get("phase_index")
        self.history = list(state.get("history", []))
