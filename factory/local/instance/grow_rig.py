"""One growing instance on the local cloud, for the grow agent's tests and its benchmark.

An instance launched in moto the way a growing launch template makes it (a data volume
at /dev/xvdb, encrypted, deleted with the instance, tagged `factory:grow`), its volumes
on loop devices (the attach watcher), a local IMDSv2 endpoint, the data volume made a
pool at a data root (what the image's boot unit does): LVM + XFS by default, the pool AWS
instances run (real XFS; lvm2's commands from factory's LVM double where this kernel has
no device-mapper, factory/local/instance/lvm_double), or btrfs (`pool="btrfs"`); and the real
agent process (`python -m factory_grow.agent`) pointed at all of them.

    with GrowRig.start(endpoint, workdir, data_gib=2, settings={...}) as rig:
        rig.start_agent(); rig.wait_event("start")
        rig.write(3072, 200)        # a task's writer: CompletedProcess, 28 = out of space
        rig.events(), rig.grow_volumes(), rig.pool_devices()

The pool, the agent and the writer live in a mount namespace of their own (as an
instance would), so the pool's mount never shows up in other namespaces on the machine.
Leaving the block stops the agent, unmounts the pool (the namespace goes), terminates the
instance (its delete-on-termination volumes go with it) and detaches every loop device.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.resources import data_dir

TASK = "grow-demo"
INSTANCE_TYPE = "c6i.large"

# A task's writer, as a container would run it: `python -c WRITER PATH MIB RATE_MIB_S`.
# It writes MIB MiB at about RATE MiB/s (flushed to the device every 32 MiB so the disk
# fills at that rate, not the page cache) and exits 0, or 28 (ENOSPC) when the disk is full.
WRITER = r"""
import errno, os, sys, time
path, mib, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
chunk = os.urandom(1024 * 1024)
start = time.monotonic()
i = 0
try:
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(chunk)
            if i % 32 == 31:
                f.flush(); os.fdatasync(f.fileno())
            ahead = (i + 1) / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        f.flush(); os.fdatasync(f.fileno())
except OSError as exc:
    if exc.errno == errno.ENOSPC:
        print(f"No space left on device after {i} MiB", file=sys.stderr)
        sys.exit(28)
    raise
print(f"wrote {mib} MiB in {time.monotonic() - start:.1f}s")
"""


def agent_files() -> Path:
    """Where the grow agent's package lives (the role ships it to the image from here)."""
    return data_dir("ansible") / "roles/grow_agent/files"


@dataclass
class GrowRig:
    endpoint: str
    workdir: Path
    ec2: Any
    instance_id: str
    zone: str
    watcher: Any
    imds: Any
    pool: str = "lvm-xfs"  # the pool's backend: "lvm-xfs" (as on AWS) or "btrfs"
    lvm_double: Path | None = None  # the LVM double's state folder when it stands in for lvm2
    lock: Any = None  # factory.local.instance.lvm_double.exclusive while an LVM pool named `factory` is in this machine's /dev
    namespace: subprocess.Popen | None = None  # holds the instance's mount namespace
    agent: subprocess.Popen | None = None
    agent_env: dict[str, str] = field(default_factory=dict)  # more of the agent's environment (e.g. AWS_DATA_PATH)
    _events_offset: int = field(default=0, repr=False)

    @property
    def mountpoint(self) -> Path:
        return self.workdir / "docker"

    def inside(self, *argv: str) -> list[str]:
        """`argv` run in the instance's mount namespace (nsenter execs it: same process)."""
        assert self.namespace is not None
        return ["nsenter", f"--target={self.namespace.pid}", "--mount", "--", *argv]

    def _python(self, *args: str) -> list[str]:
        return self.inside(sys.executable, *args)

    def _env(self) -> dict[str, str]:
        from factory.local.aws.moto_server import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, scrub_env

        env = dict(os.environ, PYTHONPATH=str(agent_files()), AWS_ACCESS_KEY_ID=LOCAL_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=LOCAL_SECRET_KEY)
        if self.lvm_double is not None:
            env["PATH"] = f"{self.workdir / 'lvm-bin'}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        return scrub_env(env) | self.agent_env

    @property
    def config(self) -> Path:
        return self.workdir / "grow.json"

    @property
    def events_file(self) -> Path:
        return self.workdir / "events.jsonl"

    @classmethod
    def start(cls, endpoint: str, workdir: Path, data_gib: int = 2, max_gib: int = 40, attach_delay: float = 0.5,
              settings: dict[str, Any] | None = None, region: str = "us-east-1", instance_type: str = INSTANCE_TYPE,
              agent_env: dict[str, str] | None = None, pool: str = "lvm-xfs") -> GrowRig:
        import boto3
        from botocore.config import Config

        from factory.local.aws.moto_server import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY
        from factory.local.instance import lvm_double
        from factory.local.instance.metadata import MetadataService
        from factory.local.instance.volumes import AttachWatcher

        def client() -> Any:
            # Marked factory-local in the call log: the rig and its watcher stand in for EC2 and
            # the test, and only the agent's own calls are the instance role's.
            return boto3.client("ec2", region_name=region, endpoint_url=endpoint, config=Config(user_agent_extra="factory-local"),
                                aws_access_key_id=LOCAL_ACCESS_KEY, aws_secret_access_key=LOCAL_SECRET_KEY)

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        ec2 = client()
        # Any of moto's built-in images will do: the first page is enough.
        ami = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
        inst = ec2.run_instances(
            ImageId=ami, MinCount=1, MaxCount=1, InstanceType=instance_type,
            BlockDeviceMappings=[{"DeviceName": "/dev/xvdb", "Ebs": {"VolumeSize": data_gib, "VolumeType": "gp3",
                                                                     "Encrypted": True, "DeleteOnTermination": True}}],
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "factory:grow", "Value": "true"},
                                                                      {"Key": "factory:task", "Value": TASK}]}],
        )["Instances"][0]
        iid, zone = inst["InstanceId"], inst["Placement"]["AvailabilityZone"]
        watcher = AttachWatcher(client(), iid, workdir / "by-id", workdir / "volumes", delay=attach_delay).start()
        imds = MetadataService.start(iid, zone, instance_type)
        rig = cls(endpoint=endpoint, workdir=workdir, ec2=ec2, instance_id=iid, zone=zone, watcher=watcher, imds=imds,
                  agent_env=dict(agent_env or {}), pool=pool)
        if pool == "lvm-xfs":
            rig.lock = lvm_double.exclusive().__enter__()
            if lvm_double.device_mapper_missing():
                lvm_double.install(workdir / "lvm-bin", workdir / "lvm-double")
                rig.lvm_double = workdir / "lvm-double"
        rig.namespace = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "infinity"],
                                         start_new_session=True)
        own = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{rig.namespace.pid}/ns/mnt") == own and time.monotonic() < deadline:
            time.sleep(0.02)  # unshare has not entered its namespace yet
        rig.config.write_text(json.dumps({
            "task": TASK, "max_gib": max_gib, "mountpoint": str(rig.mountpoint), "interval": 1.0,
            "imds_endpoint": imds.endpoint, "ec2_endpoint": endpoint, "device_dirs": [str(workdir / "by-id")],
            "pool_backend": pool, "add_seconds": 2.0, "margin": 2.0, "floor_fraction": 0.05, "floor_gib": 0.3,
            "min_step_gib": 2, "step_seconds": 10, "wait_seconds": 60, "backoff_seconds": 0.2,
        } | (settings or {})))
        data_volume = next(m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"] if m["DeviceName"] == "/dev/xvdb")
        try:
            made = subprocess.run(rig._python("-m", "factory_grow.pool", "ensure", watcher.device_of(data_volume),
                                              str(rig.mountpoint), "--backend", pool),
                                  capture_output=True, text=True, env=rig._env(), timeout=120)
            if made.returncode != 0:
                raise RuntimeError(f"the pool did not come up: {made.stdout}{made.stderr}")
        except BaseException:
            rig.close()
            raise
        return rig

    # -- the agent ------------------------------------------------------------------------

    def configure(self, **overrides: Any) -> None:
        self.config.write_text(json.dumps(json.loads(self.config.read_text()) | overrides))

    def start_agent(self) -> subprocess.Popen:
        with open(self.events_file, "a") as out:
            self.agent = subprocess.Popen(self._python("-m", "factory_grow.agent", "--config", str(self.config)),
                                          stdout=out, stderr=subprocess.STDOUT, env=self._env())
        return self.agent

    def stop_agent(self, sig: int = signal.SIGTERM) -> None:
        if self.agent and self.agent.poll() is None:
            self.agent.send_signal(sig)
            self.agent.wait(timeout=30)

    def events(self) -> list[dict[str, Any]]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines() if line.startswith("{")]

    def wait_event(self, name: str, timeout: float = 60, count: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e["event"] == name]
            if len(found) >= count:
                return found[-1]
            if self.agent is not None and self.agent.poll() is not None:
                raise AssertionError(f"the agent exited ({self.agent.returncode}):\n{self.events_file.read_text()}")
            time.sleep(0.1)
        raise AssertionError(f"no {name} event within {timeout}s:\n{self.events_file.read_text() if self.events_file.exists() else ''}")

    # -- the task and what it left ----------------------------------------------------------

    def writer(self, mib: int, rate: float, name: str = "work.bin") -> subprocess.Popen:
        return subprocess.Popen(self._python("-c", WRITER, str(self.mountpoint / name), str(mib), str(rate)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def write(self, mib: int, rate: float, name: str = "work.bin") -> subprocess.CompletedProcess:
        return subprocess.run(self._python("-c", WRITER, str(self.mountpoint / name), str(mib), str(rate)),
                              capture_output=True, text=True, timeout=600)

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        """A command inside the instance's mount namespace (e.g. fallocate on the pool)."""
        return subprocess.run(self.inside(*argv), capture_output=True, text=True, timeout=120, check=True)

    def grow_volumes(self) -> list[dict[str, Any]]:
        """Every volume tagged with this instance (paged)."""
        vols: list[dict[str, Any]] = []
        for page in self.ec2.get_paginator("describe_volumes").paginate(
                Filters=[{"Name": "tag:factory:instance", "Values": [self.instance_id]}]):
            vols += page["Volumes"]
        return vols

    def mapping(self) -> dict[str, dict[str, Any]]:
        """The instance's block device mapping by volume id (one instance: one page)."""
        inst = self.ec2.describe_instances(InstanceIds=[self.instance_id])["Reservations"][0]["Instances"][0]  # one instance id: no paging (MaxResults) needed
        return {m["Ebs"]["VolumeId"]: m for m in inst.get("BlockDeviceMappings", [])}

    def pool_devices(self) -> list[str]:
        out = subprocess.run(self._python("-m", "factory_grow.pool", "devices", str(self.mountpoint), "--backend", self.pool),
                             capture_output=True, text=True, env=self._env(), timeout=60, check=True).stdout
        return json.loads(out)

    def settled_pool_devices(self, timeout: float = 60) -> list[str]:
        """The pool's devices once every grow volume of this instance is in it, or as they
        are when `timeout` runs out. A writer may end while the agent is still adding a
        volume it began just before (created and attached, not yet in the pool): comparing
        the two at once would call that volume leaked. One that truly leaked stays out,
        and the caller's comparison fails."""
        deadline = time.monotonic() + timeout
        while True:
            devices = self.pool_devices()
            if len(devices) == 1 + len(self.grow_volumes()) or time.monotonic() > deadline:
                return devices
            time.sleep(0.5)

    def free_bytes(self) -> int:
        code = f"import os; s = os.statvfs({str(self.mountpoint)!r}); print(s.f_bavail * s.f_frsize)"
        return int(subprocess.run(self._python("-c", code), capture_output=True, text=True, timeout=60, check=True).stdout)

    # -- the end ----------------------------------------------------------------------------

    def unmount(self) -> None:
        """Unmount the pool and end the instance's mount namespace (nothing else holds it)."""
        if self.namespace is None:
            return
        if self.namespace.poll() is None:
            subprocess.run(self.inside("umount", str(self.mountpoint)), capture_output=True)
            self.namespace.kill()
            self.namespace.wait(timeout=10)
        self.namespace = None

    def terminate(self) -> None:
        """End the instance as EC2 does: its delete-on-termination volumes go with it."""
        from botocore.exceptions import ClientError

        try:
            self.ec2.terminate_instances(InstanceIds=[self.instance_id])
        except ClientError:
            pass  # already gone

    def close(self) -> None:
        from factory.local.instance import lvm_double

        self.stop_agent(signal.SIGKILL)
        self.unmount()
        if self.lvm_double is not None:
            lvm_double.release(self.lvm_double)
        elif self.pool == "lvm-xfs":
            subprocess.run(["vgremove", "-ff", "-y", "factory"], capture_output=True)  # real lvm2's volume group
        self.terminate()
        self.watcher.stop()
        self.imds.stop()
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
            self.lock = None

    def __enter__(self) -> GrowRig:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
