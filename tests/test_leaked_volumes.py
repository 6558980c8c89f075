"""Leaked grow volumes on the local cloud: found only when their instance is gone, and
deleted one by one, a failure reported without stopping the rest."""

from __future__ import annotations

import boto3
import pytest


@pytest.fixture
def ec2(moto):
    moto.reset()
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def launch(ec2) -> str:
    ami = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    return ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="c6i.large")["Instances"][0]["InstanceId"]


def agent_volume(ec2, instance_id: str, size: int = 10, grow: bool = True) -> str:
    tags = [{"Key": "factory:task", "Value": "star-align"}, {"Key": "factory:instance", "Value": instance_id}]
    if grow:
        tags.append({"Key": "factory:grow", "Value": "true"})
    return ec2.create_volume(AvailabilityZone="us-east-1a", Size=size, Encrypted=True,
                             TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])["VolumeId"]


def test_only_available_agent_volumes_of_gone_instances_are_leaked(ec2):
    from factory.leaked_volumes import delete_leaked, find_leaked

    running, gone = launch(ec2), launch(ec2)
    in_progress = agent_volume(ec2, running)  # an add under way: never touched
    leaked_ids = [agent_volume(ec2, gone, size=20) for _ in range(3)]  # more than a page (the local cloud pages by 2)
    attached = agent_volume(ec2, gone)
    ec2.attach_volume(VolumeId=attached, InstanceId=gone, Device="/dev/xvdc")
    ec2.terminate_instances(InstanceIds=[gone])  # the attached one had no delete-on-termination: detached, available
    not_ours = agent_volume(ec2, gone, grow=False)

    found = find_leaked(ec2)
    ids = {lv.volume_id for lv in found}
    assert set(leaked_ids) <= ids and in_progress not in ids and not_ours not in ids
    assert all(lv.task == "star-align" and lv.instance_id == gone for lv in found)
    assert found[0].to_json()["size_gib"] in (10, 20)

    results = delete_leaked(ec2, found)
    assert all(err is None for _, err in results)
    assert find_leaked(ec2) == []
    left = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
    assert in_progress in left and not_ours in left and not set(leaked_ids) & left


def test_a_failed_delete_is_reported_and_the_rest_go_on(ec2, moto):
    from factory.leaked_volumes import delete_leaked, find_leaked
    from factory.local.aws.faults import Fault, arm

    gone = launch(ec2)
    vols = [agent_volume(ec2, gone) for _ in range(2)]
    ec2.terminate_instances(InstanceIds=[gone])
    found = find_leaked(ec2)
    assert {lv.volume_id for lv in found} == set(vols)
    arm(moto.endpoint, Fault("ec2:DeleteVolume", kind="error", code="VolumeInUse", times=1))
    results = dict(delete_leaked(ec2, found))
    assert results[found[0].volume_id].startswith("VolumeInUse: ")
    assert results[found[1].volume_id] is None
    assert [lv.volume_id for lv in find_leaked(ec2)] == [found[0].volume_id]  # the next prune finishes it


def test_prune_lists_then_deletes_a_leaked_volume_and_nothing_else(ec2, moto, cli, monkeypatch):
    from tests.conftest import SPECS

    gone, alive = launch(ec2), launch(ec2)
    leaked, in_progress = agent_volume(ec2, gone), agent_volume(ec2, alive)
    ec2.terminate_instances(InstanceIds=[gone])
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    env = {"AWS_ENDPOINT_URL": moto.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "COLUMNS": "250"}
    plan = cli("prune", "--specs-dir", SPECS, env=env)
    assert plan.exit_code == 0, plan.stderr
    assert f"would delete volume {leaked}" in plan.stdout and in_progress not in plan.stdout and "dry run" in plan.stdout
    done = cli("prune", "--apply", "--specs-dir", SPECS, env=env)
    assert done.exit_code == 0, done.stderr
    assert f"deleted volume {leaked}" in done.stdout and "grow agent" in done.stdout
    left = {v["VolumeId"] for p in ec2.get_paginator("describe_volumes").paginate() for v in p["Volumes"]}
    assert leaked not in left and in_progress in left
