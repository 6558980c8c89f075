"""One AMI copied into one region (CopyImage is called in the destination region, with
the source region named: EC2 API reference, CopyImage).

A copy is found again by its tags, so a run that died at any point is finished by the
next: `factory:copy-of` (the source AMI) and `factory:image-hash` are on the copy and its
snapshots from birth (TagSpecifications), and `CopyImageTags` brings the source's other
tags (factory:task, the manifest's headline tags; by default CopyImage copies none).
`ClientToken` is derived from the image's identity (its content hash, the source AMI, the
region, the account), so a call botocore retries (its answer lost) never makes a second
copy. A token seen before answers the first call's AMI even when that copy failed and was
deregistered (EC2 API reference, "Ensuring idempotency"), so the number of failed copies
into a region is counted on the source AMI (`factory:copy-failures:<region>`) and is part
of the token: the copy after a failure is a new request, and still the same one for every
run that retries it. A failed copy (`failed`, or one that never became
`available` in time) is deregistered with its snapshots before the error is raised.

Waits are generous: a first copy to a region is a full snapshot copy, and re-encrypting
with another key is too (EC2 User Guide, "How AMI copy works"); Packer users hit its
default waits on large encrypted copies (hashicorp/packer#7954, #12779).
"""

from __future__ import annotations

import hashlib
from typing import Any

from factory.aws import aws_errors, resource_tags
from factory.errors import FactoryError
from factory.image_identity import IMAGE_HASH_TAG

COPY_OF_TAG = "factory:copy-of"  # the source AMI's id, on a copy and its snapshots
FAILURES_TAG = "factory:copy-failures:{region}"  # on the source: how many copies into the region failed
SOURCE_REGION_TAG = "factory:source-region"
COPY_TIMEOUT_SECONDS = 6 * 3600.0
COPY_POLL_SECONDS = 15.0
DONE, WAIT, GONE = "available", ("pending",), ("failed", "error", "invalid", "deregistered", "disabled")


def client_token(image_hash: str, source_ami: str, region: str, account: str, failures: int = 0) -> str:
    """At most 64 ASCII characters (CopyImage's ClientToken), the same for the same copy."""
    return hashlib.sha256(f"{image_hash}:{source_ami}:{region}:{account}:{failures}".encode()).hexdigest()[:64]


def failures(source: dict[str, Any], region: str) -> int:
    """How many copies of the source into `region` failed (its FAILURES_TAG)."""
    value = resource_tags(source).get(FAILURES_TAG.format(region=region), "0")
    return int(value) if value.isdigit() else 0


def count_failure(home_ec2: Any, source: dict[str, Any], region: str, home: str) -> str:
    """One more failed copy into `region`, counted on the source (so the next token is new)."""
    count = failures(source, region) + 1
    try:
        with aws_errors(f"counting the failed copy on {source['ImageId']} in {home}"):
            home_ec2.create_tags(Resources=[source["ImageId"]], Tags=[{"Key": FAILURES_TAG.format(region=region), "Value": str(count)}])
    except FactoryError as exc:
        return f"; the failure could not be counted on the source ({exc.message}): tag it {FAILURES_TAG.format(region=region)}={count} by hand"
    return ""


def find_copy(ec2: Any, source_ami: str) -> dict[str, Any] | None:
    """The newest copy of `source_ami` this account has in the client's region (any state), or None."""
    from factory.register.reads import paged

    with aws_errors(f"looking for a copy of {source_ami}"):
        images = [i for i in paged(ec2, "describe_images", "Images", Owners=["self"],
                                   Filters=[{"Name": f"tag:{COPY_OF_TAG}", "Values": [source_ami]}])
                  if resource_tags(i).get(COPY_OF_TAG) == source_ami]
    return max(images, key=lambda i: (i.get("CreationDate", ""), i["ImageId"])) if images else None


def start_copy(ec2: Any, source: dict[str, Any], source_region: str, key_arn: str, token: str,
               snapshot_tags: dict[str, str], cross_account: bool = False) -> str:
    """CopyImage into the client's region: encrypted with `key_arn`, the source's tags
    copied, the copy and its snapshots tagged at birth. Returns the copy's id. Into
    another account (`cross_account`), CopyImageTags copies none of the owner's tags
    (CopyImage: "user-defined tags that are attached by other AWS accounts" are not
    copied), so the source's are given at birth instead."""
    identity = {COPY_OF_TAG: source["ImageId"], SOURCE_REGION_TAG: source_region,
                IMAGE_HASH_TAG: resource_tags(source).get(IMAGE_HASH_TAG, "")}
    if cross_account:
        identity = {**{k: v for k, v in resource_tags(source).items() if k.startswith("factory:") and not k.startswith("factory:copy-failures")},
                    **identity}
    as_tags = lambda tags: [{"Key": k, "Value": v} for k, v in sorted(tags.items())]  # noqa: E731
    kwargs: dict[str, Any] = {
        "SourceImageId": source["ImageId"], "SourceRegion": source_region, "Name": source["Name"],
        "ClientToken": token, "Encrypted": True, "KmsKeyId": key_arn, "CopyImageTags": True,
        "TagSpecifications": [{"ResourceType": "image", "Tags": as_tags(identity)},
                              {"ResourceType": "snapshot", "Tags": as_tags({**snapshot_tags, **identity})}],
    }
    if source.get("Description"):
        kwargs["Description"] = source["Description"]
    with aws_errors(f"copying {source['ImageId']} from {source_region}"):
        return ec2.copy_image(**kwargs)["ImageId"]


def wait_available(ec2: Any, ami_id: str, region: str, timeout: float = COPY_TIMEOUT_SECONDS, poll: float = COPY_POLL_SECONDS) -> dict[str, Any]:
    """The copy once `available`; a FactoryError when it failed or the wait ran out (the
    caller discards it)."""
    from factory.register.waits import Waiter

    seen: dict[str, Any] = {}

    def check() -> tuple[bool, str]:
        with aws_errors(f"reading the copy {ami_id} in {region}"):
            images = ec2.describe_images(ImageIds=[ami_id])["Images"]  # one id: one answer, no paging
        if not images:
            return False, "not visible yet"
        seen["image"] = images[0]
        state = images[0].get("State", "")
        if state in GONE:
            reason = (images[0].get("StateReason") or {}).get("Message", "")
            raise FactoryError(f"the copy {ami_id} in {region} is {state}" + (f": {reason}" if reason else ""))
        return state == DONE, state

    Waiter(timeout=timeout, poll=poll).until(f"the copy {ami_id} in {region}", check,
                                             hint="run the same command again: it finds the copy and waits on")
    return seen["image"]


def discard_copy(ec2: Any, image: dict[str, Any] | str, region: str) -> str:
    """Deregister a copy with its snapshots; say what was done (or what to do by hand)."""
    ami_id = image if isinstance(image, str) else image["ImageId"]
    try:
        with aws_errors(f"deregistering the failed copy {ami_id} in {region}"):
            answer = ec2.deregister_image(ImageId=ami_id, DeleteAssociatedSnapshots=True)
    except FactoryError as exc:
        return (f"the failed copy could not be removed ({exc.message}): remove it by hand: "
                f"aws ec2 deregister-image --region {region} --image-id {ami_id} --delete-associated-snapshots")
    kept = [r["SnapshotId"] for r in answer.get("DeleteSnapshotResults") or [] if r.get("ReturnCode") != "success"]
    if kept:
        return f"deregistered the failed copy {ami_id} in {region}, but AWS kept its snapshots {', '.join(kept)}: delete them by hand"
    return f"deregistered the failed copy {ami_id} in {region} with its snapshots"
