"""LP-FT: the head starts as the linear probe on frozen features, then everything fine-tunes from it."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from tlexp.config.errors import ConfigError
from tlexp.features.cache import FeatureStore
from tlexp.features.probe import fit_probe, set_head_to_probe
from tlexp.train import train

from .test_features import _cfg


def _blobs(n, gen, centres):
    y = torch.arange(len(centres)).repeat(n)
    return centres[y] + torch.randn(len(y), centres.shape[1], generator=gen), y


def test_folded_probe_weights_give_the_standardised_probe_logits():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=gen) * 3 + 10  # far from zero, so the folded mean matters
    train_, val = _blobs(30, gen, centres), _blobs(10, gen, centres)
    fitted = fit_probe(train_, val, 3)
    head = torch.nn.Linear(6, 3)
    result = set_head_to_probe(head, train_, val, 3)
    with torch.no_grad():
        acc = (head(val[0]).argmax(1) == val[1]).float().mean().item()
    assert torch.allclose(head.weight, fitted["weight"]) and fitted["weight"].shape == (3, 6)
    assert acc == pytest.approx(result["val_acc"]) and acc > 0.9


def _payloads(store_dir):
    store = FeatureStore(store_dir)
    return [store.load(p.stem) for p in sorted(store.root.glob("*.pt"))]


class HeadAtFitStart(Callback):
    def on_fit_start(self, trainer, pl_module):
        self.bias = pl_module.head[-1].bias.detach().clone()
        self.weight = pl_module.head[-1].weight.detach().clone()
        self.features = trainer.datamodule.features


def test_lp_ft_starts_fine_tuning_from_the_probe_head(tmp_path, tiny_weights):
    seen = HeadAtFitStart()
    cfg = _cfg(tmp_path, tiny_weights, "run", "strategy=lp_ft", "strategy.phases.0.epochs=1")
    metrics = train(cfg, callbacks=[seen])
    assert metrics["strategy"] == "lp_ft" and metrics["head_init"]["val_acc"] > 0.25
    assert metrics["phases"][0]["train"][-1] == "head" and len(metrics["phases"][0]["train"]) > 2  # all groups
    assert seen.features is None  # the probe's features feed no training epoch
    # The head at the first step is the probe fitted on the cached train features, L2 chosen on val.
    payloads = _payloads(tmp_path / "cache")
    assert len(payloads) == 2  # train and val, eval transform; test is never touched by the probe
    by_size = sorted(payloads, key=lambda p: len(p["labels"]))
    val, train_ = ((p["features"], p["labels"]) for p in by_size)
    expected = fit_probe(train_, val, metrics["num_classes"])["weight"]
    assert torch.allclose(seen.weight, expected, atol=1e-5)
    # Independently of fit_probe: the head minimises the probe's objective on the standardised train features, mean
    # cross-entropy + l2 ||W||^2: its gradient there is ~0 (a head fitted on other features, or folded wrongly, is not).
    x, y = train_[0].double(), train_[1]
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    w = (seen.weight.double().T * std[:, None]).requires_grad_()
    b = (seen.bias.double() + (mean / std) @ w.detach()).requires_grad_()
    loss = F.cross_entropy((x - mean) / std @ w + b, y) + metrics["head_init"]["l2"] * (w**2).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-3 and b.grad.abs().max() < 1e-3, (w.grad.abs().max(), b.grad.abs().max())


def test_without_head_init_the_head_starts_random(tmp_path, tiny_weights):
    metrics = train(_cfg(tmp_path, tiny_weights, "run", "strategy=finetune", "strategy.phases.0.epochs=1"))
    assert metrics["head_init"] is None


def test_head_init_is_a_checked_value(tmp_path, tiny_weights):
    with pytest.raises(ConfigError, match="head_init"):
        train(_cfg(tmp_path, tiny_weights, "run", "strategy=lp_ft", "strategy.head_init=lbfgs"))


def test_cache_off_computes_the_probe_features_without_writing_them(tmp_path, tiny_weights):
    cfg = _cfg(tmp_path, tiny_weights, "run", "strategy=lp_ft", "strategy.phases.0.epochs=1", "cache.mode=off")
    metrics = train(cfg)
    assert metrics["head_init"]["val_acc"] > 0 and not (tmp_path / "cache").exists()


def test_probe_views_fit_the_probe_on_augmented_views_as_well(tmp_path, tiny_weights):
    seen = HeadAtFitStart()
    overrides = ("strategy=lp_ft", "strategy.phases.0.epochs=1", "strategy.probe_views=2", "augment.enabled=true")
    metrics = train(_cfg(tmp_path, tiny_weights, "run", *overrides), callbacks=[seen])
    assert metrics["head_init"]["views"] == 2
    payloads = _payloads(tmp_path / "cache")
    assert len(payloads) == 4  # train (eval transform), its two augmented views, val
    n_train = metrics["dataset_sizes"]["train"]
    parts = [(p["features"], p["labels"]) for p in payloads if len(p["labels"]) == n_train]
    (val,) = [(p["features"], p["labels"]) for p in payloads if len(p["labels"]) != n_train]
    assert len(parts) == 3 and not torch.equal(parts[1][0], parts[2][0])
    # The head is the probe fitted on all three together (the cache's file order is a hash's: try each order).
    fits = [
        fit_probe((torch.cat([x for x, _ in order]), torch.cat([y for _, y in order])), val, metrics["num_classes"])
        for order in itertools.permutations(parts)
    ]
    assert any(torch.allclose(seen.weight, fit["weight"], atol=1e-5) for fit in fits)
    clean_only = [fit_probe(part, val, metrics["num_classes"])["weight"] for part in parts]
    assert not any(torch.allclose(seen.weight, w, atol=1e-5) for w in clean_only)


def test_without_augmentation_the_probe_fits_the_clean_features_alone(tmp_path, tiny_weights):
    overrides = ("strategy=lp_ft", "strategy.phases.0.epochs=1", "strategy.probe_views=2", "augment.enabled=false")
    metrics = train(_cfg(tmp_path, tiny_weights, "run", *overrides))
    assert metrics["head_init"]["views"] == 0 and len(_payloads(tmp_path / "cache")) == 2


def _rule_data(seed: int, n: int, feature: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 30, generator=g, dtype=torch.float64)
    return x, (x[:, feature] + 0.8 * torch.randn(n, generator=g, dtype=torch.float64) > 0).long()


def test_the_probe_chooses_its_l2_on_val_and_never_on_test():
    from tlexp.features.probe import L2_GRID, _fit, linear_probe

    train, val = _rule_data(1, 40, 0), _rule_data(101, 200, 0)
    test = _rule_data(201, 200, 1)  # another labelling rule: its best L2 is another one
    mean, std = train[0].mean(0), train[0].std(0)
    val_acc, test_acc, init = {}, {}, None
    for l2 in sorted(L2_GRID, reverse=True):  # each fit on its own, accuracies by plain arithmetic
        init = _fit((train[0] - mean) / std, train[1], 2, l2, init)
        for acc, (x, y) in ((val_acc, val), (test_acc, test)):
            acc[l2] = (((x - mean) / std @ init[0] + init[1]).argmax(1) == y).double().mean().item()
    on_val, on_test = max(val_acc, key=val_acc.get), max(test_acc, key=test_acc.get)
    assert on_val != on_test and list(val_acc.values()).count(val_acc[on_val]) == 1  # the data can tell them apart
    assert linear_probe(train, val, test, 2)["l2"] == on_val


def test_l2_values_tied_on_val_accuracy_are_decided_by_val_log_loss():
    from tlexp.features.probe import fit_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long()  # the three L2 values get the same 18 of 20 val images right, surer as L2 falls
    fitted = fit_probe((x[:40], y[:40]), (x[40:], y[40:]), 2, grid=(1e-1, 1e-2, 1e-3))
    assert fitted["val_acc"] == 0.9 and fitted["tied_on_val_acc"] == 3
    assert fitted["l2"] == 1e-3  # the lowest val loss of the three; the old rule kept the strongest, 1e-1
