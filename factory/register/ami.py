"""Which AMI a tier runs: the one given (`--ami`, or what `factory bake` just made), else the
newest available AMI tagged with the tier's largest task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from factory.aws import Clients, aws_errors, error_code
from factory.errors import FactoryError
from factory.register.names import TAG_SPEC_HASH, TAG_TASK, tag_dict
from factory.register.reads import paged
from factory.register.targets import TierTarget


def find_ami(clients: Clients, task: str, architecture: str | None = None) -> dict[str, Any] | None:
    """The newest available AMI of ours tagged factory:task=TASK (None when there is none)."""
    filters = [{"Name": f"tag:{TAG_TASK}", "Values": [task]}, {"Name": "state", "Values": ["available"]}]
    if architecture:
        filters.append({"Name": "architecture", "Values": [architecture]})
    with aws_errors(f"looking up the AMI of task {task}"):
        images = list(paged(clients.ec2(), "describe_images", "Images", Owners=["self"], Filters=filters))
    if not images:
        return None
    return max(images, key=lambda i: (i.get("CreationDate", ""), i["ImageId"]))



def resolve(clients: Clients, target: TierTarget, overrides: Mapping[str, str]) -> tuple[str, str, list[str]]:
    notes: list[str] = []
    ignored = sorted(t for t in overrides if t in target.tasks and t != target.ami_task)
    if ignored:
        notes.append(
            f"AMI given for {', '.join(ignored)} not used: tier {target.tier} runs on the AMI of its largest task, {target.ami_task}"
        )
    ami = overrides.get(target.ami_task)
    if ami:
        with aws_errors(f"checking AMI {ami}"):
            try:
                images = clients.ec2().describe_images(ImageIds=[ami])["Images"]  # one id: one page
            except ClientError as exc:  # an id that does not exist
                if error_code(exc).startswith("InvalidAMIID"):
                    images = []
                else:
                    raise
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
    image = find_ami(clients, target.ami_task, target.architecture)
    if image is None:
        raise FactoryError(
            f"no available AMI tagged {TAG_TASK}={target.ami_task} ({target.architecture}) in {target.region}: "
            f"run `factory bake {target.ami_task}` first, or pass --ami ami-..."
        )
    tags = tag_dict(image.get("Tags"))
    if tags.get(TAG_SPEC_HASH) and tags[TAG_SPEC_HASH] != target.spec_hash:
        notes.append(
            f"AMI {image['ImageId']} was baked from an older version of {target.ami_task}'s spec; "
            f"run `factory bake {target.ami_task}` to refresh it"
        )
    return image["ImageId"], f"newest AMI tagged {TAG_TASK}={target.ami_task}", notes
