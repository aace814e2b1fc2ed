"""Upper limits on every size and count: an oversize value (``training.epochs=1e12``, ``M=1e9``,
``env_runners=100000``...) is one error line naming the key and its limit, before anything starts; and the run's
size is one line printed before it starts (``agents.size.run_size``). Fast, no Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from agents.config import (
    MAX_ENV_RUNNERS,
    MAX_EVALUATIONS,
    MAX_ITERATIONS,
    MAX_M,
    MAX_MODEL_WIDTH,
    MAX_PPO_EPOCHS,
    MAX_TOP_K,
    MAX_WORKERS,
    ExperimentConfig,
    load_experiment,
)
from agents.overrides import apply_overrides, parse_sets
from rcnas.config import MAX_ATTACK_STEPS, MAX_BATCH_SIZE, MAX_EPOCHS, MAX_EXAMPLES, MAX_REPEATS, MAX_SEED, TaskConfig
from rcnas.infra.configio import read_yaml, validate
from rcnas.infra.errors import ConfigError
from tests.conftest import ROOT

DIGITS = ROOT / "configs/experiments/digits.yaml"
SMOKE = ROOT / "configs/experiments/smoke.yaml"
TASK = ROOT / "configs/tasks/digits-pgd-e20-t444-r35.yaml"

# the list, with the limit each must name
EXPERIMENT_LIMITS = {
    "M": MAX_M,
    "meta_iterations": MAX_ITERATIONS,
    "finetune_iterations": MAX_ITERATIONS,
    "env_runners": MAX_ENV_RUNNERS,
    "workers.count": MAX_WORKERS,
    "model.embed": MAX_MODEL_WIDTH,
    "ppo.num_epochs": MAX_PPO_EPOCHS,
    "rerank.top_k": MAX_TOP_K,
    "final_eval.n_examples": MAX_EXAMPLES,
    "final_eval.epochs": MAX_EPOCHS,
    "seed": MAX_SEED,
}
TASK_LIMITS = {
    "training.epochs": MAX_EPOCHS,
    "training.batch_size": MAX_BATCH_SIZE,
    "training.val_examples": MAX_EXAMPLES,
    "proxy.repeats": MAX_REPEATS,
    "proxy.val_examples": MAX_EXAMPLES,
    "proxy.epochs": MAX_EPOCHS,
    "attack.steps": MAX_ATTACK_STEPS,
    "dataset.split_seed": MAX_SEED,
}
# YAML 1.1 (PyYAML) reads 1e12 as a *string*; 1.0e+12 as a float; 1000000000000 as an int: all three refused alike
SPELLINGS = ["1e12", "1.0e+12", "1000000000000"]


@pytest.fixture(scope="module")
def digits_experiment():
    return load_experiment(DIGITS)


def _one_line(err: pytest.ExceptionInfo, key: str, limit: float) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert f"{key}: " in msg and f"less than or equal to {limit}" in msg, msg
    return msg


@pytest.mark.parametrize("spelled", SPELLINGS)
@pytest.mark.parametrize("key", sorted({**EXPERIMENT_LIMITS, **TASK_LIMITS}))
def test_an_oversize_value_is_one_line_naming_key_and_limit(digits_experiment, tmp_path, key, spelled):
    exp, metas, target = digits_experiment
    with pytest.raises(ConfigError) as err:
        apply_overrides(exp, metas, target, parse_sets([f"{key}={spelled}"]), tmp_path)
    msg = _one_line(err, key, {**EXPERIMENT_LIMITS, **TASK_LIMITS}[key])
    if key in TASK_LIMITS:
        assert msg.startswith(f"--set {key} ("), msg  # which file it was applied to
    assert not any(tmp_path.iterdir()), "nothing written for a refused override"


@pytest.mark.parametrize("key, limit", sorted({**EXPERIMENT_LIMITS, **TASK_LIMITS}.items()))
def test_every_limit_itself_is_allowed(key, limit):
    """The caps are limits, not traps: a value at the cap validates."""
    if key in TASK_LIMITS:
        data, cls = read_yaml(TASK), TaskConfig
    else:
        data, cls = yaml.safe_load(DIGITS.read_text()), ExperimentConfig
    if key == "M":  # a whole run of M=100,000 stays under the evaluations cap only with few iterations
        data.update(meta_iterations=1, finetune_iterations=1)
    node = data
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = limit
    validate(cls, data, "x")


def test_the_validator_names_the_limit_for_a_config_file(tmp_path):
    """Through ``validate`` and a file too (not only ``--set``): ``epochs: 1e12`` in YAML is the string '1e12'."""
    data = read_yaml(TASK)
    data["training"]["epochs"] = yaml.safe_load("1e12")
    assert data["training"]["epochs"] == "1e12"
    with pytest.raises(ConfigError) as err:
        validate(TaskConfig, data, "task.yaml")
    assert str(err.value) == f"task.yaml: training.epochs: Input should be less than or equal to {MAX_EPOCHS}"


@pytest.mark.parametrize("key, text, fragment", [
    ("seed", "-1", "seed: Input should be greater than or equal to 0"),
    ("seed", "2147483648", f"seed: Input should be less than or equal to {MAX_SEED}"),
    ("M", "true", "M: True is not a number"),
    ("M", "2.5", "M: Input should be a valid integer"),
    ("M", "1e400", "M: Input should be a finite number"),
    ("workers.count", "0", "workers.count: Input should be greater than or equal to 1"),
    ("workers.gpus", "1e9", "workers.gpus: Input should be less than or equal to"),
    ("workers.resources", "{accelerator: -1}", "workers.resources.accelerator: Input should be greater than"),
    ("ppo.minibatch_episodes", "1e9", f"ppo.minibatch_episodes: Input should be less than or equal to {MAX_M}"),
    ("model.lstm", "1e9", f"model.lstm: Input should be less than or equal to {MAX_MODEL_WIDTH}"),
    ("rerank.repeats", "1e9", f"rerank.repeats: Input should be less than or equal to {MAX_REPEATS}"),
    ("rerank.epochs", "1e9", f"rerank.epochs: Input should be less than or equal to {MAX_EPOCHS}"),
])
def test_other_bad_experiment_numbers_are_one_line(digits_experiment, tmp_path, key, text, fragment):
    exp, metas, target = digits_experiment
    with pytest.raises(ConfigError) as err:
        apply_overrides(exp, metas, target, parse_sets([f"{key}={text}"]), tmp_path)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_whole_run_is_capped_too(digits_experiment, tmp_path):
    """Each count under its cap, their product (the evaluations PPO asks for) over its own."""
    exp, metas, target = digits_experiment
    sets = {"M": MAX_M, "meta_iterations": MAX_ITERATIONS}
    with pytest.raises(ConfigError, match=f"evaluations is more than {MAX_EVALUATIONS:,}") as err:
        apply_overrides(exp, metas, target, sets, tmp_path)
    assert "\n" not in str(err.value)


def test_numbers_spelled_as_strings_are_read_as_numbers(digits_experiment, tmp_path):
    """``1e3`` is 1000 (YAML 1.2 would say so; PyYAML reads a string): accepted where it fits."""
    exp, metas, target = digits_experiment
    exp2, _, _ = apply_overrides(exp, metas, target, parse_sets(["M=1e1", "env_runners=1_0", "ppo.lr=1e-3"]),
                                 tmp_path)
    assert (exp2.M, exp2.env_runners, exp2.ppo.lr) == (10, 10, 0.001)


def _tasks(path):
    from rcnas.task import load_task

    exp, metas, target = load_experiment(path)
    return exp, [load_task(target), *map(load_task, metas)]


def test_run_size_of_the_digits_experiment_is_one_line_with_its_figures():
    from agents.size import run_size

    exp, tasks = _tasks(DIGITS)
    line = run_size(exp, tasks, auto_workers=4)
    assert "\n" not in line and line.startswith("run size: ")
    # 6 meta iterations x M=5 (not screened) + 20 fine-tuning iterations x M=5 screened, paced, to at most ~10
    # + hand-over 10
    assert "about 50 evaluations" in line and "= 30 over 3 tasks" in line, line
    assert "= 100 proposals, screened (surrogate, paced): at most ~10 to the proxy" in line, line
    assert "hand-over to evolution: 10" in line, line
    assert "1 teacher training" in line and "5 attacks on 359 test examples" in line, line
    # 4 workers (given) + 1 learner (the async sampler in its process) + the service + the driver
    assert "4 evaluation workers (auto" in line and "(auto: one per GPU, else per CPU) + 1 learner" in line, line
    assert "= 7 processes, 9 evaluations in flight" in line and "GiB memory estimated" in line, line
    # RLlib's env runners: one process each
    line = run_size(exp.model_copy(update={"sampler": "env_runners"}), tasks, auto_workers=4)
    assert "2 env runners + 1 learner" in line and "= 9 processes;" in line, line


def test_run_size_of_the_smoke_experiment_and_its_variants():
    from agents.size import run_size

    exp, tasks = _tasks(SMOKE)
    line = run_size(exp, tasks, auto_workers=2)
    assert "\n" not in line
    # 2 + 2 screened to 1 + hand-over 2
    assert "about 5 evaluations" in line and "2 attacks on 32 test examples" in line, line
    assert "2 evaluation workers" in line and "+ 1 learner" in line and "= 5 processes" in line, line
    assert "env runner" not in line and "4 evaluations in flight" in line, line
    line = run_size(exp.model_copy(update={"in_flight": 1}), tasks, auto_workers=2)
    assert "1 evaluations in flight" not in line and "1 evaluation in flight" in line, line
    # from a meta checkpoint: fine-tuning (and the hand-over) only, and only the target's teacher
    # (no meta-training: the surrogate has no stored evaluations to start from, so it promotes its first 2)
    assert "about 4 evaluations" in run_size(exp, tasks, meta=False, auto_workers=2)
    # a baseline searcher: n evaluations, no env runners or learner, no final comparison when switched off
    line = run_size(exp, tasks, searcher="random", n=30, final_eval=False, auto_workers=3)
    assert "about 30 evaluations" in line and "env runner" not in line and "final comparison" not in line, line
    assert "3 evaluation workers (auto" in line and "= 5 processes" in line, line
    # a fixed pool of GPU workers: counted as given, activations reported as GPU memory
    big = exp.model_copy(update={"workers": exp.workers.model_copy(update={"count": 8, "gpus": 1.0}),
                                 "rerank": exp.rerank.model_copy(update={"top_k": 5})})
    line = run_size(big, tasks)
    assert "8 evaluation workers +" in line and "GiB of GPU memory per worker" in line, line
    assert "about 10 evaluations" in line and "re-ranking 5 x 2 seeds" in line, line


def test_run_size_starts_nothing():
    """Pure arithmetic: neither Ray nor torch is imported to size a run."""
    code = ("import sys; from agents.size import run_size; from agents.config import load_experiment; "
            "from rcnas.task import load_task; exp, m, t = load_experiment('configs/experiments/smoke.yaml'); "
            "print(run_size(exp, [load_task(t), *map(load_task, m)], auto_workers=1)); "
            "print('ray' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("run size: ") and lines[1] == "False False", out.stdout


def test_run_size_counts_what_screening_promotes():
    """cifar10 screens with a surrogate, one proposal in ten promoted: meta-training's first 20 proposals reach the
    proxy while the surrogate learns, fine-tuning's surrogate starts from the meta tasks' evaluations; with
    ``meta: false`` meta-training evaluates every proposal."""
    from agents.size import run_size

    exp, tasks = _tasks(ROOT / "configs/experiments/cifar10.yaml")
    line = run_size(exp, tasks, auto_workers=8)
    assert "hand-over to evolution: 8" in line and "about 136 evaluations" in line, line
    screened = exp.model_copy(update={"handover": exp.handover.model_copy(update={"evaluations": 0})})
    line = run_size(screened, tasks, auto_workers=8)
    assert "= 1,000 proposals over 6 tasks, screened (surrogate, paced): at most ~118 to the proxy" in line, line
    assert "= 100 proposals, screened (surrogate, paced): at most ~10 to the proxy" in line, line
    assert "about 128 evaluations" in line, line
    unpaced = screened.model_copy(update={"screening": exp.screening.model_copy(update={"pace": False})})
    assert "screened (surrogate): at least ~118 to the proxy" in run_size(unpaced, tasks, auto_workers=8)
    meta_plain = screened.model_copy(update={"screening": exp.screening.model_copy(update={"meta": False})})
    line = run_size(meta_plain, tasks, auto_workers=8)
    assert "= 1,000 over 6 tasks;" in line and "about 1,010 evaluations" in line, line
