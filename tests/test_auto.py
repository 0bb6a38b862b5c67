"""strategy=auto from evidence: the judgement on made-up evidence, the probe/kNN evidence, and real pilots."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tlexp.train as train_module
from tlexp import auto
from tlexp.auto import Standing, better_half, choose, explain, judge, paired_noise, still_open, stop_rule
from tlexp.auto.pilots import measure
from tlexp.config.errors import ConfigError
from tlexp.data import TransferDataModule
from tlexp.features.evidence import feature_evidence, knn_predict, stratified_folds
from tlexp.run.build import check_config
from tlexp.train import train

from .conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[1]


def standing(
    name: str, right: int, n: int = 100, cost: float = 10.0, epochs: int = 1, offset: int = 0, **more
) -> Standing:  # fmt: skip
    """A candidate that gets val images offset .. offset+right-1 (mod n) right; `more`: share, val_loss."""
    correct = torch.zeros(n, dtype=torch.bool)
    correct[(torch.arange(right) + offset) % n] = True
    return Standing(name, correct, epochs, cost / 10, cost, **more)


# ---------------------------------------------------------------- judging made-up evidence


def test_paired_noise_is_the_standard_error_of_the_per_image_difference():
    a, b = standing("a", 60), standing("b", 50, offset=55)  # a right on 0..59, b on 55..99 and 0..4
    diff = torch.zeros(100)
    diff[5:55] = 1.0  # a right, b wrong
    diff[60:100] = -1.0  # b right, a wrong
    assert paired_noise(a, b) == pytest.approx(diff.std().item() / math.sqrt(100))
    assert paired_noise(a, a) == 0.0
    # the same images right: no noise at all between them, whatever the accuracy
    assert paired_noise(standing("x", 70), standing("y", 70)) == 0.0


def test_a_lead_beyond_the_noise_wins_even_when_dearer():
    cheap = standing("feature_extraction", 70, cost=1.0, epochs=0)
    dear = standing("lp_ft", 90, cost=100.0)  # right on a superset of cheap's images: +20 points, noise ~4
    winner, runner_up = choose([cheap, dear])
    assert (winner.strategy, runner_up.strategy) == ("lp_ft", "feature_extraction")
    text = explain(winner, runner_up)
    assert "difference +20 [" in text and "points (95% interval, paired" in text and "more than 1 paired s.e." in text
    assert "lp_ft (its pilot after 1 backbone epoch(s)) val 0.90 [0.83, 0.94] on 100 images" in text


def test_a_tie_within_the_noise_goes_to_the_cheaper():
    cheap = standing("feature_extraction", 80, cost=1.0, epochs=0)
    dear = standing("lp_ft", 82, cost=100.0, offset=5)  # +2 points, but they disagree on 13 images
    assert 0.02 < paired_noise(cheap, dear)
    winner, runner_up = choose([cheap, dear])
    assert (winner.strategy, runner_up.strategy) == ("feature_extraction", "lp_ft")
    assert "within the noise" in explain(winner, runner_up) and "about 100x cheaper" in explain(winner, runner_up)


def test_the_same_gap_is_a_win_when_the_candidates_agree_elsewhere():
    """Noise is paired: +2 points on 1000 images, where the cheaper one is right on a subset, is a real lead."""
    dear = standing("lp_ft", 820, n=1000, cost=100.0)  # right on images 0..819
    cheap = standing("feature_extraction", 800, n=1000, cost=1.0, epochs=0)  # right on 0..799
    assert choose([cheap, dear])[0].strategy == "lp_ft"


def test_equal_counts_are_an_exact_tie_whatever_float_they_came_from():
    """Two candidates right on the same 138 of 139 images tie, and the cheaper one wins."""
    probe = standing("feature_extraction", 138, n=139, cost=1.0, epochs=0)
    pilot = standing("gradual", 138, n=139, cost=100.0)
    winner, runner_up = choose([pilot, probe])
    assert (winner.strategy, runner_up.strategy) == ("feature_extraction", "gradual")
    assert "more than" not in explain(winner, runner_up)
    assert auto.tie(winner, runner_up) == (
        "feature_extraction and gradual tie on val accuracy (138 of 139 images each): the tie goes to the cheaper, "
        "feature_extraction"
    )


@pytest.mark.parametrize("n", [139, 228, 500, 10_000])
def test_one_image_more_is_never_beyond_the_noise_and_two_are(n):
    """A lead of one image equals its paired s.e. exactly: float rounding used to decide it (textures, 139 val)."""
    probe = standing("feature_extraction", n - 1, n=n, cost=1.0, epochs=0)
    one_more = dataclasses.replace(standing("finetune", n, n=n, cost=100.0), share=0.2)
    assert not auto.leads(one_more, probe) and choose([one_more, probe])[0] is probe
    assert "within the noise" in explain(probe, one_more)
    assert still_open([probe, one_more], cap=0.7) is None  # no training can make it lead: the stop rule's case
    two_more = standing("finetune", n, n=n, cost=100.0)
    assert auto.leads(two_more, standing("feature_extraction", n - 2, n=n, cost=1.0, epochs=0))


def test_a_pilot_within_the_noise_of_the_probe_trains_on_until_it_leads_or_reaches_the_cap():
    probe = standing("feature_extraction", 83, cost=1.0, epochs=0)
    dipping = dataclasses.replace(standing("lp_ft", 77, cost=100.0), share=0.2)
    assert still_open([probe, dipping], cap=0.5) is dipping  # behind: fine-tuning often dips first
    level = dataclasses.replace(standing("lp_ft", 84, cost=100.0, offset=3), share=0.2)
    assert still_open([probe, level], cap=0.5) is level  # ahead, but within the noise
    ahead = dataclasses.replace(standing("lp_ft", 95, cost=100.0), share=0.2)
    assert still_open([probe, ahead], cap=0.5) is None  # leads beyond the noise: decided
    assert still_open([probe, dataclasses.replace(dipping, share=0.5)], cap=0.5) is None  # at the cap
    perfect = standing("feature_extraction", 100, cost=1.0, epochs=0)
    assert still_open([perfect, dipping], cap=0.5) is None  # nothing can lead a probe that is right on all of val
    two_pilots = [dipping, dataclasses.replace(standing("finetune", 70), share=0.2)]
    assert still_open(two_pilots, cap=0.5) is None  # equals: the cheaper wins a tie, no more training


def test_better_half_keeps_the_top_half_and_breaks_ties_by_cost():
    found = [standing("a", 50), standing("b", 70, cost=30), standing("c", 70, cost=20), standing("d", 40)]
    assert [s.strategy for s in better_half(found)] == ["c", "b"]
    assert [s.strategy for s in better_half(found[:3])] == ["c", "b"]  # ceil(3 / 2)
    assert [s.strategy for s in better_half(found[:1])] == ["a"]


# ---------------------------------------------------------------- the stop rule, ties, cost and the text


class FakePilot:
    """What `pilots.measure` sees of a pilot, without training: its standing at each advance, its eval speed."""

    def __init__(self, *rungs: Standing, seconds_per_image: float = 0.01):
        self.rungs, self.per_image, self.advanced = rungs, seconds_per_image, []

    def advance(self, fraction: float) -> Standing:
        self.advanced.append(fraction)
        return dataclasses.replace(self.rungs[min(len(self.advanced), len(self.rungs)) - 1], share=fraction)

    def seconds_per_val_image(self) -> float:
        return self.per_image


def cv(acc: float, folds: int = 5) -> SimpleNamespace:
    return SimpleNamespace(cv_acc=acc, folds=folds)


def decided(alive, rungs=None, stopped=None) -> auto.Decision:
    features = {"val_right": alive[0].right, "val_images": len(alive[0].correct), "cv_accs": [0.9, 0.95, 0.92],
                "knn_accs": [0.9, 0.9, 0.95], "folds": 3, "k": 10, "seconds": 0.1}  # fmt: skip
    return judge(alive, train_images=160, num_classes=2, features=features, rungs=rungs, stopped=stopped)


@pytest.mark.parametrize("n", [26, 139])
def test_a_probe_that_misses_one_val_image_stops_auto_before_any_pilot(n):
    """The user's report: 25 of 26 (and 138 of 139) right; no pilot can lead that beyond the noise on this val set."""
    probe = standing("feature_extraction", n - 1, n=n, cost=1.0, epochs=0, val_loss=0.2)
    pilot = FakePilot(standing("finetune", n, n=n, cost=100.0))
    alive, rungs, stopped = measure({"finetune": pilot}, {"feature_extraction": probe}, 0.1, 1.0, cv(0.9), n + 160)
    assert pilot.advanced == [] and rungs is None  # the pilots' whole cost saved
    assert stopped == f"the probe misses 1 of {n} val images: no pilot can lead it beyond the noise on this val set"
    decision = decided(alive, rungs, stopped)
    assert (decision.strategy, decision.runner_up, decision.stopped) == ("feature_extraction", None, stopped)
    assert f"{stopped}, so no pilot trains: feature_extraction (the linear probe) val " in decision.reason
    assert decision.reason.endswith("images: feature_extraction, the cheaper.")
    assert not auto.can_be_led(1) and auto.can_be_led(2)  # the best challenger: W = errors, L = 0


def test_a_probe_that_misses_five_of_26_lets_the_pilot_train_until_it_leads():
    probe = standing("feature_extraction", 21, n=26, cost=1.0, epochs=0)  # wrong on images 21..25
    climbing = [standing("finetune", 22, n=26, cost=100.0, epochs=3), standing("finetune", 26, n=26, cost=100.0)]
    pilot = FakePilot(*climbing)  # W=1 L=0 first (within the noise), then W=5 L=0 (a lead)
    assert stop_rule(probe, 21 / 26) is None
    alive, rungs, stopped = measure({"finetune": pilot}, {"feature_extraction": probe}, 0.1, 1.0, cv(0.8), 186)
    assert stopped is None and pilot.advanced == [0.1, 0.2] and len(rungs) == 2
    decision = decided(alive, rungs)
    assert decision.strategy == "finetune" and decision.stopped is None and "more than 1 paired s.e." in decision.reason


def test_on_a_small_val_set_the_cross_validated_probe_is_a_second_count_of_its_errors():
    probe = standing("feature_extraction", 23, n=26, cost=1.0, epochs=0)  # 3 of 26 wrong: a lead is possible
    assert stop_rule(probe) is None and stop_rule(probe, cv_acc=0.90) is None  # CV expects 2.6 -> 3 errors
    said = stop_rule(probe, cv_acc=0.97, folds=5)  # CV expects 0.78 -> 1 error on 26 images: the smaller count
    assert said.startswith("the probe misses 3 of 26 val images, but at its cross-validated accuracy (0.970, 5 folds")
    assert "about 1 on a val set this size" in said
    large = standing("feature_extraction", 297, n=300, cost=1.0, epochs=0)
    assert auto.SMALL_VAL <= 300 and stop_rule(large, cv_acc=0.999) is None  # a large val set counts for itself


def test_an_exact_tie_on_val_accuracy_goes_to_the_lower_val_loss_and_the_record_says_so():
    dear = standing("lp_ft", 20, n=26, cost=50.0, epochs=3, val_loss=0.30)
    low = standing("finetune", 20, n=26, cost=50.0, epochs=3, offset=2, val_loss=0.20)  # same count, other images
    assert choose([dear, low]) == (low, dear) and choose([low, dear]) == (low, dear)
    decision = decided([dear, low])
    assert decision.strategy == "finetune"
    assert decision.tie == (
        "finetune and lp_ft tie on val accuracy (20 of 26 images each): the lower val log-loss (0.200 vs 0.300) "
        "breaks it: finetune"
    )
    assert decision.tie in decision.reason
    # successive halving's cut too: the lower val loss goes on, though dearer
    assert better_half([dataclasses.replace(dear, full_seconds=10.0), dataclasses.replace(low, full_seconds=90.0)]) == [
        dataclasses.replace(low, full_seconds=90.0)
    ]
    assert decided([standing("lp_ft", 22, n=26, val_loss=0.3), low]).tie is None  # no tie, nothing said


def test_the_cost_is_one_definition_in_train_and_advise(monkeypatch, capsys):
    """The probe measured on a cold feature cache (advise first) and a warm one (train after it): the same price."""
    import re

    from tlexp import advise as advise_module

    def through_the_pilots(probe_seconds: float) -> auto.Decision:
        probe = standing("feature_extraction", 24, n=26, cost=probe_seconds, epochs=0, val_loss=0.3)
        pilot = FakePilot(standing("finetune", 25, n=26, cost=66.0, epochs=3, val_loss=0.2), seconds_per_image=0.01)
        alive, rungs, stopped = measure({"finetune": pilot}, {"feature_extraction": probe}, 0.1, 0.1, cv(0.92), 186)
        return decided(alive, rungs, stopped)

    cold, warm = through_the_pilots(3.0), through_the_pilots(0.05)  # before: 22x and 1320x
    assert cold.reason == warm.reason and "feature_extraction, about 35x cheaper to run in full." in warm.reason
    monkeypatch.setattr(advise_module, "select", lambda cfg: SimpleNamespace(decision=cold))
    advise_module.advise(compose_cfg("dataset=synthetic", "strategy=auto"))
    printed = capsys.readouterr().out
    assert f"advice: {warm.reason}" in printed  # advise says what train records
    assert re.search(r"feature_extraction 0\.92 \[0\.\d+, 0\.\d+\] \(0 ep, 0 s; full run ~2 s\)", printed)
    assert "CV probe 0.92 [" in printed and "on 3 folds of train + val" in printed
    assert "probe val 0.92 [0.76, 0.98] on 26 images" in printed


def test_a_pilots_cost_is_its_median_epoch_times_its_schedule():
    from tlexp.auto.pilots import EpochTimes, Pilot

    pilot = object.__new__(Pilot)  # its arithmetic alone: no run
    pilot.free, pilot.total, pilot.times, pilot.best = 2, 30, EpochTimes(), SimpleNamespace(correct=torch.ones(26))
    pilot.times.train = {0: 0.5, 1: 0.7, 2: 9.0, 3: 2.0, 4: 2.2}  # 2 head-only epochs, then a slow first one
    pilot.times.val = {0: 0.01, 1: 0.01, 2: 0.52, 3: 0.26, 4: 0.30}
    assert pilot.full_seconds() == pytest.approx(0.6 * 2 + 2.2 * 30)
    assert pilot.seconds_per_val_image() == pytest.approx(0.30 / 26)  # image passes only, not cached features
    assert auto.epochs_seconds([], 30) == 0.0 and auto.priced(standing("p", 5), None, 100).full_seconds == 10.0


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (standing("feature_extraction", 26, n=26, cost=1, epochs=0), standing("finetune", 26, n=26, cost=70)),
        (standing("feature_extraction", 25, n=26, cost=1, epochs=0), standing("finetune", 26, n=26, cost=70)),
        (standing("feature_extraction", 100, cost=1, epochs=0), standing("finetune", 100, cost=70)),
        (standing("feature_extraction", 70, cost=1, epochs=0), standing("finetune", 90, cost=70)),
        (standing("lp_ft", 20, n=26, val_loss=0.3), standing("finetune", 20, n=26, offset=2, val_loss=0.2)),
    ],
)
def test_the_noise_is_never_said_as_plus_minus_zero(a, b):
    """Right on the same images: the paired difference has no spread; the text gives the difference's interval."""
    for stopped in (None, stop_rule(a)):
        decision = decided([a, b], stopped=stopped)
        assert "+/-" not in decision.reason and "0.0 points" not in decision.reason, decision.reason
        for row in decision.evidence:
            assert {"low", "high", "n"} <= row["val"].keys() and row["val"]["method"] == "wilson"
            assert {"low", "high"} <= row["difference"].keys()
    same = explain(*choose([a, b]))
    if a.right == b.right == len(a.correct):
        assert "difference +0 [+0, +0] points" in same


def test_the_size_rule_says_it_measured_nothing():
    decision = auto.decide(1000, 10)
    assert decision.strategy == "gradual" and decision.method == "size rule"
    assert "strategy.budget=0, nothing measured" in decision.reason


def test_an_unknown_candidate_is_named():
    with pytest.raises(ConfigError, match="'banana' is not a strategy; choose from .*lp_ft"):
        auto.candidates({"name": "auto", "budget": 0.1, "candidates": ["lp_ft", "banana"]})


# ---------------------------------------------------------------- evidence from features


def test_folds_are_stratified():
    labels = torch.tensor([0] * 10 + [1] * 5)
    fold = stratified_folds(labels, 5, seed=1)
    for f in range(5):
        assert (labels[fold == f] == 0).sum() == 2 and (labels[fold == f] == 1).sum() == 1


def test_knn_votes_by_cosine_similarity():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    train_y = torch.tensor([0, 0, 1])
    assert knn_predict(train_x, train_y, torch.tensor([[0.1, 1.0], [5.0, 0.2]]), 2, k=1).tolist() == [1, 0]


def test_feature_evidence_separates_signal_from_noise():
    torch.manual_seed(0)
    y = torch.arange(300) % 3
    signal = torch.randn(300, 16) * 0.3 + torch.nn.functional.one_hot(y, 16).float() * 3
    train, val = (signal[:200], y[:200]), (signal[200:], y[200:])
    good = feature_evidence(train, val, 3)
    assert good.val_acc == 1.0 and good.cv_acc == 1.0 and good.knn_acc == 1.0 and good.folds == 5
    assert good.val_correct.shape == (100,) and bool(good.val_correct.all())
    noise = torch.randn(300, 16)
    bad = feature_evidence((noise[:200], y[:200]), (noise[200:], y[200:]), 3)
    assert bad.cv_acc < 0.6 and bad.knn_acc < 0.6 and bad.cv_std > 0


# ---------------------------------------------------------------- real pilots


def test_a_pilot_is_judged_by_its_best_val_epoch_so_far():
    from tlexp.auto.pilots import BestVal

    best = BestVal()
    for right, loss in ((7, 0.5), (9, 0.4), (8, 0.3), (9, 0.2)):  # the second epoch is the best (ties: the earliest)
        verdicts = torch.arange(10) < right
        trainer = SimpleNamespace(sanity_checking=False, callback_metrics={"val/loss": torch.tensor(loss)})
        best.on_validation_epoch_end(trainer, SimpleNamespace(val_correct=lambda v=verdicts: v))
    assert int(best.correct.sum()) == 9 and best.loss == pytest.approx(0.4)  # the loss of the epoch it kept


class EpochCounter(Callback):
    """Epochs trained, and at each fit's start its epoch and how many parameters carry optimizer state."""

    def __init__(self):
        self.started = 0
        self.fits: list[tuple[int, int]] = []

    def on_train_start(self, trainer, pl_module):
        self.fits.append((trainer.current_epoch, len(trainer.optimizers[0].state)))

    def on_train_epoch_start(self, trainer, pl_module):
        self.started += 1


def test_auto_measures_pilots_and_the_winner_continues_from_its_pilot(tiny_cfg, monkeypatch):
    choosing, test_reads = [False], []
    real_select, real_test = train_module.select, TransferDataModule.test_dataloader

    def watched_select(*args, **kwargs):
        choosing[0] = True
        try:
            return real_select(*args, **kwargs)
        finally:
            choosing[0] = False

    def watched_test(self):
        test_reads.append(choosing[0])
        return real_test(self)

    monkeypatch.setattr(train_module, "select", watched_select)
    monkeypatch.setattr(TransferDataModule, "test_dataloader", watched_test)
    counter = EpochCounter()
    # two fine-tuning candidates: the winner is a pilot, which must continue, not start again
    cfg = tiny_cfg("strategy=auto", "strategy.candidates=[lp_ft,finetune]", "epoch_scale=0.4")
    metrics = train(cfg, callbacks=[counter])
    out = Path(cfg.output_dir)
    decision = metrics["auto"]
    assert decision["method"] == "evidence" and decision["strategy"] in ("lp_ft", "finetune")
    assert metrics["strategy"] == decision["strategy"]
    assert decision["runner_up"] == ({"lp_ft", "finetune"} - {decision["strategy"]}).pop()
    assert len(decision["rungs"]) == 1 and {s["strategy"] for s in decision["rungs"][0]} == {"lp_ft", "finetune"}
    assert all(s["epochs"] == 1 for s in decision["rungs"][0])  # budget 0.1 of 5 epochs: 1 (at least one)
    assert decision["features"]["folds"] >= 2 and 0 <= decision["features"]["knn_acc"] <= 1
    assert test_reads and not any(test_reads)  # test is read after choosing, never while
    winner_epochs = metrics["epochs"]
    # the winner's pilot epoch is kept: one epoch for the loser, the winner's full schedule once
    assert counter.started == 1 + winner_epochs
    # two pilots start fresh at epoch 0; the winner goes on at epoch 1 with its pilot's optimizer state
    assert sorted(counter.fits)[:2] == [(0, 0), (0, 0)] and sorted(counter.fits)[2][0] == 1
    assert sorted(counter.fits)[2][1] > 0
    assert [row["epoch"] for row in metrics["history"]] == list(range(winner_epochs))
    assert metrics["fit_seconds"] >= decision["seconds"] > 0 and metrics["resumed"] is False
    assert json.loads((out / "auto.json").read_text())["strategy"] == decision["strategy"]
    assert (out / "metrics.json").is_file() and (out / "pilots" / decision["strategy"] / "checkpoints").is_dir()
    events = EventAccumulator(str(out / "pilots" / decision["strategy"] / "tensorboard"), size_guidance={"tensors": 0})
    assert "strategy/auto/text_summary" in events.Reload().Tags()["tensors"]


def test_a_winner_that_was_not_a_pilot_trains_as_its_plain_run_would(tiny_cfg, monkeypatch):
    def probe_wins(alive):  # whatever the pilots measured: feature_extraction, which has no pilot of its own
        probe = next(s for s in alive if s.strategy == "feature_extraction")
        return probe, next(s for s in alive if s is not probe)

    plain_run = train(tiny_cfg("strategy=feature_extraction", "epoch_scale=0.3"))
    monkeypatch.setattr(auto, "choose", probe_wins)
    monkeypatch.setattr(auto, "stop_rule", lambda *args: None)  # the synthetic probe is perfect: pilots train anyway
    chosen = train(tiny_cfg("strategy=auto", "strategy.candidates=[feature_extraction,finetune]", "epoch_scale=0.3"))
    assert chosen["strategy"] == "feature_extraction" and chosen["auto"]["rungs"][0][1]["epochs"] >= 1
    assert chosen["history"] == plain_run["history"] and chosen["test"] == plain_run["test"]  # same draws


FOUR = "strategy.candidates=[feature_extraction,lp_ft,finetune,gradual]"


def test_successive_halving_over_four_candidates(tiny_cfg, monkeypatch):
    monkeypatch.setattr(auto, "stop_rule", lambda *args: None)  # the synthetic probe is perfect: pilots train anyway
    metrics = train(tiny_cfg("strategy=auto", FOUR, "epoch_scale=0.2"))  # lp_ft 2 epochs, finetune 6, gradual 2+2+2
    rungs = metrics["auto"]["rungs"]
    assert [len(r) for r in rungs][:2] == [4, 2] and all(len(r) == 2 for r in rungs[2:])
    first = {s["strategy"]: s for s in rungs[0]}
    assert first["feature_extraction"]["epochs"] == 0  # judged by the probe
    assert all(s["val_loss"] is not None and s["val"]["method"] == "wilson" for s in first.values())
    # the probe priced as one eval pass over train + val at the pilots' eval speed: below any pilot's full run
    assert first["feature_extraction"]["full_seconds_est"] < min(s["full_seconds_est"] for s in rungs[0][1:])
    kept = sorted(first.values(), key=lambda s: (-s["val_acc"], s["val_loss"], s["full_seconds_est"]))[:2]
    assert {s["strategy"] for s in rungs[1]} == {s["strategy"] for s in kept}
    assert all(s["epochs"] == 2 for s in rungs[1] if s["strategy"] != "feature_extraction")  # doubled
    assert metrics["strategy"] == metrics["auto"]["strategy"] in {s["strategy"] for s in rungs[1]}


def test_auto_trains_no_pilot_where_the_probe_cannot_be_led(tiny_cfg):
    """The synthetic probe gets every val image right: no pilot epoch is paid for, the winner is a plain run."""
    counter = EpochCounter()
    cfg = tiny_cfg("strategy=auto", "strategy.candidates=[feature_extraction,finetune]", "epoch_scale=0.1")
    metrics = train(cfg, callbacks=[counter])
    decision = metrics["auto"]
    assert decision["strategy"] == "feature_extraction" and decision["runner_up"] is None
    assert decision["stopped"].startswith("the probe misses 0 of ") and decision["stopped"] in decision["reason"]
    assert [[s["strategy"] for s in rung] for rung in decision["rungs"]] == [["feature_extraction"]]
    assert counter.started == metrics["epochs"]  # the winner's own epochs, no pilot's
    assert not (Path(cfg.output_dir) / "pilots" / "finetune" / "checkpoints" / "last.ckpt").exists()


def test_budget_zero_is_the_size_rule(tiny_cfg):
    metrics = train(tiny_cfg("strategy=auto", "strategy.budget=0", "epoch_scale=0.1"))
    assert metrics["strategy"] == "feature_extraction"  # 104 training images < 500
    assert metrics["auto"]["method"] == "size rule" and "nothing measured" in metrics["auto"]["reason"]
    assert not (Path(metrics["checkpoint"]).parents[1] / "pilots").exists()


def test_resuming_an_auto_run_points_at_its_winner(tiny_cfg):
    cfg = tiny_cfg("strategy=auto", "strategy.candidates=[lp_ft,finetune]", "epoch_scale=0.2")
    train(cfg)
    out = Path(cfg.output_dir)
    (out / "metrics.json").unlink()  # as if killed while the winner trained on
    winner = json.loads((out / "auto.json").read_text())["strategy"]
    with pytest.raises(ConfigError, match=f"chose {winner}, which trains in .*Resume that run: python -m tlexp.train"):
        train(tiny_cfg(f"resume={out}"))


def test_an_auto_run_started_again_in_its_dir_measures_afresh(tiny_cfg, monkeypatch):
    monkeypatch.setattr(auto, "stop_rule", lambda *args: None)  # the synthetic probe is perfect: pilots train anyway
    cfg = tiny_cfg("strategy=auto", "strategy.candidates=[feature_extraction,finetune]", "epoch_scale=0.2")
    first = train(cfg)
    (Path(cfg.output_dir) / "metrics.json").unlink()  # killed after its winner's pilot had trained on
    again = train(cfg)  # the same command again: not a traceback from a pilot checkpoint past its first rung
    measured = [[(s["strategy"], s["val_acc"], s["epochs"]) for s in rung] for rung in first["auto"]["rungs"]]
    assert [[(s["strategy"], s["val_acc"], s["epochs"]) for s in rung] for rung in again["auto"]["rungs"]] == measured
    assert again["strategy"] == first["strategy"] and again["test"]["acc"] == first["test"]["acc"]


def test_advise_prints_evidence_and_a_command_that_runs(tiny_weights):
    overrides = ["dataset=synthetic", "model=test_resnet", f"model.weights={tiny_weights}", "epoch_scale=0.1",
                 "trainer.enable_progress_bar=false"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "tlexp.advise", *overrides, FOUR, "models=[test_resnet,resnet18]", "cv.folds=3"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "test_resnet" in out and "resnet18               skipped: model 'resnet18.tv_in1k' needs" in out
    # the synthetic probe is perfect: the stop rule saves every pilot (printed rungs: test_the_cost_is_one_definition)
    assert (
        "stopped: the probe misses 0 of" in out
        and "pilots: none trained" in out
        and "advice: 104 training images" in out
    )
    assert "on 3 folds of train + val" in out and "3-fold CV over train + val" in out  # cv.folds=3 honoured
    noise = ("💡 Tip:", "GPU available:", "TPU available:", "`Trainer(limit_")  # left out, as the README says
    assert not [line for line in (out + proc.stderr).splitlines() if line.lstrip().startswith(noise)]
    command = next(line for line in out.splitlines() if line.startswith("run it: ")).removeprefix("run it: ")
    assert command.startswith("python -m tlexp.train strategy=") and " ".join(overrides) in command
    assert "cv.folds" not in command  # advise's evidence folds: in train they would cross-validate, not fit one model
    ran = subprocess.run(
        [sys.executable, *command.split()[1:], "--cfg", "job"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert ran.returncode == 0, ran.stderr[-2000:]


def test_auto_pilots_refuse_more_than_one_process(tiny_cfg):
    with pytest.raises(ConfigError, match="pilots judge per-image val verdicts in one process"):
        train(tiny_cfg("strategy=auto", "trainer=ddp_cpu"))


def test_own_images_under_ddp_are_refused_for_auto_before_the_data_is_read(tmp_path):
    # own images default to auto; under DDP that is refused at once, not after scanning the folder
    cfg = compose_cfg("dataset=imagefolder", f"dataset.root={tmp_path / 'nope'}", "trainer=ddp_cpu")
    with pytest.raises(ConfigError, match="pilots judge per-image val verdicts in one process"):
        check_config(cfg)
    check_config(compose_cfg("dataset=imagefolder", f"dataset.root={tmp_path}", "trainer=ddp_cpu", "strategy=finetune"))


@pytest.mark.parametrize(
    ("overrides", "strategy"),
    [
        ([], "lp_ft"),  # the main job: Fashion-MNIST
        (["dataset=imagefolder"], "auto"),  # a user's own images: the choice is measured
        (["dataset=csv"], "auto"),
        (["dataset=imagefolder", "strategy=finetune"], "finetune"),  # the command line still chooses
        (["strategy=gradual", "dataset=csv"], "gradual"),
        (["dataset=imagefolder", "hparams_search=gradual_optuna"], "gradual"),
        (["dataset=synthetic"], "lp_ft"),
    ],
)
def test_own_images_default_to_auto_and_a_strategy_given_wins(overrides, strategy):
    assert compose_cfg(*overrides).strategy.name == strategy
