"""Which AMI a tier runs: the one given (`--ami`, or what `factory bake` just made), else the
newest available AMI of the tier's largest task.

An AMI is a task's when it was baked for it (`factory:task`) or when a bake of the task
reused it, because the task's image is the same (same content hash): such a bake adds the
task to the AMI's `factory:tasks` list (chunked over `factory:tasks`, `factory:tasks:2`, ...
within AWS's 256 characters a value, as for the tiers: names.tasks_tags). Without it, a
task whose image another task baked first would find no AMI of its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from factory.aws import Clients, aws_errors, error_code
from factory.errors import FactoryError
from factory.register.names import TAG_BASE_AMI, TAG_IMAGE_HASH, TAG_TASK, is_tasks_tag, tag_dict, tasks_from_tags, tasks_tags
from factory.register.reads import paged
from factory.register.targets import TierTarget

MAX_TAGS = 50  # tags per EC2 resource (EC2 user guide, "Tag restrictions")


def serves(image: Mapping[str, Any], task: str) -> bool:
    """Whether the AMI is `task`'s: baked for it, or reused by a bake of it."""
    tags = tag_dict(image.get("Tags"))
    return tags.get(TAG_TASK) == task or task in tasks_from_tags(tags)


def find_ami(clients: Clients, task: str, architecture: str | None = None) -> dict[str, Any] | None:
    """The newest available AMI of ours that is TASK's (`serves`; None when there is none).
    A tag filter cannot look inside a list, so every factory AMI is read (one paged read)."""
    filters = [{"Name": "tag-key", "Values": [TAG_TASK]}, {"Name": "state", "Values": ["available"]}]
    if architecture:
        filters.append({"Name": "architecture", "Values": [architecture]})
    with aws_errors(f"looking up the AMI of task {task}"):
        images = [i for i in paged(clients.ec2(), "describe_images", "Images", Owners=["self"], Filters=filters) if serves(i, task)]
    if not images:
        return None
    return max(images, key=lambda i: (i.get("CreationDate", ""), i["ImageId"]))


def add_tasks(ec2: Any, image: dict[str, Any], tasks: list[str]) -> str | None:
    """Add `tasks` to the AMI's `factory:tasks` list (a bake reused it for them), so a lookup
    by any of their names finds it. Returns a note when the list is full (AWS's 50 tags)."""
    tags = tag_dict(image.get("Tags"))
    owner = tags.get(TAG_TASK)
    have = tasks_from_tags(tags)
    new = [t for t in tasks if t != owner and t not in have]
    if not new:
        return None
    want = tasks_tags(sorted({*have, *new}))
    others = [k for k in tags if not is_tasks_tag(k)]
    if len(others) + len(want) > MAX_TAGS:
        return (f"{image['ImageId']} serves too many tasks to name {', '.join(new)} in its tags (AWS allows {MAX_TAGS}): "
                f"register them with --ami {image['ImageId']}")
    with aws_errors(f"tagging {image['ImageId']} with the tasks it serves"):
        ec2.create_tags(Resources=[image["ImageId"]], Tags=[{"Key": k, "Value": v} for k, v in want.items() if tags.get(k) != v])
    image["Tags"] = [{"Key": k, "Value": v} for k, v in {**{k: v for k, v in tags.items() if not is_tasks_tag(k)}, **want}.items()]
    return None



def resolve(
    clients: Clients, target: TierTarget, overrides: Mapping[str, str], image_target: Any = None, reads: Any = None
) -> tuple[str, str, list[str]]:
    """(AMI, where it came from, notes). `reads` (a RegionReads) answers from the region's
    one read of factory's AMIs instead of a read per tier."""
    notes: list[str] = []
    ignored = sorted(t for t in overrides if t in target.tasks and t != target.ami_task)
    if ignored:
        notes.append(
            f"AMI given for {', '.join(ignored)} not used: tier {target.tier} runs on the AMI of its largest task, {target.ami_task}"
        )
    ami = overrides.get(target.ami_task)
    if ami:
        images = _given(clients, ami, reads)
        if not images:
            raise FactoryError(f"AMI {ami} (given for task {target.ami_task}) does not exist in {target.region}; check --ami")
        image = images[0]
        if image.get("State") != "available":
            raise FactoryError(f"AMI {ami} is {image.get('State')}, not available; wait for it or pass another --ami")
        if image.get("Architecture") and image["Architecture"] != target.architecture:
            raise FactoryError(
                f"AMI {ami} is {image['Architecture']} but task {target.ami_task} is {target.architecture}; pass an AMI of the right architecture"
            )
        return ami, "given (--ami / bake)", notes
    if reads is not None:
        image = reads.newest_image(task=target.ami_task, architecture=target.architecture)
    else:
        image = find_ami(clients, target.ami_task, target.architecture)
    if image is None:
        raise FactoryError(
            f"no available AMI tagged {TAG_TASK}={target.ami_task} ({target.architecture}) in {target.region}: "
            f"run `factory bake {target.ami_task}` first, or pass --ami ami-..."
        )
    stale = content_changed(image, target, image_target)
    if stale:
        notes.append(stale)
    owner = tag_dict(image.get("Tags")).get(TAG_TASK)
    if owner == target.ami_task:
        return image["ImageId"], f"newest AMI tagged {TAG_TASK}={target.ami_task}", notes
    return image["ImageId"], f"newest AMI of {target.ami_task} (baked for {owner}: the same image)", notes


def _given(clients: Clients, ami: str, reads: Any) -> list[dict[str, Any]]:
    """The AMI given by id ([] when it does not exist)."""
    if reads is not None:
        found = reads.image(ami)
        return [found] if found else []
    with aws_errors(f"checking AMI {ami}"):
        try:
            return clients.ec2().describe_images(ImageIds=[ami])["Images"]  # one id, so one answer: no paging (MaxResults) needed
        except ClientError as exc:  # an id that does not exist
            if error_code(exc).startswith("InvalidAMIID"):
                return []
            raise


def content_changed(image: Mapping[str, Any], target: TierTarget, image_target: Any = None) -> str | None:
    """A note when the AMI's image hash is not what a bake of its task would make now on the
    same base: the spec's image settings, the template or the roles changed. Compared by
    image hash, not spec hash: a new volume size in launch-template mode changes the spec
    but not the image (a new base is `factory status`'s business)."""
    from factory.image_identity import expected_image_hash

    tags = tag_dict(image.get("Tags"))
    if target.ami_spec is None or not tags.get(TAG_IMAGE_HASH) or not tags.get(TAG_BASE_AMI):
        return None
    if expected_image_hash(target.ami_spec, tags[TAG_BASE_AMI], image_target) == tags[TAG_IMAGE_HASH]:
        return None
    return (
        f"AMI {image['ImageId']} was baked from other image content than {target.ami_task}'s spec, template and roles give now; "
        f"run `factory bake {target.ami_task}` to refresh it"
    )
