"""`factory status`, `factory local publish-base` and the refresh they drive, on the local cloud.

The whole refresh as a user (or the weekly images workflow) runs it, through the real CLI:
a task registered on today's base is current; AWS releases a new ECS-optimized AMI
(`factory local publish-base`) and the task is stale; a real bake (Packer, Ansible, the
build host) makes it current again, its parameter moving on; a rollback moves it back.
One real bake: the first AMI is made as a bake leaves it, tagged with the hash a bake
would give it (factory.image_identity.expected_image_hash).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from factory.cloud import Cloud
from factory.image_identity import expected_image_hash
from factory.local import cloud as local_cloud
from factory.local.aws.publish import publish_base, retire_base
from factory.register.parameter import history
from factory.render import resolve_base_ami
from factory.spec import load_spec
from tests.conftest import SPECS

pytestmark = pytest.mark.slow

FACTORY = str(Path(sys.executable).with_name("factory"))
TASK = "salmon-quant"
REGION = "us-east-1"

needs_local_cloud = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("packer") is None or not Path("/usr/sbin/dockerd").exists(),
    reason="the local cloud needs root, Packer, openssh-server and docker.io (make system-deps)",
)


@pytest.fixture(scope="module")
def lc_env(tmp_path_factory):
    """A local cloud, a folder with one spec (salmon-quant), and the environment the CLI finds them with."""
    work = tmp_path_factory.mktemp("status")
    state = work / ".factory"
    specs = work / "specs"
    shutil.copytree(SPECS / "benchmarks", specs / "benchmarks")
    shutil.copy(SPECS / f"{TASK}.yaml", specs / f"{TASK}.yaml")
    lc = local_cloud.up(state, REGION)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(FACTORY_STATE_DIR=str(state), COLUMNS="220")
    try:
        yield {"env": env, "cloud": lc, "work": work, "specs": specs}
    finally:
        local_cloud.down(state)


def factory(lc_env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FACTORY, *args], cwd=lc_env["work"], capture_output=True, text=True, env=lc_env["env"], timeout=900, check=False
    )


def status(lc_env) -> tuple[subprocess.CompletedProcess, dict]:
    proc = factory(lc_env, "status", "--check", "--json", "--cloud", "local", "--specs-dir", str(lc_env["specs"]))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, json.loads(proc.stdout)


def baked_like_factory(lc, spec) -> str:
    """An AMI of today's recommended base, tagged as a bake on this cloud would tag it."""
    clients = lc.clients(REGION)
    ec2 = clients.ec2()
    base = resolve_base_ami(spec, clients)
    digest = expected_image_hash(spec, base, Cloud("local", lc).image_target(REGION))
    instance = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ami = ec2.create_image(InstanceId=instance, Name=f"factory-{spec.name}-{time.time_ns()}")["ImageId"]
    tags = {"factory:task": spec.name, "factory:spec-hash": spec.spec_hash, "factory:image-hash": digest, "factory:base-ami": base}
    ec2.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    ec2.terminate_instances(InstanceIds=[instance])
    return ami


@needs_local_cloud
def test_status_green_red_after_a_new_base_green_after_the_rebake(lc_env):
    lc = lc_env["cloud"]
    spec = load_spec(lc_env["specs"] / f"{TASK}.yaml")
    ssm = lc.clients(REGION).ssm()

    # Registered on today's base: current.
    first = baked_like_factory(lc, spec)
    reg = factory(lc_env, "register", TASK, "--cloud", "local", "--specs-dir", str(lc_env["specs"]))
    assert reg.returncode == 0, reg.stdout + reg.stderr
    proc, report = status(lc_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = report["tasks"]
    assert report["ok"] is True and row["stale"] is False
    assert row["ami_in_use"] == first == row["parameter"]
    assert row["base_ami"] == row["recommended_base"] and row["base_current"] is True
    assert (row["spec_changed"], row["image_changed"]) == (False, False)
    assert row["launch_template"] == {"name": f"factory-{TASK}", "version": 1}
    assert row["job_queue"] == {"name": f"factory-{TASK}", "state": "ENABLED/VALID"}
    table = factory(lc_env, "status", "--cloud", "local", "--specs-dir", str(lc_env["specs"]))
    assert table.returncode == 0 and "every task is current" in table.stdout and first in table.stdout

    # The base is locked (`factory lock`: the local cloud's lock, in its state folder).
    locked = factory(lc_env, "lock", "--cloud", "local", "--specs-dir", str(lc_env["specs"]))
    assert locked.returncode == 0 and "al2023-x86_64 in us-east-1: added" in locked.stdout, locked.stdout + locked.stderr
    proc, report = status(lc_env)
    (row,) = report["tasks"]
    assert proc.returncode == 0 and row["locked_base"] == row["base_ami"] and row["lock_state"] == "same"

    # AWS releases a new ECS-optimized AMI: the lock still holds (a bake would reuse), and
    # status says AWS recommends a newer base than the lock.
    pub = factory(lc_env, "local", "publish-base", "al2023", "--json")
    assert pub.returncode == 0, pub.stderr
    published = json.loads(pub.stdout)
    assert published["previous"] == row["base_ami"]
    assert resolve_base_ami(spec, lc.clients(REGION)) == published["ami_id"]
    proc, report = status(lc_env)
    (row,) = report["tasks"]
    assert proc.returncode == 0 and report["stale"] == []
    assert row["recommended_base"] == published["ami_id"] and row["lock_state"] == "newer" and row["base_current"] is True
    assert any("AWS recommends a newer base" in n and "factory lock --update" in n for n in row["notes"]), row["notes"]

    # `factory lock --update` (the weekly pull request) moves the lock: now stale, and --check says why.
    update = factory(lc_env, "lock", "--update", "--cloud", "local", "--specs-dir", str(lc_env["specs"]))
    assert update.returncode == 0, update.stderr
    assert f"-> {published['name']}" in update.stdout
    assert f"({published['previous']} -> {published['ami_id']}; ECS agent" in update.stdout
    proc, report = status(lc_env)
    (row,) = report["tasks"]
    assert proc.returncode == 1 and report["stale"] == [TASK]
    assert row["locked_base"] == published["ami_id"] and row["base_current"] is False
    assert f"{TASK} is stale: the lock names base {published['ami_id']} ({published['name']}); {first} was baked on {published['previous']}" in proc.stderr

    # The rebake (the weekly workflow's `make images`): a real bake on the new base.
    build = lc_env["work"] / "build"
    bake = factory(lc_env, "bake", "--all", "--cloud", "local", "--specs-dir", str(lc_env["specs"]), "--build-dir", str(build))
    assert bake.returncode == 0, bake.stdout + bake.stderr
    (result,) = json.loads((build / "bake-summary.json").read_text())["results"]
    assert result["status"] == "baked" and result["base_ami"] == published["ami_id"]
    # The summary times baked tasks: the whole is the sum of its steps, each figure rounded to
    # hundredths on its own, so the two may differ by half a hundredth per figure.
    rounding = 0.005 * (len(result["steps"]) + 1)
    assert result["seconds"] > 0 and abs(result["seconds"] - sum(result["steps"].values())) <= rounding
    proc, report = status(lc_env)
    (row,) = report["tasks"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert row["ami_in_use"] == result["ami_id"] == row["parameter"] and row["base_ami"] == published["ami_id"]
    assert row["launch_template"]["version"] == 2
    assert [v["Value"] for v in history(ssm, TASK)] == [first, result["ami_id"]]

    # Rollback: the previous AMI again, its parameter moved back, and stale again (its base is old).
    back = factory(lc_env, "rollback", TASK, "--cloud", "local", "--specs-dir", str(lc_env["specs"]))
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"rolled {TASK} back: {result['ami_id']} -> {first}" in back.stdout
    assert [v["Value"] for v in history(ssm, TASK)] == [first, result["ami_id"], first]
    proc, report = status(lc_env)
    (row,) = report["tasks"]
    assert proc.returncode == 1 and row["ami_in_use"] == first and row["launch_template"]["version"] == 3

    # AWS rolls its parameter back (awslabs/amazon-eks-ami#924): status says the recommended
    # base went backwards; the lock keeps the newer one until `factory lock --update`.
    pub = factory(lc_env, "local", "publish-base", "al2023", "--rollback", "--json")
    assert pub.returncode == 0, pub.stderr
    assert json.loads(pub.stdout)["ami_id"] == published["previous"]
    proc, report = status(lc_env)
    (row,) = report["tasks"]
    assert row["lock_state"] == "backwards" and row["locked_base"] == published["ami_id"]
    assert any("older base (AWS rolled its parameter back)" in n for n in row["notes"]), row["notes"]
    table = factory(lc_env, "status", "--cloud", "local", "--specs-dir", str(lc_env["specs"]))
    assert "older base (AWS rolled its parameter back)" in " ".join(table.stdout.split())

    # AWS deprecates the locked base: status says a bake would fail, naming the entry and the bump.
    retire_base(lc.endpoint, published["ami_id"], "deprecate")
    proc, report = status(lc_env)
    (row,) = report["tasks"]
    said = [n for n in row["notes"] if n.startswith("a bake would fail:")]
    assert said and f"bases.al2023-x86_64.regions.{REGION}: {published['ami_id']}" in said[0] and "factory lock --update" in said[0], row["notes"]


@needs_local_cloud
def test_status_names_an_unregistered_task_and_publish_base_refuses_bad_input(lc_env, tmp_path):
    specs = tmp_path / "specs"
    shutil.copytree(SPECS / "benchmarks", specs / "benchmarks")
    doc = (SPECS / f"{TASK}.yaml").read_text().replace(f"name: {TASK}", "name: never-baked")
    (specs / "never-baked.yaml").write_text(doc)
    proc = factory(lc_env, "status", "--check", "--cloud", "local", "--specs-dir", str(specs))
    assert proc.returncode == 1 and "never-baked is stale: not registered: no job queue factory-never-baked" in proc.stderr
    bad = factory(lc_env, "local", "publish-base", "al9")
    assert bad.returncode == 2 and "unknown family 'al9'" in bad.stderr
    bad = factory(lc_env, "local", "publish-base", "al1", "--arch", "arm64")
    assert bad.returncode == 2 and "has no arm64 image" in bad.stderr


def test_publish_base_plays_aws_releasing_an_ami(moto, monkeypatch):
    """Without the build host: the new image is Amazon's, named like the last one, and the parameter moves."""
    import boto3

    moto.reset()
    kw = {"region_name": REGION, "endpoint_url": moto.endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    ssm, ec2 = boto3.client("ssm", **kw), boto3.client("ec2", **kw)
    done = [publish_base(moto.endpoint, "ecs-al2023"), publish_base(moto.endpoint, "al2023")]
    parameter = done[0]["parameter"]
    assert done[1]["previous"] == done[0]["ami_id"]
    assert ssm.get_parameter(Name=parameter)["Parameter"]["Value"] == done[1]["ami_id"]
    # The whole recommended tree moves, its JSON document too (what `factory lock` reads).
    doc = json.loads(ssm.get_parameter(Name=parameter.removesuffix("/image_id"))["Parameter"]["Value"])
    assert (doc["image_id"], doc["image_name"]) == (done[1]["ami_id"], done[1]["name"])
    images = ec2.describe_images(ImageIds=[d["ami_id"] for d in done])["Images"]
    assert {i.get("ImageOwnerAlias") for i in images} == {"amazon"} and {i["Architecture"] for i in images} == {"x86_64"}
    assert len({i["Name"] for i in images}) == 2 and all(i["Name"].startswith("al2023-ami-ecs-hvm-") for i in images)
    # Anyone else still may not write an /aws/ parameter, as on AWS.
    with pytest.raises(ssm.exceptions.ClientError, match="AccessDenied"):
        ssm.put_parameter(Name=parameter, Value=done[0]["ami_id"], Type="String", Overwrite=True)
    arm = publish_base(moto.endpoint, "al2", "arm64")
    assert ec2.describe_images(ImageIds=[arm["ami_id"]])["Images"][0]["Architecture"] == "arm64"


def test_status_reads_where_the_grow_net_fired_from_instance_tags(moto, monkeypatch):
    """The grow agent marks its instance factory:grow-fired; status finds such instances
    per task in one paged read (more than one page on the local cloud)."""
    import boto3

    from factory.status import _grow_fired

    moto.reset()
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
    ami = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]

    def launch(tags):
        spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        return ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=spec)["Instances"][0]["InstanceId"]

    fired = [launch({"factory:task": "star-align", "factory:grow": "true", "factory:grow-fired": "2026-11-30T12:00:00Z"}) for _ in range(3)]
    launch({"factory:task": "star-align", "factory:grow": "true"})  # the net never fired there
    launch({"factory:task": "salmon-quant"})
    assert {k: sorted(v) for k, v in _grow_fired(ec2).items()} == {"star-align": sorted(fired)}
