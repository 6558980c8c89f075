"""Reads that do not grow with the spec count (issue 12 point 6), on the local cloud.

`factory status` and a `factory bake --all` where nothing changed read each region once
(factory.register.region_reads): the same AWS calls for 3 specs as for 12, but for
GetParameters, which takes ten names a call. Counted from the local cloud's call log
(`/_factory/calls`), with pages of 100 as AWS Batch pages (the other tests page at 2 to
prove paging; here the count is of rounds, not pages). Not timed: bench/reads times it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from bench.reads.run import REGION, baked_like_factory, write_specs
from factory import base_lock
from factory.bake import bake_all, bake_task
from factory.cloud import Cloud
from factory.config import load_config
from factory.local import cloud as local_cloud
from factory.register import register_tasks, tasks_from_tags
from factory.spec import load_specs
from factory.status import task_status

needs_local_cloud = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("packer") is None or not Path("/usr/sbin/dockerd").exists(),
    reason="the local cloud needs root, Packer, openssh-server and docker.io (make system-deps)",
)


@pytest.fixture(scope="module")
def lc(tmp_path_factory):
    state = tmp_path_factory.mktemp("reads") / ".factory"
    cloud = local_cloud.up(state, REGION, page_size=100)
    saved = dict(os.environ)
    os.environ.update(cloud.env(REGION))
    try:
        yield cloud
    finally:
        os.environ.clear()
        os.environ.update(saved)
        local_cloud.down(state)


def registered(lc, folder: Path, n: int) -> list:
    """N specs registered on AMIs tagged as a bake tags them, on an empty account."""
    lc.moto.reset()
    lc.seed_account()
    write_specs(folder, n)
    specs = load_specs([folder])
    register_tasks(specs, lc.clients(REGION), baked_like_factory(lc, specs), all_specs=specs, poll=0.2)
    return specs


def calls_of(lc, fn) -> Counter:
    lc.moto.calls(clear=True)
    fn()
    return Counter(lc.moto.calls())


@needs_local_cloud
def test_status_and_an_unchanged_bake_all_make_the_same_calls_for_3_specs_as_for_12(lc, tmp_path):
    counts = {}
    for n in (3, 12):
        specs = registered(lc, tmp_path / f"specs-{n}", n)
        cloud = Cloud("local", lc)
        report = {}

        def status(specs=specs, cloud=cloud, report=report):
            report["status"] = task_status(specs, specs, cloud, load_config(None))

        # An unchanged bake --all has its bases locked (`factory lock`, before).
        lock = base_lock.BaseLock(tmp_path / f"factory-{n}.lock")
        base_lock.lock_bases(specs, cloud, lock)

        def bake(specs=specs, cloud=cloud, report=report, n=n, lock=lock):
            report["bake"] = bake_all(specs, cloud, build_root=tmp_path / f"build-{n}", lock=lock)

        counts[n] = {"status": calls_of(lc, status), "bake": calls_of(lc, bake)}
        assert not report["status"].stale, [t.stale for t in report["status"].stale]
        assert {r.status for r in report["bake"]} == {"reused"}, [r.error for r in report["bake"]]
        assert all(r.registered for r in report["bake"])
    for what in ("status", "bake"):
        few, many = counts[3][what], counts[12][what]
        assert {k: v for k, v in few.items() if k != "ssm:GetParameters"} == {k: v for k, v in many.items() if k != "ssm:GetParameters"}, what
        # GetParameters: ten names a call (the tasks' /factory/<task>/ami-id and the base's parameter);
        # DescribeParameters (rollback holds) fifty a page, so one call for both.
        assert many["ssm:GetParameters"] - few["ssm:GetParameters"] <= math.ceil(12 / 10), what
    # What each read is, once: no Describe per spec or per tier.
    assert counts[12]["status"]["ec2:DescribeLaunchTemplateVersions"] == 1
    # DescribeImages: the locked bases (one call for every base of the region, in place of the
    # base parameters' read), factory's AMIs for the bake and again for its registration.
    assert counts[12]["bake"]["ec2:DescribeImages"] <= 3 and counts[12]["bake"]["ec2:DescribeInstanceTypes"] == 1


@needs_local_cloud
def test_a_task_whose_image_another_task_baked_finds_that_ami_by_its_own_name(lc, tmp_path):
    """task-001 (the largest of its tier) has the same image as task-000, whose bake made the
    AMI: the bake of task-001 reuses it and names task-001 on it, so a plain register (no
    --ami) and status find it under task-001's name."""
    lc.moto.reset()
    lc.seed_account()
    write_specs(tmp_path / "specs", 2)
    specs = load_specs([tmp_path / "specs"])
    a, b = sorted(specs, key=lambda s: s.name)
    cloud = Cloud("local", lc)
    ami = baked_like_factory(lc, [a])[a.name]
    done = bake_task(b, cloud=cloud, build_root=tmp_path / "build", register=False)
    assert (done.status, done.ami_id, done.reused_from) == ("reused", ami, a.name)  # the same image: one AMI

    reg = register_tasks([b], lc.clients(REGION), {}, all_specs=specs, poll=0.2)
    tier = reg.for_task(b.name)
    assert tier.ami_id == ami and tier.tasks == (b.name,) and "baked for task-000" in tier.ami_source
    (row,) = task_status([b], specs, cloud, load_config(None)).tasks
    assert row.ami_in_use == ami == row.parameter and not row.stale
    assert row.spec_changed is None and row.image_changed is False  # task-000's spec hash says nothing of task-001's spec
    assert f"AMI {ami} was baked for task {a.name}: {b.name}'s image is the same (a bake reused it)" in row.notes
    assert tasks_from_tags({t["Key"]: t["Value"] for t in lc.clients(REGION).ec2().describe_images(ImageIds=[ami])["Images"][0]["Tags"]}) == [b.name]


@needs_local_cloud
def test_a_rollback_holds_until_an_ami_is_given_or_a_bake_makes_a_new_image(lc, tmp_path):
    """After `factory rollback`, a plain register and a bake that only reuses an AMI keep the
    task on the rolled-back AMI, and say why; an AMI given with --ami, or one a bake made,
    rolls it forward and says so."""
    from factory.bake import BakeResult
    from factory.bake.registration import register_results
    from factory.register.parameter import history, parameter_name
    from factory.rollback import rollback

    lc.moto.reset()
    lc.seed_account()
    write_specs(tmp_path / "specs", 1)
    specs = load_specs([tmp_path / "specs"])
    (spec,) = specs
    task, clients, cloud = spec.name, lc.clients(REGION), Cloud("local", lc)
    first = baked_like_factory(lc, specs)[task]
    register_tasks(specs, clients, {task: first}, all_specs=specs, poll=0.2)
    newest = baked_like_factory(lc, specs)[task]  # a later bake of the same image
    register_tasks(specs, clients, {task: newest}, all_specs=specs, poll=0.2)

    back = rollback(spec, specs, cloud, config=load_config(None), poll=0.2)
    assert (back.from_ami, back.to_ami) == (newest, first)
    found = clients.ssm().describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [parameter_name(task)]}])["Parameters"]
    descriptions = {p["Name"]: p.get("Description", "") for p in found}
    assert descriptions[parameter_name(task)].startswith("factory rollback:")

    # A plain register keeps the rollback (before: the newest AMI again, silently).
    plan = register_tasks(specs, clients, {}, True, all_specs=specs).for_task(task)
    assert plan.ami_id == first and plan.ami_source == f"held by `factory rollback` ({parameter_name(task)})"
    assert f"{task} stays on {first}, where `factory rollback` put it (the newest AMI is {newest}): `factory register {task} --ami {newest}` rolls forward" in plan.notes
    assert {c.action for c in plan.changes} == {"unchanged"}
    # So does a bake of the unchanged spec: it finds the newest AMI of the same image, and says why it is not used.
    done = bake_task(spec, cloud=cloud, build_root=tmp_path / "build")
    assert done.status == "reused" and done.ami_id == newest
    assert f"{task} stays on {first}, where `factory rollback` put it (the bake's AMI is {newest})" in done.note
    assert [v["Value"] for v in history(clients.ssm(), task)][-1] == first
    (row,) = task_status(specs, specs, cloud, load_config(None)).tasks
    assert row.ami_in_use == first and any(n.startswith(f"held at {first} by `factory rollback`") for n in row.notes)

    # A bake that made a new image rolls forward (what register_results gets after a Packer build).
    made = baked_like_factory(lc, specs)[task]
    baked = BakeResult(task=task, ami_id=made, region=REGION, base_ami=None, spec_hash=spec.spec_hash, image_hash=None, baked=True, volume_gib=None)
    register_results([baked], specs, cloud, all_specs=specs)
    assert f"rolls {task} forward to {made} from {first}, where `factory rollback` held it" in baked.note
    assert register_tasks(specs, clients, {}, True, all_specs=specs).for_task(task).ami_id == made  # the hold is over
    # --ami after another rollback rolls forward too.
    rollback(spec, specs, cloud, first, config=load_config(None), poll=0.2)
    forward = register_tasks(specs, clients, {task: made}, all_specs=specs, poll=0.2).for_task(task)
    assert forward.ami_id == made and any(n.startswith(f"rolls {task} forward to {made}") for n in forward.notes)
    assert register_tasks(specs, clients, {}, True, all_specs=specs).for_task(task).ami_source.startswith("newest AMI")


def test_the_local_cloud_pages_describe_parameters_by_max_results_as_aws(moto):
    """AWS answers DescribeParameters MaxResults (1 to 50) a page; moto answered 10 whatever
    was asked, which made the rollback holds' read grow every ten tasks (rules/ssm.py)."""
    import boto3

    moto.reset()
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=moto.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
    for i in range(12):
        ssm.put_parameter(Name=f"/factory/task-{i:03d}/ami-id", Value="ami-0", Type="String")
    mine = [{"Key": "Name", "Option": "BeginsWith", "Values": ["/factory/"]}]
    page = ssm.describe_parameters(MaxResults=50, ParameterFilters=mine)
    assert len(page["Parameters"]) == 12 and "NextToken" not in page
    first = ssm.describe_parameters(MaxResults=5, ParameterFilters=mine)
    second = ssm.describe_parameters(MaxResults=5, ParameterFilters=mine, NextToken=first["NextToken"])
    assert len(first["Parameters"]) == len(second["Parameters"]) == 5
    assert {p["Name"] for p in first["Parameters"]}.isdisjoint(p["Name"] for p in second["Parameters"])
    assert len(ssm.describe_parameters(ParameterFilters=mine)["Parameters"]) == 10  # AWS's default page
    with pytest.raises(ssm.exceptions.ClientError, match="ValidationException"):
        ssm.describe_parameters(MaxResults=51)


@needs_local_cloud
def test_an_unchanged_bake_all_distributes_each_image_once_and_a_second_changes_nothing(lc, tmp_path, cli):
    """`factory bake --all` with `distribute:` over specs whose images exist (reused: no
    Packer run): each distinct image is copied to the target region once, every task is
    registered there on its image's copy; a second `bake --all` makes no mutating call."""
    west = "us-west-2"
    folder = tmp_path / "specs"
    specs = registered(lc, folder, 3)
    kms = lc.clients(west).client("kms")
    kms.create_alias(AliasName="alias/factory-ami", TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
    config = tmp_path / "factory.yaml"
    config.write_text(f"distribute:\n  regions: [{west}]\n  kms_keys: {{{west}: alias/factory-ami}}\n")
    cloud = Cloud("local", lc, config_path=config)
    lock = base_lock.BaseLock(base_lock.default_path(cloud))  # an unchanged bake has its bases locked
    base_lock.lock_bases(specs, cloud, lock)
    lock.save()
    amis = {r["ImageId"] for r in lc.clients(REGION).ec2().describe_images(Owners=["self"])["Images"]}
    env = {"FACTORY_STATE_DIR": str(lc.state_dir)}
    args = ("bake", "--all", "--cloud", "local", "--specs-dir", folder, "--config", config, "--build-dir", tmp_path / "build", "--json")

    lc.moto.calls(clear=True)
    first = cli(*args, env=env)
    assert first.exit_code == 0, first.stderr
    results = json.loads(first.stdout)["results"]
    assert {r["status"] for r in results} == {"reused"} and {r["ami_id"] for r in results} <= amis
    assert Counter(lc.moto.calls())["ec2:CopyImage"] == len({r["ami_id"] for r in results})  # each image copied once
    assert west in base_lock.load(base_lock.default_path(cloud)).bases["al2023-x86_64"].regions  # its base locked there too
    ec2_west, ssm_west = lc.clients(west).ec2(), lc.clients(west).ssm()
    for r in results:
        [copy] = ec2_west.describe_images(Owners=["self"], Filters=[{"Name": "tag:factory:copy-of", "Values": [r["ami_id"]]}])["Images"]
        assert {c["region"]: c["ami_id"] for c in r["copies"]}[west] == copy["ImageId"]
        assert ssm_west.get_parameter(Name=f"/factory/{r['task']}/ami-id")["Parameter"]["Value"] == copy["ImageId"]  # registered there

    lc.moto.calls(clear=True)
    second = cli(*args, env=env)
    assert second.exit_code == 0, second.stderr
    assert {c["status"] for r in json.loads(second.stdout)["results"] for c in r["copies"]} == {"source", "found"}
    reads = ("Describe", "Get", "List")
    changed = [c for c in lc.moto.calls() if not c.split(":", 1)[1].startswith(reads)]
    assert changed == [], changed
