"""What a Packer build left on the account when one of its own AWS calls failed: found and removed.

Packer's amazon-ebs builder cleans up after itself, but not when its cleanup call is the
one that fails, and (Packer 1.6.6, encrypt_boot) never removes the temporary unencrypted
AMI once a later step fails. Proven call by call by tests/test_crash_consistency_bake_*.py:

| call that failed | what Packer left |
| --- | --- |
| ec2:TerminateInstances | the builder, stopped (its volumes are paid for) |
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
description AWS writes as `Created by CreateImage(<instance>) for <ami>`). An AMI that
carries the content hash is a finished image (reused by the next bake) and is kept.
"""

from __future__ import annotations

import re
from typing import Any

from factory.aws import aws_errors, resource_tags
from factory.register.reads import paged

IMAGE_HASH_TAG = "factory:image-hash"
_GONE = ("terminated", "shutting-down")


def builders(ec2: Any, digest: str) -> dict[str, tuple[str, str]]:
    """Every instance tagged with content hash `digest`: {id: (state, its Name tag)}."""
    with aws_errors("listing the builders of this image"):
        return {
            i["InstanceId"]: (i["State"]["Name"], resource_tags(i).get("Name", ""))
            for r in paged(ec2, "describe_instances", "Reservations", Filters=[{"Name": f"tag:{IMAGE_HASH_TAG}", "Values": [digest]}])
            for i in r["Instances"]
        }


def sweep(ec2: Any, digest: str, before: set[str], keep_ami: str | None = None) -> list[str]:
    """Remove what the builders of `digest` launched since `before` (ids) left; returns what
    was done, one phrase each (empty when Packer left nothing). An AwsError says what could
    not be removed, and how to remove it by hand."""
    done: list[str] = []
    mine = {i: s for i, s in builders(ec2, digest).items() if i not in before}
    for instance, (state, _name) in sorted(mine.items()):
        if state not in _GONE:
            with aws_errors(f"terminating the builder {instance} Packer left ({state}); by hand: aws ec2 terminate-instances --instance-ids {instance}"):
                ec2.terminate_instances(InstanceIds=[instance])
            done.append(f"terminated the builder {instance} Packer left {state}")
    for instance, (_state, name) in sorted(mine.items()):
        images = _images(ec2, "source-instance-id", instance) + (_images(ec2, "name", name) if name else [])
        for image in {i["ImageId"]: i for i in images}.values():
            if image["ImageId"] == keep_ami or resource_tags(image).get(IMAGE_HASH_TAG) == digest:
                continue  # the finished image: the next bake reuses it
            ami = image["ImageId"]
            with aws_errors(f"removing the AMI {ami} Packer left without its tags; by hand: aws ec2 deregister-image --image-id {ami} --delete-associated-snapshots"):
                ec2.deregister_image(ImageId=ami, DeleteAssociatedSnapshots=True)
            done.append(f"removed the AMI {ami} Packer left without its tags, with its snapshots")
        for snapshot in _orphan_snapshots(ec2, instance):
            with aws_errors(f"deleting the snapshot {snapshot} Packer left; by hand: aws ec2 delete-snapshot --snapshot-id {snapshot}"):
                ec2.delete_snapshot(SnapshotId=snapshot)
            done.append(f"deleted the snapshot {snapshot} Packer left")
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

