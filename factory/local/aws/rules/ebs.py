"""EBS volumes as AWS runs them, where the grow agent depends on it and moto differs.

| AWS | moto 5 | ours |
| --- | --- | --- |
| a new volume is `creating`, then `available` | `available` at once | `creating` for `volume_delay` seconds (off by default) |
| DescribeVolumes by id may answer `InvalidVolume.NotFound` right after CreateVolume (eventual consistency) | found at once | not found for the first half of `volume_delay` |
| a volume EBS cannot make ends in `error` | never | the `broken` fault (`factory local fault ec2:CreateVolume --kind broken`) |
| AttachVolume of a volume that is not `available`: `IncorrectState` | attaches | refused |
| AttachVolume past the instance type's attachment limit: `AttachmentLimitExceeded`; on most Nitro types the limit is shared by EBS volumes, network interfaces and NVMe instance store volumes | attaches any number | refused past the limit below |

The limit: DescribeInstanceTypes' `EbsInfo.MaximumEbsAttachments` (moto's table is AWS's
answer): for a `dedicated` type that many EBS volumes; for a `shared` one that many with
the primary network interface (the type's NVMe instance store is already taken off),
one fewer for each further network interface; a type without it: 28 slots less the
network interfaces and NVMe instance store disks.

AWS sources: EC2 User Guide, "Amazon EBS volume limits for Amazon EC2 instances" (shared
and dedicated limits); EC2 API Reference, AttachVolume ("If you exceed the volume
attachment limit ... the attachment request fails with the AttachmentLimitExceeded
error"), EbsInfo (`maximumEbsAttachments`, `attachmentLimitType`), "Eventual consistency
in the Amazon EC2 API"; EC2 User Guide, "Amazon EBS volume lifecycle" (creating,
available, in-use, deleting, deleted, error).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from factory.local.aws.faults import BROKEN_HEADER
from factory.local.aws.rules import Settings

SHARED_SLOTS = 28


def ebs_limit(instance_type: str, network_interfaces: int) -> int | None:
    """The most EBS volumes an instance of `instance_type` may have attached (None: unknown type)."""
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    info = INSTANCE_TYPES.get(instance_type)
    if info is None:
        return None
    ebs = info.get("EbsInfo") or {}
    enis = max(1, network_interfaces)
    if ebs.get("MaximumEbsAttachments") is not None:
        if ebs.get("AttachmentLimitType") == "dedicated":
            return int(ebs["MaximumEbsAttachments"])
        return int(ebs["MaximumEbsAttachments"]) - (enis - 1)
    storage = info.get("InstanceStorageInfo") or {}
    disks = sum(int(d.get("Count", 0)) for d in storage.get("Disks", [])) if storage.get("NvmeSupport") in ("supported", "required") else 0
    return SHARED_SLOTS - enis - disks


def install(settings: Settings) -> None:
    from moto.ec2.exceptions import EC2ClientError, InvalidVolumeIdError
    from moto.ec2.models import EC2Backend
    from moto.ec2.models.elastic_block_store import Volume
    from moto.ec2.responses.elastic_block_store import ElasticBlockStore

    lock = threading.Lock()
    made: dict[str, tuple[float, bool]] = {}  # volume id -> (made at, broken)

    create_volume = ElasticBlockStore.create_volume  # with rules.ec2's client token

    def create_volume_timed(self: Any) -> Any:
        broken = bool(self.normalized_request.headers.get(BROKEN_HEADER))
        known = set(self.ec2_backend.volumes)
        result = create_volume(self)
        volume = getattr(result, "result", None)
        if volume is not None and volume.id not in known:  # a new volume, not a client token's earlier one
            with lock:
                made[volume.id] = (time.monotonic(), broken)
        return result

    ElasticBlockStore.create_volume = create_volume_timed

    original_status = Volume.status

    def status(self: Any) -> str:
        at, broken = made.get(self.id, (0.0, False))
        if broken:
            return "error"
        if at and time.monotonic() - at < settings.volume_delay:
            return "creating"
        return original_status.fget(self)

    Volume.status = property(status)

    original_describe = EC2Backend.describe_volumes

    def describe_volumes(self: Any, volume_ids: list[str] | None = None, filters: Any = None) -> Any:
        now = time.monotonic()
        for volume_id in volume_ids or []:
            at, _ = made.get(volume_id, (0.0, False))
            if at and now - at < settings.volume_delay / 2:
                raise InvalidVolumeIdError(volume_id)
        return original_describe(self, volume_ids=volume_ids, filters=filters)

    EC2Backend.describe_volumes = describe_volumes

    original_attach = EC2Backend.attach_volume

    def attach_volume(self: Any, volume_id: str, instance_id: str, device_path: str, delete_on_termination: bool = False) -> Any:
        volume = self.get_volume(volume_id)
        instance = self.get_instance(instance_id)
        if volume.status != "available":
            raise EC2ClientError("IncorrectState", f"vol '{volume_id}' is not 'available'.")
        limit = ebs_limit(instance.instance_type, len(instance.nics) or 1)
        if limit is not None and len(instance.block_device_mapping) >= limit:
            raise EC2ClientError("AttachmentLimitExceeded",
                                 f"Instance {instance_id} ({instance.instance_type}) has {len(instance.block_device_mapping)} EBS volumes "
                                 f"and {len(instance.nics) or 1} network interfaces attached: no attachment slot is left.")
        return original_attach(self, volume_id, instance_id, device_path, delete_on_termination)

    EC2Backend.attach_volume = attach_volume
