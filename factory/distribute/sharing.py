"""Who may launch an AMI, set per region (launch permissions are never copied: EC2 User
Guide, "Copy an AMI", Considerations; Image Builder applies them with ModifyImageAttribute
"for each Region"), and the snapshots' tags and createVolumePermission (a snapshot's tags
are not copied with the AMI either; an account that copies an AMI shared with it needs read
access to its snapshots: "Copy an AMI", Permissions).

Only what is missing is added, after one read of the launch permissions
(DescribeImageAttribute) and one of the snapshots: a second run changes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from factory.aws import aws_errors, resource_tags


def launch_permissions(dist: Any, copy_accounts: Sequence[str]) -> list[dict[str, str]]:
    """The LaunchPermission entries `dist` gives: its accounts, organizations and OUs, and
    the accounts that copy the AMI into their own (they launch nothing from ours, but
    CopyImage of a shared AMI needs it shared)."""
    wanted: list[dict[str, str]] = []
    for account in dict.fromkeys([*dist.accounts, *copy_accounts]):
        wanted.append({"UserId": account})
    wanted += [{"OrganizationArn": arn} for arn in dist.organizations]
    wanted += [{"OrganizationalUnitArn": arn} for arn in dist.units]
    return wanted


def share_image(ec2: Any, ami_id: str, region: str, wanted: list[dict[str, str]]) -> list[dict[str, str]]:
    """Add the launch permissions of `wanted` the AMI lacks; returns what was added."""
    if not wanted:
        return []
    with aws_errors(f"reading who may launch {ami_id} in {region}"):
        # DescribeImageAttribute is not paged: one answer holds every launch permission.
        have = ec2.describe_image_attribute(ImageId=ami_id, Attribute="launchPermission").get("LaunchPermissions") or []  # one attribute: one answer
    have_set = {tuple(sorted(p.items())) for p in have}
    missing = [p for p in wanted if tuple(sorted(p.items())) not in have_set]
    if missing:
        with aws_errors(f"sharing {ami_id} in {region}"):
            ec2.modify_image_attribute(ImageId=ami_id, LaunchPermission={"Add": missing})
    return missing


def snapshots_of(image: dict[str, Any]) -> list[str]:
    return [b["Ebs"]["SnapshotId"] for b in image.get("BlockDeviceMappings") or [] if b.get("Ebs", {}).get("SnapshotId")]


def snapshot_tags(ec2: Any, image: dict[str, Any], region: str) -> dict[str, str]:
    """The tags the image's (first) snapshot carries: what a copy's snapshots are given."""
    ids = snapshots_of(image)
    if not ids:
        return {}
    with aws_errors(f"reading the snapshots of {image['ImageId']} in {region}"):
        found = ec2.describe_snapshots(SnapshotIds=ids[:1])["Snapshots"]  # one id: one answer
    return {k: v for k, v in resource_tags(found[0]).items() if not k.startswith("aws:")} if found else {}


def share_snapshots(ec2: Any, image: dict[str, Any], region: str, accounts: Sequence[str], tags: dict[str, str]) -> list[str]:
    """The image's snapshots: `tags` added where missing, createVolumePermission for
    `accounts` (only the accounts that copy it: sharing an AMI needs no snapshot sharing).
    Returns what was done, for the result's notes."""
    ids = snapshots_of(image)
    if not ids or not (accounts or tags):
        return []
    done: list[str] = []
    with aws_errors(f"reading the snapshots of {image['ImageId']} in {region}"):
        snaps = ec2.describe_snapshots(SnapshotIds=ids)["Snapshots"]  # ids named: every answer at once
    for snap in snaps:
        have = resource_tags(snap)
        missing = {k: v for k, v in tags.items() if have.get(k) != v}
        if missing:
            with aws_errors(f"tagging snapshot {snap['SnapshotId']} in {region}"):
                ec2.create_tags(Resources=[snap["SnapshotId"]], Tags=[{"Key": k, "Value": v} for k, v in sorted(missing.items())])
            done.append(f"tagged {snap['SnapshotId']}")
        if accounts:
            with aws_errors(f"reading who may copy snapshot {snap['SnapshotId']} in {region}"):
                perms = ec2.describe_snapshot_attribute(SnapshotId=snap["SnapshotId"], Attribute="createVolumePermission")  # one attribute: one answer
            have_users = {p.get("UserId") for p in perms.get("CreateVolumePermissions") or []}
            add = [a for a in accounts if a not in have_users]
            if add:
                with aws_errors(f"sharing snapshot {snap['SnapshotId']} in {region}"):
                    ec2.modify_snapshot_attribute(SnapshotId=snap["SnapshotId"], Attribute="createVolumePermission",
                                                  OperationType="add", UserIds=add)
                done.append(f"shared {snap['SnapshotId']} with {', '.join(add)}")
    return done
