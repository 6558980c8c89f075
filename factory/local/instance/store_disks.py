"""A local instance's NVMe instance store: what EC2 gives an instance type with one.

On AWS an instance of a type with instance storage (factory.instance_store's table:
DescribeInstanceTypes' InstanceStorageInfo) boots with that many NVMe disks of that size,
blank, whatever its launch template says; udev links each as
/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_<serial> (from the NVMe model and
serial) and `..._1` for its namespace. Here each disk is a sparse file of the disk's size
(GB, 10^9 bytes, as AWS sizes them) on a loop device, linked under both names in the
instance's by-id folder (the init makes the loop node in the instance's /dev). Where the
kernel has no md and the store has several disks, factory's md double
(factory/local/instance/md_double) is put first on the instance's PATH, its state in a
folder the init bind-mounts at MD_STATE, so the image's boot unit RAID0s them unchanged.

    store = attach(instance_type, instance_id, by_id_dir, backing_dir, upper, md_state_dir)
    ...                                   # the instance runs
    store.release()                       # after the instance's mounts are gone
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from factory.errors import LocalCloudError

LINK_PREFIX = "nvme-Amazon_EC2_NVMe_Instance_Storage_"
MD_STATE = "/run/factory-md-double"  # where the init bind-mounts the md double's state folder
DOUBLE_BIN = "/usr/local/sbin"  # first on the instance's PATH (instance_init.ENV)
GB = 10**9


@dataclass
class StoreDisks:
    instance_type: str
    disks: list[dict] = field(default_factory=list)  # {"loop", "file", "bytes", "links"}
    md_double: Path | None = None  # the md double's state folder, where it stands in for md

    def release(self) -> list[str]:
        """Detach the md double's arrays, then every disk's loop device, and remove the files."""
        from factory.local.instance import md_double

        problems = md_double.release(self.md_double)
        for disk in self.disks:
            done = subprocess.run(["losetup", "-d", disk["loop"]], capture_output=True, text=True)
            if done.returncode != 0 and "No such device" not in done.stderr:
                problems.append(f"instance-store disk {disk['loop']}: {done.stderr.strip()}")
            for link in disk["links"]:
                Path(link).unlink(missing_ok=True)
            Path(disk["file"]).unlink(missing_ok=True)
        self.disks = []
        return problems


def ready_event(journal: str) -> dict | None:
    """The boot unit's `instance-store-ready` line, or None."""
    from factory.local.instance.instance_pool import last_event

    return last_event(journal, "instance-store-ready")


def serial(instance_id: str, index: int) -> str:
    """An instance-store disk's NVMe serial as AWS forms it: AWS and 17 hex digits."""
    return "AWS" + hashlib.sha1(f"{instance_id}/{index}".encode()).hexdigest()[:17].upper()


def attach(instance_type: str, instance_id: str, by_id_dir: Path, backing_dir: Path, upper: Path,
           md_state_dir: Path) -> StoreDisks | None:
    """The instance's store as loop devices, or None for a type without one."""
    from factory import instance_store
    from factory.local.instance import md_double

    store = instance_store.table().get(instance_type)
    if store is None:
        return None
    backing_dir.mkdir(parents=True, exist_ok=True)
    out = StoreDisks(instance_type)
    try:
        index = 0
        for count, size_gb, _kind in store.disks:
            for _ in range(count):
                file = backing_dir / f"nvme{index + 1}n1.img"
                with open(file, "wb") as f:
                    f.truncate(size_gb * GB)  # sparse and blank, as the store is at every start
                done = subprocess.run(["losetup", "-f", "--show", str(file)], capture_output=True, text=True)
                if done.returncode != 0:
                    file.unlink(missing_ok=True)
                    raise LocalCloudError(f"could not attach {instance_type}'s instance-store disk {index + 1}: {done.stderr.strip()}")
                loop = done.stdout.strip()
                name = LINK_PREFIX + serial(instance_id, index)
                links = [by_id_dir / name, by_id_dir / f"{name}_1"]
                for link in links:
                    link.symlink_to(loop)
                out.disks.append({"loop": loop, "file": str(file), "bytes": size_gb * GB, "links": [str(p) for p in links]})
                index += 1
        if len(out.disks) > 1 and md_double.md_missing():
            md_double.install(upper / DOUBLE_BIN.lstrip("/"), md_state_dir, seen_state_dir=MD_STATE)
            out.md_double = md_state_dir
    except BaseException:
        out.release()
        raise
    return out
