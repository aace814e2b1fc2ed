"""Strict typed configs: every shipped file loads; each kind of mistake is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rcnas.config import TaskConfig
from rcnas.infra.configio import eps_label, parse_epsilon
from rcnas.infra.errors import ConfigError
from rcnas.space.schema import dump_subnet, from_arch, load_subnet
from rcnas.task import load_task

ROOT = Path(__file__).resolve().parents[1]
TASKS = sorted(p for p in (ROOT / "configs/tasks").rglob("*.yaml") if not p.name.startswith("_"))
EXPERIMENTS = sorted((ROOT / "configs/experiments").glob("*.yaml"))
SUBNETS = sorted((ROOT / "configs/subnets").rglob("*.yaml"))


@pytest.mark.parametrize("path", TASKS, ids=lambda p: p.stem)
def test_every_task_config_loads(path):
    task = load_task(path)
    assert task.name == path.stem
    assert task.config.attack.epsilon == task.config.training.attack.epsilon, "train and score at the same epsilon"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_loads_with_a_held_out_target(path):
    from agents.config import load_experiment

    exp, metas, target = load_experiment(path)
    assert target not in metas and len(metas) >= 2 and exp.M >= 1


@pytest.mark.parametrize("path", SUBNETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_subnet_config_loads_and_round_trips(path, tmp_path):
    arch, sub = load_subnet(path)
    dump_subnet(from_arch(arch, sub.model.num_classes), tmp_path / "x.yaml")
    assert load_subnet(tmp_path / "x.yaml")[0] == arch


def test_robustresnet_a1_matches_the_published_schema():
    arch, sub = load_subnet(ROOT / "configs/subnets/cifar10/RobustResNet-A1.yaml")
    assert sub.model.channel_configs == [16, 80, 224, 192]
    assert sub.model.depth_configs == [14, 14, 7]
    assert arch.block_params.scales == 8 and arch.block_params.se_reduction == 64


def test_their_file_with_training_sections_loads(tmp_path):
    text = (ROOT / "configs/subnets/cifar10/WRN-A1.yaml").read_text().split("rcnas:")[0]
    text += "criterion: {name: TradesLoss, epsilon: 0.031, perturb_steps: 10}\nepochs: 100\ngrad_clip: 5.0\n"
    (tmp_path / "theirs.yaml").write_text(text)
    arch, _ = load_subnet(tmp_path / "theirs.yaml")
    assert arch.depths == (14, 14, 7)


def write(tmp_path, text, name="task.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """
name: t
dataset: {name: digits}
teacher: tiny-444
attack: {name: pgd, epsilon: "1/5"}
budget: {ratio: 0.5}
"""


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path):
    p = write(tmp_path, GOOD + "budjet: 3\n")
    with pytest.raises(ConfigError, match=r"task.yaml: budjet: unknown key; allowed here: .*budget"):
        load_task(p)
    p = write(tmp_path, GOOD.replace("{ratio: 0.5}", "{ratio: 0.5, macz: 3}"))
    with pytest.raises(ConfigError, match=r"budget.macz: unknown key; allowed here: macs, ratio"):
        load_task(p)


def test_a_proxy_that_would_score_untrained_weights_is_refused(tmp_path):
    p = write(tmp_path, GOOD + "proxy: {epochs: 0, inherit: false}\n")
    with pytest.raises(ConfigError, match=r"proxy: .*epochs: 0 with inherit: false would score untrained"):
        load_task(p)
    p = write(tmp_path, GOOD + "proxy: {epochs: 0}\nblocks: [basic_block, robust_res_block]\n")
    with pytest.raises(ConfigError, match=r"robust_res_block.*not tiny-444's own.*proxy.epochs must be > 0"):
        load_task(p)
    p = write(tmp_path, GOOD + "proxy: {epochs: 1}\nblocks: [basic_block, robust_res_block]\n")
    assert load_task(p).config.proxy.epochs == 1


def test_unitless_epsilon_is_refused(tmp_path):
    p = write(tmp_path, GOOD.replace('"1/5"', "0.2"))
    with pytest.raises(ConfigError, match=r"attack.epsilon: 0.2 has no explicit unit.*8/255"):
        load_task(p)


def test_unknown_teacher_lists_the_known_ones(tmp_path):
    p = write(tmp_path, GOOD.replace("tiny-444", "WRN-99"))
    with pytest.raises(ConfigError, match=r"unknown teacher 'WRN-99'; known: .*WRN-A1"):
        load_task(p)


def test_unknown_dataset_and_attack(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown dataset 'mnist'; known: cifar10, cifar100, digits"):
        load_task(write(tmp_path, GOOD.replace("digits", "mnist")))
    with pytest.raises(ConfigError, match=r"attack.name: unknown attack 'deepfool'; known: .*fgsm"):
        load_task(write(tmp_path, GOOD.replace("name: pgd", "name: deepfool")))


def test_budget_below_the_smallest_subnet(tmp_path):
    with pytest.raises(ConfigError, match=r"task.yaml: budget.macs: 1,000 MACs is below the smallest sub-network"):
        load_task(write(tmp_path, GOOD.replace("{ratio: 0.5}", '{macs: "1K"}')))


def test_base_inheritance_and_loops(tmp_path):
    write(tmp_path, GOOD, "base.yaml")
    child = write(tmp_path, "base: base.yaml\nname: child\nbudget: {ratio: 0.3}\n", "child.yaml")
    task = load_task(child)
    assert task.name == "child" and task.config.budget.ratio == 0.3 and task.teacher.name == "tiny-444"
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="loop"):
        load_task(tmp_path / "a.yaml")


def test_yaml_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_task(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_task(tmp_path / "nope.yaml")


def test_subnet_schema_errors(tmp_path):
    text = (ROOT / "configs/subnets/digits/tiny-444-half.yaml").read_text()
    with pytest.raises(ConfigError, match="per-stage lists disagree"):
        load_subnet(write(tmp_path, text.replace("depth_configs: [2, 2, 2]", "depth_configs: [2, 2]"), "s.yaml"))
    with pytest.raises(ConfigError, match="unknown block type"):
        load_subnet(write(tmp_path, text.replace("basic_block, basic_block]", "basic_block, bottleneck]"), "s.yaml"))
    with pytest.raises(ConfigError, match=r"model.activations: unknown 'Swish'; known: .*ReLU"):
        load_subnet(write(tmp_path, text.replace("activations: [ReLU,", "activations: [Swish,"), "s.yaml"))


def test_epsilon_parsing_and_labels():
    assert parse_epsilon("8/255") == pytest.approx(8 / 255)
    assert parse_epsilon("0.8/255") == pytest.approx(0.8 / 255)
    assert parse_epsilon("1/5") == pytest.approx(0.2)
    with pytest.raises(ValueError):
        parse_epsilon(8)
    assert eps_label(8 / 255) == "8/255"
    assert eps_label(0.8 / 255) == "0.8/255"
    assert eps_label(0.2) == "51/255"
    assert eps_label(0.1) == "25.5/255"
    assert "(" in eps_label(0.123456)


def test_configs_are_frozen():
    task = TaskConfig.model_validate({"name": "t", "dataset": {"name": "digits"}, "teacher": "tiny-444",
                                      "attack": {"epsilon": "1/5"}, "budget": {"ratio": 0.5}})
    with pytest.raises(ValidationError):
        task.name = "other"  # type: ignore[misc]
