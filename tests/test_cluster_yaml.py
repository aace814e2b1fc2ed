"""cluster.yaml validates against the autoscaler schema shipped with Ray, with a comment above every key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import ROOT


def test_cluster_yaml_validates_against_rays_schema():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # the file as written
    validate_config(prepare_config(config))  # and as `ray up` sees it, defaults filled in
    # the H100 instance BENCHMARKS.md's cost model was measured on
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"] == "p5.4xlarge"
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    # token authentication on every node: the token is shipped, and both kinds of node start Ray with it
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start and "disabled" not in start


def test_every_key_has_a_comment_above_it_and_there_are_no_secrets():
    lines = (ROOT / "cluster.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_\"~][^:#]*:", line):
            assert lines[i - 1].strip().startswith("#"), f"cluster.yaml:{i + 1} has no comment above: {line}"
    text = "\n".join(lines).lower()
    assert not any(word in text for word in ("aws_secret", "password", "private_key", "token:"))


def test_a_local_ray_started_by_rcnas_keeps_token_authentication(tmp_path):
    import os
    import subprocess
    import sys

    code = ("import os; from rcnas.distributed.resources import ensure_ray; ensure_ray(num_cpus=1); "
            "print(os.environ.get('RAY_AUTH_MODE'), os.path.isfile(os.path.expanduser('~/.ray/auth_token')))")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"} | {"HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["token", "True"], out.stderr[-2000:]


def test_cluster_yaml_copies_no_venv_runs_or_data_and_tensorboard_watches_the_readme_run_folder():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert "." not in config["file_mounts"].values(), "the whole checkout (.venv, runs/, data/) would be hashed"
    # the README's cluster command writes its run folder under TensorBoard's logdir on the head
    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")  # continuation lines joined
    out = re.search(r"train\.py --experiment configs/experiments/cifar10\.yaml .*?--out (\S+)", readme)[1]
    (tb,) = [c for c in config["head_start_ray_commands"] if "tensorboard" in c]
    logdir = re.search(r"--logdir (\S+)", tb)[1]
    assert Path(out).parent == Path(logdir), (out, logdir)
    # the data comes from the user's bucket (copied once per node), never downloaded by every node's setup
    root = re.search(r"train\.py --experiment configs/experiments/cifar10\.yaml .*?--data-root (\S+)", readme)[1]
    assert root.startswith("s3://")
    assert not any("download" in c for c in config["setup_commands"])
