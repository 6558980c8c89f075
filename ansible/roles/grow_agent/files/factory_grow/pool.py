"""Docker's storage as a pool that takes more devices while mounted: one backend per filesystem.

- `btrfs`: a multi-device btrfs (data `single`, metadata `dup` on one device; EBS is
  already replicated, so nothing is mirrored), mounted with `commit=1` so free space is
  current within a second. Adding is `btrfs device add`: the mounted filesystem grows at
  once, no balance needed (new chunks go to the emptiest device).
- `lvm-xfs`: LVM with one logical volume holding XFS with `ftype=1` (overlay2 needs
  d_type). Adding is pvcreate + vgextend + lvextend + xfs_growfs, all online. Amazon
  Linux 2023 ships lvm2 and xfsprogs but not btrfs-progs (amazon-linux-2023 #342), so
  this is the backend on AWS; it needs device-mapper.

`choose()` picks btrfs where btrfs-progs and the kernel module exist, else lvm-xfs.
Standard library only: it runs with the image's Miniconda Python.

    pool = choose()
    pool.ensure(first_device, mountpoint)   # at boot, before Docker: create or mount
    pool.add(device, mountpoint)            # grow online
    pool.devices(mountpoint)                # the devices in it (resolved paths)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

LABEL = "factory-pool"  # an XFS label holds at most 12 characters (mkfs.xfs -L)
COMMIT_SECONDS = 1
VG = "factory"
LV = "docker"


class PoolError(Exception):
    """A pool command failed; the message names the command and what it said."""


def run(*argv: str, timeout: float = 300) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PoolError(f"{' '.join(argv)}: {exc}") from None
    if p.returncode != 0:
        raise PoolError(f"{' '.join(argv)} failed (status {p.returncode}): {(p.stderr or p.stdout).strip()[-500:]}")
    return p.stdout


def real(device: str) -> str:
    """A device's real path (/dev/disk/by-id/... links resolved), for comparing devices."""
    return os.path.realpath(device)


def fs_type(device: str) -> str:
    """What `blkid` finds on the device ("" for nothing): btrfs, LVM2_member, xfs, ..."""
    p = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", device], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else ""


def mounted_source(mountpoint: str) -> str | None:
    """The device mounted at `mountpoint`, or None."""
    target = os.path.realpath(mountpoint)
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] == target:
            return fields[0]
    return None


def _kernel_has(fs: str) -> bool:
    try:
        return any(line.split()[-1] == fs for line in Path("/proc/filesystems").read_text().splitlines() if line.strip())
    except OSError:
        return False


class BtrfsPool:
    name = "btrfs"

    @staticmethod
    def available() -> bool:
        return bool(shutil.which("mkfs.btrfs") and shutil.which("btrfs")) and _kernel_has("btrfs")

    def ensure(self, device: str, mountpoint: str) -> bool:
        """Make the pool on `device` (when it holds nothing) and mount it. True when made."""
        made = False
        if mounted_source(mountpoint) is None:
            found = fs_type(device)
            if found == "":
                run("mkfs.btrfs", "-f", "-L", LABEL, "-d", "single", "-m", "dup", device)
                made = True
            elif found != "btrfs":
                raise PoolError(f"{device} holds {found}, not a btrfs pool; refusing to format it")
            os.makedirs(mountpoint, exist_ok=True)
            run("btrfs", "device", "scan")  # a pool of several devices mounts once all are known
            # commit=1: btrfs reports writes to statfs at its transaction commits (every 30 s by
            # default, in steps of a data chunk); the agent's free-space signal must lag by
            # about a second, not by a chunk of writing.
            run("mount", "-t", "btrfs", "-o", f"commit={COMMIT_SECONDS}", device, mountpoint)
        return made

    def add(self, device: str, mountpoint: str) -> None:
        if real(device) in self.devices(mountpoint):
            return  # added before a restart: nothing to do
        run("btrfs", "device", "add", "-f", device, mountpoint)
        run("btrfs", "filesystem", "resize", "max", mountpoint)  # a no-op for a new device; grows a resized one

    def devices(self, mountpoint: str) -> list[str]:
        out = run("btrfs", "filesystem", "show", "--raw", mountpoint)
        return sorted(real(line.split(" path ")[1].strip()) for line in out.splitlines() if " path " in line)


class LvmXfsPool:
    name = "lvm-xfs"
    lv_path = f"/dev/{VG}/{LV}"

    @staticmethod
    def available() -> bool:
        tools = ("pvcreate", "vgcreate", "vgextend", "lvcreate", "lvextend", "mkfs.xfs", "xfs_growfs")
        return all(shutil.which(t) for t in tools) and _kernel_has("xfs")

    def ensure(self, device: str, mountpoint: str) -> bool:
        made = False
        if mounted_source(mountpoint) is None:
            found = fs_type(device)
            if found == "":
                run("pvcreate", "-y", device)
                run("vgcreate", "-y", VG, device)
                run("lvcreate", "-y", "-l", "100%FREE", "-n", LV, VG)
                run("mkfs.xfs", "-f", "-n", "ftype=1", "-L", LABEL, self.lv_path)
                made = True
            elif found != "LVM2_member":
                raise PoolError(f"{device} holds {found}, not an LVM pool; refusing to format it")
            else:
                run("vgchange", "-ay", VG)
            os.makedirs(mountpoint, exist_ok=True)
            run("mount", "-t", "xfs", self.lv_path, mountpoint)
        return made

    def add(self, device: str, mountpoint: str) -> None:
        if real(device) not in self.devices(mountpoint):
            if fs_type(device) != "LVM2_member":
                run("pvcreate", "-y", device)
            run("vgextend", "-y", VG, device)
        # Both grow steps are idempotent, so an add cut short by a restart is finished here.
        free = run("vgs", "--noheadings", "--units", "b", "-o", "vg_free", VG).strip().rstrip("B")
        if int(free or 0) > 0:
            run("lvextend", "-l", "+100%FREE", self.lv_path)
        run("xfs_growfs", mountpoint)

    def devices(self, mountpoint: str) -> list[str]:
        out = run("pvs", "--noheadings", "-o", "pv_name", "-S", f"vg_name={VG}")
        return sorted(real(line.strip()) for line in out.splitlines() if line.strip())


BACKENDS = {"btrfs": BtrfsPool, "lvm-xfs": LvmXfsPool}


def choose(name: str = "auto") -> BtrfsPool | LvmXfsPool:
    """The backend by name, or for "auto" btrfs where it exists, else LVM + XFS."""
    if name != "auto":
        if name not in BACKENDS:
            raise PoolError(f"unknown pool backend {name!r}; expected auto, {', '.join(BACKENDS)}")
        return BACKENDS[name]()
    for cls in (BtrfsPool, LvmXfsPool):
        if cls.available():
            return cls()
    raise PoolError("neither btrfs-progs nor lvm2 with xfsprogs is installed: the data volume cannot become a pool")


def main(argv: list[str] | None = None) -> int:
    """`python -m factory_grow.pool ensure DEVICE MOUNTPOINT [--backend B]` (the boot unit)."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="factory_grow.pool")
    ap.add_argument("action", choices=["ensure", "add", "devices"])
    ap.add_argument("device", nargs="?")
    ap.add_argument("mountpoint")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the device to appear (udev at boot)")
    args = ap.parse_args(argv)
    pool = choose(args.backend)
    try:
        if args.action == "ensure":
            deadline = time.monotonic() + args.wait
            while not os.path.exists(args.device) and time.monotonic() < deadline:
                time.sleep(0.5)
            if not os.path.exists(args.device):
                raise PoolError(f"the data volume {args.device} is not there (waited {args.wait:g}s): is it in the launch template?")
            made = pool.ensure(args.device, args.mountpoint)
            print(json.dumps({"event": "pool-ready", "backend": pool.name, "device": args.device, "made": made}), flush=True)
        elif args.action == "add":
            pool.add(args.device, args.mountpoint)
            print(json.dumps({"event": "pool-added", "backend": pool.name, "device": args.device}), flush=True)
        else:
            print(json.dumps(pool.devices(args.mountpoint)))
    except PoolError as exc:
        print(json.dumps({"event": "pool-error", "backend": pool.name, "error": str(exc)}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
