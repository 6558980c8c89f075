"""The grow agent end to end on the local cloud: a real agent process, moto's EC2 over
HTTP, a local IMDSv2 endpoint, loop devices for every attached volume (the attach
watcher) and the LVM + XFS pool AWS instances run (lvm2's commands from factory's LVM
double where this kernel has no device-mapper), btrfs too for the fast writer; a writer
that fills the disk faster than its start size."""

from __future__ import annotations

import signal
import time

import pytest

from factory.local.instance.grow_rig import TASK
from tests.grow_fixtures import requires_btrfs, requires_lvm_xfs

pytestmark = [pytest.mark.slow, requires_lvm_xfs]


@pytest.fixture
def instance(request, moto, tmp_path):
    """An instance launched as a growing launch template makes it (a 2 GiB encrypted data
    volume at /dev/xvdb, tagged factory:grow), its volumes on loop devices, its data
    volume made an LVM + XFS pool at the data root (the boot unit's job); see GrowRig.
    Parametrized with `pool` by a test that runs on both backends."""
    from factory.local.instance.grow_rig import GrowRig

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
    pool = instance.settled_pool_devices()  # an add begun as the writer ended is finished first
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
    assert len(pool) == 1 + len(vols)
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
    assert len(instance.settled_pool_devices()) == 1 + len(vols)  # every volume made is in use: none leaked
    mapping = instance.mapping()
    assert all(mapping[v["VolumeId"]]["Ebs"]["DeleteOnTermination"] is True for v in vols)


def test_throttled_create_and_dropped_attach_are_retried_and_the_task_still_fits(instance):
    """The local cloud's faults: CreateVolume throttled twice (RequestLimitExceeded), the
    AttachVolume connection dropped once; the agent backs off, retries and the writer fits."""
    from factory.local.aws.faults import Fault, arm, armed

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
    assert len(instance.settled_pool_devices()) == 1 + len(vols)  # a retried call made no second volume


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
    assert len(instance.settled_pool_devices()) == 1 + len(instance.grow_volumes())



def _agent_calls(server, *ops: str) -> list[str]:
    """The agent's own calls of `ops` in the local cloud's call log (the rig's are factory-local)."""
    return [op for who, op in server.calls_by() if who != "factory-local" and op in ops]


def test_at_the_attachment_limit_the_agent_stops_instead_of_retrying(moto, tmp_path):
    """A d3en.12xlarge has 24 NVMe instance store disks: of its 28 shared slots, 3 are left
    for EBS volumes. With the image's botocore (which predates MaximumEbsAttachments) the
    agent still reads the limit, adds what fits and stops with `attachment-limit`: no
    AttachVolume refused, no add retried forever."""
    from factory.local.instance.grow_rig import GrowRig
    from tests.test_grow_slots import older_botocore_data

    data = older_botocore_data(tmp_path / "botocore-data")
    with GrowRig.start(moto.endpoint, tmp_path / "instance", data_gib=1, instance_type="d3en.12xlarge",
                       settings={"step_seconds": 1, "min_step_gib": 1}, agent_env={"AWS_DATA_PATH": str(data)}) as rig:
        room = 3 - len(rig.mapping())
        assert room >= 1, rig.mapping()
        moto.calls(clear=True)
        rig.start_agent()
        rig.wait_event("start")
        writer = rig.writer(6 * 1024, 200)  # more than the data volume and what fits beside it
        try:
            stop = rig.wait_event("attachment-limit", timeout=120)
            time.sleep(3)  # what would come next: another add, a retry
        finally:
            writer.kill()
            writer.communicate()
        events = rig.events()
        assert (stop["attached"], stop["network_interfaces"], stop["limit"]) == (3, 1, 3), stop
        assert len([e for e in events if e["event"] == "grown"]) == room
        assert not [e for e in events if e["event"] in ("add-failed", "attach-limit-default")], rig.events_file.read_text()
        assert len(_agent_calls(moto, "ec2:CreateVolume")) == len(_agent_calls(moto, "ec2:AttachVolume")) == room


def test_a_volume_in_error_is_dropped_at_once_the_next_attempt_gets_a_new_one_and_waits_poll_gently(tmp_path):
    """The local cloud keeps new volumes `creating` for 3 s (InvalidVolume.NotFound by id
    for the first 1.5 s) and breaks the first CreateVolume: its volume ends in `error`.
    The agent gives that volume up as soon as EC2 shows the state (and deletes it), asks
    for a new one with a new client token, waits out NotFound, and polls EC2 about once a
    second meanwhile; added volumes get device names from /dev/xvdf on."""
    from factory.local.aws.faults import Fault, arm
    from factory.local.aws.moto_server import MotoServer
    from factory.local.instance.grow_rig import GrowRig

    server = MotoServer.start(volume_delay=3.0)
    try:
        arm(server.endpoint, Fault("ec2:CreateVolume", kind="broken"))
        with GrowRig.start(server.endpoint, tmp_path / "instance", data_gib=2, settings={"add_seconds": 10.0}) as rig:
            server.calls(clear=True)
            rig.start_agent()
            rig.wait_event("start")
            result = rig.write(3 * 1024, 100)
            events = rig.events()
            assert result.returncode == 0, result.stderr + rig.events_file.read_text()
            created = [e["volume_id"] for e in events if e["event"] == "volume-created"]
            failed = [e for e in events if e["event"] == "add-failed"]
            assert len(failed) == 1 and " is error" in failed[0]["error"], rig.events_file.read_text()
            broken = created[0]
            assert len(set(created)) == len(created) >= 2  # a new token: a new volume, not the broken one again
            assert ("volume-deleted", broken) in [(e["event"], e.get("volume_id")) for e in events]
            assert broken not in {v["VolumeId"] for v in rig.grow_volumes()}
            assert [e for e in events if e["event"] == "volume-not-found-yet"]
            assert len(instance_pool := rig.settled_pool_devices()) == 1 + len(rig.grow_volumes()), instance_pool

            def at(e: dict) -> float:
                import datetime
                return datetime.datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()

            first_add = next(e for e in events if e["event"] == "add")
            assert at(failed[0]) - at(first_add) < 10  # given up on the state, not after wait_seconds (60)
            # waiting, the agent asks EC2 about once a second: count its Describe calls over the adds
            spans, start = 0.0, None
            for e in events:
                if e["event"] == "add":
                    start = at(e)
                elif e["event"] in ("grown", "add-failed") and start is not None:
                    spans, start = spans + at(e) - start, None
            adds = len([e for e in events if e["event"] == "add"])
            describes = _agent_calls(server, "ec2:DescribeVolumes", "ec2:DescribeInstances")
            assert len(describes) <= 1.25 * spans + 6 * adds + 2, (len(describes), spans, adds)
            names = [e["device_name"] for e in events if e["event"] == "attach-requested"]
            assert names and all("/dev/xvdf" <= n <= "/dev/xvdz" for n in names), names
    finally:
        server.stop()
