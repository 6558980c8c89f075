"""The grow agent end to end on the local cloud: a real agent process, moto's EC2 over
HTTP, a local IMDSv2 endpoint, loop devices for every attached volume (the attach
watcher) and the LVM + XFS pool AWS instances run (lvm2's commands from factory's LVM
double where this kernel has no device-mapper), btrfs too for the fast writer; a writer
that fills the disk faster than its start size."""

from __future__ import annotations

import signal
import time

import pytest

from factory.local.grow_rig import TASK
from tests.grow_fixtures import requires_btrfs, requires_lvm_xfs

pytestmark = [pytest.mark.slow, requires_lvm_xfs]


@pytest.fixture
def instance(request, moto, tmp_path):
    """An instance launched as a growing launch template makes it (a 2 GiB encrypted data
    volume at /dev/xvdb, tagged factory:grow), its volumes on loop devices, its data
    volume made an LVM + XFS pool at the data root (the boot unit's job); see GrowRig.
    Parametrized with `pool` by a test that runs on both backends."""
    from factory.local.grow_rig import GrowRig

    pool = getattr(request, "param", "lvm-xfs")
    if pool == "btrfs" and requires_btrfs.args[0]:
        pytest.skip(requires_btrfs.kwargs["reason"])
    with GrowRig.start(moto.endpoint, tmp_path / "instance", data_gib=2, pool=pool) as rig:
        yield rig


def test_without_the_agent_the_writer_runs_out_of_space(instance):
    """The writer below needs more than the data volume: alone it fails, as on AWS Batch."""
    result = instance.write(3 * 1024, 250)
    assert result.returncode == 28, result.stdout + result.stderr
    assert "No space left on device" in result.stderr


@pytest.mark.parametrize("instance", ["lvm-xfs", "btrfs"], indirect=True)
def test_a_fast_writer_finishes_with_volumes_added_tagged_and_deleted_with_the_instance(instance, moto):
    from factory.grow import instance_policy

    moto.calls(clear=True)
    instance.start_agent()
    instance.wait_event("start")
    result = instance.write(3 * 1024, 250)
    assert result.returncode == 0, result.stderr + instance.events_file.read_text()
    fstype = instance.run("findmnt", "-n", "-o", "FSTYPE", str(instance.mountpoint)).stdout.strip()
    assert fstype == {"lvm-xfs": "xfs", "btrfs": "btrfs"}[instance.pool]
    # least privilege, proven against what the agent really called (the local cloud's call log)
    allowed = {a for s in instance_policy()["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    called = set(moto.calls())
    assert {"ec2:CreateVolume", "ec2:AttachVolume", "ec2:ModifyInstanceAttribute", "ec2:CreateTags"} <= called
    assert called <= allowed, called - allowed
    events = instance.events()
    grown = [e for e in events if e["event"] == "grown"]
    assert grown, instance.events_file.read_text()
    assert all(e["instance"] == instance.instance_id and e["task"] == TASK for e in events)
    triggers = [e for e in events if e["event"] == "trigger"]
    assert triggers[0]["reason"] in ("time-to-full", "floor") and triggers[0]["rate_mib_s"] > 0

    vols = instance.grow_volumes()
    assert len(vols) == len(grown) == grown[-1]["volumes_added"]
    mapping = instance.mapping()
    for v in vols:
        tags = {t["Key"]: t["Value"] for t in v["Tags"]}
        assert tags["factory:grow"] == "true" and tags["factory:task"] == TASK and tags["factory:instance"] == instance.instance_id
        assert v["Encrypted"] and v["AvailabilityZone"] == instance.zone
        assert mapping[v["VolumeId"]]["Ebs"]["DeleteOnTermination"] is True
    # every added volume is in the pool, found by its volume id
    assert len(instance.pool_devices()) == 1 + len(vols)
    # delete-on-termination was set before the volume joined the pool
    order = [(e["event"], e.get("volume_id")) for e in events]
    for v in vols:
        assert order.index(("delete-on-termination", v["VolumeId"])) < order.index(("grown", v["VolumeId"]))
    inst_tags = instance.ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [instance.instance_id]}])["Tags"]
    fired = {t["Key"]: t["Value"] for t in inst_tags}.get("factory:grow-fired", "")
    assert fired.startswith(f"{len(vols)} volumes, +{sum(v['Size'] for v in vols)} GiB")

    # the instance ends: its volumes go with it, and so do their devices
    instance.stop_agent()
    assert instance.wait_event("stop")["volumes_added"] == len(vols)
    instance.unmount()
    instance.ec2.terminate_instances(InstanceIds=[instance.instance_id])
    assert instance.grow_volumes() == []
    deadline = time.monotonic() + 10
    while instance.watcher.loops and time.monotonic() < deadline:
        time.sleep(0.1)
    assert instance.watcher.loops == {}


def test_a_restarted_agent_adopts_what_a_killed_one_left(instance):
    """An agent killed after CreateVolume, and one killed after AttachVolume but before
    delete-on-termination: the next start finishes both, creates nothing, leaks nothing."""
    ec2 = instance.ec2
    tags = [{"Key": "factory:grow", "Value": "true"}, {"Key": "factory:task", "Value": TASK},
            {"Key": "factory:instance", "Value": instance.instance_id}]
    created = ec2.create_volume(AvailabilityZone=instance.zone, Size=2, VolumeType="gp3", Encrypted=True,
                                TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])["VolumeId"]
    attached = ec2.create_volume(AvailabilityZone=instance.zone, Size=3, VolumeType="gp3", Encrypted=True,
                                 TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])["VolumeId"]
    ec2.attach_volume(VolumeId=attached, InstanceId=instance.instance_id, Device="/dev/xvdc")
    assert instance.mapping()[attached]["Ebs"]["DeleteOnTermination"] is False

    instance.start_agent()
    instance.wait_event("start")
    deadline = time.monotonic() + 60
    while len([e for e in instance.events() if e["event"] == "adopted"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    adopted = {e["volume_id"] for e in instance.events() if e["event"] == "adopted"}
    assert adopted == {created, attached}, instance.events_file.read_text()
    mapping = instance.mapping()
    assert mapping[created]["Ebs"]["DeleteOnTermination"] is True and mapping[attached]["Ebs"]["DeleteOnTermination"] is True
    assert len(instance.pool_devices()) == 3
    assert not [e for e in instance.events() if e["event"] == "volume-created"]

    # killed again, outright, and started once more: nothing new, nothing twice
    instance.stop_agent(signal.SIGKILL)
    instance.events_file.write_text("")
    instance.start_agent()
    instance.wait_event("start")
    deadline = time.monotonic() + 30
    while len([e for e in instance.events() if e["event"] == "adopted"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {e["volume_id"] for e in instance.events() if e["event"] == "adopted"} == {created, attached}
    assert len(instance.pool_devices()) == 3 and len(instance.grow_volumes()) == 2


def test_an_agent_killed_mid_add_is_finished_by_the_next_one(instance):
    # The restart itself takes seconds (a new Python, IMDS, EC2): plan each add for a
    # slower one so the kill does not also starve the writer; adoption is what is tested.
    instance.configure(add_seconds=8.0)
    instance.start_agent()
    instance.wait_event("start")
    writer = instance.writer(3072, 200)
    try:
        first = instance.wait_event("volume-created", timeout=60)
        instance.stop_agent(signal.SIGKILL)  # between create and usable space
        instance.start_agent()
        _, err = writer.communicate(timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err + instance.events_file.read_text()
    vols = instance.grow_volumes()
    assert first["volume_id"] in {v["VolumeId"] for v in vols}
    assert len(instance.pool_devices()) == 1 + len(vols)  # every volume made is in use: none leaked
    mapping = instance.mapping()
    assert all(mapping[v["VolumeId"]]["Ebs"]["DeleteOnTermination"] is True for v in vols)


def test_throttled_create_and_dropped_attach_are_retried_and_the_task_still_fits(instance):
    """The local cloud's faults: CreateVolume throttled twice (RequestLimitExceeded), the
    AttachVolume connection dropped once; the agent backs off, retries and the writer fits."""
    from factory.local.faults import Fault, arm, armed

    arm(instance.endpoint, Fault("ec2:CreateVolume", kind="throttle", times=2))
    arm(instance.endpoint, Fault("ec2:AttachVolume", kind="drop", times=1))
    instance.configure(add_seconds=4.0)  # the retries' backoff is part of this add's time
    instance.start_agent()
    instance.wait_event("start")
    result = instance.write(3 * 1024, 200)
    assert result.returncode == 0, result.stderr + instance.events_file.read_text()
    retries = [(e["operation"], e["error"]) for e in instance.events() if e["event"] == "retry"]
    assert retries.count(("create_volume", "RequestLimitExceeded")) == 2, retries
    assert [r for r in retries if r[0] == "attach_volume"], retries
    assert armed(instance.endpoint) == []
    vols = instance.grow_volumes()
    assert len(instance.pool_devices()) == 1 + len(vols)  # a retried call made no second volume


def test_a_waiting_volume_of_ours_is_used_before_a_new_one_is_made(instance):
    """A volume of this instance's agent that is created but not attached (a CreateVolume
    whose answer was lost) is what the next add uses: no second volume while one waits."""
    instance.start_agent()
    instance.wait_event("start")
    tags = [{"Key": "factory:grow", "Value": "true"}, {"Key": "factory:task", "Value": TASK},
            {"Key": "factory:instance", "Value": instance.instance_id}]
    waiting = instance.ec2.create_volume(AvailabilityZone=instance.zone, Size=4, VolumeType="gp3", Encrypted=True,
                                         TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])["VolumeId"]
    result = instance.write(3 * 1024, 200)
    assert result.returncode == 0, result.stderr + instance.events_file.read_text()
    first = next(e for e in instance.events() if e["event"] in ("volume-reused", "volume-created"))
    assert (first["event"], first["volume_id"]) == ("volume-reused", waiting), instance.events_file.read_text()
    assert len(instance.pool_devices()) == 1 + len(instance.grow_volumes())

