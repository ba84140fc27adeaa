"""The launch files in cluster/ are valid: Ray's own autoscaler validation for the cloud configs,
`bash -n` for the SLURM script, and the shape of the KubeRay RayJob manifest.

Nothing here touches the network or starts Ray: the autoscaler configs go through the same
offline steps `ray up` takes before it contacts the cloud (`prepare_config`, which merges the
provider's defaults, then `validate_config`, the JSON schema plus Ray's own consistency checks).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
AUTOSCALER_CONFIGS = ["aws.yaml", "gcp.yaml"]


@pytest.fixture(scope="module")
def ray_util():
    pytest.importorskip("jsonschema")
    return pytest.importorskip("ray.autoscaler._private.util")


def _load(name: str) -> dict:
    with open(CLUSTER / name) as f:
        return yaml.safe_load(f)


def _prepare_and_validate(util, config: dict) -> dict:
    """What `ray up` does offline: merge the provider defaults, then validate."""
    prepared = util.prepare_config(copy.deepcopy(config))
    util.validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", AUTOSCALER_CONFIGS)
def test_autoscaler_config_passes_ray_validation(ray_util, name):
    config = _load(name)
    ray_util.validate_config(copy.deepcopy(config))  # as written, without Ray's defaults
    prepared = _prepare_and_validate(ray_util, config)

    node_types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    assert head in node_types
    workers = [t for t in node_types if t != head]
    assert workers, "needs a worker node type besides the head"
    for t in workers:
        assert node_types[t]["resources"].get("CPU", 0) >= 8
        assert node_types[t]["max_workers"] >= 1
    assert prepared["max_workers"] >= 1

    setup = "\n".join(prepared["setup_commands"])
    assert "download.pytorch.org/whl/cpu" in setup, "cluster nodes should get the CPU torch"
    assert "ODEPOLICY_SPEC" in setup and "odepolicy" in setup
    assert "MUJOCO_GL=egl" in setup
    head_start = "\n".join(prepared["head_start_ray_commands"])
    worker_start = "\n".join(prepared["worker_start_ray_commands"])
    assert "ray start --head" in head_start and "--port=6379" in head_start
    assert "$RAY_HEAD_IP:6379" in worker_start


@pytest.mark.parametrize("name", AUTOSCALER_CONFIGS)
@pytest.mark.parametrize(
    "breakage",
    ["unknown_top_level_key", "max_workers_not_int", "head_type_missing", "node_no_resources"],
)
def test_broken_autoscaler_config_is_rejected(ray_util, name, breakage):
    """The validator really checks something, so the test above can fail."""
    import jsonschema

    config = _load(name)
    if breakage == "unknown_top_level_key":
        config["max_worker"] = 4  # typo of max_workers
    elif breakage == "max_workers_not_int":
        config["max_workers"] = "sixteen"
    elif breakage == "head_type_missing":
        config["head_node_type"] = "no_such_node_type"
    elif breakage == "node_no_resources":
        worker = next(t for t in config["available_node_types"] if t != config["head_node_type"])
        del config["available_node_types"][worker]["resources"]
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _prepare_and_validate(ray_util, config)


def test_slurm_script_is_valid_bash():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not available")
    script = CLUSTER / "slurm.sbatch"
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert text.startswith("#!/bin/bash")
    assert "#SBATCH --nodes=" in text
    assert "ray start --head" in text and "--block" in text
    assert "odepolicy sweep" in text and "--address" in text


def test_slurm_script_syntax_check_can_fail(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not available")
    broken = tmp_path / "broken.sbatch"
    broken.write_text((CLUSTER / "slurm.sbatch").read_text() + "\nif true; then\n")
    result = subprocess.run([bash, "-n", str(broken)], capture_output=True, text=True)
    assert result.returncode != 0


def test_kuberay_rayjob_manifest():
    with open(CLUSTER / "kuberay-rayjob.yaml") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    job = jobs[0]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["name"]

    spec = job["spec"]
    assert "odepolicy" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True

    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    head_containers = head["template"]["spec"]["containers"]
    assert head_containers and head_containers[0]["image"]

    groups = cluster["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["groupName"]
        assert group["replicas"] >= 1
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers = group["template"]["spec"]["containers"]
        assert containers and containers[0]["image"]
        resources = containers[0]["resources"]
        assert resources["requests"]["cpu"] and resources["limits"]["cpu"]

    # Any volume the head mounts from a claim must be declared in the same file.
    claims = {d["metadata"]["name"] for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    for volume in head["template"]["spec"].get("volumes", []):
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims
