"""NVMe instance storage: each instance type's store, and whether it holds a task's need.

`storage.instance_store: docker` puts Docker's data root on the instance's NVMe instance
store (ansible/roles/instance_store makes it at every boot). Whether a type has a store,
and how big, is AWS data: DescribeInstanceTypes' `InstanceStorageInfo` (botocore's ec2
service model: `TotalSizeInGB`, `Disks[] {SizeInGB, Count, Type}`, `NvmeSupport`,
`EncryptionSupport`). factory keeps it in `schemas/instance-storage.json` for offline use;
`factory instance-storage --refresh` rewrites the file from a region's DescribeInstanceTypes.

Sizes: AWS gives instance store in GB (10^9 bytes: 118 GB is what m6id.large's 110 GiB
disk holds), so capacity_gib = GB x 10^9 / 2^30. XFS keeps about 1% of the filesystem
for its log and inodes; what the store must hold is the instance's need with headroom
(factory.sizing) plus Docker's own state (1 GiB, as for a grow data volume).

Pure Python and light imports: `factory validate` and `factory size` import this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from factory.errors import SizingError, UsageError

DATA_FILE = "instance-storage.json"
MODES = ("off", "docker")
GB = 10**9
GIB = 2**30
# mkfs.xfs keeps about 1% of the filesystem for its log and inode chunks (the same
# allowance as the grow pool's data volume, factory.sizing.GROW_RESERVE_GIB's note).
XFS_OVERHEAD = 0.01
# Docker's own state (the ECS agent's image, containers' metadata) besides the tasks.
DOCKER_STATE_GIB = 1.0
# Batch's own choices of instance types: families without instance store among them.
BATCH_CHOICES = ("optimal", "default_x86_64", "default_arm64")


class InstanceStoreRefused(SizingError):
    """Listed instance types whose store cannot hold the task: (index in
    batch.instance_types, message) each, so validate names the field."""

    def __init__(self, where: str, refusals: list[tuple[int, str]]):
        self.refusals = refusals
        at = f"{where}: " if where else ""
        super().__init__("\n".join(f"{at}batch.instance_types[{i}]: {m}" for i, m in refusals))


@dataclass(frozen=True)
class Store:
    """One instance type's instance store, as DescribeInstanceTypes gives it."""

    instance_type: str
    total_gb: int
    disks: tuple[tuple[int, int, str], ...]  # (count, size_gb, type: ssd|hdd)
    nvme: str  # NvmeSupport: required | supported | unsupported

    @property
    def disk_count(self) -> int:
        return sum(count for count, _, _ in self.disks)

    @property
    def capacity_gib(self) -> float:
        return self.total_gb * GB / GIB

    @property
    def usable_gib(self) -> float:
        """What XFS over the whole store (RAID0 of its disks) leaves for Docker."""
        return self.capacity_gib * (1.0 - XFS_OVERHEAD)

    def describe(self) -> str:
        disks = " + ".join(f"{c} x {s} GB {t.upper()}" for c, s, t in self.disks)
        return f"{self.total_gb} GB ({self.capacity_gib:.0f} GiB; {disks}, NVMe {self.nvme})"

    def to_json(self) -> dict[str, Any]:
        return {"total_gb": self.total_gb, "capacity_gib": round(self.capacity_gib, 1),
                "usable_gib": round(self.usable_gib, 1), "disks": self.disk_count, "nvme": self.nvme}


def data_path() -> Path:
    from factory.resources import data_dir

    return data_dir("schemas") / DATA_FILE


@lru_cache(maxsize=4)
def table(path: str | None = None) -> dict[str, Store | None]:
    """Every known instance type: its Store, or None when it has no instance store."""
    file = Path(path) if path else data_path()
    doc = json.loads(file.read_text())
    out: dict[str, Store | None] = {}
    for name, info in doc["types"].items():
        out[name] = None if info is None else Store(
            name, int(info["total_gb"]), tuple((int(d["count"]), int(d["size_gb"]), str(d["type"])) for d in info["disks"]),
            str(info["nvme"]))
    return out


def store_need_gib(plan: Any) -> float:
    """What the instance store must hold for one instance of the plan: concurrent tasks'
    data and the images, with headroom (factory.sizing), plus Docker's own state."""
    return plan.need_gib + plan.headroom_gib + DOCKER_STATE_GIB


def _sizes_of(family: str, types: dict[str, Store | None]) -> list[str]:
    return sorted((t for t in types if t.split(".")[0] == family), key=lambda t: (types[t].total_gb if types[t] else -1, t))


def refusals(instance_types: Iterable[str], need_gib: float, types: dict[str, Store | None] | None = None) -> list[tuple[int, str]]:
    """(index in batch.instance_types, message) for every listed type whose store cannot
    hold `need_gib`. A family (c6id) stands for every size Batch may pick from it."""
    types = table() if types is None else types
    out: list[tuple[int, str]] = []
    for i, name in enumerate(instance_types):
        if name in BATCH_CHOICES:
            out.append((i, f"{name} lets Batch pick types without instance store; with storage.instance_store: docker list "
                           "NVMe types whose store holds the task (e.g. m6id.2xlarge), or set storage.instance_store: off"))
            continue
        members = [name] if "." in name else _sizes_of(name, types)
        if not members or ("." in name and name not in types):
            out.append((i, f"{name} is not in factory's instance-store table ({DATA_FILE}); check the name, or refresh the "
                           "table from AWS with `factory instance-storage --refresh`"))
            continue
        for member in members:
            store = types.get(member)
            if store is None:
                what = f"{member} has no instance store" + (f" (family {name}: Batch may pick any of its sizes)" if member != name else "")
                out.append((i, f"{what}; with storage.instance_store: docker every type needs an NVMe store that holds "
                               f"{need_gib:.1f} GiB: pick an instance-store type (m6id, c6id, r6id, i4i ...) or set storage.instance_store: off"))
                break
            if store.nvme not in ("required", "supported"):
                out.append((i, f"{member}'s instance store is not NVMe ({store.describe()}); the boot unit finds the store by its NVMe model: pick an NVMe type"))
                break
            if store.usable_gib < need_gib:
                family = f" (family {name}: Batch may pick its smallest size)" if member != name else ""
                out.append((i, f"{member}'s instance store of {store.describe()} leaves {store.usable_gib:.1f} GiB for Docker after XFS, "
                               f"less than the {need_gib:.1f} GiB the task needs per instance{family} (see `factory size`); pick a larger "
                               "type, or lower storage.concurrent_tasks"))
                break
    return out


def smallest_store(instance_types: Iterable[str], types: dict[str, Store | None] | None = None) -> Store | None:
    """The smallest store among the listed types (every size of a listed family)."""
    types = table() if types is None else types
    stores = [types.get(m) for n in instance_types for m in ([n] if "." in n else _sizes_of(n, types))]
    found = [s for s in stores if s is not None]
    return min(found, key=lambda s: s.total_gb) if found else None


# ---------------------------------------------------------------------------------------
# Refresh from AWS


def entry(info: dict[str, Any]) -> dict[str, Any] | None:
    """One DescribeInstanceTypes answer as the table's entry (None: no instance store)."""
    storage = info.get("InstanceStorageInfo")
    if not info.get("InstanceStorageSupported") or not storage:
        return None
    return {
        "total_gb": int(storage["TotalSizeInGB"]),
        "disks": [{"count": int(d["Count"]), "size_gb": int(d["SizeInGB"]), "type": str(d.get("Type", "ssd"))} for d in storage.get("Disks", [])],
        "nvme": str(storage.get("NvmeSupport", "unsupported")),
    }


def document(described: Iterable[dict[str, Any]], region: str, source: str) -> dict[str, Any]:
    types = {info["InstanceType"]: entry(info) for info in described}
    return {
        "about": "Each EC2 instance type's instance store (DescribeInstanceTypes InstanceStorageInfo; null: none). "
                 "Rewritten by `factory instance-storage --refresh`; read by factory.instance_store.",
        "source": source,
        "region": region,
        "refreshed": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "types": dict(sorted(types.items())),
    }


def refresh(clients: Any, region: str, out: Path | None = None) -> dict[str, Any]:
    """Read every instance type of the region (paged) and write the table atomically.
    Returns a summary: how many types, how many with a store, what changed."""
    from factory.aws import aws_errors
    from factory.register.reads import paged

    out = Path(out) if out else data_path()
    with aws_errors(f"reading the instance types of {region} (DescribeInstanceTypes)"):
        described = list(paged(clients.ec2(), "describe_instance_types", "InstanceTypes", MaxResults=100))
    if not described:
        raise UsageError(f"DescribeInstanceTypes in {region} answered no instance types; {out} is left as it was")
    doc = document(described, region, f"DescribeInstanceTypes, {region}")
    try:
        old = json.loads(out.read_text())["types"]
    except (OSError, ValueError, KeyError):
        old = {}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(dumps(doc))
    tmp.replace(out)
    table.cache_clear()
    new = doc["types"]
    return {
        "file": str(out),
        "region": region,
        "types": len(new),
        "with_instance_store": sum(1 for v in new.values() if v),
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": sorted(t for t in set(new) & set(old) if new[t] != old[t]),
    }


def dumps(doc: dict[str, Any]) -> str:
    """The table as JSON, one instance type a line (so a refresh's diff reads per type)."""
    head = {k: v for k, v in doc.items() if k != "types"}
    lines = [json.dumps(head, indent=1)[:-2] + ",", ' "types": {']
    rows = [f"  {json.dumps(name)}: {json.dumps(info)}" for name, info in doc["types"].items()]
    return "\n".join(lines) + "\n" + ",\n".join(rows) + "\n }\n}\n"
