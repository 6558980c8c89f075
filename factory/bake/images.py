"""A bake's AMIs in the account: `find_image` (an available AMI with the same content hash,
to reuse), `ensure_tagged` (after a build, the tags Packer set at creation, added when
missing), `discard_image` (an AMI that could not be tagged, removed with its snapshots),
and `_serve` (an AMI reused or shared is named in the `factory:tasks` of each task it serves)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from factory.aws import resource_tags
from factory.errors import FactoryError
from factory.image_identity import IMAGE_HASH_TAG


def find_image(ec2: Any, digest: str) -> dict[str, Any] | None:
    """The newest available AMI of this account tagged with `digest`, or None."""
    from factory.aws import aws_errors
    from factory.register.reads import paged

    with aws_errors("looking for an AMI with the same content hash"):
        images = list(paged(
            ec2, "describe_images", "Images",
            Owners=["self"],
            Filters=[{"Name": f"tag:{IMAGE_HASH_TAG}", "Values": [digest]}, {"Name": "state", "Values": ["available"]}],
        ))
    # Filters are the API's promise; check anyway (a tag filter silently ignored would
    # otherwise reuse an unrelated image).
    images = [
        i for i in images
        if i.get("State") == "available" and resource_tags(i).get(IMAGE_HASH_TAG) == digest
    ]
    return max(images, key=lambda i: (i.get("CreationDate", ""), i["ImageId"])) if images else None


def ensure_tagged(ec2: Any, ami_id: str, tags: dict[str, str]) -> str | None:
    """After a build: the AMI should carry `tags` from birth (Packer's `tags` and
    `snapshot_tags`). Add any that are missing; when that fails, deregister the AMI and
    delete its snapshots (an AMI without its content hash would never be reused, only paid
    for) and raise, naming them. Returns a note for the result, or None."""
    from factory.aws import aws_errors
    from factory.errors import AwsError

    try:
        with aws_errors(f"reading the tags of {ami_id}"):
            image = ec2.describe_images(ImageIds=[ami_id])["Images"][0]  # one id, so one answer: no paging (MaxResults) needed
    except (AwsError, IndexError, KeyError) as exc:
        # Packer created it with the tags; not being able to look is no reason to drop it.
        return f"could not confirm the tags of {ami_id} ({getattr(exc, 'message', exc)}); Packer set them at creation"
    snapshots = [b["Ebs"]["SnapshotId"] for b in image.get("BlockDeviceMappings", []) if b.get("Ebs", {}).get("SnapshotId")]
    have = resource_tags(image)
    if all(have.get(k) == v for k, v in tags.items()):
        return None
    try:
        with aws_errors(f"tagging {ami_id}"):
            ec2.create_tags(Resources=[ami_id, *snapshots], Tags=[{"Key": k, "Value": v} for k, v in sorted(tags.items())])
    except AwsError as exc:
        raise FactoryError(f"{exc.message}. {discard_image(ec2, ami_id, snapshots)}") from None
    return f"added missing tags to {ami_id} after the build"


def discard_image(ec2: Any, ami_id: str, snapshots: Sequence[str]) -> str:
    """Deregister an AMI with its snapshots (one call: deleting them after deregistering races
    with `InvalidSnapshot.InUse`); say what was done (or what to do by hand)."""
    from factory.aws import aws_errors
    from factory.errors import AwsError

    by_hand = f"aws ec2 deregister-image --image-id {ami_id} --delete-associated-snapshots"
    try:
        with aws_errors(f"deregistering {ami_id}"):
            answer = ec2.deregister_image(ImageId=ami_id, DeleteAssociatedSnapshots=True)
    except AwsError as exc:
        return f"The untagged AMI could not be removed either ({exc.message}): remove it by hand: {by_hand}"
    kept = [r["SnapshotId"] for r in answer.get("DeleteSnapshotResults") or [] if r.get("ReturnCode") != "success"]
    if kept:
        return f"The untagged AMI {ami_id} was deregistered but AWS kept its snapshots {', '.join(kept)}: delete them by hand"
    what = f"{ami_id}" + (f" and its snapshots {', '.join(snapshots)}" if snapshots else "")
    return f"The untagged AMI was removed: deregistered {what}"


def _serve(ec2: Any, image: dict[str, Any], tasks: list[str]) -> str | None:
    """An AMI reused or shared by `tasks` is theirs too: named in its `factory:tasks` list,
    so register, status and rollback find it by any of their names (register.ami.add_tasks)."""
    from factory.register.ami import add_tasks

    return add_tasks(ec2, image, tasks)
