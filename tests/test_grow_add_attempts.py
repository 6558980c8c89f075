"""One add's attempts, in process against the local cloud (real botocore over HTTP): a
volume EBS could not make (the `broken` fault: it ends in `error`) fails its attempt at
once, and the next attempt, even of the same size, sends a new client token, so EC2 makes
a new volume instead of answering the failed one again (its DeleteVolume fails here, so
the failed volume is still there to be answered)."""

from __future__ import annotations

from factory.local.aws.faults import Fault, arm, clear


def test_the_next_attempt_after_a_volume_in_error_gets_a_new_volume(moto, monkeypatch, tmp_path):
    import boto3

    from factory.local.aws.moto_server import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY
    from factory_grow.agent import Agent, Config, make_ec2
    from factory_grow.imds import Identity
    from factory_grow.pool import BtrfsPool

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", LOCAL_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", LOCAL_SECRET_KEY)
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint)
    ami = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="c6i.large")["Instances"][0]
    me = Identity(instance_id=inst["InstanceId"], zone=inst["Placement"]["AvailabilityZone"], region="us-east-1",
                  instance_type="c6i.large")
    events: list[tuple[str, dict]] = []
    # no device ever shows up here (no attach watcher): the second attempt ends there, after 1 s
    cfg = Config(task="t", max_gib=10, wait_seconds=1.0, device_dirs=[str(tmp_path)], mountpoint=str(tmp_path))
    agent = Agent(cfg, make_ec2("us-east-1", moto.endpoint), me, pool=BtrfsPool(), emit=lambda event, **kw: events.append((event, kw)))
    clear(moto.endpoint)
    arm(moto.endpoint, Fault("ec2:CreateVolume", kind="broken"))
    arm(moto.endpoint, Fault("ec2:DeleteVolume", kind="error"))

    assert agent.add(2, "floor") is False
    failed = [kw for e, kw in events if e == "add-failed"]
    assert len(failed) == 1 and " is error" in failed[0]["error"], events
    broken = next(kw["volume_id"] for e, kw in events if e == "volume-created")
    assert ("delete-failed", broken) in [(e, kw.get("volume_id")) for e, kw in events]
    assert ec2.describe_volumes(VolumeIds=[broken])["Volumes"][0]["State"] == "error"

    agent.not_before = 0.0
    assert agent.add(2, "floor") is False  # the device never shows up here; the volume is what counts
    created = [kw["volume_id"] for e, kw in events if e == "volume-created"]
    assert len(created) == 2 and created[1] != broken, events
    state = ec2.describe_volumes(VolumeIds=[created[1]])["Volumes"][0]
    assert state["State"] == "in-use" and state["Attachments"][0]["Device"] == "/dev/xvdf"


def test_an_attachment_ec2_refuses_at_the_limit_stops_the_agent_and_deletes_the_volume(moto, monkeypatch, tmp_path):
    """The agent's count can be behind EC2's (a network interface attached meanwhile; here a
    configured attach_limit above the type's): EC2 refuses with AttachmentLimitExceeded, the
    agent stops adding instead of retrying forever, and the volume it made (no data on it)
    is deleted, not left behind."""
    from tests.test_grow_slots import agent_for

    agent, ec2, events = agent_for(moto, "d3en.12xlarge", monkeypatch, attach_limit=10, wait_seconds=1.0,
                                   device_dirs=[str(tmp_path)], mountpoint=str(tmp_path))
    for device in ("/dev/xvdf", "/dev/xvdg"):  # with the root volume: the 3 EBS volumes a d3en.12xlarge takes
        vol = ec2.create_volume(AvailabilityZone=agent.me.zone, Size=1)["VolumeId"]
        ec2.attach_volume(VolumeId=vol, InstanceId=agent.me.instance_id, Device=device)
    assert agent.add(2, "floor") is False
    assert agent.stopped == "attachment-limit"
    made = next(kw["volume_id"] for e, kw in events if e == "volume-created")
    stop = next(kw for e, kw in events if e == "attachment-limit")
    assert stop["volume_id"] == made and "AttachmentLimitExceeded" in stop["error"] and stop["attached"] == 3
    assert ("volume-deleted", made) in [(e, kw.get("volume_id")) for e, kw in events]
    assert not [e for e, _ in events if e == "add-failed"]
    assert made not in {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
