"""A task's teacher given as weights: loaded (never trained), keyed by the file's content, strict about every tensor,
and inherited from exactly like a trained one."""

from __future__ import annotations

import pytest
import torch

from rcnas.infra.errors import ConfigError
from rcnas.models.builder import build_model, inherit_weights
from rcnas.models.teachers import get_teacher
from rcnas.proxy.keys import teacher_key
from rcnas.space.arch import InputShape
from rcnas.task import load_task

SHAPE = InputShape(1, 8, 10)
TASK = """
name: imported
dataset: {{name: digits, val_fraction: 0.25}}
teacher: {teacher}
teacher_weights: {{path: {path}}}
attack: {{name: pgd, epsilon: "1/10", steps: 3, step_size: "1/30"}}
budget: {{ratio: 0.5}}
proxy: {{epochs: 0.2, val_examples: 32}}
"""


def random_teacher(name: str = "tiny-222", seed: int = 0) -> torch.nn.Module:
    """A teacher with random weights and random BN statistics, as if trained elsewhere."""
    torch.manual_seed(seed)
    model = build_model(get_teacher(name).arch, SHAPE)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def task_file(tmp_path, weights: str, teacher: str = "tiny-222"):
    path = tmp_path / "task.yaml"
    path.write_text(TASK.format(teacher=teacher, path=weights))
    return path


def test_an_imported_teacher_is_loaded_not_trained_and_keyed_by_content(tmp_path):
    from rcnas.proxy.local import ProxyRunner

    published = random_teacher()
    torch.save(published.state_dict(), tmp_path / "teacher.pt")
    task = load_task(task_file(tmp_path, "teacher.pt"))  # relative to the task file
    w = task.config.teacher_weights
    assert w.path == str((tmp_path / "teacher.pt").resolve()) and len(w.sha256) == 64
    said: list[str] = []
    model, seconds = ProxyRunner(tmp_path / "cache", log=said.append).teacher(task)
    assert seconds == 0.0 and any("importing teacher tiny-222" in m for m in said)
    assert not any("training teacher" in m for m in said)
    x = torch.rand(16, *[SHAPE.channels, SHAPE.resolution, SHAPE.resolution])
    with torch.no_grad():
        assert torch.allclose(model(x), published(x), atol=1e-6)
    other = random_teacher(seed=1)
    torch.save(other.state_dict(), tmp_path / "teacher.pt")  # other weights, same file name: another teacher
    assert teacher_key(load_task(task_file(tmp_path, "teacher.pt"))) != teacher_key(task)


def test_the_whole_teacher_inherited_from_an_imported_one_computes_the_same_function(tmp_path):
    published = random_teacher()
    torch.save(published.state_dict(), tmp_path / "teacher.pt")
    task = load_task(task_file(tmp_path, "teacher.pt"))
    student = build_model(task.teacher.arch, task.shape)
    inherit_weights(student, published)
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(student.eval()(x), published(x), atol=1e-6)
    small = task.space.arch(task.space.smallest())
    assert task.space.cost(small).macs <= task.budget


def test_bad_teacher_weights_are_one_clear_error(tmp_path):
    from rcnas.proxy.local import ProxyRunner

    with pytest.raises(ConfigError, match="teacher_weights.path: .*missing.pt is not a file"):
        load_task(task_file(tmp_path, "missing.pt"))
    torch.save(random_teacher("tiny-444").state_dict(), tmp_path / "wrong.pt")  # another architecture
    task = load_task(task_file(tmp_path, "wrong.pt"))
    with pytest.raises(ConfigError, match=r"wrong.pt: 'stages.0.2.bn1.bias' is not a tensor of tiny-222"):
        ProxyRunner(tmp_path / "cache", log=lambda m: None).teacher(task)
    state = random_teacher().state_dict()
    state["fc.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(ConfigError, match=r"shape.pt: 'fc.weight' has shape \(3, 3\), tiny-222 "
                                          r"\(D2-2-2 C16-32-64 bbb\) needs \(10, 64\)"):
        ProxyRunner(tmp_path / "cache", log=lambda m: None).teacher(load_task(task_file(tmp_path, "shape.pt")))
    pinned = f'path: wrong.pt, sha256: "{"0" * 64}"'
    text = task_file(tmp_path, "wrong.pt").read_text().replace("path: wrong.pt", pinned)
    (tmp_path / "task.yaml").write_text(text)
    with pytest.raises(ConfigError, match="teacher_weights.sha256: .* the file changed"):
        load_task(tmp_path / "task.yaml")
