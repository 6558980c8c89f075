"""The grow agent: adds encrypted EBS volumes to Docker's pool before the disk fills.

    python -m factory_grow.agent --config /etc/factory/grow.json

Every second it samples the data root; `decide` says when and how much. Each add, in
the order that never leaks a volume holding data:

1. CreateVolume in the instance's zone, encrypted, tagged `factory:grow=true`,
   `factory:task`, `factory:instance` at creation (one call, so an untagged volume never
   exists), with a ClientToken so a retried call cannot make a second volume (a new token
   for each attempt: a failed volume is not answered again);
2. wait until it is `available` (a volume in `error` or `deleted` fails the attempt at
   once, and one in `error` is deleted; `InvalidVolume.NotFound` right after CreateVolume
   is EC2's eventual consistency, waited out); AttachVolume to this instance at a free
   device name from `/dev/xvdf` on (`xvdb`-`xvde` are EC2's instance store names);
3. ModifyInstanceAttribute DeleteOnTermination=true, and read it back, BEFORE the volume
   holds any data (amazon-ebs-autoscale set it last, and leaked volumes);
4. find the device by its volume id (/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol...
   on Nitro: NVMe names do not follow the requested device name);
5. add it to the pool and grow the filesystem online; tag the instance `factory:grow-fired`.

On start it adopts what an earlier run left: every volume tagged with this instance is
finished from wherever it stopped (attached, kept, added), never created twice. Throttling,
capacity and connection errors are retried with backoff; nothing it does stops a task.
It stops adding at `max_gib` and at the instance type's attachment limit (`slots`: EBS
volumes, network interfaces and NVMe instance store share it on most Nitro types; an
AttachVolume refused with `AttachmentLimitExceeded` stops it too). While it waits on
EC2 it asks about once a second, with jitter (EC2 refills an account's bucket of
Describe calls at 20 a second: many instances growing at once share it). Each event is
one JSON line on stdout (the journal, under systemd).

Standard library and botocore only (the image's Miniconda Python has botocore from the
pinned AWS CLI).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from factory_grow import decide, slots
from factory_grow.pool import PoolError, choose

GROW_TAG = "factory:grow"
TASK_TAG = "factory:task"
INSTANCE_TAG = "factory:instance"
FIRED_TAG = "factory:grow-fired"
NVME_LINK_PREFIX = "nvme-Amazon_Elastic_Block_Store_"

# Errors worth waiting out: throttling, a zone short of capacity, a service hiccup
# (EC2 API Reference, "Error codes"). Anything else is reported and retried at the next
# trigger, after the backoff.
RETRYABLE = {
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "InsufficientVolumeCapacity",
    "ServiceUnavailable", "Unavailable", "InternalError", "InternalFailure", "IncorrectState",
}
# Device names for added volumes: /dev/xvdf on. EC2 recommends /dev/sd[f-p] (xvd[f-p]) for
# EBS volumes; xvdb-xvde are the instance store names (EC2 User Guide, "Device names on
# Linux instances"); the launch template's data volume is /dev/xvdb (factory/families.py).
DEVICE_NAMES = tuple(f"/dev/xvd{c}" for c in "fghijklmnopqrstuvwxyz")
# A volume in these states will never become available (EC2 User Guide, "Amazon EBS
# volume lifecycle"): waiting on it is pointless.
FAILED_STATES = ("error", "deleted")
# Seconds between two polls of EC2 while waiting, before jitter (at most about one call a
# second per wait), and between two looks for a device (a local file, no AWS call).
POLL_SECONDS = 1.0
DEVICE_POLL_SECONDS = 0.2
# How long a volume CreateVolume just made may be unknown to DescribeVolumes (EC2 API
# Reference, "Eventual consistency in the Amazon EC2 API").
NOT_FOUND_SECONDS = 30.0


@dataclass
class Config:
    task: str
    max_gib: int
    mountpoint: str = "/var/lib/docker"
    volume_type: str = "gp3"
    interval: float = 1.0
    imds_endpoint: str = "http://169.254.169.254"
    ec2_endpoint: str | None = None
    device_dirs: list[str] = field(default_factory=lambda: ["/dev/disk/by-id"])
    pool_backend: str = "auto"
    attach_limit: int | None = None  # EBS volumes at most; None: from DescribeInstanceTypes (factory_grow.slots)
    add_seconds: float = 30.0
    margin: float = 2.0
    lag_seconds: float = 3.0
    floor_fraction: float = 0.05
    floor_gib: float = 2.0
    min_step_gib: int = 10
    step_seconds: float = 600.0
    wait_seconds: float = 300.0  # the longest to wait for a volume, an attachment or a device
    retries: int = 8
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 30.0

    @classmethod
    def load(cls, path: str | Path) -> Config:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def policy(self) -> decide.Policy:
        return decide.Policy(
            max_gib=self.max_gib, add_seconds=self.add_seconds, margin=self.margin, lag_seconds=self.lag_seconds,
            floor_fraction=self.floor_fraction,
            floor_gib=self.floor_gib, min_step_gib=self.min_step_gib, step_seconds=self.step_seconds,
        )


def emit_json(event: str, **fields_: Any) -> None:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    print(json.dumps({"time": now, "event": event, **fields_}, default=str), flush=True)


class GiveUp(Exception):
    """An add cannot go on now; the agent reports it and tries again later."""


class AttachmentLimit(GiveUp):
    """EC2 refused the attachment: the instance has no slot left (AttachmentLimitExceeded)."""


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def make_ec2(region: str, endpoint: str | None = None) -> Any:
    """A botocore EC2 client; its own retries are off so every retry is ours (and logged)."""
    import botocore.session
    from botocore.config import Config as BotoConfig

    session = botocore.session.get_session()
    config = BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=20, user_agent_extra="factory-grow")
    return session.create_client("ec2", region_name=region, endpoint_url=endpoint or None, config=config)


def block_device_bytes(device: str) -> int:
    name = os.path.basename(os.path.realpath(device))
    return int(Path(f"/sys/class/block/{name}/size").read_text()) * 512


class Agent:
    def __init__(self, cfg: Config, ec2: Any, identity: Any, pool: Any = None, emit: Callable[..., None] = emit_json):
        self.cfg = cfg
        self.ec2 = ec2
        self.me = identity
        self.pool = pool or choose(cfg.pool_backend)
        self.policy = cfg.policy()
        self._emit = emit
        self.samples: deque[decide.Sample] = deque(maxlen=max(8, int(self.policy.long_window / max(cfg.interval, 0.05)) + 2))
        self.add_times: list[float] = []
        self.volumes: dict[str, int] = {}  # volume id -> GiB, every volume this instance's agent added
        self.stopped: str | None = None  # why no more adds (at-max, attachment-limit)
        self.not_before = 0.0  # after a failed add: the next attempt waits until then
        self.failures = 0
        self.stop_event = threading.Event()
        self._not_found_since: dict[str, float] = {}
        self._type_slots: slots.TypeSlots | None = None
        self._type_read = False

    # -- events and AWS calls -----------------------------------------------------------

    def emit(self, event: str, **kw: Any) -> None:
        self._emit(event, instance=self.me.instance_id, task=self.cfg.task, **kw)

    def call(self, op: str, **kw: Any) -> Any:
        """One EC2 call, retried with exponential backoff and jitter on throttling,
        capacity and connection errors."""
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        for attempt in range(1, self.cfg.retries + 1):
            try:
                return getattr(self.ec2, op)(**kw)
            except ClientError as exc:
                code = error_code(exc)
                if code not in RETRYABLE or attempt == self.cfg.retries:
                    raise
                why = code
            except (BotoConnectionError, HTTPClientError) as exc:
                if attempt == self.cfg.retries:
                    raise
                why = type(exc).__name__
            wait = min(self.cfg.backoff_max_seconds, self.cfg.backoff_seconds * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            self.emit("retry", operation=op, error=why, attempt=attempt, wait_s=round(wait, 2))
            if self.stop_event.wait(wait):
                raise GiveUp(f"stopped while retrying {op}")
        raise AssertionError("unreachable")

    def _volume(self, volume_id: str) -> dict[str, Any] | None:
        """The volume, or None while EC2 does not know it yet (InvalidVolume.NotFound right
        after CreateVolume, for at most NOT_FOUND_SECONDS)."""
        from botocore.exceptions import ClientError

        try:
            # One volume id: one volume, so one page is all there is.
            return self.call("describe_volumes", VolumeIds=[volume_id])["Volumes"][0]
        except ClientError as exc:
            if error_code(exc) != "InvalidVolume.NotFound":
                raise
        first = self._not_found_since.setdefault(volume_id, time.monotonic())
        if time.monotonic() - first > NOT_FOUND_SECONDS:
            raise GiveUp(f"volume {volume_id} is still not found {NOT_FOUND_SECONDS:g}s after it was made")
        self.emit("volume-not-found-yet", volume_id=volume_id)
        return None

    def _wait(self, what: str, check: Callable[[], Any], every: float = POLL_SECONDS) -> Any:
        """Call `check` until it answers, about every `every` seconds (with jitter, so the
        instances of a queue do not poll EC2 in step)."""
        deadline = time.monotonic() + self.cfg.wait_seconds
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise GiveUp(f"{what} did not happen within {self.cfg.wait_seconds:g}s")
            if self.stop_event.wait(every * random.uniform(0.8, 1.2)):
                raise GiveUp(f"stopped while waiting: {what}")

    # -- the pool -------------------------------------------------------------------------

    def pool_gib(self) -> int:
        """The pool's size: the sum of its devices (the data volume and every added one)."""
        return int(round(sum(block_device_bytes(d) for d in self.pool.devices(self.cfg.mountpoint)) / decide.GIB))

    def type_slots(self) -> slots.TypeSlots | None:
        """The instance type's attachment slots, read once from DescribeInstanceTypes' raw
        answer (the image's botocore parses neither MaximumEbsAttachments nor
        AttachmentLimitType); None when it cannot be read (the shared rule is used)."""
        if not self._type_read:
            raw: dict[str, bytes] = {}

            def keep(response_dict: dict[str, Any] | None = None, **_: Any) -> None:
                if response_dict:
                    raw["body"] = response_dict.get("body") or b""

            event = "response-received.ec2.DescribeInstanceTypes"
            self.ec2.meta.events.register(event, keep)
            try:
                # One instance type asked for: one page.
                self.call("describe_instance_types", InstanceTypes=[self.me.instance_type])
                self._type_slots = slots.type_slots(raw.get("body", b""), self.me.instance_type)
            except Exception as exc:  # the shared rule is a safe answer; say why it was used
                self.emit("attach-limit-default", instance_type=self.me.instance_type, error=f"{type(exc).__name__}: {exc}")
            finally:
                self.ec2.meta.events.unregister(event, keep)
            self._type_read = True
        return self._type_slots

    def attachments(self, instance: dict[str, Any] | None = None) -> tuple[int, int, int]:
        """(EBS volumes attached, network interfaces attached, the most EBS volumes allowed now)."""
        instance = instance or self._instance()
        ebs = len(instance.get("BlockDeviceMappings", []))
        enis = len(instance.get("NetworkInterfaces", [])) or 1
        limit = self.cfg.attach_limit if self.cfg.attach_limit is not None else slots.ebs_limit(self.type_slots(), enis)
        return ebs, enis, limit

    def _stop_at_limit(self, **why: Any) -> None:
        self.stopped = "attachment-limit"
        if "limit" not in why:  # EC2 refused an attachment: say what the instance has
            try:
                why.update(zip(("attached", "network_interfaces", "limit"), self.attachments()))
            except Exception as exc:  # the stop stands; the counts are for people
                why["counts_error"] = f"{error_code(exc) or type(exc).__name__}: {exc}"
        self.emit("attachment-limit", **why)

    def _instance(self) -> dict[str, Any]:
        # One instance id: one reservation and one instance, so one page is all there is.
        return self.call("describe_instances", InstanceIds=[self.me.instance_id])["Reservations"][0]["Instances"][0]

    # -- adoption -------------------------------------------------------------------------

    def _my_volumes(self) -> list[dict[str, Any]]:
        """Every volume tagged as this instance's agent's (paged)."""
        out: list[dict[str, Any]] = []
        kw: dict[str, Any] = {"Filters": [{"Name": f"tag:{INSTANCE_TAG}", "Values": [self.me.instance_id]},
                                          {"Name": f"tag:{GROW_TAG}", "Values": ["true"]}]}
        while True:
            page = self.call("describe_volumes", **kw)
            out += page.get("Volumes", [])
            if not page.get("NextToken"):
                return out
            kw["NextToken"] = page["NextToken"]

    def adopt(self) -> None:
        """Finish whatever an earlier run of the agent left on this instance."""
        for vol in sorted(self._my_volumes(), key=lambda v: str(v.get("CreateTime", ""))):
            vid = vol["VolumeId"]
            try:
                self._finish_add(vid, int(vol["Size"]))
            except AttachmentLimit as exc:
                self._stop_at_limit(volume_id=vid, error=str(exc))
                continue
            except (GiveUp, PoolError) as exc:
                self.emit("adopt-failed", volume_id=vid, error=str(exc))
                continue
            self.emit("adopted", volume_id=vid, size_gib=int(vol["Size"]), state=vol.get("State"))

    # -- one add --------------------------------------------------------------------------

    def _free_device_name(self) -> str:
        used = {m.get("DeviceName") for m in self._instance().get("BlockDeviceMappings", [])}
        for name in DEVICE_NAMES:
            if name not in used and name.replace("/dev/xvd", "/dev/sd") not in used:
                return name
        raise GiveUp("no free device name left on the instance")

    def _deleted_with_instance(self, volume_id: str) -> bool:
        """Whether the instance's block device mapping deletes the volume with it (read
        from the instance, where EC2 keeps the attribute ModifyInstanceAttribute sets)."""
        return any(m.get("Ebs", {}).get("VolumeId") == volume_id and m["Ebs"].get("DeleteOnTermination") is True
                   for m in self._instance().get("BlockDeviceMappings", []))

    def _find_device(self, volume_id: str, device_name: str) -> str | None:
        for d in self.cfg.device_dirs:
            link = Path(d) / (NVME_LINK_PREFIX + volume_id.replace("-", ""))
            if link.exists():
                return os.path.realpath(link)
        # Xen instances name the device as asked (sdX may appear as xvdX).
        for name in (device_name, device_name.replace("/dev/sd", "/dev/xvd")):
            if os.path.exists(name) and os.path.realpath(name).startswith("/dev/"):
                return os.path.realpath(name)
        return None

    def _finish_add(self, volume_id: str, size_gib: int) -> str:
        """From a created volume to usable space, whatever step it had reached. Idempotent."""
        def ready() -> dict[str, Any] | None:
            v = self._volume(volume_id)
            if v is not None and v["State"] in FAILED_STATES:
                self._drop_failed(volume_id, v["State"])
            return v if v is not None and v["State"] in ("available", "in-use") else None

        def attached() -> dict[str, Any] | None:
            v = self._volume(volume_id)
            if v is None:
                return None
            if v["State"] in FAILED_STATES:
                raise GiveUp(f"volume {volume_id} is {v['State']}")
            mine = [a for a in v.get("Attachments", []) if a.get("InstanceId") == self.me.instance_id]
            return v if mine and mine[0].get("State") == "attached" else None

        vol = self._wait(f"volume {volume_id} available", ready)
        attachment = next((a for a in vol.get("Attachments", []) if a.get("InstanceId") == self.me.instance_id), None)
        if vol["State"] == "available" and attachment is None:
            device_name = self._free_device_name()
            self._attach(volume_id, device_name)
            self.emit("attach-requested", volume_id=volume_id, device_name=device_name)
        elif attachment is None:
            raise GiveUp(f"volume {volume_id} is attached to another instance")
        else:
            device_name = attachment["Device"]
        vol = self._wait(f"volume {volume_id} attached", attached)
        attachment = next(a for a in vol["Attachments"] if a.get("InstanceId") == self.me.instance_id)
        device_name = attachment["Device"]
        if not self._deleted_with_instance(volume_id):
            self.call("modify_instance_attribute", InstanceId=self.me.instance_id,
                      BlockDeviceMappings=[{"DeviceName": device_name, "Ebs": {"VolumeId": volume_id, "DeleteOnTermination": True}}])
            self._wait(f"volume {volume_id} delete-on-termination", lambda: self._deleted_with_instance(volume_id))
        self.emit("delete-on-termination", volume_id=volume_id, device_name=device_name)
        device = self._wait(f"the device of {volume_id}", lambda: self._find_device(volume_id, device_name), every=DEVICE_POLL_SECONDS)
        self.pool.add(device, self.cfg.mountpoint)
        self.volumes[volume_id] = size_gib
        return device

    def _attach(self, volume_id: str, device_name: str) -> None:
        """AttachVolume; at the attachment limit the volume (which never held data) is
        deleted and AttachmentLimit raised."""
        from botocore.exceptions import ClientError

        try:
            self.call("attach_volume", VolumeId=volume_id, InstanceId=self.me.instance_id, Device=device_name)
        except ClientError as exc:
            if error_code(exc) != "AttachmentLimitExceeded":
                raise
            self._delete_unused(volume_id)
            raise AttachmentLimit(f"EC2 refused to attach {volume_id}: {exc}") from None

    def _delete_unused(self, volume_id: str) -> None:
        """Delete a volume of ours that never joined the pool (it holds no data)."""
        try:
            self.call("delete_volume", VolumeId=volume_id)
            self.emit("volume-deleted", volume_id=volume_id)
        except Exception as exc:  # it stays tagged with this instance: the next start adopts it
            self.emit("delete-failed", volume_id=volume_id, error=f"{error_code(exc) or type(exc).__name__}: {exc}")

    def _drop_failed(self, volume_id: str, state: str) -> None:
        """A volume that will never be available: fail the attempt now, not after wait_seconds
        (a volume in `error` is deleted: it never held data)."""
        if state == "error":
            self._delete_unused(volume_id)
        raise GiveUp(f"volume {volume_id} is {state}: EBS could not make it; the next attempt makes a new one")

    def add(self, size_gib: int, reason: str) -> bool:
        started = time.monotonic()
        # A token per attempt: the retries of this CreateVolume call (an answer lost) return
        # the same volume, and the next attempt after a failure asks for a new one (the same
        # token would answer the failed volume again).
        token = f"factory-grow-{uuid.uuid4()}"
        tags = [{"Key": GROW_TAG, "Value": "true"}, {"Key": TASK_TAG, "Value": self.cfg.task},
                {"Key": INSTANCE_TAG, "Value": self.me.instance_id}, {"Key": "Name", "Value": f"factory-grow-{self.cfg.task}"}]
        self.emit("add", reason=reason, size_gib=size_gib, volume_type=self.cfg.volume_type)
        try:
            # A volume of ours not in the pool yet (an earlier attempt whose answer was lost)
            # is used first: never a second volume while one waits.
            waiting = [v for v in self._my_volumes() if v["VolumeId"] not in self.volumes and v["State"] in ("creating", "available")]
            if waiting:
                volume_id, size_gib = waiting[0]["VolumeId"], int(waiting[0]["Size"])
                self.emit("volume-reused", volume_id=volume_id, size_gib=size_gib)
            else:
                vol = self.call("create_volume", AvailabilityZone=self.me.zone, Size=size_gib, VolumeType=self.cfg.volume_type,
                                Encrypted=True, ClientToken=token, TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])
                volume_id = vol["VolumeId"]
                self.emit("volume-created", volume_id=volume_id, size_gib=size_gib)
            device = self._finish_add(volume_id, size_gib)
        except AttachmentLimit as exc:
            self._stop_at_limit(volume_id=volume_id, error=str(exc))
            return False
        except Exception as exc:  # never let an add kill the agent; report and back off
            self.failures += 1
            wait = min(self.cfg.backoff_max_seconds * 4, self.cfg.backoff_seconds * 2 ** self.failures)
            self.not_before = time.monotonic() + wait
            self.emit("add-failed", error=f"{error_code(exc) or type(exc).__name__}: {exc}", next_try_s=round(wait, 1))
            return False
        took = time.monotonic() - started
        self.add_times.append(took)
        self.failures = 0
        grown = sum(self.volumes.values())
        self.emit("grown", volume_id=volume_id, device=device, size_gib=size_gib, seconds=round(took, 2),
                  pool_gib=self.pool_gib(), grown_gib=grown, volumes_added=len(self.volumes))
        self._mark_instance(grown)
        return True

    def _mark_instance(self, grown: int) -> None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        value = f"{len(self.volumes)} volumes, +{grown} GiB, last {stamp}"
        try:
            self.call("create_tags", Resources=[self.me.instance_id], Tags=[{"Key": FIRED_TAG, "Value": value}])
        except Exception as exc:  # the mark is for people; the space is already there
            self.emit("mark-failed", error=f"{error_code(exc) or type(exc).__name__}: {exc}")

    # -- the loop -------------------------------------------------------------------------

    def sample(self) -> decide.Sample:
        st = os.statvfs(self.cfg.mountpoint)
        return decide.Sample(t=time.monotonic(), free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize)

    def tick(self) -> None:
        s = self.sample()
        self.samples.append(s)
        if self.stopped or s.t < self.not_before:
            return
        rate = decide.fill_rate(list(self.samples), self.policy)
        add_s = decide.measured_add_seconds(self.policy.add_seconds, self.add_times)
        reason = decide.trigger(s.free, s.total, rate, add_s, self.policy)
        if reason is None:
            return
        attached, enis, limit = self.attachments()
        if attached >= limit:
            self._stop_at_limit(attached=attached, network_interfaces=enis, limit=limit)
            return
        pool_gib = self.pool_gib()
        size = decide.step_gib(rate, add_s, pool_gib, self.policy)
        if size <= 0:
            self.stopped = "at-max"
            self.emit("at-max", pool_gib=pool_gib, max_gib=self.policy.max_gib, free_gib=round(s.free / decide.GIB, 2))
            return
        self.emit("trigger", reason=reason, free_gib=round(s.free / decide.GIB, 3), rate_mib_s=round(rate / 2**20, 1),
                  time_to_full_s=None if math.isinf(decide.time_to_full(s.free, rate)) else round(decide.time_to_full(s.free, rate), 1),
                  add_seconds=round(add_s, 1))
        self.add(size, reason)

    def run(self) -> None:
        self.emit("start", mountpoint=self.cfg.mountpoint, max_gib=self.cfg.max_gib, pool=self.pool.name)
        try:
            self.adopt()
        except Exception as exc:  # adoption is retried by the next start; keep watching the disk
            self.emit("adopt-failed", error=f"{error_code(exc) or type(exc).__name__}: {exc}")
        while not self.stop_event.is_set():
            try:
                self.tick()
            except Exception as exc:  # a bad sample or call must not stop the watch
                self.emit("error", error=f"{error_code(exc) or type(exc).__name__}: {exc}")
            self.stop_event.wait(self.cfg.interval)
        self.emit("stop", volumes_added=len(self.volumes), grown_gib=sum(self.volumes.values()))


def main(argv: list[str] | None = None) -> int:
    import argparse

    from factory_grow.imds import Imds

    ap = argparse.ArgumentParser(prog="factory_grow.agent", description="Grow Docker's storage before it fills.")
    ap.add_argument("--config", default="/etc/factory/grow.json")
    args = ap.parse_args(argv)
    cfg = Config.load(args.config)
    identity = Imds(cfg.imds_endpoint).identity()
    agent = Agent(cfg, make_ec2(identity.region, cfg.ec2_endpoint), identity)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop_event.set())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
