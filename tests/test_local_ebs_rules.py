"""The local cloud's EBS rules (factory/local/aws/rules/ebs.py, docs/local-cloud.md): volume
states and eventual consistency, a volume that ends in `error`, and the attachment limit
EBS volumes share with network interfaces and NVMe instance store. Real boto3 over HTTP
to the real server; each rule both ways."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from factory.aws import Clients
from factory.local.aws import faults
from factory.local.aws.moto_server import MotoServer

REGION = "us-east-1"
VOLUME_DELAY = 2.0


@pytest.fixture(scope="module")
def server():
    s = MotoServer.start(volume_delay=VOLUME_DELAY)
    yield s
    s.stop()


@pytest.fixture
def ec2(server, monkeypatch):
    server.reset()
    faults.clear(server.endpoint)
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return Clients(REGION, server.endpoint).ec2()


def code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def launch(ec2, instance_type: str) -> tuple[str, str]:
    ami = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType=instance_type)["Instances"][0]
    return inst["InstanceId"], inst["Placement"]["AvailabilityZone"]


def ready_volume(ec2, zone: str) -> str:
    vid = ec2.create_volume(AvailabilityZone=zone, Size=1)["VolumeId"]
    time.sleep(VOLUME_DELAY + 0.1)
    return vid


def test_a_new_volume_is_not_found_then_creating_then_available_and_attaches_only_then(ec2):
    iid, zone = launch(ec2, "c6i.large")
    vol = ec2.create_volume(AvailabilityZone=zone, Size=1)
    assert vol["State"] == "creating"
    with pytest.raises(ClientError) as err:
        ec2.describe_volumes(VolumeIds=[vol["VolumeId"]])
    assert code(err.value) == "InvalidVolume.NotFound"
    time.sleep(VOLUME_DELAY / 2 + 0.1)
    assert ec2.describe_volumes(VolumeIds=[vol["VolumeId"]])["Volumes"][0]["State"] == "creating"
    with pytest.raises(ClientError) as err:
        ec2.attach_volume(VolumeId=vol["VolumeId"], InstanceId=iid, Device="/dev/xvdf")
    assert code(err.value) == "IncorrectState"
    time.sleep(VOLUME_DELAY / 2)
    assert ec2.describe_volumes(VolumeIds=[vol["VolumeId"]])["Volumes"][0]["State"] == "available"
    ec2.attach_volume(VolumeId=vol["VolumeId"], InstanceId=iid, Device="/dev/xvdf")
    assert ec2.describe_volumes(VolumeIds=[vol["VolumeId"]])["Volumes"][0]["State"] == "in-use"


def test_a_broken_create_volume_makes_a_volume_in_error(ec2, server):
    _, zone = launch(ec2, "c6i.large")
    faults.arm(server.endpoint, faults.Fault("ec2:CreateVolume", kind="broken"))
    broken = ec2.create_volume(AvailabilityZone=zone, Size=1)["VolumeId"]
    fine = ec2.create_volume(AvailabilityZone=zone, Size=1)["VolumeId"]
    time.sleep(VOLUME_DELAY + 0.1)
    states = {v["VolumeId"]: v["State"] for v in ec2.describe_volumes(VolumeIds=[broken, fine])["Volumes"]}
    assert states == {broken: "error", fine: "available"}
    with pytest.raises(Exception, match="only ec2:CreateVolume"):
        faults.Fault("ec2:RunInstances", kind="broken")


def test_attachments_stop_at_the_shared_limit_of_ebs_network_interfaces_and_instance_store(ec2):
    """d3en.12xlarge: 24 NVMe instance store disks and the primary network interface leave
    3 EBS volumes (DescribeInstanceTypes' MaximumEbsAttachments); the root volume is one."""
    iid, zone = launch(ec2, "d3en.12xlarge")
    limit = ec2.describe_instance_types(InstanceTypes=["d3en.12xlarge"])["InstanceTypes"][0]["EbsInfo"]["MaximumEbsAttachments"]
    assert limit == 3
    for device in ("/dev/xvdf", "/dev/xvdg"):
        ec2.attach_volume(VolumeId=ready_volume(ec2, zone), InstanceId=iid, Device=device)
    with pytest.raises(ClientError) as err:
        ec2.attach_volume(VolumeId=ready_volume(ec2, zone), InstanceId=iid, Device="/dev/xvdh")
    assert code(err.value) == "AttachmentLimitExceeded"


def test_a_second_network_interface_takes_a_shared_slot(ec2):
    iid, zone = launch(ec2, "d3en.12xlarge")
    subnet = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["SubnetId"]
    eni = ec2.create_network_interface(SubnetId=subnet)["NetworkInterface"]["NetworkInterfaceId"]
    ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=iid, DeviceIndex=1)
    ec2.attach_volume(VolumeId=ready_volume(ec2, zone), InstanceId=iid, Device="/dev/xvdf")
    with pytest.raises(ClientError) as err:
        ec2.attach_volume(VolumeId=ready_volume(ec2, zone), InstanceId=iid, Device="/dev/xvdg")
    assert code(err.value) == "AttachmentLimitExceeded"
