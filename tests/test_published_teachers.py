"""Published robust checkpoints load into rcnas and compute the same function (issue: compress a published teacher).

The foreign networks are RobustBench's own architecture classes (the ``robustbench`` dev dependency), built with
random weights and random BatchNorm statistics, saved as their state dicts, declared in a task exactly as a user
would, and imported. Logits must agree in eval mode to 1e-4 on random CIFAR-shaped inputs.

RobustBench's modules are loaded from their files: its package ``__init__`` imports AutoAttack under the module
name of its git version (``autoattack``), which the PyPI release we pin (``pyautoattack``) does not provide.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from rcnas.infra.errors import ConfigError
from rcnas.models.builder import build_model, inherit_weights
from rcnas.models.imports import load_weights
from rcnas.models.reference import randomise, robustbench_module
from rcnas.task import load_task

CIFAR10_NORM = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2471, 0.2435, 0.2616]}
CIFAR100_NORM = {"mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762]}


def teacher_yaml(path: Path, channels: list[int], depths: list[int], blocks: str = "basic_block",
                 activation: str = "ReLU", block_params: dict | None = None) -> Path:
    n = len(depths)
    model = {"channel_configs": channels, "depth_configs": depths, "stride_config": [1, 2, 2][:n],
             "block_types": [blocks] * n, "activations": [activation] * n, "normalizations": ["BatchNorm"] * n,
             "kernel_size_configs": [3] * n}
    doc = {"model": model, **({"rcnas": {"block_params": block_params}} if block_params else {})}
    path.write_text(yaml.safe_dump(doc))
    return path


def task_yaml(folder: Path, teacher: str, weights: dict, dataset: str = "cifar10") -> Path:
    doc = {"name": "published", "dataset": {"name": dataset}, "teacher": teacher, "teacher_weights": weights,
           "attack": {"name": "pgd", "epsilon": "8/255", "steps": 10}, "budget": {"ratio": 0.5}}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def imported(task_file: Path):
    """The task's teacher, built and loaded exactly as the proxy does."""
    task = load_task(task_file)
    w = task.config.teacher_weights
    model = build_model(task.teacher.arch, task.shape)
    info = load_weights(model, w.path, w.format, task.teacher.name)
    return task, model.eval(), info


def assert_same_logits(ours: nn.Module, theirs: nn.Module, classes: int = 10, n: int = 6) -> None:
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == (n, classes)
    assert (a - b).abs().max().item() <= 1e-4, (a - b).abs().max().item()
    assert b.std() > 1e-3  # a constant output would make the comparison vacuous


def test_robustbench_wideresnet_28_10_loads_into_the_registered_teacher(tmp_path):
    wrn = randomise(robustbench_module("wide_resnet").WideResNet(depth=28, widen_factor=10))
    torch.save(wrn.state_dict(), tmp_path / "wrn.pt")
    task, model, info = imported(task_yaml(tmp_path, "WRN-28-10", {"path": "wrn.pt", "format": "wideresnet"}))
    assert info["tensors"] == len(wrn.state_dict())
    assert_same_logits(model, wrn, n=2)


def test_a_trades_wideresnet_34_with_its_unused_sub_block_nested_under_state_dict_and_module_prefix(tmp_path):
    wrn = randomise(robustbench_module("wide_resnet").WideResNet(depth=34, widen_factor=2, sub_block1=True))
    state = {"state_dict": {f"module.{k}": v for k, v in wrn.state_dict().items()}, "epoch": 100}
    torch.save(state, tmp_path / "trades.pt")
    teacher = teacher_yaml(tmp_path / "wrn-34-2.yaml", [16, 32, 64, 128], [5, 5, 5])
    _, model, info = imported(task_yaml(tmp_path, teacher.name, {"path": "trades.pt", "format": "wideresnet"}))
    assert info["unused"] and all(k.startswith("sub_block1.") for k in info["unused"])
    assert_same_logits(model, wrn)


@pytest.mark.parametrize("swish", [True, False])
def test_deepmind_wideresnet_with_swish_standardisation_and_its_asymmetric_padding(tmp_path, swish):
    dm = robustbench_module("dm_wide_resnet")
    act = dm.Swish if swish else nn.ReLU
    net = randomise(dm.DMWideResNet(num_classes=100, depth=16, width=2, activation_fn=act,
                                    mean=dm.CIFAR100_MEAN, std=dm.CIFAR100_STD))
    torch.save(net.state_dict(), tmp_path / "dm.pt")
    teacher = teacher_yaml(tmp_path / "dm-16-2.yaml", [16, 32, 64, 128], [2, 2, 2], activation="SiLU" if swish
                           else "ReLU")
    weights = {"path": "dm.pt", "format": "dm-wideresnet", "input_normalization": CIFAR100_NORM}
    task, model, _ = imported(task_yaml(tmp_path, teacher.name, weights, dataset="cifar100"))
    assert task.teacher.arch.downsample_padding == "bottom_right"
    assert_same_logits(model, net, classes=100)


def test_deepmind_format_without_its_standardisation_is_one_clear_error(tmp_path):
    teacher = teacher_yaml(tmp_path / "dm.yaml", [16, 32, 64, 128], [2, 2, 2])
    torch.save({}, tmp_path / "dm.pt")
    with pytest.raises(ConfigError, match="teacher_weights.input_normalization: dm-wideresnet networks standardise"):
        load_task(task_yaml(tmp_path, teacher.name, {"path": "dm.pt", "format": "dm-wideresnet"}))


def test_robustbench_wrn_a_network_with_silu_and_stored_standardisation(tmp_path):
    rr = robustbench_module("robust_resnet")
    channels, depths = [16, 16 * 2, 32 * 3, 64 * 1], [2, 2, 1]  # WRN-A4's shape shrunk (it is 27-28-13, 10-14-6)
    net = randomise(rr.PreActResNet(channel_configs=channels, depth_configs=depths, activations=("SiLU",) * 3,
                                    use_init=False, pre_process=True))
    torch.save(net.state_dict(), tmp_path / "wrn-a.pt")
    teacher = teacher_yaml(tmp_path / "wrn-a-small.yaml", channels, depths, activation="SiLU")
    weights = {"path": "wrn-a.pt", "format": "robustresnet"}
    with pytest.raises(ConfigError, match=r"standardises its input .* add teacher_weights.input_normalization"):
        imported(task_yaml(tmp_path, teacher.name, weights))
    _, model, _ = imported(task_yaml(tmp_path, teacher.name, {**weights, "input_normalization": CIFAR10_NORM}))
    assert_same_logits(model, net)


class ReferenceRobustResBlock(nn.Module):
    """RobustResNet's robust block as its reference code wires it (state-dict names included): the first 1x1 conv
    reads the raw input, BN + activation feed only the shortcut. RobustBench's ``robust_resnet`` module names this
    class but does not define it, so the test supplies it to that module's network."""

    expansion = 4

    def __init__(self, in_planes, planes, stride=1, kernel_size=3, scales=4, base_width=160, cardinality=1,
                 activation="ReLU", normalization="BatchNorm", se_reduction=16, **_):
        super().__init__()
        width = int(math.floor(planes * (base_width / 160))) * cardinality
        out = planes * self.expansion
        self.act = getattr(nn, activation)()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, width * scales, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width * scales)

        def grouped():
            return nn.Conv2d(width, width, kernel_size, stride, kernel_size // 2, groups=cardinality, bias=False)

        if scales == 1:
            self.conv2, self.bn3 = grouped(), nn.BatchNorm2d(width)
        else:
            self.conv2 = nn.ModuleList(grouped() for _ in range(scales - 1))
            self.bn3 = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scales - 1))
        if stride > 1:
            self.pool = nn.AvgPool2d(3, stride, 1)
        self.conv3 = nn.Conv2d(width * scales, out, 1, bias=False)
        self.se_bn = nn.BatchNorm2d(out)
        hidden = out // se_reduction
        self.se = nn.Module()
        self.se.fc = nn.Sequential(nn.Linear(out, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, out, bias=False),
                                   nn.Sigmoid())
        if stride > 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False))
        self.stride, self.scales = stride, scales

    def forward(self, x):
        pre = self.act(self.bn1(x))
        shortcut = self.shortcut(pre) if hasattr(self, "shortcut") else x
        out = self.act(self.bn2(self.conv1(x)))
        if self.scales == 1:
            out = self.act(self.bn3(self.conv2(out)))
        else:
            parts, done = torch.chunk(out, self.scales, 1), []
            for s in range(self.scales - 1):
                inp = parts[s] if s == 0 or self.stride > 1 else parts[s] + done[-1]
                done.append(self.act(self.bn3[s](self.conv2[s](inp))))
            done.append(self.pool(parts[-1]) if self.stride > 1 else parts[-1])
            out = torch.cat(done, 1)
        out = self.conv3(out)
        squeeze = self.se_bn(out)
        w = self.se.fc(squeeze.mean((2, 3)))
        return out + shortcut + squeeze * w[:, :, None, None]


@pytest.mark.parametrize("scales", [2, 1])
def test_robustresnet_robust_blocks_load_with_the_reference_wiring(tmp_path, monkeypatch, scales):
    rr = robustbench_module("robust_resnet")
    monkeypatch.setattr(rr, "RobustResBlock", ReferenceRobustResBlock, raising=False)
    params = {"scales": scales, "base_width": 40, "cardinality": 2, "se_reduction": 8}
    channels, depths = [16, 16 * 2, 32 * 1, 64 * 1], [2, 1, 1]
    net = randomise(rr.PreActResNet(channel_configs=channels, depth_configs=depths,
                                    block_types=("robust_res_block",) * 3, use_init=False, **params))
    torch.save(net.state_dict(), tmp_path / "rrn.pt")
    teacher = teacher_yaml(tmp_path / "rrn-small.yaml", channels, depths, "robust_res_block", block_params=params)
    task, model, _ = imported(task_yaml(tmp_path, teacher.name, {"path": "rrn.pt", "format": "robustresnet"}))
    assert task.teacher.arch.block_params.conv1_input == "raw"
    assert_same_logits(model, net)

    # a sub-network that is the whole teacher inherits its function; a smaller one inherits the same wiring
    t = task.teacher
    whole = build_model(t.subnet(t.arch.depths, t.widths, t.arch.blocks), task.shape)
    inherit_weights(whole, model)
    assert_same_logits(whole.eval(), net)
    small = task.space.arch(task.space.smallest())
    assert small.block_params.conv1_input == "raw" and task.space.cost(small).macs <= task.budget


def test_a_tensor_of_the_wrong_shape_names_the_files_key(tmp_path):
    wrn = robustbench_module("wide_resnet").WideResNet(depth=10, widen_factor=2)
    state = wrn.state_dict()
    state["block2.layer.0.conv1.weight"] = torch.zeros(64, 32, 1, 1)
    torch.save(state, tmp_path / "bad.pt")
    teacher = teacher_yaml(tmp_path / "wrn-10-2.yaml", [16, 32, 64, 128], [1, 1, 1])
    with pytest.raises(ConfigError, match=r"bad.pt: 'block2.layer.0.conv1.weight' \(our 'stages.1.0.conv1.weight'\) "
                                          r"has shape \(64, 32, 1, 1\), wrn-10-2 \(D1-1-1 C32-64-128 bbb\) needs"):
        imported(task_yaml(tmp_path, teacher.name, {"path": "bad.pt", "format": "wideresnet"}))
    del state["block2.layer.0.conv1.weight"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"bad.pt: 'stages.1.0.conv1.weight' is missing from the file; is it a "
                                          "wideresnet checkpoint of wrn-10-2"):
        imported(task_yaml(tmp_path, teacher.name, {"path": "bad.pt", "format": "wideresnet"}))


def test_evaluate_py_checks_a_published_checkpoint_before_searching(tmp_path):
    """``evaluate.py --teacher``: the task's imported teacher on the test split, no training; its clean accuracy is
    the published network's own on the same images."""
    import json

    from rcnas.config import DatasetConfig
    from rcnas.data.registry import load_splits
    from rcnas.data.synthetic import write_cifar10
    from rcnas.data.tensors import to_float
    from tests.conftest import run_script

    data = tmp_path / "data"
    write_cifar10(data)
    wrn = randomise(robustbench_module("wide_resnet").WideResNet(depth=10, widen_factor=2))
    torch.save({"state_dict": wrn.state_dict()}, tmp_path / "wrn.pt")
    teacher = teacher_yaml(tmp_path / "wrn-10-2.yaml", [16, 32, 64, 128], [1, 1, 1])
    task = task_yaml(tmp_path, teacher.name, {"path": "wrn.pt", "format": "wideresnet"})
    out = tmp_path / "eval"
    r = run_script("evaluate.py", "--teacher", "--task", str(task), "--data-root", str(data), "--no-ray",
                   "--attacks", "clean,pgd20,aa_compact", "--n-examples", "40", "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = json.loads((out / "results.json").read_text())
    assert row["name"] == "teacher-wrn-10-2" and row["train"]["format"] == "wideresnet"
    test = load_splits(DatasetConfig(name="cifar10"), data).test.head(40)
    with torch.no_grad():
        clean = (wrn(to_float(test.x)).argmax(1) == test.y).float().mean().item()
    assert abs(row["clean"] - clean) < 1e-6
    assert row["n_examples"] == 40 and row["split"] == "test"

    r = run_script("evaluate.py", "--teacher", "--task", str(task.parent / "missing.yaml"), "--no-ray")
    assert r.returncode == 2 and r.stderr.count("\n") <= 2, r.stderr


@pytest.mark.parametrize("example", ["cifar10-Huang2022Revisiting_WRN-A4", "cifar10-Gowal2020Uncovering_28_10_extra",
                                     "cifar10-Carmon2019Unlabeled"])
def test_the_shipped_published_teacher_tasks_resolve_once_their_file_is_downloaded(tmp_path, example):
    """configs/published/*.yaml, with a stand-in file where RobustBench would download the checkpoint."""
    import shutil

    from tests.conftest import ROOT

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    weights = tmp_path / "models" / "cifar10" / "Linf" / f"{example.removeprefix('cifar10-')}.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"stand-in")
    task = load_task(tmp_path / "configs" / "published" / f"{example}.yaml")
    arch, w = task.teacher.arch, task.config.teacher_weights
    assert w.path == str(weights.resolve()) and task.budget < task.teacher_macs
    assert arch.input_norm == (None if w.format == "wideresnet" else (tuple(CIFAR10_NORM["mean"]),
                                                                       tuple(CIFAR10_NORM["std"])))
    assert arch.downsample_padding == ("bottom_right" if w.format == "dm-wideresnet" else "symmetric")
    assert {s.activation for s in arch.stages} == ({"ReLU"} if w.format == "wideresnet" else {"SiLU"})


def test_a_declared_teacher_is_keyed_by_its_content_not_its_path(tmp_path):
    from rcnas.proxy.keys import teacher_key

    teacher = teacher_yaml(tmp_path / "t.yaml", [16, 32, 64, 128], [2, 2, 2])
    torch.save({}, tmp_path / "w.pt")
    key = teacher_key(load_task(task_yaml(tmp_path, teacher.name, {"path": "w.pt", "format": "wideresnet"})))
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    teacher_yaml(moved / "t.yaml", [16, 32, 64, 128], [2, 2, 2])
    torch.save({}, moved / "w.pt")
    assert teacher_key(load_task(task_yaml(moved, "t.yaml", {"path": "w.pt", "format": "wideresnet"}))) == key
    teacher_yaml(moved / "t.yaml", [16, 32, 64, 128], [2, 2, 1])
    assert teacher_key(load_task(task_yaml(moved, "t.yaml", {"path": "w.pt", "format": "wideresnet"}))) != key


def test_a_declared_teacher_with_planes_off_its_width_units_is_one_clear_error(tmp_path):
    teacher = teacher_yaml(tmp_path / "odd.yaml", [16, 40, 64, 128], [1, 1, 1])
    torch.save({}, tmp_path / "w.pt")
    with pytest.raises(ConfigError, match=r"odd.yaml: stage 1 has 40 planes, not a multiple of its width unit 16; "
                                          "set rcnas.base_channels"):
        load_task(task_yaml(tmp_path, teacher.name, {"path": "w.pt", "format": "wideresnet"}))


def test_the_wiring_round_trips_through_a_sub_network_file(tmp_path):
    """A sub-network searched from an imported teacher is written with the teacher's wiring, so evaluate.py trains
    the same function family from scratch."""
    from dataclasses import replace

    from rcnas.models.teachers import get_teacher
    from rcnas.space.schema import dump_subnet, from_arch, load_subnet

    arch = get_teacher("RobustResNet-A1").arch
    wired = replace(arch, input_norm=((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), downsample_padding="bottom_right",
                    block_params=replace(arch.block_params, conv1_input="raw"))
    dump_subnet(from_arch(wired, 10), tmp_path / "wired.yaml")
    assert load_subnet(tmp_path / "wired.yaml")[0] == wired and wired.key() != arch.key()
    dump_subnet(from_arch(arch, 10), tmp_path / "plain.yaml")
    text = (tmp_path / "plain.yaml").read_text()
    assert "conv1_input" not in text and "downsample_padding" not in text  # files as they were before the options
