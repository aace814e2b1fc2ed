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
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith("g")
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_every_key_has_a_comment_above_it_and_there_are_no_secrets():
    lines = (ROOT / "cluster.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_\"~][^:#]*:", line):
            assert lines[i - 1].strip().startswith("#"), f"cluster.yaml:{i + 1} has no comment above: {line}"
    text = "\n".join(lines).lower()
    assert not any(word in text for word in ("aws_secret", "password", "private_key", "token:"))
