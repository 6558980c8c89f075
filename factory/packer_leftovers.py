"""What a Packer build left on the account when one of its own AWS calls failed: found and removed.

Packer's amazon-ebs builder cleans up after itself, but not when its cleanup call is the
one that fails, and (Packer 1.6.6, encrypt_boot) never removes the temporary unencrypted
AMI once a later step fails. Proven call by call by tests/test_crash_consistency_bake_*.py:

| call that failed | what Packer left |
| --- | --- |
| ec2:TerminateInstances | the builder, stopped (its volumes are paid for), and its security group (AWS refuses to delete a group a stopped instance is in) |
| ec2:ModifyImageAttribute, CreateTags (on the encrypted copy) | the encrypted copy, untagged |
| ec2:DeregisterImage (of the temporary AMI) | that AMI, with its snapshot |
| ec2:DeleteSnapshot (of the temporary AMI) | its snapshot |

After every build (it failed or not), `sweep()` finds this build's own leftovers and
removes them. Everything is found from this build's builders: the instances tagged with
the build's content hash (Packer's `run_tags`) that were not there before it started.
From them: the AMIs made from them (`source-instance-id`: the temporary AMI), the AMIs
named as the builder is (Packer gives the builder's `Name` tag and the AMI's name the one
`factory-<task>-<timestamp>`: the encrypted copy, which CopyImage made, so it has no
source instance), and the snapshots CreateImage made of their volumes (whose
description AWS writes as `Created by CreateImage(<instance>) for <ami>`), and, once the
builders are terminated, Packer's temporary security groups they were in (`packer_*`).
An AMI that carries the content hash is a finished image (reused by the next bake) and is
kept.

A bake killed outright (SIGKILL, a lost CI runner) never sweeps: its builder runs on,
paid by the hour. Another bake of the same image may be running now, so the next bake
leaves builders it did not launch alone; `factory prune` removes the builders older than
any bake runs (`stray_builders`, `prune.builder_hours`) and what they left, the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from factory.aws import aws_errors, resource_tags
from factory.register.reads import paged
from factory.register.waits import Waiter

IMAGE_HASH_TAG = "factory:image-hash"
_GONE = ("terminated", "shutting-down")
PACKER_GROUP_PREFIX = "packer_"  # Packer names its temporary security group packer_<uuid>


@dataclass(frozen=True)
class Builder:
    """An instance Packer launched for a bake (tagged with the image's content hash)."""

    instance_id: str
    state: str
    name: str  # its Name tag: factory-<task>-<timestamp>, as the AMI is named
    digest: str  # the content hash it bakes
    task: str
    launched: datetime
    packer_groups: tuple[str, ...]  # the ids of Packer's temporary security groups it is in

    def hours_since_launch(self, now: datetime) -> float:
        return (now - self.launched).total_seconds() / 3600


def _builder(instance: dict[str, Any]) -> Builder:
    tags = resource_tags(instance)
    return Builder(
        instance_id=instance["InstanceId"],
        state=instance["State"]["Name"],
        name=tags.get("Name", ""),
        digest=tags.get(IMAGE_HASH_TAG, ""),
        task=tags.get("factory:task", ""),
        launched=instance["LaunchTime"],
        packer_groups=tuple(sorted(g["GroupId"] for g in instance.get("SecurityGroups") or [] if g.get("GroupName", "").startswith(PACKER_GROUP_PREFIX))),
    )


def _find(ec2: Any, filters: list[dict[str, Any]], doing: str) -> list[Builder]:
    with aws_errors(doing):
        return [_builder(i) for r in paged(ec2, "describe_instances", "Reservations", Filters=filters) for i in r["Instances"]]


def builders(ec2: Any, digest: str) -> dict[str, Builder]:
    """Every instance tagged with content hash `digest`, by id."""
    found = _find(ec2, [{"Name": f"tag:{IMAGE_HASH_TAG}", "Values": [digest]}], "listing the builders of this image")
    return {b.instance_id: b for b in found}


def stray_builders(ec2: Any, older_than: timedelta, now: datetime | None = None) -> list[Builder]:
    """Builders of any image, not terminated, launched more than `older_than` ago: left by a
    bake that was killed (no bake runs that long), oldest first."""
    now = now or datetime.now(UTC)
    alive = ["pending", "running", "stopping", "stopped"]
    found = _find(ec2, [{"Name": "tag-key", "Values": [IMAGE_HASH_TAG]}, {"Name": "instance-state-name", "Values": alive}],
                  "looking for builders a killed bake left")
    return sorted((b for b in found if now - b.launched > older_than), key=lambda b: (b.launched, b.instance_id))


def sweep(ec2: Any, digest: str, before: set[str], keep_ami: str | None = None, waiter: Waiter | None = None) -> list[str]:
    """Remove what the builders of `digest` launched since `before` (ids) left; returns what
    was done, one phrase each (empty when Packer left nothing). An AwsError says what could
    not be removed, and how to remove it by hand."""
    mine = [b for i, b in builders(ec2, digest).items() if i not in before]
    return sweep_builders(ec2, mine, keep_ami, waiter)


def sweep_builders(ec2: Any, mine: list[Builder], keep_ami: str | None = None, waiter: Waiter | None = None) -> list[str]:
    """Remove what the builders `mine` left: terminate them, then their AMIs that are not a
    finished image (one tagged with their content hash, or `keep_ami`), the snapshots
    CreateImage made of them, and, once they are terminated, Packer's security groups."""
    done: list[str] = []
    for b in sorted(mine, key=lambda b: b.instance_id):
        if b.state not in _GONE:
            with aws_errors(f"terminating the builder {b.instance_id} Packer left ({b.state}); by hand: aws ec2 terminate-instances --instance-ids {b.instance_id}"):
                ec2.terminate_instances(InstanceIds=[b.instance_id])
            done.append(f"terminated the builder {b.instance_id} Packer left {b.state}")
    for b in sorted(mine, key=lambda b: b.instance_id):
        images = _images(ec2, "source-instance-id", b.instance_id) + (_images(ec2, "name", b.name) if b.name else [])
        for image in {i["ImageId"]: i for i in images}.values():
            if image["ImageId"] == keep_ami or resource_tags(image).get(IMAGE_HASH_TAG) == b.digest:
                continue  # the finished image: the next bake reuses it
            ami = image["ImageId"]
            with aws_errors(f"removing the AMI {ami} Packer left without its tags; by hand: aws ec2 deregister-image --image-id {ami} --delete-associated-snapshots"):
                ec2.deregister_image(ImageId=ami, DeleteAssociatedSnapshots=True)
            done.append(f"removed the AMI {ami} Packer left without its tags, with its snapshots")
        for snapshot in _orphan_snapshots(ec2, b.instance_id):
            with aws_errors(f"deleting the snapshot {snapshot} Packer left; by hand: aws ec2 delete-snapshot --snapshot-id {snapshot}"):
                ec2.delete_snapshot(SnapshotId=snapshot)
            done.append(f"deleted the snapshot {snapshot} Packer left")
    done += _delete_packer_groups(ec2, mine, waiter or Waiter(timeout=600, poll=5))
    return done


def _delete_packer_groups(ec2: Any, mine: list[Builder], waiter: Waiter) -> list[str]:
    """Packer's security groups of `mine` that still exist, deleted once the builders are
    terminated (AWS refuses while an instance is in the group, and for a moment after)."""
    groups = sorted({g for b in mine for g in b.packer_groups})
    if not groups:
        return []
    with aws_errors(f"looking for the security groups {', '.join(groups)} Packer made"):
        groups = [g["GroupId"] for g in paged(ec2, "describe_security_groups", "SecurityGroups", Filters=[{"Name": "group-id", "Values": groups}])]
    if not groups:
        return []  # Packer deleted them itself
    ids = sorted(b.instance_id for b in mine)
    hint = f"by hand, once {', '.join(ids)} terminated: aws ec2 delete-security-group --group-id ..."

    def terminated() -> tuple[bool, str]:
        with aws_errors(f"waiting for the builders {', '.join(ids)} to terminate"):
            # by a filter: AWS refuses instance ids beside MaxResults, and paged() pages
            found = paged(ec2, "describe_instances", "Reservations", Filters=[{"Name": "instance-id", "Values": ids}])
            states = {i["InstanceId"]: i["State"]["Name"] for r in found for i in r["Instances"]}
        waiting = {i: s for i, s in states.items() if s != "terminated"}
        return not waiting, ", ".join(f"{i} {s}" for i, s in sorted(waiting.items()))

    waiter.until(f"the builders {', '.join(ids)} Packer left", terminated, hint=hint)
    done = []
    for group in groups:
        with aws_errors(f"deleting the security group {group} Packer made; {hint.replace('...', group)}"):
            waiter.retry_while(("DependencyViolation",), lambda group=group: ec2.delete_security_group(GroupId=group))
        done.append(f"deleted the security group {group} Packer made")
    return done


def _images(ec2: Any, name: str, value: str) -> list[dict[str, Any]]:
    with aws_errors(f"looking for the AMIs made from {value}"):
        return list(paged(ec2, "describe_images", "Images", Owners=["self"], Filters=[{"Name": name, "Values": [value]}]))


def _orphan_snapshots(ec2: Any, instance: str) -> list[str]:
    """The snapshots CreateImage made of `instance`'s volumes whose AMI is gone."""
    with aws_errors(f"looking for the snapshots made from {instance}"):
        snapshots = list(paged(ec2, "describe_snapshots", "Snapshots", OwnerIds=["self"],
                               Filters=[{"Name": "description", "Values": [f"Created by CreateImage({instance})*"]}]))
    made_for = {s["SnapshotId"]: m.group(1) for s in snapshots if (m := re.search(r"for (ami-[0-9a-f]+)", s.get("Description", "")))}
    if not made_for:
        return []
    # One read for all their AMIs (a builder has a few volumes, so a few values).
    with aws_errors(f"looking for the AMIs made from {instance}"):
        alive = {i["ImageId"] for i in paged(ec2, "describe_images", "Images", Owners=["self"],
                                             Filters=[{"Name": "image-id", "Values": sorted(set(made_for.values()))}])}
    return sorted(snap for snap, ami in made_for.items() if ami not in alive)

