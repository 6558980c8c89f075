"""The arm64 chain on the local cloud, end to end: bake (real Packer and Ansible), register, a job on the queue.

An arm64 task's compute environment takes `default_arm64` (Batch's Graviton choice, which
moto alone refused: "Instance type default_arm64 does not exist"), so this is the whole
path a Graviton user takes, rehearsed: the AMI is arm64, the environment and queue are
registered, and a job submitted to the queue runs on a Graviton instance launched from the
task's launch template (docs/local-cloud.md, "Batch jobs").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docker_fixtures import IMAGE, requires_docker

from factory.local import cloud as local_cloud
from factory.local.aws import submit
from tests.conftest import SPECS

pytestmark = [
    pytest.mark.slow,
    requires_docker,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("packer") is None or not Path("/usr/sbin/dockerd").exists(),
        reason="the local cloud needs root, Packer, openssh-server and docker.io (make system-deps)",
    ),
]
FACTORY = str(Path(sys.executable).with_name("factory"))
TASK = "arm-quant"


def arm64_spec(specs_dir: Path) -> None:
    """salmon-quant as a Graviton task: architecture arm64, Batch's own choice of arm64 types."""
    specs_dir.mkdir()
    shutil.copytree(SPECS / "benchmarks", specs_dir / "benchmarks")
    text = (SPECS / "salmon-quant.yaml").read_text()
    for old, new in (("name: salmon-quant", f"name: {TASK}"), ("architecture: x86_64", "architecture: arm64"),
                     ("instance_types: [c6i.4xlarge, c5.4xlarge]", "instance_types: [default_arm64]")):
        assert old in text, old
        text = text.replace(old, new)
    (specs_dir / f"{TASK}.yaml").write_text(text)


def test_an_arm64_task_bakes_registers_and_runs_a_job_on_the_local_cloud(tmp_path, docker_engine, monkeypatch):
    specs = tmp_path / "specs"
    arm64_spec(specs)
    state = tmp_path / ".factory"
    if docker_engine.host:  # the local cloud runs its jobs on the engine DOCKER_HOST names
        monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    lc = local_cloud.up(state, "us-east-1")
    try:
        env = dict(os.environ, FACTORY_STATE_DIR=str(state))
        proc = subprocess.run([FACTORY, "bake", TASK, "--cloud", "local", "--specs-dir", str(specs), "--build-dir", str(tmp_path / "build"), "--json"],
                              capture_output=True, text=True, env=env, timeout=1800, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        baked = json.loads(proc.stdout)
        assert baked["baked"] is True and baked["registered"] is True
        clients = lc.clients("us-east-1")
        image = clients.ec2().describe_images(ImageIds=[baked["ami_id"]])["Images"][0]
        assert image["Architecture"] == "arm64"
        ce = clients.batch().describe_compute_environments(computeEnvironments=[baked["compute_environment"]])["computeEnvironments"][0]
        assert ce["computeResources"]["instanceTypes"] == ["default_arm64"]
        job = submit.submit(clients, baked["job_queue"], IMAGE, ["sh", "-c", "echo on arm64"])
        done = submit.wait(clients, job, timeout=60)
        assert done["status"] == "SUCCEEDED", done
        host = done["container"]["containerInstanceArn"].rsplit("/", 1)[1]
        instance = clients.ec2().describe_instances(InstanceIds=[host])["Reservations"][0]["Instances"][0]
        assert instance["InstanceType"].startswith("m6g.") and instance["ImageId"] == baked["ami_id"]
    finally:
        local_cloud.down(state)
