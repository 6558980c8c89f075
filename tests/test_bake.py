"""`factory bake`: the content hash, AMI reuse, and the full chain on the local cloud.

The chain tests share one local cloud (moto's server, the throwaway build host with sshd
and a real dockerd, the installer mirror) for the module, and run the real CLI: real
Packer, real ansible-playbook, real boto3 over HTTP to moto.
"""

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

from factory import image_identity, render
from factory.bake import bake_task
from factory.bake.checks import ansible_playbook_version, check_ansible_can_manage
from factory.bake.images import ensure_tagged, find_image
from factory.bake.many import REGISTER_FAILED
from factory.cloud import Cloud
from factory.local import cloud as local_cloud
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # most of its tests bake with real Packer and Ansible

FACTORY = str(Path(sys.executable).with_name("factory"))
TASK = "salmon-quant"


# -- the content hash ----------------------------------------------------------------


@pytest.fixture
def content(tmp_path):
    (tmp_path / "packer").mkdir()
    (tmp_path / "packer" / "factory.pkr.hcl").write_text('source "amazon-ebs" "factory" {}\n')
    role = tmp_path / "ansible" / "roles" / "docker_storage" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text("- name: Do it\n  ansible.builtin.debug:\n")
    (tmp_path / "ansible" / "roles" / "__pycache__").mkdir()
    (tmp_path / "ansible" / "roles" / "__pycache__" / "x.pyc").write_bytes(b"noise")
    return tmp_path


VARS = {
    "task": "salmon-quant", "region": "us-east-1", "base_ami": "ami-1", "volume_gib": 124,
    "docker_basesize_gib": 0, "awscli_prefix": "/home/ec2-user/miniconda",
    "miniconda_installer_url": "http://127.0.0.1:4000/x.sh", "miniconda_installer_sha256": "a" * 64,
    "custom_endpoint_ec2": "http://127.0.0.1:5000", "ssh_port": 2222, "ssh_private_key_file": "/tmp/k",
    "ssh_keypair_name": "k", "builder_cidrs": ["127.0.0.1/32"], "tags": {"factory:task": "salmon-quant"},
    "block_devices": [{"device_name": "/dev/xvda", "volume_gib": 30}],
}


def _hash(content: Path, base: str = "ami-1", **changes) -> str:
    files = render.content_files(content / "packer", content / "ansible")
    return image_identity.image_hash(base, files, {**VARS, **changes})


def test_hash_is_stable_and_skips_caches(content):
    files = render.content_files(content / "packer", content / "ansible")
    assert [name for name, _ in files] == ["ansible/roles/docker_storage/tasks/main.yml", "packer/factory.pkr.hcl"]
    assert _hash(content) == _hash(content)
    assert len(_hash(content)) == 64


def test_what_is_hashed_is_exactly_what_render_ships(content, tmp_path):
    """One file list for both: a role's data file counts, notes beside the templates do not."""
    (content / "ansible" / "roles" / "seed.log").write_text("shipped, so hashed")
    (content / "packer" / "README.md").write_text("not shipped, so not hashed")
    names = [name for name, _ in render.content_files(content / "packer", content / "ansible")]
    assert "ansible/roles/seed.log" in names and "packer/README.md" not in names
    shipped = render.content_files()
    from factory.spec import find_spec

    rendered = render.render(find_spec(TASK, REPO / "specs"), (124, 0), "ami-0123456789abcdef0", tmp_path / "out",
                             render.BuildTarget.aws(builder_cidrs=["203.0.113.7/32"]), packer_version=(1, 6, 6))
    assert sorted(n.removeprefix("packer/") for n, _ in shipped) == sorted(
        f for f in rendered.files if f != render.VARIABLES_FILE
    )


@pytest.mark.parametrize("change", [
    {"custom_endpoint_ec2": "http://127.0.0.1:6000"},
    {"ssh_port": 3333},
    {"ssh_private_key_file": "/elsewhere/k"},
    {"miniconda_installer_url": "http://127.0.0.1:4001/x.sh"},
    {"task": "another-task"},
    {"tags": {"factory:task": "another-task", "factory:spec-hash": "x"}},
])
def test_what_varies_per_run_or_only_labels_does_not_change_the_hash(content, change):
    assert _hash(content, **change) == _hash(content)


@pytest.mark.parametrize("change", [
    {"volume_gib": 125},
    {"docker_basesize_gib": 50},
    {"awscli_prefix": "/opt/conda"},
    {"miniconda_installer_sha256": "b" * 64},
    {"block_devices": [{"device_name": "/dev/xvda", "volume_gib": 124}]},
])
def test_what_goes_into_the_image_changes_the_hash(content, change):
    assert _hash(content, **change) != _hash(content)


def test_base_ami_role_and_template_change_the_hash(content):
    before = _hash(content)
    assert _hash(content, base="ami-2") != before
    role = content / "ansible" / "roles" / "docker_storage" / "tasks" / "main.yml"
    role.write_text(role.read_text() + "  changed_when: false\n")
    after_role = _hash(content)
    assert after_role != before
    (content / "packer" / "factory.pkr.hcl").write_text("# a comment\n")
    assert _hash(content) != after_role


# -- the AMI is born tagged; an untagged one is not left behind --------------------


WANTED = {"factory:image-hash": "h" * 64, "factory:task": TASK}


@pytest.fixture
def moto_ec2(moto):
    """boto3's EC2 client over HTTP to moto's server, and a maker of AMIs with given tags."""
    import boto3

    moto.reset()
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    base = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-ecs-hvm-*-x86_64-ebs"]}])["Images"][0]

    def make_ami(tags: dict[str, str], name: str) -> str:
        instance = ec2.run_instances(ImageId=base["ImageId"], MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        ami = ec2.create_image(InstanceId=instance, Name=name)["ImageId"]
        if tags:
            ec2.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        return ami

    return ec2, make_ami


def _operations(ec2) -> list[str]:
    ops: list[str] = []
    ec2.meta.events.register("before-call", lambda model, **_: ops.append(model.name))
    return ops


def test_an_ami_born_with_its_tags_is_not_tagged_again(moto_ec2):
    ec2, make_ami = moto_ec2
    ami = make_ami(WANTED, "born-tagged")
    ops = _operations(ec2)
    assert ensure_tagged(ec2, ami, WANTED) is None
    assert ops == ["DescribeImages"]


def test_missing_tags_are_added_to_the_ami_and_its_snapshots(moto_ec2):
    ec2, make_ami = moto_ec2
    ami = make_ami({"factory:task": TASK}, "half-tagged")
    assert "added missing tags" in ensure_tagged(ec2, ami, WANTED)
    image = ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert {t["Key"]: t["Value"] for t in image["Tags"]} == WANTED
    snapshots = [b["Ebs"]["SnapshotId"] for b in image["BlockDeviceMappings"] if "Ebs" in b]
    assert snapshots
    for snap in ec2.describe_snapshots(SnapshotIds=snapshots)["Snapshots"]:
        assert {t["Key"]: t["Value"] for t in snap.get("Tags", [])}.items() >= WANTED.items()


def test_find_image_takes_the_newest_available_ami_with_the_hash(moto_ec2):
    import time as _time

    ec2, make_ami = moto_ec2
    make_ami({"factory:image-hash": "other"}, "other-hash")
    older = make_ami(WANTED, "older")
    _time.sleep(1.1)  # CreationDate has one-second resolution
    newer = make_ami(WANTED, "newer")
    assert find_image(ec2, WANTED["factory:image-hash"])["ImageId"] == newer != older
    assert find_image(ec2, "z" * 64) is None


def test_an_ami_that_cannot_be_tagged_is_removed_and_named(moto, moto_ec2):
    from factory.errors import FactoryError
    from factory.local.aws import faults

    ec2, make_ami = moto_ec2
    ami = make_ami({"factory:task": TASK}, "untaggable")
    snapshots = [b["Ebs"]["SnapshotId"] for b in ec2.describe_images(ImageIds=[ami])["Images"][0]["BlockDeviceMappings"]]
    faults.arm(moto.endpoint, faults.Fault("ec2:CreateTags", "error", code="UnauthorizedOperation"))
    with pytest.raises(FactoryError) as exc:
        ensure_tagged(ec2, ami, WANTED)
    assert "tagging " + ami in exc.value.message and "UnauthorizedOperation" in exc.value.message
    assert f"deregistered {ami} and its snapshots {snapshots[0]}" in exc.value.message
    assert ec2.describe_images(Owners=["self"], Filters=[{"Name": "image-id", "Values": [ami]}])["Images"] == []
    left = {s["SnapshotId"] for p in ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"]) for s in p["Snapshots"]}
    assert not set(snapshots) & left


def test_what_packer_left_of_this_build_is_removed_and_nothing_else(moto, moto_ec2):
    """packer_leftovers.sweep on the local cloud's server: this build's stopped builder, its
    untagged copy (named as the builder), the snapshot of its deregistered temporary AMI and
    its security group (kept by AWS while the builder was stopped) go; a builder from before,
    a finished AMI with the hash, and another bake's untagged AMI stay."""
    from factory import packer_leftovers

    ec2, make_ami = moto_ec2
    base = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-ecs-hvm-*-x86_64-ebs"]}])["Images"][0]["ImageId"]
    name = f"factory-{TASK}-20261130000000"
    group = ec2.create_security_group(GroupName="packer_6b0dcbb0", Description="Temporary group for Packer")["GroupId"]

    def builder(label: str, groups: tuple[str, ...] = ()) -> str:
        tags = [{"Key": "factory:image-hash", "Value": "h"}, {"Key": "Name", "Value": label}]
        return ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, SecurityGroupIds=list(groups),
                                 TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"][0]["InstanceId"]

    earlier = builder("factory-salmon-quant-20261129000000")  # another run's, still there
    before = set(packer_leftovers.builders(ec2, "h"))
    finished = make_ami({"factory:image-hash": "h"}, "finished")
    others = make_ami({}, "someone-else")
    mine = builder(name, (group,))
    ec2.stop_instances(InstanceIds=[mine])
    temporary = ec2.create_image(InstanceId=mine, Name="Da57uZL")["ImageId"]
    copy = ec2.copy_image(SourceImageId=temporary, SourceRegion="us-east-1", Name=name, Encrypted=True)["ImageId"]
    orphan = ec2.describe_images(ImageIds=[temporary])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    ec2.deregister_image(ImageId=temporary)  # ... and its snapshot left, as when DeleteSnapshot failed

    done = packer_leftovers.sweep(ec2, "h", before)
    assert done == [f"terminated the builder {mine} Packer left stopped",
                    f"removed the AMI {copy} Packer left without its tags, with its snapshots",
                    f"deleted the snapshot {orphan} Packer left",
                    f"deleted the security group {group} Packer made"]
    assert {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]} == {finished, others}
    assert group not in {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    states = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert states[mine] == "terminated" and states[earlier] == "running"
    assert packer_leftovers.sweep(ec2, "h", before) == []  # nothing left to do


def test_stray_builders_are_those_not_terminated_and_older_than_any_bake(moto_ec2):
    """What `factory prune` takes for a killed bake's builder: tagged with a content hash,
    pending to stopped, launched longer ago than `older_than`; oldest first."""
    from datetime import timedelta

    from factory import packer_leftovers

    ec2, _ = moto_ec2
    base = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-ecs-hvm-*-x86_64-ebs"]}])["Images"][0]["ImageId"]

    def instance(tags: dict[str, str]) -> str:
        spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}] if tags else []
        return ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, TagSpecifications=spec)["Instances"][0]["InstanceId"]

    running = instance({"factory:image-hash": "a", "factory:task": TASK})
    stopped = instance({"factory:image-hash": "b", "factory:task": "star-align"})
    ec2.stop_instances(InstanceIds=[stopped])
    gone = instance({"factory:image-hash": "c"})
    ec2.terminate_instances(InstanceIds=[gone])
    instance({"factory:task": TASK})  # a Batch host of the task, not a builder
    instance({})
    launched = {i["InstanceId"]: i["LaunchTime"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    later = max(launched.values()) + timedelta(hours=7)
    found = packer_leftovers.stray_builders(ec2, timedelta(hours=6), now=later)
    assert sorted(b.instance_id for b in found) == sorted([running, stopped])
    assert {b.instance_id: (b.state, b.digest, b.task) for b in found} == {running: ("running", "a", TASK), stopped: ("stopped", "b", "star-align")}
    assert packer_leftovers.stray_builders(ec2, timedelta(hours=8), now=later) == []  # a bake may still run them
    assert packer_leftovers.stray_builders(ec2, timedelta(hours=6)) == []  # launched just now


def test_the_rendered_tags_carry_the_image_hash_and_the_hash_ignores_them(tmp_path):
    """with_tags rewrites the variables file Packer reads; the hash does not cover `tags`."""
    import hcl2

    from factory import render as render_mod

    vf = tmp_path / render_mod.VARIABLES_FILE
    vf.write_text(render_mod.to_pkrvars(VARS))
    rr = render_mod.RenderResult(task=TASK, out_dir=tmp_path, files=(), variables=dict(VARS), variables_file=vf,
                                 manifest=tmp_path / "m.json", bake_check_report=tmp_path / "b.json",
                                 packer_version=None, modern_packer=True)
    tagged = render_mod.with_tags(rr, {"factory:image-hash": "h" * 64})
    with open(vf) as f:
        written = hcl2.load(f)
    written_tags = {k.strip('"'): v.strip('"') for k, v in written["tags"].items()}
    assert written_tags == {"factory:task": TASK, "factory:image-hash": "h" * 64}
    assert tagged.variables["tags"] == written_tags and rr.variables["tags"] == VARS["tags"]
    assert image_identity.image_variables(tagged.variables) == image_identity.image_variables(rr.variables)


# -- the CLI's input checks (no cloud needed) ----------------------------------------


def run(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([FACTORY, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout, check=False)


@pytest.mark.parametrize("args, message", [
    (["bake"], "name one TASK or pass --all"),
    (["bake", TASK, "--all"], "name one TASK or pass --all"),
    (["bake", TASK, "--cloud", "gcp"], "--cloud must be one of aws, local"),
    (["bake", "no-such-task"], "no spec for task 'no-such-task'"),
])
def test_bad_input_is_a_usage_error(args, message):
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module", autouse=True)
def unanswered_bake(tmp_path_factory):
    """`factory bake --cloud aws` against an endpoint that never answers, started as the
    module starts: it waits about a minute on its timeouts using no CPU, beside the module's
    other tests, rather than alone at its own test. `result()` waits for it: (the process,
    its stdout, its stderr, the seconds it took)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # accepts connections (the kernel does) and never answers
    port = listener.getsockname()[1]
    env = dict(
        os.environ, AWS_ACCESS_KEY_ID="AKIAEXAMPLEEXAMPLE", AWS_SECRET_ACCESS_KEY="not-a-real-secret",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", FACTORY_BUILDER_CIDR="203.0.113.7/32",
    )
    env.pop("AWS_PROFILE", None)
    build = tmp_path_factory.mktemp("unanswered") / "build"
    done: dict = {}
    t = time.monotonic()
    proc = subprocess.Popen([FACTORY, "bake", TASK, "--cloud", "aws", "--build-dir", str(build)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait() -> None:
        try:
            done["out"], done["err"] = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            done["out"], done["err"] = proc.communicate()
        done["seconds"] = time.monotonic() - t

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()

    class Unanswered:
        @staticmethod
        def result():
            waiter.join()
            return proc, done["out"], done["err"], done["seconds"]

    try:
        yield Unanswered
    finally:
        if proc.poll() is None:  # a run that did not reach its test (-k): not waited for
            proc.kill()
        waiter.join()
        listener.close()


# -- the full chain on the local cloud -----------------------------------------------

needs_local_cloud = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("packer") is None or not Path("/usr/sbin/dockerd").exists(),
    reason="the local cloud needs root, Packer, openssh-server and docker.io (make system-deps)",
)


@pytest.fixture(scope="module")
def cloud_env(tmp_path_factory):
    """One local cloud for the module, found by every `factory` call through FACTORY_STATE_DIR."""
    work = tmp_path_factory.mktemp("bake")
    state = work / ".factory"
    lc = local_cloud.up(state, "us-east-1")
    env = dict(os.environ, FACTORY_STATE_DIR=str(state))
    try:
        yield {"env": env, "cloud": lc, "build": work / "build", "state": state}
    finally:
        local_cloud.down(state)


def bake_cli(cloud_env, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run("bake", *args, "--cloud", "local", "--build-dir", str(cloud_env["build"]), env=env or cloud_env["env"])


def ec2_of(cloud_env):
    return cloud_env["cloud"].clients("us-east-1").ec2()


def task_images(ec2) -> list[dict]:
    return ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:factory:task", "Values": [TASK]}])["Images"]


@pytest.fixture(scope="module")
def first_bake(cloud_env):
    proc = bake_cli(cloud_env, TASK, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@needs_local_cloud
def test_full_chain_bakes_and_tags_the_ami(cloud_env, first_bake):
    r = first_bake
    for key in ("task", "ami_id", "region", "base_ami", "spec_hash", "image_hash", "baked", "volume_gib"):
        assert key in r
    assert r["task"] == TASK and r["baked"] is True and r["status"] == "baked"
    assert r["ami_id"].startswith("ami-") and r["base_ami"].startswith("ami-")
    image = ec2_of(cloud_env).describe_images(ImageIds=[r["ami_id"]])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert image["State"] == "available"
    assert tags["factory:task"] == TASK
    assert tags["factory:spec-hash"] == r["spec_hash"]
    assert tags["factory:image-hash"] == r["image_hash"]
    assert tags["factory:base-ami"] == r["base_ami"]
    assert tags["factory:version"]
    assert tags["Name"].startswith(f"factory-{TASK}-")
    # born tagged: Packer was given the content hash, and tagged the snapshot with it too
    import hcl2

    with open(Path(r["build_dir"]) / "factory.auto.pkrvars.hcl") as f:
        rendered_tags = {k.strip('"'): v.strip('"') for k, v in hcl2.load(f)["tags"].items()}
    assert rendered_tags["factory:image-hash"] == r["image_hash"]
    ec2 = ec2_of(cloud_env)
    for snap in [b["Ebs"]["SnapshotId"] for b in image["BlockDeviceMappings"] if "Ebs" in b]:
        snap_tags = {t["Key"]: t["Value"] for t in ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0].get("Tags", [])}
        assert snap_tags.get("factory:image-hash") == r["image_hash"]
    assert "added missing tags" not in (r.get("note") or "")
    # ... and registered, as moto holds it: the launch template's default version runs the
    # AMI on the sized volume, the environment pins that version, the queue stands in front.
    lt = r["launch_template"]
    version = ec2.describe_launch_template_versions(LaunchTemplateName=lt["name"], Versions=["$Default"])["LaunchTemplateVersions"][0]
    assert version["VersionNumber"] == lt["version"] and version["LaunchTemplateData"]["ImageId"] == r["ami_id"]
    assert version["LaunchTemplateData"]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == r["volume_gib"]
    batch = cloud_env["cloud"].clients("us-east-1").batch()
    ce = batch.describe_compute_environments(computeEnvironments=[r["compute_environment"]])["computeEnvironments"][0]
    assert ce["computeResources"]["launchTemplate"]["version"] == str(lt["version"]) and ce["state"] == "ENABLED"
    assert ":role/aws-service-role/batch.amazonaws.com/" in ce["serviceRole"]  # as on AWS: the in-place path
    queue = batch.describe_job_queues(jobQueues=[r["job_queue"]])["jobQueues"][0]
    assert queue["state"] == "ENABLED" and [o["computeEnvironment"] for o in queue["computeEnvironmentOrder"]] == [ce["computeEnvironmentArn"]]
    log = Path(r["log"]).read_text()
    assert "testing" not in log.replace("****", "")  # moto's dummy secret key is masked too


@needs_local_cloud
def test_the_roles_wrote_into_the_throwaway_root(cloud_env, first_bake):
    host = cloud_env["cloud"].host
    daemon = host.path("/etc/docker/daemon.json")
    assert daemon.is_file(), "the docker_storage role writes Docker's daemon.json in the throwaway root"
    assert json.loads(daemon.read_text())["data-root"]
    # The machine's own Docker config is not what the role wrote: the role wrote into the throwaway root.
    assert not Path("/etc/docker/daemon.json").exists() or Path("/etc/docker/daemon.json").read_text() != daemon.read_text()
    prefix = "/home/ec2-user/miniconda"
    aws = host.run(f"{prefix}/bin/aws", "--version")
    assert aws.stdout.startswith("aws-cli/") or aws.stderr.startswith("aws-cli/")
    assert not Path(prefix).exists(), "nothing may be installed on this machine itself"


@needs_local_cloud
def test_the_container_check_reported(cloud_env, first_bake):
    """The roles' container check ran on the build host and wrote its report there."""
    report_file = cloud_env["cloud"].host.path("/var/lib/factory/bake-check.json")
    assert report_file.is_file()
    report = json.loads(report_file.read_text())
    assert report["container_ran"] is True and report["space_ok"] is True and report["aws_ok"] is True
    assert report["aws_version"].startswith("aws-cli/")
    # The check's minimum is the sized volume the builder carries (the rendered volume_gib:
    # the task's volume when the AMI carries it, else the root the launch template grows).
    import hcl2

    with open(Path(first_bake["build_dir"]) / "factory.auto.pkrvars.hcl") as f:
        rendered = hcl2.load(f)
    assert int(report["min_gib"]) == int(rendered["volume_gib"])
    assert float(report["size_gib"]) >= int(rendered["volume_gib"])
    assert "Ansible: bake_check" in Path(first_bake["log"]).read_text() or "bake_check :" in Path(first_bake["log"]).read_text()


@needs_local_cloud
def test_the_baked_host_is_generalized(cloud_env, first_bake):
    """What the bake left on the build host (what the AMI is made of) is no one instance's:
    no SSH host key, no authorized key (the local key pair's included), an empty machine
    id, no ECS agent state or log, no cloud-init instance state, no journal, and a stopped
    Docker; generalize is the play's last role. The host takes no new login until it boots
    as a new instance of the AMI, which takes one again."""
    host = cloud_env["cloud"].host

    def gone(pattern: str) -> bool:
        return host.run("sh", "-c", f"ls -d {pattern} 2>/dev/null", check=False).stdout.strip() == ""

    assert gone("/etc/ssh/ssh_host_*")
    assert gone("/root/.ssh/authorized_keys") and gone("/home/*/.ssh/authorized_keys")
    assert host.run("stat", "-c", "%s", "/etc/machine-id").stdout.strip() == "0"
    assert gone("/var/lib/ecs/data/*") and gone("/var/log/ecs/*")
    assert gone("/var/lib/cloud/*") and gone("/var/log/cloud-init.log")
    assert gone("/var/log/journal/*")
    assert host.run("docker", "info", check=False).returncode != 0, "Docker is stopped"
    log = Path(first_bake["log"]).read_text()
    assert "generalize : Remove the host keys and the authorized keys in one step" in log
    roles = re.findall(r"TASK \[(\w+) : ", log)
    assert roles[-1] == "generalize" and roles.index("generalize") > max(i for i, r in enumerate(roles) if r != "generalize"), roles
    # no new login into what will be the AMI; a new instance of it takes one again
    assert subprocess.run(host.ssh_args() + ["true"], capture_output=True, timeout=60).returncode != 0
    host.boot()
    assert subprocess.run(host.ssh_args() + ["true"], capture_output=True, timeout=60).returncode == 0


@needs_local_cloud
def test_the_builder_has_four_gib(cloud_env, first_bake):
    """The builder Packer launched (in moto) is a t3.medium (4 GiB), not a t3.micro (1 GiB),
    on which conda's solve is documented to be OOM-killed."""
    ec2 = ec2_of(cloud_env)
    builders = [i for r in ec2.describe_instances(Filters=[{"Name": "tag:factory:task", "Values": [TASK]}])["Reservations"]
                for i in r["Instances"]]
    assert builders and {i["InstanceType"] for i in builders} == {"t3.medium"}


@needs_local_cloud
def test_a_builder_with_too_little_memory_is_refused_before_packer(cloud_env, first_bake, tmp_path):
    config = tmp_path / "factory.yaml"
    config.write_text("builder:\n  instance_types: {x86_64: t3.micro}\n")
    ec2 = ec2_of(cloud_env)
    groups_before = len(ec2.describe_security_groups()["SecurityGroups"])
    proc = bake_cli(cloud_env, TASK, "--force", "--config", str(config))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{config}: builder.instance_types.x86_64: t3.micro has 1 GiB of memory" in proc.stderr, proc.stderr
    assert "pick t3.medium or larger" in proc.stderr
    assert len(ec2.describe_security_groups()["SecurityGroups"]) == groups_before
    config.write_text("builder:\n  instance_types: {x86_64: t3.nosuchsize}\n")
    proc = bake_cli(cloud_env, TASK, "--force", "--config", str(config))
    assert proc.returncode == 1 and "t3.nosuchsize is not an instance type this region offers" in proc.stderr, proc.stderr


@needs_local_cloud
def test_second_bake_reuses_without_packer(cloud_env, first_bake, tmp_path):
    log = Path(first_bake["log"])
    mtime = log.stat().st_mtime_ns
    # A Packer that records how it is called: a reuse may ask its version, never build.
    calls = tmp_path / "packer-calls.txt"
    spy = tmp_path / "packer"
    spy.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {shutil.which("packer")} "$@"\n')
    spy.chmod(0o755)
    env = dict(cloud_env["env"], FACTORY_PACKER=str(spy))
    proc = bake_cli(cloud_env, TASK, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["baked"] is False and r["status"] == "reused"
    assert r["ami_id"] == first_bake["ami_id"]
    assert r["image_hash"] == first_bake["image_hash"]
    assert "reused" in proc.stderr
    assert log.stat().st_mtime_ns == mtime
    human = bake_cli(cloud_env, TASK, env=env)
    assert human.returncode == 0 and "reused" in human.stdout and "--force rebakes" in human.stdout
    called = calls.read_text().splitlines() if calls.exists() else []
    assert called and not [c for c in called if c.split()[0] in ("build", "validate", "init")], called
    # The base comes from the lock the first bake wrote (the local cloud's, in its state
    # folder): an unchanged bake makes no SSM call at all (without its registration, which
    # reads the task's own parameter).
    assert "al2023-x86_64" in (cloud_env["state"] / "factory.lock").read_text()
    cloud_env["cloud"].moto.calls(clear=True)
    quiet = bake_cli(cloud_env, TASK, "--no-register", "--json", env=env)
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["ami_id"] == first_bake["ami_id"], quiet.stderr
    made = cloud_env["cloud"].moto.calls()
    assert made and not [c for c in made if c.startswith("ssm:")], made
    assert made.count("ec2:DescribeImages") <= 2, made  # the locked base checked, factory's images read: once each


@needs_local_cloud
def test_a_bake_distributes_its_ami_and_registers_the_copies(cloud_env, first_bake, tmp_path):
    """The rehearsal of `distribute:` on the module's one bake (reused, no Packer): the AMI
    copied to two more regions with each region's key and registered there; the second
    account (copy_to) is tests/test_distribute.py's, whose AMIs need a customer key at home."""
    for region in ("us-west-2", "eu-west-1"):
        kms = cloud_env["cloud"].clients(region).client("kms")
        kms.create_alias(AliasName="alias/factory-ami", TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
    config = tmp_path / "factory.yaml"
    config.write_text("distribute:\n  regions: [us-west-2, eu-west-1]\n"
                      "  kms_keys: {us-west-2: alias/factory-ami, eu-west-1: alias/factory-ami}\n")
    proc = bake_cli(cloud_env, TASK, "--config", str(config), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(proc.stdout)
    assert r["status"] == "reused" and r["ami_id"] == first_bake["ami_id"]
    copies = {c["region"]: c["ami_id"] for c in r["copies"]}
    assert set(copies) == {"us-east-1", "us-west-2", "eu-west-1"} and copies["us-east-1"] == first_bake["ami_id"]
    assert "registered in us-west-2" in r["note"] and "registered in eu-west-1" in r["note"]
    for region in ("us-west-2", "eu-west-1"):
        clients = cloud_env["cloud"].clients(region)
        image = clients.ec2().describe_images(ImageIds=[copies[region]])["Images"][0]
        assert {t["Key"]: t["Value"] for t in image["Tags"]}["factory:image-hash"] == first_bake["image_hash"]
        assert clients.ssm().get_parameter(Name=f"/factory/{TASK}/ami-id")["Parameter"]["Value"] == copies[region]
    shared = bake_cli(cloud_env, TASK, "--config", str(config), "--json")  # nothing left to do: found, not copied again
    assert shared.returncode == 0 and {c["status"] for c in json.loads(shared.stdout)["copies"]} == {"source", "found"}
    config.write_text(config.read_text() + '  share_with: ["111122223333"]\n')
    refused = bake_cli(cloud_env, TASK, "--config", str(config))
    assert refused.returncode == 1 and "AWS cannot share AMIs encrypted with aws/ebs" in refused.stderr, refused.stderr
    config.write_text("distribute:\n  regions: [eu-west-1]\n  kms_keys: {eu-west-1: alias/nope}\n")
    missing = bake_cli(cloud_env, TASK, "--config", str(config))  # read before any instance starts
    assert missing.returncode == 1 and f"{config}: distribute.kms_keys.eu-west-1: alias/nope is not a KMS key in eu-west-1" in missing.stderr, missing.stderr
    # a target region without a default VPC and without distribute.networks there: refused before any instance starts
    south = cloud_env["cloud"].clients("ap-southeast-2")
    kms = south.client("kms")
    kms.create_alias(AliasName="alias/factory-ami", TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
    [vpc] = south.ec2().describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    for subnet in south.ec2().describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])["Subnets"]:
        south.ec2().delete_subnet(SubnetId=subnet["SubnetId"])
    for gateway in south.ec2().describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc["VpcId"]]}])["InternetGateways"]:
        south.ec2().detach_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"], VpcId=vpc["VpcId"])
        south.ec2().delete_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"])
    south.ec2().delete_vpc(VpcId=vpc["VpcId"])
    config.write_text("distribute:\n  regions: [ap-southeast-2]\n  kms_keys: {ap-southeast-2: alias/factory-ami}\n")
    novpc = bake_cli(cloud_env, TASK, "--config", str(config), "--force")  # --force: it would run Packer, were it not refused first
    assert novpc.returncode == 1 and "Traceback" not in novpc.stderr
    assert f"{config}: distribute.networks: ap-southeast-2 has no default VPC" in novpc.stderr, novpc.stderr
    assert "packer build" not in novpc.stderr and not south.ec2().describe_images(Owners=["self"])["Images"]


@needs_local_cloud
def test_missing_packer_is_a_clear_error(cloud_env, first_bake):
    env = dict(cloud_env["env"], FACTORY_PACKER="/nonexistent/packer")
    proc = bake_cli(cloud_env, TASK, "--force", env=env)
    assert proc.returncode == 1
    assert "apt-get install packer" in proc.stderr and "Traceback" not in proc.stderr


@needs_local_cloud
def test_a_pinned_ami_the_cloud_does_not_have_names_the_spec_field(cloud_env, tmp_path):
    """Refused before Packer runs (no key pair, no security group), naming file and field."""
    specs = tmp_path / "specs"
    shutil.copytree(REPO / "specs", specs)
    text = (specs / f"{TASK}.yaml").read_text()
    pinned = text.replace(f"name: {TASK}", "name: pinned").replace(
        "  base: ecs-al2023", "  base: ami-0123456789abcdef0\n  family: al2023"
    )
    assert "ami-0123456789abcdef0" in pinned and "name: pinned" in pinned
    (specs / "pinned.yaml").write_text(pinned)
    ec2 = ec2_of(cloud_env)
    groups_before = len(ec2.describe_security_groups()["SecurityGroups"])
    proc = run("bake", "pinned", "--cloud", "local", "--specs-dir", str(specs),
               "--build-dir", str(tmp_path / "build"), env=cloud_env["env"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{specs / 'pinned.yaml'}: image.base: ami-0123456789abcdef0 does not exist" in proc.stderr, proc.stderr
    assert "packer build" not in proc.stderr
    assert len(ec2.describe_security_groups()["SecurityGroups"]) == groups_before


@needs_local_cloud
def test_bake_all_shares_identical_images_and_survives_a_failed_bake(cloud_env, first_bake, tmp_path):
    """--all over: salmon-quant (unchanged: reused), a copy of it under another name (same
    image: shares the AMI), and a task whose AMI must carry a volume beyond what the build
    host's disk can show, whose storage check must fail the bake without keeping an AMI
    or stopping the others."""
    import yaml

    specs = tmp_path / "specs"
    shutil.copytree(REPO / "specs" / "benchmarks", specs / "benchmarks")
    doc = yaml.safe_load((REPO / "specs" / f"{TASK}.yaml").read_text())
    (specs / f"{TASK}.yaml").write_text(yaml.safe_dump(doc))
    (specs / "salmon-quant-copy.yaml").write_text(yaml.safe_dump({**doc, "name": "salmon-quant-copy"}))
    big = yaml.safe_load(yaml.safe_dump(doc))
    big["name"] = "too-big"
    big["storage"]["max_input_gib"] = 4000  # a volume far larger than this machine's disk,
    big["image"]["volume"] = "ami"  # carried by the AMI, so the check on the builder must see it
    (specs / "too-big.yaml").write_text(yaml.safe_dump(big))
    ec2 = ec2_of(cloud_env)
    images_before = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}

    proc = bake_cli(cloud_env, "--all", "--specs-dir", str(specs), "--jobs", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "1 of 3 bakes failed: too-big" in proc.stderr
    assert "bake summary" in proc.stdout
    summary = json.loads((cloud_env["build"] / "bake-summary.json").read_text())
    by_task = {r["task"]: r for r in summary["results"]}
    assert summary["ok"] is False
    assert by_task[TASK]["status"] == "reused" and by_task[TASK]["ami_id"] == first_bake["ami_id"]
    assert by_task["salmon-quant-copy"]["ami_id"] == first_bake["ami_id"]
    assert by_task["salmon-quant-copy"]["baked"] is False
    assert by_task["too-big"]["status"] == "failed"
    error = by_task["too-big"]["error"]
    assert "Ansible failed at task [docker_storage : Check the data root lives on the sized volume]" in error
    assert "smaller than the sized volume" in " ".join(error.split())
    # The failed check kept no AMI, and its builder is gone.
    assert {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]} == images_before
    running = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
               if i["State"]["Name"] not in ("terminated", "shutting-down")]
    assert running == []


@needs_local_cloud
def test_bake_all_with_jobs_bakes_in_parallel_on_one_build_host_each(cloud_env, first_bake, tmp_path):
    """--all --jobs 2 over two tasks whose images differ (so two Packer builds) and a third
    whose storage check fails: the first two are built at once, each on its own build host
    (its own SSH port and key pair), both AMIs are baked, tagged and registered; each
    progress line names the task it is about, and each task's Packer log holds only its own
    build; the failed task keeps no AMI and leaves nothing running, and does not stop the
    others from finishing."""
    import re

    import yaml

    specs = tmp_path / "specs"
    shutil.copytree(REPO / "specs" / "benchmarks", specs / "benchmarks")
    doc = yaml.safe_load((REPO / "specs" / f"{TASK}.yaml").read_text())
    # The AMI carries the sized volume (124 and 162 GiB, which this machine's disk shows):
    # two images, other than first_bake's and each other's.
    tasks = {"par-a": 20, "par-b": 30}  # max_input_gib
    for name, gib in tasks.items():
        (specs / f"{name}.yaml").write_text(yaml.safe_dump({**doc, "name": name, "storage": {**doc["storage"], "max_input_gib": gib},
                                                            "image": {**doc["image"], "volume": "ami"}}))
    big = yaml.safe_load(yaml.safe_dump(doc))
    big.update(name="par-too-big")
    big["storage"]["max_input_gib"] = 4000  # beyond this machine's disk, carried by the AMI: the check fails
    big["image"]["volume"] = "ami"
    (specs / "par-too-big.yaml").write_text(yaml.safe_dump(big))
    ec2 = ec2_of(cloud_env)
    images_before = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    build = tmp_path / "build"

    proc = run("bake", "--all", "--specs-dir", str(specs), "--jobs", "2", "--cloud", "local", "--build-dir", str(build), env=cloud_env["env"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "one build host" not in proc.stderr
    assert "1 of 3 bakes failed: par-too-big" in proc.stderr, proc.stderr
    by_task = {r["task"]: r for r in json.loads((build / "bake-summary.json").read_text())["results"]}
    assert by_task["par-too-big"]["status"] == "failed" and "smaller than the sized volume" in " ".join(by_task["par-too-big"]["error"].split())
    for name in tasks:
        r = by_task[name]
        assert r["status"] == "baked" and r["registered"], r
        tags = {t["Key"]: t["Value"] for t in ec2.describe_images(ImageIds=[r["ami_id"]])["Images"][0]["Tags"]}
        assert tags["factory:task"] == name and tags["factory:image-hash"] == r["image_hash"]
        version = ec2.describe_launch_template_versions(LaunchTemplateName=r["launch_template"]["name"], Versions=["$Default"])["LaunchTemplateVersions"][0]
        assert version["LaunchTemplateData"]["ImageId"] == r["ami_id"]
    assert by_task["par-a"]["ami_id"] != by_task["par-b"]["ami_id"]
    # Only the two baked AMIs are new: the failed bake kept none; no builder is left.
    new = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]} - images_before
    assert new == {by_task[n]["ami_id"] for n in tasks}
    running = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"] if i["State"]["Name"] not in ("terminated", "shutting-down")]
    assert running == []
    assert [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"] == []

    # Each Packer log is its own task's, on its own build host; the first two overlapped.
    ports, spans = {}, {}
    for name in tasks:
        log = (build / name / "packer.log").read_text()
        assert f"factory-{name}-" in log and not [t for t in (*tasks, "par-too-big") if t != name and f"factory-{t}-" in log]
        ports[name] = re.search(r'ssh_port\s*=\s*(\d+)', (build / name / "factory.auto.pkrvars.hcl").read_text()).group(1)
        stamps = [int(line.split(",", 1)[0]) for line in log.splitlines() if re.match(r"\d+,", line)]
        spans[name] = (min(stamps), max(stamps))
    assert ports["par-a"] != ports["par-b"], ports
    (a0, a1), (b0, b1) = spans["par-a"], spans["par-b"]
    assert a0 < b1 and b0 < a1, f"the two builds did not overlap: {spans}"
    # Every progress line names its task; each task's Ansible steps are said under its name.
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    assert progress and all(re.match(r"\[[^]]+\] (par-a|par-b|par-too-big): ", line) for line in progress), progress
    for name in (*tasks, "par-too-big"):
        assert any(line.split("] ", 1)[1].startswith(f"{name}: Ansible: ") for line in progress), name


@needs_local_cloud
def test_a_registration_failure_shared_by_every_task_is_said_once(cloud_env, first_bake, tmp_path):
    """Two tasks that share an image (no Packer) but not a tier group, and a config allowing
    one tier: registering fails for both for one reason. The summary says it once, and
    every line fits an 80-column terminal."""
    import yaml

    specs = tmp_path / "specs"
    shutil.copytree(REPO / "specs" / "benchmarks", specs / "benchmarks")
    doc = yaml.safe_load((REPO / "specs" / f"{TASK}.yaml").read_text())
    (specs / f"{TASK}.yaml").write_text(yaml.safe_dump(doc))
    assert doc["batch"]["provisioning"] == "spot"
    other = yaml.safe_load(yaml.safe_dump(doc))
    other["name"] = "salmon-quant-on-demand"
    other["batch"]["provisioning"] = "on-demand"
    (specs / "salmon-quant-on-demand.yaml").write_text(yaml.safe_dump(other))
    config = tmp_path / "factory.yaml"
    config.write_text("tiers:\n  max_tiers: 1\n")

    proc = bake_cli(cloud_env, "--all", "--specs-dir", str(specs), "--config", str(config),
                    env=dict(cloud_env["env"], COLUMNS="80"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    reason = "a cap of 1 tier (set by --max-tiers, else by tiers.max_tiers in factory.yaml) is fewer than the 2 tier groups"
    words = " ".join(proc.stdout.split())  # rich wraps long lines at 80 columns
    assert words.count(reason) == 1, proc.stdout
    assert words.count(first_bake["ami_id"]) == 2 + 2, proc.stdout  # the two rows, and the reason once (naming both)
    long = [line for line in proc.stdout.splitlines() if len(line) > 80]
    assert long == [], long
    summary = json.loads((cloud_env["build"] / "bake-summary.json").read_text())
    assert len(summary["shared_errors"]) == 1 and reason in summary["shared_errors"][0]
    assert [r["error"] for r in summary["results"]] == [REGISTER_FAILED] * 2


@needs_local_cloud
def test_a_failed_container_check_fails_the_bake_and_keeps_no_ami(cloud_env, first_bake, monkeypatch):
    """The bake_check role's container cannot start (its image does not exist and no
    registry can be reached): the check fails, so Packer makes no AMI and bake says why."""
    from dataclasses import replace

    from factory.errors import PackerError
    from factory.spec import find_spec

    for key, value in cloud_env["env"].items():
        if key.startswith("AWS_") or key == "FACTORY_STATE_DIR":
            monkeypatch.setenv(key, value)
    lc = cloud_env["cloud"]
    target = replace(lc.build_target("us-east-1"), bake_check_image="factory-no-such-image:latest")
    spec = find_spec(TASK, REPO / "specs")
    ec2 = ec2_of(cloud_env)
    images_before = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    with pytest.raises(PackerError) as exc:
        bake_task(spec, target=target, force=True, cloud=Cloud("local", lc),
                       build_root=cloud_env["build"] / "check-fails")
    msg = exc.value.message
    assert "Ansible failed at task [bake_check : Fail the bake when a check failed]" in msg
    assert "The bake check failed" in msg and '"container_ran": false' in msg
    assert {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]} == images_before
    running = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
               if i["State"]["Name"] not in ("terminated", "shutting-down")]
    assert running == []


@needs_local_cloud
@pytest.mark.skipif(not Path("/lib/ld-musl-x86_64.so.1").exists(), reason="needs Debian's musl (make system-deps)")
def test_a_musl_task_image_fails_the_bake_naming_the_requirement(cloud_env, first_bake, tmp_path):
    """A spec whose task runs in a musl-based image (made from Debian's musl, offline, as
    Alpine's are): the CLI at cliPath cannot run there, so the bake fails before any AMI,
    saying what the image needs, although the check with the host's C library passes."""
    import yaml

    host = cloud_env["cloud"].host
    host.boot()  # Docker runs again after the last bake generalized the host
    host.run("sh", "-c", "set -e; r=$(mktemp -d); mkdir -p $r/lib; cp -L /lib/ld-musl-x86_64.so.1 $r/lib/; "
                         "tar -C $r -cf /tmp/m.tar .; docker import /tmp/m.tar factory-test-musl:1 >/dev/null; rm -rf $r /tmp/m.tar")
    specs = tmp_path / "specs"
    shutil.copytree(REPO / "specs" / "benchmarks", specs / "benchmarks")
    doc = yaml.safe_load((REPO / "specs" / f"{TASK}.yaml").read_text())
    doc["nextflow"]["containers"] = ["factory-test-musl:1"]
    (specs / f"{TASK}.yaml").write_text(yaml.safe_dump(doc))
    ec2 = ec2_of(cloud_env)
    images_before = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    proc = run("bake", TASK, "--cloud", "local", "--specs-dir", str(specs), "--build-dir", str(tmp_path / "build"),
               env=cloud_env["env"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    text = " ".join(proc.stderr.split())
    assert "Ansible failed at task [bake_check : Fail the bake when the AWS CLI does not run in a task image]" in text, text
    assert "does not run in the task image(s) factory-test-musl:1" in text
    assert "glibc 2.17 or newer in the task image (the oldest glibc Miniconda supports); musl-based images such as Alpine" in text
    assert {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]} == images_before


@needs_local_cloud
def test_interrupted_bake_leaves_nothing_behind(cloud_env, first_bake):
    ec2 = ec2_of(cloud_env)
    images_before = {i["ImageId"] for i in task_images(ec2)}
    cloud_env["cloud"].moto.calls(clear=True)
    log = cloud_env["build"] / TASK / "packer.log"
    log.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [FACTORY, "bake", TASK, "--cloud", "local", "--force", "--build-dir", str(cloud_env["build"])],
        cwd=REPO, env=cloud_env["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.exists() and "Provisioning with Ansible" in log.read_text():
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("Packer never reached the Ansible provisioner")
    time.sleep(1.0)  # inside ansible-playbook now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    assert "cleaned up" in err and "Traceback" not in err
    instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert instances
    assert [i["InstanceId"] for i in instances if i["State"]["Name"] not in ("terminated", "shutting-down")] == []
    groups = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]]
    assert [g for g in groups if g != "default"] == []
    assert {i["ImageId"] for i in task_images(ec2)} == images_before
    # What Packer made, it removed: read off the local cloud's call log (who called what).
    # The bake gives Packer the imported key pair (ssh_keypair_name), so it makes no
    # temporary one: were a template to drop that setting, Packer would create a key pair
    # here, and it would have to be deleted on the interrupt too. The key pairs left are
    # exactly the local cloud's own (one per build host).
    from collections import Counter

    by_packer = Counter(op for who, op in cloud_env["cloud"].moto.calls_by() if who == "packer")
    assert by_packer["ec2:RunInstances"] == by_packer["ec2:TerminateInstances"] == 1, by_packer
    assert by_packer["ec2:CreateSecurityGroup"] == by_packer["ec2:DeleteSecurityGroup"] == 1, by_packer
    assert by_packer["ec2:CreateKeyPair"] == by_packer["ec2:DeleteKeyPair"] == 0, by_packer
    assert by_packer["ec2:CreateImage"] == by_packer["ec2:CopyImage"] == 0, by_packer  # interrupted before any AMI
    own = local_cloud.load(cloud_env["state"])  # with the build hosts of parallel bakes, if any ran
    assert sorted(k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]) == sorted(own.key_pair_name(i) for i in range(len(own.hosts)))


def _path_with(bin_dir: Path) -> dict[str, str]:
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}")


def test_the_gate_reads_the_ansible_playbook_packer_runs():
    """The venv's ansible-playbook (ansible-core 2.18+) cannot manage AL2's Python 3.7 nor
    AL1's 2.7; AL2023 needs no check. The message names the binary and the bound."""
    from factory.errors import FactoryError

    venv = Path(sys.executable).parent
    binary, version = ansible_playbook_version(_path_with(venv))
    assert binary == str(venv / "ansible-playbook") and version >= (2, 18), "assumes the project's own ansible-core"
    check_ansible_can_manage("al2023", _path_with(venv))
    with pytest.raises(FactoryError, match=r"cannot manage ecs-al2: its Python 3.7 \(/usr/bin/python3\).*ansible-core<2\.18"):
        check_ansible_can_manage("al2", _path_with(venv))
    with pytest.raises(FactoryError, match=r"cannot manage ecs-al1: its Python 2.7 \(/usr/bin/python2.7\).*ansible-core<2\.17"):
        check_ansible_can_manage("al1", _path_with(venv))


@pytest.fixture(scope="session")
def ansible_core_2_17(tmp_path_factory):
    """A real ansible-core 2.17 in its own virtualenv (from PyPI), as a user baking ecs-al2 has."""
    venv = tmp_path_factory.mktemp("ansible-2.17") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "ansible-core>=2.17,<2.18"],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        pytest.skip(f"cannot install ansible-core 2.17 from PyPI: {pip.stderr[-300:]}")
    return venv / "bin"


def test_ansible_core_2_17_on_packers_path_may_bake_al2_but_not_al1(ansible_core_2_17):
    """The gate checks the ansible-playbook Packer will run, not the ansible-core importable
    beside factory (2.18+ here): with 2.17 first on PATH, AL2 (Python 3.7) is allowed."""
    from factory.errors import FactoryError

    env = _path_with(ansible_core_2_17)
    assert ansible_playbook_version(env) == (str(ansible_core_2_17 / "ansible-playbook"), (2, 17))
    check_ansible_can_manage("al2", env)
    with pytest.raises(FactoryError, match=r"ansible-core 2.17, which cannot manage ecs-al1"):
        check_ansible_can_manage("al1", env)


def test_each_family_renders_its_own_python(tmp_path):
    import dataclasses

    from factory.sizing import size_task
    from factory.spec import find_spec

    spec = find_spec(TASK, REPO / "specs")
    target = render.BuildTarget.aws(builder_cidrs=("203.0.113.7/32",))
    got = {}
    for family in ("al2023", "al2", "al1"):
        volume = "ami" if family == "al1" else spec.image.volume  # al1 bakes only its volume into the AMI
        s = dataclasses.replace(spec, image=dataclasses.replace(spec.image, base=f"ecs-{family}", family=family, volume=volume))
        got[family] = render.variables_for(s, size_task(s), "ami-0123456789abcdef0", target)["ansible_python_interpreter"]
    assert got == {"al2023": "/usr/bin/python3", "al2": "/usr/bin/python3", "al1": "/usr/bin/python2.7"}


# Last in the module: the bake it reads started with the module (`unanswered_bake`).
def test_an_aws_endpoint_that_never_answers_fails_fast_and_clearly(unanswered_bake):
    """A firewall or proxy that swallows requests: a clear message within about a minute,
    not botocore's 60 s timeouts retried for many minutes ending in a traceback."""
    proc, _, stderr, seconds = unanswered_bake.result()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert "did not answer" in stderr and "reading the ECS-optimized AMI parameters" in stderr, stderr
    assert seconds < 90, seconds
