"""The image manifest through a real bake on the local cloud, and `factory show`.

One local cloud for the module (moto's server with our AWS rules, the throwaway build host
with sshd and a real dockerd, the installer mirror); the real CLI: real Packer, real
ansible-playbook, real boto3 over HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factory.local import cloud as local_cloud
from tests.conftest import REPO

FACTORY = str(Path(sys.executable).with_name("factory"))
TASK = "salmon-quant"
AWSCLI_VERSION = "1.32.27"  # the miniconda_awscli role's pinned version
HEADLINE = ("factory:os", "factory:kernel", "factory:docker", "factory:awscli")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("packer") is None or not Path("/usr/sbin/dockerd").exists(),
    reason="the local cloud needs root, Packer, openssh-server and docker.io (make system-deps)",
)]


def run(*args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([FACTORY, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def cloud_env(tmp_path_factory):
    work = tmp_path_factory.mktemp("show")
    state = work / ".factory"
    lc = local_cloud.up(state, "us-east-1")
    env = dict(os.environ, FACTORY_STATE_DIR=str(state))
    try:
        yield {"env": env, "cloud": lc, "build": work / "build", "work": work}
    finally:
        local_cloud.down(state)


def bake(cloud_env, *args: str) -> subprocess.CompletedProcess:
    return run("bake", *args, "--cloud", "local", "--build-dir", str(cloud_env["build"]), env=cloud_env["env"])


def show(cloud_env, *args: str) -> subprocess.CompletedProcess:
    return run("show", *args, "--cloud", "local", "--build-dir", str(cloud_env["build"]), env=cloud_env["env"])


@pytest.fixture(scope="module")
def baked(cloud_env):
    proc = bake(cloud_env, TASK, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    fetched = cloud_env["build"] / TASK / "image-manifest.json"
    return result, fetched, json.loads(fetched.read_text())


def ec2(cloud_env):
    return cloud_env["cloud"].clients("us-east-1").ec2()


def ami_tags(cloud_env, ami: str) -> dict[str, str]:
    image = ec2(cloud_env).describe_images(ImageIds=[ami])["Images"][0]
    return {t["Key"]: t["Value"] for t in image.get("Tags", [])}


def test_the_fetched_manifest_names_the_bake_and_its_check(cloud_env, baked):
    result, fetched, m = baked
    assert result["image_manifest"] == str(fetched)
    assert (m["task"], m["base_ami"], m["image_hash"]) == (TASK, result["base_ami"], result["image_hash"])
    host = cloud_env["cloud"].host
    assert m["bake_check"] == json.loads(host.path("/var/lib/factory/bake-check.json").read_text())
    assert m["bake_check"]["aws_ok"] is True
    prefix = "/home/ec2-user/miniconda"
    assert m["awscli"] == {"path": f"{prefix}/bin/aws", "version": AWSCLI_VERSION}
    conda = host.run(f"{prefix}/bin/conda", "--version").stdout.split()
    assert m["miniconda"] == {"prefix": prefix, "version": conda[1]}


def test_the_manifest_is_on_the_image_and_says_what_the_build_host_has(cloud_env, baked):
    _, fetched, m = baked
    host = cloud_env["cloud"].host
    assert host.path("/etc/factory/image-manifest.json").read_text() == fetched.read_text()
    assert m["kernel"] == host.run("uname", "-r").stdout.strip()
    host.boot()  # the bake ended by generalizing the builder (Docker stopped): start it as an instance would
    engine = host.run("docker", "info", "--format", "{{.ServerVersion}} {{.Driver}} {{.DockerRootDir}}").stdout.split()
    assert [m["docker"]["version"], m["docker"]["storage_driver"], m["docker"]["data_root"]] == engine
    dpkg = host.run("dpkg-query", "--show", "--showformat=${db:Status-Abbrev} ${Package} ${Version}\n").stdout
    installed = {name: version for status, name, version in (line.split() for line in dpkg.splitlines()) if status[1] not in "nc"}
    listed = {p["name"]: p["version"] for p in m["packages"]["list"]}
    assert m["packages"]["manager"] == "dpkg" and listed == installed
    assert listed["docker.io"].startswith(m["docker"]["version"])
    assert m["ecs_agent"] is None  # Debian's build host has no ECS agent package


def test_the_headline_values_are_ami_tags(cloud_env, baked):
    result, _, m = baked
    tags = ami_tags(cloud_env, result["ami_id"])
    assert tags["factory:kernel"] == m["kernel"]
    assert tags["factory:docker"] == f"{m['docker']['version']} {m['docker']['storage_driver']}"
    assert tags["factory:awscli"] == AWSCLI_VERSION
    assert tags["factory:os"] == f"{m['os']['name']} {m['os']['version']}"
    assert "factory:ecs-agent" not in tags  # none on this image: no tag rather than an empty one
    assert all(len(v) <= 256 for v in tags.values()) and len(tags) <= 50
    assert tags["factory:image-hash"] == result["image_hash"]


def test_show_prints_the_manifest_and_where_the_task_stands(cloud_env, baked):
    result, fetched, m = baked
    proc = show(cloud_env, TASK)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    lt = result["launch_template"]
    assert out.splitlines()[0].startswith(f"{TASK} (us-east-1, tier ") and "registered: queue" in out.splitlines()[0]
    assert result["ami_id"] in out and result["image_hash"] in out
    assert f"{lt['name']} default version {lt['version']}" in out
    assert result["compute_environment"] in out and result["job_queue"] in out
    assert str(fetched) in out and "/etc/factory/image-manifest.json" in out
    assert m["kernel"] in out and m["docker"]["version"] in out and AWSCLI_VERSION in out
    assert f"{m['packages']['count']} (dpkg)" in out
    assert "bake check           passed" in out


def test_show_json_is_one_document_that_agrees_with_aws(cloud_env, baked):
    result, fetched, m = baked
    server = cloud_env["cloud"].moto
    server.calls(clear=True)
    proc = show(cloud_env, TASK, "--json")
    calls = server.calls()
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one JSON document: anything else would not parse
    assert doc["status"] == "registered" and doc["task"] == TASK
    assert doc["ami"]["id"] == result["ami_id"] == doc["tier_ami"]
    assert doc["manifest_file"] == str(fetched) and doc["manifest"] == m
    lt = doc["launch_template"]
    assert (lt["name"], lt["default_version"], lt["image_id"]) == (result["launch_template"]["name"], result["launch_template"]["version"], result["ami_id"])
    assert doc["compute_environment"]["name"] == result["compute_environment"]
    assert doc["compute_environment"]["launch_template_version"] == lt["default_version"]
    assert doc["job_queue"]["name"] == result["job_queue"] and doc["job_queue"]["state"] == "ENABLED"
    # reads only, and few of them (the local cloud pages EC2 at two items when asked to page);
    # two of them are the tier choice's: the room register recorded and the queues' names
    assert all(c.split(":")[1].startswith(("Describe", "Get")) for c in calls), calls
    assert "ssm:GetParameters" in calls and len(calls) <= 12, calls


def test_show_says_when_the_queue_runs_another_ami_and_register_mends_it(cloud_env, baked):
    result, _, _ = baked
    other = result["base_ami"]  # an available AMI of the same architecture: the base image
    env = cloud_env["env"]
    moved = run("register", TASK, "--ami", other, "--cloud", "local", env=env)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    doc = json.loads(show(cloud_env, TASK, "--json").stdout)
    assert doc["status"] == "outdated" and doc["launch_template"]["image_id"] == other
    assert doc["ami"]["id"] == result["ami_id"]
    assert f"runs {other}, not the newest AMI of tier" in doc["summary"] and f"factory register {TASK}" in doc["summary"]
    mended = run("register", TASK, "--cloud", "local", env=env)
    assert mended.returncode == 0, mended.stdout + mended.stderr
    doc = json.loads(show(cloud_env, TASK, "--json").stdout)
    assert doc["status"] == "registered" and doc["launch_template"]["image_id"] == result["ami_id"]
    assert doc["compute_environment"]["launch_template_version"] == doc["launch_template"]["default_version"] > 1


def test_a_task_sharing_another_task_s_ami_shows_it_with_its_manifest(cloud_env, baked, tmp_path):
    """Two tasks with identical images share one AMI, tagged with the task that baked it:
    the sharing task's bake keeps the manifest beside its build, and show finds the AMI by
    the manifest's content hash."""
    import yaml

    result, _, m = baked
    specs = tmp_path / "specs"
    shutil.copytree(REPO / "specs", specs)
    doc = yaml.safe_load((specs / f"{TASK}.yaml").read_text())
    doc["name"] = "salmon-quant-copy"
    (specs / "salmon-quant-copy.yaml").write_text(yaml.safe_dump(doc))
    shared = bake(cloud_env, "salmon-quant-copy", "--specs-dir", str(specs), "--no-register", "--json")
    assert shared.returncode == 0, shared.stderr
    r = json.loads(shared.stdout)
    assert r["status"] == "reused" and r["ami_id"] == result["ami_id"]
    own = cloud_env["build"] / "salmon-quant-copy" / "image-manifest.json"
    assert r["image_manifest"] == str(own) and json.loads(own.read_text()) == m
    proc = show(cloud_env, "salmon-quant-copy", "--specs-dir", str(specs), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ami"]["id"] == result["ami_id"] and doc["manifest_file"] == str(own)
    assert any(f"was baked for task {TASK}" in n for n in doc["notes"]), doc["notes"]


def test_show_for_a_task_never_baked_is_a_clear_error(cloud_env, tmp_path):
    specs = tmp_path / "specs"
    shutil.copytree(REPO / "specs", specs)
    text = (specs / f"{TASK}.yaml").read_text().replace(f"name: {TASK}", "name: never-baked")
    (specs / "never-baked.yaml").write_text(text)
    proc = show(cloud_env, "never-baked", "--specs-dir", str(specs))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert "task never-baked has never been baked" in proc.stderr
    assert "factory bake never-baked" in proc.stderr
    with_json = show(cloud_env, "never-baked", "--specs-dir", str(specs), "--json")
    assert with_json.returncode == 1 and with_json.stdout == "" and "has never been baked" in with_json.stderr


def test_headline_tags_a_failed_run_left_out_are_added_by_the_next(cloud_env, baked):
    """CreateTags fails after the AMI exists: the bake says so and exits 1, the AMI stays
    (it carries its content hash); the next bake reuses it and adds the tags."""
    result, _, _ = baked
    ami = result["ami_id"]
    client = ec2(cloud_env)
    client.delete_tags(Resources=[ami], Tags=[{"Key": k} for k in HEADLINE])
    env = cloud_env["env"]
    fault = run("local", "fault", "ec2:CreateTags", "--code", "UnauthorizedOperation", env=env)
    assert fault.returncode == 0, fault.stderr
    try:
        failed = bake(cloud_env, TASK, "--no-register")
    finally:
        run("local", "fault", "--clear", env=env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    assert f"the AMI {ami} is ready but" in failed.stderr and "UnauthorizedOperation" in failed.stderr
    assert "run the same `factory bake` again" in failed.stderr
    assert client.describe_images(ImageIds=[ami])["Images"][0]["State"] == "available"
    assert not set(HEADLINE) & set(ami_tags(cloud_env, ami))

    again = bake(cloud_env, TASK, "--no-register", "--json")
    assert again.returncode == 0, again.stderr
    r = json.loads(again.stdout)
    assert r["status"] == "reused" and r["ami_id"] == ami
    assert "added the image manifest's headline tags" in r["note"]
    assert set(HEADLINE) <= set(ami_tags(cloud_env, ami))
    # and a reuse with every tag in place makes no CreateTags call
    server = cloud_env["cloud"].moto
    server.calls(clear=True)
    third = bake(cloud_env, TASK, "--no-register", "--json")
    assert third.returncode == 0 and "ec2:CreateTags" not in server.calls()
