"""ray_cluster.yaml loads and passes the Ray cluster launcher's own validation."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


@pytest.fixture
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_launcher_accepts_the_config(config):
    # What `ray up` does before touching the cloud: fill defaults, then validate
    # against the launcher's JSON schema and its cross-field rules.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_head_does_no_inference_and_gpu_workers_autoscale(config):
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    workers = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert workers and all(w["min_workers"] < w["max_workers"] for w in workers)
    assert any(w["node_config"]["InstanceType"].startswith(("g", "p")) for w in workers)


def test_nodes_install_the_project_and_mount_shared_storage(config):
    setup = "\n".join(config["setup_commands"])
    assert "torch==2.13.0" in setup and "pip install -e ~/fcn-remote-sensing" in setup
    assert "/mnt/shared" in setup
    assert config["file_mounts"]["~/fcn-remote-sensing"] == "."
    assert "--dashboard-host=127.0.0.1" in config["head_start_ray_commands"][-1]
    # Token authentication on every node, with one token shipped to all of them.
    for cmd in (config["head_start_ray_commands"][-1], config["worker_start_ray_commands"][-1]):
        assert cmd.startswith("RAY_AUTH_MODE=token ray start")
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("instance_type", "g5.2xlarge", r"'instance_type' was unexpected"),
        ("max_workers", "8", r"'8' is not of type 'integer'"),
    ],
)
def test_validation_catches_a_broken_config(config, key, value, message):
    # The intact config validates, so the error below is the edit's doing.
    validate_config(prepare_config(copy.deepcopy(config)))
    config["available_node_types"]["gpu_worker"][key] = value
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate_config(prepare_config(config))


def test_the_s3_variant_needs_no_shared_file_system():
    config = yaml.safe_load(CONFIG.with_name("ray_cluster_s3.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    setup = "\n".join(config["setup_commands"])
    assert "/mnt/shared" not in setup and "mount" not in setup
    assert "pip install -e ~/fcn-remote-sensing" in setup
    # Every node gets its S3 credentials from an instance role, none from a file.
    for node in config["available_node_types"].values():
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert not any("aws" in str(k).lower() for k in config["file_mounts"])
