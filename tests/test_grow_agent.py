"""The grow agent end to end on the local cloud: a real agent process, moto's EC2 over
HTTP, a local IMDSv2 endpoint, loop devices for every attached volume (the attach
watcher) and a btrfs pool; a writer that fills the disk faster than its start size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.grow_fixtures import AGENT_FILES, WRITER, requires_btrfs, unmounting

pytestmark = requires_btrfs

TASK = "grow-demo"
DATA_GIB = 2


def ec2_client(moto):
    import boto3

    return boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@dataclass
class Instance:
    ec2: Any
    instance_id: str
    zone: str
    watcher: Any
    imds: Any
    mountpoint: Path
    config: Path
    events: Path
    tmp: Path
    moto: Any
    agent: subprocess.Popen | None = None

    def configure(self, **overrides: Any) -> None:
        self.config.write_text(json.dumps(json.loads(self.config.read_text()) | overrides))

    def start_agent(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(AGENT_FILES), AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        env.pop("AWS_PROFILE", None)
        out = open(self.events, "a")
        self.agent = subprocess.Popen([sys.executable, "-m", "factory_grow.agent", "--config", str(self.config)],
                                      stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        return self.agent

    def stop_agent(self, sig: int = signal.SIGTERM) -> None:
        if self.agent and self.agent.poll() is None:
            self.agent.send_signal(sig)
            self.agent.wait(timeout=30)

    def read_events(self) -> list[dict]:
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines() if line.startswith("{")]

    def wait_event(self, name: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.read_events() if e["event"] == name]
            if found:
                return found[-1]
            assert self.agent is None or self.agent.poll() is None, self.events.read_text()
            time.sleep(0.1)
        raise AssertionError(f"no {name} event in {timeout}s:\n{self.events.read_text() if self.events.exists() else ''}")

    def write(self, mib: int, rate: float) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", WRITER, str(self.mountpoint / "work.bin"), str(mib), str(rate)],
                              capture_output=True, text=True, timeout=300)

    def grow_volumes(self) -> list[dict]:
        vols = []
        for page in self.ec2.get_paginator("describe_volumes").paginate(
                Filters=[{"Name": "tag:factory:instance", "Values": [self.instance_id]}]):
            vols += page["Volumes"]
        return vols

    def mapping(self) -> dict[str, dict]:
        inst = self.ec2.describe_instances(InstanceIds=[self.instance_id])["Reservations"][0]["Instances"][0]
        return {m["Ebs"]["VolumeId"]: m for m in inst.get("BlockDeviceMappings", [])}

    def pool_devices(self) -> list[str]:
        from factory_grow.pool import BtrfsPool

        return BtrfsPool().devices(str(self.mountpoint))


@pytest.fixture
def instance(moto, tmp_path):
    """An instance launched as a growing launch template makes it (a 2 GiB encrypted data
    volume at /dev/xvdb, tagged factory:grow), its volumes on loop devices, its data
    volume made a btrfs pool at the data root (the boot unit's job)."""
    from factory.local.metadata import MetadataService
    from factory.local.volumes import AttachWatcher
    from factory_grow.pool import BtrfsPool

    ec2 = ec2_client(moto)
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    inst = ec2.run_instances(
        ImageId=ami, MinCount=1, MaxCount=1, InstanceType="c6i.large",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvdb", "Ebs": {"VolumeSize": DATA_GIB, "VolumeType": "gp3",
                                                                 "Encrypted": True, "DeleteOnTermination": True}}],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "factory:grow", "Value": "true"}, {"Key": "factory:task", "Value": TASK}]}],
    )["Instances"][0]
    iid, zone = inst["InstanceId"], inst["Placement"]["AvailabilityZone"]
    watcher = AttachWatcher(ec2_client(moto), iid, tmp_path / "by-id", tmp_path / "volumes", delay=0.5).start()
    imds = MetadataService.start(iid, zone, "c6i.large")
    mnt = tmp_path / "docker"
    data_volume = next(m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"] if m["DeviceName"] == "/dev/xvdb")
    config = tmp_path / "grow.json"
    config.write_text(json.dumps({
        "task": TASK, "max_gib": 40, "mountpoint": str(mnt), "interval": 1.0,
        "imds_endpoint": imds.endpoint, "ec2_endpoint": moto.endpoint, "device_dirs": [str(tmp_path / "by-id")],
        "pool_backend": "btrfs", "add_seconds": 2.0, "margin": 2.0, "floor_fraction": 0.05, "floor_gib": 0.3,
        "min_step_gib": 2, "step_seconds": 10, "wait_seconds": 60, "backoff_seconds": 0.2,
    }))
    it = Instance(ec2, iid, zone, watcher, imds, mnt, config, tmp_path / "events.jsonl", tmp_path, moto)
    with unmounting(mnt):
        BtrfsPool().ensure(watcher.device_of(data_volume), str(mnt))
        try:
            yield it
        finally:
            it.stop_agent(signal.SIGKILL)
    watcher.stop()
    imds.stop()


def test_without_the_agent_the_writer_runs_out_of_space(instance):
    """The writer below needs more than the data volume: alone it fails, as on AWS Batch."""
    result = instance.write(3 * 1024, 250)
    assert result.returncode == 28, result.stdout + result.stderr
    assert "No space left on device" in result.stderr


def test_a_fast_writer_finishes_with_volumes_added_tagged_and_deleted_with_the_instance(instance):
    instance.start_agent()
    instance.wait_event("start")
    result = instance.write(3 * 1024, 250)
    assert result.returncode == 0, result.stderr + instance.events.read_text()
    events = instance.read_events()
    grown = [e for e in events if e["event"] == "grown"]
    assert grown, instance.events.read_text()
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
    subprocess.run(["umount", str(instance.mountpoint)], check=True)
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
    while len([e for e in instance.read_events() if e["event"] == "adopted"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    adopted = {e["volume_id"] for e in instance.read_events() if e["event"] == "adopted"}
    assert adopted == {created, attached}, instance.events.read_text()
    mapping = instance.mapping()
    assert mapping[created]["Ebs"]["DeleteOnTermination"] is True and mapping[attached]["Ebs"]["DeleteOnTermination"] is True
    assert len(instance.pool_devices()) == 3
    assert not [e for e in instance.read_events() if e["event"] == "volume-created"]

    # killed again, outright, and started once more: nothing new, nothing twice
    instance.stop_agent(signal.SIGKILL)
    instance.events.write_text("")
    instance.start_agent()
    instance.wait_event("start")
    deadline = time.monotonic() + 30
    while len([e for e in instance.read_events() if e["event"] == "adopted"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {e["volume_id"] for e in instance.read_events() if e["event"] == "adopted"} == {created, attached}
    assert len(instance.pool_devices()) == 3 and len(instance.grow_volumes()) == 2


def test_an_agent_killed_mid_add_is_finished_by_the_next_one(instance):
    # The restart itself takes seconds (a new Python, IMDS, EC2): plan each add for a
    # slower one so the kill does not also starve the writer; adoption is what is tested.
    instance.configure(add_seconds=8.0)
    instance.start_agent()
    instance.wait_event("start")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(instance.mountpoint / "work.bin"), "3072", "200"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = instance.wait_event("volume-created", timeout=60)
        instance.stop_agent(signal.SIGKILL)  # between create and usable space
        instance.start_agent()
        _, err = writer.communicate(timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err + instance.events.read_text()
    vols = instance.grow_volumes()
    assert first["volume_id"] in {v["VolumeId"] for v in vols}
    assert len(instance.pool_devices()) == 1 + len(vols)  # every volume made is in use: none leaked
    mapping = instance.mapping()
    assert all(mapping[v["VolumeId"]]["Ebs"]["DeleteOnTermination"] is True for v in vols)


def test_throttled_create_and_dropped_attach_are_retried_and_the_task_still_fits(instance):
    """The local cloud's faults: CreateVolume throttled twice (RequestLimitExceeded), the
    AttachVolume connection dropped once; the agent backs off, retries and the writer fits."""
    from factory.local.faults import Fault, arm, armed

    arm(instance.moto.endpoint, Fault("ec2:CreateVolume", kind="throttle", times=2))
    arm(instance.moto.endpoint, Fault("ec2:AttachVolume", kind="drop", times=1))
    instance.configure(add_seconds=4.0)  # the retries' backoff is part of this add's time
    instance.start_agent()
    instance.wait_event("start")
    result = instance.write(3 * 1024, 200)
    assert result.returncode == 0, result.stderr + instance.events.read_text()
    retries = [(e["operation"], e["error"]) for e in instance.read_events() if e["event"] == "retry"]
    assert retries.count(("create_volume", "RequestLimitExceeded")) == 2, retries
    assert [r for r in retries if r[0] == "attach_volume"], retries
    assert armed(instance.moto.endpoint) == []
    vols = instance.grow_volumes()
    assert len(instance.pool_devices()) == 1 + len(vols)  # a retried call made no second volume
