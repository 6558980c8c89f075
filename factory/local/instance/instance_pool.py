"""Which grow pool a local instance's image runs, arranged as on AWS.

The image's boot unit runs `factory_grow.pool ensure ... --backend auto` (the role's
default), which picks btrfs where btrfs-progs exists, else LVM + XFS. On AWS the answer
is always LVM + XFS: Amazon Linux 2023 ships lvm2 and xfsprogs, not btrfs-progs. A local
instance's root is an overlay over this machine's `/`, which has btrfs-progs; so:

- `lvm-xfs` (the default, what AWS instances run): btrfs-progs' commands are hidden from
  the instance's root (overlay whiteouts in its own layer, as if the package were absent),
  so the image's own `auto` picks LVM + XFS; where this kernel has no device-mapper,
  factory's LVM double (factory/local/instance/lvm_double) is installed in the instance's
  /usr/local/sbin, ahead of lvm2's commands on every unit's PATH, its state in a folder of
  the instance bind-mounted at /run/factory-lvm-double. The pool's code is the image's,
  unchanged; mkfs.xfs, xfs_growfs, blkid and mount are real.
- `btrfs`: nothing hidden; `auto` picks btrfs, as on an image whose OS ships btrfs-progs.

    double = arrange(pool, upper=workdir / "upper", state_dir=workdir / "lvm-double")
    ran = backend_that_ran(instance.journal(POOL_UNIT))   # "lvm-xfs", "btrfs" or None
    release(workdir / "lvm-double")                        # after the instance's mounts are gone
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from factory.errors import LocalCloudError

POOLS = ("lvm-xfs", "btrfs")
DEFAULT_POOL = "lvm-xfs"
POOL_UNIT = "factory-grow-pool.service"
DOUBLE_BIN = "/usr/local/sbin"  # first on the instance's PATH (instance_init.ENV)
DOUBLE_STATE = "/run/factory-lvm-double"  # where the init bind-mounts the double's state folder
INSTANCE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# btrfs-progs' commands (Debian's and Fedora's package lists): absent on Amazon Linux 2023.
BTRFS_PROGS = ("btrfs", "mkfs.btrfs", "fsck.btrfs", "btrfsck", "btrfstune", "btrfs-convert", "btrfs-image",
               "btrfs-map-logical", "btrfs-select-super", "btrfs-find-root")


def arrange(pool: str, upper: Path, state_dir: Path) -> Path | None:
    """Make the instance's root (its own layer, `upper`) run `pool` as the image's `auto`
    would on AWS. Returns the LVM double's state folder (to bind-mount at DOUBLE_STATE and
    release at termination), or None when real lvm2 (or btrfs) runs."""
    from factory.local.instance import lvm_double

    if pool not in POOLS:
        raise LocalCloudError(f"--pool {pool}: expected one of {', '.join(POOLS)}")
    if pool == "btrfs":
        if not shutil.which("mkfs.btrfs", path=INSTANCE_PATH):
            raise LocalCloudError("--pool btrfs needs btrfs-progs on this machine (make system-deps)")
        return None
    for name in BTRFS_PROGS:
        for d in INSTANCE_PATH.split(":"):  # /sbin may be its own folder or a link to /usr/sbin
            if os.path.lexists(os.path.join(d, name)):
                _whiteout(upper, os.path.join(os.path.realpath(d), name))
    if lvm_double.device_mapper_missing() is None:
        return None
    bin_dir = upper / DOUBLE_BIN.lstrip("/")
    lvm_double.install(bin_dir, state_dir, seen_bin_dir=DOUBLE_BIN, seen_state_dir=DOUBLE_STATE)
    return state_dir


def _whiteout(upper: Path, path: str) -> None:
    """An overlay whiteout (a 0/0 character device) for `path` in the instance's layer."""
    target = upper / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        if stat.S_ISCHR(os.lstat(target).st_mode):
            return
        target.unlink()
    os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def last_event(journal: str, name: str) -> dict | None:
    """The last JSON line a boot unit wrote to its journal with `"event": name`, or None."""
    for line in reversed(journal.splitlines()):
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                return event
    return None


def backend_that_ran(journal: str) -> str | None:
    """The backend the pool's boot unit made or mounted (its `pool-ready` line), or None."""
    event = last_event(journal, "pool-ready")
    return event.get("backend") if event else None


def release(state_dir: Path | None) -> list[str]:
    """Detach the LVM double's logical volumes (the instance's mounts must be gone)."""
    from factory.local.instance import lvm_double

    return lvm_double.release(state_dir) if state_dir is not None else []
