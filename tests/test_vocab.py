"""The closed vocabularies are complete (every entry has its implementation), the resolved Task crosses process
boundaries, and a policy checkpoint is refused when its observation layout is not the current one."""

from __future__ import annotations

import json
import pickle

import pytest
from torch import nn

from rcnas.config import AttackConfig
from rcnas.infra.errors import ConfigError
from rcnas.vocab import ATTACK_KINDS, BLOCK_KINDS, SUITE, load_ref
from tests.conftest import ROOT


@pytest.mark.parametrize("name", ATTACK_KINDS.ordered())
def test_every_attack_kind_has_its_function(name):
    assert callable(load_ref(ATTACK_KINDS.get(name).impl))


@pytest.mark.parametrize("name", BLOCK_KINDS.ordered())
def test_every_block_kind_has_its_module(name):
    assert issubclass(load_ref(BLOCK_KINDS.get(name).module), nn.Module)


def test_suite_attacks_follow_the_protocol():
    pgd, cw = AttackConfig.suite("pgd20", 8 / 255), AttackConfig.suite("cw40", 8 / 255)
    assert (pgd.name, pgd.steps, pgd.random_start) == ("pgd", 20, True)
    assert pgd.alpha == pytest.approx(0.8 / 255) and (cw.name, cw.steps) == ("cw", 40)
    assert AttackConfig.suite("fgsm", 0.1).random_start is False
    assert all(SUITE.get(label).kind in ATTACK_KINDS for label in SUITE.ordered() if label != "clean")
    with pytest.raises(ConfigError, match="unknown evaluation attack 'pgd7'"):
        AttackConfig.suite("pgd7", 0.1)


def test_a_task_pickles_and_rebuilds_its_space():
    from rcnas.task import load_task

    task = load_task(ROOT / "configs/tasks/digits-pgd-e20-t444-r35.yaml")
    mask = task.space.mask(())
    again = pickle.loads(pickle.dumps(task))
    assert again.config == task.config and again.budget == task.budget and again.teacher == task.teacher
    assert (again.space.mask(()) == mask).all() and again.space.min_macs == task.space.min_macs


def test_a_checkpoint_with_another_observation_layout_is_refused(tmp_path):
    from agents.stages import LAYOUT_FILE, check_layout, save_layout

    with pytest.raises(ConfigError, match="no rcnas_observation_layout.json"):
        check_layout(tmp_path)
    save_layout(tmp_path)
    check_layout(tmp_path)  # the current layout passes
    saved = json.loads((tmp_path / LAYOUT_FILE).read_text())
    saved["datasets"] = saved["datasets"][:-1]  # as if written before a dataset was registered
    (tmp_path / LAYOUT_FILE).write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="another observation layout.*datasets"):
        check_layout(tmp_path)
