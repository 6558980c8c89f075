"""A bake killed outright (SIGKILL, a lost CI runner) leaves Packer's builder running: no
cleanup of factory's or Packer's runs. The next bake cannot take that builder (another
bake of the same image may be running it); `factory prune` does, once it is older than
any bake runs (`prune.builder_hours`), with what it left; `factory status` says it is
there. And the next bake works."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from factory.local import cloud as local_cloud
from tests.conftest import REPO

FACTORY = str(Path(sys.executable).with_name("factory"))
TASK = "salmon-quant"
REGION = "us-east-1"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("packer") is None or not Path("/usr/sbin/dockerd").exists(),
    reason="the local cloud needs root, Packer, openssh-server and docker.io (make system-deps)",
)]


@pytest.fixture(scope="module")
def lc(tmp_path_factory):
    state = tmp_path_factory.mktemp("killed") / ".factory"
    cloud = local_cloud.up(state, REGION)
    try:
        yield cloud
    finally:
        local_cloud.down(state)


def factory(lc, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FACTORY_STATE_DIR=str(lc.state_dir), COLUMNS="200")
    return subprocess.run([FACTORY, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=900, check=False)


def builders_pruned(lc, *args: str) -> list[dict]:
    """What `factory prune --json ...` does (or would do) to builders."""
    proc = factory(lc, "prune", "--cloud", "local", "--json", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (region,) = json.loads(proc.stdout).values()
    return [c for c in region["changes"] if c["resource"] == "builder"]


def status_notes(lc, *args: str) -> list[str]:
    proc = factory(lc, "status", TASK, "--cloud", "local", "--json", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(proc.stdout)["tasks"]
    return row["notes"]


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read off /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def state_of(ec2, instance_id: str) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_a_killed_bakes_builder_is_removed_by_prune_and_the_next_bake_works(lc, tmp_path, request):
    ec2 = lc.clients(REGION).ec2()
    build = tmp_path / "build"
    log = build / TASK / "packer.log"
    env = dict(os.environ, FACTORY_STATE_DIR=str(lc.state_dir))
    proc = subprocess.Popen([FACTORY, "bake", TASK, "--cloud", "local", "--build-dir", str(build)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (log.exists() and "Provisioning with Ansible" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, f"Packer never reached the Ansible provisioner: {proc.communicate()}"
        time.sleep(0.1)
    below = descendants(proc.pid)
    proc.kill()  # factory first, so that nothing of it cleans up; then Packer (its own session) and Ansible
    proc.communicate()
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    live = {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}
    (builder,) = [i for r in ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": ["factory:image-hash"]}, live])["Reservations"]
                  for i in r["Instances"]]
    builder_id = builder["InstanceId"]
    (group,) = [g["GroupId"] for g in builder["SecurityGroups"] if g["GroupName"].startswith("packer_")]
    # As if it died between CreateImage and the encrypted copy: Packer's temporary AMI.
    temporary = ec2.create_image(InstanceId=builder_id, Name="packer-temporary")["ImageId"]
    snapshots = [m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[temporary])["Images"][0]["BlockDeviceMappings"] if "Ebs" in m]
    assert snapshots

    # `factory status` says so, past prune.builder_hours (0 here), and not before (6 h).
    config = tmp_path / "factory.yaml"
    config.write_text("prune:\n  builder_hours: 0\n")
    note = re.compile(rf"builder {builder_id} \(running, launched \d+\.\d h ago\) was left by a killed bake of {TASK} "
                      r"and is still paid for: `factory prune --apply` removes it")
    assert [n for n in status_notes(lc, "--config", str(config)) if note.fullmatch(n)]
    assert not [n for n in status_notes(lc) if builder_id in n]

    assert builders_pruned(lc) == []  # 6 h by default: a bake may still run it
    (planned,) = builders_pruned(lc, "--builder-hours", "0")
    assert (planned["name"], planned["action"]) == (builder_id, "delete"), planned
    assert re.search(rf"running builder of task {TASK} launched \d+\.\d h ago \(longer than prune.builder_hours, 0 h\)", planned["reason"]), planned
    assert state_of(ec2, builder_id) == "running"  # a dry run changes nothing

    (done,) = builders_pruned(lc, "--builder-hours", "0", "--apply")
    assert (done["name"], done["action"]) == (builder_id, "delete"), done
    for phrase in (f"terminated the builder {builder_id}", f"removed the AMI {temporary}", f"deleted the security group {group}"):
        assert phrase in done["reason"], done
    assert state_of(ec2, builder_id) == "terminated"
    assert ec2.describe_images(Filters=[{"Name": "image-id", "Values": [temporary]}])["Images"] == []
    assert ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": snapshots}])["Snapshots"] == []
    assert group not in {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert builders_pruned(lc, "--builder-hours", "0") == []

    # The next bake, in the same checkout, on the build host the killed one held; with every
    # `builder:` option set, so the IAM proof (tests/test_zz_iam_policy.py) sees the calls
    # Packer makes for them (the instance profile's GetInstanceProfile, the subnet's VPC).
    config = every_builder_option(lc, tmp_path)
    calls_before = len(call_log(request).read_text().splitlines())
    again = factory(lc, "bake", TASK, "--cloud", "local", "--build-dir", str(build), "--config", str(config), "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    result = json.loads(again.stdout)
    assert result["status"] == "baked"
    (launched,) = [i for r in ec2.describe_instances(Filters=[{"Name": "tag:factory:image-hash", "Values": [result["image_hash"]]}])["Reservations"]
                   for i in r["Instances"] if i["InstanceId"] != builder_id]
    assert launched["InstanceType"] == "t3.large" and launched["SubnetId"] == config_subnet(config)
    rendered = (build / TASK / "factory.auto.pkrvars.hcl").read_text()
    assert re.search(rf'kms_key_id += "{config_key(config)}"', rendered) and re.search(r'iam_instance_profile += "factory-builder"', rendered), rendered
    packer_calls = {line.split("\t", 1)[1] for line in call_log(request).read_text().splitlines()[calls_before:] if line.startswith("packer\t")}
    assert {"iam:GetInstanceProfile", "ec2:DescribeSubnets", "ec2:RunInstances", "ec2:CopyImage"} <= packer_calls, packer_calls


def call_log(request) -> Path:
    return request.config.factory_call_log


def every_builder_option(lc, tmp_path: Path) -> Path:
    """factory.yaml with every `builder:` option, its subnet, instance profile and KMS key
    made in the local cloud first (as a user's account has them)."""
    aws = lc.clients(REGION)
    subnet = aws.ec2().describe_subnets()["Subnets"][0]["SubnetId"]
    iam = aws.client("iam")
    iam.create_role(RoleName="factory-builder", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))
    iam.create_instance_profile(InstanceProfileName="factory-builder")
    iam.add_role_to_instance_profile(InstanceProfileName="factory-builder", RoleName="factory-builder")
    key = aws.client("kms").create_key(Description="factory AMIs")["KeyMetadata"]["Arn"]
    config = tmp_path / "every-builder-option.yaml"
    config.write_text("builder:\n"
                      "  instance_types: {x86_64: t3.large, arm64: t4g.large}\n"
                      f"  subnet: {subnet}\n"
                      "  ssh_interface: session_manager\n"  # not on the local cloud: its build host is reached on loopback
                      "  public_ip: false\n"
                      "  instance_profile: factory-builder\n"
                      f"  kms_key: {key}\n")
    return config


def config_subnet(config: Path) -> str:
    return re.search(r"subnet: (\S+)", config.read_text())[1]


def config_key(config: Path) -> str:
    return re.search(r"kms_key: (\S+)", config.read_text())[1]
