"""How many EBS volumes this instance may still attach: the instance type's attachment
limit and what shares it. Pure functions over AWS's answers (no I/O).

EC2 User Guide, "Amazon EBS volume limits for Amazon EC2 instances":

- most Nitro types have a **shared** limit of 28 attachments, shared by EBS volumes,
  network interfaces and NVMe instance store volumes. DescribeInstanceTypes reports
  `EbsInfo.MaximumEbsAttachments` for them with the primary network interface and the
  type's NVMe instance store disks already taken off (c6i.large 27, m6id.large 26,
  d3en.12xlarge 3); every further network interface takes one more;
- a few newer types have a **dedicated** EBS limit (`AttachmentLimitType` `dedicated`,
  e.g. c7i.large 32): network interfaces and instance store do not count.

The image's botocore (from the pinned AWS CLI) predates `MaximumEbsAttachments` and
`AttachmentLimitType` and drops them from its parsed answer, so they are read from the
raw DescribeInstanceTypes XML (`type_slots`). Without them (an older answer, an unknown
type) the shared rule is worked out from its parts: 28, less the attached network
interfaces, less the type's NVMe instance store disks.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

SHARED_SLOTS = 28  # EC2 User Guide, "Amazon EBS volume limits for Amazon EC2 instances", shared limit


@dataclass(frozen=True)
class TypeSlots:
    max_ebs: int | None  # EbsInfo.MaximumEbsAttachments (None: not in the answer)
    limit_type: str | None  # EbsInfo.AttachmentLimitType: "shared" | "dedicated" | None
    nvme_disks: int  # NVMe instance store volumes the type comes with


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(node: ET.Element | None, name: str) -> ET.Element | None:
    if node is None:
        return None
    return next((c for c in node if _local(c.tag) == name), None)


def _text(node: ET.Element | None, name: str) -> str | None:
    found = _child(node, name)
    return found.text.strip() if found is not None and found.text else None


def type_slots(body: bytes | str, instance_type: str) -> TypeSlots | None:
    """`instance_type`'s slots from a raw DescribeInstanceTypes answer (None: not in it)."""
    root = ET.fromstring(body)
    for item in root.iter():
        if _local(item.tag) != "item" or _text(item, "instanceType") != instance_type:
            continue
        ebs = _child(item, "ebsInfo")
        max_ebs = _text(ebs, "maximumEbsAttachments")
        storage = _child(item, "instanceStorageInfo")
        disks = 0
        if storage is not None and _text(storage, "nvmeSupport") in ("supported", "required"):
            for disk in (_child(storage, "disks") or []):
                disks += int(_text(disk, "count") or 0)
        return TypeSlots(max_ebs=int(max_ebs) if max_ebs else None, limit_type=_text(ebs, "attachmentLimitType"),
                         nvme_disks=disks)
    return None


def ebs_limit(slots: TypeSlots | None, network_interfaces: int) -> int:
    """The most EBS volumes (root and data volume included) the instance may have attached
    now, with `network_interfaces` attached to it."""
    enis = max(1, network_interfaces)
    if slots is not None and slots.max_ebs is not None:
        if slots.limit_type == "dedicated":
            return slots.max_ebs
        return slots.max_ebs - (enis - 1)  # reported with the primary interface taken off
    disks = slots.nvme_disks if slots is not None else 0
    return SHARED_SLOTS - enis - disks
