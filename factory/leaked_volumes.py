"""Volumes the grow agent made whose instance is gone: found, and deleted on request.

The agent sets delete-on-termination before a volume holds data, so a leak is only ever
a volume created but never attached (an instance that died between CreateVolume and
AttachVolume, or an attach that failed for good): `available`, tagged `factory:grow=true`
and `factory:instance=<id>` of an instance that no longer runs. A volume whose instance
still runs may be an add in progress and is never touched. `factory prune` lists these
and, with `--apply`, deletes them (the command's wiring lives with prune).

    leaked = find_leaked(ec2)            # [LeakedVolume, ...], oldest first
    results = delete_leaked(ec2, leaked) # [(volume_id, None | error message), ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factory.aws import resource_tags
from factory.grow import GROW_TAG, INSTANCE_TAG, TASK_TAG

# Instances in these states will not attach anything again.
GONE_STATES = {"shutting-down", "terminated"}


@dataclass(frozen=True)
class LeakedVolume:
    volume_id: str
    size_gib: int
    task: str
    instance_id: str  # "" when the volume names none
    created: str  # ISO time
    zone: str

    def to_json(self) -> dict[str, Any]:
        return vars(self).copy()


def _running_instances(ec2: Any, ids: list[str]) -> set[str]:
    """The ids among `ids` whose instance exists and is not shutting down or terminated (paged)."""
    alive: set[str] = set()
    for start in range(0, len(ids), 200):  # DescribeInstances takes at most 1000 ids; stay well under
        chunk = ids[start:start + 200]
        for page in ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": "instance-id", "Values": chunk}]):
            for reservation in page.get("Reservations", []):
                for inst in reservation.get("Instances", []):
                    if inst.get("State", {}).get("Name") not in GONE_STATES:
                        alive.add(inst["InstanceId"])
    return alive


def find_leaked(ec2: Any) -> list[LeakedVolume]:
    """Every `available` volume the grow agent made whose instance is gone (paged)."""
    candidates: list[dict[str, Any]] = []
    for page in ec2.get_paginator("describe_volumes").paginate(
        Filters=[{"Name": f"tag:{GROW_TAG}", "Values": ["true"]}, {"Name": "status", "Values": ["available"]},
                 {"Name": "tag-key", "Values": [INSTANCE_TAG]}]
    ):
        candidates += page.get("Volumes", [])
    ids = sorted({resource_tags(v).get(INSTANCE_TAG, "") for v in candidates} - {""})
    alive = _running_instances(ec2, ids) if ids else set()
    leaked = []
    for v in candidates:
        tags = resource_tags(v)
        if tags.get(INSTANCE_TAG, "") in alive:
            continue  # an add in progress, or one the agent will adopt when it restarts
        leaked.append(LeakedVolume(
            volume_id=v["VolumeId"], size_gib=int(v["Size"]), task=tags.get(TASK_TAG, ""),
            instance_id=tags.get(INSTANCE_TAG, ""), created=str(v.get("CreateTime", "")), zone=v.get("AvailabilityZone", ""),
        ))
    return sorted(leaked, key=lambda lv: (lv.created, lv.volume_id))


def delete_leaked(ec2: Any, leaked: list[LeakedVolume]) -> list[tuple[str, str | None]]:
    """Delete each volume; (volume id, None) when deleted or already gone, else the error.

    One failure does not stop the others: each is reported with AWS's code and message."""
    from factory.aws import error_code, error_message

    results: list[tuple[str, str | None]] = []
    for lv in leaked:
        try:
            ec2.delete_volume(VolumeId=lv.volume_id)
        except Exception as exc:  # a botocore ClientError; reported per volume
            code = error_code(exc)
            if code == "InvalidVolume.NotFound":
                results.append((lv.volume_id, None))
                continue
            results.append((lv.volume_id, f"{code or type(exc).__name__}: {error_message(exc) or exc}"))
        else:
            results.append((lv.volume_id, None))
    return results
