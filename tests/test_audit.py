"""The trainable-state audit: a table per group at each phase start, and a loud stop on a misplaced parameter."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from tlexp.model.module import TransferModule
from tlexp.model.phases import PhaseSchedule, build_phases

from .conftest import TINY


@pytest.fixture(scope="module")
def module():
    return TransferModule(TINY, num_classes=4, weights="none")


def _phase(module, train, lr=1e-3):
    strategy = {"name": "t", "phases": [{"epochs": 1, "train": train, "lr": lr}]}
    (phase,) = build_phases(strategy, module.group_names, weight_decay=0.01)
    return phase


def _apply(module, optimizer, phase):
    # The real PhaseSchedule.apply (requires_grad mode): of the Trainer it reads only the optimizer.
    PhaseSchedule([phase], freeze_mode="requires_grad").apply(SimpleNamespace(optimizers=[optimizer]), module, 0, True)


def test_audit_table_lists_every_group_with_count_lr_wd_and_bn(module, caplog):
    optimizer = module.configure_optimizers()
    phase = _phase(module, ["head", "last"])
    _apply(module, optimizer, phase)
    with caplog.at_level(logging.INFO, logger="tlexp.model.module"):
        rows = module.audit_groups(optimizer, phase, 1, "requires_grad")
    by_group = {r["group"]: r for r in rows}
    assert list(by_group) == module.group_names
    assert by_group["stage4"]["trainable_params"] == sum(p.numel() for p in module.groups["stage4"])
    assert by_group["stem"]["trainable_params"] == 0 and by_group["stem"]["lr"] == 0.0
    assert by_group["stage4"]["bn"] == "train" and by_group["stem"]["bn"] == "eval" and by_group["head"]["bn"] == "n/a"
    assert by_group["head"]["weight_decay"] == 0.01 and by_group["stem"]["weight_decay"] == 0.0
    assert "phase 2 'phase1' (1 epochs, freezing by requires_grad)" in caplog.text
    assert "stage4" in caplog.text and "267,840" in caplog.text


def test_audit_fails_on_a_trainable_parameter_in_no_group(module):
    optimizer = module.configure_optimizers()
    phase = _phase(module, ["all"])
    _apply(module, optimizer, phase)
    optimizer.param_groups[-1]["params"] = []  # the head's no-decay group: drop the head bias
    with pytest.raises(RuntimeError, match=r"in no optimizer group: \['head.1.bias'\]"):
        module.audit_groups(optimizer, phase, 0, "requires_grad")


def test_audit_fails_on_a_parameter_in_two_groups(module):
    optimizer = module.configure_optimizers()
    phase = _phase(module, ["all"])
    _apply(module, optimizer, phase)
    optimizer.param_groups[0]["params"].append(optimizer.param_groups[-1]["params"][0])
    with pytest.raises(RuntimeError, match="in two optimizer groups: stem and head"):
        module.audit_groups(optimizer, phase, 0, "requires_grad")


def test_audit_ignores_frozen_parameters_outside_groups(module):
    optimizer = module.configure_optimizers()
    phase = _phase(module, ["head"])
    _apply(module, optimizer, phase)
    optimizer.param_groups[0]["params"] = []  # frozen stem parameters: no harm if no group holds them
    assert torch.is_tensor(module.groups["stem"][0])
    module.audit_groups(optimizer, phase, 0, "requires_grad")
