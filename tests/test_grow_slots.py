"""The grow agent's attachment slots (factory_grow.slots): the instance type's limit read
from DescribeInstanceTypes' raw answer, so a botocore that predates MaximumEbsAttachments
(the image's, from the pinned AWS CLI) still finds it, and what shares the limit.

The older botocore is made real: botocore's own EC2 model with the two fields taken out,
put first on botocore's search path ($AWS_DATA_PATH), as botocore 1.34 ships it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from factory_grow.slots import SHARED_SLOTS, TypeSlots, ebs_limit, type_slots

NEW_FIELDS = ("MaximumEbsAttachments", "AttachmentLimitType")


def older_botocore_data(where: Path) -> Path:
    """A botocore data folder whose EC2 model predates MaximumEbsAttachments."""
    import botocore

    shipped = Path(botocore.__file__).parent / "data/ec2/2016-11-15/service-2.json.gz"
    model = json.loads(gzip.decompress(shipped.read_bytes()))
    for name in NEW_FIELDS:
        model["shapes"]["EbsInfo"]["members"].pop(name)
    folder = where / "ec2/2016-11-15"
    folder.mkdir(parents=True)
    (folder / "service-2.json").write_text(json.dumps(model))
    return where


@pytest.fixture
def old_botocore(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_DATA_PATH", str(older_botocore_data(tmp_path / "botocore-data")))


def agent_for(moto, instance_type: str, monkeypatch, **settings):
    """The real agent's EC2 client and identity for a new instance of `instance_type` on the local cloud."""
    import boto3

    from factory.local.aws.moto_server import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY
    from factory_grow.agent import Agent, Config, make_ec2
    from factory_grow.imds import Identity
    from factory_grow.pool import BtrfsPool

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", LOCAL_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", LOCAL_SECRET_KEY)
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint)
    ami = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType=instance_type)["Instances"][0]
    me = Identity(instance_id=inst["InstanceId"], zone=inst["Placement"]["AvailabilityZone"], region="us-east-1",
                  instance_type=instance_type)
    events: list[tuple[str, dict]] = []
    agent = Agent(Config(task="t", max_gib=10, **settings), make_ec2("us-east-1", moto.endpoint), me, pool=BtrfsPool(),
                  emit=lambda event, **kw: events.append((event, kw)))
    return agent, ec2, events


def test_the_older_botocore_does_not_parse_the_limit(moto, old_botocore, monkeypatch):
    """The premise: with the image's botocore, the parsed answer has no MaximumEbsAttachments."""
    agent, _, _ = agent_for(moto, "d3en.12xlarge", monkeypatch)
    ebs = agent.ec2.describe_instance_types(InstanceTypes=["d3en.12xlarge"])["InstanceTypes"][0]["EbsInfo"]
    assert not set(NEW_FIELDS) & set(ebs), ebs


@pytest.mark.parametrize("instance_type, ebs", [
    ("d3en.12xlarge", 3),  # 28 shared: 1 network interface, 24 NVMe instance store disks
    ("m6id.large", 26),  # 1 NVMe disk
    ("c6i.large", 27),  # EBS only
    ("c7i.large", 32),  # a dedicated EBS limit
])
def test_the_limit_is_read_from_the_raw_answer_with_the_older_botocore(moto, old_botocore, monkeypatch, instance_type, ebs):
    agent, _, events = agent_for(moto, instance_type, monkeypatch)
    attached, enis, limit = agent.attachments()
    assert (attached, enis, limit) == (1, 1, ebs), events  # the root volume, the primary interface
    assert not [e for e in events if e[0] == "attach-limit-default"]


def test_a_further_network_interface_takes_a_shared_slot_and_the_agent_stops_there(moto, monkeypatch, tmp_path):
    # a disk under its floor (any folder's free space is under a million GiB): the agent would add
    agent, ec2, events = agent_for(moto, "d3en.12xlarge", monkeypatch, mountpoint=str(tmp_path), floor_gib=10**6)
    iid = agent.me.instance_id
    subnet = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["SubnetId"]
    eni = ec2.create_network_interface(SubnetId=subnet)["NetworkInterface"]["NetworkInterfaceId"]
    ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=iid, DeviceIndex=1)
    vol = ec2.create_volume(AvailabilityZone=agent.me.zone, Size=1)["VolumeId"]
    ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/xvdb")
    assert agent.attachments() == (2, 2, 2)
    # but no slot is left, so it stops, and asks EC2 for nothing more
    moto.calls(clear=True)
    agent.tick()
    assert agent.stopped == "attachment-limit"
    event, fields = events[-1]
    assert (event, fields["attached"], fields["network_interfaces"], fields["limit"]) == ("attachment-limit", 2, 2, 2)
    assert "ec2:CreateVolume" not in moto.calls()
    agent.tick()
    assert moto.calls() == ["ec2:DescribeInstances"]


def test_type_slots_from_a_raw_answer_without_the_new_fields():
    body = b"""<DescribeInstanceTypesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><instanceTypeSet>
      <item><instanceType>x9d.big</instanceType><instanceStorageInfo><disks><item><count>2</count></item>
      <item><count>3</count></item></disks><nvmeSupport>required</nvmeSupport></instanceStorageInfo>
      <ebsInfo><nvmeSupport>required</nvmeSupport></ebsInfo></item></instanceTypeSet></DescribeInstanceTypesResponse>"""
    slots = type_slots(body, "x9d.big")
    assert slots == TypeSlots(max_ebs=None, limit_type=None, nvme_disks=5)
    assert ebs_limit(slots, 1) == SHARED_SLOTS - 1 - 5
    assert ebs_limit(slots, 3) == SHARED_SLOTS - 3 - 5
    assert type_slots(body, "other.type") is None
    assert ebs_limit(None, 1) == 27  # nothing known: the shared rule with one interface


def test_ebs_limit_shared_and_dedicated():
    assert ebs_limit(TypeSlots(max_ebs=26, limit_type="shared", nvme_disks=1), 1) == 26
    assert ebs_limit(TypeSlots(max_ebs=26, limit_type="shared", nvme_disks=1), 3) == 24
    assert ebs_limit(TypeSlots(max_ebs=32, limit_type="dedicated", nvme_disks=0), 3) == 32


def test_the_role_ships_every_module_of_the_agent():
    """The grow_agent role copies the package file by file: a module it leaves out (slots.py
    was new) would make the agent fail to import on the image."""
    import yaml

    from tests.grow_fixtures import AGENT_FILES

    tasks = yaml.safe_load((AGENT_FILES.parent / "tasks/install.yml").read_text())
    shipped = next(set(t["loop"]) for t in tasks if "factory_grow/{{ item }}" in str(t.get("ansible.builtin.copy", {}).get("src", "")))
    assert shipped == {p.name for p in (AGENT_FILES / "factory_grow").glob("*.py")}
