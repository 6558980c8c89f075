"""factory-instance-store: the instance's NVMe instance store as Docker's data root, made at every boot.

Run by the boot unit factory-instance-store.service before Docker and the ECS agent, as
`python3 factory_instance_store.py ensure MOUNTPOINT`. Standard library only, Python 3.7+
(the family's own python3), so nothing installed later is needed at boot. It:

1. finds the instance-store disks by their NVMe model: the links udev makes from the model
   and serial, /dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_<serial> (EBS volumes'
   model is "Amazon Elastic Block Store": never matched), each resolved to its device once
   (udev adds a `_1` namespace link beside it); where sysfs names a model, it must be
   "Amazon EC2 NVMe Instance Storage";
2. none: fails loudly (exit 1, a message in the journal): Docker `Requires=` this unit, so
   neither Docker nor the ECS agent starts, and the instance never registers to take jobs
   that would fill its root volume;
3. several: RAID0 with mdadm, made anew at every boot. The store is blank after every stop
   and start, and an array or mdadm.conf left from before must not skip the rebuild
   (awslabs/amazon-eks-ami PR #2755): any array holding these disks is stopped, nothing is
   read from mdadm.conf, nothing is written to it; `mdadm --detail --export` must then say
   raid0 over every disk;
4. mkfs.xfs with ftype=1 (overlay2 needs d_type), -K (the store is already blank; a discard
   of terabytes would hold the boot), mounted at MOUNTPOINT (Docker's data root);
5. prints one JSON line `{"event": "instance-store-ready", ...}`: disks, RAID, bytes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

MODEL = "Amazon EC2 NVMe Instance Storage"
LINK_PREFIX = "nvme-Amazon_EC2_NVMe_Instance_Storage_"
ARRAY = "/dev/md/factory-docker"
ARRAY_NAME = "factory-docker"
LABEL = "factory-ds"  # an XFS label holds at most 12 characters


class Failed(Exception):
    pass


def say(event: str, **fields) -> None:
    print(json.dumps(dict({"event": event}, **fields), sort_keys=True), flush=True)


def run(*argv: str) -> str:
    done = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if done.returncode != 0:
        raise Failed(f"{' '.join(argv)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done.stdout


def sysfs_model(device: str) -> str | None:
    """The NVMe model sysfs gives the device (None where sysfs has none, e.g. a loop device)."""
    path = f"/sys/class/block/{os.path.basename(device)}/device/model"
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def find_disks(by_id: str) -> list[str]:
    """The instance-store disks, each once, in a stable order."""
    disks = []
    for link in sorted(glob.glob(os.path.join(by_id, LINK_PREFIX + "*"))):
        if "-part" in os.path.basename(link):
            continue
        device = os.path.realpath(link)
        if not os.path.exists(device) or device in disks:
            continue
        model = sysfs_model(device)
        if model is not None and model != MODEL:
            continue
        disks.append(device)
    return disks


def device_bytes(device: str) -> int:
    with open(device, "rb") as f:
        return f.seek(0, os.SEEK_END)


def arrays_holding(disks: list[str]) -> list[str]:
    """md arrays the kernel has assembled from any of the disks (auto-assembly at boot)."""
    names = {os.path.basename(d) for d in disks}
    out = []
    for slaves in sorted(glob.glob("/sys/block/md*/slaves")):
        if names & set(os.listdir(slaves)):
            out.append("/dev/" + slaves.split("/")[3])
    if os.path.exists(ARRAY) and os.path.realpath(ARRAY) not in [os.path.realpath(a) for a in out]:
        out.append(ARRAY)
    return out


def detail(device: str) -> dict[str, str]:
    """`mdadm --detail --export`: KEY=value lines."""
    out = {}
    for line in run("mdadm", "--detail", "--export", device).splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def raid0(disks: list[str], wait: float) -> str:
    for stale in arrays_holding(disks):
        say("instance-store-stale-array", array=stale)
        run("mdadm", "--stop", stale)
    run("mdadm", "--create", ARRAY, "--run", "--level=0", "--metadata=1.2", f"--name={ARRAY_NAME}",
        f"--raid-devices={len(disks)}", *disks)
    deadline = time.monotonic() + wait
    while not os.path.exists(ARRAY):
        if time.monotonic() > deadline:
            raise Failed(f"mdadm made the array but {ARRAY} did not appear within {wait:g}s")
        time.sleep(0.1)
    info = detail(ARRAY)
    if info.get("MD_LEVEL") != "raid0" or info.get("MD_DEVICES") != str(len(disks)):
        raise Failed(f"{ARRAY} is {info.get('MD_LEVEL')} over {info.get('MD_DEVICES')} disk(s), not raid0 over {len(disks)}: {info}")
    return ARRAY


def ensure(mountpoint: str, by_id: str, wait: float) -> dict:
    deadline = time.monotonic() + wait
    disks = find_disks(by_id)
    while not disks and time.monotonic() < deadline:
        time.sleep(0.5)
        disks = find_disks(by_id)
    if not disks:
        raise Failed(
            f"no NVMe instance store on this instance (no {os.path.join(by_id, LINK_PREFIX)}* with model {MODEL!r} "
            f"after {wait:g}s): this image keeps Docker's data on the instance store (storage.instance_store: docker), so "
            "Docker and the ECS agent stay stopped rather than fill the root volume; launch it on an instance type with "
            "NVMe instance storage (factory validate lists the spec's)")
    if os.path.ismount(mountpoint):
        raise Failed(f"{mountpoint} is already a mount point; Docker's data root must be the instance store alone")
    device = raid0(disks, wait) if len(disks) > 1 else disks[0]
    run("mkfs.xfs", "-f", "-K", "-n", "ftype=1", "-L", LABEL, device)
    os.makedirs(mountpoint, exist_ok=True)
    run("mount", "-t", "xfs", "-o", "noatime", device, mountpoint)
    st = os.statvfs(mountpoint)
    ready = {"disks": disks, "raid": "raid0" if len(disks) > 1 else None, "device": device,
             "device_bytes": device_bytes(device), "disk_bytes": [device_bytes(d) for d in disks],
             "filesystem_bytes": st.f_blocks * st.f_frsize, "mountpoint": mountpoint}
    say("instance-store-ready", **ready)
    return ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="factory_instance_store.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("ensure", help="Make the instance store Docker's data root (at boot, before Docker).")
    e.add_argument("mountpoint")
    e.add_argument("--by-id", default="/dev/disk/by-id", help="Where udev's by-id links are.")
    e.add_argument("--wait", type=float, default=30.0, help="Seconds to wait for the disks and the array to appear.")
    args = parser.parse_args(argv)
    try:
        ensure(args.mountpoint, args.by_id, args.wait)
    except Failed as exc:
        say("instance-store-failed", reason=str(exc))
        print(f"factory-instance-store: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
