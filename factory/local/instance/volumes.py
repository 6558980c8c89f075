"""EBS attachments of a local-cloud instance as loop devices: what EC2's hypervisor does.

moto records an attachment and nothing more. This watcher gives it a device: each volume
attached to the instance (its root excepted) becomes a sparse file of the volume's size
on a loop device, after `delay` seconds (on AWS an attachment takes seconds too), and a
link named as on a Nitro instance, `nvme-Amazon_Elastic_Block_Store_vol<id without dash>`,
appears in `device_dir` (the instance's /dev/disk/by-id). A volume that is detached or
deleted loses its device. `stop()` detaches every loop device and removes the files.

    watcher = AttachWatcher(ec2, instance_id, device_dir, backing_dir, delay=1.0).start()
    watcher.device_of(volume_id)   # /dev/loopN, once attached
    watcher.stop()
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from factory.errors import LocalCloudError

NVME_LINK_PREFIX = "nvme-Amazon_Elastic_Block_Store_"
ROOT_DEVICES = ("/dev/xvda", "/dev/sda1")
GIB = 1024**3


def nvme_link_name(volume_id: str) -> str:
    return NVME_LINK_PREFIX + volume_id.replace("-", "")


class AttachWatcher:
    def __init__(self, ec2: Any, instance_id: str, device_dir: Path, backing_dir: Path,
                 delay: float = 0.0, poll: float = 0.2, skip_devices: tuple[str, ...] = ROOT_DEVICES,
                 name_dir: Path | None = None):
        self.ec2 = ec2
        self.instance_id = instance_id
        self.device_dir = Path(device_dir)
        self.backing_dir = Path(backing_dir)
        self.delay = delay
        self.poll = poll
        self.skip_devices = skip_devices
        # Where links named as the attachment asked (`xvdb` -> /dev/loopN) go: on a Nitro
        # instance amazon-ec2-utils' udev rules make them (/dev/xvdb -> nvme1n1). None: none.
        self.name_dir = Path(name_dir) if name_dir is not None else None
        self.names: dict[str, str] = {}  # volume id -> the link made in name_dir
        self.loops: dict[str, str] = {}  # volume id -> /dev/loopN
        self.seen: dict[str, float] = {}  # volume id -> when its attachment was first seen
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> AttachWatcher:
        self.device_dir.mkdir(parents=True, exist_ok=True)
        self.backing_dir.mkdir(parents=True, exist_ok=True)
        if self.name_dir is not None:
            self.name_dir.mkdir(parents=True, exist_ok=True)
        self.sync()  # volumes attached at launch have their devices before anything boots
        self._thread = threading.Thread(target=self._loop, name=f"attach-{self.instance_id}", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.sync()
            except Exception as exc:  # the watcher outlives a moto hiccup; the error is kept for the report
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def attached(self) -> dict[str, dict[str, Any]]:
        """Volume id -> volume, for every volume attached to the instance (paged)."""
        out: dict[str, dict[str, Any]] = {}
        for page in self.ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": "attachment.instance-id", "Values": [self.instance_id]}]
        ):
            for vol in page["Volumes"]:
                for a in vol.get("Attachments", []):
                    if a.get("InstanceId") == self.instance_id and a.get("State") in ("attaching", "attached"):
                        if a.get("Device") not in self.skip_devices:
                            out[vol["VolumeId"]] = vol
        return out

    def sync(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        attached = self.attached()
        with self._lock:
            for vid, vol in attached.items():
                first = self.seen.setdefault(vid, now)
                if vid not in self.loops and now - first >= self.delay:
                    self._plug(vid, int(vol["Size"]), _device_of(vol, self.instance_id))
            for vid in [v for v in self.loops if v not in attached]:
                self._unplug(vid)

    def _plug(self, volume_id: str, size_gib: int, device_name: str | None = None) -> None:
        backing = self.backing_dir / f"{volume_id}.img"
        with open(backing, "wb") as f:
            f.truncate(size_gib * GIB)  # sparse: only what is written takes space
        p = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
        if p.returncode != 0:
            backing.unlink(missing_ok=True)
            raise LocalCloudError(f"cannot give volume {volume_id} a loop device: {p.stderr.strip()}")
        loop = p.stdout.strip()
        link = self.device_dir / nvme_link_name(volume_id)
        tmp = link.with_name(link.name + ".tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(loop, tmp)
        os.replace(tmp, link)
        self.loops[volume_id] = loop
        if self.name_dir is not None and device_name:
            named = self.name_dir / Path(device_name).name
            named.unlink(missing_ok=True)
            os.symlink(loop, named)
            self.names[volume_id] = str(named)

    def _unplug(self, volume_id: str) -> None:
        loop = self.loops.pop(volume_id)
        if volume_id in self.names:
            Path(self.names.pop(volume_id)).unlink(missing_ok=True)
        (self.device_dir / nvme_link_name(volume_id)).unlink(missing_ok=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)
        (self.backing_dir / f"{volume_id}.img").unlink(missing_ok=True)

    def device_of(self, volume_id: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if volume_id in self.loops:
                    return self.loops[volume_id]
            time.sleep(0.05)
        raise LocalCloudError(f"volume {volume_id} got no device within {timeout:g}s")

    def stop(self) -> None:
        """Stop watching; every loop device goes (unmount what uses them first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for vid in list(self.loops):
                self._unplug(vid)


def _device_of(volume: dict[str, Any], instance_id: str) -> str | None:
    """The device name the volume's attachment to `instance_id` asked for (/dev/xvdb)."""
    return next((a.get("Device") for a in volume.get("Attachments", []) if a.get("InstanceId") == instance_id), None)
