"""Phases: selector resolution, learning rates per group, and what the callback does to the model each epoch."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tlexp.config.errors import ConfigError
from tlexp.model.phases import build_phases, schedule_factor
from tlexp.train import train

from .conftest import short_phases

GROUPS = ["stem", "stage1", "stage2", "stage3", "stage4", "head"]


def test_gradual_resolves_to_head_then_last_stage_then_all():
    strategy = {
        "name": "gradual",
        "phases": [
            {"name": "head", "epochs": 1, "train": ["head"], "lr": 1e-3},
            {"name": "last", "epochs": 1, "train": ["head", "last"], "lr": 1e-4},
            {"name": "all", "epochs": 1, "train": ["all"], "lr": 1e-5},
        ],
    }
    head, last, everything = build_phases(strategy, GROUPS, weight_decay=0.01)
    assert head.train == ["head"] and head.lr == {"head": 1e-3}
    assert last.train == ["stage4", "head"] and set(last.lr.values()) == {1e-4}
    assert everything.train == GROUPS and set(everything.lr.values()) == {1e-5}
    assert head.weight_decay == 0.01 and head.bn == "frozen" and head.schedule == "cosine"


def test_finetune_gives_pretrained_groups_a_10x_lower_lr():
    strategy = {"name": "ft", "phases": [{"epochs": 3, "train": ["all"], "lr": {"head": 1e-3, "backbone": 1e-4}}]}
    (phase,) = build_phases(strategy, GROUPS, 0.0)
    assert phase.lr["head"] == 1e-3
    assert all(phase.lr[g] == 1e-4 for g in GROUPS[:-1])


def test_more_specific_lr_selector_wins_whatever_the_order():
    strategy = {"name": "s", "phases": [{"epochs": 1, "train": ["all"], "lr": {"stage4": 5e-4, "all": 1e-5}}]}
    (phase,) = build_phases(strategy, GROUPS, 0.0)
    assert phase.lr["stage4"] == 5e-4 and phase.lr["stem"] == 1e-5


def test_last_n_selects_the_last_n_stages():
    strategy = {"name": "s", "phases": [{"epochs": 1, "train": ["last:2", "head"], "lr": 1e-3}]}
    (phase,) = build_phases(strategy, GROUPS, 0.0)
    assert phase.train == ["stage3", "stage4", "head"]


@pytest.mark.parametrize(
    ("phase", "message"),
    [
        ({"epochs": 0, "train": ["head"], "lr": 1e-3}, "epochs must be a whole number >= 1"),
        ({"epochs": 2, "train": ["head"], "lr": 0.0}, "learning rate must be a number > 0"),
        ({"epochs": 2, "train": ["head"], "lr": -1e-3}, "learning rate must be a number > 0"),
        ({"epochs": 2, "train": ["stage9"], "lr": 1e-3}, "matches no parameter group"),
        ({"epochs": 2, "train": ["last:5"], "lr": 1e-3}, "this backbone has 4 stages"),
        ({"epochs": 2, "train": ["head"], "lr": 1e-3, "schedule": "wavy"}, "schedule 'wavy' is not one of"),
        ({"epochs": 2, "train": [], "lr": 1e-3}, "`train` must list the groups"),
    ],
)
def test_bad_phase_is_a_clear_config_error(phase, message):
    with pytest.raises(ConfigError, match=message):
        build_phases({"name": "bad", "phases": [phase]}, GROUPS, 0.0)


def test_empty_phase_list_is_an_error():
    with pytest.raises(ConfigError, match="has no phases"):
        build_phases({"name": "none", "phases": []}, GROUPS, 0.0)


def test_schedules_start_at_full_lr_and_decay():
    assert schedule_factor("constant", 0.7) == 1.0
    assert schedule_factor("cosine", 0.0) == 1.0
    assert schedule_factor("cosine", 0.5) == pytest.approx(0.5)
    assert schedule_factor("cosine", 1.0) == pytest.approx(0.0)
    assert schedule_factor("onecycle", 0.0) == pytest.approx(1 / 25)
    assert schedule_factor("onecycle", 0.3) == pytest.approx(1.0)
    assert schedule_factor("onecycle", 1.0) < 1e-4
    # warm-up: linear to the peak over the first 10%, then the schedule over the rest
    assert schedule_factor("cosine", 0.05, warmup=0.1) == pytest.approx(0.5)
    assert schedule_factor("cosine", 0.1, warmup=0.1) == pytest.approx(1.0)
    assert schedule_factor("cosine", 0.55, warmup=0.1) == pytest.approx(0.5)
    assert schedule_factor("cosine", 0.0, warmup=0.1) == pytest.approx(1e-3)


def group_lrs(optimizer) -> dict[str, float]:
    """Each block's learning rate; a block has two optimizer groups of its name (weight decay and none), and both
    must carry the same rate, so a mismatch between them cannot hide behind a dict keyed by name."""
    by_name: dict[str, list[float]] = {}
    for group in optimizer.param_groups:
        by_name.setdefault(group["name"], []).append(group["lr"])
    for name, lrs in by_name.items():
        assert len(set(lrs)) == 1, f"{name}'s decay and no-decay groups differ: {lrs}"
    return {name: lrs[0] for name, lrs in by_name.items()}


class Recorder(Callback):
    """Records, at the first batch of every epoch, what trains, each group's lr and BN modes."""

    def __init__(self):
        self.epochs = []
        self.stem_bn_stats = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx != 0:
            return
        optimizer = trainer.optimizers[0]
        self.epochs.append(
            {
                "trainable": {g: all(p.requires_grad for p in ps) for g, ps in pl_module.groups.items()},
                "lr": group_lrs(optimizer),
                "bn_training": {g: [bn.training for bn in bns] for g, bns in pl_module._bn_by_group.items()},
            }
        )

    def on_train_epoch_end(self, trainer, pl_module):
        bn = pl_module._bn_by_group["stem"][0]
        self.stem_bn_stats.append(bn.running_mean.clone())


def test_gradual_run_applies_each_phase(tiny_cfg):
    recorder = Recorder()
    cfg = tiny_cfg("strategy=gradual", short_phases("gradual"), "strategy.bn=frozen")
    before = None

    class StemStats(Callback):
        def on_train_start(self, trainer, pl_module):
            nonlocal before
            before = pl_module._bn_by_group["stem"][0].running_mean.clone()

    metrics = train(cfg, callbacks=[recorder, StemStats()])
    epochs = recorder.epochs
    assert len(epochs) == 6
    stages = ["stem", "stage1", "stage2", "stage3", "stage4"]
    # phase 1 (epochs 0-1): head only, lr 1e-3 at the first step, frozen BN in eval mode
    for e in epochs[0:2]:
        assert e["trainable"]["head"] and not any(e["trainable"][g] for g in stages)
        assert all(e["lr"][g] == 0.0 for g in stages)
        assert not any(any(flags) for g, flags in e["bn_training"].items() if g in stages)
    assert epochs[0]["lr"]["head"] == pytest.approx(1e-3)
    # phase 2 (epochs 2-3): + the last stage at 1e-4, its BN trains, earlier BN stays frozen
    for e in epochs[2:4]:
        assert e["trainable"]["stage4"] and e["trainable"]["head"]
        assert not any(e["trainable"][g] for g in stages[:-1])
        assert all(e["bn_training"]["stage4"]) and not any(e["bn_training"]["stem"])
    assert epochs[2]["lr"]["stage4"] == pytest.approx(1e-4) and epochs[2]["lr"]["head"] == pytest.approx(1e-4)
    assert epochs[2]["lr"]["stem"] == 0.0
    # phase 3 (epochs 4-5): everything at 1e-5
    for e in epochs[4:6]:
        assert all(e["trainable"].values())
        assert all(all(flags) for flags in e["bn_training"].values())
    assert epochs[4]["lr"]["stem"] == pytest.approx(1e-5)
    # the schedule restarts each phase: the second epoch of a phase runs at a lower lr than its first
    assert epochs[1]["lr"]["head"] < epochs[0]["lr"]["head"]
    assert epochs[3]["lr"]["stage4"] < epochs[2]["lr"]["stage4"]
    # stem BN running stats untouched while the stem was frozen (4 epochs), updated once it trains
    assert torch.equal(recorder.stem_bn_stats[3], before)
    assert not torch.equal(recorder.stem_bn_stats[5], before)
    assert [p["name"] for p in metrics["phases"]] == ["head", "last_block", "all"]


class BatchNormStats(Callback):
    """Every BatchNorm's running_mean per group, at the start and at the end of training."""

    def __init__(self):
        self.start, self.end = {}, {}

    @staticmethod
    def _means(pl_module) -> dict[str, list[torch.Tensor]]:
        return {g: [bn.running_mean.clone() for bn in bns] for g, bns in pl_module._bn_by_group.items() if bns}

    def on_train_start(self, trainer, pl_module):
        self.start = self._means(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.end = self._means(pl_module)

    def moved(self, group: str) -> bool:
        return any(not torch.equal(a, b) for a, b in zip(self.start[group], self.end[group], strict=True))


def test_bn_train_lets_frozen_groups_update_their_statistics(tiny_cfg):
    recorder, stats = Recorder(), BatchNormStats()
    cfg = tiny_cfg("strategy=feature_extraction", "strategy.bn=train", "strategy.phases.0.epochs=1")
    train(cfg, callbacks=[recorder, stats])
    first = recorder.epochs[0]
    assert not any(first["trainable"][g] for g in first["trainable"] if g != "head")
    assert all(all(flags) for flags in first["bn_training"].values())
    assert stats.start and all(stats.moved(g) for g in stats.start), "frozen groups' BN statistics did not update"


def test_bn_frozen_keeps_frozen_groups_statistics_and_updates_trainable_ones(tiny_cfg):
    stats = BatchNormStats()
    phases = "strategy.phases=[{name: last, epochs: 1, train: [head, last], lr: 1e-3}]"
    train(tiny_cfg("strategy=gradual", phases, "strategy.bn=frozen"), callbacks=[stats])
    assert set(stats.start) == {"stem", "stage1", "stage2", "stage3", "stage4"}
    assert stats.moved("stage4"), "the trainable stage's BN statistics did not update"
    assert not any(stats.moved(g) for g in ("stem", "stage1", "stage2", "stage3")), "a frozen group's stats moved"


class StepLrs(Callback):
    """Each group's learning rate at every optimizer step, by group name."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append(group_lrs(optimizer))


def test_finetune_trains_pretrained_groups_10x_slower_than_the_head_at_run_time(tiny_cfg):
    cfg = tiny_cfg("strategy=finetune", "strategy.phases.0.epochs=2")
    configured = cfg.strategy.phases[0].lr
    ratio = configured.head / configured.backbone
    assert ratio == pytest.approx(10)
    lrs = StepLrs()
    train(cfg, callbacks=[lrs])
    assert len(lrs.steps) > 4 and lrs.steps[0]["head"] == pytest.approx(configured.head)
    assert lrs.steps[1]["head"] < lrs.steps[0]["head"]  # the schedule moves every batch, not once an epoch
    for step in lrs.steps:
        backbone = [lr for name, lr in step.items() if name != "head"]
        assert step["head"] > 0 and backbone == pytest.approx([step["head"] / ratio] * len(backbone)), step


def test_a_newly_unfrozen_group_starts_with_fresh_optimizer_state(tiny_cfg):
    # zero_lr: frozen groups get gradients, so AdamW builds state for them that the next phase must not inherit.
    cfg = tiny_cfg("strategy=gradual", short_phases("gradual", epochs=1), "freeze_mode=zero_lr")
    seen = {}

    class OptimizerState(Callback):
        def _states(self, trainer, pl_module, group):
            return [trainer.optimizers[0].state.get(p, {}) for p in pl_module.groups[group]]

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                seen["stage4 after phase 1"] = [s.get("step", 0) for s in self._states(trainer, pl_module, "stage4")]

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 0:  # phase 2's first step, before its optimizer step
                seen["stage4"] = self._states(trainer, pl_module, "stage4")
                seen["head"] = self._states(trainer, pl_module, "head")

    train(cfg, callbacks=[OptimizerState()])
    assert all(step > 0 for step in seen["stage4 after phase 1"])  # there was state to reset
    assert all(state == {} for state in seen["stage4"]), "stage4 kept its phase-1 optimizer state"
    assert all(state.get("step", 0) > 0 for state in seen["head"])  # a group that kept training keeps its state


def test_bn_eval_keeps_every_batchnorm_in_eval_mode_while_it_trains(tiny_cfg):
    recorder = Recorder()
    cfg = tiny_cfg("strategy=finetune", "strategy.bn=eval", "strategy.phases.0.epochs=2")
    before = None

    class StemStats(Callback):
        def on_train_start(self, trainer, pl_module):
            nonlocal before
            before = pl_module._bn_by_group["stem"][0].running_mean.clone()

    train(cfg, callbacks=[recorder, StemStats()])
    for epoch in recorder.epochs:
        assert all(epoch["trainable"].values())
        assert not any(any(flags) for flags in epoch["bn_training"].values())
    assert torch.equal(recorder.stem_bn_stats[-1], before)


def test_zero_lr_mode_keeps_gradients_but_freezes_by_learning_rate(tiny_cfg):
    recorder = Recorder()
    cfg = tiny_cfg("strategy=gradual", short_phases("gradual"), "freeze_mode=zero_lr")
    snapshots = []

    class Snapshot(Callback):
        def on_train_start(self, trainer, pl_module):
            snapshots.append({n: p.detach().clone() for n, p in pl_module.backbone.named_parameters()})

        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append({n: p.detach().clone() for n, p in pl_module.backbone.named_parameters()})

    train(cfg, callbacks=[recorder, Snapshot()])
    start, after_phase1 = snapshots[0], snapshots[2]
    assert all(torch.equal(start[n], after_phase1[n]) for n in start), "frozen backbone moved in phase 1"
    assert any(not torch.equal(start[n], snapshots[-1][n]) for n in start), "backbone never trained"
    first = recorder.epochs[0]
    assert all(first["trainable"].values())  # gradients flow everywhere (DDP-safe)
    assert first["lr"]["stem"] == 0.0 and first["lr"]["head"] > 0
    assert not any(first["bn_training"]["stem"])


def test_warmup_raises_the_rates_over_its_share_of_the_phase_at_run_time(tiny_cfg):
    metrics = train(tiny_cfg("strategy=lp_ft", "strategy.phases.0.epochs=2", "strategy.warmup=0.5"))
    first, second = metrics["phase_history"][0]["lr"], metrics["phase_history"][1]["lr"]
    assert first["head"] == pytest.approx(1e-6) and first["stage1"] == pytest.approx(3e-7)  # 1e-3 of the peak
    assert second["head"] == pytest.approx(1e-3) and second["stage1"] == pytest.approx(3e-4)  # the peak
    assert metrics["phases"][0]["warmup"] == 0.5


def test_layer_decay_lowers_each_backbone_group_below_the_top_at_run_time(tiny_cfg):
    lrs = StepLrs()
    metrics = train(tiny_cfg("strategy=finetune", "strategy.phases.0.epochs=1", "strategy.layer_decay=0.5"), [lrs])
    first = lrs.steps[0]
    backbone = [g for g in first if g != "head"]  # stem, stage1 .. stageN, input to output
    assert first["head"] == pytest.approx(1e-3) and first[backbone[-1]] == pytest.approx(1e-4)  # top: as set
    for lower, upper in zip(backbone[:-1], backbone[1:], strict=True):
        assert first[lower] == pytest.approx(0.5 * first[upper])
    assert metrics["phases"][0]["lr"]["stem"] == pytest.approx(1e-4 * 0.5 ** (len(backbone) - 1))


def test_layer_decay_outside_0_1_is_a_clear_error(tiny_cfg):
    with pytest.raises(ConfigError, match="layer_decay must be > 0 and <= 1"):
        train(tiny_cfg("strategy=finetune", "strategy.phases.0.epochs=1", "+strategy.phases.0.layer_decay=1.5"))
